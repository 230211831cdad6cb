package transport

import (
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// Delta manifests are recognised whether the registry lists the manifest's
// artifactType or (as OCI 1.1 drafts did) its config's media type.
func TestIsDelta(t *testing.T) {
	for _, c := range []struct {
		desc ocispec.Descriptor
		want bool
	}{
		{ocispec.Descriptor{ArtifactType: blocks.ArtifactTypeDelta}, true},
		{ocispec.Descriptor{ArtifactType: ocispec.MediaTypeEmptyJSON, Annotations: map[string]string{blocks.AnnotationDeltaBase: "sha256:00"}}, true},
		{ocispec.Descriptor{ArtifactType: ocispec.MediaTypeEmptyJSON}, false},
		{ocispec.Descriptor{ArtifactType: "application/vnd.dev.sigstore.bundle.v0.3+json"}, false},
	} {
		if got := IsDelta(c.desc); got != c.want {
			t.Errorf("IsDelta(%+v) = %v, want %v", c.desc, got, c.want)
		}
	}
}
