package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// manyLayers is an image of five layers, each with two block files (one
// shared by every layer) and small files between them.
func manyLayers() [][]tfile {
	var layers [][]tfile
	for l := range 5 {
		layers = append(layers, []tfile{
			{name: fmt.Sprintf("l%d/", l), typ: tar.TypeDir, mode: 0o755},
			{name: fmt.Sprintf("l%d/a.txt", l), typ: tar.TypeReg, data: []byte(strings.Repeat("a", l+1))},
			{name: fmt.Sprintf("l%d/dep.jar", l), typ: tar.TypeReg, randSize: int64(70000 + 10000*l), seed: int64(100 + l)},
			{name: fmt.Sprintf("l%d/b.txt", l), typ: tar.TypeReg, data: []byte("b\n")},
			{name: fmt.Sprintf("l%d/common.jar", l), typ: tar.TypeReg, randSize: 66000, seed: 7},
		})
	}
	return layers
}

// pushTracker wraps a sink and records how many layer pushes ran at once.
// With wait set, a layer push waits (up to a timeout) for a second one to
// start, so that a hydrate that pushes layers concurrently shows it.
type pushTracker struct {
	transport.Sink
	wait bool

	mu       sync.Mutex
	inflight int
	max      int
	layers   int
	more     chan struct{} // closed when two layer pushes overlapped
}

func newPushTracker(dst transport.Sink, wait bool) *pushTracker {
	return &pushTracker{Sink: dst, wait: wait, more: make(chan struct{})}
}

func (p *pushTracker) Push(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error {
	if !strings.Contains(desc.MediaType, "layer") {
		return p.Sink.Push(ctx, desc, r)
	}
	p.mu.Lock()
	p.inflight++
	p.layers++
	if p.inflight > p.max {
		p.max = p.inflight
		if p.max == 2 {
			close(p.more)
		}
	}
	p.mu.Unlock()
	if p.wait {
		select {
		case <-p.more:
		case <-time.After(3 * time.Second):
		}
	}
	err := p.Sink.Push(ctx, desc, r)
	p.mu.Lock()
	p.inflight--
	p.mu.Unlock()
	return err
}

// concurrentTracker also passes on the wrapped sink's capability.
type concurrentTracker struct{ *pushTracker }

func (c concurrentTracker) ConcurrentPush() bool { return transport.PushesConcurrently(c.Sink) }

// readBlobs returns every file under a layout's blobs/ and its index.json.
func readBlobs(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		files[strings.TrimPrefix(p, dir)] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// Layers hydrated concurrently give the same layout, byte for byte, as one
// at a time, and Materialize writes the same layer blobs into the store.
func TestParallelHydrateSameAsSequential(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0))))
	ctx := context.Background()
	dir := t.TempDir()
	b := newBuilder(t, "oci:"+filepath.Join(dir, "src"))
	b.commit(b.image("amd64", nil, manyLayers()...))
	s := openStore(t)
	res := export(t, s, "oci:"+filepath.Join(dir, "src"), "app", ExportOptions{})

	hydrateVia := func(out string, wrap func(transport.Sink) transport.Sink) {
		t.Helper()
		dst, err := transport.ParseSink(ctx, "oci:"+out, transport.WithDefaultName("app"))
		if err != nil {
			t.Fatal(err)
		}
		var prog bytes.Buffer
		got, err := Hydrate(ctx, s, "app", wrap(dst), HydrateOptions{Progress: &prog})
		if err != nil || got.Digest != res.Standard.Digest {
			t.Fatalf("hydrate to %s: %s, %v", out, got.Digest, err)
		}
	}
	par := newPushTracker(nil, true)
	hydrateVia(filepath.Join(dir, "par"), func(d transport.Sink) transport.Sink {
		par.Sink = d
		return concurrentTracker{par}
	})
	seq := newPushTracker(nil, false)
	hydrateVia(filepath.Join(dir, "seq"), func(d transport.Sink) transport.Sink {
		seq.Sink = d
		return seq // no ConcurrentPush: one push at a time
	})
	if par.max < 2 || par.layers != 5 {
		t.Errorf("concurrent sink: at most %d layer pushes at once over %d layers, want >= 2 over 5", par.max, par.layers)
	}
	if seq.max != 1 || seq.layers != 5 {
		t.Errorf("sequential sink: at most %d layer pushes at once over %d layers, want 1 over 5", seq.max, seq.layers)
	}

	pf, sf := readBlobs(t, filepath.Join(dir, "par")), readBlobs(t, filepath.Join(dir, "seq"))
	if len(pf) != len(sf) {
		t.Fatalf("concurrent hydrate wrote %d files, sequential %d", len(pf), len(sf))
	}
	for name, data := range sf {
		if !bytes.Equal(pf[name], data) {
			t.Errorf("%s differs between concurrent and sequential hydrate", name)
		}
	}

	var dropped []ocispec.Descriptor
	for _, l := range res.Manifests[0].Layers {
		if l.Blocked.Digest != l.Standard.Digest {
			if err := os.Remove(s.BlobPath(l.Standard.Digest)); err != nil {
				t.Fatal(err)
			}
			dropped = append(dropped, l.Standard)
		}
	}
	if len(dropped) != 5 {
		t.Fatalf("dropped %d standard layers, want 5", len(dropped))
	}
	if got, err := Materialize(ctx, s, "app"); err != nil || got.Digest != res.Standard.Digest {
		t.Fatalf("materialize: %s, %v", got.Digest, err)
	}
	for _, d := range dropped {
		got, err := os.ReadFile(s.BlobPath(d.Digest))
		if err != nil || !bytes.Equal(got, sf["/blobs/sha256/"+d.Digest.Encoded()]) {
			t.Errorf("materialized layer %s differs from the hydrated one (%v)", d.Digest, err)
		}
	}
}

