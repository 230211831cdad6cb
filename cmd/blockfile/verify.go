package main

import (
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
)

func init() {
	var asJSON, repair bool
	cmd := &cobra.Command{
		Use:   "verify [--store DIR] [--repair] [--json]",
		Short: "Re-hash every blob and check every image and block is complete",
		Long: `Check the whole store:

  - every blob under blobs/ is re-hashed and must match its name (catches
    flipped bits, truncation, tampering);
  - every tagged image is walked (index, manifests, configs, layers, blocked
    layers, block-sets and their members, and the standard image named by the
    index), and every block recorded by 'block add' (tree blocks down to
    their files): each referenced blob must be present, readable and of the
    declared size;
  - member index records must be readable.

A standard layer that is absent but can be rebuilt (its blocked layer, the
block set and all its members are present and intact, as after 'bundle apply
--materialize=false') is not a problem: it is counted as hydratable, and
'blockfile hydrate' rebuilds it.

With --repair, what can be rebuilt is rebuilt first, then the store is
verified: damaged blobs are removed (a bundle, pull or export brings them
back), bad member records are dropped and the member index is rebuilt from
the block sets, and the standard layers of every tagged image are rebuilt by
hydrate. What is still wrong after that is reported as usual.

Each problem is printed as "KIND: DIGEST PATH (referenced by REF): DETAIL".
Exit status: 0 if the store is sound, 1 if anything is wrong, the store is
empty or missing (nothing verified), or verify could not run; 2 on a usage
error.`,
		Example: `  blockfile verify
  blockfile verify --store /mnt/usb/store --json
  blockfile verify --repair`,
		Args: exactArgs(0),
	}
	open := storeFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"ok", "store", "blobs", "bytes", "problems": [{kind, digest, path, ref, detail}], "hydratable": [{digest, path, manifest, blocked, blockset}]}`)
	cmd.Flags().BoolVar(&repair, "repair", false, "rebuild what can be rebuilt (member records, standard layers; remove damaged blobs) before verifying")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		s, err := open()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		w := cmd.OutOrStdout()
		var rep *image.RepairResult
		if repair {
			if rep, err = image.Repair(ctx, s); err != nil {
				return fmt.Errorf("repair: %w", err)
			}
			e := cmd.ErrOrStderr()
			for _, p := range rep.Removed {
				fmt.Fprintf(e, "repair: removed damaged blob %s\n", blocks.Sanitize(fmt.Sprint(p)))
			}
			for _, p := range rep.DroppedRecords {
				fmt.Fprintf(e, "repair: dropped bad member record %s\n", p)
			}
			if rep.Records > 0 {
				fmt.Fprintf(e, "repair: wrote %d member record(s) from block sets\n", rep.Records)
			}
			for _, n := range rep.Materialized {
				fmt.Fprintf(e, "repair: %s: standard layers complete\n", n)
			}
			for n, why := range rep.Failed {
				fmt.Fprintf(e, "repair: %s: %s\n", n, why)
			}
		}
		var blobs, size int64
		if err := s.Walk(ctx, func(_ digest.Digest, n int64) error { blobs++; size += n; return nil }); err != nil {
			return err
		}
		tags, err := s.Tags(ctx)
		if err != nil {
			return err
		}
		recorded, err := s.RecordedBlocks(ctx)
		if err != nil {
			return err
		}
		if blobs == 0 && len(tags) == 0 && len(recorded) == 0 {
			// An empty store is what a mistyped path or a wiped disk
			// looks like: nothing was verified, so it is not "ok".
			err := fmt.Errorf("store %s is empty: no images and no blocks to verify", s.Root())
			if asJSON {
				if jerr := writeJSON(w, map[string]any{"ok": false, "store": s.Root(), "blobs": 0, "bytes": 0, "empty": true,
					"error": err.Error(), "problems": []store.Problem{}, "hydratable": []store.Hydratable{}}); jerr != nil {
					return jerr
				}
				return reportedError{err, exitFailed} // said in the JSON above
			}
			return err
		}
		problems := []store.Problem{}
		hydratable := []store.Hydratable{}
		verr := s.VerifyWithOptions(ctx, store.VerifyOptions{
			Report: func(p store.Problem) {
				problems = append(problems, p)
				if !asJSON {
					fmt.Fprintln(w, blocks.Sanitize(p.String()))
				}
			},
			Hydratable: func(h store.Hydratable) { hydratable = append(hydratable, h) },
		})
		if verr != nil && !errors.Is(verr, store.ErrProblems) {
			return verr // could not run at all
		}
		if asJSON {
			if err := writeJSON(w, struct {
				OK         bool                `json:"ok"`
				Store      string              `json:"store"`
				Blobs      int64               `json:"blobs"`
				Bytes      int64               `json:"bytes"`
				Problems   []store.Problem     `json:"problems"`
				Hydratable []store.Hydratable  `json:"hydratable"`
				Repair     *image.RepairResult `json:"repair,omitempty"`
			}{verr == nil, s.Root(), blobs, size, problems, hydratable, rep}); err != nil {
				return err
			}
			if verr != nil {
				return reportedError{verr, exitFailed} // the problems are in the JSON above
			}
			return nil
		} else if verr == nil {
			fmt.Fprintf(w, "ok: %d blobs (%s) in %s verified", blobs, sizeString(size), blocks.Quote(s.Root()))
			if len(hydratable) > 0 {
				fmt.Fprintf(w, "; %d standard layer(s) absent but hydratable", len(hydratable))
			}
			fmt.Fprintln(w)
		}
		return verr
	}
	register(cmd)
}
