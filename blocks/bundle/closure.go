package bundle

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
)

// Fetcher reads blobs. Fetch must verify: its reader returns an error at EOF
// when the bytes do not match desc (the store, transport sources and the
// bundle reader all do).
type Fetcher interface {
	Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)
}

// Closure is what a target must hold for one image to hydrate: every blob
// reachable from the image index except the standard layers that hydrate
// rebuilds from blocked layers and block members.
type Closure struct {
	Image

	// Blobs are the blobs the target must hold, each once, in walk order.
	Blobs []Blob

	// Hydrated are the standard layers the target rebuilds rather than
	// receives (their blocked counterpart has another digest).
	Hydrated []ocispec.Descriptor

	// Missing are the indexes and manifests a tolerant walk could not read
	// (they are also in Blobs); what they name is not in Blobs.
	Missing []Blob
}

// Walk computes the closure of the image index idx, tagged name. It reads
// every index and manifest through f, and nothing else.
func Walk(ctx context.Context, f Fetcher, name string, idx ocispec.Descriptor) (*Closure, error) {
	c, err := walk(ctx, f, name, idx, false)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// walk is Walk; with tolerant, an index or manifest that f reports as not
// found (store.ErrNotFound) is recorded in Closure.Missing and the walk
// goes on without its children, so that apply can list everything a
// target lacks at once.
func walk(ctx context.Context, f Fetcher, name string, idx ocispec.Descriptor, tolerant bool) (*Closure, error) {
	w := &walker{
		tolerant: tolerant,
		f:        f,
		pos:      map[digest.Digest]int{},
		layers:   map[digest.Digest][]ocispec.Descriptor{},
		entry:    map[digest.Digest]ocispec.Descriptor{},
	}
	c := &Closure{Image: Image{Name: name, Index: plainDescriptor(idx)}}
	root, err := w.index(ctx, idx)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	if root == nil { // missing, tolerated: nothing more to learn
		c.Missing = w.missing
		return c, nil
	}
	std, err := standardOf(root, idx)
	if err != nil {
		return nil, fmt.Errorf("image %s: index %s: %w", name, idx.Digest, err)
	}
	c.Standard = std
	switch std.MediaType {
	case ocispec.MediaTypeImageManifest:
		e, ok := w.entry[std.Digest]
		if !ok && w.isMissing(std.Digest) {
			break
		}
		if !ok {
			return nil, fmt.Errorf("image %s: the standard manifest %s is not listed in index %s", name, std.Digest, idx.Digest)
		}
		c.Platforms = platformsOf([]ocispec.Descriptor{e})
	default:
		// A multi-platform source: the standard index is a blob of its own
		// that gc keeps through the annotation; it lists the standard entries.
		var sub *ocispec.Index
		if _, seen := w.pos[std.Digest]; seen {
			sub = new(ocispec.Index)
			err = getJSON(ctx, w.f, std, sub)
		} else {
			sub, err = w.index(ctx, std)
		}
		if err != nil {
			return nil, fmt.Errorf("image %s: standard index: %w", name, err)
		}
		if sub != nil {
			c.Platforms = platformsOf(sub.Manifests)
		}
	}

	// A standard layer is rebuilt at the target when the blocked manifest
	// of its manifest has, at the same position, a layer of another digest.
	hydrated := map[digest.Digest]ocispec.Descriptor{}
	asIs := map[digest.Digest]bool{} // used unchanged by some blocked manifest
	for _, b := range w.blocked {
		of, err := digest.Parse(b.entry.Annotations[blocks.AnnotationBlockedOf])
		if err != nil {
			return nil, fmt.Errorf("image %s: blocked manifest %s: annotation %s: %w", name, b.entry.Digest, blocks.AnnotationBlockedOf, err)
		}
		std, ok := w.layers[of]
		if !ok && w.isMissing(of) {
			continue // reported; what it would hydrate is unknown
		}
		if !ok {
			return nil, fmt.Errorf("image %s: blocked manifest %s is the blocked form of %s, which the index does not list", name, b.entry.Digest, of)
		}
		if len(std) != len(b.layers) {
			return nil, fmt.Errorf("image %s: blocked manifest %s has %d layers, its standard manifest %s has %d", name, b.entry.Digest, len(b.layers), of, len(std))
		}
		for i := range std {
			if std[i].Digest != b.layers[i].Digest {
				hydrated[std[i].Digest] = plainDescriptor(std[i])
			} else {
				// A layer without blocks is its own blocked form.
				w.blobs[w.pos[std[i].Digest]].Kind = KindLayer
				asIs[std[i].Digest] = true
			}
		}
	}
	for _, blob := range w.blobs {
		if _, ok := hydrated[blob.Digest]; ok && blob.Kind == KindLayer && !asIs[blob.Digest] {
			continue
		}
		c.Blobs = append(c.Blobs, blob)
	}
	for d := range asIs {
		delete(hydrated, d)
	}
	c.Hydrated = w.hydratedOrder(hydrated)
	c.Missing = w.missing
	return c, nil
}

// maxImageReferrers caps the referrers one image may carry in a bundle.
const maxImageReferrers = 4096

// addReferrers adds to c the referrers refs (as recorded in a store or
// listed in a bundle header) and every blob they name, each once. Each
// subject must be a manifest or index of the image or an earlier referrer:
// a bundle cannot attach something to content it does not deliver.
func (c *Closure) addReferrers(ctx context.Context, f Fetcher, refs []store.Referrer, tolerant bool) error {
	if len(refs) == 0 {
		return nil
	}
	if len(refs) > maxImageReferrers {
		return fmt.Errorf("image %s: %d referrers, more than the %d allowed", c.Name, len(refs), maxImageReferrers)
	}
	w := &walker{
		tolerant: tolerant,
		f:        f,
		pos:      map[digest.Digest]int{},
		layers:   map[digest.Digest][]ocispec.Descriptor{},
		entry:    map[digest.Digest]ocispec.Descriptor{},
	}
	subjects := map[digest.Digest]bool{c.Standard.Digest: true, c.Index.Digest: true}
	for _, b := range c.Blobs {
		if b.Kind == KindIndex || b.Kind == KindManifest {
			subjects[b.Digest] = true
		}
		w.pos[b.Digest] = -1 // already in the closure: not added again
	}
	for _, r := range refs {
		if err := store.CheckReferrer(r.Descriptor); err != nil {
			return fmt.Errorf("image %s: %w", c.Name, err)
		}
		if !subjects[r.Subject] {
			return fmt.Errorf("image %s: referrer %s names subject %s, which is not a manifest of the image or an earlier referrer", c.Name, r.Descriptor.Digest, r.Subject)
		}
		subjects[r.Descriptor.Digest] = true
		if err := w.manifest(ctx, plainDescriptor(r.Descriptor)); err != nil {
			return fmt.Errorf("image %s: referrer %s of %s: %w", c.Name, r.Descriptor.Digest, r.Subject, err)
		}
	}
	c.Blobs = append(c.Blobs, w.blobs...)
	c.Missing = append(c.Missing, w.missing...)
	c.Referrers = refs
	return nil
}

type blockedManifest struct {
	entry  ocispec.Descriptor
	layers []ocispec.Descriptor
}

type walker struct {
	tolerant bool
	missing  []Blob
	f        Fetcher
	blobs    []Blob
	pos      map[digest.Digest]int
	layers   map[digest.Digest][]ocispec.Descriptor // standard manifest -> its layers
	entry    map[digest.Digest]ocispec.Descriptor   // standard manifest -> its index entry
	blocked  []blockedManifest
}

// add records a blob once, with the first role it is seen in.
func (w *walker) add(d ocispec.Descriptor, k Kind) {
	if _, ok := w.pos[d.Digest]; ok {
		return
	}
	w.pos[d.Digest] = len(w.blobs)
	w.blobs = append(w.blobs, Blob{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, Kind: k})
}

// fetchJSON reads a document; a tolerated miss returns false.
func (w *walker) fetchJSON(ctx context.Context, desc ocispec.Descriptor, k Kind, v any) (bool, error) {
	err := getJSON(ctx, w.f, desc, v)
	if err != nil && w.tolerant && errors.Is(err, store.ErrNotFound) {
		w.missing = append(w.missing, Blob{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size, Kind: k})
		w.add(desc, k)
		return false, nil
	}
	return err == nil, err
}

func (w *walker) isMissing(d digest.Digest) bool {
	for _, m := range w.missing {
		if m.Digest == d {
			return true
		}
	}
	return false
}

func (w *walker) index(ctx context.Context, desc ocispec.Descriptor) (*ocispec.Index, error) {
	var idx ocispec.Index
	if ok, err := w.fetchJSON(ctx, desc, KindIndex, &idx); !ok {
		return nil, err
	}
	if idx.MediaType != "" && idx.MediaType != ocispec.MediaTypeImageIndex {
		return nil, fmt.Errorf("%s: media type %q, want an OCI image index", desc.Digest, idx.MediaType)
	}
	w.add(desc, KindIndex)
	for _, e := range idx.Manifests {
		if err := w.manifest(ctx, e); err != nil {
			return nil, err
		}
	}
	return &idx, nil
}

func (w *walker) manifest(ctx context.Context, e ocispec.Descriptor) error {
	if _, ok := w.pos[e.Digest]; ok {
		return nil
	}
	switch e.MediaType {
	case ocispec.MediaTypeImageIndex:
		_, err := w.index(ctx, e)
		return err
	case ocispec.MediaTypeImageManifest:
	default:
		return fmt.Errorf("%s: media type %q is neither an OCI manifest nor an OCI index", e.Digest, e.MediaType)
	}
	guess := KindManifest
	switch {
	case e.Annotations[blocks.AnnotationBlockedOf] != "":
		guess = KindBlockedManifest
	case e.Annotations[blocks.AnnotationBlockSetOf] != "":
		guess = KindBlockSet
	}
	var m ocispec.Manifest
	if ok, err := w.fetchJSON(ctx, e, guess, &m); !ok {
		return err
	}
	kind, layerKind := KindManifest, KindLayer
	switch {
	case e.Annotations[blocks.AnnotationBlockedOf] != "" || m.ArtifactType == blocks.ArtifactTypeBlocked:
		kind, layerKind = KindBlockedManifest, KindBlockedLayer
		w.blocked = append(w.blocked, blockedManifest{entry: e, layers: m.Layers})
		if e.Annotations[blocks.AnnotationBlockedOf] == "" {
			// The index entry is what names the standard manifest.
			return fmt.Errorf("blocked manifest %s: index entry lacks %s", e.Digest, blocks.AnnotationBlockedOf)
		}
	case e.Annotations[blocks.AnnotationBlockSetOf] != "" || m.ArtifactType == blocks.ArtifactTypeBlockSet:
		kind, layerKind = KindBlockSet, KindBlock
	default:
		w.layers[e.Digest] = m.Layers
		w.entry[e.Digest] = e
	}
	w.add(e, kind)
	w.add(m.Config, KindConfig)
	for _, l := range m.Layers {
		w.add(l, layerKind)
	}
	return nil
}

// hydratedOrder lists the hydrated layers in walk order (deterministic).
func (w *walker) hydratedOrder(h map[digest.Digest]ocispec.Descriptor) []ocispec.Descriptor {
	var out []ocispec.Descriptor
	for _, b := range w.blobs {
		if d, ok := h[b.Digest]; ok {
			out = append(out, d)
		}
	}
	return out
}

// standardOf reads the dev.blockfile.standard annotations of an image index.
func standardOf(idx *ocispec.Index, self ocispec.Descriptor) (ocispec.Descriptor, error) {
	a := idx.Annotations
	if a[blocks.AnnotationStandard] == "" {
		return ocispec.Descriptor{}, fmt.Errorf("no %s annotation: not an image index written by blockfile export", blocks.AnnotationStandard)
	}
	d, err := digest.Parse(a[blocks.AnnotationStandard])
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("annotation %s: %w", blocks.AnnotationStandard, err)
	}
	size, err := strconv.ParseInt(a[blocks.AnnotationStandardSize], 10, 64)
	if err != nil || size <= 0 {
		return ocispec.Descriptor{}, fmt.Errorf("annotation %s: %q is not a size", blocks.AnnotationStandardSize, a[blocks.AnnotationStandardSize])
	}
	mt := a[blocks.AnnotationStandardMediaType]
	if mt != ocispec.MediaTypeImageManifest && mt != ocispec.MediaTypeImageIndex {
		return ocispec.Descriptor{}, fmt.Errorf("annotation %s: %q is neither an OCI manifest nor an OCI index", blocks.AnnotationStandardMediaType, mt)
	}
	if d == self.Digest {
		return ocispec.Descriptor{}, fmt.Errorf("annotation %s names the image index itself", blocks.AnnotationStandard)
	}
	return ocispec.Descriptor{MediaType: mt, Digest: d, Size: size}, nil
}

