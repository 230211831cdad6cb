// Package harness starts the real components that integration tests run
// against (buildkitd, a distribution registry, containerd, buildctl, docker
// buildx, the frontend image and the blockfile CLI), once per test binary and
// only when a test asks for them, and stops every one of them at the end.
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
//
//	func TestSomething(t *testing.T) {
//		harness.RequireIntegration(t)
//		env := harness.Get(t)
//		addr := env.BuildkitAddr(t)
//		...
//	}
//
// Everything listens on 127.0.0.1 or on unix sockets under Env.Dir, with state
// in that directory. A component that cannot start fails the test; it is never
// skipped. Binaries built from go.mod (buildkitd, buildctl) and from tools/go.mod
// (docker, docker-buildx) are cached under <repo>/.cache/bin keyed by the module
// files, so only the first run pays for compiling them.
//
// The same code is available without a testing.TB (New, Start*, Close) for
// programs such as the demo's dev environment.
package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
)

// RequireIntegration skips t under `go test -short` and does nothing
// otherwise: integration tests are never skipped for a missing component, they
// fail.
func RequireIntegration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped under -short")
	}
}

// shared is the one Env of this test binary.
var shared struct {
	mu         sync.Mutex
	mainCalled bool
	env        *Env
	err        error
}

// Main runs the tests of m, then stops every component that was started (by
// pid) and, if any test failed, prints each component's log to stderr and
// keeps Env.Dir for inspection; otherwise Env.Dir is removed. Call it from
// TestMain and pass its result to os.Exit.
func Main(m *testing.M) int {
	shared.mu.Lock()
	shared.mainCalled = true
	shared.mu.Unlock()

	code := m.Run()

	shared.mu.Lock()
	env := shared.env
	shared.mu.Unlock()
	if env == nil {
		return code
	}
	if code != 0 {
		env.WriteLogs(os.Stderr)
	}
	if err := env.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "harness: stopping components: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	if code != 0 {
		fmt.Fprintf(os.Stderr, "harness: state kept in %s\n", env.Dir)
	} else if err := env.RemoveDir(); err != nil {
		fmt.Fprintf(os.Stderr, "harness: %v\n", err)
	}
	return code
}

// Get returns the Env of this test binary, creating its state directory on
// first use. Components start lazily through the methods below. It calls
// t.Fatal if the Env cannot be created or if harness.Main is not in use (then
// nothing would stop the daemons); it never skips.
func Get(t testing.TB) *Env {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.mainCalled {
		t.Fatal("harness.Get: call harness.Main from TestMain so started components are stopped")
	}
	if shared.env == nil && shared.err == nil {
		shared.env, shared.err = New("")
	}
	if shared.err != nil {
		t.Fatalf("harness: %v", shared.err)
	}
	return shared.env
}

// BuildkitAddr returns the address of buildkitd ("unix://<Dir>/buildkitd.sock"),
// starting it on first call: built from go.mod's BuildKit, OCI worker with runc
// and the overlayfs snapshotter (native if overlayfs cannot be used), and
// waited for until `buildctl debug workers` answers.
func (e *Env) BuildkitAddr(t testing.TB) string {
	t.Helper()
	addr, err := e.StartBuildkitd(ctxOf(t))
	if err != nil {
		t.Fatalf("harness: buildkitd: %v", err)
	}
	return addr
}

// Registry returns "127.0.0.1:<port>" of a distribution registry (plain HTTP),
// starting it on first call.
func (e *Env) Registry(t testing.TB) string {
	t.Helper()
	addr, err := e.StartRegistry(ctxOf(t))
	if err != nil {
		t.Fatalf("harness: registry: %v", err)
	}
	return addr
}

// Containerd returns the socket path of a containerd with its own root, state
// and socket under Dir, starting it on first call, and a function that makes
// `ctr` commands bound to that socket and to the namespace "blockfile-it".
func (e *Env) Containerd(t testing.TB) (addr string, ctr func(args ...string) *exec.Cmd) {
	t.Helper()
	addr, err := e.StartContainerd(ctxOf(t))
	if err != nil {
		t.Fatalf("harness: containerd: %v", err)
	}
	return addr, e.Ctr
}

// Buildctl returns a buildctl command (built from go.mod) with --addr set to
// this Env's buildkitd, which it starts if needed. Its stdout and stderr are
// not set.
func (e *Env) Buildctl(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	cmd, err := e.BuildctlCmd(ctxOf(t), args...)
	if err != nil {
		t.Fatalf("harness: buildctl: %v", err)
	}
	return cmd
}

// Buildx returns the path of a docker CLI and the environment under which
// `docker buildx build ...` uses a builder created with
// `--driver remote unix://<buildkitd socket>` in a private DOCKER_CONFIG. The
// docker CLI and the buildx plugin are built from tools/go.mod. No docker
// engine is involved.
func (e *Env) Buildx(t testing.TB) (docker string, env []string) {
	t.Helper()
	docker, env, err := e.SetupBuildx(ctxOf(t))
	if err != nil {
		t.Fatalf("harness: buildx: %v", err)
	}
	return docker, env
}

// FrontendImage builds cmd/blockfile-frontend on the host (CGO_ENABLED=0),
// packages it with the root Dockerfile's frontend-host stage through
// buildkitd (nothing is pulled), pushes it to the local registry and returns
// its reference "127.0.0.1:<port>/blockfile-frontend:<tag>", usable in a
// `# syntax=` line. Built once per test binary.
func (e *Env) FrontendImage(t testing.TB) string {
	t.Helper()
	ref, err := e.BuildFrontendImage(ctxOf(t))
	if err != nil {
		t.Fatalf("harness: frontend image: %v", err)
	}
	return ref
}

// BaseImage builds examples/base (busybox from Debian's busybox-static,
// applets linked by a RUN, so runc is exercised), pushes it to the local
// registry and returns "127.0.0.1:<port>/blockfile/base:busybox", for tests
// whose Dockerfiles need a base to start FROM. Built once per test binary.
func (e *Env) BaseImage(t testing.TB) string {
	t.Helper()
	ref, err := e.BuildBaseImage(ctxOf(t))
	if err != nil {
		t.Fatalf("harness: base image: %v", err)
	}
	return ref
}

// ExtraRegistry returns "127.0.0.1:<port>" of another registry with storage
// of its own, started on the first call for name (see StartExtraRegistry).
func (e *Env) ExtraRegistry(t testing.TB, name string) string {
	t.Helper()
	addr, err := e.StartExtraRegistry(ctxOf(t), name)
	if err != nil {
		t.Fatalf("harness: registry %s: %v", name, err)
	}
	return addr
}

// Cosign returns the path of sigstore's cosign, built once from
// tools/cosign/go.mod (cached like buildkitd).
func (e *Env) Cosign(t testing.TB) string {
	t.Helper()
	p, err := e.Tool(ctxOf(t), "cosign")
	if err != nil {
		t.Fatalf("harness: cosign: %v", err)
	}
	return p
}

// BlockfileBin builds ./cmd/blockfile once per test binary and returns the
// path of the binary.
func (e *Env) BlockfileBin(t testing.TB) string {
	t.Helper()
	p, err := e.BuildBlockfile(ctxOf(t))
	if err != nil {
		t.Fatalf("harness: blockfile: %v", err)
	}
	return p
}

// ctxOf returns the test's context when t has one. Components started with it
// outlive the test: the context only bounds builds and readiness waits.
func ctxOf(t testing.TB) context.Context {
	if c, ok := t.(interface{ Context() context.Context }); ok {
		return c.Context()
	}
	return context.Background()
}
