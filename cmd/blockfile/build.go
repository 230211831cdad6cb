package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	bkclient "github.com/moby/buildkit/client"
	"github.com/moby/buildkit/util/progress/progressui"
	"github.com/spf13/cobra"
	"github.com/tonistiigi/fsutil"
	"golang.org/x/sync/errgroup"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/transport"
	"github.com/blockfile/blockfile/frontend"
	"github.com/blockfile/blockfile/internal/units"
)

func init() { register(newBuildCmd()) }

// defaultBuildkitAddr is buildkitd's default socket.
const defaultBuildkitAddr = "unix:///run/buildkit/buildkitd.sock"

func newBuildCmd() *cobra.Command {
	var (
		addr, file, platform, target, name, progress, compression, minSize string
		buildArgs                                                          []string
		asJSON                                                             bool
	)
	cmd := &cobra.Command{
		Use:   "build [flags] -t NAME CONTEXT",
		Short: "Build a Dockerfile with IMPORT and store the image and its blocked form",
		Long: `Build runs the Blockfile frontend in this process against buildkitd, with the
store as the "blocks" build context, and hands the resulting OCI image straight to
export: the store then holds the standard image and its blocked form under NAME.
The standard manifest digest is printed.

The Dockerfile may start with a "# syntax=" line naming the frontend image; it is
ignored here, since the frontend runs in-process.`,
		Args: exactArgs(1),
	}
	openStore := createStoreFlag(cmd)
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "", "buildkitd address (default $BUILDKIT_HOST, else "+defaultBuildkitAddr+")")
	f.StringVarP(&file, "file", "f", "", "the Dockerfile (default CONTEXT/Dockerfile)")
	f.StringArrayVar(&buildArgs, "build-arg", nil, "a build argument K=V (repeatable)")
	f.StringVar(&platform, "platform", "", "target platform(s), e.g. linux/amd64")
	f.StringVar(&target, "target", "", "the stage to build")
	f.StringVarP(&name, "tag", "t", "", "the image name in the store (required)")
	addProgressFlag(cmd, &progress)
	f.StringVar(&compression, "compression", "gzip", "layer compression in the store: gzip or zstd")
	f.StringVar(&minSize, "min-block-size", units.Exact(image.DefaultMinBlockSize), "regular files of at least this size become blocks on export")
	addJSONFlag(cmd, &asJSON, "print the export result as JSON")

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if name == "" {
			return usageError{errors.New("build: -t NAME is required")}
		}
		attrs := map[string]string{}
		for _, kv := range buildArgs {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				if v, ok := os.LookupEnv(kv); ok && kv != "" { // like docker: --build-arg K takes K from the environment
					attrs["build-arg:"+kv] = v
					continue
				}
				return usageError{fmt.Errorf("--build-arg %q: want K=V", kv)}
			}
			attrs["build-arg:"+k] = v
		}
		if platform != "" {
			attrs["platform"] = platform
		}
		if target != "" {
			attrs["target"] = target
		}
		progress, err := checkProgress(progress)
		if err != nil {
			return err
		}
		// BuildKit's display takes the same four modes.
		mode := progressui.DisplayMode(progress)
		c := blocks.Compression(compression)
		if c != blocks.Gzip && c != blocks.Zstd {
			return usageError{fmt.Errorf("--compression %q: want gzip or zstd", compression)}
		}
		size, err := units.Parse(minSize)
		if err != nil {
			return usageError{fmt.Errorf("--min-block-size: %w", err)}
		}
		if addr == "" {
			addr = os.Getenv("BUILDKIT_HOST")
		}
		if addr == "" {
			addr = defaultBuildkitAddr
		}
		contextDir := args[0]
		if file == "" {
			file = filepath.Join(contextDir, "Dockerfile")
		}
		attrs["filename"] = filepath.Base(file)
		// The frontend runs here: tell upstream not to hand a `# syntax=`
		// Dockerfile to that image (see frontend.Build).
		attrs["cmdline"] = "blockfile build"

		s, err := openStore()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		// The store is the "blocks" context, as with buildx --build-context
		// (the frontend verifies each block it reads). Attaching it as a
		// session OCI store (frontend.ArgOCIStore) also works, but the
		// session's content proxy made cold builds about twice as slow.
		archive, err := buildImage(ctx, addr, mode, cmd.ErrOrStderr(), attrs, map[string]string{
			"context":            contextDir,
			"dockerfile":         filepath.Dir(file),
			frontend.ContextName: s.Root(),
		})
		if archive != "" {
			defer os.Remove(archive)
		}
		if err != nil {
			return err
		}
		src, err := transport.ParseSource(ctx, "oci-archive:"+archive)
		if err != nil {
			return err
		}
		defer src.Close()
		pw, plain, err := progressOutput(progress, cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		res, err := image.Export(ctx, s, src, name, image.ExportOptions{
			Compression: c, MinBlockSize: size, Progress: pw, PlainProgress: plain,
		})
		if err != nil {
			return fmt.Errorf("export %s: %w", name, err)
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), res)
		}
		fmt.Fprintln(cmd.OutOrStdout(), res.Standard.Digest)
		return nil
	}
	return cmd
}

// buildImage builds with the frontend in-process and writes the image as an
// OCI archive to a temporary file, whose path it returns (also on error, so
// the caller removes it).
func buildImage(ctx context.Context, addr string, mode progressui.DisplayMode, stderr io.Writer, attrs, dirs map[string]string) (string, error) {
	mounts := map[string]fsutil.FS{}
	for k, dir := range dirs {
		fs, err := fsutil.NewFS(dir)
		if err != nil {
			return "", fmt.Errorf("build context %s: %w", k, err)
		}
		mounts[k] = fs
	}
	tmp, err := os.CreateTemp("", "blockfile-build-*.oci.tar")
	if err != nil {
		return "", err
	}
	archive := tmp.Name()
	tmp.Close()

	c, err := bkclient.New(ctx, addr)
	if err != nil {
		return archive, fmt.Errorf("connect to buildkitd at %s: %w", addr, err)
	}
	defer c.Close()

	display, err := progressui.NewDisplay(stderr, mode)
	if err != nil {
		return archive, err
	}
	ch := make(chan *bkclient.SolveStatus)
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error {
		_, err := c.Build(ctx, bkclient.SolveOpt{
			LocalMounts:   mounts,
			FrontendAttrs: attrs,
			Exports: []bkclient.ExportEntry{{
				Type: bkclient.ExporterOCI,
				Output: func(map[string]string) (io.WriteCloser, error) {
					return os.OpenFile(archive, os.O_WRONLY|os.O_TRUNC, 0o600)
				},
			}},
		}, "blockfile", frontend.Build, ch)
		return err
	})
	eg.Go(func() error {
		// The display must drain ch even after an error, or Build blocks.
		_, err := display.UpdateFrom(context.WithoutCancel(ctx), ch)
		return err
	})
	if err := eg.Wait(); err != nil {
		return archive, fmt.Errorf("build: %w", err)
	}
	return archive, nil
}
