package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/internal/version"
)

func init() { register(newVersionCmd()) }

func newVersionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version [--json]",
		Short: "Print the version, commit, format version and Go version",
		Long: `Version prints what this binary is: the module version (the release tag, or
the pseudo-version go install recorded, or "(devel)"), the commit it was built
from, the store/stub format version it reads and writes (docs/FORMAT.md), the
bundle format version (docs/BUNDLES.md), the Go version and platform, and the
BuildKit module linked in. 'blockfile --version' prints the same.`,
		Args: exactArgs(0),
	}
	addJSONFlag(cmd, &asJSON, "print {version, commit, modified, formatVersion, bundleVersion, goVersion, platform, buildkitModule}")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		info := version.Get()
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), info)
		}
		printVersion(cmd.OutOrStdout(), info)
		return nil
	}
	return cmd
}

// printVersion prints info as `blockfile version` and `--version` show it.
func printVersion(w io.Writer, info version.Info) {
	commit := info.Commit
	if commit == "" {
		commit = "unknown"
	}
	if info.Modified {
		commit += " (modified)"
	}
	fmt.Fprintf(w, "blockfile %s\n", info.Version)
	fmt.Fprintf(w, "  commit:          %s\n", commit)
	fmt.Fprintf(w, "  format version:  %d (docs/FORMAT.md)\n", info.FormatVersion)
	fmt.Fprintf(w, "  bundle version:  %d (docs/BUNDLES.md)\n", info.BundleVersion)
	fmt.Fprintf(w, "  go:              %s %s\n", info.GoVersion, info.Platform)
	if info.BuildkitModule != "" {
		fmt.Fprintf(w, "  buildkit:        %s\n", info.BuildkitModule)
	}
}
