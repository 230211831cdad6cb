package store

import (
	"context"
	"errors"
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// blockedImage is an image laid out as export writes it, built by hand: a
// standard manifest with a layer holding blocks (std1) and a layer without
// (std2, its own blocked form), the blocked manifest, and the block set of
// the blocked layer with two members.
type blockedImage struct {
	s                             *Store
	config, std1, std2, blocked1  ocispec.Descriptor
	member1, member2, empty       ocispec.Descriptor
	stdManifest, blockedManifest  ocispec.Descriptor
	blockset, imageIndex, garbage ocispec.Descriptor
	blockedEntry, blocksetEntry   ocispec.Descriptor
}

func annotated(d ocispec.Descriptor, k, v string) ocispec.Descriptor {
	d.Annotations = map[string]string{k: v}
	return d
}

// newBlockedImage builds the image; edit, if not nil, may change the index
// entries before the index is written.
func newBlockedImage(t *testing.T, edit func(b *blockedImage)) *blockedImage {
	t.Helper()
	ctx := context.Background()
	s := newStore(t)
	b := &blockedImage{s: s}
	b.config = push(t, s, ocispec.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux"}`))
	b.std1 = push(t, s, ocispec.MediaTypeImageLayerGzip, []byte("standard layer with blocks"))
	b.std2 = push(t, s, ocispec.MediaTypeImageLayerGzip, []byte("standard layer without blocks"))
	b.blocked1 = push(t, s, ocispec.MediaTypeImageLayerGzip, []byte("blocked layer: stubs"))
	b.member1 = push(t, s, blocks.MediaTypeMemberGzip, []byte("member one"))
	b.member2 = push(t, s, blocks.MediaTypeMemberGzip, []byte("member two"))
	b.empty = push(t, s, ocispec.MediaTypeEmptyJSON, []byte("{}"))
	b.garbage = push(t, s, blocks.MediaTypeBlock, []byte("garbage"))
	b.stdManifest = putJSON(t, s, ocispec.MediaTypeImageManifest, manifest(b.config, b.std1, b.std2))
	bm := manifest(b.config, b.blocked1, b.std2)
	bm.ArtifactType = blocks.ArtifactTypeBlocked
	bm.Annotations = map[string]string{blocks.AnnotationBlockedOf: string(b.stdManifest.Digest)}
	b.blockedManifest = putJSON(t, s, ocispec.MediaTypeImageManifest, bm)
	bs := manifest(b.empty, b.member1, b.member2)
	bs.ArtifactType = blocks.ArtifactTypeBlockSet
	bs.Annotations = map[string]string{blocks.AnnotationBlockSetOf: string(b.blocked1.Digest)}
	b.blockset = putJSON(t, s, ocispec.MediaTypeImageManifest, bs)
	b.blockedEntry = annotated(b.blockedManifest, blocks.AnnotationBlockedOf, string(b.stdManifest.Digest))
	b.blocksetEntry = annotated(b.blockset, blocks.AnnotationBlockSetOf, string(b.blocked1.Digest))
	if edit != nil {
		edit(b)
	}
	b.imageIndex = putJSON(t, s, ocispec.MediaTypeImageIndex, index(map[string]string{
		blocks.AnnotationStandard:          string(b.stdManifest.Digest),
		blocks.AnnotationStandardMediaType: b.stdManifest.MediaType,
		blocks.AnnotationStandardSize:      strconv.FormatInt(b.stdManifest.Size, 10),
	}, b.stdManifest, b.blockedEntry, b.blocksetEntry))
	if err := s.Tag(ctx, "app:v1", b.imageIndex); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *blockedImage) remove(t *testing.T, ds ...ocispec.Descriptor) {
	t.Helper()
	for _, d := range ds {
		if err := os.Remove(b.s.BlobPath(d.Digest)); err != nil {
			t.Fatal(err)
		}
	}
}

// verify returns the problems (as kind+digest) and the hydratable layers.
func (b *blockedImage) verify(t *testing.T) (problems []string, hydratable []Hydratable, err error) {
	t.Helper()
	err = b.s.VerifyWithOptions(context.Background(), VerifyOptions{
		Report:     func(p Problem) { problems = append(problems, p.Kind+" "+string(p.Digest)) },
		Hydratable: func(h Hydratable) { hydratable = append(hydratable, h) },
	})
	slices.Sort(problems)
	return problems, hydratable, err
}

func TestVerifyAcceptsHydratableStandardLayer(t *testing.T) {
	b := newBlockedImage(t, nil)
	if ps, hs, err := b.verify(t); err != nil || len(ps) != 0 || len(hs) != 0 {
		t.Fatalf("Verify on a complete store = %v, %v, hydratable %v", ps, err, hs)
	}
	b.remove(t, b.std1)
	ps, hs, err := b.verify(t)
	if err != nil || len(ps) != 0 {
		t.Fatalf("Verify without the hydratable standard layer = %v, problems %v", err, ps)
	}
	want := Hydratable{Digest: b.std1.Digest, Path: b.s.BlobPath(b.std1.Digest), Manifest: b.stdManifest.Digest,
		Blocked: b.blocked1.Digest, BlockSet: b.blockset.Digest}
	if len(hs) != 1 || hs[0] != want {
		t.Fatalf("hydratable = %+v, want [%+v]", hs, want)
	}
	// Verify (without options) agrees.
	if err := b.s.Verify(context.Background(), nil); err != nil {
		t.Fatalf("Verify = %v", err)
	}
}

func TestVerifyReportsUnhydratableStandardLayer(t *testing.T) {
	missing := func(d ocispec.Descriptor) string { return ProblemMissing + " " + string(d.Digest) }
	for _, tc := range []struct {
		name   string
		edit   func(b *blockedImage)
		remove func(b *blockedImage) []ocispec.Descriptor
		want   func(b *blockedImage) []string // besides std1 missing
	}{{
		name:   "layer without blocks",
		remove: func(b *blockedImage) []ocispec.Descriptor { return []ocispec.Descriptor{b.std2} },
		want:   func(b *blockedImage) []string { return []string{missing(b.std2)} },
	}, {
		name:   "blocked layer absent",
		remove: func(b *blockedImage) []ocispec.Descriptor { return []ocispec.Descriptor{b.std1, b.blocked1} },
		want:   func(b *blockedImage) []string { return []string{missing(b.std1), missing(b.blocked1)} },
	}, {
		name:   "member absent",
		remove: func(b *blockedImage) []ocispec.Descriptor { return []ocispec.Descriptor{b.std1, b.member2} },
		want:   func(b *blockedImage) []string { return []string{missing(b.std1), missing(b.member2)} },
	}, {
		name:   "block set absent",
		remove: func(b *blockedImage) []ocispec.Descriptor { return []ocispec.Descriptor{b.std1, b.blockset} },
		want:   func(b *blockedImage) []string { return []string{missing(b.std1), missing(b.blockset)} },
	}, {
		name:   "block set not annotated in the index",
		edit:   func(b *blockedImage) { b.blocksetEntry.Annotations = nil },
		remove: func(b *blockedImage) []ocispec.Descriptor { return []ocispec.Descriptor{b.std1} },
		want:   func(b *blockedImage) []string { return []string{missing(b.std1)} },
	}, {
		name:   "blocked manifest not annotated in the index",
		edit:   func(b *blockedImage) { b.blockedEntry.Annotations = nil },
		remove: func(b *blockedImage) []ocispec.Descriptor { return []ocispec.Descriptor{b.std1} },
		want:   func(b *blockedImage) []string { return []string{missing(b.std1)} },
	}, {
		name: "blocked manifest of another standard manifest",
		edit: func(b *blockedImage) {
			b.blockedEntry.Annotations[blocks.AnnotationBlockedOf] = string(digest.FromString("other"))
		},
		remove: func(b *blockedImage) []ocispec.Descriptor { return []ocispec.Descriptor{b.std1} },
		want:   func(b *blockedImage) []string { return []string{missing(b.std1)} },
	}} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBlockedImage(t, tc.edit)
			b.remove(t, tc.remove(b)...)
			ps, hs, err := b.verify(t)
			want := tc.want(b)
			slices.Sort(want)
			if !errors.Is(err, ErrProblems) || !slices.Equal(ps, want) || len(hs) != 0 {
				t.Fatalf("Verify = %v, problems %v, hydratable %v; want problems %v", err, ps, hs, want)
			}
		})
	}
}

