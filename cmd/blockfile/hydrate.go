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
		output   string
	)
	cmd := &cobra.Command{
		Use:   "hydrate [flags] NAME (DEST | -o DEST)",
		Short: "Rebuild the byte-identical standard image from its blocked form",
		Long: `Hydrate reassembles the standard image of NAME from its blocked layers and
blocks and writes it to DEST: oci-archive:FILE[:REF] (loadable by docker load and
ctr images import), oci:DIR[:REF] or docker://REF. The result has exactly the
manifest digest of the standard image. On any error DEST is left absent.
DEST may be given as the second argument or with -o/--output.
To docker://, the signatures, attestations and SBOMs the store keeps for the
image are pushed too (docs/SIGNING.md).`,
		Args: func(cmd *cobra.Command, args []string) error {
			if output != "" {
				return exactArgs(1)(cmd, args)
			}
			return exactArgs(2)(cmd, args)
		},
	}
	openStore := storeFlag(cmd)
	reg := registryFlags(cmd)
	addOutputFlag(cmd, &output, "where to write the image: oci-archive:FILE[:REF], oci:DIR[:REF] or docker://REF")
	addJSONFlag(cmd, &asJSON, "")
	addProgressFlag(cmd, &progress)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if output == "" {
			output = args[1]
		}
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
		dst, err := transport.ParseSink(ctx, output, transport.WithDefaultName(args[0]), transport.WithRegistry(*reg))
		if err != nil {
			return err
		}
		desc, err := image.Hydrate(ctx, s, args[0], dst, image.HydrateOptions{Progress: pw, PlainProgress: plain})
		if err != nil {
			return err
		}
		if ref, ok := strings.CutPrefix(output, "docker://"); ok {
			// Signatures, attestations and SBOMs the store keeps for it.
			if _, err := image.PushReferrers(ctx, s, desc, *reg, ref); err != nil {
				return fmt.Errorf("hydrate %s: pushed the image, but not its signatures and attestations: %w", args[0], err)
			}
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), map[string]any{"name": args[0], "dest": output, "standard": desc})
		}
		fmt.Fprintln(cmd.OutOrStdout(), desc.Digest)
		return nil
	}
	return cmd
}
