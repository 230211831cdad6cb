package bundle

import (
	"context"
	"fmt"
	"strings"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// Deliver does for one image that is tagged in s with all its blobs present
// what Apply does after ingesting: it rebuilds the standard image in s
// (unless opts.NoMaterialize) and writes it to opts.Outputs, checking that
// both reproduce im.Standard. Only im.Name and im.Standard are used. It
// returns the outputs written. Registry pulls finish through it, so a pull
// and a bundle end in the same state.
func Deliver(ctx context.Context, s *store.Store, im Image, opts ApplyOptions) ([]string, error) {
	return hydrate(ctx, s, im, opts)
}

// hydrate rebuilds the standard image of im in s (so the store can serve it
// directly, and so apply proves it reproduces the source digest), then
// writes it to each output. It returns the outputs written.
func hydrate(ctx context.Context, s *store.Store, im Image, opts ApplyOptions) ([]string, error) {
	if !opts.NoMaterialize {
		std, err := image.Materialize(ctx, s, im.Name)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", im.Name, err)
		}
		if std.Digest != im.Standard.Digest {
			return nil, fmt.Errorf("image %s: hydrated to %s, the bundle says %s", im.Name, std.Digest, im.Standard.Digest)
		}
	}
	var outs []string
	for _, o := range opts.Outputs {
		out := OutputFor(o, im.Name)
		sink, err := transport.ParseSink(ctx, out, transport.WithDefaultName(im.Name))
		if err != nil {
			return outs, fmt.Errorf("image %s: output %s: %w", im.Name, out, err)
		}
		got, err := image.Hydrate(ctx, s, im.Name, sink, image.HydrateOptions{Progress: opts.HydrateProgress, PlainProgress: opts.PlainProgress})
		if err != nil {
			return outs, fmt.Errorf("image %s: output %s: %w", im.Name, out, err)
		}
		if got.Digest != im.Standard.Digest {
			return outs, fmt.Errorf("image %s: output %s: wrote %s, the bundle says %s", im.Name, out, got.Digest, im.Standard.Digest)
		}
		outs = append(outs, out)
	}
	return outs, nil
}

// OutputFor expands {name} in an output reference for the image name. In
// the path of an oci: or oci-archive: output it stands for the name made
// safe as a file name ('/' and ':' become '_'), since a colon there would
// end the path; in a REF (after the path's colon) and in docker:// it is
// the name itself: oci-archive:/out/{name}.tar, oci:/out/layout:{name},
// docker://registry.local/{name}.
func OutputFor(output, name string) string {
	for _, kind := range []string{"oci:", "oci-archive:"} {
		if rest, ok := strings.CutPrefix(output, kind); ok {
			path, ref, hasRef := strings.Cut(rest, ":")
			out := kind + strings.ReplaceAll(path, "{name}", strings.NewReplacer("/", "_", ":", "_").Replace(name))
			if hasRef {
				out += ":" + strings.ReplaceAll(ref, "{name}", name)
			}
			return out
		}
	}
	return strings.ReplaceAll(output, "{name}", name)
}
