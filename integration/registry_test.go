package integration

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/integration/harness"
)

// TestRegistryPushPull: push v1 and v2 to a real registry; skopeo sees the
// standard image under the tag (and --all keeps the index); a first pull
// into an empty store downloads at most 1.02x the standard image, an upgrade
// pull at most 1.5x the v1 -> v2 bundle + 256 KiB (counted by a proxy in
// front of the registry), and both give the exact standard digests.
func TestRegistryPushPull(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	reg := startOwnRegistry(t)
	px := startProxy(t, reg.addr)
	ref1, ref2 := px.addr+"/shop/app:v1", px.addr+"/shop/app:v2"

	p1 := bfPush(t, bin, b.src, b.v1.Name, ref1)
	if p1.Index.Digest != b.v1.Index.Digest || p1.Standard.Digest != b.v1.Standard.Digest {
		t.Fatalf("push printed index %s standard %s, want %s %s", p1.Index.Digest, p1.Standard.Digest, b.v1.Index.Digest, b.v1.Standard.Digest)
	}
	if p1.Uploaded.Blobs == 0 || p1.Skipped.Blobs != 0 {
		t.Errorf("first push: uploaded %d, skipped %d", p1.Uploaded.Blobs, p1.Skipped.Blobs)
	}
	p2 := bfPush(t, bin, b.src, b.v2.Name, ref2)
	if p2.Skipped.Blobs == 0 {
		t.Errorf("v2 push skipped nothing v1 had uploaded")
	}
	// Pushing again uploads nothing.
	if again := bfPush(t, bin, b.src, b.v1.Name, ref1); again.Uploaded.Blobs != 0 || again.Mounted.Blobs != 0 {
		t.Errorf("second push of v1 uploaded %d blobs, mounted %d", again.Uploaded.Blobs, again.Mounted.Blobs)
	}

	// Old clients: skopeo copy of the tag is the standard image, --all the
	// index byte for byte.
	if got := skopeoDigest(t, ref1, false); got != b.v1.Standard.Digest.String() {
		t.Errorf("skopeo copy: %s, want the standard manifest %s", got, b.v1.Standard.Digest)
	}
	if got := skopeoDigest(t, ref1, true); got != b.v1.Index.Digest.String() {
		t.Errorf("skopeo copy --all: %s, want the index %s", got, b.v1.Index.Digest)
	}

	// A first pull into an empty store.
	site := filepath.Join(t.TempDir(), "site")
	px.reset()
	r1 := bfPull(t, bin, site, ref1)
	down1 := px.down.Load()
	if !r1.Blocked || r1.Standard.Digest != b.v1.Standard.Digest || r1.Index.Digest != b.v1.Index.Digest {
		t.Fatalf("pull v1: blocked %v, standard %s index %s; want %s %s", r1.Blocked, r1.Standard.Digest, r1.Index.Digest, b.v1.Standard.Digest, b.v1.Index.Digest)
	}
	t.Logf("first pull: %d bytes on the wire (pull counted %d), standard image %d (%.3fx)", down1, r1.Downloaded.Bytes, r1.StandardSize, float64(down1)/float64(r1.StandardSize))
	if float64(down1) > 1.02*float64(r1.StandardSize) {
		t.Errorf("first pull downloaded %d bytes, over 1.02x the standard image (%d)", down1, r1.StandardSize)
	}
	if r1.Name != "shop/app:v1" {
		t.Errorf("pulled under %q, want the default shop/app:v1", r1.Name)
	}
	bfMust(t, bin, "verify", "--store", site)
	// The store serves the standard image: hydrate gives the same digest.
	if got := bfHydrate(t, bin, site, r1.Name, "oci:"+filepath.Join(t.TempDir(), "h1")); got != b.v1.Standard.Digest.String() {
		t.Errorf("hydrate after pull: %s, want %s", got, b.v1.Standard.Digest)
	}

	// The upgrade, bounded by the bundle of the same upgrade.
	up := filepath.Join(t.TempDir(), "up.bundle")
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "none", "--from", b.v1.Name, b.v2.Name, "-o", up)
	fi, err := os.Stat(up)
	if err != nil {
		t.Fatal(err)
	}
	px.reset()
	out := filepath.Join(t.TempDir(), "v2.tar")
	r2 := bfPull(t, bin, site, ref2, "--output", "oci-archive:"+out)
	down2 := px.down.Load()
	limit := 1.5*float64(fi.Size()) + 256<<10
	t.Logf("upgrade pull: %d bytes on the wire, bundle %d, limit %.0f, standard image %d", down2, fi.Size(), limit, r2.StandardSize)
	if float64(down2) > limit {
		t.Errorf("upgrade pull downloaded %d bytes, over 1.5x the bundle (%d) + 256 KiB", down2, fi.Size())
	}
	if r2.Standard.Digest != b.v2.Standard.Digest || len(r2.Outputs) != 1 {
		t.Fatalf("pull v2: standard %s, outputs %v; want %s", r2.Standard.Digest, r2.Outputs, b.v2.Standard.Digest)
	}
	if r2.Present.Blobs == 0 {
		t.Errorf("upgrade pull found nothing in the store")
	}
	bfMust(t, bin, "verify", "--store", site)
	// The output is the standard image: skopeo reads it with v2's digest.
	raw := execCmd("skopeo", "inspect", "--raw", "oci-archive:"+out)
	data, err := raw.Output()
	if err != nil {
		t.Fatalf("skopeo inspect --raw oci-archive:%s: %v", out, err)
	}
	if got := digest.FromBytes(data); got != b.v2.Standard.Digest {
		t.Errorf("the --output holds manifest %s, want %s", got, b.v2.Standard.Digest)
	}
}
