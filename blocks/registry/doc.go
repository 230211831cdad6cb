// Package registry pushes a store's image to a registry tag and pulls one
// back, with the savings of the blocked form and without breaking any
// client that knows nothing about blocks (docs/REGISTRY.md).
//
// A tag names the image index that blockfile export wrote (docs/FORMAT.md
// section 8): the standard manifest(s), which every client pulls as a
// normal image, and beside them the blocked manifest(s) and block sets.
// Every blob is referenced from a manifest that the tagged index names, so a
// registry's garbage collector keeps the blocks.
//
//   - Push uploads every blob the registry lacks (a HEAD first; a blob the
//     store has seen in another repository of the same registry is mounted
//     from there rather than uploaded), then the manifests, then the index
//     under the tag, last: a tag never names an incomplete image.
//   - Pull resolves the tag; if its index has a blocked form it fetches the
//     manifests, then only the blobs the store lacks (blocked layers, block
//     members, configs), never the standard layers that hydrate rebuilds.
//     Every byte is verified before anything is written into place, then
//     the image is tagged and materialized exactly as bundle apply does
//     (bundle.Deliver). An index without a blocked form is an ordinary
//     image: it is exported as blockfile export would.
//   - Deltas (delta.go): push --delta-from BASE also publishes the update
//     bundle from BASE (bundle.Create) as an OCI referrer of the index; a
//     pull into a store that holds a delta's base downloads that bundle and
//     applies it (bundle.Apply), which carries changed blocks as binary
//     deltas, instead of fetching them whole. The index never changes.
//
// The store remembers which repositories of which registry hold a blob
// (blockfile/registry/ in the store, see seen.go), so a second repository
// that shares most blocks with a first uploads only what the first lacks.
//
// blocks.go (block push) publishes raw blocks for builds that fetch them
// from a registry (BLOCKFILE_REPO).
//
// Connections (credentials, TLS, plain HTTP, hosts.toml) are not configured
// here: callers pass the go-containerregistry options that
// transport.Registry.Remote returns.
package registry
