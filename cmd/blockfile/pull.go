package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	gname "github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/registry"
	"github.com/blockfile/blockfile/blocks/transport"
	"github.com/blockfile/blockfile/internal/units"
)

func init() { register(newPullCmd()) }

func newPullCmd() *cobra.Command {
	var (
		jobs        int
		asJSON      bool
		progress    string
		materialize bool
		outputs     []string
		minSize     string
		compression string
		noDeltas    bool
		noBlockMap  bool
	)
	cmd := &cobra.Command{
		Use:   "pull [flags] REF [NAME]",
		Short: "Pull an image from a registry into the store, downloading only the blocks it lacks",
		Long: `Pull resolves REF (host[:port]/repo:tag or @sha256:..., a docker:// prefix
accepted). If its image index holds a blocked form (pushed by 'blockfile
push'), pull downloads its manifests, then only the blobs the store lacks among
the blocked layers, block members and configs; the standard layers are rebuilt
locally, byte for byte. Otherwise it pulls the image like any client and
exports it, as 'blockfile export docker://REF' does.

Every blob is checked against its digest and size before anything is written
into place: on any error the store and the outputs are unchanged. The image is
stored under NAME (default: REF's repository:tag), its standard layers rebuilt
in the store (--materialize=false: keep only the blocked form, as bundle apply)
and written to each --output: oci-archive:FILE[:REF], oci:DIR[:REF] or
docker://REF ({name} is replaced by NAME). Prints the bytes downloaded next to
the size of the standard image a plain client would have downloaded.

If the registry holds a delta to the image (pushed with 'push --delta-from')
from an image the store holds whole, pull downloads that update bundle, which
carries changed blocks as binary deltas, and applies it (every prerequisite
and digest checked before anything is written), instead of fetching the
changed blocks whole; --no-deltas does not look for one. A delta whose bytes
do not verify fails the pull, store unchanged, naming its digest.

A layer of small files with blocks among them that the store lacks entirely
is read whole, in one request, and its blocked layer derived from it; the
registry's block map (pushed beside the index) names each block member's raw
block, so that the blocks need not be inflated (--no-block-map: inflate them).`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return usageError{fmt.Errorf("%s: want REF [NAME], got %d argument(s) (see --help)", cmd.CommandPath(), len(args))}
			}
			return nil
		},
	}
	openStore := createStoreFlag(cmd)
	reg := registryFlags(cmd)
	cmd.Flags().IntVar(&jobs, "jobs", registry.DefaultJobs, "blobs downloaded at once")
	addOutputsFlag(cmd, &outputs, "where to write the image (repeatable): oci-archive:FILE[:REF], oci:DIR[:REF], docker://REF")
	cmd.Flags().BoolVar(&materialize, "materialize", true, "also rebuild the standard layers inside the store (false: keep only the blocked form; hydrate on demand)")
	cmd.Flags().BoolVar(&noDeltas, "no-deltas", false, "fetch the blobs the store lacks even when the registry holds a delta from an image the store has")
	cmd.Flags().BoolVar(&noBlockMap, "no-block-map", false, "derive the blocked layers of layers read whole by inflating their blocks, without the registry's block map")
	addJSONFlag(cmd, &asJSON, "print what was done as JSON")
	addProgressFlag(cmd, &progress)
	cmd.Flags().StringVar(&minSize, "min-block-size", units.Exact(image.DefaultMinBlockSize), "for an image without a blocked form: as export --min-block-size")
	cmd.Flags().StringVar(&compression, "compression", "gzip", "for an image without a blocked form: as export --compression")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if jobs < 1 {
			return usageError{fmt.Errorf("--jobs %d: want at least 1", jobs)}
		}
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
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		name := ""
		if len(args) == 2 {
			name = args[1]
		}
		var res *registry.PullResult
		err = readFrom(ctx, reg, args[0], func(ref gname.Reference, ropts []remote.Option, conn *transport.HTTP) error {
			var err error
			res, err = registry.Pull(ctx, s, ref, name, registry.PullOptions{
				Remote: ropts, HTTP: conn, Jobs: jobs, Progress: pw, PlainProgress: plain,
				NoMaterialize: !materialize, Outputs: outputs, Registry: *reg, NoDeltas: noDeltas, NoBlockMap: noBlockMap,
				Export: image.ExportOptions{Compression: c, MinBlockSize: size},
			})
			return err
		})
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), res)
		}
		w := cmd.OutOrStdout()
		how := "blocked form"
		if !res.Blocked {
			how = "no blocked form: pulled whole and exported"
		}
		fmt.Fprintf(w, "pulled %s as %s in %s (%s)\n", res.Ref, blocks.Quote(res.Name), res.Duration.Round(1e6), how)
		fmt.Fprintf(w, "  standard  %s\n", res.Standard.Digest)
		pct := 0.0
		if res.StandardSize > 0 {
			pct = 100 * float64(res.Downloaded.Bytes) / float64(res.StandardSize)
		}
		fmt.Fprintf(w, "  downloaded %s in %d blobs, standard image %s (%.1f%%); %d blobs already in the store\n",
			sizeString(res.Downloaded.Bytes), res.Downloaded.Blobs, sizeString(res.StandardSize), pct, res.Present.Blobs)
		if d := res.Delta; d != nil {
			fmt.Fprintf(w, "  delta %s from %s: bundle %s instead of %s of blobs, %d blobs added\n",
				d.Manifest.Digest, d.BaseIndex, sizeString(d.Bundle.Size), sizeString(d.Instead), d.Ingested.Blobs)
		}
		if res.Dehydrated > 0 {
			via := "inflating their blocks"
			if res.BlockMap != nil {
				via = "through the block map " + res.BlockMap.Digest.String()
			}
			fmt.Fprintf(w, "  %d layer(s) read whole, %d blocked layer(s) derived %s\n", res.Dehydrated, res.Derived, via)
		}
		for _, o := range res.Outputs {
			fmt.Fprintf(w, "    -> %s\n", blocks.Quote(o))
		}
		return nil
	}
	return cmd
}
