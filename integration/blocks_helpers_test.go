package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/integration/harness"
)

// bfResult is one run of the blockfile CLI.
type bfResult struct {
	stdout, stderr string
	code           int
	maxRSSKiB      int64 // peak resident set size of the process (ru_maxrss)
}

// bfRun runs the blockfile CLI and returns what happened; it fails t only
// if the binary could not be started.
func bfRun(t testing.TB, bin string, args ...string) bfResult {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("blockfile %s: %v", strings.Join(args, " "), err)
	}
	r := bfResult{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.maxRSSKiB = ru.Maxrss
	}
	return r
}

// bfMeasured runs the blockfile CLI, which must exit 0, and returns its own
// peak RSS. The rusage of a child spawned by Go is not enough: Go starts
// children with vfork semantics, and Linux folds the parent's high-water RSS
// into the child's ru_maxrss at exec, so it is max(test process, child).
// GNU time forks a tiny process instead, so its %M is blockfile's own; without
// it the rusage figure is used as an upper bound.
func bfMeasured(t testing.TB, bin string, args ...string) bfResult {
	t.Helper()
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		t.Logf("no /usr/bin/time: peak RSS is an upper bound (includes the test process)")
		return bfMust(t, bin, args...)
	}
	out := filepath.Join(t.TempDir(), "maxrss")
	r := bfMust(t, "/usr/bin/time", append([]string{"-f", "%M", "-o", out, bin}, args...)...)
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Sscan(strings.TrimSpace(string(data)), &r.maxRSSKiB); err != nil {
		t.Fatalf("/usr/bin/time wrote %q: %v", data, err)
	}
	return r
}

