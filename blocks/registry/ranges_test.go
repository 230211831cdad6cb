package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

func TestPlanSpansMergesSmallestGapsWithinBudget(t *testing.T) {
	// Three runs of 1 MB: gaps of 535 bytes (a header member) and 50 KB.
	runs := [][]span{{{0, 1 << 20}, {1<<20 + 535, 2 << 20}, {2<<20 + 50<<10, 3 << 20}}}
	wanted := []int64{3<<20 - 535 - 50<<10}
	got := planSpans(runs, wanted, 0)
	// Own budget: 1% of ~3 MB + 16 KiB, about 47 KB: the header gap only.
	if want := []span{{0, 2 << 20}, {2<<20 + 50<<10, 3 << 20}}; !slices.Equal(got[0], want) {
		t.Errorf("own budget: %v, want %v", got[0], want)
	}
	// With a pool, the 50 KB gap (within rangePoolMax) is merged too.
	got = planSpans(runs, wanted, 64<<10)
	if want := []span{{0, 3 << 20}}; !slices.Equal(got[0], want) {
		t.Errorf("with pool: %v, want %v", got[0], want)
	}
	// A gap above rangePoolMax is never taken from the pool.
	big := [][]span{{{0, 1 << 20}, {1<<20 + 100<<10, 2 << 20}}}
	if got := planSpans(big, []int64{2<<20 - 100<<10}, 1<<30); len(got[0]) != 2 {
		t.Errorf("large gap merged from the pool: %v", got[0])
	}
	// The pool goes to the smallest gaps of all layers first.
	two := [][]span{
		{{0, 100}, {100 + 60<<10, 200 << 10}},
		{{0, 100}, {100 + 30<<10, 200 << 10}},
	}
	got = planSpans(two, []int64{0, 0}, 40<<10)
	if len(got[0]) != 2 || len(got[1]) != 1 {
		t.Errorf("pool of 40 KiB: %v, want only the 30 KiB gap merged (and within own 16 KiB: none)", got)
	}
}

func TestCheckContentRange(t *testing.T) {
	sp := span{100, 200}
	for _, c := range []struct {
		v  string
		ok bool
	}{
		{"bytes 100-199/1000", true},
		{"bytes 100-199/*", true},
		{"bytes 100-198/1000", false}, // shorter
		{"bytes 101-199/1000", false},
		{"bytes 100-199/999", false}, // another blob size
		{"bytes 100-199", false},
		{"bytes */1000", false},
		{"100-199/1000", false},
		{"bytes 0x64-199/1000", false},
		{"bytes +100-199/1000", false},
		{"bytes 100-199/+1000", false},
		{"", false},
	} {
		if err := checkContentRange(c.v, sp, 1000); (err == nil) != c.ok {
			t.Errorf("%q: err %v, want ok %v", c.v, err, c.ok)
		}
	}
}

// writeSpreadLayout writes an OCI layout holding one single-layer image
// whose layer mixes incompressible 80 KB files (blocks) with small files
// between them (verbatim members), so that the members a pull lacks lie in
// several runs of the standard layer. changed picks which big file differs
// (-1: none).
func writeSpreadLayout(t *testing.T, dir string, changed int) {
	t.Helper()
	writeLayout(t, dir, changed, false)
}

