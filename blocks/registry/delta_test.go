package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"log"
	"math/rand"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

func testDeltaManifest(t testing.TB) (data []byte, subject, bundleDesc ocispec.Descriptor, base digest.Digest) {
	t.Helper()
	subject = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromString("index"), Size: 1234}
	bundleDesc = ocispec.Descriptor{MediaType: blocks.MediaTypeBundle, Digest: digest.FromString("bundle"), Size: 5678}
	base = digest.FromString("base")
	data, err := makeDeltaManifest(subject, bundleDesc, base, digest.FromString("base-standard"))
	if err != nil {
		t.Fatal(err)
	}
	return data, subject, bundleDesc, base
}

func TestParseDeltaManifest(t *testing.T) {
	data, subject, bd, base := testDeltaManifest(t)
	m, err := parseDeltaManifest(data, subject.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if m.bundle.Digest != bd.Digest || m.bundle.Size != bd.Size || m.base != base || m.desc.Digest != digest.FromBytes(data) {
		t.Fatalf("parsed %+v", m)
	}
	edit := func(fn func(map[string]any)) []byte {
		var v map[string]any
		if err := json.Unmarshal(data, &v); err != nil {
			t.Fatal(err)
		}
		fn(v)
		out, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	layer := func(v map[string]any) map[string]any { return v["layers"].([]any)[0].(map[string]any) }
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"not json", []byte("{"), "delta manifest"},
		{"schema version", edit(func(v map[string]any) { v["schemaVersion"] = 1 }), "schemaVersion"},
		{"media type", edit(func(v map[string]any) { v["mediaType"] = ocispec.MediaTypeImageIndex }), "mediaType"},
		{"artifact type", edit(func(v map[string]any) { v["artifactType"] = "application/spdx+json" }), "artifactType"},
		{"no subject", edit(func(v map[string]any) { delete(v, "subject") }), "subject"},
		{"other subject", edit(func(v map[string]any) { v["subject"].(map[string]any)["digest"] = digest.FromString("x").String() }), "subject"},
		{"two layers", edit(func(v map[string]any) { v["layers"] = append(v["layers"].([]any), layer(v)) }), "2 layers"},
		{"no layer", edit(func(v map[string]any) { v["layers"] = []any{} }), "0 layers"},
		{"layer media type", edit(func(v map[string]any) { layer(v)["mediaType"] = ocispec.MediaTypeImageLayerGzip }), "layer media type"},
		{"bad digest", edit(func(v map[string]any) { layer(v)["digest"] = "sha256:zz" }), "digest"},
		{"sha512", edit(func(v map[string]any) { layer(v)["digest"] = digest.SHA512.FromString("x").String() }), "sha256"},
		{"zero size", edit(func(v map[string]any) { layer(v)["size"] = 0 }), "size"},
		{"negative size", edit(func(v map[string]any) { layer(v)["size"] = -5 }), "size"},
		{"no base", edit(func(v map[string]any) { delete(v["annotations"].(map[string]any), blocks.AnnotationDeltaBase) }), blocks.AnnotationDeltaBase},
		{"bad base", edit(func(v map[string]any) { v["annotations"].(map[string]any)[blocks.AnnotationDeltaBase] = "latest" }), blocks.AnnotationDeltaBase},
		{"base is the subject", edit(func(v map[string]any) {
			v["annotations"].(map[string]any)[blocks.AnnotationDeltaBase] = subject.Digest.String()
		}), "itself"},
		{"too large", append(data, bytes.Repeat([]byte(" "), maxDeltaManifest)...), "limit"},
	} {
		if _, err := parseDeltaManifest(c.data, subject.Digest); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error about %q", c.name, err, c.want)
		}
	}
}