func platformsOf(entries []ocispec.Descriptor) []string {
	var out []string
	for _, e := range entries {
		p := e.Platform
		if p == nil || p.OS == "unknown" {
			continue
		}
		s := p.OS + "/" + p.Architecture
		if p.Variant != "" {
			s += "/" + p.Variant
		}
		out = append(out, s)
	}
	return out
}

// plainDescriptor keeps the fields that identify a blob.
func plainDescriptor(d ocispec.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
}

// getJSON reads a small JSON blob through f, checks its digest and decodes it.
func getJSON(ctx context.Context, f Fetcher, desc ocispec.Descriptor, v any) error {
	if desc.Size < 0 || desc.Size > maxJSONSize {
		return fmt.Errorf("%s: size %d is not that of a manifest (limit %d)", desc.Digest, desc.Size, maxJSONSize)
	}
	if err := desc.Digest.Validate(); err != nil {
		return fmt.Errorf("descriptor digest %q: %w", desc.Digest, err)
	}
	rc, err := f.Fetch(ctx, desc)
	if err != nil {
		return fmt.Errorf("%s: %w", desc.Digest, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, desc.Size+1))
	if err != nil {
		return fmt.Errorf("%s: %w", desc.Digest, err)
	}
	// The fetcher verifies; checking again costs nothing at this size and
	// keeps a walk honest whatever fetcher it is given.
	if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
		return fmt.Errorf("%s: content does not match its descriptor (%d bytes read, %d expected)", desc.Digest, len(data), desc.Size)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", desc.Digest, err)
	}
	return nil
}
