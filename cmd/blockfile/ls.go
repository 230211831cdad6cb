package main

import (
	"context"
	"fmt"
	"sort"
	"text/tabwriter"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
)

// lsEntry is one tag of the store, as `ls --json` prints it.
type lsEntry struct {
	Name      string              `json:"name"`
	Digest    digest.Digest       `json:"digest"`
	MediaType string              `json:"mediaType"`
	Kind      string              `json:"kind"`               // "blockfile" (exported image) or "other"
	Standard  *ocispec.Descriptor `json:"standard,omitempty"` // the standard image hydrate reproduces
	Size      int64               `json:"size"`               // bytes of the standard image (or of all the tag reaches)
	Error     string              `json:"error,omitempty"`
}

func init() {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls [--store DIR] [--json]",
		Short: "List the images (tags) in the store",
		Long: `List every tag in the store's index.json.

For an image exported by blockfile (kind "blockfile"), STANDARD is the digest
of the standard image that 'blockfile hydrate' reproduces (the manifest, or for
a multi-platform image the index, that a plain client pulls) and SIZE is that
image's bytes: manifests, configs and layers. Tags written by other tools are
listed too (kind "other", SIZE is everything the tag reaches).

Blocks added with 'blockfile block add' are listed by 'blockfile block ls'.`,
		Example: `  blockfile ls
  blockfile ls --json | jq -r '.[] | select(.name=="app:v2") | .standard.digest'`,
		Args: exactArgs(0),
	}
	open := storeFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of {name, digest, mediaType, kind, standard, size}")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		s, err := open()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		tags, err := s.Tags(ctx)
		if err != nil {
			return err
		}
		entries := []lsEntry{}
		for name, desc := range tags {
			entries = append(entries, describeTag(ctx, s, name, desc))
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), entries)
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tKIND\tSTANDARD\tSIZE")
		for _, e := range entries {
			std, size := "-", sizeString(e.Size)
			if e.Standard != nil {
				std = string(e.Standard.Digest)
			}
			if e.Error != "" {
				size = "? (" + blocks.Sanitize(e.Error) + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", blocks.Quote(e.Name), e.Kind, std, size)
		}
		return tw.Flush()
	}
	register(cmd)
}

// describeTag reads what ls shows about one tag. A damaged image is listed
// with the error rather than stopping the listing; verify says more.
func describeTag(ctx context.Context, s *store.Store, name string, desc ocispec.Descriptor) lsEntry {
	e := lsEntry{Name: name, Digest: desc.Digest, MediaType: desc.MediaType, Kind: "other"}
	sizeRoot := desc
	if desc.MediaType == ocispec.MediaTypeImageIndex || desc.MediaType == store.MediaTypeDockerManifestList {
		var idx struct {
			Annotations map[string]string `json:"annotations"`
		}
		if err := s.GetJSON(ctx, desc, &idx); err != nil {
			e.Error = err.Error()
			return e
		}
		std, ok, err := store.StandardOf(idx.Annotations)
		if err != nil {
			e.Error = err.Error()
			return e
		}
		if ok {
			e.Kind, e.Standard, sizeRoot = "blockfile", &std, std
		}
	}
	all, err := s.Reachable(ctx, sizeRoot)
	if err != nil {
		e.Error = err.Error()
		return e
	}
	for _, d := range all {
		e.Size += d.Size
	}
	return e
}
