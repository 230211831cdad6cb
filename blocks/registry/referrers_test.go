package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// writeTinyLayout writes an OCI layout holding one single-layer image with a
// 200 KB file (a block) and returns its directory.
func writeTinyLayout(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	put := func(mt string, b []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
		if err := os.WriteFile(filepath.Join(blobs, d.Digest.Encoded()), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	data := bytes.Repeat([]byte("0123456789abcdef"), 200<<10/16)
	if err := tw.WriteHeader(&tar.Header{Name: "app/lib.jar", Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(data)
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tb.Bytes())
	zw.Close()
	layer := put(ocispec.MediaTypeImageLayerGzip, gz.Bytes())
	cfg, _ := json.Marshal(ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}, RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(tb.Bytes())}}})
	config := put(ocispec.MediaTypeImageConfig, cfg)
	mb, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: config, Layers: []ocispec.Descriptor{layer}})
	m := put(ocispec.MediaTypeImageManifest, mb)
	m.Annotations = map[string]string{ocispec.AnnotationRefName: "app"}
	ib, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{m}})
	os.WriteFile(filepath.Join(dir, "index.json"), ib, 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	return dir
}

func attachTo(t *testing.T, s *store.Store, subject ocispec.Descriptor, suffix, payload string) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	push := func(mt string, b []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
		if err := s.Push(ctx, d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: push(ocispec.MediaTypeEmptyJSON, []byte("{}")), Layers: []ocispec.Descriptor{push("application/vnd.dev.cosign.simplesigning.v1+json", []byte(payload))}}
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
	}
	if err := s.AddReferrer(ctx, subject.Digest, d); err != nil {
		t.Fatal(err)
	}
	return d
}

// Push carries the store's referrers of the image; pull brings them back.
func TestPushPullCarryReferrers(t *testing.T) {
	for _, api := range []bool{false, true} {
		t.Run(map[bool]string{false: "tags", true: "referrers-api"}[api], func(t *testing.T) {
			opts := []ggcrregistry.Option{ggcrregistry.Logger(log.New(io.Discard, "", 0))}
			if api {
				opts = append(opts, ggcrregistry.WithReferrersSupport(true))
			}
			srv := httptest.NewServer(ggcrregistry.New(opts...))
			defer srv.Close()
			ctx := context.Background()
			src, err := store.Create(filepath.Join(t.TempDir(), "ci"))
			if err != nil {
				t.Fatal(err)
			}
			layout := writeTinyLayout(t)
			in, err := transport.ParseSource(ctx, "oci:"+layout)
			if err != nil {
				t.Fatal(err)
			}
			res, err := image.Export(ctx, src, in, "app:1", image.ExportOptions{})
			in.Close()
			if err != nil {
				t.Fatal(err)
			}
			sig := attachTo(t, src, res.Standard, "sig", "signature")
			sbom := attachTo(t, src, res.Standard, "", "sbom")

			ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/app:1")
			if err != nil {
				t.Fatal(err)
			}
			pr, err := Push(ctx, src, "app:1", ref, PushOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if pr.Referrers != 2 {
				t.Fatalf("push carried %d referrers, want 2", pr.Referrers)
			}
			site, err := store.Create(filepath.Join(t.TempDir(), "site"))
			if err != nil {
				t.Fatal(err)
			}
			pl, err := Pull(ctx, site, ref, "app:1", PullOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !pl.Blocked || pl.Referrers != 2 {
				t.Fatalf("pull: blocked %v, %d referrers; want the blocked form and 2", pl.Blocked, pl.Referrers)
			}
			got, err := site.Referrers(ctx, res.Standard.Digest)
			if err != nil {
				t.Fatal(err)
			}
			want := map[digest.Digest]string{sig.Digest: "sig", sbom.Digest: ""}
			if len(got) != 2 {
				t.Fatalf("site referrers %v", got)
			}
			for _, g := range got {
				if tag, ok := want[g.Digest]; !ok || g.Annotations[blocks.AnnotationReferrerTag] != tag {
					t.Errorf("site referrer %+v", g)
				}
			}
			if err := site.Verify(ctx, nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}
