package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks/registry"
)

func newBlockPushCmd() *cobra.Command {
	var (
		asJSON   bool
		tag      string
		jobs     int
		progress string
		perMan   int
	)
	cmd := &cobra.Command{
		Use:   "push [--store DIR] [flags] REPO [DIGEST...]",
		Short: "Publish blocks to a registry repository for BLOCKFILE_REPO builds",
		Long: `Push uploads blocks from the store to the registry repository REPO
(host[:port]/path, no tag) as blobs, so that a build with
--build-arg BLOCKFILE_REPO=REPO fetches each IMPORTed block from there, on any
builder. With no DIGEST, every block 'blockfile block add' recorded (and the
store holds) is pushed; a tree block brings the file blocks it lists.

The blocks stay referenced by tagged manifests (REPO:<tag>, and REPO:<tag>-1,
<tag>-2... past 10000 blocks each), so registry garbage collection, even with
--delete-untagged, keeps them. A block the registry already has is not sent
again, and each run adds to the blocks the tag kept from earlier runs.`,
		Example: `  blockfile block push registry.example/team/blocks
  docker buildx build --build-arg BLOCKFILE_REPO=registry.example/team/blocks .

  # Only some blocks, for scripts
  blockfile block push --json registry.example/team/blocks sha256:<hex>`,
		Args: minArgs(1),
	}
	openStore := storeFlag(cmd)
	reg := registryFlags(cmd)
	cmd.Flags().StringVar(&tag, "tag", registry.DefaultBlockTag, "tag that keeps the blocks referenced")
	cmd.Flags().IntVar(&jobs, "jobs", 4, "blocks uploaded at once")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().StringVar(&progress, "progress", "auto", "progress output: auto, plain or none")
	cmd.Flags().IntVar(&perMan, "blocks-per-manifest", registry.MaxBlocksPerManifest, "blocks per block manifest (tests use a small value to exercise several)")
	_ = cmd.Flags().MarkHidden("blocks-per-manifest")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		repoArg := strings.TrimPrefix(args[0], "docker://")
		repo, err := name.NewRepository(repoArg)
		if err != nil {
			return usageError{fmt.Errorf("REPO %q: want host[:port]/path without a tag (the tag is --tag): %w", args[0], err)}
		}
		if !strings.Contains(repoArg, "/") {
			return usageError{fmt.Errorf("REPO %q: want host[:port]/path", args[0])}
		}
		var digests []digest.Digest
		for _, a := range args[1:] {
			d, err := digest.Parse(a)
			if err != nil || d.Algorithm() != digest.SHA256 {
				return usageError{fmt.Errorf("DIGEST %q: want sha256:<64 hex>", a)}
			}
			digests = append(digests, d)
		}
		if jobs < 1 {
			return usageError{fmt.Errorf("--jobs %d: want at least 1", jobs)}
		}
		pw, _, err := progressOutput(progress, cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		s, err := openStore()
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		ref, opts, err := reg.Remote(ctx, repo.String()+":"+tag)
		if err != nil {
			return err
		}
		descs, missing, err := registry.BlocksToPush(ctx, s, digests)
		if err != nil {
			return err
		}
		for _, d := range missing {
			fmt.Fprintf(cmd.ErrOrStderr(), "block push: %s was recorded by 'block add' but its blob is gone; skipped\n", d)
		}
		o := registry.BlockPushOptions{Tag: tag, Concurrency: jobs, BlocksPerManifest: perMan}
		if pw != nil {
			var last time.Time
			o.Progress = func(p registry.BlockPushProgress) {
				if p.Done == p.Total || time.Since(last) > time.Second {
					last = time.Now()
					fmt.Fprintf(pw, "block push: %d/%d blocks checked, %s uploaded\n", p.Done, p.Total, sizeString(p.UploadedBytes))
				}
			}
		}
		res, err := registry.PushBlocks(ctx, s, ref.Context(), opts, descs, o)
		if err != nil {
			return reg.Explain(ref, err)
		}
		res.Missing = missing
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), res)
		}
		w := cmd.OutOrStdout()
		fmt.Fprintf(w, "%s: %d blocks uploaded (%s), %d already there; the tag keeps %d blocks (%d new)\n",
			res.Repository, res.Uploaded.Blobs, sizeString(res.Uploaded.Bytes), res.Present.Blobs, res.Blocks, res.Added)
		for _, m := range res.Manifests {
			fmt.Fprintf(w, "  %s:%s  %s  %d blocks\n", res.Repository, m.Tag, m.Digest, m.Blocks)
		}
		fmt.Fprintf(w, "build with: --build-arg BLOCKFILE_REPO=%s\n", strings.TrimPrefix(repoArg, "docker://"))
		return nil
	}
	return cmd
}
