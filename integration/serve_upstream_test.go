package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/integration/harness"
)

// mirrorHosts writes a containerd hosts directory in which registry host
// is reached only through serve at addr: its server is an address nothing
// listens on, so a pull that does not go through serve fails instead of
// falling back to the registry.
func mirrorHosts(t *testing.T, host, addr string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs.d")
	putFile(t, filepath.Join(dir, host, "hosts.toml"), []byte(fmt.Sprintf(`server = "http://127.0.0.1:1"

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, addr)))
	return dir
}

// ctrForget removes an image and its blobs from containerd, so that the
// next pull fetches them.
func ctrForget(ctr func(...string) *exec.Cmd, ref string, blobs []digest.Digest) {
	_ = ctr("images", "rm", "--sync", ref).Run()
	for _, d := range blobs {
		_ = ctr("content", "rm", d.String()).Run()
	}
}

// TestServeUpstreamUpgrade (must-hold 2): containerd, with a hosts.toml
// mirror entry for the registry pointing at serve, pulls v1 and then v2
// through serve, whose store starts empty and is filled from the registry
// (v2 pushed with --delta-from v1). What serve downloads from the registry
// for v2 (counted by a proxy in front of it) is at most 1.5x the v1 -> v2
// bundle + 256 KiB, for the bundle test images (new blocks) and for images
// whose files changed a little (where the blocks alone are far over the
// bound and the pull must take the delta); containerd gets the exact index
// and layers; serve's store keeps the blocked form only and verifies clean.
func TestServeUpstreamUpgrade(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	b := getBundleImages(t)
	d := getDeltaImages(t)
	bin := env.BlockfileBin(t)
	reg := startOwnRegistry(t)
	px := startProxy(t, reg.addr)
	_, ctr := env.Containerd(t)
	for _, c := range []struct {
		label  string
		src    string
		v1, v2 *image.ExportResult
		runs   bool // has a shell and /app/app.jar (the bundle images)
	}{
		{"bundle-images", b.src, b.v1, b.v2, true},
		{"changed-a-little", d.src, d.v1, d.v2, false},
	} {
		t.Run(c.label, func(t *testing.T) {
			src := copyStore(t, c.src)
			ref1, ref2 := px.addr+"/"+c.label+"/app:v1", px.addr+"/"+c.label+"/app:v2"
			bfPush(t, bin, src, c.v1.Name, reg.addr+"/"+c.label+"/app:v1")
			bfPush(t, bin, src, c.v2.Name, reg.addr+"/"+c.label+"/app:v2", "--delta-from", c.v1.Name)

			site := filepath.Join(t.TempDir(), "site")
			sp := startServe(t, site, "--upstream", px.addr)
			hosts := mirrorHosts(t, px.addr, sp.addr)
			v2img, err := image.Resolve(ctxT(t), openStoreT(t, c.src), c.v2.Name)
			if err != nil {
				t.Fatal(err)
			}
			v2layers := v2img.Manifests[0].Manifest.Layers
			ctrForget(ctr, ref1, nil)
			ctrForget(ctr, ref2, descDigests(v2layers))
			t.Cleanup(func() { ctrForget(ctr, ref1, nil); ctrForget(ctr, ref2, nil) })

			px.reset()
			cmdOut(t, ctr("images", "pull", "--hosts-dir", hosts, ref1))
			t.Logf("v1 through serve (empty store): serve downloaded %d bytes from the registry", px.down.Load())

			px.reset()
			cmdOut(t, ctr("images", "pull", "--hosts-dir", hosts, ref2))
			down := px.down.Load()

			up := filepath.Join(t.TempDir(), "up.bundle")
			bfMust(t, bin, "bundle", "create", "--store", c.src, "--progress", "none", "--from", c.v1.Name, c.v2.Name, "-o", up)
			fi, err := os.Stat(up)
			if err != nil {
				t.Fatal(err)
			}
			limit := 1.5*float64(fi.Size()) + 256<<10
			t.Logf("v2 through serve holding v1: serve downloaded %d bytes from the registry; bundle v1 -> v2 %d, limit %.0f", down, fi.Size(), limit)
			if float64(down) > limit {
				t.Errorf("serve downloaded %d bytes for v2, over 1.5x the v1 -> v2 bundle (%d) + 256 KiB", down, fi.Size())
			}
			if !strings.Contains(sp.logText(), `msg="filled from upstream" ref=`+ref2) {
				t.Errorf("serve did not log the fill of %s:\n%s", ref2, sp.logText())
			}

			if ls := cmdOut(t, ctr("images", "ls")); !lineHas(ls, ref2, c.v2.Index.Digest.String()) {
				t.Errorf("ctr images ls does not show %s at the pushed index %s:\n%s", ref2, c.v2.Index.Digest, ls)
			}
			content := cmdOut(t, ctr("content", "ls", "-q"))
			for _, d := range append([]digest.Digest{c.v2.Standard.Digest}, descDigests(v2layers)...) {
				if !strings.Contains(content, d.String()) {
					t.Errorf("containerd's content store lacks %s after the pull", d)
				}
			}
			if c.runs {
				out := cmdOut(t, ctr("run", "--rm", ref2, "serve-upstream-run", "sha256sum", "/app/app.jar"))
				if want := sha256Hex(b.appJar) + "  /app/app.jar\n"; out != want {
					t.Errorf("ctr run printed %q, want %q", out, want)
				}
			}
			// serve kept the blocked form: the standard layers with blocks
			// were hydrated for containerd, not downloaded or stored.
			for _, l := range v2img.Manifests[0].Layers {
				if l.HasBlocks() && fileExists(filepath.Join(site, "blobs", "sha256", l.Standard.Digest.Encoded())) {
					t.Errorf("serve's store holds the standard layer %s", l.Standard.Digest)
				}
			}
			sp.kill()
			if v := verifyJSON(t, bin, site); v.code != 0 || !v.OK || len(v.Problems) != 0 {
				t.Errorf("verify of serve's store: exit %d, problems %+v", v.code, v.Problems)
			}
		})
	}
}

// TestServeUpstreamTamper (must-hold 4): the registry's answer for a block
// member has one byte flipped (by the proxy). The pull through serve fails,
// serve's log names the member's digest, and serve's store holds nothing
// of it: verify is clean and no tag was added. Once the registry answers
// right again, the same pull succeeds with the exact digests.
func TestServeUpstreamTamper(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	b := getBundleImages(t)
	bin := env.BlockfileBin(t)
	reg := startOwnRegistry(t)
	px := startProxy(t, reg.addr)
	bfPush(t, bin, copyStore(t, b.src), b.v1.Name, reg.addr+"/shop/app:v1")
	img, err := image.Resolve(ctxT(t), openStoreT(t, b.src), b.v1.Name)
	if err != nil {
		t.Fatal(err)
	}
	var member ocispec.Descriptor
	for _, l := range img.Manifests[0].Layers {
		for _, m := range l.Members {
			if m.Size > member.Size {
				member = m
			}
		}
	}
	if member.Digest == "" {
		t.Fatal("v1 has no block member")
	}
	// The fill reads a missing member either as its own blob or as a Range
	// of the standard layer that holds it (registry.PullOptions.HTTP):
	// the member's bytes are flipped on both paths.
	std, off := memberInStandard(t, b.src, b.v1.Name, member.Digest)
	px.setTamper(member.Digest.String())
	px.addTamperAt(std.String(), off)

	site := filepath.Join(t.TempDir(), "site")
	sp := startServe(t, site, "--upstream", px.addr)
	ref := sp.addr + "/shop/app:v1"
	if _, _, err := goPull(context.Background(), ref); err == nil {
		t.Fatal("the pull through serve succeeded with a tampered block upstream")
	} else {
		t.Logf("pull failed as it must: %v", err)
	}
	if !lineHas(sp.logText(), `msg="upstream fill failed"`, "ref="+px.addr+"/shop/app:v1", member.Digest.String()) {
		t.Errorf("no log line naming the fill of %s/shop/app:v1 and the block %s:\n%s", px.addr, member.Digest, sp.logText())
	}
	if fileExists(filepath.Join(site, "blobs", "sha256", member.Digest.Encoded())) {
		t.Errorf("the tampered member %s is in serve's store", member.Digest)
	}
	// Nothing of the failed fill is kept: no blob at all (the manifests
	// and the members that did verify were discarded with it), so verify
	// finds an empty store, and no problem.
	if left, _ := filepath.Glob(filepath.Join(site, "blobs", "sha256", "*")); len(left) != 0 {
		t.Errorf("the failed fill left %d blobs in serve's store: %v", len(left), left)
	}
	if v := verifyJSON(t, bin, site); !(v.code == 0 || v.Empty) || len(v.Problems) != 0 {
		t.Errorf("verify after the failed fill: exit %d (empty %v), problems %+v", v.code, v.Empty, v.Problems)
	}
	if ls := bfMust(t, bin, "ls", "--store", site).stdout; strings.Contains(ls, "shop/app") {
		t.Errorf("the failed fill tagged the image:\n%s", ls)
	}

	px.setTamper("")
	md, layers, err := goPull(context.Background(), ref)
	if err != nil {
		t.Fatalf("pull once the registry is fixed: %v", err)
	}
	if md.String() != b.v1.Standard.Digest.String() {
		t.Errorf("pulled %s, want %s", md, b.v1.Standard.Digest)
	}
	for i, l := range layers {
		if l.String() != img.Manifests[0].Manifest.Layers[i].Digest.String() {
			t.Errorf("layer %d: %s, want %s", i, l, img.Manifests[0].Manifest.Layers[i].Digest)
		}
	}
	sp.kill()
	if v := verifyJSON(t, bin, site); v.code != 0 || !v.OK || len(v.Problems) != 0 {
		t.Errorf("verify after the good fill: exit %d, problems %+v", v.code, v.Problems)
	}
}

// TestServeUpstreamPlainImage: an upstream image without a blocked form
// (the harness's base image, as BuildKit pushed it) is served with the
// registry's own digests: skopeo copy --all through serve writes the
// digest skopeo reads from the registry. The tag is then moved upstream
// (skopeo copies v1 over it) and, with --upstream-ttl 0, the next request
// serves the new image.
func TestServeUpstreamPlainImage(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	base := env.BaseImage(t)
	reg := startOwnRegistry(t)
	ref := reg.addr + "/plain/base:1"
	cmdOut(t, exec.Command("skopeo", "copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false", "docker://"+base, "docker://"+ref))
	want := skopeoDigest(t, ref, true)

	site := filepath.Join(t.TempDir(), "site")
	sp := startServe(t, site, "--upstream", reg.addr, "--upstream-ttl", "0")
	if got := skopeoDigest(t, sp.addr+"/plain/base:1", true); got != want {
		t.Errorf("skopeo copy --all through serve: %s, want the registry's %s", got, want)
	}
	if got := skopeoDigest(t, sp.addr+"/plain/base:1", false); got != skopeoDigest(t, ref, false) {
		t.Errorf("skopeo copy through serve: %s, want the registry's", got)
	}

	// Move the tag: a blockfile image pushed over it.
	b := getBundleImages(t)
	bin := env.BlockfileBin(t)
	bfPush(t, bin, copyStore(t, b.src), b.v1.Name, ref)
	if got := skopeoDigest(t, sp.addr+"/plain/base:1", true); got != b.v1.Index.Digest.String() {
		t.Errorf("after the tag moved upstream, serve answers %s, want the new index %s\n%s", got, b.v1.Index.Digest, sp.logText())
	}
	sp.kill()
	if v := verifyJSON(t, bin, site); v.code != 0 || !v.OK || len(v.Problems) != 0 {
		t.Errorf("verify: exit %d, problems %+v", v.code, v.Problems)
	}
}

// TestServeConformance runs the OCI distribution-spec conformance suite
// (tools/conformance, built by the harness) against serve, in its
// read-only mode: pushes and deletes off, the pull, HEAD, Range and tag
// list tests over content pre-seeded in the store. The store holds the
// image in blocked form only, so the standard layers the suite reads are
// hydrated on demand. The suite must pass.
func TestServeConformance(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	suite, err := env.Tool(ctxT(t), "oci-conformance")
	if err != nil {
		t.Fatalf("building the conformance suite: %v", err)
	}
	si := getServeImage(t)
	img, err := image.Resolve(ctxT(t), openStoreT(t, si.site), si.name)
	if err != nil {
		t.Fatal(err)
	}
	manifests := []string{si.index.String()}
	var blobs []string
	for _, m := range img.Manifests {
		manifests = append(manifests, m.Descriptor.Digest.String(), m.Blocked.Digest.String())
		blobs = append(blobs, m.Manifest.Config.Digest.String())
		for _, l := range m.Layers {
			blobs = append(blobs, l.Standard.Digest.String())
			if l.HasBlocks() {
				blobs = append(blobs, l.Blocked.Digest.String())
				manifests = append(manifests, l.BlockSet.Digest.String())
				for _, mb := range l.Members {
					blobs = append(blobs, mb.Digest.String())
				}
			}
		}
	}
	sp := startServe(t, si.site)
	results := t.TempDir()
	cmd := exec.Command(suite)
	cmd.Dir = results
	cmd.Env = append(os.Environ(),
		"OCI_REGISTRY="+sp.addr, "OCI_TLS=disabled",
		"OCI_REPO1="+si.repo, "OCI_REPO2="+si.repo,
		"OCI_RESULTS_DIR="+results, "OCI_VERSION=1.1", "OCI_LOG=warn",
		"OCI_API_PULL=true", "OCI_API_PUSH=false", "OCI_API_TAGS_LIST=true",
		"OCI_API_BLOBS_DELETE=false", "OCI_API_MANIFESTS_DELETE=false", "OCI_API_TAGS_DELETE=false",
		// serve has no referrers API (docs/SERVE.md).
		"OCI_API_REFERRER=false",
		"OCI_RO_DATA_TAGS=1",
		"OCI_RO_DATA_MANIFESTS="+strings.Join(manifests, " "),
		"OCI_RO_DATA_BLOBS="+strings.Join(blobs, " "),
	)
	out, err := cmd.CombinedOutput()
	t.Logf("conformance suite (%d manifests, %d blobs):\n%s", len(manifests), len(blobs), out)
	// The verdict is the report the suite prints. (This version of the
	// suite sometimes panics afterwards, in ReportResultsYAML writing
	// results.yaml, with a nil data entry: exit status 2 after a printed
	// Pass is that, and is not taken as serve's failure.)
	report := string(out)
	for _, want := range []string{"OCI Conformance Result: Pass", "Pass..........................:"} {
		if !strings.Contains(report, want) {
			t.Errorf("the suite's report lacks %q", want)
		}
	}
	for _, line := range strings.Split(report, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && (strings.HasPrefix(f[0], "FAIL....") || strings.HasPrefix(f[0], "Error....")) && f[1] != "0" {
			t.Errorf("the suite reports %s", strings.TrimSpace(line))
		}
	}
	if err != nil && !(strings.Contains(report, "OCI Conformance Result: Pass") && strings.Contains(report, "ReportResultsYAML")) {
		t.Errorf("the OCI conformance suite failed against serve: %v (results in %s)", err, results)
	}
}
