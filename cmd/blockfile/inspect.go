package main

import (
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
)

func init() { register(newInspectCmd()) }

func newInspectCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect [flags] NAME",
		Short: "Show an image's layers, blocks and stubs",
		Args:  exactArgs(1),
	}
	openStore := storeFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		s, err := openStore()
		if err != nil {
			return err
		}
		info, err := image.Inspect(cmd.Context(), s, args[0])
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), info)
		}
		out := cmd.OutOrStdout()
		fmt.Fprintf(out, "name:      %s\nstandard:  %s (%s)\nindex:     %s\nblocks:    %d (%s stored)\nstubs:     %d\n",
			blocks.Quote(info.Name), info.Standard.Digest, blocks.Quote(info.Standard.MediaType), info.Index.Digest, info.Blocks, sizeString(info.BlockBytes), info.Stubs)
		for _, m := range info.Manifests {
			fmt.Fprintf(out, "\n%s  manifest %s  blocked %s\n", platformName(m.Platform), m.Standard.Digest, m.Blocked.Digest)
			fmt.Fprintf(out, "  %-4s %-19s %10s  %-19s %10s %6s %7s %10s\n", "#", "standard", "size", "blocked", "size", "stubs", "blocks", "block bytes")
			for i, l := range m.Layers {
				fmt.Fprintf(out, "  %-4d %-19s %10s  %-19s %10s %6d %7d %10s\n", i,
					shortDigest(l.Standard), sizeString(l.Standard.Size), shortDigest(l.Blocked), sizeString(l.Blocked.Size), l.Stubs, l.Blocks, sizeString(l.BlockBytes))
			}
		}
		for _, o := range info.Others {
			fmt.Fprintf(out, "\nother: %s %s\n", blocks.Quote(o.MediaType), o.Digest)
		}
		return nil
	}
	return cmd
}

func shortDigest(d ocispec.Descriptor) string {
	e := d.Digest.Encoded()
	if len(e) > 12 {
		e = e[:12]
	}
	return d.Digest.Algorithm().String() + ":" + e
}

func platformName(p *ocispec.Platform) string {
	if p == nil {
		return "-"
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return blocks.Sanitize(s)
}
