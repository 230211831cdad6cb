package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/registry"
	"github.com/blockfile/blockfile/integration/harness"
)

// blockPushJSON runs `blockfile block push --json` and decodes the result.
func blockPushJSON(t *testing.T, bin string, args ...string) registry.BlockPushResult {
	t.Helper()
	r := bfMust(t, bin, append([]string{"block", "push", "--json", "--progress", "none"}, args...)...)
	var res registry.BlockPushResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("block push --json printed %q: %v", r.stdout, err)
	}
	return res
}

// blobStatus GETs a blob of repo from a plain-HTTP registry and returns the
// status and, for 200, the digest of the bytes served.
func blobStatus(t *testing.T, addr, repo string, d digest.Digest) (int, digest.Digest) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/v2/" + repo + "/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, ""
	}
	got, err := digest.SHA256.FromReader(resp.Body)
	if err != nil {
		t.Fatalf("read blob %s: %v", d, err)
	}
	return resp.StatusCode, got
}

// TestBlockPushSurvivesGC: `block push` publishes a Dockerfile's blocks (two
// files and a tree, whose files come along) to a repository; after the
// registry is stopped, garbage-collected with --delete-untagged (which does
// delete an unreferenced blob beside them) and restarted, every block still
// fetches with its digest and a BuildKit build with BLOCKFILE_REPO gives the
// expected image. A second push uploads nothing.
func TestBlockPushSurvivesGC(t *testing.T) {
	harness.RequireIntegration(t)
	f := newFEFixture(t)
	bin := f.env.BlockfileBin(t)
	reg := f.env.RegistryWith(t, harness.RegistryOptions{Name: "blockpush-gc"})
	t.Cleanup(func() { reg.Stop() })
	const repoPath = "team/blocks"
	repo := reg.Addr + "/" + repoPath

	// Two blocks per manifest: three manifests, each tagged, must all
	// survive the collector.
	first := blockPushJSON(t, bin, "--store", f.storeDir, "--blocks-per-manifest", "2", repo, f.jarA.String(), f.jarB.String(), f.treeD.String())
	// jarA, jarB, the tree document and its two files (bin/java, lib/modules).
	const want = 5
	if first.Uploaded.Blobs != want || first.Blocks != want || first.Present.Blobs != 0 {
		t.Fatalf("first push: %+v; want %d blocks uploaded", first, want)
	}
	if len(first.Manifests) != 3 || first.Manifests[0].Tag != registry.DefaultBlockTag {
		t.Fatalf("first push: manifests %+v, want three, the first under %q", first.Manifests, registry.DefaultBlockTag)
	}
	var blocks []struct{ Digest digest.Digest }
	for _, m := range first.Manifests {
		blocks = append(blocks, tagBlocks(t, reg.Addr, repoPath, m.Tag)...)
	}
	if len(blocks) != want {
		t.Fatalf("the tag names %d blocks, want %d", len(blocks), want)
	}

	// A blob nobody references, to show the collector really ran.
	stray := []byte("an unreferenced blob the garbage collector must delete\n")
	fePushBlob(t, reg.Addr, repoPath, stray)

	if err := reg.Stop(); err != nil {
		t.Fatal(err)
	}
	out, err := reg.GarbageCollect(ctxT(t), true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("garbage-collect --delete-untagged:\n%s", out)
	if err := reg.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if code, _ := blobStatus(t, reg.Addr, repoPath, digest.FromBytes(stray)); code != http.StatusNotFound {
		t.Fatalf("the unreferenced blob answers %d after GC, want 404: the collector did not run", code)
	}
	for _, b := range blocks {
		code, got := blobStatus(t, reg.Addr, repoPath, b.Digest)
		if code != http.StatusOK || got != b.Digest {
			t.Fatalf("block %s after GC: status %d, bytes hash to %q", b.Digest, code, got)
		}
	}

	// BuildKit fetches the blocks from the repository.
	writeFile(t, filepath.Join(f.dir, "Dockerfile"), f.dockerfile(t, false))
	build := feInProcess(t, f.env, f.dir, "", map[string]string{"build-arg:BLOCKFILE_REPO": repo}).mustOK(t)
	f.checkImage(t, build)

	// A second run sends nothing and the tag keeps every block.
	second := blockPushJSON(t, bin, "--store", f.storeDir, "--blocks-per-manifest", "2", repo, f.jarA.String(), f.jarB.String(), f.treeD.String())
	if second.Uploaded.Blobs != 0 || second.Present.Blobs != want || second.Blocks != want || second.Added != 0 {
		t.Fatalf("second push: %+v; want nothing uploaded, %d present", second, want)
	}
}

// tagBlocks reads the block manifest under tag and returns its layers.
func tagBlocks(t *testing.T, addr, repo, tag string) []struct{ Digest digest.Digest } {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest %s: %s %v", tag, resp.Status, err)
	}
	var m struct {
		Layers []struct{ Digest digest.Digest } `json:"layers"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m.Layers
}
