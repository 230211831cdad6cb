package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"unicode"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/tree"
)

func init() {
	cmd := &cobra.Command{
		Use:   "block",
		Short: "Add blocks (files and folders) to the store for IMPORT",
		Long: `Blocks are content-addressed files: a block's name is the sha256 of its bytes,
what sha256sum prints. A Dockerfile IMPORT names a block by digest:

  IMPORT block@sha256:<hex> /app/libs/a.jar

and the build reads it from the store (--build-context blocks=<store>).`,
	}
	cmd.AddCommand(newBlockAddCmd(), newBlockLsCmd(), newBlockPushCmd())
	register(cmd)
}

// addedBlock is one PATH of `block add`, as --json prints it.
type addedBlock struct {
	Path   string        `json:"path"`
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	Kind   string        `json:"kind"`            // "file" or "tree"
	Files  int           `json:"files,omitempty"` // trees: number of file entries
	Import string        `json:"import,omitempty"`
}

func newBlockAddCmd() *cobra.Command {
	var asJSON bool
	var importTo string
	cmd := &cobra.Command{
		Use:   "add [--store DIR] [--json] [--import-to DEST] PATH...",
		Short: "Store files as blocks and folders as tree blocks; print their digests",
		Long: `Store each PATH in the store and print its digest.

A file becomes a raw block: the blob blobs/sha256/<hex> of the store is the
file's bytes, and <hex> is what sha256sum prints for it.

A folder becomes a tree block: each file in it becomes a block, and a small
canonical document listing the relative paths, modes, symlink targets and file
blocks is stored too; the tree's digest is that document's. The same content
gives the same digest wherever it lies and whatever its times and owners, and
a new version of a folder shares every unchanged file's block.

Blocks added here are recorded (blockfile/blocks/<hex>) so that 'blockfile gc'
keeps them until an image uses them or 'blockfile gc --blocks' drops them.

Output: one "sha256:<hex>  PATH" line per PATH, like sha256sum.

--import-to DEST prints ready-to-paste IMPORT lines instead. DEST must be
absolute. With one PATH and a DEST not ending in "/", DEST is the exact
destination (a folder's contents land in DEST/). Otherwise DEST is a folder and
each PATH goes to DEST/<base name> (a folder's contents to DEST/<base name>/).`,
		Example: `  # A jar: prints sha256:<hex>  libs/guava-33.jar
  blockfile block add libs/guava-33.jar

  # A folder of jars, and lines to paste into a Dockerfile
  blockfile block add --import-to /app/libs/ libs/*.jar
  #   IMPORT block@sha256:<hex> /app/libs/guava-33.jar
  #   ...

  # A whole JDK as one tree block, unpacked at /opt/java/
  blockfile block add --import-to /opt/java jdk-21.0.4
  #   IMPORT block@sha256:<tree hex> /opt/java/

  # For scripts
  blockfile block add --json app.jar | jq -r '.[0].digest'`,
		Args: minArgs(1),
	}
	open := createStoreFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of {path, digest, size, kind: file|tree} (with --import-to, also the IMPORT line)")
	cmd.Flags().StringVar(&importTo, "import-to", "", "print `IMPORT block@<digest> DEST...` lines for a Dockerfile; DEST is absolute")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if importTo != "" && !path.IsAbs(importTo) {
			return usageError{fmt.Errorf("--import-to %q: want an absolute path (IMPORT does not use WORKDIR)", importTo)}
		}
		s, err := open()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		var out []addedBlock
		for _, p := range args {
			a, err := addPath(ctx, s, p)
			if err != nil {
				return err
			}
			if importTo != "" {
				line, err := importLine(a, importTo, len(args) == 1)
				if err != nil {
					return err
				}
				a.Import = line
			}
			out = append(out, a)
			if !asJSON {
				if importTo != "" {
					fmt.Fprintln(cmd.OutOrStdout(), a.Import)
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "%s  %s\n", a.Digest, blocks.Quote(p))
				}
			}
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), out)
		}
		return nil
	}
	return cmd
}

