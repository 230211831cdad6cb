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
		Long: `Remove every blob that nothing in the store references.

Kept: everything reachable from a tag in index.json (image indexes, the
standard image each names, manifests, configs, layers, blocked layers,
block-sets and their members), and every block recorded by 'blockfile block
add' (for a tree block, its document and its files). Also removed: temp files
of interrupted writes older than an hour, and member index records whose
member is gone.

--blocks also drops the blocks recorded by 'block add': their records, and
their blobs unless an image references them. Exported images do not need them
(they hold block data as members); run it once the builds that IMPORT them are
done.

gc takes the store's index lock, so tags cannot change while it runs, and it
removes nothing if a manifest, index or tree it must read is missing or
corrupt (run 'blockfile verify'). Do not run it while an export into the same
store is in progress: blobs not yet tagged would be removed.`,
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
			}{DryRun: dryRun, Removed: []removed{}, BytesFreed: res.BytesFreed,
				TempFiles: emptyIfNil(res.TempFiles), MemberRecords: emptyIfNil(res.MemberRecords), BlockRecords: emptyIfNil(res.BlockRecords)}
			for _, d := range res.Removed {
				out.Removed = append(out.Removed, removed{d.Digest, d.Size, d.MediaType})
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
