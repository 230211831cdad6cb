package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/bundle"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/integration/harness"
)

// bundleImages are a service at v1 and v2 (one jar and the app changed)
// and another team's service sharing two of its jars at other paths, all
// built by the real buildkitd FROM the busybox base and exported into one
// source store. Built once per test binary; tests must not change src.
type bundleImages struct {
	src                string // store directory
	v1, v2, other      *image.ExportResult
	changedJar, appJar []byte // v2's new jar and app, for ctr run checks
}

var (
	bundleOnce sync.Once
	bundleImg  *bundleImages
)

func getBundleImages(t *testing.T) *bundleImages {
	t.Helper()
	bundleOnce.Do(func() {
		env := harness.Get(t)
		bin := env.BlockfileBin(t)
		dir, err := os.MkdirTemp(env.Dir, "bundle-images-")
		if err != nil {
			t.Fatal(err)
		}
		b := &bundleImages{src: filepath.Join(dir, "store"), changedJar: randBytes(102, 300<<10), appJar: randBytes(202, 200<<10)}
		build := func(name, libDir string, files map[string][]byte) *image.ExportResult {
			ctx := filepath.Join(dir, strings.NewReplacer(":", "-", "/", "-").Replace(name))
			for p, data := range files {
				putFile(t, filepath.Join(ctx, "rootfs", libDir, p), data)
			}
			putFile(t, filepath.Join(ctx, "Dockerfile"), []byte("FROM "+env.BaseImage(t)+"\nCOPY rootfs/ /\n"))
			archive := buildOCIArchive(t, env, ctx, name)
			return bfExport(t, bin, b.src, "oci-archive:"+archive, name)
		}
		guava, jackson := randBytes(100, 300<<10), randBytes(101, 250<<10)
		b.v1 = build("example.test/bundle/app:1", "app", map[string][]byte{
			"libs/guava.jar": guava, "libs/jackson.jar": jackson, "libs/netty.jar": randBytes(103, 300<<10), "app.jar": randBytes(201, 200<<10),
		})
		b.v2 = build("example.test/bundle/app:2", "app", map[string][]byte{
			"libs/guava.jar": guava, "libs/jackson.jar": jackson, "libs/netty.jar": b.changedJar, "app.jar": b.appJar,
		})
		b.other = build("example.test/bundle/other:1", "srv/lib/ext", map[string][]byte{
			"guava-31.jar": guava, "jackson-core.jar": jackson, "netty.jar": randBytes(104, 300<<10), "svc.jar": randBytes(203, 100<<10),
		})
		bundleImg = b
	})
	if bundleImg == nil {
		t.Fatal("bundle images: an earlier test failed to build them")
	}
	return bundleImg
}

// bundleHeader runs `bundle inspect --json`.
func bundleHeader(t *testing.T, bin, file string) *bundle.Header {
	t.Helper()
	var h bundle.Header
	if err := json.Unmarshal([]byte(bfMust(t, bin, "bundle", "inspect", "--json", file).stdout), &h); err != nil {
		t.Fatal(err)
	}
	return &h
}

// applyJSON runs `bundle apply --json`, which must succeed.
func applyJSON(t *testing.T, bin, storeDir, file string, extra ...string) *bundle.ApplyResult {
	t.Helper()
	args := append([]string{"bundle", "apply", "--store", storeDir, "--progress", "quiet", "--json", file}, extra...)
	var res bundle.ApplyResult
	if err := json.Unmarshal([]byte(bfMust(t, bin, args...).stdout), &res); err != nil {
		t.Fatal(err)
	}
	return &res
}

