package integration

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/blockfile/blockfile/integration/harness"
)

// TestRegistryFirstPullBlockMap: an image whose layer holds many small files
// with blocks among them (the shape of an OS layer), pushed to a real
// distribution. Push publishes the block map beside the index (the index
// is unchanged: skopeo copy --all keeps its digest; a second push finds the
// map); a first pull reads that layer whole (no Range request) and derives
// its blocked layer through the map, to the exact digests, within 1.02x the
// standard image on the wire; --no-block-map derives it by inflating the
// blocks; after garbage-collect --delete-untagged the map is still there
// and used.
func TestRegistryFirstPullBlockMap(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	dir := t.TempDir()
	// 20 folders of 100 small files (2-4 KiB, incompressible) and two
	// 96 KiB libraries each: the libraries are blocks among small files.
	for i := range 2000 {
		putFile(t, filepath.Join(dir, "rootfs", "usr", "share", fmt.Sprintf("d%02d", i/100), fmt.Sprintf("f%04d", i)), randBytes(int64(1000+i), 2048+i%2048))
		if i%50 == 0 {
			putFile(t, filepath.Join(dir, "rootfs", "usr", "share", fmt.Sprintf("d%02d", i/100), fmt.Sprintf("lib%04d.so", i)), randBytes(int64(5000+i), 96<<10))
		}
	}
	putFile(t, filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY rootfs/ /\n"))
	src := filepath.Join(t.TempDir(), "store")
	ex := bfExport(t, bin, src, "oci-archive:"+buildOCIArchive(t, env, dir, "example.test/os:1"), "os:1")
	if ex.Blocks != 40 {
		t.Fatalf("exported with %d blocks, want the 40 libraries", ex.Blocks)
	}

	reg := startOwnRegistry(t)
	px := startProxy(t, reg.addr)
	ref := px.addr + "/os/base:1"
	p := bfPush(t, bin, src, "os:1", ref)
	if p.BlockMap == nil || p.Index.Digest != ex.Index.Digest {
		t.Fatalf("push: block map %v, index %s (want a block map, index %s)", p.BlockMap, p.Index.Digest, ex.Index.Digest)
	}
	if again := bfPush(t, bin, src, "os:1", ref); again.BlockMap == nil || again.BlockMap.Digest != p.BlockMap.Digest {
		t.Errorf("second push: block map %v, want %s", again.BlockMap, p.BlockMap.Digest)
	}
	if got := skopeoDigest(t, ref, true); got != ex.Index.Digest.String() {
		t.Errorf("skopeo copy --all: %s, want the index %s", got, ex.Index.Digest)
	}

	pull := func(t *testing.T, label string, extra ...string) (mapped bool) {
		t.Helper()
		site := filepath.Join(t.TempDir(), "site")
		px.reset()
		r := bfPull(t, bin, site, ref, extra...)
		down := px.down.Load()
		px.mu.Lock()
		ranges := px.rangeGETs
		px.mu.Unlock()
		t.Logf("%s: %d bytes on the wire, standard image %d (%.3fx), %d layers read whole, %d derived, block map %v", label, down, r.StandardSize, float64(down)/float64(r.StandardSize), r.Dehydrated, r.Derived, r.BlockMap)
		if r.Standard.Digest != ex.Standard.Digest || r.Index.Digest != ex.Index.Digest {
			t.Fatalf("%s: standard %s index %s, want %s %s", label, r.Standard.Digest, r.Index.Digest, ex.Standard.Digest, ex.Index.Digest)
		}
		if r.Dehydrated != 1 || r.Derived != 1 || ranges != 0 {
			t.Errorf("%s: %d layers read whole, %d derived, %d Range GETs; want the layer read whole in one GET and derived", label, r.Dehydrated, r.Derived, ranges)
		}
		if float64(down) > 1.02*float64(r.StandardSize) {
			t.Errorf("%s: downloaded %d bytes, over 1.02x the standard image (%d)", label, down, r.StandardSize)
		}
		bfMust(t, bin, "verify", "--store", site)
		if r.BlockMap != nil && r.BlockMap.Digest != p.BlockMap.Digest {
			t.Errorf("%s: block map %s used, pushed %s", label, r.BlockMap.Digest, p.BlockMap.Digest)
		}
		return r.BlockMap != nil
	}
	if !pull(t, "first pull") {
		t.Error("first pull: the block map was not used")
	}
	if pull(t, "first pull --no-block-map", "--no-block-map") {
		t.Error("--no-block-map: a block map was used")
	}
	reg.gc()
	if !pull(t, "first pull after garbage-collect") {
		t.Error("after garbage-collect --delete-untagged: the block map was not used (collected?)")
	}
}