// bfMust runs the blockfile CLI and fails t unless it exits 0.
func bfMust(t testing.TB, bin string, args ...string) bfResult {
	t.Helper()
	r := bfRun(t, bin, args...)
	if r.code != 0 {
		t.Fatalf("blockfile %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// bfExport runs `blockfile export --json` and decodes the result.
func bfExport(t testing.TB, bin, storeDir, src, name string, extra ...string) *image.ExportResult {
	t.Helper()
	args := append([]string{"export", "--store", storeDir, "--json", "--progress", "quiet"}, extra...)
	r := bfMust(t, bin, append(args, src, name)...)
	var res image.ExportResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("export --json printed %q: %v", r.stdout, err)
	}
	return &res
}

// bfHydrate runs `blockfile hydrate` and returns the digest it printed.
func bfHydrate(t testing.TB, bin, storeDir, name, dest string) string {
	t.Helper()
	r := bfMust(t, bin, "hydrate", "--store", storeDir, "--progress", "quiet", name, dest)
	return strings.TrimSpace(r.stdout)
}

// cmdOut runs cmd and fails t with its output if it fails.
func cmdOut(t testing.TB, cmd *exec.Cmd) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(cmd.Args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// putFile writes a file (and its parents).
func putFile(t testing.TB, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// randBytes returns n deterministic pseudo-random bytes.
func randBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// buildOCIArchive builds the Dockerfile in dir (dir is also the context)
// with the real buildkitd and writes an oci-archive named name.
func buildOCIArchive(t testing.TB, env *harness.Env, dir, name string, extra ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "image.tar")
	args := []string{"build",
		"--frontend", "dockerfile.v0",
		"--local", "context=" + dir,
		"--local", "dockerfile=" + dir,
		"--output", "type=oci,dest=" + out + ",name=" + name,
	}
	cmdOut(t, env.Buildctl(t, append(args, extra...)...))
	return out
}

// The jar that several images hold, and a long path (> 100 bytes, so tar
// needs a PAX record for it).
var (
	jarBytes = randBytes(1, 300<<10)
	longPath = "app/" + strings.Repeat("a-rather-long-directory-name/", 5) + "deep.bin"
)

// writeRootfs fills dir/rootfs with the files the rich images copy: a jar,
// an empty file, files of exact 512-byte multiples, a PAX long name.
func writeRootfs(t testing.TB, dir string) {
	t.Helper()
	root := filepath.Join(dir, "rootfs")
	putFile(t, filepath.Join(root, "app/libs/x.jar"), jarBytes)
	putFile(t, filepath.Join(root, "app/empty"), nil)
	putFile(t, filepath.Join(root, "app/exact/1024.bin"), randBytes(2, 1024))
	putFile(t, filepath.Join(root, "app/exact/65536.bin"), randBytes(3, 65536))
	putFile(t, filepath.Join(root, longPath), randBytes(4, 70000))
	putFile(t, filepath.Join(root, "app/small.txt"), []byte("small\n"))
}

// fixture is an image built once per test binary and exported once into
// a store that tests may read but must not change (copy it to tamper).
type fixture struct {
	archive string // oci-archive from buildkitd
	name    string
	store   string
	export  *image.ExportResult
}

var fixtures = struct {
	sync.Mutex
	m map[string]*fixture
}{m: map[string]*fixture{}}

// getFixture builds (once) the image that make describes.
func getFixture(t *testing.T, key string, build func(t *testing.T, env *harness.Env) (archive, name string)) *fixture {
	t.Helper()
	fixtures.Lock()
	defer fixtures.Unlock()
	if f := fixtures.m[key]; f != nil {
		return f
	}
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	archive, name := build(t, env)
	// The fixture outlives the test that built it: keep it under the env dir.
	dir, err := os.MkdirTemp(env.Dir, "fixture-"+key+"-")
	if err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(dir, "image.tar")
	cmdOut(t, exec.Command("mv", archive, keep))
	f := &fixture{archive: keep, name: name, store: filepath.Join(dir, "store")}
	f.export = bfExport(t, bin, f.store, "oci-archive:"+keep, name)
	fixtures.m[key] = f
	return f
}

// richFixture: FROM the busybox base, several layers with whiteouts (of a
// file, and of a removed and re-created dir), a hard link to a block file, a
// symlink, a PAX long name, an empty file, exact 512-multiple sizes and a
// 110 MB file made at build time.
func richFixture(t *testing.T) *fixture {
	return getFixture(t, "rich", func(t *testing.T, env *harness.Env) (string, string) {
		dir := t.TempDir()
		writeRootfs(t, dir)
		putFile(t, filepath.Join(dir, "Dockerfile"), []byte(`FROM `+env.BaseImage(t)+`
COPY rootfs/ /
RUN mkdir -p /data/old && echo one > /data/old/f && echo keep > /data/keep
RUN rm /data/keep && rm -rf /data/old && mkdir /data/old && echo two > /data/old/g && ln /app/libs/x.jar /app/hard.jar && ln -s libs/x.jar /app/sym.jar && mkdir /links && head -c 70000 /dev/urandom > /links/a && ln /links/a /links/b
RUN head -c 110000000 /dev/urandom > /big
`))
		const name = "example.test/blocks/rich:1"
		return buildOCIArchive(t, env, dir, name), name
	})
}

// smallFixture: FROM scratch + COPY of the rootfs (cheap; for tamper cases).
func smallFixture(t *testing.T) *fixture {
	return getFixture(t, "small", func(t *testing.T, env *harness.Env) (string, string) {
		dir := t.TempDir()
		writeRootfs(t, dir)
		putFile(t, filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY rootfs/ /\n"))
		const name = "example.test/blocks/small:1"
		return buildOCIArchive(t, env, dir, name), name
	})
}

// copyStore copies a fixture's store so a test can change it.
func copyStore(t testing.TB, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "store")
	cmdOut(t, exec.Command("cp", "-a", src, dst))
	return dst
}

// openStoreT opens a store directory in-process.
func openStoreT(t testing.TB, dir string) *store.Store {
	t.Helper()
	s, err := store.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// layerEntries maps the entry names of a gzip or plain tar layer blob to
// their tar type flags.
func layerEntries(t testing.TB, p string, into map[string]byte) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var r io.Reader = f
	if zr, err := gzip.NewReader(f); err == nil {
		r = zr
	} else {
		f.Seek(0, io.SeekStart)
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		into[h.Name] = h.Typeflag
	}
}

// archiveLayers returns the blob paths of every layer of the single image in
// an OCI archive, extracted into a temp dir (test images are small).
func archiveLayers(t testing.TB, archive string) (dir string, layers []ocispec.Descriptor) {
	t.Helper()
	dir = t.TempDir()
	cmdOut(t, exec.Command("tar", "-xf", archive, "-C", dir))
	var idx ocispec.Index
	readJSONT(t, filepath.Join(dir, "index.json"), &idx)
	var m ocispec.Manifest
	readJSONT(t, filepath.Join(dir, "blobs", "sha256", idx.Manifests[0].Digest.Encoded()), &m)
	return dir, m.Layers
}

func readJSONT(t testing.TB, p string, v any) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
}

// mustAbsent fails t if p exists.
func mustAbsent(t testing.TB, p string) {
	t.Helper()
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s exists after a failed run (err=%v)", p, err)
	}
}

// siblings lists a directory, for "nothing half-written was left" checks.
func siblings(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func ctxT(t testing.TB) context.Context {
	if c, ok := t.(interface{ Context() context.Context }); ok {
		return c.Context()
	}
	return context.Background()
}

func fmtKiB(k int64) string { return fmt.Sprintf("%.1f MiB", float64(k)/1024) }

// stubMembers maps each raw block that a stub of l's blocked layer names to
// the member of l's block set that holds it. Block-set manifests list
// members by digest only; the stubs (read with layer.ReadStubs, checked as
// hydrate checks them) say which block each holds. A stub naming a member
// the block set does not list fails t.
func stubMembers(t testing.TB, s *store.Store, l image.Layer) map[digest.Digest]ocispec.Descriptor {
	t.Helper()
	out := map[digest.Digest]ocispec.Descriptor{}
	if !l.HasBlocks() {
		return out
	}
	ctx := ctxT(t)
	rc, err := s.Fetch(ctx, l.Blocked)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	stubs, err := layer.ReadStubs(ctx, rc)
	if err != nil {
		t.Fatalf("blocked layer %s: %v", l.Blocked.Digest, err)
	}
	if _, err := io.Copy(io.Discard, rc); err != nil {
		t.Fatalf("blocked layer %s: %v", l.Blocked.Digest, err)
	}
	listed := map[digest.Digest]ocispec.Descriptor{}
	for _, m := range l.Members {
		listed[m.Digest] = m
	}
	for _, st := range stubs {
		m, ok := listed[st.Stub.Member.Digest]
		if !ok {
			t.Fatalf("blocked layer %s: stub %s names member %s, which block set %v does not list", l.Blocked.Digest, st.StubPath, st.Stub.Member.Digest, l.BlockSet)
		}
		out[st.Stub.Block.Digest] = m
	}
	return out
}