// storeListing is every file under dir with its size: what "the store is
// unchanged" compares (blobs are immutable, so names and sizes suffice).
func storeListing(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		lines = append(lines, fmt.Sprintf("%s %v %d", rel, fi.Mode(), fi.Size()*int64(boolInt(!d.IsDir()))))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestBundleUpgrade: a first install (full v1 bundle) then the v1 -> v2
// upgrade, applied to a fresh store; each image hydrates to exactly the
// digest built at the source, containerd imports and runs it, and the
// --have inventory route makes the same bundle as --from.
func TestBundleUpgrade(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	dir := t.TempDir()
	full, up := filepath.Join(dir, "v1.bundle"), filepath.Join(dir, "v2.bundle")
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "quiet", "--full", b.v1.Name, "-o", full)
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "quiet", "--from", b.v1.Name, b.v2.Name, "-o", up)

	h := bundleHeader(t, bin, up)
	// v2 changed netty.jar and app.jar: exactly two new block members, and
	// the unchanged jars and base layer are required, not shipped.
	if got := h.Adds.Kinds[bundle.KindBlock].Blobs; got != 2 {
		t.Errorf("the upgrade ships %d block members, want 2", got)
	}
	if h.Requires.Blobs == 0 {
		t.Errorf("the upgrade requires nothing")
	}
	fi, _ := os.Stat(up)
	t.Logf("v2 bundle: %d bytes, adds %d blobs / %d bytes, requires %d blobs / %d bytes", fi.Size(), h.Adds.Blobs, h.Adds.Bytes, h.Requires.Blobs, h.Requires.Bytes)
	if max := int64(len(b.changedJar)+len(b.appJar)) + 64<<10; fi.Size() > max {
		t.Errorf("v2 bundle is %d bytes; the change itself is %d", fi.Size(), len(b.changedJar)+len(b.appJar))
	}

	site := filepath.Join(dir, "site")
	for _, step := range []struct {
		file string
		want *image.ExportResult
	}{{full, b.v1}, {up, b.v2}} {
		out := filepath.Join(dir, "out-{name}.tar")
		res := applyJSON(t, bin, site, step.file, "--output", "oci-archive:"+out)
		if len(res.Images) != 1 || res.Images[0].Standard.Digest != step.want.Standard.Digest {
			t.Fatalf("apply %s: %+v, want standard %s", step.file, res.Images, step.want.Standard.Digest)
		}
		if len(res.Images[0].Outputs) != 1 {
			t.Fatalf("outputs %v", res.Images[0].Outputs)
		}
		// The archive holds exactly the source image (same manifest digest).
		written := strings.TrimPrefix(res.Images[0].Outputs[0], "oci-archive:")
		var idx struct {
			Manifests []struct{ Digest string } `json:"manifests"`
		}
		xdir := t.TempDir()
		cmdOut(t, exec.Command("tar", "-xf", written, "-C", xdir, "index.json"))
		readJSONT(t, filepath.Join(xdir, "index.json"), &idx)
		if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != step.want.Standard.Digest.String() {
			t.Fatalf("%s holds %+v, want %s", written, idx.Manifests, step.want.Standard.Digest)
		}
	}
	bfMust(t, bin, "verify", "--store", site)

	// The changed blocked layer and block set travel as patches against
	// v1's; without patches the same upgrade is bigger and applies to the
	// same image.
	if h.Patched == nil {
		t.Errorf("the upgrade carries no patch: %+v", h.Blobs)
	}
	whole := filepath.Join(dir, "v2-whole.bundle")
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "quiet", "--no-patches", "--from", b.v1.Name, b.v2.Name, "-o", whole)
	if hw := bundleHeader(t, bin, whole); hw.Patched != nil || hw.Shipped() <= h.Shipped() {
		t.Errorf("--no-patches bundle: patched %+v, %d blob bytes; with patches %d", hw.Patched, hw.Shipped(), h.Shipped())
	}
	site2 := filepath.Join(dir, "site2")
	applyJSON(t, bin, site2, full, "--materialize=false")
	if res := applyJSON(t, bin, site2, whole); res.Images[0].Standard.Digest != b.v2.Standard.Digest {
		t.Errorf("--no-patches bundle applied to %s, want %s", res.Images[0].Standard.Digest, b.v2.Standard.Digest)
	}

	// containerd imports the written v2 archive and runs it.
	_, ctr := env.Containerd(t)
	archiveOut, err := bundle.OutputFor("oci-archive:"+filepath.Join(dir, "out-{name}.tar"), b.v2.Name)
	if err != nil {
		t.Fatal(err)
	}
	archive := strings.TrimPrefix(archiveOut, "oci-archive:")
	cmdOut(t, ctr("images", "import", archive))
	t.Cleanup(func() { _ = ctr("images", "rm", b.v2.Name).Run() })
	out := cmdOut(t, ctr("run", "--rm", b.v2.Name, "bundle-upgrade-run", "sha256sum", "/app/libs/netty.jar", "/app/app.jar"))
	for _, want := range []string{sha256Hex(b.changedJar), sha256Hex(b.appJar)} {
		if !strings.Contains(out, want) {
			t.Errorf("ctr run printed %q, want %s", out, want)
		}
	}

	// The site's inventory (after v1 only) gives the same bundle as --from.
	site1 := filepath.Join(dir, "site1")
	applyJSON(t, bin, site1, full)
	inv := filepath.Join(dir, "site1.inventory")
	bfMust(t, bin, "inventory", "--store", site1, "-o", inv)
	viaHave := filepath.Join(dir, "v2-have.bundle")
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "quiet", "--have", inv, b.v2.Name, "-o", viaHave)
	a, _ := os.ReadFile(up)
	c, _ := os.ReadFile(viaHave)
	if string(a) != string(c) {
		t.Errorf("--have %s and --from %s make different bundles (%d vs %d bytes)", inv, b.v1.Name, len(c), len(a))
		for _, p := range []string{up, viaHave} {
			for _, bl := range bundleHeader(t, bin, p).Blobs {
				t.Logf("%s: %s %+v", filepath.Base(p), bl, bl.Patch)
			}
		}
	}
	ifi, _ := os.Stat(inv)
	t.Logf("inventory of the site: %d bytes", ifi.Size())
}