// A corrupt blocked layer cannot rebuild anything.
func TestVerifyCorruptBlockedLayerIsNotHydratable(t *testing.T) {
	b := newBlockedImage(t, nil)
	b.remove(t, b.std1)
	tamper(t, b.s, b.blocked1.Digest, func(p []byte) []byte { p[0] ^= 1; return p })
	ps, hs, err := b.verify(t)
	want := []string{ProblemCorrupt + " " + string(b.blocked1.Digest), ProblemMissing + " " + string(b.std1.Digest)}
	slices.Sort(want)
	if !errors.Is(err, ErrProblems) || !slices.Equal(ps, want) || len(hs) != 0 {
		t.Fatalf("Verify = %v, problems %v, hydratable %v; want %v", err, ps, hs, want)
	}
}

// gc on a store whose hydratable standard layer is absent keeps everything
// hydrate needs and removes only garbage.
func TestGCKeepsHydrationInputs(t *testing.T) {
	ctx := context.Background()
	b := newBlockedImage(t, nil)
	b.remove(t, b.std1)
	removed, err := b.s.GC(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := digests(removed), digests([]ocispec.Descriptor{b.garbage}); !slices.Equal(g, w) {
		t.Fatalf("GC removed %v, want %v", g, w)
	}
	for _, d := range []ocispec.Descriptor{b.config, b.std2, b.blocked1, b.member1, b.member2, b.empty,
		b.stdManifest, b.blockedManifest, b.blockset, b.imageIndex} {
		if !present(t, b.s, d) {
			t.Errorf("GC removed %s (%s)", d.Digest, d.MediaType)
		}
	}
	if ps, hs, err := b.verify(t); err != nil || len(hs) != 1 {
		t.Fatalf("Verify after GC = %v, problems %v, hydratable %v", err, ps, hs)
	}
}
