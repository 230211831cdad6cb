package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/transport"
)

func init() { register(newHydrateCmd()) }

func newHydrateCmd() *cobra.Command {
	var (
		asJSON   bool
		progress string
	)
	cmd := &cobra.Command{
		Use:   "hydrate [flags] NAME DEST",
		Short: "Rebuild the byte-identical standard image from its blocked form",
		Long: `Hydrate reassembles the standard image of NAME from its blocked layers and
blocks and writes it to DEST: oci-archive:FILE[:REF] (loadable by docker load and
ctr images import), oci:DIR[:REF] or docker://REF. The result has exactly the
manifest digest of the standard image. On any error DEST is left absent.
To docker://, the signatures, attestations and SBOMs the store keeps for the
image are pushed too (docs/SIGNING.md).`,
		Args: exactArgs(2),
	}
	openStore := storeFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().StringVar(&progress, "progress", "auto", "progress output: auto, plain or none")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		pw, plain, err := progressOutput(progress, cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		s, err := openStore()
		if err != nil {
			return err
		}
		// On Ctrl-C, cancel so the destination is aborted and temp files removed.
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		dst, err := transport.ParseSink(ctx, args[1], transport.WithDefaultName(args[0]))
		if err != nil {
			return err
		}
		desc, err := image.Hydrate(ctx, s, args[0], dst, image.HydrateOptions{Progress: pw, PlainProgress: plain})
		if err != nil {
			return err
		}
		if ref, ok := strings.CutPrefix(args[1], "docker://"); ok {
			// Signatures, attestations and SBOMs the store keeps for it.
			if _, err := image.PushReferrers(ctx, s, desc, transport.Registry{}, ref); err != nil {
				return fmt.Errorf("hydrate %s: pushed the image, but not its signatures and attestations: %w", args[0], err)
			}
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), map[string]any{"name": args[0], "dest": args[1], "standard": desc})
		}
		fmt.Fprintln(cmd.OutOrStdout(), desc.Digest)
		return nil
	}
	return cmd
}
