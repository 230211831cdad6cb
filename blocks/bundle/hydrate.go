package bundle

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/blockfile/blockfile/blocks"
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
		out, err := OutputFor(o, im.Name)
		if err != nil {
			return outs, fmt.Errorf("image %s: %w", blocks.Quote(im.Name), err)
		}
		sink, err := transport.ParseSink(ctx, out, transport.WithDefaultName(im.Name), transport.WithRegistry(opts.Registry))
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
		if ref, ok := strings.CutPrefix(out, "docker://"); ok {
			// The signatures, attestations and SBOMs of the standard
			// image: those the bundle brought, and any the site added.
			if _, err := image.PushReferrers(ctx, s, im.Standard, opts.Registry, ref); err != nil {
				return outs, fmt.Errorf("image %s: output %s: signatures and attestations: %w", im.Name, out, err)
			}
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
//
// The name comes from a bundle: it must be a valid image reference
// (blocks.ValidateName), and the expanded path must stay inside the
// directory the output names before {name} (so no name, whatever it is,
// can write beside or above it).
func OutputFor(output, name string) (string, error) {
	if !strings.Contains(output, "{name}") {
		return output, nil
	}
	if err := blocks.ValidateName(name); err != nil {
		return "", fmt.Errorf("output %s: %w", blocks.Quote(output), err)
	}
	for _, kind := range []string{"oci:", "oci-archive:"} {
		rest, ok := strings.CutPrefix(output, kind)
		if !ok {
			continue
		}
		path, ref, hasRef := strings.Cut(rest, ":")
		safe := strings.NewReplacer("/", "_", ":", "_").Replace(name)
		expanded := strings.ReplaceAll(path, "{name}", safe)
		if i := strings.Index(path, "{name}"); i >= 0 {
			// The directory the user named: what precedes {name}, up to
			// its last separator.
			dir := filepath.Dir(path[:i] + "x")
			if err := within(dir, expanded); err != nil {
				return "", fmt.Errorf("output %s for image %s: %w", blocks.Quote(output), blocks.Quote(name), err)
			}
		}
		out := kind + expanded
		if hasRef {
			out += ":" + strings.ReplaceAll(ref, "{name}", name)
		}
		return out, nil
	}
	return strings.ReplaceAll(output, "{name}", name), nil
}

// ErrOutsideOutput: an expanded output path would leave the directory the
// output names.
var ErrOutsideOutput = errors.New("path leaves the output directory")

// within checks that p, once cleaned, is dir or below it and not dir itself
// with nothing added.
func within(dir, p string) error {
	rel, err := filepath.Rel(filepath.Clean(dir), filepath.Clean(p))
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return fmt.Errorf("%s is not inside %s: %w", blocks.Quote(p), blocks.Quote(dir), ErrOutsideOutput)
	}
	return nil
}
