package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/bundle"
)

func init() { register(newInventoryCmd()) }

func newInventoryCmd() *cobra.Command {
	var (
		out    string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "inventory [flags] -o FILE",
		Short: "Write a compact list of the blobs a store holds, for bundle create --have",
		Long: `Inventory writes to FILE what this store holds (16 bytes per blob), so that the
site can carry it back to whoever makes its bundles: 'blockfile bundle create
--have FILE' then leaves out everything the site already has.`,
		Args: exactArgs(0),
	}
	openStore := storeFlag(cmd)
	cmd.Flags().StringVarP(&out, "output", "o", "", "inventory file to write (required)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if out == "" {
			return usageError{errors.New("inventory: -o FILE is required")}
		}
		s, err := openStore()
		if err != nil {
			return err
		}
		var ds []digest.Digest
		if err := s.Walk(cmd.Context(), func(d digest.Digest, _ int64) error {
			ds = append(ds, d)
			return nil
		}); err != nil {
			return err
		}
		inv, err := bundle.NewInventory(ds, bundle.DefaultPrefix)
		if err != nil {
			return err
		}
		size, err := writeFileAtomic(out, inv)
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), map[string]any{"file": out, "blobs": inv.Len(), "bytes": size})
		}
		fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %d blobs, %s\n", blocks.Quote(out), inv.Len(), sizeString(size))
		return nil
	}
	return cmd
}

// writeFileAtomic writes inv to path through a temp file and a rename.
func writeFileAtomic(path string, inv *bundle.Inventory) (int64, error) {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	n, err := inv.WriteTo(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return 0, fmt.Errorf("inventory %s: %w", path, err)
	}
	return n, nil
}
