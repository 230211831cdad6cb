package bundle

import (
	"fmt"
	"sort"

	"github.com/opencontainers/go-digest"
)

// Base is what the target is known to hold: the closures of images already
// shipped to it (a DigestSet), or an inventory brought back from it.
type Base interface {
	Has(d digest.Digest) bool
}

// DigestSet is a Base holding exactly its digests.
type DigestSet map[digest.Digest]struct{}

// Has reports whether d is in the set.
func (s DigestSet) Has(d digest.Digest) bool { _, ok := s[d]; return ok }

// BaseOf is the base made of the closures of images the target already has.
func BaseOf(closures ...*Closure) DigestSet {
	s := DigestSet{}
	for _, c := range closures {
		for _, b := range c.Blobs {
			s[b.Digest] = struct{}{}
		}
	}
	return s
}

// Plan is what a bundle for some images ships and requires.
type Plan struct {
	Images   []Image
	Ship     []Blob // tar order: metadata first, then layers, then block members
	Requires []Blob // sorted by digest
}

// MakePlan decides which blobs of the closures to ship given what the base
// has. A blob shared by several images (the same jar in two services) is
// shipped or required once. A nil base ships everything (a first install).
func MakePlan(closures []*Closure, base Base) (*Plan, error) {
	p := &Plan{}
	seen := map[digest.Digest]Blob{}
	names := map[string]bool{}
	for _, c := range closures {
		if names[c.Name] {
			return nil, fmt.Errorf("image %s is given twice", c.Name)
		}
		names[c.Name] = true
		p.Images = append(p.Images, c.Image)
		for _, b := range c.Blobs {
			if prev, ok := seen[b.Digest]; ok {
				if prev.Size != b.Size {
					return nil, fmt.Errorf("blob %s has size %d in one image and %d in another", b.Digest, prev.Size, b.Size)
				}
				continue
			}
			seen[b.Digest] = b
			if base != nil && base.Has(b.Digest) {
				p.Requires = append(p.Requires, b)
			} else {
				p.Ship = append(p.Ship, b)
			}
		}
	}
	sort.SliceStable(p.Ship, func(i, j int) bool { return p.Ship[i].Kind.rank() < p.Ship[j].Kind.rank() })
	sort.Slice(p.Requires, func(i, j int) bool { return p.Requires[i].Digest < p.Requires[j].Digest })
	return p, nil
}

// Header returns the bundle header for p.
func (p *Plan) Header() *Header {
	v := Version
	for _, b := range p.Ship {
		if b.Derive != nil {
			v = VersionDerive
		}
	}
	// Empty lists are [] rather than null, for readers in other languages.
	return &Header{
		MediaType: HeaderMediaType,
		Version:   v,
		Images:    append([]Image{}, p.Images...),
		Blobs:     append([]Blob{}, p.Ship...),
		Requires:  totals(p.Requires),
		Adds:      totals(p.Ship),
		Patched:   patched(p.Ship),
	}
}