// TestBundleMissingBase: the upgrade applied to a store that lacks part of
// v1 fails before writing anything and lists what is missing.
func TestBundleMissingBase(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	dir := t.TempDir()
	full, up := filepath.Join(dir, "v1.bundle"), filepath.Join(dir, "v2.bundle")
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "quiet", "--full", b.v1.Name, "-o", full)
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "quiet", "--from", b.v1.Name, b.v2.Name, "-o", up)

	// A fresh store lacks all of v1.
	empty := filepath.Join(dir, "empty")
	openStoreT(t, empty) // creates the store (read verbs such as inventory do not)
	before := storeListing(t, empty)
	r := bfRun(t, bin, "bundle", "apply", "--store", empty, "--progress", "quiet", up)
	if r.code != 1 || !strings.Contains(r.stderr, "lacks") {
		t.Fatalf("apply to an empty store: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if after := storeListing(t, empty); after != before {
		t.Errorf("a refused apply changed the store")
	}

	// A store with v1 minus two of its block members (guava and jackson,
	// which v2 still uses).
	site := filepath.Join(dir, "site")
	applyJSON(t, bin, site, full)
	src, err := store.Open(b.src)
	if err != nil {
		t.Fatal(err)
	}
	img, err := image.Resolve(ctxT(t), src, b.v1.Name)
	if err != nil {
		t.Fatal(err)
	}
	var lost []string
	for _, l := range img.Manifests[0].Layers {
		members := stubMembers(t, src, l)
		for _, keep := range [][]byte{randBytes(100, 300<<10), randBytes(101, 250<<10)} {
			if m, ok := members[digest.FromBytes(keep)]; ok {
				lost = append(lost, m.Digest.String())
			}
		}
	}
	if len(lost) != 2 {
		t.Fatalf("found %d of the shared members in v1", len(lost))
	}
	for _, d := range lost {
		if err := os.Remove(filepath.Join(site, "blobs", "sha256", strings.TrimPrefix(d, "sha256:"))); err != nil {
			t.Fatal(err)
		}
	}
	before = storeListing(t, site)
	r = bfRun(t, bin, "bundle", "apply", "--store", site, "--progress", "quiet", up)
	if r.code != 1 {
		t.Fatalf("apply to a store missing part of v1: exit %d\n%s", r.code, r.stderr)
	}
	for _, d := range lost {
		if !strings.Contains(r.stderr, d) {
			t.Errorf("the error does not list %s:\n%s", d, r.stderr)
		}
	}
	if after := storeListing(t, site); after != before {
		t.Errorf("a refused apply changed the store")
	}
}