// writeLayout writes the layer of writeSpreadLayout; its small
// files are many and incompressible (osLike), as an OS layer's binaries: its
// blocked layer is then most of it (wholeLayer).
func writeLayout(t *testing.T, dir string, changed int, osLike bool) {
	t.Helper()
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
	add := func(name string, data []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	for i := range 8 {
		for j := range 3 + i%3 {
			add(fmt.Sprintf("etc/small%d-%d", i, j), bytes.Repeat([]byte{byte('a' + j)}, 300+i*j))
		}
		if osLike {
			for j := range 40 {
				data := make([]byte, 4<<10+j)
				rand.New(rand.NewSource(int64(1000*i + j))).Read(data)
				add(fmt.Sprintf("usr/bin/tool%d-%d", i, j), data)
			}
		}
		data := make([]byte, 80<<10)
		rand.New(rand.NewSource(int64(i))).Read(data)
		if i == changed {
			data[0] ^= 1
		}
		add(fmt.Sprintf("usr/lib/big%d.so", i), data)
		if i%2 == 1 {
			add(fmt.Sprintf("usr/lib/next%d.so", i), bytes.Repeat(data[:1<<10], 70)) // adjacent block
		}
	}
	add("etc/last", []byte("end\n"))
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tb.Bytes())
	zw.Close()
	l := put(ocispec.MediaTypeImageLayerGzip, gz.Bytes())
	cfg, _ := json.Marshal(ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}, RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(tb.Bytes())}}})
	config := put(ocispec.MediaTypeImageConfig, cfg)
	mb, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: config, Layers: []ocispec.Descriptor{l}})
	m := put(ocispec.MediaTypeImageManifest, mb)
	m.Annotations = map[string]string{ocispec.AnnotationRefName: "app"}
	ib, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{m}})
	os.WriteFile(filepath.Join(dir, "index.json"), ib, 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
}

// rangeRig is a go-containerregistry registry behind a handler that can
// spoil the answers to Range requests, holding app:1 and app:2 (one block
// changed) pushed from a store.
type rangeRig struct {
	srv   *httptest.Server
	host  string
	std   map[string]ocispec.Descriptor // tag -> standard manifest
	spoil func(w http.ResponseWriter, r *http.Request, h http.Handler) bool
	// edit, if set, may answer any request instead of the registry.
	edit     func(w http.ResponseWriter, r *http.Request, h http.Handler) bool
	rangeGot int
	src      *store.Store // the store the images were pushed from
}

func newRangeRig(t *testing.T) *rangeRig {
	t.Helper()
	return newRig(t, false)
}

