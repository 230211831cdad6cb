package integration

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/integration/harness"
)

// serveImage is the bundle tests' v1 image as a site holds it after a full
// bundle applied with --materialize=false (blocked form only), and what a
// client must get from it.
type serveImage struct {
	site     string
	name     string // example.test/bundle/app:1
	repo     string // example.test/bundle/app (repository as a direct client names it)
	index    digest.Digest
	standard digest.Digest
	layers   []ocispec.Descriptor // standard manifest's layers
	hydrate  []digest.Digest      // layers the site holds only in blocked form
	appSum   string               // sha256sum of /app/app.jar
}

func getServeImage(t *testing.T) *serveImage {
	t.Helper()
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	img, err := image.Resolve(ctxT(t), openStoreT(t, b.src), b.v1.Name)
	if err != nil {
		t.Fatal(err)
	}
	si := &serveImage{
		site:     siteStore(t, bin, b.src, b.v1.Name),
		name:     b.v1.Name,
		repo:     strings.TrimSuffix(b.v1.Name, ":1"),
		index:    b.v1.Index.Digest,
		standard: b.v1.Standard.Digest,
		layers:   img.Manifests[0].Manifest.Layers,
		appSum:   sha256Hex(randBytes(201, 200<<10)),
	}
	for _, l := range img.Manifests[0].Layers {
		if l.HasBlocks() {
			si.hydrate = append(si.hydrate, l.Standard.Digest)
			if fileExists(filepath.Join(si.site, "blobs", "sha256", l.Standard.Digest.Encoded())) {
				t.Fatalf("site store holds the standard layer %s; the test would prove nothing", l.Standard.Digest)
			}
		}
	}
	if len(si.hydrate) == 0 {
		t.Fatal("v1 has no layer with blocks")
	}
	return si
}

