package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/blockfile/blockfile/integration/harness"
)

// serveProc is a running `blockfile serve`.
type serveProc struct {
	t    testing.TB
	cmd  *exec.Cmd
	addr string // 127.0.0.1:PORT
	log  string // stderr file
	done chan struct{}
}

// startServe runs `blockfile serve --store dir --addr 127.0.0.1:0 extra...`
// and waits until it listens. It is killed at the end of the test.
func startServe(t testing.TB, dir string, extra ...string) *serveProc {
	t.Helper()
	bin := harness.Get(t).BlockfileBin(t)
	logPath := filepath.Join(t.TempDir(), "serve.log")
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"serve", "--store", dir, "--addr", "127.0.0.1:0"}, extra...)...)
	cmd.Stderr, cmd.Stdout = lf, lf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lf.Close()
	p := &serveProc{t: t, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("serve log:\n%s", p.logText())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(p.logText(), "\n") {
			if rest, ok := strings.CutPrefix(line, "listening on http://"); ok {
				p.addr, _, _ = strings.Cut(rest, " ")
				return p
			}
		}
		select {
		case <-p.done:
			t.Fatalf("blockfile serve exited: %s", p.logText())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("blockfile serve did not listen within 30s: %s", p.logText())
	return nil
}

func (p *serveProc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// kill sends SIGKILL (a crash, as far as serve can tell) and waits.
func (p *serveProc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// hydrations counts the layers serve finished hydrating, by digest.
func (p *serveProc) hydrations() map[string]int {
	n := map[string]int{}
	for _, line := range strings.Split(p.logText(), "\n") {
		if strings.Contains(line, "msg=hydrated ") {
			for _, f := range strings.Fields(line) {
				if d, ok := strings.CutPrefix(f, "digest="); ok {
					n[d]++
				}
			}
		}
	}
	return n
}

// vmHWM is the process's peak resident set size (KiB), from /proc.
func (p *serveProc) vmHWM() int64 {
	p.t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		p.t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				p.t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kib
		}
	}
	p.t.Fatal("no VmHWM in /proc/<pid>/status")
	return 0
}

// goPull pulls ref (linux/amd64) with go-containerregistry, which checks
// the digest of everything it reads, and returns the manifest digest and
// layer digests.
func goPull(ctx context.Context, ref string) (v1.Hash, []v1.Hash, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return v1.Hash{}, nil, err
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		return v1.Hash{}, nil, err
	}
	md, err := img.Digest()
	if err != nil {
		return v1.Hash{}, nil, err
	}
	if _, err := img.RawConfigFile(); err != nil {
		return v1.Hash{}, nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return v1.Hash{}, nil, err
	}
	var ds []v1.Hash
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return v1.Hash{}, nil, err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return v1.Hash{}, nil, err
		}
		d, _ := l.Digest()
		ds = append(ds, d)
	}
	return md, ds, nil
}

// siteStore is a store holding only the blocked form of name (what a site
// has after `bundle apply --materialize=false` of a full bundle).
func siteStore(t testing.TB, bin, srcStore, name string) string {
	t.Helper()
	dir := t.TempDir()
	full := filepath.Join(dir, "full.bundle")
	bfMust(t, bin, "bundle", "create", "--store", srcStore, "--progress", "none", "--full", name, "-o", full)
	site := filepath.Join(dir, "site")
	bfMust(t, bin, "bundle", "apply", "--store", site, "--progress", "none", "--materialize=false", full)
	os.Remove(full)
	return site
}

type v1Hash = v1.Hash

func freeTCPPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