// TestBundleCorruptChangesNothing: a truncated bundle and a bundle with one
// flipped byte fail, and the store is as it was.
func TestBundleCorruptChangesNothing(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	dir := t.TempDir()
	full := filepath.Join(dir, "v1.bundle")
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "quiet", "--full", b.v1.Name, "-o", full)
	data, err := os.ReadFile(full)
	if err != nil {
		t.Fatal(err)
	}
	site := filepath.Join(dir, "site")
	if _, err := store.Create(site); err != nil {
		t.Fatal(err)
	}
	bfMust(t, bin, "inventory", "--store", site, "-o", filepath.Join(dir, "inv"))
	before := storeListing(t, site)
	cases := map[string][]byte{
		"truncated in the header": data[:700],
		"truncated in the middle": data[:len(data)/2],
		"truncated at the end":    data[:len(data)-1500],
	}
	for _, off := range []int{len(data) / 3, len(data) - 3000} {
		bad := append([]byte(nil), data...)
		bad[off] ^= 0x40
		cases[fmt.Sprintf("byte %d flipped", off)] = bad
	}
	for name, content := range cases {
		p := filepath.Join(dir, "bad.bundle")
		if err := os.WriteFile(p, content, 0o644); err != nil {
			t.Fatal(err)
		}
		r := bfRun(t, bin, "bundle", "apply", "--store", site, "--progress", "quiet", p)
		if r.code != 1 {
			t.Errorf("%s: exit %d", name, r.code)
		}
		t.Logf("%s: %s", name, strings.TrimSpace(r.stderr))
		if after := storeListing(t, site); after != before {
			t.Fatalf("%s: the store changed", name)
		}
	}
}

// TestBundleApplySIGKILL: apply killed with SIGKILL at several moments (each
// time into a fresh store), then run again, succeeds; verify passes after the
// kill (no partial blob is ever visible under its name) and at the end.
func TestBundleApplySIGKILL(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	dir := t.TempDir()
	full := filepath.Join(dir, "all.bundle")
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "quiet", "--full", b.v1.Name, b.v2.Name, b.other.Name, "-o", full)
	hydrated := map[string]bool{}
	src, err := store.Open(b.src)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := bundle.Closures(ctxT(t), src, []string{b.v1.Name, b.v2.Name, b.other.Name})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		for _, l := range c.Hydrated {
			hydrated[l.Digest.String()] = true
		}
	}
	after := func(d time.Duration) func(string, time.Duration) bool {
		return func(_ string, since time.Duration) bool { return since >= d }
	}
	atLine := func(prefix string) func(string, time.Duration) bool {
		return func(line string, _ time.Duration) bool { return strings.HasPrefix(line, prefix) }
	}
	points := []struct {
		what string
		when func(line string, since time.Duration) bool
	}{
		{"after 5ms", after(5 * time.Millisecond)},
		{"after 20ms", after(20 * time.Millisecond)},
		{"at the first verify line", atLine("verify:")},
		{"at the first ingest line", atLine("ingest:")},
		// Right after the last blob is ingested: before or while tagging and
		// hydrating into the store.
		{"after the last ingest line", func(line string, _ time.Duration) bool {
			var done, total string
			n, _ := fmt.Sscanf(line, "ingest: %s of %s", &done, &total)
			return n == 2 && done == total
		}},
		{"while writing an output", atLine("hydrate:")},
	}
	type point = struct {
		what string
		when func(line string, since time.Duration) bool
	}
	// killAndRerun applies file to site with the output, kills it at p,
	// checks the store verifies, and re-runs it to the end.
	killAndRerun := func(site, file, output string, p point, want []*image.ExportResult) {
		cmd := exec.Command(bin, "bundle", "apply", "--store", site, "--progress", "plain", "--output", output, file)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stderr)
		killed := false
		for !killed && sc.Scan() {
			if p.when(sc.Text(), time.Since(start)) {
				killed = cmd.Process.Signal(syscall.SIGKILL) == nil
			}
		}
		if !killed && p.when("", time.Since(start)) {
			killed = cmd.Process.Signal(syscall.SIGKILL) == nil
		}
		for sc.Scan() {
		}
		err = cmd.Wait()
		t.Logf("%s: killed %s: %v after %s", filepath.Base(file), p.what, err, time.Since(start).Round(time.Millisecond))
		if err == nil && strings.HasPrefix(p.what, "at") {
			t.Errorf("%s: killed %s: apply was not killed", filepath.Base(file), p.what)
		}
		// Whatever happened, the store verifies: every blob is complete,
		// and standard layers not rebuilt yet (killed between tag and
		// materialize) are hydratable, not missing.
		checkVerifyAfterKill(t, bin, site, hydrated, p.what)
		// And a re-run completes.
		res := applyJSON(t, bin, site, file, "--output", output)
		for j, w := range want {
			if res.Images[j].Name != w.Name || res.Images[j].Standard.Digest != w.Standard.Digest {
				t.Errorf("%s: killed %s, re-run: image %d is %s %s, want %s %s", filepath.Base(file), p.what, j, res.Images[j].Name, res.Images[j].Standard.Digest, w.Name, w.Standard.Digest)
			}
		}
		bfMust(t, bin, "verify", "--store", site)
		if again := applyJSON(t, bin, site, file); again.Ingested.Blobs != 0 {
			t.Errorf("%s: killed %s: a third run ingested %d blobs", filepath.Base(file), p.what, again.Ingested.Blobs)
		}
	}
	for i, p := range points {
		site := filepath.Join(dir, fmt.Sprintf("site%d", i))
		outs := filepath.Join(dir, fmt.Sprintf("out%d", i))
		if err := os.MkdirAll(outs, 0o755); err != nil {
			t.Fatal(err)
		}
		killAndRerun(site, full, "oci-archive:"+filepath.Join(outs, "{name}.tar"), p, []*image.ExportResult{b.v1, b.v2, b.other})
	}

	// An upgrade whose blocked layer, block set and config travel as
	// patches, killed while it is checked and ingested: the same holds.
	v1 := filepath.Join(dir, "v1.bundle")
	up := filepath.Join(dir, "up.bundle")
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "quiet", "--full", b.v1.Name, "-o", v1)
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "quiet", "--from", b.v1.Name, b.v2.Name, "-o", up)
	if h := bundleHeader(t, bin, up); h.Patched == nil {
		t.Fatalf("the upgrade carries no patch")
	}
	for i, p := range points[2:5] {
		site := filepath.Join(dir, fmt.Sprintf("up-site%d", i))
		applyJSON(t, bin, site, v1)
		killAndRerun(site, up, "oci:"+filepath.Join(dir, fmt.Sprintf("up-out%d", i)), p, []*image.ExportResult{b.v2})
	}
}

