package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/bundle"

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

	src := copyStore(t, b.src) // push records where blobs went
	p1 := bfPush(t, bin, src, b.v1.Name, ref1)
	if p1.Index.Digest != b.v1.Index.Digest || p1.Standard.Digest != b.v1.Standard.Digest {
		t.Fatalf("push printed index %s standard %s, want %s %s", p1.Index.Digest, p1.Standard.Digest, b.v1.Index.Digest, b.v1.Standard.Digest)
	}
	if p1.Uploaded.Blobs == 0 || p1.Skipped.Blobs != 0 {
		t.Errorf("first push: uploaded %d, skipped %d", p1.Uploaded.Blobs, p1.Skipped.Blobs)
	}
	p2 := bfPush(t, bin, src, b.v2.Name, ref2)
	if p2.Skipped.Blobs == 0 {
		t.Errorf("v2 push skipped nothing v1 had uploaded")
	}
	// Pushing again uploads nothing.
	if again := bfPush(t, bin, src, b.v1.Name, ref1); again.Uploaded.Blobs != 0 || again.Mounted.Blobs != 0 {
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

// TestRegistryOldClients: a pushed tag is a normal image for clients that
// know nothing about blocks: containerd pulls and runs it, and a BuildKit
// build FROM it sees v2's files.
func TestRegistryOldClients(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	b := getBundleImages(t)
	bin := env.BlockfileBin(t)
	reg := startOwnRegistry(t)
	ref := reg.addr + "/old/app:v2"
	bfPush(t, bin, copyStore(t, b.src), b.v2.Name, ref)

	_, ctr := env.Containerd(t)
	cmdOut(t, ctr("images", "pull", "--plain-http", ref))
	t.Cleanup(func() { _ = ctr("images", "rm", ref).Run() })
	// containerd resolved the tag to the index and chose the linux manifest.
	if out := cmdOut(t, ctr("images", "ls", "name=="+ref)); !strings.Contains(out, b.v2.Index.Digest.String()) {
		t.Errorf("ctr images ls: %q, want the index %s", out, b.v2.Index.Digest)
	}
	out := cmdOut(t, ctr("run", "--rm", ref, "registry-old-client", "sha256sum", "/app/libs/netty.jar", "/app/app.jar"))
	for _, want := range []string{sha256Hex(b.changedJar), sha256Hex(b.appJar)} {
		if !strings.Contains(out, want) {
			t.Errorf("ctr run printed %q, want %s", out, want)
		}
	}

	// BuildKit FROM the tag: the RUN fails unless the files are v2's.
	dir := t.TempDir()
	putFile(t, filepath.Join(dir, "Dockerfile"), []byte("FROM "+ref+"\n"+
		"RUN echo '"+sha256Hex(b.appJar)+"  /app/app.jar' | sha256sum -c && echo '"+sha256Hex(b.changedJar)+"  /app/libs/netty.jar' | sha256sum -c\n"))
	buildOCIArchive(t, env, dir, "example.test/registry/from:1")
}

// TestRegistryTamperedBlob: a registry (a proxy in front of it) serving one
// blob with a byte flipped: the pull fails naming the blob, and the store
// and the --output are unchanged.
func TestRegistryTamperedBlob(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	reg := startOwnRegistry(t)
	px := startProxy(t, reg.addr)
	src := copyStore(t, b.src)
	ref1, ref2 := px.addr+"/tamper/app:v1", px.addr+"/tamper/app:v2"
	bfPush(t, bin, src, b.v1.Name, ref1)
	bfPush(t, bin, src, b.v2.Name, ref2)

	site := filepath.Join(t.TempDir(), "site")
	bfPull(t, bin, site, ref1)
	// What the upgrade downloads: every blob of v2 the site lacks.
	cs, err := bundle.Closures(ctxT(t), openStoreT(t, b.src), []string{b.v1.Name, b.v2.Name})
	if err != nil {
		t.Fatal(err)
	}
	inV1 := map[digest.Digest]bool{}
	for _, bl := range cs[0].Blobs {
		inV1[bl.Digest] = true
	}
	victims := map[bundle.Kind]digest.Digest{}
	for _, bl := range cs[1].Blobs {
		switch bl.Kind {
		case bundle.KindBlock, bundle.KindBlockedLayer, bundle.KindConfig:
			if _, ok := victims[bl.Kind]; !ok && !inV1[bl.Digest] {
				victims[bl.Kind] = bl.Digest
			}
		}
	}
	if victims[bundle.KindBlock] == "" || victims[bundle.KindBlockedLayer] == "" {
		t.Fatalf("v2 brings no new block or blocked layer: %v", victims)
	}
	for kind, d := range victims {
		before := storeListing(t, site)
		out := filepath.Join(t.TempDir(), "v2.tar")
		px.setTamper(d.String())
		r := bfRun(t, bin, "pull", "--store", site, "--progress", "none", "--output", "oci-archive:"+out, ref2)
		px.setTamper("")
		if r.code != 1 || !strings.Contains(r.stderr, d.String()) {
			t.Errorf("%s %s served tampered: exit %d, stderr %q; want exit 1 naming the digest", kind, d, r.code, r.stderr)
		}
		t.Logf("%s tampered: %s", kind, strings.TrimSpace(r.stderr))
		if after := storeListing(t, site); after != before {
			t.Errorf("%s tampered: the store changed:\nbefore:\n%s\nafter:\n%s", kind, before, after)
		}
		mustAbsent(t, out)
	}
	// Served intact, the same pull succeeds.
	if r := bfPull(t, bin, site, ref2); r.Standard.Digest != b.v2.Standard.Digest {
		t.Errorf("pull after the tampering stopped: %s, want %s", r.Standard.Digest, b.v2.Standard.Digest)
	}
}

// TestRegistryMountAcrossRepositories: another team's image sharing blocks
// with v1, pushed to another repository of the same registry, uploads only
// the blobs v1's push did not: the others are mounted.
func TestRegistryMountAcrossRepositories(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	reg := startOwnRegistry(t)
	px := startProxy(t, reg.addr)
	src := copyStore(t, b.src)
	bfPush(t, bin, src, b.v1.Name, px.addr+"/team-a/app:v1")

	cs, err := bundle.Closures(ctxT(t), openStoreT(t, b.src), []string{b.v1.Name, b.other.Name})
	if err != nil {
		t.Fatal(err)
	}
	leaves := func(c *bundle.Closure) map[digest.Digest]int64 {
		m := map[digest.Digest]int64{}
		for _, bl := range c.Blobs {
			if !bl.Kind.Metadata() || bl.Kind == bundle.KindConfig {
				m[bl.Digest] = bl.Size
			}
		}
		for _, l := range c.Hydrated {
			m[l.Digest] = l.Size
		}
		return m
	}
	inV1, inOther := leaves(cs[0]), leaves(cs[1])
	var wantNew, wantShared int64
	for d, n := range inOther {
		if _, ok := inV1[d]; ok {
			wantShared += n
		} else {
			wantNew += n
		}
	}
	if wantShared < wantNew/4 {
		t.Fatalf("the images share %d bytes of blobs only (new %d): the test proves little", wantShared, wantNew)
	}
	px.reset()
	res := bfPush(t, bin, src, b.other.Name, px.addr+"/team-b/other:1")
	up := px.up.Load()
	t.Logf("second repository: uploaded %+v, mounted %+v, skipped %+v; %d bytes sent; new %d, shared %d", res.Uploaded, res.Mounted, res.Skipped, up, wantNew, wantShared)
	if res.Uploaded.Bytes != wantNew || res.Mounted.Bytes != wantShared {
		t.Errorf("uploaded %d bytes and mounted %d, want %d new and %d shared", res.Uploaded.Bytes, res.Mounted.Bytes, wantNew, wantShared)
	}
	// On the wire: the new blobs and the manifests, nothing shared.
	if up > wantNew+res.Manifests.Bytes+64<<10 {
		t.Errorf("%d bytes sent for %d bytes of new blobs and %d of manifests", up, wantNew, res.Manifests.Bytes)
	}
	// The mounted image is complete: skopeo copies it whole.
	if got := skopeoDigest(t, px.addr+"/team-b/other:1", true); got != b.other.Index.Digest.String() {
		t.Errorf("skopeo copy --all: %s, want %s", got, b.other.Index.Digest)
	}
}

// TestRegistryCIBundle: CI with an empty store pulls v1's blocked form only
// (--materialize=false: no standard layer), gets v2, and makes the v1 -> v2
// bundle: the same bytes as the store that built v1 makes.
func TestRegistryCIBundle(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	reg := startOwnRegistry(t)
	src := copyStore(t, b.src)
	bfPush(t, bin, src, b.v1.Name, reg.addr+"/ci/app:v1")
	bfPush(t, bin, src, b.v2.Name, reg.addr+"/ci/app:v2")

	ci := filepath.Join(t.TempDir(), "ci")
	bfMust(t, bin, "pull", "--store", ci, "--progress", "none", "--materialize=false", reg.addr+"/ci/app:v1", b.v1.Name)
	for _, l := range mustClosure(t, b.src, b.v1.Name).Hydrated {
		mustAbsent(t, filepath.Join(ci, "blobs", "sha256", l.Digest.Encoded()))
	}
	bfMust(t, bin, "pull", "--store", ci, "--progress", "none", "--materialize=false", reg.addr+"/ci/app:v2", b.v2.Name)
	bfMust(t, bin, "verify", "--store", ci)

	dir := t.TempDir()
	fromCI, fromSrc := filepath.Join(dir, "ci.bundle"), filepath.Join(dir, "src.bundle")
	bfMust(t, bin, "bundle", "create", "--store", ci, "--progress", "none", "--from", b.v1.Name, b.v2.Name, "-o", fromCI)
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "none", "--from", b.v1.Name, b.v2.Name, "-o", fromSrc)
	x, _ := os.ReadFile(fromCI)
	y, _ := os.ReadFile(fromSrc)
	if len(x) == 0 || string(x) != string(y) {
		t.Fatalf("the CI store made a %d-byte bundle, the source store %d bytes, not the same bytes", len(x), len(y))
	}

	// The same in one step: --from docker://REF pulls the base's blocked
	// form into an empty store.
	ci2 := filepath.Join(t.TempDir(), "ci2")
	bfMust(t, bin, "pull", "--store", ci2, "--progress", "none", "--materialize=false", reg.addr+"/ci/app:v2", b.v2.Name)
	viaRef := filepath.Join(dir, "ref.bundle")
	bfMust(t, bin, "bundle", "create", "--store", ci2, "--progress", "none", "--from", "docker://"+reg.addr+"/ci/app:v1", b.v2.Name, "-o", viaRef)
	for _, l := range mustClosure(t, b.src, b.v1.Name).Hydrated {
		mustAbsent(t, filepath.Join(ci2, "blobs", "sha256", l.Digest.Encoded()))
	}
	if z, _ := os.ReadFile(viaRef); string(z) != string(y) {
		t.Errorf("--from docker:// made a %d-byte bundle, the source store %d bytes, not the same bytes", len(z), len(y))
	}
}

