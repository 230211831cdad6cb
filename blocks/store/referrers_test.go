package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// signedImage is a tagged image whose manifest has a cosign-style signature
// (tag scheme), an OCI 1.1 referrer (subject field), and a signature of that
// referrer.
type signedImage struct {
	manifest, sig, sigLayer, sbom, sbomLayer, sbomSig, sbomSigLayer ocispec.Descriptor
}

func newSignedImage(t *testing.T, s *Store, tag string) *signedImage {
	t.Helper()
	ctx := context.Background()
	si := &signedImage{}
	config := push(t, s, ocispec.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`))
	layer := push(t, s, ocispec.MediaTypeImageLayerGzip, []byte("layer of "+tag))
	si.manifest = putJSON(t, s, ocispec.MediaTypeImageManifest, manifest(config, layer))
	if tag != "" {
		if err := s.Tag(ctx, tag, si.manifest); err != nil {
			t.Fatal(err)
		}
	}
	empty := push(t, s, ocispec.MediaTypeEmptyJSON, []byte("{}"))
	si.sigLayer = push(t, s, "application/vnd.dev.cosign.simplesigning.v1+json", []byte(`{"critical":{"image":{"docker-manifest-digest":"`+si.manifest.Digest+`"}}}`))
	si.sig = putJSON(t, s, ocispec.MediaTypeImageManifest, manifest(empty, si.sigLayer))
	si.sig.Annotations = map[string]string{blocks.AnnotationReferrerTag: "sig"}
	si.sbomLayer = push(t, s, "application/spdx+json", []byte(`{"spdxVersion":"SPDX-2.3","name":"`+tag+`"}`))
	sbom := manifest(empty, si.sbomLayer)
	sbom.ArtifactType = "application/spdx+json"
	subj := si.manifest
	sbom.Subject = &subj
	si.sbom = putJSON(t, s, ocispec.MediaTypeImageManifest, sbom)
	si.sbom.ArtifactType = "application/spdx+json"
	si.sbomSigLayer = push(t, s, "application/vnd.dev.cosign.simplesigning.v1+json", []byte(`{"critical":{"image":{"docker-manifest-digest":"`+si.sbom.Digest+`"}}}`))
	si.sbomSig = putJSON(t, s, ocispec.MediaTypeImageManifest, manifest(empty, si.sbomSigLayer))
	si.sbomSig.Annotations = map[string]string{blocks.AnnotationReferrerTag: "sig"}
	for _, r := range []struct{ subject, ref ocispec.Descriptor }{{si.manifest, si.sig}, {si.manifest, si.sbom}, {si.sbom, si.sbomSig}} {
		if err := s.AddReferrer(ctx, r.subject.Digest, r.ref); err != nil {
			t.Fatal(err)
		}
	}
	return si
}

func TestReferrersRecordedAndListed(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	si := newSignedImage(t, s, "app:1")
	refs, err := s.Referrers(ctx, si.manifest.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != 2 {
		t.Fatalf("referrers of the manifest: %d, want 2: %v", len(refs), refs)
	}
	byDigest := map[string]ocispec.Descriptor{}
	for _, r := range refs {
		byDigest[r.Digest.String()] = r
	}
	if got := byDigest[si.sig.Digest.String()].Annotations[blocks.AnnotationReferrerTag]; got != "sig" {
		t.Errorf("signature record lost its tag suffix: %q", got)
	}
	if got := byDigest[si.sbom.Digest.String()].ArtifactType; got != "application/spdx+json" {
		t.Errorf("sbom record lost its artifactType: %q", got)
	}
	if got := ReferrerTag(si.manifest.Digest, si.sig); got != "sha256-"+si.manifest.Digest.Encoded()+".sig" {
		t.Errorf("ReferrerTag(sig) = %s", got)
	}
	if got := ReferrerTag(si.manifest.Digest, si.sbom); got != "sha256-"+si.manifest.Digest.Encoded() {
		t.Errorf("ReferrerTag(sbom) = %s", got)
	}
	all, err := s.ReferrersClosure(ctx, si.manifest.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || all[2].Subject != si.sbom.Digest || all[2].Descriptor.Digest != si.sbomSig.Digest {
		t.Fatalf("closure: %+v, want the two referrers then the sbom's signature", all)
	}
}

func TestAddReferrerRefusesMissingContent(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	si := newSignedImage(t, s, "app:1")
	// A referrer whose layer is not in the store.
	empty := push(t, s, ocispec.MediaTypeEmptyJSON, []byte("{}"))
	ghost := descOf("application/octet-stream", []byte("never stored"))
	m := putJSON(t, s, ocispec.MediaTypeImageManifest, manifest(empty, ghost))
	if err := s.AddReferrer(ctx, si.manifest.Digest, m); !errors.Is(err, ErrNotFound) {
		t.Fatalf("referrer naming a missing layer: %v, want ErrNotFound", err)
	}
	// A subject that is not in the store.
	absent := descOf(ocispec.MediaTypeImageManifest, []byte(`{"not":"stored"}`))
	if err := s.AddReferrer(ctx, absent.Digest, si.sig); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing subject: %v, want ErrNotFound", err)
	}
	// Not a manifest; a bad tag suffix.
	if err := s.AddReferrer(ctx, si.manifest.Digest, si.sigLayer); !errors.Is(err, ErrInvalid) {
		t.Fatalf("layer as referrer: %v, want ErrInvalid", err)
	}
	bad := si.sig
	bad.Annotations = map[string]string{blocks.AnnotationReferrerTag: "../x"}
	if err := s.AddReferrer(ctx, si.manifest.Digest, bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad tag suffix: %v, want ErrInvalid", err)
	}
}

func TestGCKeepsReferrersWithTheirSubject(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	kept := newSignedImage(t, s, "app:1")
	gone := newSignedImage(t, s, "app:2")
	if err := s.Untag(ctx, "app:2"); err != nil {
		t.Fatal(err)
	}
	res, err := s.GCWithOptions(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []ocispec.Descriptor{kept.manifest, kept.sig, kept.sigLayer, kept.sbom, kept.sbomLayer, kept.sbomSig, kept.sbomSigLayer} {
		if ok, _ := s.Exists(ctx, d.Digest); !ok {
			t.Errorf("gc removed %s (%s) of a kept image", d.Digest, d.MediaType)
		}
	}
	for _, d := range []ocispec.Descriptor{gone.manifest, gone.sig, gone.sigLayer, gone.sbom, gone.sbomLayer, gone.sbomSig, gone.sbomSigLayer} {
		if ok, _ := s.Exists(ctx, d.Digest); ok {
			t.Errorf("gc kept %s (%s) of an untagged image", d.Digest, d.MediaType)
		}
	}
	if len(res.ReferrerRecords) != 2 {
		t.Errorf("dropped referrer records %v, want the untagged manifest's and its sbom's", res.ReferrerRecords)
	}
	if refs, err := s.Referrers(ctx, gone.manifest.Digest); err != nil || refs != nil {
		t.Errorf("referrers of a swept subject: %v, %v", refs, err)
	}
	if refs, err := s.Referrers(ctx, kept.manifest.Digest); err != nil || len(refs) != 2 {
		t.Errorf("referrers of the kept subject: %v, %v", refs, err)
	}
	if err := s.Verify(ctx, nil); err != nil {
		t.Fatalf("verify after gc: %v", err)
	}
}

func TestReferrersDamagedRecord(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	si := newSignedImage(t, s, "app:1")
	p := filepath.Join(s.Root(), "blockfile", "referrers", si.manifest.Digest.Encoded(), si.sig.Digest.Encoded())
	if err := os.WriteFile(p, []byte(`{"mediaType":"text/plain","digest":"`+si.sig.Digest+`","size":3}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Referrers(ctx, si.manifest.Digest); !errors.Is(err, ErrInvalid) {
		t.Fatalf("damaged record: %v, want ErrInvalid", err)
	}
	// gc must not sweep what a damaged record may protect.
	if _, err := s.GCWithOptions(ctx, GCOptions{}); err == nil {
		t.Fatal("gc succeeded over a damaged referrer record")
	}
	if ok, _ := s.Exists(ctx, si.sig.Digest); !ok {
		t.Fatal("gc removed a blob while failing")
	}
}

func TestVerifyReportsMissingReferrerContent(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	si := newSignedImage(t, s, "app:1")
	if err := os.Remove(s.BlobPath(si.sigLayer.Digest)); err != nil {
		t.Fatal(err)
	}
	var problems []Problem
	if err := s.Verify(ctx, func(p Problem) { problems = append(problems, p) }); !errors.Is(err, ErrProblems) {
		t.Fatalf("verify: %v, want ErrProblems", err)
	}
	if len(problems) != 1 || problems[0].Kind != ProblemMissing || problems[0].Digest != si.sigLayer.Digest {
		t.Fatalf("problems %v, want the signature layer missing", problems)
	}
}