func newRig(t *testing.T, osLike bool) *rangeRig {
	t.Helper()
	ctx := context.Background()
	rig := &rangeRig{std: map[string]ocispec.Descriptor{}}
	reg := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	rig.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rig.edit != nil && rig.edit(w, r, reg) {
			return
		}
		if r.Header.Get("Range") != "" {
			rig.rangeGot++
			if rig.spoil != nil && rig.spoil(w, r, reg) {
				return
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(rig.srv.Close)
	rig.host = strings.TrimPrefix(rig.srv.URL, "http://")
	src, err := store.Create(filepath.Join(t.TempDir(), "src"))
	if err != nil {
		t.Fatal(err)
	}
	rig.src = src
	for i, tag := range []string{"1", "2"} {
		dir := filepath.Join(t.TempDir(), "layout"+tag)
		writeLayout(t, dir, 3*i-1, osLike)
		in, err := transport.ParseSource(ctx, "oci:"+dir)
		if err != nil {
			t.Fatal(err)
		}
		er, err := image.Export(ctx, src, in, "app:"+tag, image.ExportOptions{})
		in.Close()
		if err != nil {
			t.Fatal(err)
		}
		if er.Blocks < 8 {
			t.Fatalf("app:%s exported with %d blocks, want at least 8", tag, er.Blocks)
		}
		ref, err := name.ParseReference(rig.host + "/app:" + tag)
		if err != nil {
			t.Fatal(err)
		}
		pr, err := Push(ctx, src, "app:"+tag, ref, PushOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rig.std[tag] = pr.Standard
	}
	return rig
}

// pull pulls app:tag into s through the Range path.
func (rig *rangeRig) pull(t *testing.T, s *store.Store, tag string, noMat bool) (*PullResult, error) {
	t.Helper()
	ctx := context.Background()
	eps, err := transport.Registry{}.PullEndpoints(ctx, rig.host+"/app:"+tag)
	if err != nil {
		t.Fatal(err)
	}
	return Pull(ctx, s, eps[0].Ref, "app:"+tag, PullOptions{Remote: eps[0].Options, HTTP: eps[0].HTTP, NoMaterialize: noMat})
}

func blobList(t *testing.T, s *store.Store) []string {
	t.Helper()
	var out []string
	if err := s.Walk(context.Background(), func(d digest.Digest, n int64) error {
		out = append(out, fmt.Sprintf("%s %d", d, n))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRangePull(t *testing.T) {
	rig := newRangeRig(t)
	ctx := context.Background()
	t.Run("first pull, then an upgrade", func(t *testing.T) {
		s, err := store.Create(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		res, err := rig.pull(t, s, "1", false)
		if err != nil {
			t.Fatal(err)
		}
		if res.Standard.Digest != rig.std["1"].Digest || res.Ranges == 0 || res.WholeLayers != 0 {
			t.Fatalf("pull: standard %s (want %s), %d ranges, %d whole", res.Standard.Digest, rig.std["1"].Digest, res.Ranges, res.WholeLayers)
		}
		if res.Downloaded.Bytes > res.StandardSize*102/100 {
			t.Errorf("downloaded %d bytes, standard image %d: over 1.02x", res.Downloaded.Bytes, res.StandardSize)
		}
		if err := s.Verify(ctx, nil); err != nil {
			t.Fatal(err)
		}
		// The upgrade reads the changed block's range only; the standard
		// layer is written from the store's members and that range.
		res, err = rig.pull(t, s, "2", false)
		if err != nil {
			t.Fatal(err)
		}
		if res.Standard.Digest != rig.std["2"].Digest || res.Ranges != 1 {
			t.Fatalf("upgrade: standard %s (want %s), %d ranges (want 1)", res.Standard.Digest, rig.std["2"].Digest, res.Ranges)
		}
		if res.Downloaded.Bytes > 200<<10 {
			t.Errorf("upgrade downloaded %d bytes for one 80 KB block", res.Downloaded.Bytes)
		}
		if err := s.Verify(ctx, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("blocked form only", func(t *testing.T) {
		s, err := store.Create(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		res, err := rig.pull(t, s, "1", true)
		if err != nil {
			t.Fatal(err)
		}
		if res.Ranges == 0 {
			t.Fatal("no range read")
		}
		m, err := image.Resolve(ctx, s, "app:1")
		if err != nil {
			t.Fatal(err)
		}
		l := m.Manifests[0].Layers[0]
		if ok, _ := s.Exists(ctx, l.Standard.Digest); ok {
			t.Error("--materialize=false wrote the standard layer")
		}
		for _, d := range l.Members {
			if ok, _ := s.Exists(ctx, d.Digest); !ok {
				t.Errorf("member %s not stored", d.Digest)
			}
		}
		if _, err := image.Materialize(ctx, s, "app:1"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("layouts over the memory bound", func(t *testing.T) {
		defer func(n int64) { maxLayoutsHeld = n }(maxLayoutsHeld)
		maxLayoutsHeld = 0
		s, err := store.Create(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		res, err := rig.pull(t, s, "1", false)
		if err != nil {
			t.Fatal(err)
		}
		// Members one by one, the standard layer hydrated after.
		if res.Standard.Digest != rig.std["1"].Digest || res.Ranges != 0 {
			t.Fatalf("standard %s, %d ranges; want %s without ranges", res.Standard.Digest, res.Ranges, rig.std["1"].Digest)
		}
		if err := s.Verify(ctx, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("registry ignores Range", func(t *testing.T) {
		rig.spoil = func(w http.ResponseWriter, r *http.Request, h http.Handler) bool {
			r.Header.Del("Range")
			return false
		}
		defer func() { rig.spoil = nil }()
		s, err := store.Create(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		res, err := rig.pull(t, s, "1", false)
		if err != nil {
			t.Fatal(err)
		}
		if res.Standard.Digest != rig.std["1"].Digest || res.Ranges != 1 || res.WholeLayers != 1 {
			t.Fatalf("standard %s, %d ranges, %d whole; want one request answered whole", res.Standard.Digest, res.Ranges, res.WholeLayers)
		}
		// Counted honestly: the whole layer was read.
		if res.Downloaded.Bytes < res.StandardSize {
			t.Errorf("downloaded %d bytes, less than the standard image %d read whole", res.Downloaded.Bytes, res.StandardSize)
		}
		if err := s.Verify(ctx, nil); err != nil {
			t.Fatal(err)
		}
	})
}

// TestWholeLayerPull: a first pull reads a layer of many small files with
// blocks among them whole, in one request and without its blocked layer,
// which it derives (layer.Dehydrate); its members become extents of the
// standard layer; an upgrade then reads one range. Where the derived
// blocked layer is not the registry's, that one is read instead.
func TestWholeLayerPull(t *testing.T) {
	rig := newRig(t, true)
	ctx := context.Background()
	blockedOf := func(t *testing.T, s *store.Store, tag string) (std, blocked ocispec.Descriptor, members []ocispec.Descriptor) {
		t.Helper()
		m, err := image.Resolve(ctx, s, "app:"+tag)
		if err != nil {
			t.Fatal(err)
		}
		l := m.Manifests[0].Layers[0]
		if l.Blocked.Size < wholeMin || l.Blocked.Size*wholeShare < l.Standard.Size {
			t.Fatalf("blocked layer of %d bytes for a standard layer of %d: not a layer read whole", l.Blocked.Size, l.Standard.Size)
		}
		return l.Standard, l.Blocked, l.Members
	}
	t.Run("derived", func(t *testing.T) {
		s, err := store.Create(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		rig.rangeGot = 0
		res, err := rig.pull(t, s, "1", false)
		if err != nil {
			t.Fatal(err)
		}
		std, blocked, members := blockedOf(t, s, "1")
		if res.Standard.Digest != rig.std["1"].Digest || rig.rangeGot != 0 || res.Dehydrated != 1 || res.Derived != 1 {
			t.Fatalf("standard %s (want %s), %d Range requests (want none), %d layers read whole, %d derived (want 1, 1)", res.Standard.Digest, rig.std["1"].Digest, rig.rangeGot, res.Dehydrated, res.Derived)
		}
		if res.Downloaded.Bytes > res.StandardSize+blocked.Size/2 {
			t.Errorf("downloaded %d bytes: the standard image (%d) and its blocked layer (%d)", res.Downloaded.Bytes, res.StandardSize, blocked.Size)
		}
		for _, d := range append(members, std, blocked) {
			if ok, err := s.Exists(ctx, d.Digest); !ok || err != nil {
				t.Fatalf("%s not in the store: %v", d.Digest, err)
			}
		}
		for _, d := range members {
			if _, err := os.Stat(s.BlobPath(d.Digest)); err == nil {
				t.Fatalf("member %s written twice: a file of its own beside the standard layer", d.Digest)
			}
		}
		if err := s.Verify(ctx, nil); err != nil {
			t.Fatal(err)
		}
		// The upgrade: one block changed, one range; the standard layer
		// written from the extents and that range.
		rig.rangeGot = 0
		res, err = rig.pull(t, s, "2", false)
		if err != nil {
			t.Fatal(err)
		}
		if res.Standard.Digest != rig.std["2"].Digest || rig.rangeGot != 1 {
			t.Fatalf("upgrade: standard %s (want %s), %d Range requests (want 1)", res.Standard.Digest, rig.std["2"].Digest, rig.rangeGot)
		}
		if err := s.Verify(ctx, nil); err != nil {
			t.Fatal(err)
		}
		// Without app:1, gc sweeps its standard layer and keeps what app:2
		// shares of its extents, in files of their own.
		if err := s.Untag(ctx, "app:1"); err != nil {
			t.Fatal(err)
		}
		gres, err := s.GCWithOptions(ctx, store.GCOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(gres.Extracted) == 0 {
			t.Error("gc extracted no extent app:2 shares")
		}
		if err := s.Verify(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := image.Materialize(ctx, s, "app:2"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("registry's blocked layer when the derived one differs", func(t *testing.T) {
		defer func(f func(context.Context, io.ReaderAt, int64, io.Writer, layer.DehydrateOptions) ([]layer.Part, error)) {
			dehydrate = f
		}(dehydrate)
		dehydrate = func(ctx context.Context, r io.ReaderAt, n int64, w io.Writer, opts layer.DehydrateOptions) ([]layer.Part, error) {
			parts, err := layer.Dehydrate(ctx, r, n, w, opts)
			w.Write([]byte("another writer's bytes"))
			return parts, err
		}
		s, err := store.Create(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		res, err := rig.pull(t, s, "1", false)
		if err != nil {
			t.Fatal(err)
		}
		_, blocked, _ := blockedOf(t, s, "1")
		if res.Standard.Digest != rig.std["1"].Digest || res.Downloaded.Bytes < res.StandardSize+blocked.Size || res.Dehydrated != 1 || res.Derived != 0 {
			t.Fatalf("standard %s, downloaded %d: want %s, the standard image (%d) and the blocked layer (%d)", res.Standard.Digest, res.Downloaded.Bytes, rig.std["1"].Digest, res.StandardSize, blocked.Size)
		}
		if err := s.Verify(ctx, nil); err != nil {
			t.Fatal(err)
		}
	})
}

// respond records h's answer to r, lets edit change it, and sends it.
func respond(w http.ResponseWriter, r *http.Request, h http.Handler, edit func(hdr http.Header, body []byte) (int, []byte)) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	body := rec.Body.Bytes()
	code, body := edit(rec.Header(), body)
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(code)
	w.Write(body)
}

func TestRangePullRefusesBadAnswers(t *testing.T) {
	rig := newRangeRig(t)
	ctx := context.Background()
	cases := []struct {
		name string
		edit func(hdr http.Header, body []byte) (int, []byte)
		want string // in the error
	}{
		{"flipped byte", func(hdr http.Header, b []byte) (int, []byte) {
			b = slices.Clone(b)
			b[len(b)/2] ^= 1
			return http.StatusPartialContent, b
		}, "content hashes to"},
		{"wrong Content-Range", func(hdr http.Header, b []byte) (int, []byte) {
			var a, z, n int64
			fmt.Sscanf(hdr.Get("Content-Range"), "bytes %d-%d/%d", &a, &z, &n)
			hdr.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a+1, z+1, n))
			return http.StatusPartialContent, b
		}, "Content-Range"},
		{"short body", func(hdr http.Header, b []byte) (int, []byte) {
			hdr.Del("Content-Length")
			return http.StatusPartialContent, b[:len(b)-1]
		}, "ends at offset"},
		{"long body", func(hdr http.Header, b []byte) (int, []byte) {
			hdr.Del("Content-Length")
			return http.StatusPartialContent, append(slices.Clone(b), make([]byte, 1<<20)...)
		}, "goes on past byte"},
		{"Content-Length", func(hdr http.Header, b []byte) (int, []byte) {
			hdr.Set("Content-Length", strconv.Itoa(len(b)+1))
			return http.StatusPartialContent, append(slices.Clone(b), 0)
		}, "Content-Length"},
		{"whole blob, wrong", func(hdr http.Header, b []byte) (int, []byte) {
			hdr.Del("Content-Range")
			hdr.Del("Content-Length")
			return http.StatusOK, b // a 200 must be the whole blob: this is a piece
		}, "digest mismatch"},
		{"error status", func(hdr http.Header, b []byte) (int, []byte) {
			hdr.Del("Content-Length")
			hdr.Del("Content-Range")
			return http.StatusRequestedRangeNotSatisfiable, nil
		}, "416"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rig.spoil = func(w http.ResponseWriter, r *http.Request, h http.Handler) bool {
				respond(w, r, h, c.edit)
				return true
			}
			defer func() { rig.spoil = nil }()
			s, err := store.Create(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			before := blobList(t, s)
			_, err = rig.pull(t, s, "1", false)
			if err == nil {
				t.Fatal("pull succeeded")
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "sha256:") {
				t.Errorf("error %q does not say %q and name a digest", err, c.want)
			}
			if c.name == "flipped byte" && !errors.Is(err, store.ErrDigestMismatch) {
				t.Errorf("error %v is not a digest mismatch", err)
			}
			if after := blobList(t, s); !slices.Equal(before, after) {
				t.Errorf("store changed: %d blobs before, %d after", len(before), len(after))
			}
			if _, err := s.Resolve(ctx, "app:1"); err == nil {
				t.Error("image tagged after a failed pull")
			}
		})
	}
}

// The layout of a blocked layer tiles its standard layer: verbatim parts
// are the blocked layer's bytes, header parts rebuild from H, member parts
// are the members; concatenated, they are the standard layer.
func TestLayoutTilesStandardLayer(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writeSpreadLayout(t, dir, -1)
	s, err := store.Create(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	in, err := transport.ParseSource(ctx, "oci:"+dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := image.Export(ctx, s, in, "app", image.ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	in.Close()
	img, err := image.Resolve(ctx, s, "app")
	if err != nil {
		t.Fatal(err)
	}
	l := img.Manifests[0].Layers[0]
	read := func(d ocispec.Descriptor) []byte {
		rc, err := s.Fetch(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	blocked, std := read(l.Blocked), read(l.Standard)
	comp, parts, err := layer.Layout(ctx, bytes.NewReader(blocked), l.Standard.MediaType)
	if err != nil {
		t.Fatal(err)
	}
	members := map[digest.Digest]ocispec.Descriptor{}
	for _, m := range l.Members {
		members[m.Digest] = m
	}
	var out []byte
	kinds := map[layer.PartKind]int{}
	for _, p := range parts {
		if int64(len(out)) != p.Offset {
			t.Fatalf("part at %d, output at %d", p.Offset, len(out))
		}
		kinds[p.Kind]++
		switch p.Kind {
		case layer.PartVerbatim:
			out = append(out, blocked[p.BlockedOffset:p.BlockedOffset+p.Size]...)
		case layer.PartHeader:
			out = layer.AppendHeaderMember(out, comp, p.Header)
		case layer.PartMember:
			out = append(out, read(members[p.Member])...)
		}
	}
	if !bytes.Equal(out, std) {
		t.Fatalf("concatenated parts (%d bytes) differ from the standard layer (%d bytes)", len(out), len(std))
	}
	if kinds[layer.PartMember] < 8 || kinds[layer.PartVerbatim] < 4 || kinds[layer.PartHeader] != kinds[layer.PartMember] {
		t.Errorf("parts by kind %v", kinds)
	}
}

// FuzzCheckContentRange: whatever a registry sends, a Content-Range is
// accepted only if it states exactly the span asked for.
func FuzzCheckContentRange(f *testing.F) {
	f.Add("bytes 100-199/1000")
	f.Add("bytes 100-199/*")
	f.Add("bytes +100-199/1000")
	f.Add("bytes 100-199/01000")
	f.Fuzz(func(t *testing.T, v string) {
		sp := span{100, 200}
		if checkContentRange(v, sp, 1000) != nil {
			return
		}
		// Accepted: "bytes " digits "-" digits "/" (digits | "*"), the
		// digits naming exactly the span and the size.
		rest, ok := strings.CutPrefix(v, "bytes ")
		rng, total, _ := strings.Cut(rest, "/")
		a, b, _ := strings.Cut(rng, "-")
		first, ok1 := decimal(a)
		last, ok2 := decimal(b)
		n, ok3 := decimal(total)
		if !ok || !ok1 || !ok2 || first != sp.start || last != sp.end-1 || (total != "*" && (!ok3 || n != 1000)) {
			t.Fatalf("%q accepted for bytes %d-%d/1000", v, sp.start, sp.end-1)
		}
	})
}
