package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
	"github.com/blockfile/blockfile/internal/units"
)

// The helpers below keep verbs consistent: every verb that writes a file or
// an image takes -o/--output, every long operation takes the same --progress,
// every verb scripts parse takes --json (and then also gets its failures as
// JSON on stdout, see main), and every size is printed by sizeString.

// isCobraUsage reports whether err is one of cobra's own command-line errors.
func isCobraUsage(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "unknown command") || strings.HasPrefix(s, "unknown flag") ||
		strings.HasPrefix(s, "accepts ") || strings.HasPrefix(s, "requires at least") ||
		strings.HasPrefix(s, "unknown shorthand flag") || strings.HasPrefix(s, "flag needs an argument") ||
		strings.HasPrefix(s, "invalid argument")
}

// isUsage reports whether err means the command line was wrong (exit 2): a
// usageError, a cobra parse error, or an image reference that names no
// transport blockfile knows.
func isUsage(err error) bool {
	var ue usageError
	return errors.As(err, &ue) || isCobraUsage(err) || errors.Is(err, transport.ErrBadReference)
}

// exitCode is the exit status for err (see the constants in main.go).
func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case isUsage(err):
		return exitUsage
	}
	var r reportedError
	if errors.As(err, &r) {
		return r.code
	}
	return exitFailed
}

// reportedError is returned by a verb that already printed its --json
// result, failure included (verify's problem list): main then prints no
// {"error"} object and exits with code.
type reportedError struct {
	error
	code int
}

func (e reportedError) Unwrap() error { return e.error }

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

// addJSONFlag adds --json. With it set, main also reports a failure of the
// verb as {"error": "...", "exitCode": N} on stdout.
func addJSONFlag(cmd *cobra.Command, v *bool, usage string) {
	if usage == "" {
		usage = "print the result as JSON (failures too, as {\"error\", \"exitCode\"})"
	}
	cmd.Flags().BoolVar(v, "json", false, usage)
}

// wantsJSON reports whether cmd was run with --json (by name, so verbs that
// predate addJSONFlag get JSON errors too). Before flags are parsed (a flag
// error) it looks at the raw arguments.
func wantsJSON(cmd *cobra.Command, args []string) bool {
	if cmd != nil {
		if f := cmd.Flags().Lookup("json"); f != nil && f.Changed {
			return f.Value.String() == "true"
		}
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "--json" || a == "--json=true" {
			return true
		}
	}
	return false
}

// jsonError is what a --json run prints on stdout when it fails.
type jsonError struct {
	Error    string `json:"error"`
	ExitCode int    `json:"exitCode"`
	Usage    bool   `json:"usage,omitempty"` // the command line was wrong
}

// writeJSON prints v as indented JSON for scripts.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// addOutputFlag adds -o/--output, the destination of every verb that writes
// a file or an image.
func addOutputFlag(cmd *cobra.Command, v *string, usage string) {
	cmd.Flags().StringVarP(v, "output", "o", "", usage)
}

// addOutputsFlag is addOutputFlag for verbs that write several destinations.
func addOutputsFlag(cmd *cobra.Command, v *[]string, usage string) {
	cmd.Flags().StringArrayVarP(v, "output", "o", nil, usage)
}

// Progress modes, as buildx names them.
const (
	progressAuto  = "auto"  // a bar on a terminal, else plain lines
	progressPlain = "plain" // lines (CI logs)
	progressTTY   = "tty"   // a bar even when stderr is not a terminal
	progressQuiet = "quiet" // nothing
)

// addProgressFlag adds --progress auto|plain|tty|quiet (default auto).
func addProgressFlag(cmd *cobra.Command, v *string) {
	cmd.Flags().StringVar(v, "progress", progressAuto, "progress on stderr: auto (a bar on a terminal, else plain lines), plain, tty or quiet")
}

// checkProgress validates a --progress value (a usage error otherwise).
// "none" is accepted as quiet: earlier releases named it so.
func checkProgress(mode string) (string, error) {
	switch mode {
	case progressAuto, progressPlain, progressTTY, progressQuiet:
		return mode, nil
	case "none":
		return progressQuiet, nil
	}
	return "", usageError{fmt.Errorf("--progress %q: want auto, plain, tty or quiet", mode)}
}

// resolveProgress turns auto into tty or plain for stderr.
func resolveProgress(mode string, stderr io.Writer) (string, error) {
	mode, err := checkProgress(mode)
	if err != nil || mode != progressAuto {
		return mode, err
	}
	if isTerminal(stderr) {
		return progressTTY, nil
	}
	return progressPlain, nil
}

// progressOutput turns --progress into a writer (nil for quiet) and whether
// it gets plain lines rather than a bar.
func progressOutput(mode string, stderr io.Writer) (io.Writer, bool, error) {
	mode, err := resolveProgress(mode, stderr)
	if err != nil {
		return nil, false, err
	}
	switch mode {
	case progressQuiet:
		return nil, false, nil
	case progressPlain:
		return stderr, true, nil
	}
	return stderr, false, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// sizeString prints a byte count the one way blockfile does ("12.3 MB").
func sizeString(n int64) string { return units.Size(n) }

// splitFlags parses --min-block-size and --compression, the two flags of
// every verb that splits layers into blocks (export, pull, build).
func splitFlags(minSize, compression string) (int64, blocks.Compression, error) {
	size, err := units.Parse(minSize)
	if err != nil {
		return 0, "", usageError{fmt.Errorf("--min-block-size: %w", err)}
	}
	c := blocks.Compression(compression)
	if c != blocks.Gzip && c != blocks.Zstd {
		return 0, "", usageError{fmt.Errorf("--compression %q: want gzip or zstd", compression)}
	}
	return size, c, nil
}
