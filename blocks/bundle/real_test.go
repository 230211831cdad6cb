package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// jar returns incompressible bytes standing for a jar: seed names the
// content, so the same seed is the same file (the same block).
func jar(seed string, size int) []byte {
	h := digest.FromString(seed).Encoded()
	var s [32]byte
	copy(s[:], h)
	r := rand.New(rand.NewChaCha8(s))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writeLayout writes a single-platform OCI image layout to dir whose layers
// hold files (path -> content), as a normal builder would: tar+gzip.
func writeLayout(t *testing.T, dir string, layers []map[string][]byte) {
	t.Helper()
	blob := func(mt string, data []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(data), Size: int64(len(data))}
		p := filepath.Join(dir, "blobs", "sha256", d.Digest.Encoded())
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	var diffIDs []digest.Digest
	var descs []ocispec.Descriptor
	for _, files := range layers {
		var names []string
		dirs := map[string]bool{}
		for n := range files {
			names = append(names, n)
			for d := path.Dir(n); d != "." && !dirs[d]; d = path.Dir(d) {
				dirs[d] = true
			}
		}
		for d := range dirs {
			names = append(names, d+"/")
		}
		sort.Strings(names)
		var tb bytes.Buffer
		tw := tar.NewWriter(&tb)
		mtime := time.Unix(1700000000, 0)
		for _, n := range names {
			if data, ok := files[n]; ok {
				tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(data)), ModTime: mtime})
				tw.Write(data)
			} else {
				tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: n, Mode: 0o755, ModTime: mtime})
			}
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		diffIDs = append(diffIDs, digest.FromBytes(tb.Bytes()))
		var zb bytes.Buffer
		zw := gzip.NewWriter(&zb)
		zw.Write(tb.Bytes())
		zw.Close()
		descs = append(descs, blob(ocispec.MediaTypeImageLayerGzip, zb.Bytes()))
	}
	// A history entry per layer, as builders write, makes the config the
	// size of a real one (over a KiB), big enough to travel as a patch.
	var history []ocispec.History
	for i := range diffIDs {
		history = append(history, ocispec.History{
			CreatedBy: fmt.Sprintf("COPY layer-%d/ / # buildkit: copies the files of layer %d into the image root, keeping owners and modes", i, i),
			Comment:   "buildkit.dockerfile.v0",
		})
	}
	cfg, _ := json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
		Config:   ocispec.ImageConfig{Cmd: []string{"/bin/true"}, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64", "LANG=C.UTF-8"}},
		History:  history,
	})
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: blob(ocispec.MediaTypeImageConfig, cfg), Layers: descs}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	md := blob(ocispec.MediaTypeImageManifest, mb)
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{md}}
	idx.SchemaVersion = 2
	ib, _ := json.Marshal(idx)
	os.WriteFile(filepath.Join(dir, "index.json"), ib, 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
}

