// Package frontend is the Blockfile Dockerfile frontend: it wraps BuildKit's upstream
// Dockerfile frontend (builder.Build, dockerui) and adds the IMPORT instruction.
//
// The stages, each testable alone:
//
//   - Parse (parse.go): upstream's parser keeps an unknown IMPORT as a node with its
//     line range; Parse reads the IMPORT lines and groups consecutive ones into runs.
//   - Rewrite (parse.go): each run becomes one `COPY --link --from=<name> / /` on its
//     first line; the run's other lines are blanked so line numbers hold.
//   - resolver (blocks.go): picks the block source (BLOCKFILE_REPO, BLOCKFILE_URL,
//     BLOCKFILE_OCI_STORE, else the "blocks" context), verifies local blocks by
//     reading them back through the gateway, reads tree documents, and lowers each
//     run with llbgen.ImportState.
//   - Build (build.go): calls upstream with a gateway client that adds the contexts
//     `context:<name>=input:<name>`, serves the import states as inputs, feeds
//     upstream the rewritten Dockerfile and puts the user's text back into source
//     maps, warnings, errors and lint results; then records the imports in the
//     image config label blocks.LabelImports.
//
// The user documentation is docs/IMPORT.md.
package frontend
