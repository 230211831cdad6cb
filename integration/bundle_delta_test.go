package integration

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kgzip "github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/bundle"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/integration/harness"
)

// modulesLike returns n bytes shaped like a JDK's lib/modules: runs of
// text-like bytes (compressible) between runs of random bytes.
func modulesLike(seed int64, n int) []byte {
	r := rand.New(rand.NewSource(seed))
	words := []string{"java/lang/", "Object", "String", "invoke", "Module", "<init>", "()V", "Ljava/util/", "Map;", "Code", "LineNumberTable"}
	b := make([]byte, 0, n)
	for len(b) < n {
		if r.Intn(4) == 0 {
			chunk := make([]byte, 1+r.Intn(4096))
			r.Read(chunk)
			b = append(b, chunk...)
			continue
		}
		for k := r.Intn(200); k > 0; k-- {
			b = append(b, words[r.Intn(len(words))]...)
		}
	}
	return b[:n]
}

// rebuiltFile changes b as a JDK update does: a run inserted near the
// start (everything after moves), a changed region, and one 8-byte word
// in 64 of the rest shifted (offsets and addresses that moved).
func rebuiltFile(b []byte) []byte {
	out := append([]byte{}, b[:len(b)/7]...)
	out = append(out, modulesLike(7, 300<<10)...)
	rest := append([]byte{}, b[len(b)/7:]...)
	copy(rest[len(rest)/2:], modulesLike(8, 1<<20))
	for i := 0; i+8 <= len(rest); i += 64 {
		binary.LittleEndian.PutUint64(rest[i:], binary.LittleEndian.Uint64(rest[i:])+0x4000)
	}
	return append(out, rest...)
}

// filesTar is the uncompressed layer tar of files, in the order of names.
func filesTar(t *testing.T, files map[string][]byte, names []string) []byte {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(files[n]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return tb.Bytes()
}

// writeFilesLayout writes an OCI layout of one gzip layer holding files.
func writeFilesLayout(t *testing.T, dir string, files map[string][]byte, names []string) {
	t.Helper()
	tb := bytes.NewBuffer(filesTar(t, files, names))
	var zb bytes.Buffer
	zw, _ := kgzip.NewWriterLevel(&zb, kgzip.BestSpeed)
	zw.Write(tb.Bytes())
	zw.Close()
	blobs := filepath.Join(dir, "blobs", "sha256")
	put := func(mt string, data []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(data), Size: int64(len(data))}
		putFile(t, filepath.Join(blobs, d.Digest.Encoded()), data)
		return d
	}
	putJSON := func(mt string, v any) ocispec.Descriptor {
		data, _ := json.Marshal(v)
		return put(mt, data)
	}
	layer := put(ocispec.MediaTypeImageLayerGzip, zb.Bytes())
	cfg := putJSON(ocispec.MediaTypeImageConfig, ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(tb.Bytes())}},
	})
	man := putJSON(ocispec.MediaTypeImageManifest, ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: []ocispec.Descriptor{layer},
	})
	idx, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{man}})
	putFile(t, filepath.Join(dir, "index.json"), idx)
	putFile(t, filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`))
}

// TestBundleDeltaLargeFileMemory: a 130 MB file (the size of a JDK's
// lib/modules) changed a little travels as a delta; `bundle create` stays
// under 1 GiB peak RSS and `bundle apply` under 512 MiB (the bounds of
// docs/BUNDLES.md, "Block deltas"), measured on the CLI processes, and
// apply reproduces the exact standard image.
func TestBundleDeltaLargeFileMemory(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	const size = 130 << 20
	v1 := modulesLike(1, size)
	v2 := rebuiltFile(v1)
	names := []string{"usr/lib/jvm/lib/modules", "usr/lib/jvm/release"}
	work := t.TempDir()
	for _, v := range []struct {
		name string
		data []byte
	}{{"v1", v1}, {"v2", v2}} {
		writeFilesLayout(t, filepath.Join(work, v.name), map[string][]byte{names[0]: v.data, names[1]: []byte("JAVA_VERSION=" + v.name + "\n")}, names)
	}
	v1, v2 = nil, nil
	src, site := filepath.Join(work, "src"), filepath.Join(work, "site")
	var std digest.Digest
	for _, v := range []string{"v1", "v2"} {
		var res image.ExportResult
		if err := json.Unmarshal([]byte(bfMust(t, bin, "export", "--store", src, "--json", "--progress", "none", "oci:"+filepath.Join(work, v), "jdk:"+v).stdout), &res); err != nil {
			t.Fatal(err)
		}
		std = res.Standard.Digest
	}
	full := filepath.Join(work, "v1.bundle")
	bfMust(t, bin, "bundle", "create", "--store", src, "--progress", "none", "--full", "jdk:v1", "-o", full)
	applyJSON(t, bin, site, full, "--materialize=false")

	up := filepath.Join(work, "v2.bundle")
	start := time.Now()
	r := bfMeasured(t, bin, "bundle", "create", "--store", src, "--progress", "none", "--from", "jdk:v1", "jdk:v2", "-o", up)
	fi, err := os.Stat(up)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bundle create: %s, peak RSS %s, bundle %d bytes", time.Since(start).Round(time.Millisecond), fmtKiB(r.maxRSSKiB), fi.Size())
	if r.maxRSSKiB > 1<<20 {
		t.Errorf("bundle create peak RSS %s, limit 1 GiB", fmtKiB(r.maxRSSKiB))
	}
	h := bundleHeader(t, bin, up)
	deltas := 0
	for _, b := range h.Blobs {
		if b.Patch != nil && b.Patch.Encoding == bundle.PatchDeltaMember {
			deltas++
			if b.Patch.Path != names[0] || b.Patch.BasePath != names[0] {
				t.Errorf("delta of %s against %s, want %s against itself", b.Patch.Path, b.Patch.BasePath, names[0])
			}
		}
	}
	if deltas != 1 || fi.Size() > 8<<20 {
		t.Errorf("bundle of %d bytes with %d deltas: the changed 130 MB file should travel as one small delta", fi.Size(), deltas)
	}
	inspect := bfMust(t, bin, "bundle", "inspect", up).stdout
	if !strings.Contains(inspect, "delta "+names[0]) || !strings.Contains(inspect, "same path") {
		t.Errorf("bundle inspect does not say which base the delta uses:\n%s", inspect)
	}

	start = time.Now()
	r = bfMeasured(t, bin, "bundle", "apply", "--store", site, "--progress", "none", "--json", up)
	t.Logf("bundle apply: %s, peak RSS %s", time.Since(start).Round(time.Millisecond), fmtKiB(r.maxRSSKiB))
	if r.maxRSSKiB > 512<<10 {
		t.Errorf("bundle apply peak RSS %s, limit 512 MiB", fmtKiB(r.maxRSSKiB))
	}
	var res bundle.ApplyResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatal(err)
	}
	if got := res.Images[0].Standard.Digest; got != std {
		t.Errorf("applied %s, exported %s", got, std)
	}
}
