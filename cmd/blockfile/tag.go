package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
)

func init() {
	register(newTagCmd())
	register(newRmCmd())
}

func newTagCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tag [--store DIR] SRC DST",
		Short: "Give the image SRC a second name DST",
		Long: `Tag points the name DST at the image SRC points at (replacing what DST named
before, if anything). Both are names in the store, as 'blockfile ls' lists
them; DST must be an image reference such as app:v2 or registry.local/app:2.
Nothing is copied: both names share every blob.`,
		Example: `  blockfile tag app:v2 app:prod`,
		Args:    exactArgs(2),
	}
	open := storeFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		src, dst := args[0], args[1]
		if err := blocks.ValidateName(dst); err != nil {
			return usageError{err}
		}
		s, err := open()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		desc, err := s.Resolve(ctx, src)
		if err != nil {
			return err
		}
		if err := s.Tag(ctx, dst, desc); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s -> %s\n", blocks.Quote(dst), desc.Digest)
		return nil
	}
	return cmd
}

func newRmCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rm [--store DIR] NAME...",
		Short: "Remove names (tags) from the store; 'gc' then frees what nothing references",
		Long: `Rm removes each NAME from the store's index.json. The blobs stay until
'blockfile gc' removes those that no remaining name and no block added with
'blockfile block add' references, so an old version's layers and blocks are
freed once no newer image shares them.

Every NAME is tried; if any is not in the store, rm says which and exits 1.`,
		Example: `  blockfile rm app:v1 && blockfile gc`,
		Args:    minArgs(1),
	}
	open := storeFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		s, err := open()
		if err != nil {
			return err
		}
		var errs []error
		for _, name := range args {
			if err := s.Untag(cmd.Context(), name); err != nil {
				if errors.Is(err, store.ErrNotFound) {
					err = fmt.Errorf("no image named %s in %s", blocks.Quote(name), s.Root())
				}
				errs = append(errs, err)
				continue
			}
			fmt.Fprintf(cmd.OutOrStdout(), "untagged %s\n", blocks.Quote(name))
		}
		return errors.Join(errs...)
	}
	return cmd
}
