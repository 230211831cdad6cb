package bundle

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
)

// ProgressFunc is told, as a stage advances, how many bytes of total are done.
type ProgressFunc func(stage string, done, total int64)

// CreateOptions say what the target already holds.
type CreateOptions struct {
	// From names images in the store that the target already has (earlier
	// bundles shipped to that site): their closures are the base.
	From []string

	// Have is an inventory brought back from the target: the base.
	Have *Inventory

	// Full must be set when neither From nor Have is: the bundle then
	// carries everything (a first install). Requiring it keeps a forgotten
	// --from from silently shipping gigabytes.
	Full bool

	// NoPatches ships every changed blob whole, never as a patch against a
	// blob the target holds (see Patch).
	NoPatches bool

	// NoDeltas ships every changed block whole, never as a delta against a
	// block the target holds (see PatchDeltaMember).
	NoDeltas bool

	// Progress, if set, is called while blobs are written.
	Progress ProgressFunc
}

// Closures walks the images tagged names in s.
func Closures(ctx context.Context, s *store.Store, names []string) ([]*Closure, error) {
	var out []*Closure
	for _, n := range names {
		desc, err := s.Resolve(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", n, err)
		}
		c, err := Walk(ctx, s, n, desc)
		if err != nil {
			return nil, err
		}
		// The signatures, attestations and SBOMs of the image's manifests
		// travel with it.
		var subjects []digest.Digest
		for _, b := range c.Blobs {
			if b.Kind == KindIndex || b.Kind == KindManifest {
				subjects = append(subjects, b.Digest)
			}
		}
		refs, err := s.ReferrersClosure(ctx, subjects...)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", n, err)
		}
		if err := c.addReferrers(ctx, s, refs, false); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Create writes to path a bundle of the images tagged names in s, holding
// only what the base in opts lacks. The file appears complete or not at all
// (written to path.tmp, synced, renamed).
func Create(ctx context.Context, s *store.Store, names []string, path string, opts CreateOptions) (*Header, error) {
	if len(names) == 0 {
		return nil, errors.New("bundle create: no images given")
	}
	for _, n := range names {
		// A tag another tool wrote may be anything; apply would refuse it.
		if err := blocks.ValidateName(n); err != nil {
			return nil, fmt.Errorf("bundle create: %w", err)
		}
	}
	var base Base
	switch {
	case len(opts.From) > 0 && opts.Have != nil:
		return nil, errors.New("bundle create: give the base as images (From) or as an inventory (Have), not both")
	case len(opts.From) > 0:
		from, err := Closures(ctx, s, opts.From)
		if err != nil {
			return nil, fmt.Errorf("base: %w", err)
		}
		base = BaseOf(from...)
	case opts.Have != nil:
		base = opts.Have
	case !opts.Full:
		return nil, errors.New("bundle create: no base: give the images the site has (--from), its inventory (--have), or --full for a first install")
	}
	closures, err := Closures(ctx, s, names)
	if err != nil {
		return nil, err
	}
	plan, err := MakePlan(closures, base)
	if err != nil {
		return nil, err
	}
	var fetch Fetcher = s
	if base != nil && !opts.NoPatches {
		// The images a patch may be made against: those shipped before,
		// or, with an inventory, any in this store the target holds.
		view := opts.From
		if opts.Have != nil {
			tags, err := s.Tags(ctx)
			if err != nil {
				return nil, err
			}
			view = nil
			for name := range tags {
				view = append(view, name)
			}
			sort.Strings(view)
		}
		dir, err := os.MkdirTemp(filepath.Dir(path), ".bundle-patches-")
		if err != nil {
			return nil, fmt.Errorf("bundle create: %w", err)
		}
		defer os.RemoveAll(dir)
		// The deflate work apply will do, member patches and deltas
		// together, within MaxDeflatedBytes.
		budget := newDeflateBudget()
		files, err := addPatches(ctx, s, plan, names, view, base, dir, budget)
		if err != nil {
			return nil, fmt.Errorf("bundle create: patches: %w", err)
		}
		if !opts.NoDeltas {
			if err := addDeltas(ctx, s, plan, names, view, base, dir, files, budget); err != nil {
				return nil, fmt.Errorf("bundle create: deltas: %w", err)
			}
		}
		fetch = patchFiles{files: files, next: s}
	}
	// In an upgrade, a changed layer whose blocked form costs more than
	// the layer itself travels as its standard layer (layerchoice.go).
	var derived map[digest.Digest]bool
	if base != nil {
		if derived, err = chooseStandardLayers(ctx, s, plan, names, s.TempDir()); err != nil {
			return nil, fmt.Errorf("bundle create: %w", err)
		}
	}
	if derived != nil {
		if err := requiresWithDerived(ctx, s, plan, names, derived); err != nil {
			return nil, fmt.Errorf("bundle create: %w", err)
		}
	}
	h := plan.Header()

	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("bundle create: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := Write(ctx, f, fetch, h, opts.Progress); err != nil {
		return nil, fmt.Errorf("bundle create %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("bundle create %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("bundle create %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("bundle create: %w", err)
	}
	ok = true
	syncDir(filepath.Dir(path))
	return h, nil
}

// epoch is the mtime of every tar entry, so the same plan gives the same bytes.
var epoch = time.Unix(0, 0).UTC()

// Write writes the bundle for h to w, streaming each blob from f, which
// verifies it on the way (a damaged store blob fails the write).
func Write(ctx context.Context, w io.Writer, f Fetcher, h *Header, progress ProgressFunc) error {
	tw := tar.NewWriter(w)
	hdr, err := json.MarshalIndent(h, "", " ")
	if err != nil {
		return err
	}
	if err := writeFile(tw, HeaderName, hdr); err != nil {
		return err
	}
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return err
	}
	if err := writeFile(tw, ocispec.ImageLayoutFile, layout); err != nil {
		return err
	}
	idx, err := json.Marshal(layoutIndex(h.Images))
	if err != nil {
		return err
	}
	if err := writeFile(tw, "index.json", idx); err != nil {
		return err
	}
	for _, dir := range []string{"blobs/", blobDir} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	var done int64
	shipped := h.Shipped()
	buf := make([]byte, 1<<20)
	for _, b := range h.Blobs {
		if err := ctx.Err(); err != nil {
			return err
		}
		e := b.entry()
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: blobName(e.Digest), Size: e.Size, Mode: 0o444, ModTime: epoch}); err != nil {
			return fmt.Errorf("blob %s: %w", b.Digest, err)
		}
		rc, err := f.Fetch(ctx, e)
		if err != nil {
			return fmt.Errorf("blob %s (%s): %w", b.Digest, b.Kind, err)
		}
		// The reader verifies at EOF, so read it to EOF; the tar writer
		// refuses a byte more than b.Size.
		_, err = io.CopyBuffer(tw, rc, buf)
		rc.Close()
		if err != nil {
			return fmt.Errorf("blob %s (%s): %w", b.Digest, b.Kind, err)
		}
		done += e.Size
		if progress != nil {
			progress("write", done, shipped)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("closing tar: %w", err)
	}
	return nil
}

// layoutIndex is index.json of the layout inside a bundle.
func layoutIndex(images []Image) ocispec.Index {
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}}
	idx.SchemaVersion = 2
	for _, im := range images {
		d := plainDescriptor(im.Index)
		d.Annotations = map[string]string{ocispec.AnnotationRefName: im.Name}
		idx.Manifests = append(idx.Manifests, d)
	}
	return idx
}

func writeFile(tw *tar.Writer, name string, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(data)), Mode: 0o444, ModTime: epoch}); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// syncDir makes a rename in dir durable; best effort (some filesystems refuse).
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
