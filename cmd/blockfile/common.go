package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks/store"
)

// isCobraUsage reports whether err is one of cobra's own command-line errors.
func isCobraUsage(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "unknown command") || strings.HasPrefix(s, "unknown flag") ||
		strings.HasPrefix(s, "accepts ") || strings.HasPrefix(s, "requires at least") ||
		strings.HasPrefix(s, "unknown shorthand flag")
}

// storeFlag adds --store to cmd and returns a function that opens it. The
// store must exist: a verb that only reads or changes a store fails with "no
// store at DIR" instead of creating an empty one where a --store was mistyped.
func storeFlag(cmd *cobra.Command) func() (*store.Store, error) {
	return addStoreFlag(cmd, store.Open)
}

// createStoreFlag is storeFlag for the verbs that add images or blocks
// (export, build, block add, bundle apply): the store is created if missing.
func createStoreFlag(cmd *cobra.Command) func() (*store.Store, error) {
	return addStoreFlag(cmd, store.Create)
}

func addStoreFlag(cmd *cobra.Command, open func(string) (*store.Store, error)) func() (*store.Store, error) {
	var dir string
	cmd.Flags().StringVar(&dir, "store", "", "store directory (default $BLOCKFILE_STORE, else a per-user data directory)")
	return func() (*store.Store, error) {
		if dir == "" {
			dir = store.DefaultRoot()
		}
		return open(dir)
	}
}

// exactArgs is cobra.ExactArgs with a usage error (exit 2).
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s: want %d argument(s), got %d (see --help)", cmd.CommandPath(), n, len(args))}
		}
		return nil
	}
}

// minArgs is cobra.MinimumNArgs with a usage error (exit 2).
func minArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return usageError{fmt.Errorf("%s: want at least %d argument(s), got %d (see --help)", cmd.CommandPath(), n, len(args))}
		}
		return nil
	}
}

// writeJSON prints v as indented JSON for scripts.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