// TestServeContainerdMirror (must-hold 1): containerd, configured with a
// hosts.toml mirror entry for example.test pointing at serve, pulls and
// runs an image the site holds only in blocked form; manifest and layer
// digests are the exact standard ones, each hydrated layer once.
func TestServeContainerdMirror(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	si := getServeImage(t)
	sp := startServe(t, si.site)
	_, ctr := env.Containerd(t)

	hosts := filepath.Join(t.TempDir(), "certs.d")
	// example.test does not resolve: the pull can only go through the mirror.
	putFile(t, filepath.Join(hosts, "example.test", "hosts.toml"), []byte(fmt.Sprintf(`server = "https://example.test"

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, sp.addr)))
	// containerd must fetch the layers, not find them from another test.
	_ = ctr("images", "rm", "--sync", si.name).Run()
	for _, l := range si.layers {
		_ = ctr("content", "rm", l.Digest.String()).Run()
	}
	cmdOut(t, ctr("images", "pull", "--hosts-dir", hosts, si.name))
	t.Cleanup(func() { _ = ctr("images", "rm", "--sync", si.name).Run() })

	if ls := cmdOut(t, ctr("images", "ls")); !lineHas(ls, si.name, si.index.String()) {
		t.Errorf("ctr images ls does not show %s at the stored index %s:\n%s", si.name, si.index, ls)
	}
	content := cmdOut(t, ctr("content", "ls", "-q"))
	for _, d := range append([]digest.Digest{si.standard}, descDigests(si.layers)...) {
		if !strings.Contains(content, d.String()) {
			t.Errorf("containerd's content store lacks %s after the pull", d)
		}
	}
	out := cmdOut(t, ctr("run", "--rm", si.name, "serve-ctr-run", "sha256sum", "/app/app.jar"))
	if want := si.appSum + "  /app/app.jar\n"; out != want {
		t.Errorf("ctr run printed %q, want %q", out, want)
	}
	checkHydratedOnce(t, sp, si.hydrate)
}

// TestServeBuildKitFrom (must-hold 1): BuildKit builds FROM an image served
// from blocked form; the result carries the exact base layers.
func TestServeBuildKitFrom(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	si := getServeImage(t)
	sp := startServe(t, si.site)
	dir := t.TempDir()
	putFile(t, filepath.Join(dir, "Dockerfile"), []byte(fmt.Sprintf("FROM %s/%s:1\nRUN sha256sum /app/app.jar > /app.sum\n", sp.addr, si.repo)))
	out := filepath.Join(t.TempDir(), "out.tar")
	cmdOut(t, env.Buildctl(t, "build", "--frontend", "dockerfile.v0",
		"--local", "context="+dir, "--local", "dockerfile="+dir,
		"--output", "type=oci,dest="+out+",name=serve-from:1"))
	layoutDir, layers := archiveLayers(t, out)
	if len(layers) != len(si.layers)+1 {
		t.Fatalf("built image has %d layers, want the %d base layers + 1", len(layers), len(si.layers))
	}
	for i, l := range si.layers {
		if layers[i].Digest != l.Digest {
			t.Errorf("base layer %d: %s, want %s", i, layers[i].Digest, l.Digest)
		}
	}
	sum := tarFile(t, filepath.Join(layoutDir, "blobs", "sha256", layers[len(layers)-1].Digest.Encoded()), "app.sum")
	if want := si.appSum + "  /app/app.jar\n"; sum != want {
		t.Errorf("RUN sha256sum wrote %q, want %q", sum, want)
	}
	checkHydratedOnce(t, sp, si.hydrate)
}

// TestServeSkopeoCopy (must-hold 1): skopeo copies the platform image
// (the standard manifest digest) and, with --all, the whole index the tag
// names, blocked form included, digest for digest.
func TestServeSkopeoCopy(t *testing.T) {
	harness.RequireIntegration(t)
	si := getServeImage(t)
	sp := startServe(t, si.site)
	for _, c := range []struct {
		args []string
		want digest.Digest
	}{
		{nil, si.standard},
		{[]string{"--all"}, si.index},
	} {
		dst := filepath.Join(t.TempDir(), "oci")
		args := append([]string{"copy", "--src-tls-verify=false", "--override-os", "linux", "--override-arch", "amd64"}, c.args...)
		args = append(args, "docker://"+sp.addr+"/"+si.repo+":1", "oci:"+dst+":copied")
		cmdOut(t, exec.Command("skopeo", args...))
		var idx ocispec.Index
		readJSONT(t, filepath.Join(dst, "index.json"), &idx)
		if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != c.want {
			t.Errorf("skopeo copy %v: layout index %+v, want %s", c.args, idx.Manifests, c.want)
		}
		for _, l := range si.layers {
			if !fileExists(filepath.Join(dst, "blobs", "sha256", l.Digest.Encoded())) {
				t.Errorf("skopeo copy %v: layer %s missing", c.args, l.Digest)
			}
		}
	}
	checkHydratedOnce(t, sp, si.hydrate)
}

// TestServeConcurrentPulls (must-hold 3): 50 clients pull one image at
// once from a site holding only its blocked form: every pull is exact,
// every layer is hydrated once, and serve's peak RSS stays under 300 MiB.
// The image is the rich fixture (a 110 MB layer), so 50 pulls move 5.5 GB.
func TestServeConcurrentPulls(t *testing.T) {
	harness.RequireIntegration(t)
	bin := harness.Get(t).BlockfileBin(t)
	f := richFixture(t)
	img, err := image.Resolve(ctxT(t), openStoreT(t, f.store), f.name)
	if err != nil {
		t.Fatal(err)
	}
	var hydrate []digest.Digest
	for _, l := range img.Manifests[0].Layers {
		if l.HasBlocks() {
			hydrate = append(hydrate, l.Standard.Digest)
		}
	}
	site := siteStore(t, bin, f.store, f.name)
	sp := startServe(t, site)
	repo, _, _ := strings.Cut(f.name, ":")
	ref := sp.addr + "/" + repo + ":1"
	const pulls = 50
	var wg sync.WaitGroup
	errs := make(chan error, pulls)
	start := time.Now()
	for i := range pulls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			md, layers, err := goPull(context.Background(), ref)
			if err != nil {
				errs <- fmt.Errorf("pull %d: %w", i, err)
				return
			}
			if md.String() != f.export.Standard.Digest.String() || len(layers) != len(img.Manifests[0].Manifest.Layers) {
				errs <- fmt.Errorf("pull %d: manifest %s with %d layers", i, md, len(layers))
				return
			}
			for j, l := range layers {
				if l.String() != img.Manifests[0].Manifest.Layers[j].Digest.String() {
					errs <- fmt.Errorf("pull %d: layer %d is %s", i, j, l)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	hwm := sp.vmHWM()
	t.Logf("%d concurrent pulls in %.1fs; serve peak RSS %s", pulls, time.Since(start).Seconds(), fmtKiB(hwm))
	if hwm >= 300<<10 {
		t.Errorf("serve peak RSS %s, want under 300 MiB", fmtKiB(hwm))
	}
	checkHydratedOnce(t, sp, hydrate)
}

// TestServeKillDuringHydrate (must-hold 6): serve is killed with SIGKILL
// while it hydrates (and keeps) a layer; restarted on the same store, a pull
// is exact, and verify finds the store clean.
func TestServeKillDuringHydrate(t *testing.T) {
	harness.RequireIntegration(t)
	bin := harness.Get(t).BlockfileBin(t)
	f := richFixture(t)
	img, err := image.Resolve(ctxT(t), openStoreT(t, f.store), f.name)
	if err != nil {
		t.Fatal(err)
	}
	var big image.Layer
	for _, l := range img.Manifests[0].Layers {
		if l.HasBlocks() && l.Standard.Size > big.Standard.Size {
			big = l
		}
	}
	site := siteStore(t, bin, f.store, f.name)
	repo, _, _ := strings.Cut(f.name, ":")
	sp := startServe(t, site, "--keep-hydrated")
	// Read the big layer slowly, so serve is mid-hydrate when it dies.
	resp, err := http.Get("http://" + sp.addr + "/v2/" + repo + "/blobs/" + big.Standard.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sp.logText(), "hydrate start") {
		t.Fatalf("serve is not hydrating:\n%s", sp.logText())
	}
	sp.kill()
	resp.Body.Close()
	if fileExists(filepath.Join(site, "blobs", "sha256", big.Standard.Digest.Encoded())) {
		t.Log("the layer was complete before the kill (fast machine); the restart still has to serve it exactly")
	}
	sp2 := startServe(t, site, "--keep-hydrated")
	// The killed serve's half-written layer is gone (its lock died with it).
	if left, _ := filepath.Glob(filepath.Join(site, "blockfile", "ingest", "serve-hydrate-*")); len(left) != 0 {
		t.Errorf("after restart, the killed hydration's temp files are still there: %v", left)
	}
	md, layers, err := goPull(context.Background(), sp2.addr+"/"+repo+":1")
	if err != nil {
		t.Fatalf("pull after restart: %v", err)
	}
	if md.String() != f.export.Standard.Digest.String() {
		t.Errorf("pull after restart: manifest %s, want %s", md, f.export.Standard.Digest)
	}
	for j, l := range layers {
		if l.String() != img.Manifests[0].Manifest.Layers[j].Digest.String() {
			t.Errorf("pull after restart: layer %d is %s", j, l)
		}
	}
	// The layer is kept (fsync, rename) after its last byte went out: give
	// serve the time to finish that before it is stopped.
	kept := filepath.Join(site, "blobs", "sha256", big.Standard.Digest.Encoded())
	for deadline := time.Now().Add(60 * time.Second); !fileExists(kept) && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	sp2.kill()
	if v := verifyJSON(t, bin, site); v.code != 0 || !v.OK || len(v.Problems) != 0 {
		t.Errorf("verify after kill and restart: exit %d, problems %+v", v.code, v.Problems)
	}
	if !fileExists(kept) {
		t.Errorf("--keep-hydrated: layer %s not kept within 60s of the second pull", big.Standard.Digest)
	}
}

// checkHydratedOnce: serve's log says each of want was hydrated exactly once.
func checkHydratedOnce(t *testing.T, sp *serveProc, want []digest.Digest) {
	t.Helper()
	got := sp.hydrations()
	for _, d := range want {
		if got[d.String()] != 1 {
			t.Errorf("layer %s hydrated %d times, want once", d, got[d.String()])
		}
	}
	if len(got) != len(want) {
		t.Errorf("hydrated %v, want exactly %v", got, want)
	}
}

func descDigests(ds []ocispec.Descriptor) []digest.Digest {
	var out []digest.Digest
	for _, d := range ds {
		out = append(out, d.Digest)
	}
	return out
}

// lineHas reports whether some line of s contains every one of parts.
func lineHas(s string, parts ...string) bool {
	for _, line := range strings.Split(s, "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return true
		}
	}
	return false
}

// tarFile returns the content of name in the gzip tar layer at p.
func tarFile(t testing.TB, p, name string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s not in layer %s: %v", name, p, err)
		}
		if strings.TrimPrefix(h.Name, "./") == name {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
	}
}

// TestServeContainerImage: the Dockerfile's serve-host target (the serve
// target's layout, from a host-built static binary) runs under containerd
// with the store bind-mounted at /store, and serves exact pulls.
func TestServeContainerImage(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	_, ctr := env.Containerd(t)
	si := getServeImage(t)
	ctxDir := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(ctxDir, "bin", "linux_amd64", "blockfile"), "./cmd/blockfile")
	build.Dir = env.Root
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	cmdOut(t, build)
	archive := filepath.Join(t.TempDir(), "serve.tar")
	const ref = "example.test/blockfile-serve:it"
	cmdOut(t, env.Buildctl(t, "build", "--frontend", "dockerfile.v0",
		"--local", "context="+ctxDir, "--local", "dockerfile="+env.Root,
		"--opt", "filename=Dockerfile", "--opt", "target=serve-host", "--opt", "platform=linux/amd64",
		"--output", "type=oci,dest="+archive+",name="+ref))
	cmdOut(t, ctr("images", "import", archive))
	t.Cleanup(func() { _ = ctr("images", "rm", ref).Run() })

	port, err := freeTCPPort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	const id = "serve-container-it"
	_ = ctr("task", "kill", "-s", "SIGKILL", id).Run()
	_ = ctr("containers", "rm", id).Run()
	// The image's default command with the address replaced: host network,
	// so the test reaches it on loopback.
	cmdOut(t, ctr("run", "-d", "--net-host",
		"--mount", "type=bind,src="+si.site+",dst=/store,options=rbind:rw",
		ref, id, "/bin/blockfile", "serve", "--store", "/store", "--addr", addr))
	t.Cleanup(func() {
		_ = ctr("task", "kill", "-s", "SIGKILL", id).Run()
		time.Sleep(500 * time.Millisecond)
		_ = ctr("task", "rm", "-f", id).Run()
		_ = ctr("containers", "rm", id).Run()
	})
	var md v1Hash
	var layers []v1Hash
	deadline := time.Now().Add(30 * time.Second)
	for {
		md, layers, err = goPull(context.Background(), addr+"/"+si.repo+":1")
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("pull from the serve container: %v", err)
	}
	if md.String() != si.standard.String() || len(layers) != len(si.layers) {
		t.Fatalf("pulled %s with %d layers, want %s with %d", md, len(layers), si.standard, len(si.layers))
	}
	for i, l := range layers {
		if l.String() != si.layers[i].Digest.String() {
			t.Errorf("layer %d: %s, want %s", i, l, si.layers[i].Digest)
		}
	}
}
