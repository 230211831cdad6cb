package image

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// buildkitAttestation makes an attestation manifest the way BuildKit's
// image exporter does for subject: one in-toto provenance statement naming
// subject's digest, a config listing it in rootfs.diff_ids, and with
// ociArtifact an OCI subject field.
func buildkitAttestation(b *layoutBuilder, subject ocispec.Descriptor, ociArtifact bool) ocispec.Descriptor {
	stmt := map[string]any{
		"_type":         "https://in-toto.io/Statement/v0.1",
		"predicateType": "https://slsa.dev/provenance/v0.2",
		"subject": []map[string]any{{
			"name":   "pkg:docker/example.test/app@1?platform=linux%2Famd64",
			"digest": map[string]string{"sha256": subject.Digest.Encoded()},
		}},
		"predicate": map[string]any{"buildType": "https://mobyproject.org/buildkit@v1"},
	}
	layer := b.json(mediaTypeInToto, stmt)
	layer.Annotations = map[string]string{"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}
	cfg := b.json(ocispec.MediaTypeImageConfig, ocispec.Image{
		Platform: ocispec.Platform{OS: "unknown", Architecture: "unknown"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layer.Digest}},
	})
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: []ocispec.Descriptor{layer}}
	if ociArtifact {
		m.ArtifactType = "application/vnd.docker.attestation.manifest.v1+json"
		m.Subject = &ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	}
	d := b.json(ocispec.MediaTypeImageManifest, m)
	d.Platform = &ocispec.Platform{OS: "unknown", Architecture: "unknown"}
	d.Annotations = map[string]string{annotationReferenceType: attestationReferenceType, annotationReferenceDigest: subject.Digest.String()}
	return d
}

func TestBuildKitAttestationsRepointed(t *testing.T) {
	for _, ociArtifact := range []bool{false, true} {
		name := map[bool]string{false: "docker-style", true: "oci-artifact"}[ociArtifact]
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			b := newBuilder(t, "oci:"+dir+":app")
			img := b.image("amd64", nil, richLayers()[:1]...)
			img.Platform = &ocispec.Platform{OS: "linux", Architecture: "amd64"}
			att := buildkitAttestation(b, img, ociArtifact)
			root := b.json(ocispec.MediaTypeImageIndex, ocispec.Index{
				Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
				Manifests: []ocispec.Descriptor{img, att},
			})
			b.commit(root)
			s := openStore(t)
			res := export(t, s, "oci:"+dir+":app", "app", ExportOptions{})
			std := res.Manifests[0].Standard
			if std.Digest == img.Digest {
				t.Fatal("fixture: export did not re-frame the image; the test would prove nothing")
			}
			if len(res.Attestations) != 1 || res.Attestations[0].Source != att.Digest || res.Attestations[0].Subject != std.Digest || res.Attestations[0].Statements != 1 {
				t.Fatalf("attestations %+v, want the one re-pointed to %s", res.Attestations, std.Digest)
			}
			var idx ocispec.Index
			if err := s.GetJSON(ctx, res.Standard, &idx); err != nil {
				t.Fatal(err)
			}
			entry := idx.Manifests[1]
			if entry.Digest != res.Attestations[0].Standard.Digest || entry.Annotations[annotationReferenceDigest] != std.Digest.String() ||
				entry.Annotations[annotationReferenceType] != attestationReferenceType || entry.Platform == nil || entry.Platform.OS != "unknown" {
				t.Fatalf("standard index attestation entry %+v", entry)
			}
			var m ocispec.Manifest
			if err := s.GetJSON(ctx, entry, &m); err != nil {
				t.Fatal(err)
			}
			var stmt struct {
				PredicateType string `json:"predicateType"`
				Subject       []struct {
					Name   string            `json:"name"`
					Digest map[string]string `json:"digest"`
				} `json:"subject"`
				Predicate map[string]any `json:"predicate"`
			}
			if err := s.GetJSON(ctx, m.Layers[0], &stmt); err != nil {
				t.Fatal(err)
			}
			if len(stmt.Subject) != 1 || stmt.Subject[0].Digest["sha256"] != std.Digest.Encoded() ||
				stmt.Subject[0].Name != "pkg:docker/example.test/app@1?platform=linux%2Famd64" ||
				stmt.PredicateType != "https://slsa.dev/provenance/v0.2" || stmt.Predicate["buildType"] != "https://mobyproject.org/buildkit@v1" {
				t.Fatalf("re-pointed statement %+v", stmt)
			}
			if m.Layers[0].Annotations[AnnotationSourceSubject] != img.Digest.String() || m.Layers[0].Annotations["in-toto.io/predicate-type"] == "" {
				t.Errorf("statement layer annotations %v", m.Layers[0].Annotations)
			}
			var cfg ocispec.Image
			if err := s.GetJSON(ctx, m.Config, &cfg); err != nil {
				t.Fatal(err)
			}
			if len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != m.Layers[0].Digest {
				t.Errorf("attestation config diff_ids %v, want the new statement %s", cfg.RootFS.DiffIDs, m.Layers[0].Digest)
			}
			if ociArtifact != (m.Subject != nil) || (m.Subject != nil && (m.Subject.Digest != std.Digest || m.Subject.Size != std.Size)) {
				t.Errorf("subject field %+v, want the standard manifest %s", m.Subject, std.Digest)
			}
			if ociArtifact && m.ArtifactType == "" {
				t.Error("artifactType lost")
			}
			// The standard image with its attestation hydrates to the same digest.
			out := "oci-archive:" + filepath.Join(dir, "out.tar")
			got, err := hydrate(t, s, "app", out)
			if err != nil {
				t.Fatal(err)
			}
			if got.Digest != res.Standard.Digest {
				t.Fatalf("hydrated %s, want %s", got.Digest, res.Standard.Digest)
			}
			if err := s.Verify(ctx, nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}