// addPath stores the file or folder p and records it as a gc root. A symlink
// given on the command line is followed, as cp does.
func addPath(ctx context.Context, s *store.Store, p string) (addedBlock, error) {
	// gc must not sweep a block between its write and its record.
	release, err := s.Lease(ctx)
	if err != nil {
		return addedBlock{}, err
	}
	defer release()
	fi, err := os.Stat(p)
	if err != nil {
		return addedBlock{}, err
	}
	var desc ocispec.Descriptor
	files := 0
	switch {
	case fi.Mode().IsRegular():
		ref, err := addFile(ctx, s, p)
		if err != nil {
			return addedBlock{}, err
		}
		desc = ref.Descriptor(blocks.MediaTypeBlock)
	case fi.IsDir():
		doc, t, err := tree.Build(ctx, p, func(ctx context.Context, f string) (blocks.Ref, error) {
			return addFile(ctx, s, f)
		})
		if err != nil {
			return addedBlock{}, err
		}
		desc = tree.DocRef(doc).Descriptor(blocks.MediaTypeTree)
		if err := s.Push(ctx, desc, bytes.NewReader(doc)); err != nil {
			return addedBlock{}, fmt.Errorf("%s: store tree document: %w", p, err)
		}
		for _, e := range t.Entries {
			if e.Type == tree.TypeFile {
				files++
			}
		}
	default:
		return addedBlock{}, fmt.Errorf("%s: a %s cannot be a block; give a file or a folder", p, fi.Mode().Type())
	}
	if err := s.RecordBlock(ctx, desc); err != nil {
		return addedBlock{}, fmt.Errorf("%s: %w", p, err)
	}
	kind := "file"
	if desc.MediaType == blocks.MediaTypeTree {
		kind = "tree"
	}
	return addedBlock{Path: p, Digest: desc.Digest, Size: desc.Size, Kind: kind, Files: files}, nil
}

// addFile streams the file f into the store: hashed while it is written, so
// it is read once.
func addFile(ctx context.Context, s *store.Store, f string) (blocks.Ref, error) {
	r, err := os.Open(f)
	if err != nil {
		return blocks.Ref{}, err
	}
	defer r.Close()
	desc, err := s.Ingest(ctx, blocks.MediaTypeBlock, r)
	if err != nil {
		return blocks.Ref{}, fmt.Errorf("%s: %w", f, err)
	}
	return blocks.Ref{Digest: desc.Digest, Size: desc.Size}, nil
}

// importLine is the IMPORT line for a (see the --import-to help).
func importLine(a addedBlock, dest string, single bool) (string, error) {
	if single && !strings.HasSuffix(dest, "/") {
		dest = path.Clean(dest)
	} else {
		base := filepath.Base(filepath.Clean(a.Path))
		if base == "/" || base == "." || base == ".." {
			return "", fmt.Errorf("%s: no base name to place under --import-to %s; give one PATH and the exact destination", a.Path, dest)
		}
		dest = path.Join(dest, base)
	}
	if a.Kind == "tree" && dest != "/" {
		dest += "/"
	}
	// IMPORT takes no quoting and no variables: refuse what it cannot say.
	if strings.IndexFunc(dest, unicode.IsSpace) >= 0 || strings.Contains(dest, "$") {
		return "", fmt.Errorf("%s: destination %q holds whitespace or \"$\", which IMPORT cannot express", a.Path, dest)
	}
	return fmt.Sprintf("IMPORT block@%s %s", a.Digest, dest), nil
}

func newBlockLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls [--store DIR] [--json]",
		Short: "List the blocks recorded by 'block add'",
		Long: `List the blocks that 'blockfile block add' recorded: digest, kind (file or
tree), size, and whether the blob is present. These are kept by 'blockfile gc'
and dropped by 'blockfile gc --blocks' unless an image uses them.`,
		Example: `  blockfile block ls
  blockfile block ls --json`,
		Args: exactArgs(0),
	}
	open := storeFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of {digest, size, kind, present}")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		s, err := open()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		recorded, err := s.RecordedBlocks(ctx)
		if err != nil {
			return err
		}
		sort.Slice(recorded, func(i, j int) bool { return recorded[i].Digest < recorded[j].Digest })
		type row struct {
			Digest  digest.Digest `json:"digest"`
			Size    int64         `json:"size"`
			Kind    string        `json:"kind"`
			Present bool          `json:"present"`
		}
		rows := []row{}
		for _, d := range recorded {
			ok, err := s.Exists(ctx, d.Digest)
			if err != nil {
				return err
			}
			kind := "file"
			if d.MediaType == blocks.MediaTypeTree {
				kind = "tree"
			}
			rows = append(rows, row{d.Digest, d.Size, kind, ok})
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), rows)
		}
		w := cmd.OutOrStdout()
		for _, r := range rows {
			missing := ""
			if !r.Present {
				missing = "  MISSING"
			}
			fmt.Fprintf(w, "%s  %-4s  %10s%s\n", r.Digest, r.Kind, sizeString(r.Size), missing)
		}
		return nil
	}
	return cmd
}
