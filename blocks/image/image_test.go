package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
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

func openStore(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Create(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func export(t *testing.T, s *store.Store, ref, name string, opts ExportOptions) *ExportResult {
	t.Helper()
	ctx := context.Background()
	src, err := transport.ParseSource(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	res, err := Export(ctx, s, src, name, opts)
	if err != nil {
		t.Fatalf("export %s: %v", ref, err)
	}
	return res
}

// hydrate writes name to dest and returns the root digest read back from dest.
func hydrate(t *testing.T, s *store.Store, name, dest string) (ocispec.Descriptor, error) {
	t.Helper()
	ctx := context.Background()
	dst, err := transport.ParseSink(ctx, dest, transport.WithDefaultName(name))
	if err != nil {
		t.Fatal(err)
	}
	return Hydrate(ctx, s, name, dst, HydrateOptions{})
}

func rootOf(t *testing.T, ref string) ocispec.Descriptor {
	t.Helper()
	src, err := transport.ParseSource(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	d, err := src.Resolve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestExportHydrateRoundTrip(t *testing.T) {
	for _, c := range []blocks.Compression{blocks.Gzip, blocks.Zstd} {
		t.Run(string(c), func(t *testing.T) {
			dir := t.TempDir()
			b := newBuilder(t, "oci:"+filepath.Join(dir, "src")+":app:1")
			b.commit(b.image("amd64", nil, richLayers()...))
			s := openStore(t)

			res := export(t, s, "oci:"+filepath.Join(dir, "src"), "app:1", ExportOptions{Compression: c})
			// x.jar (twice), exact512, the long name and xattr.bin are blocks.
			if res.Blocks != 5 || res.NewMembers != 4 || res.ReusedMembers != 1 {
				t.Errorf("blocks %d, new %d, reused %d; want 5, 4, 1", res.Blocks, res.NewMembers, res.ReusedMembers)
			}
			if res.Standard.MediaType != ocispec.MediaTypeImageManifest {
				t.Errorf("standard media type %s", res.Standard.MediaType)
			}
			for _, dest := range []string{"oci:" + filepath.Join(dir, "out"), "oci-archive:" + filepath.Join(dir, "out.tar")} {
				got, err := hydrate(t, s, "app:1", dest)
				if err != nil {
					t.Fatalf("hydrate to %s: %v", dest, err)
				}
				if got.Digest != res.Standard.Digest || rootOf(t, dest).Digest != res.Standard.Digest {
					t.Fatalf("hydrate to %s gave %s, want %s", dest, got.Digest, res.Standard.Digest)
				}
			}
			// The hydrated image exports again to the same standard image,
			// reusing every member (a warm store compresses nothing).
			again := export(t, s, "oci:"+filepath.Join(dir, "out"), "app:again", ExportOptions{Compression: c})
			if again.Standard.Digest != res.Standard.Digest || again.NewMembers != 0 {
				t.Errorf("re-export: %s with %d new members; want %s and 0", again.Standard.Digest, again.NewMembers, res.Standard.Digest)
			}

			info, err := Inspect(context.Background(), s, "app:1")
			if err != nil {
				t.Fatal(err)
			}
			if info.Stubs != 5 || info.Blocks != 4 || len(info.Manifests[0].Layers) != 3 {
				t.Errorf("inspect: %d stubs, %d blocks, %d layers; want 5, 4, 3", info.Stubs, info.Blocks, len(info.Manifests[0].Layers))
			}
			if l := info.Manifests[0].Layers[2]; l.Blocked.Digest != l.Standard.Digest || l.BlockSet != nil {
				t.Errorf("a layer without blocks must be its own blocked layer: %+v", l)
			}
		})
	}
}

// The index layout is exactly what docs/ARCHITECTURE.md says.
func TestStoreLayout(t *testing.T) {
	dir := t.TempDir()
	b := newBuilder(t, "oci:"+dir)
	b.commit(b.image("amd64", nil, richLayers()...))
	s := openStore(t)
	res := export(t, s, "oci:"+dir, "app", ExportOptions{})
	ctx := context.Background()
	var idx ocispec.Index
	if err := s.GetJSON(ctx, res.Index, &idx); err != nil {
		t.Fatal(err)
	}
	if idx.Annotations[blocks.AnnotationStandard] != res.Standard.Digest.String() {
		t.Fatalf("standard annotation: %v", idx.Annotations)
	}
	// standard, blocked, then one block set per layer with blocks (2).
	if len(idx.Manifests) != 4 {
		t.Fatalf("index has %d entries, want 4", len(idx.Manifests))
	}
	std, blocked := idx.Manifests[0], idx.Manifests[1]
	if std.Digest != res.Standard.Digest || std.Platform == nil || std.Platform.Architecture != "amd64" {
		t.Errorf("standard entry: %+v", std)
	}
	if blocked.Annotations[blocks.AnnotationBlockedOf] != std.Digest.String() || blocked.Platform.OS != "unknown" || blocked.ArtifactType != "" {
		t.Errorf("blocked entry: %+v", blocked)
	}
	var bm ocispec.Manifest
	if err := s.GetJSON(ctx, blocked, &bm); err != nil {
		t.Fatal(err)
	}
	if bm.ArtifactType != blocks.ArtifactTypeBlocked {
		t.Errorf("blocked manifest artifactType %q", bm.ArtifactType)
	}
	for _, e := range idx.Manifests[2:] {
		var set ocispec.Manifest
		if err := s.GetJSON(ctx, e, &set); err != nil {
			t.Fatal(err)
		}
		if set.ArtifactType != blocks.ArtifactTypeBlockSet || set.Config.MediaType != ocispec.MediaTypeEmptyJSON || set.Annotations[blocks.AnnotationBlockSetOf] != e.Annotations[blocks.AnnotationBlockSetOf] {
			t.Errorf("block set %s: %+v", e.Digest, set)
		}
		for _, m := range set.Layers {
			if m.MediaType != blocks.MediaTypeMemberGzip {
				t.Errorf("member %+v", m)
			}
		}
		// Member descriptors are minimal: the stubs say which raw block
		// each member holds.
		var raw struct {
			Layers []map[string]json.RawMessage `json:"layers"`
		}
		if err := s.GetJSON(ctx, e, &raw); err != nil {
			t.Fatal(err)
		}
		for _, m := range raw.Layers {
			var keys []string
			for k := range m {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			if !slices.Equal(keys, []string{"digest", "mediaType", "size"}) {
				t.Errorf("block set %s: member descriptor has keys %v, want only mediaType, digest, size", e.Digest, keys)
			}
		}
	}
	// Both layers holding x.jar list the same member: it is stored once.
	img, err := Resolve(ctx, s, "app")
	if err != nil {
		t.Fatal(err)
	}
	in0 := map[digest.Digest]bool{}
	for _, m := range img.Manifests[0].Layers[0].Members {
		in0[m.Digest] = true
	}
	shared := 0
	for _, m := range img.Manifests[0].Layers[1].Members {
		if in0[m.Digest] {
			shared++
		}
	}
	if shared != 1 {
		t.Errorf("layers 0 and 1 share %d members, want 1 (x.jar)", shared)
	}
}

func TestImportedLabel(t *testing.T) {
	dir := t.TempDir()
	b := newBuilder(t, "oci:"+dir)
	labels := map[string]string{blocks.LabelImports: `{"/app/small.txt":"sha256:` + strings.Repeat("0", 64) + `","/etc/":"sha256:` + strings.Repeat("1", 64) + `"}`}
	b.commit(b.image("amd64", labels, richLayers()...))
	s := openStore(t)
	// Only imported files: app/small.txt and everything under etc/.
	res := export(t, s, "oci:"+dir, "app", ExportOptions{MinBlockSize: -1})
	if res.Blocks != 2 {
		t.Fatalf("got %d blocks, want 2 (app/small.txt, etc/conf)", res.Blocks)
	}
	if _, err := hydrate(t, s, "app", "oci:"+filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
}

func TestMultiPlatformIndex(t *testing.T) {
	dir := t.TempDir()
	b := newBuilder(t, "oci:"+dir+":multi")
	amd := b.image("amd64", nil, richLayers()[:2]...)
	arm := b.image("arm64", nil, richLayers()[:1]...)
	amd.Platform = &ocispec.Platform{OS: "linux", Architecture: "amd64"}
	arm.Platform = &ocispec.Platform{OS: "linux", Architecture: "arm64"}
	// An attestation-like manifest that must pass through untouched.
	att := b.json(ocispec.MediaTypeImageManifest, ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: b.json("application/vnd.in-toto+json", map[string]string{"x": "y"}),
	})
	att.Platform = &ocispec.Platform{OS: "unknown", Architecture: "unknown"}
	att.Annotations = map[string]string{"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": amd.Digest.String()}
	root := b.json(ocispec.MediaTypeImageIndex, ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{amd, arm, att}, Annotations: map[string]string{"k": "v"},
	})
	b.commit(root)
	s := openStore(t)
	res := export(t, s, "oci:"+dir+":multi", "multi", ExportOptions{})
	if res.Standard.MediaType != ocispec.MediaTypeImageIndex || len(res.Manifests) != 2 {
		t.Fatalf("standard %+v with %d manifests", res.Standard, len(res.Manifests))
	}
	var stdIdx ocispec.Index
	if err := s.GetJSON(context.Background(), res.Standard, &stdIdx); err != nil {
		t.Fatal(err)
	}
	if len(stdIdx.Manifests) != 3 || stdIdx.Manifests[2].Digest != att.Digest || stdIdx.Annotations["k"] != "v" ||
		stdIdx.Manifests[2].Annotations["vnd.docker.reference.digest"] != stdIdx.Manifests[0].Digest.String() {
		t.Fatalf("standard index: %+v", stdIdx)
	}
	// The x.jar block set of layer 0 is shared by both platforms: listed once.
	var idx ocispec.Index
	s.GetJSON(context.Background(), res.Index, &idx)
	seen := map[digest.Digest]bool{}
	for _, e := range idx.Manifests {
		if seen[e.Digest] {
			t.Errorf("index lists %s twice", e.Digest)
		}
		seen[e.Digest] = true
	}
	out := "oci-archive:" + filepath.Join(dir, "out.tar")
	got, err := hydrate(t, s, "multi", out)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != res.Standard.Digest || rootOf(t, out).Digest != res.Standard.Digest {
		t.Fatalf("hydrated %s, want %s", got.Digest, res.Standard.Digest)
	}
}

func TestDockerSchema2(t *testing.T) {
	dir := t.TempDir()
	b := newBuilder(t, "oci:"+dir)
	l, diff := b.layer(richLayers()[0])
	l.MediaType = transport.MediaTypeDockerLayerGzip
	cfg := b.json(transport.MediaTypeDockerConfig, ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}, RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diff}}})
	m := b.json(transport.MediaTypeDockerManifest, ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: transport.MediaTypeDockerManifest, Config: cfg, Layers: []ocispec.Descriptor{l}})
	b.commit(m)
	s := openStore(t)
	gz := export(t, s, "oci:"+dir, "d-gzip", ExportOptions{})
	if gz.Standard.MediaType != transport.MediaTypeDockerManifest || gz.Manifests[0].Layers[0].Standard.MediaType != transport.MediaTypeDockerLayerGzip {
		t.Errorf("gzip export of a Docker image: %s / %s", gz.Standard.MediaType, gz.Manifests[0].Layers[0].Standard.MediaType)
	}
	zs := export(t, s, "oci:"+dir, "d-zstd", ExportOptions{Compression: blocks.Zstd})
	if zs.Standard.MediaType != ocispec.MediaTypeImageManifest || zs.Manifests[0].Layers[0].Standard.MediaType != ocispec.MediaTypeImageLayerZstd {
		t.Errorf("zstd export of a Docker image: %s / %s", zs.Standard.MediaType, zs.Manifests[0].Layers[0].Standard.MediaType)
	}
	for _, n := range []string{"d-gzip", "d-zstd"} {
		if _, err := hydrate(t, s, n, "oci:"+filepath.Join(dir, "out-"+n)); err != nil {
			t.Fatal(err)
		}
	}
}

