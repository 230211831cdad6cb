package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/registry"
)

func init() { register(newPushCmd()) }

func newPushCmd() *cobra.Command {
	var (
		jobs        int
		asJSON      bool
		progress    string
		tagChildren bool
		deltaFrom   []string
		noBlockMap  bool
	)
	cmd := &cobra.Command{
		Use:   "push [flags] NAME REF",
		Short: "Push an image of the store to a registry tag: the standard image and, beside it, its blocked form",
		Long: `Push uploads the image NAME of the store under the tag REF
(host[:port]/repo:tag, a docker:// prefix accepted): one image index holding
the standard manifest(s), which every client pulls as a normal image, and the
blocked manifest(s) and block sets that 'blockfile pull' uses to download only
the blocks a store lacks (docs/REGISTRY.md).

Blobs the repository has are skipped (HEAD); a blob the store saw in another
repository of the same registry is mounted from there; the others are
uploaded, --jobs at a time, each retried from the store on network errors.
The index is pushed last, so the tag never names an incomplete image; an
interrupted push can be re-run. Prints the index digest and the standard
manifest digest (what 'skopeo copy' of the tag yields): pin and sign those.

Distribution 2.x's garbage-collect --delete-untagged deletes the untagged
manifests a tagged index names (distribution/distribution#3004), which breaks
multi-platform images and this index alike; so push also tags each of them
as sha256-<hex>.blockfile (--tag-children=false: not, for registries whose
collector follows indexes, such as distribution 3).

--delta-from BASE (repeatable; BASE an image of the store, e.g. the previous
release) also publishes, beside the image, the update bundle from BASE to it
('bundle create --from BASE NAME': changed blocks as binary deltas, changed
layers as patches) as an OCI referrer of the index. 'blockfile pull' into a
store that holds BASE downloads that bundle instead of the changed blocks
whole. The index and its digest do not change; plain clients never see it.
A delta the registry already holds for a base is not made again.

Push also publishes the image's block map (docs/FORMAT.md section 8d), an OCI
referrer of the index naming the raw block of each block member: a first pull
that reads a layer of small files whole derives its blocked layer from it
without inflating the blocks (--no-block-map: not).`,
		Args: exactArgs(2),
	}
	openStore := storeFlag(cmd)
	reg := registryFlags(cmd)
	cmd.Flags().IntVar(&jobs, "jobs", registry.DefaultJobs, "blobs uploaded at once")
	cmd.Flags().BoolVar(&tagChildren, "tag-children", true, "also tag each manifest the index names (sha256-<hex>.blockfile), so that garbage-collect --delete-untagged of distribution 2.x keeps them")
	cmd.Flags().StringArrayVar(&deltaFrom, "delta-from", nil, "also publish the update bundle from this store image (repeatable), for pulls into stores that hold it")
	cmd.Flags().BoolVar(&noBlockMap, "no-block-map", false, "do not publish the block map beside the index (first pulls then inflate the blocks of the layers they read whole)")
	addJSONFlag(cmd, &asJSON, "print the result as JSON")
	addProgressFlag(cmd, &progress)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if jobs < 1 {
			return usageError{fmt.Errorf("--jobs %d: want at least 1", jobs)}
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
		ref, ropts, err := reg.Remote(ctx, args[1])
		if err != nil {
			return usageError{err}
		}
		res, err := registry.Push(ctx, s, args[0], ref, registry.PushOptions{
			Remote: ropts, Jobs: jobs, Progress: pw, PlainProgress: plain, TagChildren: tagChildren,
			DeltaFrom: deltaFrom, NoBlockMap: noBlockMap,
		})
		if err != nil {
			return reg.Explain(ref, err)
		}
		for _, w := range res.Warnings {
			fmt.Fprintf(cmd.ErrOrStderr(), "blockfile push: warning: %s\n", w)
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), res)
		}
		w := cmd.OutOrStdout()
		fmt.Fprintf(w, "pushed %s to %s in %s\n", blocks.Quote(res.Name), res.Ref, res.Duration.Round(1e6))
		fmt.Fprintf(w, "  index     %s\n", res.Index.Digest)
		fmt.Fprintf(w, "  standard  %s (%s; what plain clients pull)\n", res.Standard.Digest, sizeString(res.StandardSize))
		fmt.Fprintf(w, "  uploaded %d blobs (%s), mounted %d (%s), skipped %d already there (%s), %d manifests\n",
			res.Uploaded.Blobs, sizeString(res.Uploaded.Bytes), res.Mounted.Blobs, sizeString(res.Mounted.Bytes),
			res.Skipped.Blobs, sizeString(res.Skipped.Bytes), res.Manifests.Blobs)
		if res.BlockMap != nil {
			fmt.Fprintf(w, "  block map %s\n", res.BlockMap.Digest)
		}
		for _, d := range res.Deltas {
			how := "pushed"
			if d.Present {
				how = "already there"
			}
			fmt.Fprintf(w, "  delta from %s (%s): %s, bundle %s, %s\n", blocks.Quote(d.Base), d.BaseIndex.Digest, d.Manifest.Digest, sizeString(d.Bundle.Size), how)
		}
		return nil
	}
	return cmd
}
