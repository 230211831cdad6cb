package integration

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/integration/harness"
)

// TestCLIExportDockerArchive: an image skopeo writes as docker-archive: (the
// `docker save` format: manifest.json, config, uncompressed layer tars)
// exports to the same block-framed standard layers and blocks as the same
// image from an OCI archive. The export runs with the default --progress and
// stderr a pipe, as in CI, and prints plain progress lines.
func TestCLIExportDockerArchive(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	f := smallFixture(t)
	dir := t.TempDir()

	saved := filepath.Join(dir, "saved.tar")
	cmdOut(t, exec.Command("skopeo", "copy", "--insecure-policy", "oci-archive:"+f.archive, "docker-archive:"+saved+":app:v1"))

	want := bfExport(t, bin, filepath.Join(dir, "oci-store"), "oci-archive:"+f.archive, "s")
	storeDir := filepath.Join(dir, "store")
	r := bfMust(t, bin, "export", "--store", storeDir, "--json", "docker-archive:"+saved+":app:v1", "s")
	var got image.ExportResult
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("export --json printed %q: %v", r.stdout, err)
	}
	if !strings.Contains(r.stderr, "export: ") || !strings.Contains(r.stderr, " of ") {
		t.Errorf("default progress with stderr not a terminal printed no plain lines: %q", r.stderr)
	}
	if got.Blocks != want.Blocks || got.Blocks == 0 || len(got.Manifests) != 1 {
		t.Fatalf("docker-archive export: %d blocks in %d manifests, want %d blocks as from the OCI archive", got.Blocks, len(got.Manifests), want.Blocks)
	}
	gl, wl := got.Manifests[0].Layers, want.Manifests[0].Layers
	if len(gl) != len(wl) {
		t.Fatalf("%d layers, want %d", len(gl), len(wl))
	}
	for i := range gl {
		if gl[i].Standard.Digest != wl[i].Standard.Digest || gl[i].Blocked.Digest != wl[i].Blocked.Digest {
			t.Errorf("layer %d: standard %s blocked %s, want %s %s (from the OCI archive)", i,
				gl[i].Standard.Digest, gl[i].Blocked.Digest, wl[i].Standard.Digest, wl[i].Blocked.Digest)
		}
		if gl[i].Source.MediaType != "application/vnd.docker.image.rootfs.diff.tar" {
			t.Errorf("layer %d: source media type %s, want the uncompressed docker layer", i, gl[i].Source.MediaType)
		}
	}
	// The standard image hydrates and verifies like any other.
	if d := bfHydrate(t, bin, storeDir, "s", "oci-archive:"+filepath.Join(dir, "out.tar")); d != string(got.Standard.Digest) {
		t.Errorf("hydrate printed %s, want %s", d, got.Standard.Digest)
	}
	bfMust(t, bin, "verify", "--store", storeDir)

	// Not a sink; a wrong tag is an error naming the tags there are.
	if r := bfRun(t, bin, "hydrate", "--store", storeDir, "s", "docker-archive:"+filepath.Join(dir, "x.tar")); r.code != 2 {
		t.Errorf("hydrate to docker-archive: exit %d, want 2 (usage)", r.code)
	}
	if r := bfRun(t, bin, "export", "--store", storeDir, "docker-archive:"+saved+":app:v9", "s2"); r.code != 1 || !strings.Contains(r.stderr, "app:v1") {
		t.Errorf("unknown tag: exit %d, stderr %q", r.code, r.stderr)
	}
}
