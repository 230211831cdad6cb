package image

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// putReferrer stores a manifest with one layer (payload) and records it as
// a referrer of subject: tag-scheme with suffix, else OCI 1.1 (subject field).
func putReferrer(t *testing.T, s *store.Store, subject ocispec.Descriptor, suffix, payload string) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	push := func(mt string, b []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
		if err := s.Push(ctx, d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	cfg := push(ocispec.MediaTypeEmptyJSON, []byte("{}"))
	cfg.Data = []byte("{}") // as oras and cosign v3 write it
	layer := push("application/vnd.dev.cosign.simplesigning.v1+json", []byte(payload))
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: []ocispec.Descriptor{layer}}
	if suffix == "" {
		m.ArtifactType = "application/spdx+json"
		m.Subject = &ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
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

// Referrers go to a registry with the tag scheme (or its referrers API)
// and come back with export, with and without the API.
func TestReferrersRegistryRoundTrip(t *testing.T) {
	for _, api := range []bool{false, true} {
		t.Run(map[bool]string{false: "tags", true: "referrers-api"}[api], func(t *testing.T) {
			opts := []registry.Option{registry.Logger(log.New(io.Discard, "", 0))}
			if api {
				opts = append(opts, registry.WithReferrersSupport(true))
			}
			srv := httptest.NewServer(registry.New(opts...))
			defer srv.Close()
			host := strings.TrimPrefix(srv.URL, "http://")
			ctx := context.Background()
			dir := t.TempDir()
			b := newBuilder(t, "oci:"+dir)
			b.commit(b.image("amd64", nil, richLayers()[:1]...))
			s := openStore(t)
			res := export(t, s, "oci:"+dir, "app", ExportOptions{})
			sig := putReferrer(t, s, res.Standard, "sig", "signature")
			sbom := putReferrer(t, s, res.Standard, "", "sbom")
			sbomSig := putReferrer(t, s, sbom, "sig", "signature of the sbom")

			ref := host + "/app:1"
			got, err := hydrate(t, s, "app", "docker://"+ref)
			if err != nil {
				t.Fatal(err)
			}
			pushed, err := PushReferrers(ctx, s, got, transport.Registry{}, ref)
			if err != nil {
				t.Fatal(err)
			}
			if len(pushed) != 3 {
				t.Fatalf("pushed %d referrers, want 3", len(pushed))
			}
			// The registry lists them where clients look.
			list, err := transport.Registry{}.Referrers(ctx, ref, res.Standard.Digest)
			if err != nil {
				t.Fatal(err)
			}
			found := map[digest.Digest]string{}
			for _, d := range list {
				found[d.Digest] = d.Annotations[blocks.AnnotationReferrerTag]
			}
			if len(list) != 2 || found[sig.Digest] != "sig" || found[sbom.Digest] != "" {
				t.Fatalf("registry lists %+v, want the signature (tag sig) and the sbom", list)
			}

			// Export from the registry brings all three into a new store.
			s2 := openStore(t)
			res2 := export(t, s2, "docker://"+ref, "app", ExportOptions{})
			if res2.Standard.Digest != res.Standard.Digest {
				t.Fatalf("re-export gave %s, want %s", res2.Standard.Digest, res.Standard.Digest)
			}
			all, err := s2.ReferrersClosure(ctx, res2.Standard.Digest)
			if err != nil {
				t.Fatal(err)
			}
			var ds []digest.Digest
			for _, r := range all {
				ds = append(ds, r.Descriptor.Digest)
			}
			if len(all) != 3 || !has(ds, sig.Digest) || !has(ds, sbom.Digest) || all[2].Descriptor.Digest != sbomSig.Digest || all[2].Subject != sbom.Digest {
				t.Fatalf("re-exported referrers %+v", all)
			}
			if err := s2.Verify(ctx, nil); err != nil {
				t.Fatal(err)
			}
			// Pushing again changes nothing and is not an error.
			if _, err := PushReferrers(ctx, s, got, transport.Registry{}, ref); err != nil {
				t.Fatalf("second push: %v", err)
			}
		})
	}
}

// A cosign tag at the destination that names other content is kept, and
// reported, after everything else is pushed.
func TestPushReferrersTagConflict(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	dir := t.TempDir()
	b := newBuilder(t, "oci:"+dir)
	b.commit(b.image("amd64", nil, richLayers()[:1]...))
	s := openStore(t)
	res := export(t, s, "oci:"+dir, "app", ExportOptions{})
	theirs := putReferrer(t, s, res.Standard, "sig", "the site's own signature")
	ref := host + "/app:1"
	got, err := hydrate(t, s, "app", "docker://"+ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := PushReferrers(ctx, s, got, transport.Registry{}, ref); err != nil {
		t.Fatal(err)
	}
	// Our store now has another .sig for the same subject (and an SBOM).
	if err := s.RemoveReferrer(ctx, res.Standard.Digest, theirs.Digest); err != nil {
		t.Fatal(err)
	}
	putReferrer(t, s, res.Standard, "sig", "our signature")
	sbom := putReferrer(t, s, res.Standard, "", "sbom")
	_, err = PushReferrers(ctx, s, got, transport.Registry{}, ref)
	if !errors.Is(err, transport.ErrTagConflict) {
		t.Fatalf("push over another .sig: %v, want ErrTagConflict", err)
	}
	list, err := transport.Registry{}.Referrers(ctx, ref, res.Standard.Digest)
	if err != nil {
		t.Fatal(err)
	}
	var ds []digest.Digest
	for _, d := range list {
		ds = append(ds, d.Digest)
	}
	if !has(ds, theirs.Digest) || !has(ds, sbom.Digest) || len(ds) != 2 {
		t.Fatalf("after the conflict the registry lists %v, want the site's signature kept and the sbom pushed", ds)
	}
}

func has(ds []digest.Digest, d digest.Digest) bool {
	for _, x := range ds {
		if x == d {
			return true
		}
	}
	return false
}
