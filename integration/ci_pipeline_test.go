package integration

import (
	"archive/tar"
	"compress/gzip"
	"crypto/rand"
	"debug/elf"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/bundle"
	"github.com/blockfile/blockfile/integration/harness"
)

// TestCIPipeline: `make frontend-image-host` cross-compiles the frontend for
// linux/amd64 and linux/arm64 on the host (the release stage's compilation,
// without pulling a golang image) and pushes a two-platform image; then
// examples/ci/pipeline.sh, the script docs/CI.md and the GitHub Actions and
// GitLab CI examples run, builds v1 and v2 of an app with `docker buildx
// build` through that image (`# syntax=`), exports, pushes and bundles them.
// A site applies the bundles and gets exactly the pushed images.
func TestCIPipeline(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	docker, denv := env.Buildx(t)
	reg, base, bin := env.Registry(t), env.BaseImage(t), env.BlockfileBin(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}

	// The frontend image, for two platforms.
	frontendRepo := reg + "/ci"
	mk := exec.Command("make", "frontend-image-host", "REGISTRY="+frontendRepo, "TAG=t", "BUILDX="+docker+" buildx")
	mk.Dir, mk.Env = root, denv
	cmdOut(t, mk)
	frontend := frontendRepo + "/blockfile-frontend:t"
	var idx ocispec.Index
	if err := json.Unmarshal([]byte(cmdOut(t, exec.Command("skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+frontend))), &idx); err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, m := range idx.Manifests {
		// buildx adds provenance attestations as unknown/unknown entries.
		if m.Platform != nil && m.Annotations["vnd.docker.reference.type"] == "" {
			platforms = append(platforms, m.Platform.OS+"/"+m.Platform.Architecture)
		}
	}
	sort.Strings(platforms)
	if strings.Join(platforms, ",") != "linux/amd64,linux/arm64" {
		t.Fatalf("frontend image platforms %v, want linux/amd64 and linux/arm64", platforms)
	}
	// The arm64 image holds an arm64 binary: cross-compiled, not copied.
	armDir := filepath.Join(t.TempDir(), "arm")
	cmdOut(t, exec.Command("skopeo", "copy", "--insecure-policy", "--src-tls-verify=false", "--override-arch", "arm64",
		"docker://"+frontend, "oci:"+armDir+":arm"))
	if m := frontendMachine(t, armDir); m != elf.EM_AARCH64 {
		t.Errorf("arm64 frontend binary is for %v", m)
	}

	// The pipeline, v1 then v2 (one jar changed).
	dir := t.TempDir()
	ctx := filepath.Join(dir, "ctx")
	storeDir := filepath.Join(dir, "store")
	out := filepath.Join(dir, "out")
	jarA, jarB := randomBytes(t, 150_000), randomBytes(t, 150_000)
	pipeline := func(tag, previous string, b []byte) {
		t.Helper()
		putFile(t, filepath.Join(ctx, "build", "libs", "a.jar"), jarA)
		putFile(t, filepath.Join(ctx, "build", "libs", "b.jar"), b)
		putFile(t, filepath.Join(ctx, "app.txt"), []byte("app "+tag+"\n"))
		putFile(t, filepath.Join(ctx, "Dockerfile"), []byte("# syntax="+frontend+"\nFROM "+base+"\n"+
			"IMPORT block@"+digest.FromBytes(jarA).String()+" /app/libs/a.jar\n"+
			"IMPORT block@"+digest.FromBytes(b).String()+" /app/libs/b.jar\n"+
			"COPY app.txt /app/app.txt\n"))
		cmd := exec.Command("bash", filepath.Join(root, "examples", "ci", "pipeline.sh"), "all")
		cmd.Dir = ctx
		cmd.Env = append(denv, "IMAGE=app", "TAG="+tag, "PREVIOUS="+previous, "REGISTRY="+reg+"/ci",
			"CONTEXT="+ctx, "BLOCKFILE_STORE="+storeDir, "OUT="+out, "BLOCKFILE="+bin, "DOCKER="+docker)
		cmdOut(t, cmd)
	}
	pipeline("v1", "", jarB)
	jarB2 := append([]byte(nil), jarB...)
	jarB2[10] ^= 1
	pipeline("v2", "v1", jarB2)

	// The update carries the changed jar as its only block.
	var h bundle.Header
	if err := json.Unmarshal([]byte(bfMust(t, bin, "bundle", "inspect", "--json", filepath.Join(out, "app-v1-to-v2.bundle")).stdout), &h); err != nil {
		t.Fatal(err)
	}
	if n := h.Adds.Kinds[bundle.KindBlock].Blobs; n != 1 {
		t.Errorf("v1 -> v2 bundle adds %d blocks, want 1 (b.jar)", n)
	}
	// A site with nothing applies both bundles and has the pushed images.
	site := filepath.Join(dir, "site")
	bfMust(t, bin, "bundle", "apply", "--store", site, filepath.Join(out, "app-v1-full.bundle"))
	r := bfMust(t, bin, "bundle", "apply", "--store", site, "--json", "-o", "oci-archive:"+filepath.Join(dir, "v2.tar"),
		filepath.Join(out, "app-v1-to-v2.bundle"))
	var res struct {
		Images []struct {
			Name     string             `json:"name"`
			Standard ocispec.Descriptor `json:"standard"`
		} `json:"images"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || len(res.Images) != 1 {
		t.Fatalf("apply --json: %v\n%s", err, r.stdout)
	}
	raw := cmdOut(t, exec.Command("skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+reg+"/ci/app:v2"))
	if !indexHolds(t, raw, res.Images[0].Standard.Digest) {
		t.Errorf("site has app:v2 = %s, the registry's app:v2 does not name it:\n%s", res.Images[0].Standard.Digest, raw)
	}
	bfMust(t, bin, "verify", "--store", site)
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// frontendMachine returns the ELF machine of bin/blockfile-frontend in the
// single image of the OCI layout dir.
func frontendMachine(t *testing.T, dir string) elf.Machine {
	t.Helper()
	var idx ocispec.Index
	readJSONFile(t, filepath.Join(dir, "index.json"), &idx)
	if len(idx.Manifests) != 1 {
		t.Fatalf("%s: %d images", dir, len(idx.Manifests))
	}
	blob := func(d digest.Digest) string { return filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded()) }
	var m ocispec.Manifest
	readJSONFile(t, blob(idx.Manifests[0].Digest), &m)
	for _, l := range m.Layers {
		f, err := os.Open(blob(l.Digest))
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
			hdr, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimPrefix(hdr.Name, "/") != "bin/blockfile-frontend" {
				continue
			}
			tmp := filepath.Join(t.TempDir(), "bin")
			w, err := os.Create(tmp)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(w, tr); err != nil {
				t.Fatal(err)
			}
			w.Close()
			ef, err := elf.Open(tmp)
			if err != nil {
				t.Fatal(err)
			}
			defer ef.Close()
			return ef.Machine
		}
	}
	t.Fatalf("%s: no bin/blockfile-frontend", dir)
	return 0
}