// Tampering with a member makes hydrate fail and leaves no destination.
func TestHydrateTamperedMemberFailsClosed(t *testing.T) {
	dir := t.TempDir()
	b := newBuilder(t, "oci:"+filepath.Join(dir, "src"))
	b.commit(b.image("amd64", nil, richLayers()...))
	s := openStore(t)
	export(t, s, "oci:"+filepath.Join(dir, "src"), "app", ExportOptions{})
	img, err := Resolve(context.Background(), s, "app")
	if err != nil {
		t.Fatal(err)
	}
	member := img.Manifests[0].Layers[0].Members[0]
	p := s.BlobPath(member.Digest)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x55
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, data, 0o444); err != nil {
		t.Fatal(err)
	}
	for _, dest := range []string{"oci:" + filepath.Join(dir, "out"), "oci-archive:" + filepath.Join(dir, "out.tar")} {
		_, err := hydrate(t, s, "app", dest)
		if err == nil {
			t.Fatalf("hydrate to %s with a tampered member succeeded", dest)
		}
		if !errors.Is(err, store.ErrDigestMismatch) && !strings.Contains(err.Error(), member.Digest.String()) {
			t.Errorf("error does not name the member %s: %v", member.Digest, err)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("failed hydrates left %v", ents)
	}
}

