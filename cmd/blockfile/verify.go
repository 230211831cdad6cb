package main

import (
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks/store"
)

func init() {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "verify [--store DIR] [--json]",
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

Each problem is printed as "KIND: DIGEST PATH (referenced by REF): DETAIL".
Exit status: 0 if the store is sound, 1 if anything is wrong (or verify could
not run), 2 on a usage error.`,
		Example: `  blockfile verify
  blockfile verify --store /mnt/usb/store --json`,
		Args: exactArgs(0),
	}
	open := storeFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"ok", "blobs", "bytes", "problems": [{kind, digest, path, ref, detail}]}`)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		s, err := open()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		var blobs, size int64
		if err := s.Walk(ctx, func(_ digest.Digest, n int64) error { blobs++; size += n; return nil }); err != nil {
			return err
		}
		problems := []store.Problem{}
		w := cmd.OutOrStdout()
		verr := s.Verify(ctx, func(p store.Problem) {
			problems = append(problems, p)
			if !asJSON {
				fmt.Fprintln(w, p)
			}
		})
		if verr != nil && !errors.Is(verr, store.ErrProblems) {
			return verr // could not run at all
		}
		if asJSON {
			if err := writeJSON(w, struct {
				OK       bool            `json:"ok"`
				Store    string          `json:"store"`
				Blobs    int64           `json:"blobs"`
				Bytes    int64           `json:"bytes"`
				Problems []store.Problem `json:"problems"`
			}{verr == nil, s.Root(), blobs, size, problems}); err != nil {
				return err
			}
		} else if verr == nil {
			fmt.Fprintf(w, "ok: %d blobs (%s) in %s verified\n", blobs, humanBytes(size), s.Root())
		}
		return verr
	}
	register(cmd)
}