// A member corrupted in the store (same size, one byte changed) makes
// Materialize fail with an error naming the member and its layer, and
// nothing is written under that layer's digest, not even a temp file.
func TestMaterializeTamperedMemberFailsClosed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := newBuilder(t, "oci:"+dir)
	b.commit(b.image("amd64", nil, manyLayers()...))
	s := openStore(t)
	res := export(t, s, "oci:"+dir, "app", ExportOptions{})
	img, err := Resolve(ctx, s, "app")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range res.Manifests[0].Layers {
		if err := os.Remove(s.BlobPath(l.Standard.Digest)); err != nil {
			t.Fatal(err)
		}
	}
	bad := img.Manifests[0].Layers[3]
	// The member only layer 3 uses (its dep.jar), not the shared one.
	var member ocispec.Descriptor
	for _, m := range bad.Members {
		shared := false
		for i, l := range img.Manifests[0].Layers {
			for _, o := range l.Members {
				shared = shared || (i != 3 && o.Digest == m.Digest)
			}
		}
		if !shared {
			member = m
		}
	}
	if member.Digest == "" {
		t.Fatal("no member of layer 3 alone")
	}
	p := s.BlobPath(member.Digest)
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(orig)
	flipped[len(flipped)/3] ^= 0x10
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, flipped, 0o444); err != nil {
		t.Fatal(err)
	}

	_, err = Materialize(ctx, s, "app")
	if err == nil {
		t.Fatal("materialize with a corrupt member succeeded")
	}
	t.Log(err)
	for _, want := range []string{member.Digest.String(), p, fmt.Sprintf("layer 3 (%s)", bad.Standard.Digest), "l3/.import.dep.jar"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
	if !errors.Is(err, store.ErrDigestMismatch) {
		t.Errorf("error is not a digest mismatch: %v", err)
	}
	if ok, _ := s.Exists(ctx, bad.Standard.Digest); ok {
		t.Errorf("standard layer %s was written from a corrupt member", bad.Standard.Digest)
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Root(), "blockfile", "ingest")); len(ents) != 0 {
		t.Errorf("temp files left in the store: %v", ents)
	}

	// Repaired, it materializes every layer.
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, orig, 0o444); err != nil {
		t.Fatal(err)
	}
	if got, err := Materialize(ctx, s, "app"); err != nil || got.Digest != res.Standard.Digest {
		t.Fatalf("materialize after repair: %v", err)
	}
	for _, l := range res.Manifests[0].Layers {
		if ok, _ := s.Exists(ctx, l.Standard.Digest); !ok {
			t.Errorf("standard layer %s not materialized", l.Standard.Digest)
		}
	}
}
