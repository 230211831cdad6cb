// Command blockfile builds images whose large files are content-addressed
// blocks, exports them to the blocked form, and makes and applies offline
// update bundles that carry only the blocks a target lacks.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/transport"
	"github.com/blockfile/blockfile/internal/version"
)

// Exit codes that scripts can rely on.
const (
	exitOK     = 0
	exitFailed = 1 // the operation ran and failed (including verify mismatches)
	exitUsage  = 2 // the command line was wrong
)

// usageError marks an error as a usage error (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

var verbs []*cobra.Command

// register adds a verb to the root command; each verb file calls it from init.
func register(cmd *cobra.Command) { verbs = append(verbs, cmd) }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "blockfile",
		Short:         "Ship container image upgrades as only the blocks that changed",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	// --version prints what `blockfile version` prints.
	info := version.Get()
	root.Version = info.Version
	var b strings.Builder
	printVersion(&b, info)
	root.SetVersionTemplate(strings.ReplaceAll(b.String(), "{{", "{{`{{`}}"))
	for _, v := range verbs {
		root.AddCommand(v)
	}
	return root
}

func main() {
	os.Exit(execute(newRootCmd(), os.Args[1:]))
}

// execute runs root with args and returns the exit code. A failure is
// printed on stderr and, for a --json run, also as {"error", "exitCode"} on
// stdout, so a script parsing stdout always gets one JSON document.
func execute(root *cobra.Command, args []string) int {
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil {
		return exitOK
	}
	code := exitCode(err)
	// A registry refusing access is said once, with what to do, not as
	// the HTTP exchange that led to it. Errors name images, paths and tags
	// from outside: no raw escapes.
	var ae *transport.AuthError
	if errors.As(err, &ae) {
		err = ae
	}
	fmt.Fprintln(root.ErrOrStderr(), "blockfile:", blocks.Sanitize(err.Error()))
	var reported reportedError
	if !errors.As(err, &reported) && wantsJSON(cmd, args) {
		_ = writeJSON(root.OutOrStdout(), jsonError{Error: blocks.Sanitize(err.Error()), ExitCode: code, Usage: code == exitUsage})
	}
	return code
}
