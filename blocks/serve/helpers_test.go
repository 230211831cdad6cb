package serve

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"log/slog"
	"math/rand"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// tfile is one regular file of a synthetic layer: data, or size bytes from
// a PRNG seeded by seed.
type tfile struct {
	name string
	data []byte
	size int64
	seed int64
}

func makeLayer(t testing.TB, files []tfile) (gz []byte, diffID digest.Digest) {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	diff := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(zw, diff))
	for _, f := range files {
		var src io.Reader = bytes.NewReader(f.data)
		size := int64(len(f.data))
		if f.size > 0 {
			size, src = f.size, io.LimitReader(rand.New(rand.NewSource(f.seed)), f.size)
		}
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, src); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	return buf.Bytes(), digest.NewDigest(digest.SHA256, diff)
}

// testImage is an image exported into a store, with what a client must
// get when it pulls it.
type testImage struct {
	name     string
	index    ocispec.Descriptor // tagged
	standard ocispec.Descriptor // standard manifest
	manifest ocispec.Manifest
	blocked  []digest.Digest // standard layers with blocks (dropped by dropStandard)
}

// exportImage builds a two-layer image (one layer with blocks, one
// without) whose file contents depend on seed, exports it into s under
// name, and returns it.
func exportImage(t testing.TB, s *store.Store, name string, seed int64) testImage {
	t.Helper()
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "src")
	sink, err := transport.ParseSink(ctx, "oci:"+dir+":src")
	if err != nil {
		t.Fatal(err)
	}
	push := func(mt string, data []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(data), Size: int64(len(data))}
		if err := sink.Push(ctx, d, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	l1, d1 := makeLayer(t, []tfile{
		{name: "app/a.jar", size: 300 << 10, seed: seed},
		{name: "app/small.txt", data: []byte("hello\n")},
		{name: "app/b.jar", size: 200 << 10, seed: seed + 1},
		{name: "app/c.bin", size: 2 << 20, seed: seed + 2},
	})
	l2, d2 := makeLayer(t, []tfile{{name: "etc/conf", data: []byte("k=v\n")}})
	ld1 := push(ocispec.MediaTypeImageLayerGzip, l1)
	ld2 := push(ocispec.MediaTypeImageLayerGzip, l2)
	cfg, _ := json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{d1, d2}},
	})
	cd := push(ocispec.MediaTypeImageConfig, cfg)
	mb, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: []ocispec.Descriptor{ld1, ld2}})
	md := push(ocispec.MediaTypeImageManifest, mb)
	if err := sink.Commit(ctx, md); err != nil {
		t.Fatal(err)
	}
	src, err := transport.ParseSource(ctx, "oci:"+dir+":src")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	res, err := image.Export(ctx, s, src, name, image.ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	img, err := image.Resolve(ctx, s, name)
	if err != nil {
		t.Fatal(err)
	}
	ti := testImage{name: name, index: res.Index, standard: res.Standard, manifest: img.Manifests[0].Manifest}
	for _, l := range img.Manifests[0].Layers {
		if l.HasBlocks() {
			ti.blocked = append(ti.blocked, l.Standard.Digest)
		}
	}
	if len(ti.blocked) == 0 {
		t.Fatal("test image has no layer with blocks")
	}
	return ti
}

// dropStandard removes the standard layers that have a blocked form from
// the store, as a bundle applied with --materialize=false leaves it.
func dropStandard(t testing.TB, s *store.Store, img testImage) {
	t.Helper()
	for _, d := range img.blocked {
		if err := os.Remove(s.BlobPath(d)); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
}

// logBuffer collects a server's log for assertions.
type logBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func newLogBuffer() *logBuffer { l := &logBuffer{mu: make(chan struct{}, 1)}; return l }
func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu <- struct{}{}
	defer func() { <-l.mu }()
	return l.buf.Write(p)
}
func (l *logBuffer) String() string {
	l.mu <- struct{}{}
	defer func() { <-l.mu }()
	return l.buf.String()
}
func (l *logBuffer) count(s string) int { return strings.Count(l.String(), s) }

// startServer serves s over HTTP for the test.
func startServer(t testing.TB, s *store.Store, opts Options) (*Server, string, *logBuffer) {
	t.Helper()
	logs := newLogBuffer()
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(logs, nil))
	}
	ctx, cancel := context.WithCancel(context.Background())
	sv := New(ctx, s, opts)
	hs := httptest.NewServer(sv)
	t.Cleanup(func() {
		hs.Close()
		cancel()
		sv.Wait()
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	return sv, strings.TrimPrefix(hs.URL, "http://"), logs
}

func openStore(t testing.TB) *store.Store {
	t.Helper()
	s, err := store.Create(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func imageResolve(ctx context.Context, s *store.Store, name string) (*image.Image, error) {
	return image.Resolve(ctx, s, name)
}

// waitFor polls cond for up to 10 s.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 10s")
}
