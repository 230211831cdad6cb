package bundle

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/layer"
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

// verify --repair (image.Repair) rebuilds what can be: an absent standard
// layer by hydrate, a member record that names another block's member and
// a lost member record from the block sets; a corrupt blob that nothing
// can rebuild is removed and then reported missing, not hidden.
func TestRepairRebuildsStore(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	export(t, s, "app:v1", serviceLayers("v1", "app/libs", map[string]string{"a.jar": "a1", "b.jar": "b1"}))
	img, err := image.Resolve(ctx, s, "app:v1")
	if err != nil {
		t.Fatal(err)
	}
	var lay image.Layer
	var stubs []layer.StubEntry
	for _, l := range img.Manifests[0].Layers {
		if !l.HasBlocks() {
			continue
		}
		rc, err := s.Fetch(ctx, l.Blocked)
		if err != nil {
			t.Fatal(err)
		}
		st, err := layer.ReadStubs(ctx, rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(st) >= 2 {
			lay, stubs = l, st
		}
	}
	if len(stubs) < 2 {
		t.Fatal("fixture: no layer with two blocks")
	}
	a, b := stubs[0].Stub, stubs[1].Stub
	recA := filepath.Join(s.Root(), "blockfile", "members", "gzip", a.Block.Digest.Encoded())
	recB := filepath.Join(s.Root(), "blockfile", "members", "gzip", b.Block.Digest.Encoded())
	// Damage: the standard layer is gone, A's record names B's member, B's
	// record is lost, and an unreferenced blob is corrupt.
	os.Remove(s.BlobPath(lay.Standard.Digest))
	if err := s.RecordMember(ctx, a.Block.Digest, blocks.Gzip, b.Member.Descriptor(blocks.MediaTypeMemberGzip)); err != nil {
		t.Fatal(err)
	}
	os.Remove(recB)
	junk, err := s.PutJSON(ctx, "application/json", map[string]string{"junk": "x"})
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, s.BlobPath(junk.Digest))
	if err := s.Verify(ctx, nil); err == nil {
		t.Fatal("verify of the damaged store passed")
	}

	res, err := image.Repair(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("repair: %+v", res)
	if len(res.Failed) != 0 {
		t.Fatalf("repair failed for %v", res.Failed)
	}
	if got := fileDigest(t, s.BlobPath(lay.Standard.Digest)); got != lay.Standard.Digest {
		t.Fatalf("standard layer not rebuilt (holds %s)", got)
	}
	for _, st := range []blocks.Stub{a, b} {
		m, ok, err := s.LookupMember(ctx, st.Block.Digest, blocks.Gzip)
		if err != nil || !ok || m.Digest != st.Member.Digest {
			t.Errorf("record of %s = %s, %v, %v; want %s", st.Block.Digest, m.Digest, ok, err, st.Member.Digest)
		}
	}
	for _, p := range []string{recA, recB} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("record %s: %v", p, err)
		}
	}
	if len(res.Removed) != 1 || res.Removed[0] != s.BlobPath(junk.Digest) {
		t.Errorf("removed %v, want the corrupt blob %s", res.Removed, junk.Digest)
	}
	if err := s.Verify(ctx, nil); err != nil {
		t.Fatalf("verify after repair: %v", err)
	}
}
