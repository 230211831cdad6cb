package bundle

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// Never worse than the layer split. Once patches and deltas are planned, each
// changed layer costs the bundle its blocked layer, its block set and the
// block members only it brings (each as it travels: whole, patch or delta).
// When shipping the standard layer whole would cost less, the standard layer
// travels instead (Blob.Derive) and apply derives the blocked form from it
// (derive.go): for every layer an upgrade changes, the bundle carries at most
// that standard layer plus its tar entry and header line.

// entryCost is what a blob costs in a bundle: its tar entry (the patch's
// bytes when it travels as one), header record and padding, and its line in
// the header (about 300 bytes of JSON, more with a patch).
func entryCost(b Blob) int64 {
	n := b.entry().Size
	c := n + 512 + (512-n%512)%512 + 300
	if b.Patch != nil {
		c += 300
	}
	return c
}

// switchMargin: a standard layer replaces its blocked form only when that
// saves more than this. Below, the blocked form travels: it costs at most
// this more per changed layer (within the 64 KiB per image that
// docs/BUNDLES.md allows beyond the changed layers), and apply need not
// inflate the layer to derive it.
const switchMargin = 4 << 10

// layerCandidate is a changed layer that may travel as its standard layer.
type layerCandidate struct {
	l       image.Layer
	members []digest.Digest // distinct
}

// chooseStandardLayers replaces, in p.Ship, the blocked form of each changed
// gzip layer of the images names by its standard layer where that is
// smaller, once create has checked that the standard layer derives its
// blocked form exactly. It returns the digests of the block sets now
// derived at the site (nil if none).
func chooseStandardLayers(ctx context.Context, s *store.Store, p *Plan, names []string, tmpDir string) (map[digest.Digest]bool, error) {
	ship := map[digest.Digest]int{}
	for i, b := range p.Ship {
		ship[b.Digest] = i
	}
	var cands []layerCandidate
	seen := map[digest.Digest]bool{}
	for _, name := range names {
		img, err := image.Resolve(ctx, s, name)
		if err != nil {
			continue // not an image export wrote: its blocked form travels
		}
		for _, m := range img.Manifests {
			for _, l := range m.Layers {
				if _, ok := ship[l.Blocked.Digest]; !ok || !l.HasBlocks() || l.BlockSet == nil || seen[l.Blocked.Digest] {
					continue
				}
				if mt := l.Standard.MediaType; mt != ocispec.MediaTypeImageLayerGzip && mt != transport.MediaTypeDockerLayerGzip {
					continue
				}
				seen[l.Blocked.Digest] = true
				c := layerCandidate{l: l}
				in := map[digest.Digest]bool{}
				for _, mb := range l.Members {
					if !in[mb.Digest] {
						in[mb.Digest] = true
						c.members = append(c.members, mb.Digest)
					}
				}
				cands = append(cands, c)
			}
		}
	}
	if len(cands) == 0 {
		return nil, nil
	}
	// A member that several changed layers bring is theirs to share: it
	// stays in the bundle whatever one of them does.
	refs := map[digest.Digest]int{}
	for _, c := range cands {
		for _, d := range c.members {
			refs[d]++
		}
	}
	drop := map[digest.Digest]bool{}
	derived := map[digest.Digest]bool{}
	var add []Blob
	for _, c := range cands {
		blocked := entryCost(p.Ship[ship[c.l.Blocked.Digest]])
		if i, ok := ship[c.l.BlockSet.Digest]; ok {
			blocked += entryCost(p.Ship[i])
		}
		var own []digest.Digest
		for _, d := range c.members {
			if i, ok := ship[d]; ok && refs[d] == 1 {
				blocked += entryCost(p.Ship[i])
				own = append(own, d)
			}
		}
		std := Blob{MediaType: c.l.Standard.MediaType, Digest: c.l.Standard.Digest, Size: c.l.Standard.Size, Kind: KindLayer}
		if entryCost(std)+switchMargin >= blocked {
			continue
		}
		ok, err := derivesExactly(ctx, s, c.l, tmpDir)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		std.Derive = &Derive{Blocked: BlobRef{Digest: c.l.Blocked.Digest, Size: c.l.Blocked.Size}, BlockSet: BlobRef{Digest: c.l.BlockSet.Digest, Size: c.l.BlockSet.Size}}
		add = append(add, std)
		drop[c.l.Blocked.Digest], drop[c.l.BlockSet.Digest] = true, true
		derived[c.l.Blocked.Digest], derived[c.l.BlockSet.Digest] = true, true
		for _, d := range own {
			drop[d] = true
		}
	}
	if len(add) == 0 {
		return nil, nil
	}
	var out []Blob
	for _, b := range p.Ship {
		if !drop[b.Digest] {
			out = append(out, b)
		}
	}
	p.Ship = append(out, add...)
	sort.SliceStable(p.Ship, func(i, j int) bool { return p.Ship[i].Kind.rank() < p.Ship[j].Kind.rank() })
	return derived, nil
}

