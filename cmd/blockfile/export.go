package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/registry"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

func init() { register(newExportCmd()) }

func newExportCmd() *cobra.Command {
	var (
		minSize     string
		compression string
		asJSON      bool
		progress    string
	)
	cmd := &cobra.Command{
		Use:   "export [flags] SRC NAME",
		Short: "Store an image as a standard image with block-framed layers plus its blocked form",
		Long: `Export reads the image SRC (oci-archive:FILE[:REF], oci:DIR[:REF] or docker://REF)
and writes into the store, under NAME, the standard image (the same config and
uncompressed layers, with block-framed compression) and its blocked form: layers
whose block files are replaced by .import. stubs, and the blocks themselves.
Block files are the files the frontend recorded as imported and every regular
file of at least --min-block-size bytes.

A docker://REF whose image index already holds a blocked form (pushed by
'blockfile push') is pulled as 'blockfile pull' does: only the blobs the store
lacks, the standard image rebuilt byte for byte (its digest is the pushed one).`,
		Args: exactArgs(2),
	}
	openStore := storeFlag(cmd)
	reg := registryFlags(cmd)
	cmd.Flags().StringVar(&minSize, "min-block-size", sizeString(image.DefaultMinBlockSize), "regular files of at least this size become blocks (e.g. 64KiB, 1MiB, 4096)")
	cmd.Flags().StringVar(&compression, "compression", "gzip", "layer compression: gzip or zstd")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().StringVar(&progress, "progress", "auto", "progress output: auto, plain or none")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		size, err := parseBlockSize(minSize)
		if err != nil {
			return usageError{fmt.Errorf("--min-block-size: %w", err)}
		}
		c := blocks.Compression(compression)
		if c != blocks.Gzip && c != blocks.Zstd {
			return usageError{fmt.Errorf("--compression %q: want gzip or zstd", compression)}
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
		src, err := transport.ParseSource(ctx, args[0])
		if err != nil {
			return err
		}
		defer src.Close()
		res, err := image.Export(ctx, s, src, args[1], image.ExportOptions{
			Compression: c, MinBlockSize: size, Progress: pw, PlainProgress: plain,
		})
		if err != nil {
			return err
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
		fmt.Fprintf(out, "%s: %d block files (%s), %d new members (%s), %d reused\n", res.Name,
			res.Blocks, sizeString(res.BlockBytes), res.NewMembers, sizeString(res.NewMemberBytes), res.ReusedMembers)
		return nil
	}
	return cmd
}

// progressOutput turns --progress into a writer (nil for none) and whether
// it gets plain lines rather than a bar.
func progressOutput(mode string, stderr io.Writer) (io.Writer, bool, error) {
	switch mode {
	case "none":
		return nil, false, nil
	case "plain":
		return stderr, true, nil
	case "auto":
		if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			return stderr, false, nil
		}
		return nil, false, nil
	}
	return nil, false, usageError{fmt.Errorf("--progress %q: want auto, plain or none", mode)}
}

// parseBlockSize parses 16KiB, 1MiB, 16k, 4096 (binary units).
func parseBlockSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToLower(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"kb", 1 << 10}, {"mb", 1 << 20}, {"gb", 1 << 30}, {"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"b", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive size (examples: 16KiB, 1MiB, 4096)", s)
	}
	return n * mult, nil
}

// humanSize prints a byte count in binary units.
func sizeString(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

// exportBlocked pulls ref when its index holds a blocked form (reading its
// standard image and splitting it again would download every layer whole
// and re-frame it); done is false when it does not.
func exportBlocked(ctx context.Context, cmd *cobra.Command, s *store.Store, reg *transport.Registry, src, name string, asJSON bool, pw io.Writer, plain bool) (done bool, err error) {
	ref, ropts, err := reg.Remote(ctx, src)
	if err != nil {
		return false, usageError{err}
	}
	blocked, err := registry.HasBlockedForm(ctx, ref, ropts)
	if err != nil || !blocked {
		return false, err
	}
	res, err := registry.Pull(ctx, s, ref, name, registry.PullOptions{Remote: ropts, Progress: pw, PlainProgress: plain})
	if err != nil {
		return true, err
	}
	if asJSON {
		return true, writeJSON(cmd.OutOrStdout(), res)
	}
	out := cmd.OutOrStdout()
	fmt.Fprintln(out, res.Standard.Digest)
	fmt.Fprintf(out, "%s: pulled the blocked form of %s: %s downloaded, standard image %s\n", res.Name, res.Ref, sizeString(res.Downloaded.Bytes), sizeString(res.StandardSize))
	return true, nil
}