// TestRegistryExportReadsBlockedForm: export docker:// of a tag that holds a
// blocked form pulls it (the pushed standard digest, not a re-framed one),
// and reads an ordinary image as before.
func TestRegistryExportReadsBlockedForm(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	reg := startOwnRegistry(t)
	px := startProxy(t, reg.addr)
	ref := px.addr + "/exp/app:v1"
	bfPush(t, bin, copyStore(t, b.src), b.v1.Name, ref)

	site := filepath.Join(t.TempDir(), "site")
	px.reset()
	r := bfMust(t, bin, "export", "--store", site, "--progress", "none", "docker://"+ref, "app:1")
	if first, _, _ := strings.Cut(r.stdout, "\n"); first != b.v1.Standard.Digest.String() {
		t.Errorf("export docker:// printed %q, want the pushed standard digest %s", r.stdout, b.v1.Standard.Digest)
	}
	bfMust(t, bin, "verify", "--store", site)
	if got := bfHydrate(t, bin, site, "app:1", "oci:"+filepath.Join(t.TempDir(), "out")); got != b.v1.Standard.Digest.String() {
		t.Errorf("hydrate after export docker://: %s", got)
	}
	// Its standard image alone (skopeo copies it without the index) is an
	// ordinary image: export splits it, to the same standard digest, since
	// its layers are already block-framed.
	std := px.addr + "/exp/plain:v1"
	cmdOut(t, execCmd("skopeo", "copy", "--insecure-policy", "--src-tls-verify=false", "--dest-tls-verify=false", "docker://"+ref, "docker://"+std))
	res := bfExport(t, bin, filepath.Join(t.TempDir(), "plain"), "docker://"+std, "plain:1")
	if res.Standard.Digest != b.v1.Standard.Digest {
		t.Errorf("export of the standard image alone: %s, want %s", res.Standard.Digest, b.v1.Standard.Digest)
	}
	// pull does the same for an image without a blocked form.
	pr := bfPull(t, bin, filepath.Join(t.TempDir(), "plain-pull"), std)
	if pr.Blocked || pr.Standard.Digest != b.v1.Standard.Digest || pr.Downloaded.Bytes < pr.StandardSize {
		t.Errorf("pull of an ordinary image: blocked %v, standard %s (want %s), %d bytes downloaded of %d", pr.Blocked, pr.Standard.Digest, b.v1.Standard.Digest, pr.Downloaded.Bytes, pr.StandardSize)
	}
}

