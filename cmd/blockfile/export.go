package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	gname "github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/registry"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
	"github.com/blockfile/blockfile/internal/units"
)

func init() { register(newExportCmd()) }

func newExportCmd() *cobra.Command {
	var (
		minSize     string
		compression string
		asJSON      bool
		progress    string
		noRefs      bool
	)
	cmd := &cobra.Command{
		Use:   "export [flags] SRC NAME",
		Short: "Store an image as a standard image with block-framed layers plus its blocked form",
		Long: `Export reads the image SRC (oci-archive:FILE[:REF], oci:DIR[:REF], docker://REF, or
docker-archive:FILE[:REF|:@N], what docker save writes) and writes into the store, under NAME, the standard image (the same config and
uncompressed layers, with block-framed compression) and its blocked form: layers
whose block files are replaced by .import. stubs, and the blocks themselves.
Block files are the files the frontend recorded as imported and every regular
file of at least --min-block-size bytes.

A docker://REF whose image index already holds a blocked form (pushed by
'blockfile push') is pulled as 'blockfile pull' does: only the blobs the store
lacks, the standard image rebuilt byte for byte (its digest is the pushed one).`,
		Args: exactArgs(2),
	}
	openStore := createStoreFlag(cmd)
	reg := registryFlags(cmd)
	cmd.Flags().StringVar(&minSize, "min-block-size", units.Exact(image.DefaultMinBlockSize), "regular files of at least this size become blocks (e.g. 64KiB, 1MiB, 4096)")
	cmd.Flags().StringVar(&compression, "compression", "gzip", "layer compression: gzip or zstd")
	addJSONFlag(cmd, &asJSON, "")
	addProgressFlag(cmd, &progress)
	cmd.Flags().BoolVar(&noRefs, "no-referrers", false, "do not copy the signatures, attestations and SBOMs that refer to the source's manifests (docs/SIGNING.md)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		size, c, err := splitFlags(minSize, compression)
		if err != nil {
			return err
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
		if strings.HasPrefix(args[0], "docker://") {
			done, err := exportBlocked(ctx, cmd, s, reg, args[0], args[1], asJSON, pw, plain)
			if done || err != nil {
				return err
			}
		}
		src, err := transport.ParseSource(ctx, args[0], transport.WithRegistry(*reg))
		if err != nil {
			return err
		}
		defer src.Close()
		res, err := image.Export(ctx, s, src, args[1], image.ExportOptions{
			Compression: c, MinBlockSize: size, Progress: pw, PlainProgress: plain, NoReferrers: noRefs,
		})
		if err != nil {
			return err
		}
		for _, d := range res.DroppedReferrers {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: %d signature(s)/attestation(s) of %s not kept: export re-framed it as %s; sign %s (docs/SIGNING.md)\n",
				d.Count, d.Source, d.Standard, d.Standard)
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), res)
		}
		out := cmd.OutOrStdout()
		fmt.Fprintln(out, res.Standard.Digest)
		for _, m := range res.Manifests {
			for i, l := range m.Layers {
				fmt.Fprintf(out, "  %s layer %d: %s  %s -> blocked %s, %d blocks (%s)\n", platformName(m.Platform), i,
					l.Standard.Digest.Encoded()[:12], sizeString(l.Standard.Size), sizeString(l.Blocked.Size), l.Blocks, sizeString(l.BlockBytes))
			}
		}
		fmt.Fprintf(out, "%s: %d block files (%s), %d new members (%s), %d reused\n", blocks.Quote(res.Name),
			res.Blocks, sizeString(res.BlockBytes), res.NewMembers, sizeString(res.NewMemberBytes), res.ReusedMembers)
		for _, r := range res.Referrers {
			fmt.Fprintf(out, "  referrer %s of %s (%s)\n", r.Descriptor.Digest, r.Subject, referrerKind(r.Descriptor))
		}
		return nil
	}
	return cmd
}

// referrerKind names what a referrer is, for the export summary.
func referrerKind(d ocispec.Descriptor) string {
	if t := d.Annotations[blocks.AnnotationReferrerTag]; t != "" {
		return "cosign ." + t
	}
	if d.ArtifactType != "" {
		return d.ArtifactType
	}
	return d.MediaType
}

// exportBlocked pulls ref when its index holds a blocked form (reading its
// standard image and splitting it again would download every layer whole
// and re-frame it); done is false when it does not.
func exportBlocked(ctx context.Context, cmd *cobra.Command, s *store.Store, reg *transport.Registry, src, name string, asJSON bool, pw io.Writer, plain bool) (done bool, err error) {
	var res *registry.PullResult
	err = readFrom(ctx, reg, src, func(ref gname.Reference, ropts []remote.Option, conn *transport.HTTP) error {
		blocked, err := registry.HasBlockedForm(ctx, ref, ropts)
		if err != nil || !blocked {
			return err
		}
		done = true
		res, err = registry.Pull(ctx, s, ref, name, registry.PullOptions{Remote: ropts, HTTP: conn, Registry: *reg, Progress: pw, PlainProgress: plain})
		return err
	})
	if err != nil || !done {
		return done, err
	}
	if asJSON {
		return true, writeJSON(cmd.OutOrStdout(), res)
	}
	out := cmd.OutOrStdout()
	fmt.Fprintln(out, res.Standard.Digest)
	fmt.Fprintf(out, "%s: pulled the blocked form of %s: %s downloaded, standard image %s\n", blocks.Quote(res.Name), res.Ref, sizeString(res.Downloaded.Bytes), sizeString(res.StandardSize))
	return true, nil
}
