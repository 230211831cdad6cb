package bundle

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/transport"
)

// flipByte damages a file in place, keeping its size.
func flipByte(t *testing.T, p string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, b, 0o444); err != nil {
		t.Fatal(err)
	}
}

func fileDigest(t *testing.T, p string) digest.Digest {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := digest.SHA256.FromReader(f)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// A store holding same-size corrupt copies of blobs a bundle ships gets
// them repaired by apply (they used to count as "already present"), and an
// oci: output holding a same-size corrupt layer gets it replaced (hydrate
// used to keep it and report the exact digest).
func TestApplyRepairsCorruptBlobs(t *testing.T) {
	ctx := context.Background()
	src := openStore(t)
	export(t, src, "app:v1", serviceLayers("v1", "app/libs", map[string]string{"a.jar": "a1", "b.jar": "b1"}))
	dir := t.TempDir()
	full := filepath.Join(dir, "v1.bundle")
	h, err := Create(ctx, src, []string{"app:v1"}, full, CreateOptions{Full: true})
	if err != nil {
		t.Fatal(err)
	}
	site := openStore(t)
	// The site holds a damaged copy of every blob the bundle ships.
	for _, b := range h.Blobs {
		p := site.BlobPath(b.Digest)
		os.MkdirAll(filepath.Dir(p), 0o755)
		data, err := os.ReadFile(src.BlobPath(b.Digest))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o444); err != nil {
			t.Fatal(err)
		}
		flipByte(t, p)
	}
	out := filepath.Join(dir, "out")
	res, err := Apply(ctx, site, full, ApplyOptions{Outputs: []string{"oci:" + out}})
	if err != nil {
		t.Fatalf("apply over corrupt copies: %v", err)
	}
	if res.Ingested.Blobs != len(h.Blobs) {
		t.Errorf("ingested %d blobs, want all %d (the corrupt copies are not present)", res.Ingested.Blobs, len(h.Blobs))
	}
	for _, b := range h.Blobs {
		if got := fileDigest(t, site.BlobPath(b.Digest)); got != b.Digest {
			t.Errorf("blob %s still holds %s after apply", b.Digest, got)
		}
	}
	if err := site.Verify(ctx, nil); err != nil {
		t.Fatalf("verify after apply: %v", err)
	}

	// Damage a standard layer in the oci: output, keeping its size, and
	// hydrate into it again.
	img, err := image.Resolve(ctx, site, "app:v1")
	if err != nil {
		t.Fatal(err)
	}
	var layer digest.Digest
	for _, l := range img.Manifests[0].Layers {
		if l.HasBlocks() {
			layer = l.Standard.Digest
		}
	}
	lp := filepath.Join(out, "blobs", "sha256", layer.Encoded())
	flipByte(t, lp)
	sink, err := transport.ParseSink(ctx, "oci:"+out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := image.Hydrate(ctx, site, "app:v1", sink, image.HydrateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := fileDigest(t, lp); got != layer {
		t.Fatalf("oci: output kept a corrupt layer %s (holds %s)", layer, got)
	}
}
