package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/bundle"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// gcRaceRounds is how many times each writer runs while gc loops.
const gcRaceRounds = 6

// gcRaceWriter is one kind of store writer, run round after round while gc
// loops on the same store. Each round must leave garbage behind for gc (the
// previous round's image or block, untagged or forgotten) so that gc has
// something to sweep while the writer's own blobs are not yet tagged.
type gcRaceWriter struct {
	name  string
	setup func(t *testing.T, ctx context.Context, s *store.Store) // before gc starts (may be nil)
	round func(ctx context.Context, s *store.Store, i int) error
}

// TestGCDuringWriters loops gc (through its own *Store, as another process
// would: the lock is a flock) while each writer runs, then checks that every
// writer succeeded and that verify finds the store complete. Without the
// lease between writers and gc, gc sweeps blobs that an export, block add or
// apply has written but not yet tagged, and verify reports them missing.
func TestGCDuringWriters(t *testing.T) {
	dir := t.TempDir()
	// Sources: one OCI layout per round, each image with its own blocks.
	var layouts []string
	for i := range gcRaceRounds + 1 {
		layouts = append(layouts, writeRaceLayout(t, filepath.Join(dir, fmt.Sprintf("src%d", i)), uint64(i)))
	}
	// Bundles for apply, made from a store of their own.
	bundles := make([]string, gcRaceRounds)
	{
		ctx := context.Background()
		src, err := store.Open(filepath.Join(dir, "bundle-src"))
		if err != nil {
			t.Fatal(err)
		}
		for i := range gcRaceRounds {
			name := fmt.Sprintf("app:%d", i)
			exportLayout(t, ctx, src, layouts[i], name)
			bundles[i] = filepath.Join(dir, fmt.Sprintf("b%d.bundle", i))
			if _, err := bundle.Create(ctx, src, []string{name}, bundles[i], bundle.CreateOptions{Full: true}); err != nil {
				t.Fatal(err)
			}
		}
	}

	writers := []gcRaceWriter{
		{name: "export", round: func(ctx context.Context, s *store.Store, i int) error {
			src, err := transport.ParseSource(ctx, "oci:"+layouts[i])
			if err != nil {
				return err
			}
			defer src.Close()
			// Same name every round: the previous round's blobs become garbage.
			_, err = image.Export(ctx, s, src, "app", image.ExportOptions{})
			return err
		}},
		{name: "block add", round: func(ctx context.Context, s *store.Store, i int) error {
			folder := filepath.Join(dir, fmt.Sprintf("blockdir%d", i))
			writeRaceFolder(t, folder, uint64(100+i))
			a, err := addPath(ctx, s, folder)
			if err != nil {
				return err
			}
			if i > 0 { // forget the previous round's tree: garbage for gc
				prev := filepath.Join(dir, fmt.Sprintf("blockdir%d.digest", i-1))
				b, _ := os.ReadFile(prev)
				if err := s.ForgetBlock(ctx, digest.Digest(b)); err != nil {
					return err
				}
			}
			return os.WriteFile(filepath.Join(dir, fmt.Sprintf("blockdir%d.digest", i)), []byte(a.Digest), 0o644)
		}},
		{name: "bundle apply", round: func(ctx context.Context, s *store.Store, i int) error {
			if _, err := bundle.Apply(ctx, s, bundles[i], bundle.ApplyOptions{}); err != nil {
				return err
			}
			if i > 0 {
				return s.Untag(ctx, fmt.Sprintf("app:%d", i-1))
			}
			return nil
		}},
		{name: "hydrate", setup: func(t *testing.T, ctx context.Context, s *store.Store) {
			for i := range gcRaceRounds {
				if _, err := bundle.Apply(ctx, s, bundles[i], bundle.ApplyOptions{NoMaterialize: true}); err != nil {
					t.Fatal(err)
				}
			}
		}, round: func(ctx context.Context, s *store.Store, i int) error {
			// Rebuilds the standard layers into the store, and to a layout.
			if _, err := image.Materialize(ctx, s, fmt.Sprintf("app:%d", i)); err != nil {
				return err
			}
			dst, err := transport.ParseSink(ctx, "oci:"+filepath.Join(dir, fmt.Sprintf("hydrated%d", i)))
			if err != nil {
				return err
			}
			if _, err := image.Hydrate(ctx, s, fmt.Sprintf("app:%d", i), dst, image.HydrateOptions{}); err != nil {
				return err
			}
			return s.Untag(ctx, fmt.Sprintf("app:%d", i))
		}},
		// pull: add {name: "pull", round: ...} once the registry pull exists;
		// it must take s.Lease like the writers above.
	}
	for _, w := range writers {
		t.Run(w.name, func(t *testing.T) {
			runGCRace(t, filepath.Join(dir, "store-"+w.name), w)
		})
	}
}