// derivesExactly reports whether the standard layer of l, read from s,
// derives exactly its blocked layer and block set.
func derivesExactly(ctx context.Context, s *store.Store, l image.Layer, tmpDir string) (bool, error) {
	rc, err := s.Fetch(ctx, l.Standard)
	if err != nil {
		return false, fmt.Errorf("standard layer %s: %w", l.Standard.Digest, err)
	}
	defer rc.Close()
	d, err := deriveBlocked(ctx, rc, tmpDir, l.Standard.MediaType, io.Discard)
	if err != nil {
		return false, nil // not block-framed as this blockfile writes it: the blocked form travels
	}
	defer d.close()
	return d.blocked.Digest == l.Blocked.Digest && d.blocked.Size == l.Blocked.Size &&
		d.setDesc.Digest == l.BlockSet.Digest && d.setDesc.Size == l.BlockSet.Size, nil
}

// hideFetcher reads from f, except the block sets apply will derive, which
// it cannot read before (store.ErrNotFound), as apply's walk does not.
type hideFetcher struct {
	f      Fetcher
	hidden map[digest.Digest]bool
}

func (h hideFetcher) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if h.hidden[desc.Digest] {
		return nil, fmt.Errorf("%s is derived at the target: %w", desc.Digest, store.ErrNotFound)
	}
	return h.f.Fetch(ctx, desc)
}

// requiresWithDerived recomputes p.Requires once some layers are derived:
// what apply's walk finds in the images (which does not go below a derived
// block set) and neither the bundle ships nor derives, and the bases of the
// patches still shipped. A shipped blob the walk no longer reaches (the
// empty config of a derived block set) leaves the bundle: apply derives it.
func requiresWithDerived(ctx context.Context, s *store.Store, p *Plan, names []string, derived map[digest.Digest]bool) error {
	provided := map[digest.Digest]bool{}
	for _, b := range p.Ship {
		provided[b.Digest] = true
	}
	for d := range derived {
		provided[d] = true
	}
	hide := hideFetcher{f: s, hidden: derived}
	required := map[digest.Digest]Blob{}
	reached := map[digest.Digest]bool{}
	for _, name := range names {
		desc, err := s.Resolve(ctx, name)
		if err != nil {
			return fmt.Errorf("image %s: %w", name, err)
		}
		c, err := walk(ctx, hide, name, desc, true)
		if err != nil {
			return err
		}
		var subjects []digest.Digest
		for _, b := range c.Blobs {
			if b.Kind == KindIndex || b.Kind == KindManifest {
				subjects = append(subjects, b.Digest)
			}
		}
		refs, err := s.ReferrersClosure(ctx, subjects...)
		if err != nil {
			return fmt.Errorf("image %s: %w", name, err)
		}
		if err := c.addReferrers(ctx, hide, refs, true); err != nil {
			return err
		}
		for _, b := range c.Blobs {
			reached[b.Digest] = true
			if !provided[b.Digest] {
				if _, ok := required[b.Digest]; !ok {
					required[b.Digest] = b
				}
			}
		}
	}
	for _, b := range p.Ship {
		if b.Patch == nil {
			continue
		}
		if _, ok := required[b.Patch.Base.Digest]; !ok {
			required[b.Patch.Base.Digest] = Blob{MediaType: b.MediaType, Digest: b.Patch.Base.Digest, Size: b.Patch.Base.Size, Kind: b.Kind}
		}
	}
	var ship []Blob
	for _, b := range p.Ship {
		if b.Derive != nil || reached[b.Digest] {
			ship = append(ship, b)
		}
	}
	p.Ship = ship
	p.Requires = p.Requires[:0]
	for _, b := range required {
		p.Requires = append(p.Requires, b)
	}
	sort.Slice(p.Requires, func(i, j int) bool { return p.Requires[i].Digest < p.Requires[j].Digest })
	return nil
}
