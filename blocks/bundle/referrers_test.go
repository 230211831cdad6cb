package bundle

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
)

// attach stores a referrer of subject: a manifest with one layer holding
// payload, cosign tag-scheme (suffix) or OCI 1.1 (subject field) when
// suffix is "".
func attach(t *testing.T, s *store.Store, subject ocispec.Descriptor, suffix, payload string) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	push := func(mt string, b []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
		if err := s.Push(ctx, d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	empty := push(ocispec.MediaTypeEmptyJSON, []byte("{}"))
	layer := push("application/vnd.dev.cosign.simplesigning.v1+json", []byte(payload))
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: empty, Layers: []ocispec.Descriptor{layer}}
	m.SchemaVersion = 2
	if suffix == "" {
		m.ArtifactType = "application/spdx+json"
		sub := ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
		m.Subject = &sub
	}
	d, err := s.PutJSON(ctx, ocispec.MediaTypeImageManifest, m)
	if err != nil {
		t.Fatal(err)
	}
	if suffix != "" {
		d.Annotations = map[string]string{blocks.AnnotationReferrerTag: suffix}
	} else {
		d.ArtifactType = m.ArtifactType
	}
	if err := s.AddReferrer(ctx, subject.Digest, d); err != nil {
		t.Fatal(err)
	}
	return d
}

func standardOfTag(t *testing.T, s *store.Store, name string) ocispec.Descriptor {
	t.Helper()
	desc, err := s.Resolve(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	var idx ocispec.Index
	if err := s.GetJSON(context.Background(), desc, &idx); err != nil {
		t.Fatal(err)
	}
	std, ok, err := store.StandardOf(idx.Annotations)
	if err != nil || !ok {
		t.Fatalf("standard of %s: %v %v", name, ok, err)
	}
	return std
}

func TestBundleCarriesReferrers(t *testing.T) {
	ctx := context.Background()
	src, site := openStore(t), openStore(t)
	putSynth(t, src, "app:v1", synthV1)
	std := standardOfTag(t, src, "app:v1")
	sig := attach(t, src, std, "sig", `{"critical":{"image":{"docker-manifest-digest":"`+std.Digest.String()+`"}}}`)
	sbom := attach(t, src, std, "", `{"spdxVersion":"SPDX-2.3"}`)
	sbomSig := attach(t, src, sbom, "sig", `{"critical":{"image":{"docker-manifest-digest":"`+sbom.Digest.String()+`"}}}`)

	path := filepath.Join(t.TempDir(), "v1.bundle")
	h, err := Create(ctx, src, []string{"app:v1"}, path, CreateOptions{Full: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(h.Images[0].Referrers); got != 3 {
		t.Fatalf("header lists %d referrers, want 3: %+v", got, h.Images[0].Referrers)
	}
	shipped := map[digest.Digest]bool{}
	for _, b := range h.Blobs {
		shipped[b.Digest] = true
	}
	for _, d := range []ocispec.Descriptor{sig, sbom, sbomSig} {
		if !shipped[d.Digest] {
			t.Errorf("referrer manifest %s not shipped", d.Digest)
		}
	}
	if _, err := Apply(ctx, site, path, ApplyOptions{NoMaterialize: true}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		subject ocispec.Descriptor
		want    []ocispec.Descriptor
	}{{std, []ocispec.Descriptor{sig, sbom}}, {sbom, []ocispec.Descriptor{sbomSig}}} {
		got, err := site.Referrers(ctx, c.subject.Digest)
		if err != nil {
			t.Fatal(err)
		}
		want := map[digest.Digest]ocispec.Descriptor{}
		for _, w := range c.want {
			want[w.Digest] = w
		}
		if len(got) != len(want) {
			t.Fatalf("site referrers of %s: %v, want %v", c.subject.Digest, got, c.want)
		}
		for _, g := range got {
			w, ok := want[g.Digest]
			if !ok || g.Annotations[blocks.AnnotationReferrerTag] != w.Annotations[blocks.AnnotationReferrerTag] || g.ArtifactType != w.ArtifactType {
				t.Errorf("site referrer %+v, want %+v", g, w)
			}
		}
	}
	if err := site.Verify(ctx, nil); err != nil {
		t.Fatalf("site store after apply: %v", err)
	}

	// A signature added later travels in an upgrade bundle on its own: the
	// image and the older referrers are in the base.
	sig2 := attach(t, src, std, "att", `{"payloadType":"application/vnd.in-toto+json"}`)
	up := filepath.Join(t.TempDir(), "v1-att.bundle")
	h, err = Create(ctx, src, []string{"app:v1"}, up, CreateOptions{Have: inventoryOf(t, site)})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, b := range h.Blobs {
		kinds = append(kinds, string(b.Kind))
	}
	// The new manifest and its layer (the empty config is in the base).
	if len(h.Blobs) != 2 || h.Blobs[0].Digest != sig2.Digest {
		t.Fatalf("upgrade ships %v (%s), want the new attestation manifest and its layer", h.Blobs, strings.Join(kinds, ","))
	}
	if _, err := Apply(ctx, site, up, ApplyOptions{NoMaterialize: true}); err != nil {
		t.Fatal(err)
	}
	if got, _ := site.Referrers(ctx, std.Digest); len(got) != 3 {
		t.Fatalf("site referrers after the upgrade: %v, want 3", got)
	}
}

func TestReferrerOfForeignSubjectRefused(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	putSynth(t, s, "app:v1", synthV1)
	putSynth(t, s, "app:v2", synthV2)
	other := standardOfTag(t, s, "app:v2")
	sig := attach(t, s, other, "sig", "signature of v2")
	desc, err := s.Resolve(ctx, "app:v1")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Walk(ctx, s, "app:v1", desc)
	if err != nil {
		t.Fatal(err)
	}
	err = c.addReferrers(ctx, s, []store.Referrer{{Subject: other.Digest, Descriptor: sig}}, false)
	if err == nil || !strings.Contains(err.Error(), "not a manifest of the image") {
		t.Fatalf("a referrer of another image's manifest: %v", err)
	}
}

// inventoryOf is an inventory of every blob in s.
func inventoryOf(t *testing.T, s *store.Store) *Inventory {
	t.Helper()
	var ds []digest.Digest
	if err := s.Walk(context.Background(), func(d digest.Digest, _ int64) error {
		ds = append(ds, d)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	inv, err := NewInventory(ds, DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	return inv
}