// runGCRace runs w's rounds in a store while another *Store on the same
// root runs gc in a loop, then verifies the store.
func runGCRace(t *testing.T, root string, w gcRaceWriter) {
	ctx := context.Background()
	s, err := store.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	if w.setup != nil {
		w.setup(t, ctx, s)
	}
	gcStore, err := store.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var gcs, removed int
	var gcErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			res, err := gcStore.GCWithOptions(ctx, store.GCOptions{})
			if err != nil {
				gcErr = err
				return
			}
			gcs++
			removed += len(res.Removed)
		}
	}()
	var werr error
	for i := range gcRaceRounds {
		if werr = w.round(ctx, s, i); werr != nil {
			werr = fmt.Errorf("round %d: %w", i, werr)
			break
		}
	}
	close(stop)
	wg.Wait()
	if werr != nil {
		t.Fatalf("%s while gc loops: %v", w.name, werr)
	}
	if gcErr != nil {
		t.Fatalf("gc: %v", gcErr)
	}
	if gcs < 2 || removed == 0 {
		t.Fatalf("gc ran %d times and removed %d blobs: the race was not exercised", gcs, removed)
	}
	var problems []string
	if err := s.Verify(ctx, func(p store.Problem) { problems = append(problems, p.String()) }); err != nil {
		t.Fatalf("verify after %s with gc looping: %v\n%s", w.name, err, problems)
	}
	t.Logf("%s: %d rounds, gc ran %d times and removed %d blobs, verify ok", w.name, gcRaceRounds, gcs, removed)
}

func exportLayout(t *testing.T, ctx context.Context, s *store.Store, layout, name string) {
	t.Helper()
	src, err := transport.ParseSource(ctx, "oci:"+layout)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := image.Export(ctx, s, src, name, image.ExportOptions{}); err != nil {
		t.Fatal(err)
	}
}

// raceFiles are the files of a round: a few blocks (over the 64 KiB export
// threshold) and small files, all seeded by the round.
func raceFiles(seed uint64) map[string][]byte {
	r := rand.New(rand.NewPCG(seed, 9))
	files := map[string][]byte{}
	for k := range 8 {
		n := 200 << 10
		if k%2 == 1 {
			n = 300
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		files[fmt.Sprintf("app/f%d.jar", k)] = b
	}
	return files
}

func writeRaceFolder(t *testing.T, dir string, seed uint64) {
	t.Helper()
	for name, b := range raceFiles(seed) {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// writeRaceLayout writes an OCI layout holding one single-layer image whose
// layer holds raceFiles(seed).
func writeRaceLayout(t *testing.T, dir string, seed uint64) string {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	files := raceFiles(seed)
	for k := range 8 {
		name := fmt.Sprintf("app/f%d.jar", k)
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(files[name])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(files[name])
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tarBuf.Bytes())
	zw.Close()
	put := func(mt string, b []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
		p := filepath.Join(dir, "blobs", "sha256", d.Digest.Encoded())
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	mustJSON := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	layer := put(ocispec.MediaTypeImageLayerGzip, gz.Bytes())
	cfg := put(ocispec.MediaTypeImageConfig, mustJSON(ocispec.Image{
		Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(tarBuf.Bytes())}},
	}))
	man := put(ocispec.MediaTypeImageManifest, mustJSON(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: cfg, Layers: []ocispec.Descriptor{layer},
	}))
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{man}}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), mustJSON(idx), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}
