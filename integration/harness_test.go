package integration

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/integration/harness"
)

// TestHarnessBuildctlOCIExport: buildkitd answers, and buildctl builds a
// Dockerfile (FROM scratch + COPY from a local context) into an OCI layout
// that holds the copied file.
func TestHarnessBuildctlOCIExport(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)

	src := t.TempDir()
	writeFile(t, filepath.Join(src, "Dockerfile"), "FROM scratch\nCOPY hello.txt /hello.txt\n")
	writeFile(t, filepath.Join(src, "hello.txt"), "hello from the harness\n")
	out := filepath.Join(t.TempDir(), "layout")
	run(t, env.Buildctl(t, "build",
		"--frontend", "dockerfile.v0",
		"--local", "context="+src,
		"--local", "dockerfile="+src,
		"--output", "type=oci,dest="+out+",tar=false",
	))

	files := layoutFiles(t, out)
	if got, want := files["hello.txt"], "hello from the harness\n"; got != want {
		t.Fatalf("hello.txt in the exported image = %q, want %q (files: %v)", got, want, keys(files))
	}
}

// TestHarnessRegistryPush: the base image (busybox from files, applets linked
// by a RUN through runc) is pushed to the local registry, which then serves
// its manifest and config.
func TestHarnessRegistryPush(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	ref := env.BaseImage(t)

	man, _ := registryManifest(t, ref)
	if len(man.Layers) != 2 {
		t.Fatalf("base manifest has %d layers, want 2 (COPY busybox, RUN --install)", len(man.Layers))
	}
	var cfg ocispec.Image
	registryBlobJSON(t, ref, man.Config.Digest, &cfg)
	if want := []string{"/bin/sh"}; strings.Join(cfg.Config.Cmd, " ") != strings.Join(want, " ") {
		t.Fatalf("base config Cmd = %q, want %q", cfg.Config.Cmd, want)
	}
}

// TestHarnessContainerd: containerd answers `ctr version`, imports an image
// exported by buildkitd and runs it with runc.
func TestHarnessContainerd(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	_, ctr := env.Containerd(t)
	run(t, ctr("version"))

	base := env.BaseImage(t)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "Dockerfile"), "FROM "+base+"\nCOPY hello.txt /hello.txt\n")
	writeFile(t, filepath.Join(src, "hello.txt"), "hello from containerd\n")
	archive := filepath.Join(t.TempDir(), "image.tar")
	const name = "example.test/harness/containerd:1"
	run(t, env.Buildctl(t, "build",
		"--frontend", "dockerfile.v0",
		"--local", "context="+src,
		"--local", "dockerfile="+src,
		"--output", "type=oci,dest="+archive+",name="+name,
	))
	run(t, ctr("images", "import", archive))
	t.Cleanup(func() { _ = ctr("images", "rm", name).Run() })
	out := run(t, ctr("run", "--rm", name, "harness-containerd", "/bin/cat", "/hello.txt"))
	if got, want := out, "hello from containerd\n"; got != want {
		t.Fatalf("ctr run printed %q, want %q", got, want)
	}
}

// TestHarnessFrontendImage: the frontend image is built from the host binary
// with the root Dockerfile's frontend-host stage, pushed, and carries the
// labels BuildKit and buildx need.
func TestHarnessFrontendImage(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	ref := env.FrontendImage(t)

	man, _ := registryManifest(t, ref)
	var cfg ocispec.Image
	registryBlobJSON(t, ref, man.Config.Digest, &cfg)
	if got := strings.Join(cfg.Config.Entrypoint, " "); got != "/bin/blockfile-frontend" {
		t.Errorf("frontend Entrypoint = %q, want /bin/blockfile-frontend", got)
	}
	caps := cfg.Config.Labels["moby.buildkit.frontend.caps"]
	for _, c := range []string{"moby.buildkit.frontend.inputs", "moby.buildkit.frontend.subrequests", "moby.buildkit.frontend.contexts"} {
		if !strings.Contains(caps, c) {
			t.Errorf("label moby.buildkit.frontend.caps = %q, missing %s", caps, c)
		}
	}
	if got := cfg.Config.Labels["moby.buildkit.frontend.network.none"]; got != "true" {
		t.Errorf("label moby.buildkit.frontend.network.none = %q, want true", got)
	}
}

// TestHarnessFrontendSyntax: a Dockerfile whose first line is
// `# syntax=<FrontendImage>` builds through buildkitd, which fetches the
// frontend from the local registry (plain HTTP, nothing from the internet).
func TestHarnessFrontendSyntax(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	ref := env.FrontendImage(t)

	src := t.TempDir()
	writeFile(t, filepath.Join(src, "Dockerfile"), "# syntax="+ref+"\nFROM scratch\nCOPY hello.txt /hello.txt\n")
	writeFile(t, filepath.Join(src, "hello.txt"), "hello through the blockfile frontend\n")
	out := filepath.Join(t.TempDir(), "layout")
	run(t, env.Buildctl(t, "build",
		"--frontend", "dockerfile.v0",
		"--local", "context="+src,
		"--local", "dockerfile="+src,
		"--output", "type=oci,dest="+out+",tar=false",
	))
	files := layoutFiles(t, out)
	if got, want := files["hello.txt"], "hello through the blockfile frontend\n"; got != want {
		t.Fatalf("hello.txt = %q, want %q (files: %v)", got, want, keys(files))
	}
}

