package store

import (
	"context"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// Hydratable is a standard layer that is absent from the store but can be
// rebuilt from what is present: `bundle apply --materialize=false` (or an
// apply stopped between tagging and materializing) leaves a store like that,
// and hydrate or `blockfile hydrate` rebuilds the layer on demand.
type Hydratable struct {
	Digest   digest.Digest `json:"digest"`   // the absent standard layer
	Path     string        `json:"path"`     // where its blob would be
	Manifest digest.Digest `json:"manifest"` // the standard manifest that lists it
	Blocked  digest.Digest `json:"blocked"`  // the blocked layer at the same position, present
	BlockSet digest.Digest `json:"blockset"` // the blocked layer's block-set manifest, present with all its members
}

// VerifyOptions tune VerifyWithOptions.
type VerifyOptions struct {
	// Report receives each problem (may be nil).
	Report func(Problem)
	// Hydratable receives each absent standard layer that is not a problem
	// because it can be rebuilt (may be nil).
	Hydratable func(Hydratable)
}

// hydratableLayers finds, among the graph reachable from roots, every
// standard layer that could be rebuilt from present blobs. The rule is the
// one bundles use (blocks/bundle Walk): a blocked manifest (index entry
// annotated dev.blockfile.blocked-of=<standard manifest>) has at position i a
// layer of another digest than the standard manifest's layer i; then that
// standard layer is hydratable if the blocked layer is intact, and so are the
// block-set manifest named for it (dev.blockfile.blockset-of=<blocked layer>)
// and every member it lists. intact says whether a blob is present, of the
// declared size and hashes to its name. The result is keyed by the standard
// layer digest; layers present in the store are included too (the caller
// only asks about absent ones).
func (s *Store) hydratableLayers(ctx context.Context, roots []ocispec.Descriptor, intact func(ocispec.Descriptor) bool) (map[digest.Digest]Hydratable, error) {
	manifests := map[digest.Digest]ocispec.Descriptor{}  // plain manifest entries of any index
	blockSetOf := map[digest.Digest]ocispec.Descriptor{} // blocked layer -> block-set manifest entry
	var blocked []ocispec.Descriptor                     // blocked manifest entries
	isIndex := func(mt string) bool {
		return mt == ocispec.MediaTypeImageIndex || mt == MediaTypeDockerManifestList
	}
	err := s.walkGraph(ctx, roots, func(desc ocispec.Descriptor, parent *ocispec.Descriptor) (bool, error) {
		if parent != nil && isIndex(parent.MediaType) {
			// Entries are classified as blocks.KindOf says; this tolerant
			// walk skips what it cannot use rather than refusing the index.
			switch blocks.KindOf(desc) {
			case blocks.EntryBlockSet:
				if d, err := digest.Parse(desc.Annotations[blocks.AnnotationBlockSetOf]); err == nil {
					blockSetOf[d] = desc
				}
			case blocks.EntryBlocked:
				blocked = append(blocked, desc)
			default:
				if _, ok := manifests[desc.Digest]; !ok {
					manifests[desc.Digest] = desc
				}
			}
		}
		// Only indexes are opened: the entries (with their annotations)
		// are all this needs.
		return isIndex(desc.MediaType) && intact(desc), nil
	}, func(ocispec.Descriptor, *ocispec.Descriptor, error) {
		// An unreadable index is reported by Verify's own walk.
	})
	if err != nil {
		return nil, err
	}

	out := map[digest.Digest]Hydratable{}
	complete := map[digest.Digest]bool{} // block-set manifest -> all its members intact
	blockSetComplete := func(bs ocispec.Descriptor) bool {
		if ok, seen := complete[bs.Digest]; seen {
			return ok
		}
		var m ocispec.Manifest
		ok := intact(bs) && s.GetJSON(ctx, bs, &m) == nil
		for _, l := range m.Layers {
			ok = ok && intact(l)
		}
		complete[bs.Digest] = ok
		return ok
	}
	for _, b := range blocked {
		of, err := blocks.StandardOfBlocked(b)
		if err != nil {
			continue // not a blocked manifest this rule can use
		}
		stdDesc, ok := manifests[of]
		if !ok || !intact(b) || !intact(stdDesc) {
			continue
		}
		var bm, sm ocispec.Manifest
		if s.GetJSON(ctx, b, &bm) != nil || s.GetJSON(ctx, stdDesc, &sm) != nil || len(bm.Layers) != len(sm.Layers) {
			continue
		}
		for i, std := range sm.Layers {
			bl := bm.Layers[i]
			if bl.Digest == std.Digest || !intact(bl) {
				continue
			}
			bs, ok := blockSetOf[bl.Digest]
			if !ok || !blockSetComplete(bs) {
				continue
			}
			if _, done := out[std.Digest]; !done {
				out[std.Digest] = Hydratable{Digest: std.Digest, Path: s.BlobPath(std.Digest),
					Manifest: stdDesc.Digest, Blocked: bl.Digest, BlockSet: bs.Digest}
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}