// export builds an image from layers and exports it into s as name.
func export(t *testing.T, s *store.Store, name string, layers []map[string][]byte) *image.ExportResult {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	writeLayout(t, dir, layers)
	src, err := transport.ParseSource(ctx, "oci:"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	res, err := image.Export(ctx, s, src, name, image.ExportOptions{MinBlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func serviceLayers(version string, libDir string, jars map[string]string) []map[string][]byte {
	deps := map[string][]byte{}
	for n, seed := range jars {
		deps[libDir+"/"+n] = jar(seed, 20000)
	}
	return []map[string][]byte{
		{"etc/os-release": []byte("ID=test\n"), "etc/hostname": []byte("box\n")},
		deps,
		{"app/app.jar": jar("app "+version, 30000), "app/VERSION": []byte(version)},
	}
}

func TestApplyHydratesTheSourceDigest(t *testing.T) {
	ctx := context.Background()
	src := openStore(t)
	v1 := export(t, src, "app:v1", serviceLayers("v1", "app/libs", map[string]string{"a.jar": "a1", "b.jar": "b1", "c.jar": "c1"}))
	v2 := export(t, src, "app:v2", serviceLayers("v2", "app/libs", map[string]string{"a.jar": "a1", "b.jar": "b2", "c.jar": "c1"}))
	dir := t.TempDir()
	full, diff := filepath.Join(dir, "v1.bundle"), filepath.Join(dir, "v2.bundle")
	if _, err := Create(ctx, src, []string{"app:v1"}, full, CreateOptions{Full: true}); err != nil {
		t.Fatal(err)
	}
	h, err := Create(ctx, src, []string{"app:v2"}, diff, CreateOptions{From: []string{"app:v1"}})
	if err != nil {
		t.Fatal(err)
	}
	// v2 changed b.jar and app.jar: two new block members; a.jar and c.jar
	// are required, not shipped.
	if got := h.Adds.Kinds[KindBlock].Blobs; got != 2 {
		t.Errorf("the v1->v2 bundle ships %d block members, want 2", got)
	}

	site := openStore(t)
	// v2 first: the site lacks v1, so apply must refuse and list it all.
	if err := applyMustFail(t, site, diff); err == nil {
		t.Fatal("unreachable")
	}
	for _, step := range []struct {
		bundle string
		want   *image.ExportResult
	}{{full, v1}, {diff, v2}} {
		out := filepath.Join(dir, step.want.Name+".tar")
		res, err := Apply(ctx, site, step.bundle, ApplyOptions{Outputs: []string{"oci-archive:" + out}})
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Images[0].Standard.Digest; got != step.want.Standard.Digest {
			t.Fatalf("%s: hydrated %s, built %s", step.want.Name, got, step.want.Standard.Digest)
		}
		// The written archive is the source image.
		as, err := transport.ParseSource(ctx, "oci-archive:"+out)
		if err != nil {
			t.Fatal(err)
		}
		root, err := as.Resolve(ctx)
		as.Close()
		if err != nil || root.Digest != step.want.Standard.Digest {
			t.Fatalf("%s: archive holds %s (%v), want %s", out, root.Digest, err, step.want.Standard.Digest)
		}
		// The store now serves the standard image itself.
		info, err := image.Inspect(ctx, site, step.want.Name)
		if err != nil || info.Standard.Digest != step.want.Standard.Digest {
			t.Fatalf("inspect %s: %v %v", step.want.Name, info, err)
		}
	}

	// Again: nothing new to write, same result.
	before := listing(t, site.Root())
	res, err := Apply(ctx, site, diff, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ingested.Blobs != 0 || res.Present.Blobs != h.Adds.Blobs {
		t.Errorf("second apply ingested %+v, present %+v", res.Ingested, res.Present)
	}
	if after := listing(t, site.Root()); after != before {
		t.Errorf("a second apply changed the store")
	}
	if err := site.Verify(ctx, func(p store.Problem) { t.Errorf("verify: %+v", p) }); err != nil {
		t.Fatal(err)
	}

	// A bundle of what the site already has carries no blob at all.
	same := filepath.Join(dir, "same.bundle")
	hs, err := Create(ctx, src, []string{"app:v2"}, same, CreateOptions{From: []string{"app:v2"}})
	if err != nil {
		t.Fatal(err)
	}
	if hs.Adds.Blobs != 0 {
		t.Errorf("a bundle of the base itself adds %+v", hs.Adds)
	}
	if _, err := Apply(ctx, site, same, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestBundleSharedBlocksAtOtherPathsCostOnce(t *testing.T) {
	ctx := context.Background()
	src := openStore(t)
	// Two teams: the same guava and jackson jars, in other folders, one
	// netty version each.
	export(t, src, "team-a:1", serviceLayers("a", "app/libs", map[string]string{"guava.jar": "guava", "jackson.jar": "jackson", "netty.jar": "netty 4.1"}))
	export(t, src, "team-b:1", serviceLayers("b", "srv/lib/ext", map[string]string{"guava-31.jar": "guava", "jackson-core.jar": "jackson", "netty.jar": "netty 4.2"}))
	out := filepath.Join(t.TempDir(), "both.bundle")
	h, err := Create(ctx, src, []string{"team-a:1", "team-b:1"}, out, CreateOptions{Full: true})
	if err != nil {
		t.Fatal(err)
	}
	// Distinct block contents: guava, jackson, netty 4.1, netty 4.2, and the
	// two app.jars: six members for eight block files.
	if got := h.Adds.Kinds[KindBlock].Blobs; got != 6 {
		t.Errorf("%d block members shipped, want 6", got)
	}
	one := filepath.Join(t.TempDir(), "a.bundle")
	ha, err := Create(ctx, src, []string{"team-a:1"}, one, CreateOptions{Full: true})
	if err != nil {
		t.Fatal(err)
	}
	// Team b's bundle beside team a's costs only its own blocks: netty 4.2
	// and its app.jar (about 50 KB), not guava and jackson again.
	extra := h.Adds.Kinds[KindBlock].Bytes - ha.Adds.Kinds[KindBlock].Bytes
	if extra > 2*30000+1000 {
		t.Errorf("adding team b costs %d bytes of blocks", extra)
	}
}

func TestApplyWithoutMaterialize(t *testing.T) {
	ctx := context.Background()
	src := openStore(t)
	v1 := export(t, src, "app:v1", serviceLayers("v1", "app/libs", map[string]string{"a.jar": "a1", "b.jar": "b1"}))
	dir := t.TempDir()
	full := filepath.Join(dir, "v1.bundle")
	if _, err := Create(ctx, src, []string{"app:v1"}, full, CreateOptions{Full: true}); err != nil {
		t.Fatal(err)
	}
	cs, err := Closures(ctx, src, []string{"app:v1"})
	if err != nil {
		t.Fatal(err)
	}
	site := openStore(t)
	out := filepath.Join(dir, "out.tar")
	res, err := Apply(ctx, site, full, ApplyOptions{NoMaterialize: true, Outputs: []string{"oci-archive:" + out}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Images[0].Standard.Digest != v1.Standard.Digest {
		t.Fatalf("hydrated %s, built %s", res.Images[0].Standard.Digest, v1.Standard.Digest)
	}
	// The store keeps only the blocked form: no standard layer with blocks.
	for _, l := range cs[0].Hydrated {
		if ok, _ := site.Exists(ctx, l.Digest); ok {
			t.Errorf("standard layer %s was materialized", l.Digest)
		}
	}
	if _, err := os.Stat(out); err != nil {
		t.Errorf("output: %v", err)
	}
}