// TestHarnessBlockfileBin: the CLI builds and answers --help.
func TestHarnessBlockfileBin(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	out := run(t, exec.Command(env.BlockfileBin(t), "--help"))
	if !strings.Contains(out, "blockfile") {
		t.Fatalf("blockfile --help printed %q", out)
	}
}

// run runs cmd, fails t with its output if it fails, and returns its stdout.
func run(t testing.TB, cmd *exec.Cmd) string {
	t.Helper()
	var stdout, stderr strings.Builder
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(cmd.Args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// layoutFiles returns the regular files (tar name -> content) of the single
// linux image in an OCI layout directory, all layers applied in order
// (whiteouts are not handled: test images here have none). Every blob read
// is checked against its digest. Only for small test images.
func layoutFiles(t testing.TB, dir string) map[string]string {
	t.Helper()
	var idx ocispec.Index
	readJSONFile(t, filepath.Join(dir, "index.json"), &idx)
	if len(idx.Manifests) != 1 {
		t.Fatalf("%s/index.json lists %d manifests, want 1", dir, len(idx.Manifests))
	}
	desc := idx.Manifests[0]
	if desc.MediaType == ocispec.MediaTypeImageIndex {
		var sub ocispec.Index
		readBlobJSON(t, dir, desc, &sub)
		desc = ocispec.Descriptor{}
		for _, m := range sub.Manifests {
			if m.Platform != nil && m.Platform.OS == "linux" {
				desc = m
				break
			}
		}
		if desc.Digest == "" {
			t.Fatalf("%s: image index %s has no linux manifest", dir, idx.Manifests[0].Digest)
		}
	}
	var man ocispec.Manifest
	readBlobJSON(t, dir, desc, &man)
	files := map[string]string{}
	for _, l := range man.Layers {
		if err := readLayer(dir, l, files); err != nil {
			t.Fatal(err)
		}
	}
	return files
}

func readLayer(dir string, l ocispec.Descriptor, files map[string]string) error {
	f, err := os.Open(blobPath(dir, l.Digest))
	if err != nil {
		return err
	}
	defer f.Close()
	verifier := l.Digest.Verifier()
	var r io.Reader = io.TeeReader(f, verifier)
	if strings.HasSuffix(l.MediaType, "gzip") {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		r = zr
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				return fmt.Errorf("layer %s: %s: %w", l.Digest, h.Name, err)
			}
			files[strings.TrimPrefix(h.Name, "./")] = string(b)
		}
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	if _, err := io.Copy(verifier, f); err != nil {
		return err
	}
	if !verifier.Verified() {
		return fmt.Errorf("layer %s: content does not match its digest", l.Digest)
	}
	return nil
}

func blobPath(dir string, d digest.Digest) string {
	return filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded())
}

func readJSONFile(t testing.TB, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func readBlobJSON(t testing.TB, dir string, desc ocispec.Descriptor, v any) {
	t.Helper()
	b, err := os.ReadFile(blobPath(dir, desc.Digest))
	if err != nil {
		t.Fatal(err)
	}
	if got := digest.FromBytes(b); got != desc.Digest {
		t.Fatalf("blob %s in %s hashes to %s", desc.Digest, dir, got)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("blob %s: %v", desc.Digest, err)
	}
}

// registryManifest fetches the manifest of ref ("host:port/repo:tag") over
// plain HTTP and returns it with its digest. An index is resolved to its
// linux manifest.
func registryManifest(t testing.TB, ref string) (ocispec.Manifest, digest.Digest) {
	t.Helper()
	host, repo, tag := splitRef(t, ref)
	b, mt := registryGet(t, fmt.Sprintf("http://%s/v2/%s/manifests/%s", host, repo, tag))
	if mt == ocispec.MediaTypeImageIndex || mt == "application/vnd.docker.distribution.manifest.list.v2+json" {
		var idx ocispec.Index
		if err := json.Unmarshal(b, &idx); err != nil {
			t.Fatalf("%s: index: %v", ref, err)
		}
		for _, m := range idx.Manifests {
			if m.Platform != nil && m.Platform.OS == "linux" {
				b, _ = registryGet(t, fmt.Sprintf("http://%s/v2/%s/manifests/%s", host, repo, m.Digest))
				break
			}
		}
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(b, &man); err != nil {
		t.Fatalf("%s: manifest: %v", ref, err)
	}
	return man, digest.FromBytes(b)
}

func registryBlobJSON(t testing.TB, ref string, d digest.Digest, v any) {
	t.Helper()
	host, repo, _ := splitRef(t, ref)
	b, _ := registryGet(t, fmt.Sprintf("http://%s/v2/%s/blobs/%s", host, repo, d))
	if got := digest.FromBytes(b); got != d {
		t.Fatalf("%s: blob %s hashes to %s", ref, d, got)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: blob %s: %v", ref, d, err)
	}
}

func registryGet(t testing.TB, url string) ([]byte, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", strings.Join([]string{
		ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageManifest,
		"application/vnd.docker.distribution.manifest.v2+json",
		"application/vnd.docker.distribution.manifest.list.v2+json",
	}, ", "))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b, resp.Header.Get("Content-Type")
}

// splitRef splits "host:port/repo:tag".
func splitRef(t testing.TB, ref string) (host, repo, tag string) {
	t.Helper()
	host, rest, ok := strings.Cut(ref, "/")
	if !ok {
		t.Fatalf("reference %q has no repository", ref)
	}
	i := strings.LastIndex(rest, ":")
	if i < 0 {
		t.Fatalf("reference %q has no tag", ref)
	}
	return host, rest[:i], rest[i+1:]
}
