package image

import (
	"context"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
)

// Image is the parsed structure of an image in the store: the image index
// that `blockfile export` tagged, the standard image it names, and per
// standard manifest its blocked form and block sets.
type Image struct {
	Name  string
	Index ocispec.Descriptor // the image index tagged under Name
	// IndexManifest is the parsed image index.
	IndexManifest ocispec.Index
	// Standard is what hydrate reproduces: a manifest, or an index.
	Standard ocispec.Descriptor
	// StandardIndex is the parsed standard index (multi-platform only).
	StandardIndex *ocispec.Index
	// Manifests are the standard image manifests, in standard order.
	Manifests []*Manifest
	// Others are the entries of the standard index that are not image
	// manifests (attestations); they are copied as they are.
	Others []ocispec.Descriptor
}

// Manifest is one standard image manifest with its blocked form.
type Manifest struct {
	// Descriptor of the standard manifest, with its platform.
	Descriptor      ocispec.Descriptor
	Manifest        ocispec.Manifest
	Blocked         ocispec.Descriptor
	BlockedManifest ocispec.Manifest
	Layers          []Layer
}

// Layer is one layer in its two forms.
type Layer struct {
	Standard ocispec.Descriptor
	Blocked  ocispec.Descriptor
	// BlockSet is the block-set manifest serving the blocked layer's stubs,
	// and Members its layers; nil and empty for a layer without blocks.
	BlockSet *ocispec.Descriptor
	Members  []ocispec.Descriptor
}

// HasBlocks reports whether the blocked layer differs from the standard one.
func (l Layer) HasBlocks() bool { return l.Blocked.Digest != l.Standard.Digest }

// Resolve reads the image named name from the store and checks that its
// parts fit together, with the format's one reader (blocks.ImageIndex):
// every standard manifest has a blocked manifest with the same config and
// as many layers, every blocked layer that differs from its standard layer
// has a block set.
func Resolve(ctx context.Context, s *store.Store, name string) (*Image, error) {
	idxDesc, err := s.Resolve(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	return ResolveIndex(ctx, s, name, idxDesc)
}

// ResolveIndex is Resolve for an image index already looked up (idxDesc, as
// tagged name): a caller that reads index.json once and resolves several
// images from it, or that caches what it resolves by index digest (blockfile
// serve), gets the image of exactly that index.
func ResolveIndex(ctx context.Context, s *store.Store, name string, idxDesc ocispec.Descriptor) (*Image, error) {
	var err error
	img := &Image{Name: name, Index: idxDesc}
	if idxDesc.MediaType != "" && idxDesc.MediaType != ocispec.MediaTypeImageIndex {
		return nil, fmt.Errorf("image %s: tagged %s is a %s, not a blockfile image index (was it exported with blockfile export?)", name, idxDesc.Digest, idxDesc.MediaType)
	}
	idxDesc.MediaType = ocispec.MediaTypeImageIndex
	if err := s.GetJSON(ctx, idxDesc, &img.IndexManifest); err != nil {
		return nil, fmt.Errorf("image %s: index: %w", name, err)
	}
	x, err := blocks.NewImageIndex(img.IndexManifest)
	if err != nil {
		return nil, fmt.Errorf("image %s: index %s: %w", name, idxDesc.Digest, err)
	}
	if x.Standard.Digest == idxDesc.Digest {
		return nil, fmt.Errorf("image %s: index %s: annotation %s names the index itself: %w", name, idxDesc.Digest, blocks.AnnotationStandard, blocks.ErrNotBlockfileIndex)
	}
	img.Standard = x.Standard
	stdEntries := x.StandardEntries()
	if x.StandardIsIndex() {
		img.StandardIndex = &ocispec.Index{}
		if err := s.GetJSON(ctx, img.Standard, img.StandardIndex); err != nil {
			return nil, fmt.Errorf("image %s: standard index: %w", name, err)
		}
		stdEntries = img.StandardIndex.Manifests
	} else {
		for _, e := range stdEntries {
			if e.Digest == x.Standard.Digest {
				stdEntries = []ocispec.Descriptor{e}
				break
			}
		}
	}
	for _, e := range stdEntries {
		bd, ok := x.BlockedOf(e.Digest)
		if !ok {
			img.Others = append(img.Others, e)
			continue
		}
		m, err := resolveManifest(ctx, s, e, bd, x)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", name, err)
		}
		img.Manifests = append(img.Manifests, m)
	}
	if len(img.Manifests) == 0 {
		return nil, fmt.Errorf("image %s: index %s has no blocked manifest for any standard manifest", name, idxDesc.Digest)
	}
	return img, nil
}

func resolveManifest(ctx context.Context, s *store.Store, std, blocked ocispec.Descriptor, x *blocks.ImageIndex) (*Manifest, error) {
	m := &Manifest{Descriptor: std, Blocked: plain(blocked)}
	m.Blocked.MediaType = ocispec.MediaTypeImageManifest
	if err := s.GetJSON(ctx, plain(std), &m.Manifest); err != nil {
		return nil, fmt.Errorf("standard manifest: %w", err)
	}
	if err := s.GetJSON(ctx, m.Blocked, &m.BlockedManifest); err != nil {
		return nil, fmt.Errorf("blocked manifest: %w", err)
	}
	bm := m.BlockedManifest
	if err := blocks.CheckBlocked(m.Manifest, std.Digest, bm, blocked.Digest); err != nil {
		return nil, err
	}
	for i, sl := range m.Manifest.Layers {
		l := Layer{Standard: sl, Blocked: bm.Layers[i]}
		if l.HasBlocks() {
			set, ok := x.BlockSetOf(l.Blocked.Digest)
			if !ok {
				return nil, fmt.Errorf("blocked layer %s (layer %d of %s) has no block set in the index", l.Blocked.Digest, i, std.Digest)
			}
			var sm ocispec.Manifest
			setDesc := plain(set)
			setDesc.MediaType = ocispec.MediaTypeImageManifest
			if err := s.GetJSON(ctx, setDesc, &sm); err != nil {
				return nil, fmt.Errorf("block set of layer %s: %w", l.Blocked.Digest, err)
			}
			if err := blocks.CheckBlockSet(sm, set.Digest, l.Blocked.Digest); err != nil {
				return nil, err
			}
			l.BlockSet, l.Members = &setDesc, sm.Layers
		}
		m.Layers = append(m.Layers, l)
	}
	return m, nil
}
