package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/bundle"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/integration/harness"
)

// svcSource is a small Go service that links net/http, TLS and JSON (a
// binary of several MB); extra is code v2 adds, so the linker lays the
// whole text out again and every address after it moves.
func svcSource(extra string) string {
	return `package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
)

type status struct {
	Name    string ` + "`json:\"name\"`" + `
	Version string ` + "`json:\"version\"`" + `
}

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(status{Name: "svc", Version: version()})
	})
` + extra + `
	srv := &http.Server{Addr: os.Getenv("ADDR"), Handler: mux, TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
`
}

// buildSvc builds svcSource(extra) with the toolchain on PATH (the one the
// harness builds with) and returns the binary.
func buildSvc(t *testing.T, dir, extra, version string) []byte {
	t.Helper()
	putFile(t, filepath.Join(dir, "go.mod"), []byte("module example.com/svc\n\ngo 1.26\n"))
	putFile(t, filepath.Join(dir, "main.go"), []byte(svcSource(extra)))
	putFile(t, filepath.Join(dir, "version.go"), []byte("package main\n\nfunc version() string { return \""+version+"\" }\n"))
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "svc")
	cmd := exec.Command(goCmd, "build", "-trimpath", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build in %s: %v\n%s", dir, err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestBundleDeltaRebuiltBinaryWithinXdelta (issue 11, "every upgrade, on any
// image, at most 1.5x xdelta3 -9 of its changed layers plus 32 KiB"): an
// upgrade that rebuilds a real binary after a small source change (two
// builds of one Go program: the linker moves code, addresses and tables
// through the whole file, as a security rebuild of a package does), beside
// files that do not change. The bundle carries the binary as a delta, is at
// most 1.5x what `xdelta3 -9` makes of the changed layer tar (source window
// over the whole old tar) plus 32 KiB, and applies at a site holding v1 to
// the exact image.
func TestBundleDeltaRebuiltBinaryWithinXdelta(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	if _, err := exec.LookPath("xdelta3"); err != nil {
		t.Fatalf("xdelta3 is needed (scripts/setup.sh installs it): %v", err)
	}
	work := t.TempDir()
	v1bin := buildSvc(t, filepath.Join(work, "svc-v1"), "", "1.0.0")
	v2bin := buildSvc(t, filepath.Join(work, "svc-v2"), `	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		fmt.Fprintf(w, "ok %s %d\n", version(), len(r.Header))
	})
`, "1.0.1")
	if len(v1bin) < 1<<20 || string(v1bin[:4]) != "\x7fELF" {
		t.Fatalf("the v1 service is %d bytes: want an ELF binary of some MB", len(v1bin))
	}
	// Files that stay: a config and a larger data file (a block both times).
	conf := []byte("listen: :8080\nlog: info\n")
	data := modulesLike(42, 2<<20)
	names := []string{"etc/svc/config.yaml", "usr/bin/svc", "usr/share/svc/data.bin"}
	trees := map[string]map[string][]byte{
		"v1": {names[0]: conf, names[1]: v1bin, names[2]: data},
		"v2": {names[0]: conf, names[1]: v2bin, names[2]: data},
	}
	src, site := filepath.Join(work, "src"), filepath.Join(work, "site")
	std := map[string]digest.Digest{}
	for _, v := range []string{"v1", "v2"} {
		writeFilesLayout(t, filepath.Join(work, v), trees[v], names)
		putFile(t, filepath.Join(work, v+".tar"), filesTar(t, trees[v], names))
		var res image.ExportResult
		if err := json.Unmarshal([]byte(bfMust(t, bin, "export", "--store", src, "--json", "--progress", "none", "oci:"+filepath.Join(work, v), "svc:"+v).stdout), &res); err != nil {
			t.Fatal(err)
		}
		std[v] = res.Standard.Digest
	}

	// The baseline, in the same run: xdelta3 -9 of the changed layer tar,
	// its source window covering the whole old tar (as the bench does).
	oldTar, newTar, xd := filepath.Join(work, "v1.tar"), filepath.Join(work, "v2.tar"), filepath.Join(work, "v1-v2.xdelta")
	fi, err := os.Stat(oldTar)
	if err != nil {
		t.Fatal(err)
	}
	window := max(fi.Size(), 1<<20)
	if out, err := exec.Command("xdelta3", "-9", "-f", "-e", "-B", fmt.Sprint(window), "-s", oldTar, newTar, xd).CombinedOutput(); err != nil {
		t.Fatalf("xdelta3: %v\n%s", err, out)
	}
	xfi, err := os.Stat(xd)
	if err != nil {
		t.Fatal(err)
	}

	full, up := filepath.Join(work, "v1.bundle"), filepath.Join(work, "v2.bundle")
	bfMust(t, bin, "bundle", "create", "--store", src, "--progress", "none", "--full", "svc:v1", "-o", full)
	applyJSON(t, bin, site, full)
	bfMust(t, bin, "bundle", "create", "--store", src, "--progress", "none", "--from", "svc:v1", "svc:v2", "-o", up)
	ufi, err := os.Stat(up)
	if err != nil {
		t.Fatal(err)
	}
	limit := 1.5*float64(xfi.Size()) + 32<<10
	t.Logf("rebuilt binary %d -> %d bytes: bundle %d bytes, xdelta3 -9 of the layer tar %d bytes (bundle/xdelta3 %.2f), limit %.0f",
		len(v1bin), len(v2bin), ufi.Size(), xfi.Size(), float64(ufi.Size())/float64(xfi.Size()), limit)
	if float64(ufi.Size()) > limit {
		t.Errorf("bundle of %d bytes for a rebuilt binary, over 1.5x xdelta3 -9 of the layer (%d) + 32 KiB", ufi.Size(), xfi.Size())
	}
	deltas := 0
	for _, b := range bundleHeader(t, bin, up).Blobs {
		if b.Patch != nil && b.Patch.Encoding == bundle.PatchDeltaMember {
			deltas++
			if b.Patch.Path != names[1] {
				t.Errorf("a delta for %s, want only %s", b.Patch.Path, names[1])
			}
		}
	}
	if deltas != 1 {
		t.Errorf("the bundle holds %d block deltas, want 1 (the rebuilt binary)", deltas)
	}
	if inspect := bfMust(t, bin, "bundle", "inspect", up).stdout; !strings.Contains(inspect, "delta "+names[1]) {
		t.Errorf("bundle inspect does not name the delta of %s:\n%s", names[1], inspect)
	}
	res := applyJSON(t, bin, site, up)
	if got := res.Images[0].Standard.Digest; got != std["v2"] {
		t.Errorf("applied %s, exported %s", got, std["v2"])
	}
	if v := verifyJSON(t, bin, site); v.code != 0 || !v.OK || len(v.Problems) != 0 {
		t.Errorf("verify after the upgrade: exit %d, problems %+v", v.code, v.Problems)
	}
}