func TestMaterialize(t *testing.T) {
	dir := t.TempDir()
	b := newBuilder(t, "oci:"+dir)
	b.commit(b.image("amd64", nil, richLayers()...))
	s := openStore(t)
	res := export(t, s, "oci:"+dir, "app", ExportOptions{})
	// Drop the standard layers that have blocks (as after a bundle apply).
	var dropped []ocispec.Descriptor
	for _, l := range res.Manifests[0].Layers {
		if l.Blocked.Digest != l.Standard.Digest {
			if err := os.Remove(s.BlobPath(l.Standard.Digest)); err != nil {
				t.Fatal(err)
			}
			dropped = append(dropped, l.Standard)
		}
	}
	if len(dropped) != 2 {
		t.Fatalf("dropped %d layers, want 2", len(dropped))
	}
	got, err := Materialize(context.Background(), s, "app")
	if err != nil || got.Digest != res.Standard.Digest {
		t.Fatalf("materialize: %v, %s", err, got.Digest)
	}
	for _, d := range dropped {
		if ok, _ := s.Exists(context.Background(), d.Digest); !ok {
			t.Errorf("standard layer %s not materialized", d.Digest)
		}
	}
}

func TestImportsFromLabel(t *testing.T) {
	f, err := importsFromLabel(`{"/app/a.jar":"sha256:x","/opt/jdk/":"sha256:y"}`)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"app/a.jar": true, "./app/a.jar": true, "app/b.jar": false, "opt/jdk/bin/java": true, "opt/jdk": false, "opt/jdkx/a": false} {
		if f(name) != want {
			t.Errorf("%s: got %v", name, !want)
		}
	}
	if _, err := importsFromLabel(`not json`); err == nil {
		t.Error("bad label accepted")
	}
}

// A multi-platform image goes to a registry and back: hydrate pushes
// children before the index and tags last; export from docker:// gives the
// same standard index.
func TestRegistryRoundTrip(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	dir := t.TempDir()
	b := newBuilder(t, "oci:"+dir)
	amd := b.image("amd64", nil, richLayers()...)
	arm := b.image("arm64", nil, richLayers()[1:]...)
	amd.Platform = &ocispec.Platform{OS: "linux", Architecture: "amd64"}
	arm.Platform = &ocispec.Platform{OS: "linux", Architecture: "arm64"}
	b.commit(b.json(ocispec.MediaTypeImageIndex, ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{amd, arm},
	}))
	s := openStore(t)
	res := export(t, s, "oci:"+dir, "app", ExportOptions{})
	ref := "docker://" + host + "/team/app:v1"
	got, err := hydrate(t, s, "app", ref)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != res.Standard.Digest || rootOf(t, ref).Digest != res.Standard.Digest {
		t.Fatalf("registry holds %s, want %s", rootOf(t, ref).Digest, res.Standard.Digest)
	}
	again := export(t, openStore(t), ref, "again", ExportOptions{})
	if again.Standard.Digest != res.Standard.Digest {
		t.Fatalf("export from the registry: %s, want %s", again.Standard.Digest, res.Standard.Digest)
	}
}

// A source layer that does not match its digest fails the export, and the
// name is not tagged.
func TestExportCorruptSourceFailsClosed(t *testing.T) {
	dir := t.TempDir()
	b := newBuilder(t, "oci:"+dir)
	root := b.image("amd64", nil, richLayers()...)
	b.commit(root)
	var m ocispec.Manifest
	data, _ := os.ReadFile(filepath.Join(dir, "blobs", "sha256", root.Digest.Encoded()))
	json.Unmarshal(data, &m)
	p := filepath.Join(dir, "blobs", "sha256", m.Layers[1].Digest.Encoded())
	layer, _ := os.ReadFile(p)
	layer[len(layer)-10] ^= 1 // in the gzip trailer: the tar still parses
	os.Chmod(p, 0o644)
	os.WriteFile(p, layer, 0o444)

	s := openStore(t)
	src, err := transport.ParseSource(context.Background(), "oci:"+dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Export(context.Background(), s, src, "app", ExportOptions{}); err == nil || !strings.Contains(err.Error(), m.Layers[1].Digest.String()) {
		t.Fatalf("export of a corrupt layer: %v; want an error naming %s", err, m.Layers[1].Digest)
	}
	if _, err := s.Resolve(context.Background(), "app"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("name tagged after a failed export: %v", err)
	}
}

// A failed hydrate to a registry leaves no tag.
func TestHydrateToRegistryFailsClosed(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	dir := t.TempDir()
	b := newBuilder(t, "oci:"+dir)
	b.commit(b.image("amd64", nil, richLayers()...))
	s := openStore(t)
	export(t, s, "oci:"+dir, "app", ExportOptions{})
	img, _ := Resolve(context.Background(), s, "app")
	p := s.BlobPath(img.Manifests[0].Layers[1].Members[0].Digest)
	os.Chmod(p, 0o644)
	data, _ := os.ReadFile(p)
	data[0] ^= 0xff
	os.WriteFile(p, data, 0o444)
	ref := "docker://" + host + "/team/app:v1"
	if _, err := hydrate(t, s, "app", ref); err == nil {
		t.Fatal("hydrate with a tampered member succeeded")
	}
	src, _ := transport.ParseSource(context.Background(), ref)
	if d, err := src.Resolve(context.Background()); err == nil {
		t.Fatalf("tag %s points to %s after a failed hydrate", ref, d.Digest)
	}
}

// A user's own file whose name starts with ".import." is not a stub: inspect
// counts only what hydrate would replace.
func TestInspectCountsOnlyStubs(t *testing.T) {
	dir := t.TempDir()
	b := newBuilder(t, "oci:"+filepath.Join(dir, "src")+":app:1")
	b.commit(b.image("amd64", nil, []tfile{
		{name: "app/", typ: tar.TypeDir, mode: 0o755},
		{name: "app/big.jar", typ: tar.TypeReg, randSize: 300 << 10, seed: 1},
		{name: "app/.import.notes", typ: tar.TypeReg, data: []byte("not a stub\n")},
	}))
	s := openStore(t)
	res := export(t, s, "oci:"+filepath.Join(dir, "src"), "app:1", ExportOptions{})
	if res.Blocks != 1 {
		t.Fatalf("export made %d blocks, want 1 (app/big.jar)", res.Blocks)
	}
	info, err := Inspect(context.Background(), s, "app:1")
	if err != nil {
		t.Fatal(err)
	}
	if info.Stubs != 1 || info.Manifests[0].Layers[0].Stubs != 1 {
		t.Fatalf("inspect counts %d stubs (layer: %d), want 1", info.Stubs, info.Manifests[0].Layers[0].Stubs)
	}
}