// checkVerifyAfterKill runs verify on a store left by a killed apply: it
// must pass, and the only absent standard layers it may report as
// hydratable are ones hydrate rebuilds (hydrated).
func checkVerifyAfterKill(t *testing.T, bin, site string, hydrated map[string]bool, what string) {
	t.Helper()
	v := verifyJSON(t, bin, site)
	if len(v.Problems) == 0 && (v.Empty || strings.HasPrefix(v.Error, "no store at")) {
		// Killed before anything was committed: the store is missing or
		// empty, which verify reports (exit 1: nothing to verify), and
		// nothing half-written is there.
		t.Logf("killed %s: nothing was written (verify: %s)", what, map[bool]string{true: "empty store", false: v.Error}[v.Empty])
		return
	}
	if !v.OK || v.code != 0 || len(v.Problems) != 0 {
		t.Errorf("killed %s: verify: exit %d, ok %v, problems %+v", what, v.code, v.OK, v.Problems)
	}
	for _, h := range v.Hydratable {
		if !hydrated[h.Digest.String()] {
			t.Errorf("killed %s: verify calls %s hydratable; it is not a layer hydrate rebuilds", what, h.Digest)
		}
	}
	t.Logf("killed %s: verify passes with %d standard layer(s) absent but hydratable", what, len(v.Hydratable))
}

type verifyResult struct {
	code       int
	OK         bool               `json:"ok"`
	Empty      bool               `json:"empty"` // an empty store: nothing verified
	Error      string             `json:"error"` // verify could not run (e.g. no store)
	Problems   []store.Problem    `json:"problems"`
	Hydratable []store.Hydratable `json:"hydratable"`
}

// verifyJSON runs `blockfile verify --json` on storeDir.
func verifyJSON(t *testing.T, bin, storeDir string) verifyResult {
	t.Helper()
	r := bfRun(t, bin, "verify", "--json", "--store", storeDir)
	v := verifyResult{code: r.code}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("verify --json --store %s printed %q (%s): %v", storeDir, r.stdout, r.stderr, err)
	}
	return v
}