// FuzzParseDeltaManifest: registry input never panics the parser, and what
// it accepts is a usable delta.
func FuzzParseDeltaManifest(f *testing.F) {
	data, subject, _, _ := testDeltaManifest(f)
	f.Add(data)
	f.Add([]byte(`{"schemaVersion":2}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseDeltaManifest(data, subject.Digest)
		if err != nil {
			return
		}
		if m.bundle.Size <= 0 || m.bundle.Digest.Validate() != nil || m.base.Validate() != nil || m.base == subject.Digest || m.desc.Digest != digest.FromBytes(data) {
			t.Fatalf("accepted %q as %+v", data, m)
		}
	})
}

// writeFileLayout writes an OCI layout of one image whose one layer holds
// app/lib.jar = data (a block) and returns its directory.
func writeFileLayout(t *testing.T, data []byte) string {
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
	ib, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{m}})
	os.WriteFile(filepath.Join(dir, "index.json"), ib, 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	return dir
}

func exportLayout(t *testing.T, s *store.Store, layout, name string) *image.ExportResult {
	t.Helper()
	ctx := context.Background()
	in, err := transport.ParseSource(ctx, "oci:"+layout)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	res, err := image.Export(ctx, s, in, name, image.ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// Push --delta-from publishes the bundle as a referrer of the index; a pull
// into a store holding the base applies it, with and without the
// registry's referrers API; the delta is not copied as a referrer.
func TestPushPullDelta(t *testing.T) {
	v1 := make([]byte, 300<<10)
	rand.New(rand.NewSource(1)).Read(v1)
	v2 := append([]byte{}, v1...)
	copy(v2[100<<10:], bytes.Repeat([]byte("changed!"), 128))
	for _, api := range []bool{false, true} {
		t.Run(map[bool]string{false: "fallback-tag", true: "referrers-api"}[api], func(t *testing.T) {
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
			r1 := exportLayout(t, src, writeFileLayout(t, v1), "app:1")
			r2 := exportLayout(t, src, writeFileLayout(t, v2), "app:2")
			host := strings.TrimPrefix(srv.URL, "http://")
			ref1, _ := name.ParseReference(host + "/app:1")
			ref2, _ := name.ParseReference(host + "/app:2")
			if _, err := Push(ctx, src, "app:1", ref1, PushOptions{TagChildren: true}); err != nil {
				t.Fatal(err)
			}
			pr, err := Push(ctx, src, "app:2", ref2, PushOptions{TagChildren: true, DeltaFrom: []string{"app:1"}})
			if err != nil {
				t.Fatal(err)
			}
			if len(pr.Deltas) != 1 || pr.Deltas[0].Present || pr.Deltas[0].BaseIndex.Digest != r1.Index.Digest || pr.Index.Digest != r2.Index.Digest {
				t.Fatalf("push: index %s, deltas %+v", pr.Index.Digest, pr.Deltas)
			}
			again, err := Push(ctx, src, "app:2", ref2, PushOptions{TagChildren: true, DeltaFrom: []string{"app:1"}})
			if err != nil {
				t.Fatal(err)
			}
			if len(again.Deltas) != 1 || !again.Deltas[0].Present || again.Deltas[0].Manifest.Digest != pr.Deltas[0].Manifest.Digest {
				t.Fatalf("second push: deltas %+v", again.Deltas)
			}
			// Signatures and attestations listings leave it out.
			refs, err := transport.ListReferrers(ctx, ref2.Context(), nil, r2.Index.Digest)
			if err != nil || len(refs) != 0 {
				t.Fatalf("ListReferrers of the index: %v, %v; want none", refs, err)
			}

			// A delta manifest that does not check (two layers) beside the
			// good one is passed over, not fatal.
			good, _, _, _ := testDeltaManifest(t)
			var bad map[string]any
			json.Unmarshal(good, &bad)
			bad["subject"] = ocispec.Descriptor{MediaType: r2.Index.MediaType, Digest: r2.Index.Digest, Size: r2.Index.Size}
			bad["annotations"] = map[string]string{blocks.AnnotationDeltaBase: r1.Index.Digest.String()}
			bad["layers"] = append(bad["layers"].([]any), bad["layers"].([]any)[0])
			badData, _ := json.Marshal(bad)
			if err := remote.Put(ref2.Context().Digest(digest.FromBytes(badData).String()), rawDelta{badData}); err != nil {
				t.Fatal(err)
			}

			site, err := store.Create(filepath.Join(t.TempDir(), "site"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Pull(ctx, site, ref1, "app:1", PullOptions{}); err != nil {
				t.Fatal(err)
			}
			// --no-deltas: the blocks.
			noDelta := filepath.Join(t.TempDir(), "nodelta")
			if err := os.CopyFS(noDelta, os.DirFS(site.Root())); err != nil {
				t.Fatal(err)
			}
			nd, err := store.Open(noDelta)
			if err != nil {
				t.Fatal(err)
			}
			pb, err := Pull(ctx, nd, ref2, "app:2", PullOptions{NoDeltas: true})
			if err != nil {
				t.Fatal(err)
			}
			pl, err := Pull(ctx, site, ref2, "app:2", PullOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if pl.Delta == nil || pl.Delta.Manifest.Digest != pr.Deltas[0].Manifest.Digest || pl.Standard.Digest != r2.Standard.Digest || pb.Delta != nil {
				t.Fatalf("pull: delta %+v, standard %s (want %s); --no-deltas: delta %+v", pl.Delta, pl.Standard.Digest, r2.Standard.Digest, pb.Delta)
			}
			t.Logf("upgrade: %d bytes with the delta, %d through blocks", pl.Downloaded.Bytes, pb.Downloaded.Bytes)
			if pl.Downloaded.Bytes >= pb.Downloaded.Bytes {
				t.Errorf("the delta pull downloaded %d bytes, the block pull %d", pl.Downloaded.Bytes, pb.Downloaded.Bytes)
			}
			for _, s := range []*store.Store{site, nd} {
				if err := s.Verify(ctx, nil); err != nil {
					t.Fatal(err)
				}
				got, err := s.Referrers(ctx, r2.Index.Digest)
				if err != nil || len(got) != 0 {
					t.Errorf("store %s: referrers of the index %v, %v; want none", s.Root(), got, err)
				}
			}
		})
	}
}

type rawDelta struct{ data []byte }

func (r rawDelta) RawManifest() ([]byte, error)        { return r.data, nil }
func (r rawDelta) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
