package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockfile/blockfile/blocks/registry"
	"github.com/blockfile/blockfile/integration/harness"
)

// ownRegistry is a distribution registry (Debian's docker-registry) of one
// test, with its own storage, that the test may stop, garbage-collect and
// start again on the same address.
type ownRegistry struct {
	t       testing.TB
	addr    string
	cfg     string
	bin     string
	cmd     *exec.Cmd
	logFile string
}

func startOwnRegistry(t testing.TB) *ownRegistry {
	t.Helper()
	bin := os.Getenv("BLOCKFILE_REGISTRY_BIN")
	if bin == "" {
		bin = "docker-registry"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		t.Fatalf("registry binary %q not found (apt-get install docker-registry): %v", bin, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yml")
	conf := fmt.Sprintf("version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "storage"), addr)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &ownRegistry{t: t, addr: addr, cfg: cfg, bin: path, logFile: filepath.Join(dir, "registry.log")}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *ownRegistry) start() {
	r.t.Helper()
	log, err := os.OpenFile(r.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		r.t.Fatal(err)
	}
	r.cmd = exec.Command(r.bin, "serve", r.cfg)
	r.cmd.Stdout, r.cmd.Stderr = log, log
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	log.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + r.addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(r.logFile)
			r.t.Fatalf("registry at %s did not start: %v\n%s", r.addr, err, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *ownRegistry) stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

// gc stops the registry, runs garbage-collect --delete-untagged and starts
// it again; it returns what garbage-collect printed.
func (r *ownRegistry) gc() string {
	r.t.Helper()
	r.stop()
	out, err := exec.Command(r.bin, "garbage-collect", "--delete-untagged", r.cfg).CombinedOutput()
	if err != nil {
		r.t.Fatalf("garbage-collect: %v\n%s", err, out)
	}
	r.start()
	return string(out)
}

// version is what the registry binary's --version prints.
func (r *ownRegistry) version() string {
	out, _ := exec.Command(r.bin, "--version").CombinedOutput()
	return string(out)
}

// proxy is a reverse proxy in front of a real registry: it counts the body
// bytes of every response (downloads) and request (uploads), and can flip
// one byte of a chosen blob on its way to the client, or ignore Range
// headers as some registries do.
type proxy struct {
	addr     string
	down, up atomic.Int64
	mu       sync.Mutex
	// tamper maps a blob digest whose served bytes get one byte flipped to
	// the blob offset of that byte (in whole responses and in Range
	// responses that hold it), or to -1: the middle byte of each response.
	tamper      map[string]int64
	ignoreRange bool // drop Range headers: answer with the whole blob
	blobGETs    []string
	rangeGETs   int
}

func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	u, err := url.Parse("http://" + target)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		body := io.Reader(resp.Body)
		if resp.Request.Method == http.MethodGet && strings.Contains(resp.Request.URL.Path, "/blobs/sha256:") {
			d := resp.Request.URL.Path[strings.LastIndex(resp.Request.URL.Path, "/")+1:]
			p.mu.Lock()
			p.blobGETs = append(p.blobGETs, d)
			at, flip := p.tamper[d]
			p.mu.Unlock()
			if flip {
				data, err := io.ReadAll(resp.Body)
				if err != nil {
					return err
				}
				var base int64 // the blob offset of data[0]
				if cr := resp.Header.Get("Content-Range"); cr != "" {
					if _, err := fmt.Sscanf(cr, "bytes %d-", &base); err != nil {
						return fmt.Errorf("proxy: Content-Range %q: %w", cr, err)
					}
				}
				switch {
				case at < 0 && len(data) > 0:
					data[len(data)/2] ^= 0x01
				case at >= base && at < base+int64(len(data)):
					data[at-base] ^= 0x01
				}
				body = bytes.NewReader(data)
			}
		}
		resp.Body = readCloser{&countingReader{r: body, n: &p.down}, resp.Body}
		return nil
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil {
			r.Body = readCloser{&countingReader{r: r.Body, n: &p.up}, r.Body}
		}
		if r.Header.Get("Range") != "" {
			p.mu.Lock()
			p.rangeGETs++
			if p.ignoreRange {
				r.Header.Del("Range")
			}
			p.mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	}))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	p.addr = l.Addr().String()
	return p
}

func (p *proxy) reset() {
	p.down.Store(0)
	p.up.Store(0)
	p.mu.Lock()
	p.blobGETs = nil
	p.rangeGETs = 0
	p.mu.Unlock()
}

func (p *proxy) setTamper(d string) { p.setTamperAt(d, -1) }

// setTamperAt flips the byte at offset at of blob d (at < 0: the middle
// byte of each response) wherever a response carries it, and no other
// blob's; d "" tampers with nothing.
func (p *proxy) setTamperAt(d string, at int64) {
	p.mu.Lock()
	p.tamper = nil
	p.mu.Unlock()
	if d != "" {
		p.addTamperAt(d, at)
	}
}

// addTamperAt flips the byte at offset at of blob d too (see setTamperAt).
func (p *proxy) addTamperAt(d string, at int64) {
	p.mu.Lock()
	if p.tamper == nil {
		p.tamper = map[string]int64{}
	}
	p.tamper[d] = at
	p.mu.Unlock()
}

func (p *proxy) setIgnoreRange(on bool) {
	p.mu.Lock()
	p.ignoreRange = on
	p.mu.Unlock()
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

type readCloser struct {
	io.Reader
	io.Closer
}

// bfPush runs `blockfile push --json` and decodes the result.
func bfPush(t testing.TB, bin, storeDir, name, ref string, extra ...string) *registry.PushResult {
	t.Helper()
	args := append([]string{"push", "--store", storeDir, "--json", "--progress", "none"}, extra...)
	r := bfMust(t, bin, append(args, name, ref)...)
	var res registry.PushResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("push --json printed %q: %v", r.stdout, err)
	}
	return &res
}

// bfPull runs `blockfile pull --json` and decodes the result.
func bfPull(t testing.TB, bin, storeDir, ref string, extra ...string) *registry.PullResult {
	t.Helper()
	args := append([]string{"pull", "--store", storeDir, "--json", "--progress", "none"}, extra...)
	r := bfMust(t, bin, append(args, ref)...)
	var res registry.PullResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("pull --json printed %q: %v", r.stdout, err)
	}
	return &res
}

// skopeoDigest copies ref to an OCI layout with skopeo (all: --all) and
// returns the digest of the manifest or index it wrote.
func skopeoDigest(t testing.TB, ref string, all bool) string {
	t.Helper()
	layout := filepath.Join(t.TempDir(), "layout")
	args := []string{"copy", "--insecure-policy", "--src-tls-verify=false"}
	if all {
		args = append(args, "--all")
	}
	cmdOut(t, exec.Command("skopeo", append(args, "docker://"+ref, "oci:"+layout+":x")...))
	var idx struct {
		Manifests []struct {
			Digest string `json:"digest"`
		} `json:"manifests"`
	}
	readJSONT(t, filepath.Join(layout, "index.json"), &idx)
	if len(idx.Manifests) != 1 {
		t.Fatalf("skopeo wrote %d index.json entries", len(idx.Manifests))
	}
	return idx.Manifests[0].Digest
}

var _ = harness.RequireIntegration

func execCmd(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }
