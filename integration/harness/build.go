package harness

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
)

const modulePath = "github.com/blockfile/blockfile"

// repoRoot finds the repository root: the nearest directory, from the working
// directory up, whose go.mod declares this module.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module "+modulePath+"\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of %s above the working directory", modulePath)
		}
		dir = parent
	}
}

// toolSet is a group of binaries built by one `go build` from one module.
type toolSet struct {
	moduleDir string            // relative to the repo root
	pkgs      map[string]string // binary name -> package path
	flags     []string          // extra `go build` flags
}

// tools are the binaries Tool can build. buildkitd and buildctl come from the
// root module so the daemon matches the BuildKit library the code uses; the
// docker CLI and buildx live in their own module (tools/) so their
// dependencies do not constrain the product's.
var tools = map[string]toolSet{
	"root": {moduleDir: ".", pkgs: map[string]string{
		"buildkitd": "github.com/moby/buildkit/cmd/buildkitd",
		"buildctl":  "github.com/moby/buildkit/cmd/buildctl",
	}},
	"tools": {moduleDir: "tools", pkgs: map[string]string{
		"docker":        "github.com/docker/cli/cmd/docker",
		"docker-buildx": "github.com/docker/buildx/cmd/buildx",
	}, flags: []string{
		// docker/cli has no go.mod (it is +incompatible), so Go compiles it
		// at language version go1.16, which its sources outgrew.
		"-gcflags=github.com/docker/cli/...=-lang=go1.24",
	}},
	// cosign signs and verifies images in the signature tests; its
	// dependency tree is the largest of all, so it has a module of its own.
	"cosign": {moduleDir: "tools/cosign", pkgs: map[string]string{
		"cosign": "github.com/sigstore/cosign/v2/cmd/cosign",
	}},
	// The OCI distribution-spec conformance suite, run against blockfile
	// serve (its pull section, read-only).
	"conformance": {moduleDir: "tools/conformance", pkgs: map[string]string{
		"oci-conformance": "github.com/opencontainers/distribution-spec/conformance",
	}},
}

// Tool returns the path of a cached binary built from the module files:
// "buildkitd", "buildctl" (go.mod), "docker", "docker-buildx"
// (tools/go.mod), "cosign" (tools/cosign/go.mod) or "oci-conformance"
// (tools/conformance/go.mod). Binaries live in <repo>/.cache/bin/<key>/, where key hashes
// the module's go.mod and go.sum and the Go version, so a dependency bump
// rebuilds them and nothing else does. Concurrent test binaries serialize on
// a lock file; the first one builds and the others reuse.
func (e *Env) Tool(ctx context.Context, name string) (string, error) {
	var set toolSet
	found := false
	for _, s := range tools {
		if _, ok := s.pkgs[name]; ok {
			set, found = s, true
		}
	}
	if !found {
		return "", fmt.Errorf("unknown tool %q", name)
	}
	modDir := filepath.Join(e.Root, set.moduleDir)
	key, err := moduleKey(modDir)
	if err != nil {
		return "", err
	}
	binDir := filepath.Join(e.Root, ".cache", "bin", key)
	bin := filepath.Join(binDir, name)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", err
	}
	unlock, err := lockFile(filepath.Join(binDir, ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(bin); err == nil {
		return bin, nil // another process built it while we waited
	}
	// Build every binary of the set at once: they share most packages.
	tmp, err := os.MkdirTemp(binDir, ".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	var names []string
	for n := range set.pkgs {
		names = append(names, n)
	}
	e.progressf("building %s from %s (once; cached in %s)", strings.Join(names, ", "), filepath.Join(modDir, "go.mod"), binDir)
	for n, pkg := range set.pkgs {
		if err := e.goBuild(ctx, modDir, filepath.Join(tmp, n), pkg, nil, set.flags...); err != nil {
			return "", err
		}
	}
	for _, n := range names {
		if err := os.Rename(filepath.Join(tmp, n), filepath.Join(binDir, n)); err != nil {
			return "", err
		}
	}
	return bin, nil
}

// goBuild runs `go build -o out [flags] pkg` in dir.
func (e *Env) goBuild(ctx context.Context, dir, out, pkg string, extraEnv []string, flags ...string) error {
	args := append([]string{"build", "-o", out}, flags...)
	cmd := exec.CommandContext(ctx, goBin(), append(args, pkg)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), extraEnv...)
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s (in %s): %w\n%s", pkg, dir, err, buf.String())
	}
	return nil
}

// goBin is the go command: from PATH, else the toolchain that built us.
func goBin() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "/usr/local/go/bin/go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// moduleKey hashes a module's go.mod and go.sum and the Go version.
func moduleKey(modDir string) (string, error) {
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(modDir, f))
		if err != nil {
			return "", fmt.Errorf("module key: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", f, len(b))
		h.Write(b)
	}
	fmt.Fprintf(h, "%s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// lockFile takes an exclusive flock on path and returns its release.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// BuildBlockfile builds ./cmd/blockfile into Dir/bin once per Env and returns
// its path. The Go build cache keeps repeated runs fast.
func (e *Env) BuildBlockfile(ctx context.Context) (string, error) {
	return e.blockfile.get(func() (string, error) {
		out := filepath.Join(e.Dir, "bin", "blockfile")
		e.progressf("building ./cmd/blockfile")
		if err := e.goBuild(ctx, e.Root, out, "./cmd/blockfile", nil); err != nil {
			return "", err
		}
		return out, nil
	})
}

// BuildFrontendImage builds the frontend binary on the host (static,
// CGO_ENABLED=0), packages it with the root Dockerfile's frontend-host stage
// through buildkitd, pushes it to the local registry and returns its
// reference "127.0.0.1:<port>/blockfile-frontend:<tag>", where tag is derived
// from the binary's sha256. Built once per Env.
func (e *Env) BuildFrontendImage(ctx context.Context) (string, error) {
	return e.frontend.get(func() (string, error) {
		reg, err := e.StartRegistry(ctx)
		if err != nil {
			return "", err
		}
		ctxDir := filepath.Join(e.Dir, "frontend-context")
		// The frontend-host stage takes bin/<os>_<arch>/ for its target platform.
		bin := filepath.Join(ctxDir, "bin", "linux_"+runtime.GOARCH, "blockfile-frontend")
		e.progressf("building ./cmd/blockfile-frontend (CGO_ENABLED=0)")
		if err := e.goBuild(ctx, e.Root, bin, "./cmd/blockfile-frontend", []string{"CGO_ENABLED=0"}); err != nil {
			return "", err
		}
		sum, err := fileSHA256(bin)
		if err != nil {
			return "", err
		}
		ref := fmt.Sprintf("%s/blockfile-frontend:t-%s", reg, sum[:16])
		e.progressf("packaging frontend image %s", ref)
		cmd, err := e.BuildctlCmd(ctx, "build",
			"--frontend", "dockerfile.v0",
			"--local", "context="+ctxDir,
			"--local", "dockerfile="+e.Root,
			"--opt", "filename=Dockerfile",
			"--opt", "target=frontend-host",
			"--output", "type=image,name="+ref+",push=true,registry.insecure=true",
		)
		if err != nil {
			return "", err
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("buildctl build frontend-host: %w\n%s", err, out)
		}
		return ref, nil
	})
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// BusyboxPath is the static busybox the example base is built from
// ($BUSYBOX, else Debian busybox-static's /bin/busybox).
func BusyboxPath() string {
	if p := os.Getenv("BUSYBOX"); p != "" {
		return p
	}
	return "/bin/busybox"
}

// BuildBaseImage builds examples/base (a busybox image made from files,
// nothing pulled) through buildkitd, pushes it to the local registry and
// returns "127.0.0.1:<port>/blockfile/base:busybox". Built once per Env.
func (e *Env) BuildBaseImage(ctx context.Context) (string, error) {
	return e.base.get(func() (string, error) {
		reg, err := e.StartRegistry(ctx)
		if err != nil {
			return "", err
		}
		ctxDir := filepath.Join(e.Dir, "base-context")
		if err := os.MkdirAll(ctxDir, 0o755); err != nil {
			return "", err
		}
		if err := copyFile(BusyboxPath(), filepath.Join(ctxDir, "busybox"), 0o755); err != nil {
			return "", fmt.Errorf("base image needs a static busybox (apt-get install busybox-static): %w", err)
		}
		ref := reg + "/blockfile/base:busybox"
		e.progressf("building base image %s", ref)
		cmd, err := e.BuildctlCmd(ctx, "build",
			"--frontend", "dockerfile.v0",
			"--local", "context="+ctxDir,
			"--local", "dockerfile="+filepath.Join(e.Root, "examples", "base"),
			"--output", "type=image,name="+ref+",push=true,registry.insecure=true",
		)
		if err != nil {
			return "", err
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("buildctl build examples/base: %w\n%s", err, out)
		}
		return ref, nil
	})
}

// copyFile copies src to dst (created or truncated) with mode perm.
func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}
