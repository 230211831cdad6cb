package transport

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"math/rand"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// testImage is a tiny image: one layer blob, a config and a manifest.
type testImage struct {
	blobs    map[digest.Digest][]byte
	order    []ocispec.Descriptor // push order: blobs before the manifest
	manifest ocispec.Descriptor
}

func newTestImage(t *testing.T, seed int64) testImage {
	t.Helper()
	img := testImage{blobs: map[digest.Digest][]byte{}}
	add := func(mt string, data []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(data), Size: int64(len(data))}
		img.blobs[d.Digest] = data
		img.order = append(img.order, d)
		return d
	}
	layerData := make([]byte, 70000)
	rand.New(rand.NewSource(seed)).Read(layerData)
	layer := add(ocispec.MediaTypeImageLayerGzip, layerData)
	cfg := add(ocispec.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`))
	m, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: []ocispec.Descriptor{layer}})
	img.manifest = add(ocispec.MediaTypeImageManifest, m)
	return img
}

func (img testImage) pushTo(t *testing.T, s Sink) {
	t.Helper()
	ctx := context.Background()
	for _, d := range img.order {
		if err := s.Push(ctx, d, bytes.NewReader(img.blobs[d.Digest])); err != nil {
			t.Fatalf("push %s: %v", d.Digest, err)
		}
	}
}

// checkSource reads every blob of img back through src and compares bytes.
func (img testImage) checkSource(t *testing.T, src Source) {
	t.Helper()
	ctx := context.Background()
	root, err := src.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if root.Digest != img.manifest.Digest || root.MediaType != ocispec.MediaTypeImageManifest {
		t.Fatalf("resolved %v, want %v", root, img.manifest)
	}
	for _, d := range img.order {
		rc, err := src.Fetch(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("fetch %s: %v", d.Digest, err)
		}
		if !bytes.Equal(got, img.blobs[d.Digest]) {
			t.Fatalf("fetch %s: bytes differ", d.Digest)
		}
	}
}

func TestLayoutRoundTripAndRefs(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	a, b := newTestImage(t, 1), newTestImage(t, 2)

	for _, c := range []struct {
		img testImage
		ref string
	}{{a, "a:1"}, {b, "b"}} {
		sink, err := ParseSink(ctx, "oci:"+dir+":"+c.ref)
		if err != nil {
			t.Fatal(err)
		}
		c.img.pushTo(t, sink)
		if err := sink.Commit(ctx, c.img.manifest); err != nil {
			t.Fatal(err)
		}
	}
	src, err := ParseSource(ctx, "oci:"+dir+":a:1")
	if err != nil {
		t.Fatal(err)
	}
	a.checkSource(t, src)
	src, err = ParseSource(ctx, "oci:"+dir+":b")
	if err != nil {
		t.Fatal(err)
	}
	b.checkSource(t, src)

	// Two images and no REF: the error lists the names.
	if _, err := ParseSource(ctx, "oci:"+dir); err == nil || !strings.Contains(err.Error(), "a:1, b") {
		t.Fatalf("want an error listing a:1, b; got %v", err)
	}
	// A full image name also gets the containerd name.
	data, _ := os.ReadFile(filepath.Join(dir, "index.json"))
	if !strings.Contains(string(data), `"io.containerd.image.name":"docker.io/library/a:1"`) {
		t.Fatalf("index.json lacks the containerd name: %s", data)
	}
	if strings.Count(string(data), `"io.containerd.image.name"`) != 1 {
		t.Fatalf("bare tag %q must not get a containerd name: %s", "b", data)
	}
}

func TestLayoutAbortLeavesNothing(t *testing.T) {
	ctx := context.Background()
	parent := t.TempDir()
	dir := filepath.Join(parent, "out")
	sink, err := ParseSink(ctx, "oci:"+dir)
	if err != nil {
		t.Fatal(err)
	}
	newTestImage(t, 3).pushTo(t, sink)
	if err := sink.Abort(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Fatalf("abort left %v", ents)
	}

	// In an existing layout, abort removes the blobs it added and keeps index.json.
	img := newTestImage(t, 4)
	sink, _ = ParseSink(ctx, "oci:"+dir+":x")
	img.pushTo(t, sink)
	if err := sink.Commit(ctx, img.manifest); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, "index.json"))
	sink, _ = ParseSink(ctx, "oci:"+dir+":y")
	newTestImage(t, 5).pushTo(t, sink)
	if err := sink.Abort(); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "index.json"))
	ents, _ := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if !bytes.Equal(before, after) || len(ents) != 3 {
		t.Fatalf("abort changed the layout: %d blobs, index %s", len(ents), after)
	}
}

func TestPushRejectsWrongContent(t *testing.T) {
	ctx := context.Background()
	parent := t.TempDir()
	for _, ref := range []string{"oci:" + filepath.Join(parent, "d"), "oci-archive:" + filepath.Join(parent, "f.tar")} {
		sink, err := ParseSink(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		data := []byte("hello")
		d := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromString("other"), Size: 5}
		if err := sink.Push(ctx, d, bytes.NewReader(data)); !IsVerifyError(err) {
			t.Fatalf("%s: wrong digest: got %v", ref, err)
		}
		sink.Abort()
		sink, _ = ParseSink(ctx, ref)
		d = ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(data), Size: 4}
		if err := sink.Push(ctx, d, bytes.NewReader(data)); !IsVerifyError(err) {
			t.Fatalf("%s: wrong size: got %v", ref, err)
		}
		sink.Abort()
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Fatalf("failed pushes left %v", ents)
	}
}

func TestArchiveRoundTrip(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "img.tar")
	img := newTestImage(t, 6)
	sink, err := ParseSink(ctx, "oci-archive:"+file, WithDefaultName("example.com/app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	img.pushTo(t, sink)
	if err := sink.Commit(ctx, img.manifest); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(file)); len(ents) != 1 {
		t.Fatalf("temp files left: %v", ents)
	}
	src, err := ParseSource(ctx, "oci-archive:"+file+":example.com/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	img.checkSource(t, src)

	// docker load reads manifest.json; ctr import reads the index.json names.
	files := readTar(t, file)
	var ms []dockerSaveEntry
	if err := json.Unmarshal(files["manifest.json"], &ms); err != nil || len(ms) != 1 {
		t.Fatalf("manifest.json: %v %s", err, files["manifest.json"])
	}
	if ms[0].RepoTags[0] != "example.com/app:v1" || ms[0].Config != blobName(img.order[1].Digest) || ms[0].Layers[0] != blobName(img.order[0].Digest) {
		t.Fatalf("manifest.json: %+v", ms[0])
	}
	if !strings.Contains(string(files["index.json"]), `"io.containerd.image.name":"example.com/app:v1"`) {
		t.Fatalf("index.json: %s", files["index.json"])
	}

	// A corrupted blob is caught on read.
	raw, _ := os.ReadFile(file)
	i := bytes.Index(raw, img.blobs[img.order[0].Digest][:64])
	raw[i+100] ^= 0xff
	os.WriteFile(file, raw, 0o644)
	src2, err := ParseSource(ctx, "oci-archive:"+file)
	if err != nil {
		t.Fatal(err)
	}
	defer src2.Close()
	rc, _ := src2.Fetch(ctx, img.order[0])
	if _, err := io.Copy(io.Discard, rc); !IsVerifyError(err) {
		t.Fatalf("corrupt blob: got %v", err)
	}
}

func readTar(t *testing.T, file string) map[string][]byte {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name], _ = io.ReadAll(tr)
	}
}

func TestRemoteRoundTrip(t *testing.T) {
	ctx := context.Background()
	srv := httptest.NewServer(registry.New(registry.Logger(nilLogger())))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	img := newTestImage(t, 7)
	sink, err := ParseSink(ctx, "docker://"+host+"/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := sink.Exists(ctx, img.order[0]); err != nil || ok {
		t.Fatalf("exists before push: %v %v", ok, err)
	}
	img.pushTo(t, sink)
	if ok, err := sink.Exists(ctx, img.order[0]); err != nil || !ok {
		t.Fatalf("exists after push: %v %v", ok, err)
	}
	// Not tagged until Commit.
	early, err := ParseSource(ctx, "docker://"+host+"/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := early.Resolve(ctx); err == nil {
		t.Fatal("tag visible before commit")
	}
	if err := sink.Commit(ctx, img.manifest); err != nil {
		t.Fatal(err)
	}
	src, err := ParseSource(ctx, "docker://"+host+"/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	img.checkSource(t, src)
}

func TestVerifyReader(t *testing.T) {
	data := []byte("0123456789")
	for _, c := range []struct {
		name string
		desc ocispec.Descriptor
		ok   bool
	}{
		{"exact", ocispec.Descriptor{Digest: digest.FromBytes(data), Size: 10}, true},
		{"short", ocispec.Descriptor{Digest: digest.FromBytes(data), Size: 11}, false},
		{"long", ocispec.Descriptor{Digest: digest.FromBytes(data), Size: 9}, false},
		{"digest", ocispec.Descriptor{Digest: digest.FromString("x"), Size: 10}, false},
	} {
		vr, err := newVerifyReader(bytes.NewReader(data), c.desc)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadAll(vr)
		if (err == nil) != c.ok || (!c.ok && !IsVerifyError(err)) {
			t.Errorf("%s: got %v", c.name, err)
		}
	}
	if _, err := newVerifyReader(bytes.NewReader(data), ocispec.Descriptor{Digest: "sha256:../../etc", Size: 1}); err == nil {
		t.Error("malformed digest accepted")
	}
}

func TestParseErrors(t *testing.T) {
	ctx := context.Background()
	for _, ref := range []string{"dir", "oci:", "http://x", "oci:" + filepath.Join(t.TempDir(), "missing")} {
		if _, err := ParseSource(ctx, ref); err == nil {
			t.Errorf("%q: no error", ref)
		}
	}
	if p, r := splitPathRef("/tmp/x:127.0.0.1:5000/app:1"); p != "/tmp/x" || r != "127.0.0.1:5000/app:1" {
		t.Errorf("split: %q %q", p, r)
	}
}

func nilLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// A Verified stream is not hashed again by a sink, but its size still is:
// too few or too many bytes fail the push and leave no blob.
func TestVerifiedStreamSizeChecked(t *testing.T) {
	ctx := context.Background()
	data := []byte("verified by its producer")
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(data), Size: int64(len(data))}
	dir := filepath.Join(t.TempDir(), "out")
	sink, err := ParseSink(ctx, "oci:"+dir+":x")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]byte{data[:5], append(append([]byte{}, data...), '!')} {
		if err := sink.Push(ctx, desc, Verified(bytes.NewReader(bad))); !IsVerifyError(err) {
			t.Fatalf("push of %d bytes as %d: err = %v, want a size mismatch", len(bad), desc.Size, err)
		}
		if ok, _ := sink.Exists(ctx, desc); ok {
			t.Fatalf("a wrong-size verified stream left blob %s", desc.Digest)
		}
	}
	if err := sink.Push(ctx, desc, Verified(bytes.NewReader(data))); err != nil {
		t.Fatalf("push of the right bytes: %v", err)
	}
	if err := sink.Commit(ctx, desc); err != nil {
		t.Fatal(err)
	}
}

// An oci: destination that exists, holds files and has no oci-layout is
// not a layout: writing there would replace someone's index.json and fill
// their directory with blobs/. Empty directories and real layouts are fine.
func TestLayoutSinkRefusesNonLayoutDirectory(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	index := filepath.Join(dir, "index.json")
	if err := os.WriteFile(index, []byte("not yours"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseSink(ctx, "oci:"+dir); !errors.Is(err, ErrNotLayout) {
		t.Fatalf("ParseSink(non-empty dir) = %v, want ErrNotLayout", err)
	}
	if b, _ := os.ReadFile(index); string(b) != "not yours" {
		t.Fatalf("index.json was changed: %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("the directory now holds %d entries", len(ents))
	}

	empty := t.TempDir()
	img := newTestImage(t, 7)
	sink, err := ParseSink(ctx, "oci:"+empty)
	if err != nil {
		t.Fatalf("empty directory: %v", err)
	}
	img.pushTo(t, sink)
	// Now a layout: writing into it again is fine.
	if _, err := ParseSink(ctx, "oci:"+empty+":again"); err != nil {
		t.Fatalf("existing layout: %v", err)
	}
}