// TestRegistryGCKeepsBlocks: after the registry's garbage-collect
// --delete-untagged, the tag still pulls to the exact digests, with skopeo
// and with blockfile (every block is still there).
func TestRegistryGCKeepsBlocks(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	reg := startOwnRegistry(t)
	src := copyStore(t, b.src)
	ref := reg.addr + "/gc/app:v2"
	bfPush(t, bin, src, b.v2.Name, ref)
	// An upgrade with a delta (a referrer of the new index: the sha256-<hex>
	// fallback tag and the delta manifest's own child tag keep it).
	d := getDeltaImages(t)
	dsrc := copyStore(t, d.src)
	bfPush(t, bin, dsrc, d.v1.Name, reg.addr+"/gc/delta:v1")
	bfPush(t, bin, dsrc, d.v2.Name, reg.addr+"/gc/delta:v2", "--delta-from", d.v1.Name)
	// Distribution 3 follows indexes, so the fallback index alone keeps the
	// delta manifest there, without child tags.
	v3 := strings.Contains(reg.version(), " v3.")
	t.Logf("registry: %s (distribution 3: %v)", strings.TrimSpace(reg.version()), v3)
	if v3 {
		bfPush(t, bin, dsrc, d.v1.Name, reg.addr+"/gc3/delta:v1", "--tag-children=false")
		bfPush(t, bin, dsrc, d.v2.Name, reg.addr+"/gc3/delta:v2", "--tag-children=false", "--delta-from", d.v1.Name)
	}
	// An untagged image beside it, so the collector has something to drop.
	bfPush(t, bin, src, b.other.Name, reg.addr+"/gc/app@"+b.other.Index.Digest.String())
	out := reg.gc()
	if !strings.Contains(out, "blob eligible for deletion") && !strings.Contains(out, "manifest eligible for deletion") {
		t.Logf("garbage-collect deleted nothing:\n%s", out)
	}

	if got := skopeoDigest(t, ref, false); got != b.v2.Standard.Digest.String() {
		t.Errorf("after gc, skopeo copy: %s, want %s", got, b.v2.Standard.Digest)
	}
	if got := skopeoDigest(t, ref, true); got != b.v2.Index.Digest.String() {
		t.Errorf("after gc, skopeo copy --all: %s, want %s", got, b.v2.Index.Digest)
	}
	site := filepath.Join(t.TempDir(), "site")
	if r := bfPull(t, bin, site, ref); r.Standard.Digest != b.v2.Standard.Digest {
		t.Errorf("after gc, pull: %s, want %s", r.Standard.Digest, b.v2.Standard.Digest)
	}
	bfMust(t, bin, "verify", "--store", site)
	// The delta survived: a store holding v1 upgrades through it.
	repos := []string{"gc"}
	if v3 {
		repos = append(repos, "gc3")
	}
	for _, repo := range repos {
		up := filepath.Join(t.TempDir(), "up")
		bfPull(t, bin, up, reg.addr+"/"+repo+"/delta:v1")
		r := bfPull(t, bin, up, reg.addr+"/"+repo+"/delta:v2")
		if r.Standard.Digest != d.v2.Standard.Digest || r.Delta == nil {
			t.Errorf("%s: after gc, upgrade pull: standard %s (want %s), delta %+v", repo, r.Standard.Digest, d.v2.Standard.Digest, r.Delta)
		}
		bfMust(t, bin, "verify", "--store", up)
	}
	// The untagged image is gone: the collector did run.
	if r := bfRun(t, bin, "pull", "--store", t.TempDir(), "--progress", "none", reg.addr+"/gc/app@"+b.other.Index.Digest.String()); r.code == 0 {
		t.Errorf("the untagged index survived garbage-collect --delete-untagged")
	}
}

func mustClosure(t testing.TB, storeDir, name string) *bundle.Closure {
	t.Helper()
	cs, err := bundle.Closures(ctxT(t), openStoreT(t, storeDir), []string{name})
	if err != nil {
		t.Fatal(err)
	}
	return cs[0]
}
