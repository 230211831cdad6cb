// Command blockfile builds images whose large files are content-addressed
// blocks, exports them to the blocked form, and makes and applies offline
// update bundles that carry only the blocks a target lacks.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/transport"
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
	for _, v := range verbs {
		root.AddCommand(v)
	}
	return root
}

func main() {
	err := newRootCmd().Execute()
	if err == nil {
		os.Exit(exitOK)
	}
	// A registry refusing access is said once, with what to do, not as
	// the HTTP exchange that led to it. Errors name images, paths and tags
	// from outside: no raw escapes.
	var ae *transport.AuthError
	if errors.As(err, &ae) {
		err = ae
	}
	fmt.Fprintln(os.Stderr, "blockfile:", blocks.Sanitize(err.Error()))
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		os.Exit(exitUsage)
	}
	os.Exit(exitFailed)
}
