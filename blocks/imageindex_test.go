package blocks

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// exportedIndex is an image index shaped as export writes it for one
// platform: the standard manifest, its blocked manifest, one block set.
func exportedIndex() ocispec.Index {
	std := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("std"), Size: 500,
		Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}}
	unknown := &ocispec.Platform{OS: "unknown", Architecture: "unknown"}
	blocked := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("blocked"), Size: 600,
		Platform: unknown, Annotations: map[string]string{AnnotationBlockedOf: std.Digest.String()}}
	set := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("set"), Size: 300,
		Platform: unknown, Annotations: map[string]string{AnnotationBlockSetOf: digest.FromString("blocked layer").String()}}
	return ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{std, blocked, set},
		Annotations: map[string]string{
			AnnotationStandard: std.Digest.String(), AnnotationStandardMediaType: std.MediaType, AnnotationStandardSize: "500",
		},
	}
}

func encode(t *testing.T, idx ocispec.Index) []byte {
	t.Helper()
	b, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseImageIndex(t *testing.T) {
	x, err := ParseImageIndex(encode(t, exportedIndex()))
	if err != nil {
		t.Fatal(err)
	}
	if x.Standard.Digest != digest.FromString("std") || x.Standard.Size != 500 || x.StandardIsIndex() {
		t.Errorf("Standard = %+v", x.Standard)
	}
	if len(x.StandardEntries()) != 1 || len(x.BlockedManifests()) != 1 || len(x.BlockSets()) != 1 {
		t.Errorf("entries: %d standard, %d blocked, %d block sets", len(x.StandardEntries()), len(x.BlockedManifests()), len(x.BlockSets()))
	}
	if b, ok := x.BlockedOf(digest.FromString("std")); !ok || b.Digest != digest.FromString("blocked") {
		t.Errorf("BlockedOf = %v, %v", b.Digest, ok)
	}
	if s, ok := x.BlockSetOf(digest.FromString("blocked layer")); !ok || s.Digest != digest.FromString("set") {
		t.Errorf("BlockSetOf = %v, %v", s.Digest, ok)
	}
	if _, ok := x.BlockSetOf(digest.FromString("other")); ok {
		t.Error("BlockSetOf found a set for another layer")
	}
}

// Every rule of docs/FORMAT.md section 8 that the readers rely on is
// refused with ErrNotBlockfileIndex and an error naming what is wrong.
func TestParseImageIndexRefuses(t *testing.T) {
	cases := []struct {
		name, want string
		edit       func(*ocispec.Index)
	}{
		{"no standard annotation", AnnotationStandard, func(i *ocispec.Index) { delete(i.Annotations, AnnotationStandard) }},
		{"bad standard digest", AnnotationStandard, func(i *ocispec.Index) { i.Annotations[AnnotationStandard] = "sha256:../../x" }},
		{"bad standard size", AnnotationStandardSize, func(i *ocispec.Index) { i.Annotations[AnnotationStandardSize] = "-1" }},
		{"standard of another media type", AnnotationStandardMediaType, func(i *ocispec.Index) {
			i.Annotations[AnnotationStandardMediaType] = "application/octet-stream"
		}},
		{"standard not listed", "not listed", func(i *ocispec.Index) {
			i.Annotations[AnnotationStandard] = digest.FromString("elsewhere").String()
		}},
		{"not an index", "media type", func(i *ocispec.Index) { i.MediaType = ocispec.MediaTypeImageManifest }},
		{"blocked form of an unlisted manifest", "does not list", func(i *ocispec.Index) {
			i.Manifests[1].Annotations[AnnotationBlockedOf] = digest.FromString("ghost").String()
		}},
		{"bad blocked-of", AnnotationBlockedOf, func(i *ocispec.Index) { i.Manifests[1].Annotations[AnnotationBlockedOf] = "nope" }},
		{"two blocked manifests", "two blocked manifests", func(i *ocispec.Index) {
			b := i.Manifests[1]
			b.Digest = digest.FromString("blocked 2")
			i.Manifests = append(i.Manifests, b)
		}},
		{"two block sets", "two block sets", func(i *ocispec.Index) {
			s := i.Manifests[2]
			s.Digest = digest.FromString("set 2")
			i.Manifests = append(i.Manifests, s)
		}},
		{"both annotations", "both", func(i *ocispec.Index) {
			i.Manifests[2].Annotations[AnnotationBlockedOf] = digest.FromString("std").String()
		}},
		{"bad entry digest", "digest", func(i *ocispec.Index) { i.Manifests[2].Digest = "md5:x" }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			idx := exportedIndex()
			c.edit(&idx)
			_, err := ParseImageIndex(encode(t, idx))
			if !errors.Is(err, ErrNotBlockfileIndex) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want ErrNotBlockfileIndex naming %q", err, c.want)
			}
		})
	}
	if _, err := ParseImageIndex([]byte("{")); !errors.Is(err, ErrNotBlockfileIndex) {
		t.Fatalf("truncated JSON: %v", err)
	}
}

