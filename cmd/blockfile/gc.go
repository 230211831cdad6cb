package main

import (
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
)

func init() {
	var asJSON, dryRun, dropBlocks bool
	cmd := &cobra.Command{
		Use:   "gc [--store DIR] [--dry-run] [--blocks] [--json]",
		Short: "Remove blobs that no image and no added block references",
		Long: `Remove every blob that nothing in the store references. To free an old
version, remove its name first ('blockfile rm NAME'); what it shares with the
images still named stays.

Kept: everything reachable from a tag in index.json (image indexes, the
standard image each names, manifests, configs, layers, blocked layers,
block-sets and their members), and every block recorded by 'blockfile block
add' (for a tree block, its document and its files). Also removed: temp and
spool files of killed writers (of this host; others' after an hour), and
member index records whose member is gone.

--blocks also drops the blocks recorded by 'block add': their records, and
their blobs unless an image references them. Exported images do not need them
(they hold block data as members); run it once the builds that IMPORT them are
done.

gc first waits until no writer (export, block add, bundle apply, hydrate)
holds a lease on the store, and writers wait while it runs, so it never
removes what a running writer has written but not yet tagged. It takes the
store's index lock, so tags cannot change while it runs, and it removes
nothing if a manifest, index or tree it must read is missing or corrupt (run
'blockfile verify').`,
		Example: `  blockfile gc --dry-run
  blockfile gc
  blockfile gc --blocks --json`,
		Args: exactArgs(0),
	}
	open := storeFlag(cmd)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be removed; remove nothing")
	cmd.Flags().BoolVar(&dropBlocks, "blocks", false, "also drop the blocks added with 'block add' (kept only if an image references them)")
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"dryRun", "removed": [{digest, size, mediaType}], "bytesFreed", "tempFiles", "memberRecords", "blockRecords"}`)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		s, err := open()
		if err != nil {
			return err
		}
		res, err := s.GCWithOptions(cmd.Context(), store.GCOptions{DryRun: dryRun, DropBlocks: dropBlocks})
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if asJSON {
			type removed struct {
				Digest    digest.Digest `json:"digest"`
				Size      int64         `json:"size"`
				MediaType string        `json:"mediaType,omitempty"`
			}
			out := struct {
				DryRun        bool            `json:"dryRun"`
				Removed       []removed       `json:"removed"`
				BytesFreed    int64           `json:"bytesFreed"`
				TempFiles     []string        `json:"tempFiles"`
				MemberRecords []string        `json:"memberRecords"`
				BlockRecords  []digest.Digest `json:"blockRecords"`
				ExtentRecords []string        `json:"extentRecords"`
				Extracted     []removed       `json:"extracted"`
			}{DryRun: dryRun, Removed: []removed{}, BytesFreed: res.BytesFreed,
				TempFiles: emptyIfNil(res.TempFiles), MemberRecords: emptyIfNil(res.MemberRecords), BlockRecords: emptyIfNil(res.BlockRecords),
				ExtentRecords: emptyIfNil(res.ExtentRecords), Extracted: []removed{}}
			for _, d := range res.Removed {
				out.Removed = append(out.Removed, removed{d.Digest, d.Size, d.MediaType})
			}
			for _, d := range res.Extracted {
				out.Extracted = append(out.Extracted, removed{d.Digest, d.Size, d.MediaType})
			}
			return writeJSON(w, out)
		}
		verb := "removed"
		if dryRun {
			verb = "would remove"
		}
		for _, d := range res.Removed {
			fmt.Fprintf(w, "%s %s  %s%s\n", verb, d.Digest, sizeString(d.Size), mediaTypeNote(d))
		}
		for _, d := range res.BlockRecords {
			fmt.Fprintf(w, "%s block record %s\n", verb, d)
		}
		for _, p := range res.TempFiles {
			fmt.Fprintf(w, "%s stale temp file %s\n", verb, blocks.Quote(p))
		}
		for _, p := range res.MemberRecords {
			fmt.Fprintf(w, "%s member record %s\n", verb, blocks.Quote(p))
		}
		for _, p := range res.ExtentRecords {
			fmt.Fprintf(w, "%s extent record %s\n", verb, blocks.Quote(p))
		}
		for _, d := range res.Extracted {
			// A pulled layer held it (store extents); an image still uses it.
			fmt.Fprintf(w, "kept %s  %s in a file of its own: the layer that held it was removed\n", d.Digest, sizeString(d.Size))
		}
		freed := "freed"
		if dryRun {
			freed = "would free"
		}
		fmt.Fprintf(w, "%s %s in %d blob(s)\n", freed, sizeString(res.BytesFreed), len(res.Removed))
		return nil
	}
	register(cmd)
}

func mediaTypeNote(d ocispec.Descriptor) string {
	if d.MediaType == "" {
		return ""
	}
	return "  (" + blocks.Quote(d.MediaType) + ")"
}

func emptyIfNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