// TestBundleApplyNoMaterialize: after `apply --materialize=false` the store
// holds no standard layer that hydrate rebuilds; verify passes and lists
// exactly those as hydratable, gc removes nothing, and hydrate still writes
// the standard image.
func TestBundleApplyNoMaterialize(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	dir := t.TempDir()
	full := filepath.Join(dir, "v1.bundle")
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "quiet", "--full", b.v1.Name, "-o", full)
	src, err := store.Open(b.src)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := bundle.Closures(ctxT(t), src, []string{b.v1.Name})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, l := range cs[0].Hydrated {
		want = append(want, l.Digest.String())
	}
	sort.Strings(want)
	if len(want) == 0 {
		t.Fatal("v1 has no layer that hydrate rebuilds; the test proves nothing")
	}

	site := filepath.Join(dir, "site")
	applyJSON(t, bin, site, full, "--materialize=false")
	for _, d := range want {
		if p := filepath.Join(site, "blobs", "sha256", strings.TrimPrefix(d, "sha256:")); fileExists(p) {
			t.Fatalf("apply --materialize=false rebuilt the standard layer %s", p)
		}
	}
	check := func(when string) {
		t.Helper()
		v := verifyJSON(t, bin, site)
		var got []string
		for _, h := range v.Hydratable {
			got = append(got, h.Digest.String())
		}
		sort.Strings(got)
		if v.code != 0 || !v.OK || len(v.Problems) != 0 || strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("verify %s: exit %d, ok %v, problems %+v, hydratable %v; want hydratable %v", when, v.code, v.OK, v.Problems, got, want)
		}
	}
	check("after apply --materialize=false")
	before := storeListing(t, site)
	bfMust(t, bin, "gc", "--store", site)
	if after := storeListing(t, site); after != before {
		t.Errorf("gc changed a store that holds only what v1 needs:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	check("after gc")
	if got := bfHydrate(t, bin, site, b.v1.Name, "oci-archive:"+filepath.Join(dir, "v1.tar")); !strings.Contains(got, b.v1.Standard.Digest.String()) {
		t.Errorf("hydrate printed %q, want the standard manifest %s", got, b.v1.Standard.Digest)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// TestBundleSharedBlocksCostOnce: two services sharing jars at different
// paths: a bundle of both carries each shared block once.
func TestBundleSharedBlocksCostOnce(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	dir := t.TempDir()
	one, both := filepath.Join(dir, "one.bundle"), filepath.Join(dir, "both.bundle")
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "quiet", "--full", b.v1.Name, "-o", one)
	bfMust(t, bin, "bundle", "create", "--store", b.src, "--progress", "quiet", "--full", b.v1.Name, b.other.Name, "-o", both)
	h1, h2 := bundleHeader(t, bin, one), bundleHeader(t, bin, both)
	// v1: busybox, guava, jackson, netty, app.jar; the other service adds
	// only its netty and svc.jar.
	if got, one := h2.Adds.Kinds[bundle.KindBlock].Blobs, h1.Adds.Kinds[bundle.KindBlock].Blobs; got != one+2 {
		t.Errorf("both images ship %d block members, v1 alone %d: want 2 more (guava and jackson once)", got, one)
	}
	extra := h2.Adds.Kinds[bundle.KindBlock].Bytes - h1.Adds.Kinds[bundle.KindBlock].Bytes
	if limit := int64(300<<10+100<<10) + 4096; extra > limit {
		t.Errorf("the second service adds %d bytes of blocks, want at most %d (its own two jars)", extra, limit)
	}
	// The base layer (busybox) is shared too.
	if h2.Adds.Kinds[bundle.KindLayer].Blobs != h1.Adds.Kinds[bundle.KindLayer].Blobs {
		t.Errorf("layers without blocks: %d with both images, %d with one", h2.Adds.Kinds[bundle.KindLayer].Blobs, h1.Adds.Kinds[bundle.KindLayer].Blobs)
	}
}

// TestBundleIsPlainOCI: the layout inside a bundle, extracted with the real
// tar, is read by skopeo.
func TestBundleIsPlainOCI(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	dir := t.TempDir()
	for _, args := range [][]string{
		{"--full", b.v1.Name},
		{"--from", b.v1.Name, b.v2.Name},
	} {
		file := filepath.Join(dir, "b.bundle")
		bfMust(t, bin, append(append([]string{"bundle", "create", "--store", b.src, "--progress", "quiet"}, args...), "-o", file)...)
		x := t.TempDir()
		cmdOut(t, exec.Command("tar", "-xf", file, "-C", x))
		name := args[len(args)-1]
		want := b.v1
		if name == b.v2.Name {
			want = b.v2
		}
		raw := cmdOut(t, exec.Command("skopeo", "inspect", "--raw", "oci:"+x+":"+name))
		if got := "sha256:" + sha256Hex([]byte(strings.TrimSuffix(raw, "\n"))); got != want.Index.Digest.String() && "sha256:"+sha256Hex([]byte(raw)) != want.Index.Digest.String() {
			t.Errorf("skopeo inspect --raw oci:%s:%s: digest %s, want the image index %s", x, name, got, want.Index.Digest)
		}
	}
}