func TestCheckBlockedAndBlockSet(t *testing.T) {
	cfg := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromString("cfg"), Size: 3}
	l := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("l"), Size: 9}
	std := ocispec.Manifest{Config: cfg, Layers: []ocispec.Descriptor{l}}
	sd, bd := digest.FromString("std"), digest.FromString("blocked")
	bm := ocispec.Manifest{ArtifactType: ArtifactTypeBlocked, Config: cfg, Layers: []ocispec.Descriptor{l},
		Annotations: map[string]string{AnnotationBlockedOf: sd.String()}}
	if err := CheckBlocked(std, sd, bm, bd); err != nil {
		t.Fatal(err)
	}
	for i, bad := range []func(*ocispec.Manifest){
		func(m *ocispec.Manifest) { m.ArtifactType = "" },
		func(m *ocispec.Manifest) { m.Annotations[AnnotationBlockedOf] = bd.String() },
		func(m *ocispec.Manifest) { m.Layers = nil },
		func(m *ocispec.Manifest) { m.Config.Digest = bd },
	} {
		m := bm
		m.Annotations = map[string]string{AnnotationBlockedOf: sd.String()}
		bad(&m)
		if err := CheckBlocked(std, sd, m, bd); !errors.Is(err, ErrNotBlockfileIndex) {
			t.Errorf("case %d: %v", i, err)
		}
	}
	member := ocispec.Descriptor{MediaType: MediaTypeMemberGzip, Digest: digest.FromString("m"), Size: 40}
	set := ocispec.Manifest{ArtifactType: ArtifactTypeBlockSet, Layers: []ocispec.Descriptor{member},
		Annotations: map[string]string{AnnotationBlockSetOf: l.Digest.String()}}
	if err := CheckBlockSet(set, digest.FromString("set"), l.Digest); err != nil {
		t.Fatal(err)
	}
	if err := CheckBlockSet(set, digest.FromString("set"), bd); !errors.Is(err, ErrNotBlockfileIndex) {
		t.Errorf("block set of another layer: %v", err)
	}
	set.Layers[0].MediaType = ocispec.MediaTypeImageLayerGzip
	if err := CheckBlockSet(set, digest.FromString("set"), l.Digest); !errors.Is(err, ErrNotBlockfileIndex) {
		t.Errorf("block set listing a layer: %v", err)
	}
}

// FuzzParseImageIndex: image indexes come from bundles and registries.
func FuzzParseImageIndex(f *testing.F) {
	b, _ := json.Marshal(exportedIndex())
	f.Add(b)
	f.Add([]byte(`{"manifests":[{}],"annotations":{"dev.blockfile.standard":"sha256:"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		x, err := ParseImageIndex(data)
		if err != nil {
			return
		}
		for _, e := range x.BlockedManifests() {
			of, err := StandardOfBlocked(e)
			if err != nil {
				t.Fatalf("accepted index with a bad blocked entry: %v", err)
			}
			if _, ok := x.BlockedOf(of); !ok {
				t.Fatal(fmt.Sprint("blocked entry not reachable by BlockedOf: ", of))
			}
		}
	})
}
