package integration

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/integration/harness"
)

// buildCIResult is what `blockfile build --json` prints.
type buildCIResult struct {
	Standard struct {
		Digest digest.Digest `json:"digest"`
	} `json:"standard"`
	Blocks  int      `json:"blocks"`
	Outputs []string `json:"outputs"`
}

// TestBuildCIOptions: `blockfile build` passes --secret, --ssh,
// --cache-to and --cache-from to the real buildkitd, and --push puts the
// standard image (the digest it prints) into the registry.
func TestBuildCIOptions(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	addr, reg, base := env.BuildkitAddr(t), env.Registry(t), env.BaseImage(t)
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "store")

	jar := make([]byte, 100_000)
	rand.Read(jar)
	putFile(t, filepath.Join(dir, "lib.jar"), jar)
	line := strings.TrimSpace(bfMust(t, bin, "block", "add", "--store", storeDir, "--import-to", "/app/lib.jar", filepath.Join(dir, "lib.jar")).stdout)

	// A secret from a file, one from the environment, and an SSH key: the
	// RUN fails unless all three reach it.
	putFile(t, filepath.Join(dir, "token"), []byte("s3cret"))
	t.Setenv("BLOCKFILE_CI_TOKEN", "from-env")
	key := filepath.Join(dir, "id_ed25519")
	cmdOut(t, exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key))
	ctx := filepath.Join(dir, "ctx")
	putFile(t, filepath.Join(ctx, "Dockerfile"), []byte(`ARG BASE
FROM $BASE
`+line+`
ARG BUST
RUN --mount=type=secret,id=tok,required=true --mount=type=secret,id=envtok,required=true --mount=type=ssh,required=true \
    test "$(cat /run/secrets/tok)" = s3cret && test "$(cat /run/secrets/envtok)" = from-env && test -S "$SSH_AUTH_SOCK" && echo ran > /ran
`))
	common := []string{"build", "--addr", addr, "--store", storeDir, "--build-arg", "BASE=" + base, "-t", "app:v1"}
	ref := reg + "/ci/app:v1"
	cacheRef := reg + "/ci/app:cache"
	r := bfMust(t, bin, append(common, "--json", "--progress", "plain",
		"--secret", "id=tok,src="+filepath.Join(dir, "token"),
		"--secret", "type=env,id=envtok,env=BLOCKFILE_CI_TOKEN",
		"--ssh", "default="+key,
		"--cache-to", "type=registry,ref="+cacheRef+",mode=max",
		"--push", ref, ctx)...)
	var res buildCIResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("build --json printed %q: %v", r.stdout, err)
	}
	if res.Blocks == 0 || len(res.Outputs) != 1 {
		t.Errorf("build: %d blocks, outputs %v", res.Blocks, res.Outputs)
	}
	// The registry serves exactly the standard image that was printed.
	raw := cmdOut(t, exec.Command("skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+ref))
	if got := digest.FromString(raw); got != res.Standard.Digest {
		t.Errorf("registry has %s at %s, build printed %s", got, ref, res.Standard.Digest)
	}
	// The cache was exported to the registry.
	cacheRaw := cmdOut(t, exec.Command("skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+cacheRef))
	if !strings.Contains(cacheRaw, "application/vnd.buildkit.cacheconfig.v0") {
		t.Errorf("cache ref %s holds no BuildKit cache config:\n%s", cacheRef, cacheRaw)
	}

	// Again, importing that cache and exporting a local one.
	localCache := filepath.Join(dir, "cache")
	r = bfMust(t, bin, append(common, "--progress", "plain",
		"--secret", "id=tok,src="+filepath.Join(dir, "token"),
		"--secret", "id=envtok,env=BLOCKFILE_CI_TOKEN",
		"--ssh", "default="+key,
		"--cache-from", cacheRef,
		"--cache-to", "type=local,dest="+localCache, ctx)...)
	if !strings.Contains(r.stderr, "importing cache manifest from "+cacheRef) {
		t.Errorf("no cache import from %s in the build log:\n%s", cacheRef, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(localCache, "index.json")); err != nil {
		t.Errorf("--cache-to type=local wrote no cache: %v", err)
	}

	// Without the secret the RUN step (not cached: BUST differs) fails: the
	// secret was what made it pass.
	r = bfRun(t, bin, append(common, "--progress", "plain", "--build-arg", "BUST=2", "--ssh", "default="+key,
		"--secret", "id=envtok,env=BLOCKFILE_CI_TOKEN", ctx)...)
	if r.code != 1 || !strings.Contains(r.stderr, "tok") {
		t.Errorf("build without the secret: exit %d, want 1\n%s", r.code, r.stderr)
	}
	// Bad values are usage errors, found before anything is built.
	for _, bad := range [][]string{{"--cache-to", "type=registry"}, {"--secret", "src=x"}, {"-o", "ftp://x"}, {"--push", ""}} {
		if r := bfRun(t, bin, append(append(common, bad...), ctx)...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", bad, r.code, r.stderr)
		}
	}
}

// TestBuildVerifiedBlockCache: an in-process build verifies the store's
// blocks on disk and records them; a warm build trusts the records, and a
// block changed on disk afterwards (same size, mtime put back) fails the
// next build, naming the IMPORT line.
func TestBuildVerifiedBlockCache(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	addr := env.BuildkitAddr(t)
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "store")
	jar := make([]byte, 200_000)
	rand.Read(jar)
	putFile(t, filepath.Join(dir, "lib.jar"), jar)
	line := strings.TrimSpace(bfMust(t, bin, "block", "add", "--store", storeDir, "--import-to", "/app/lib.jar", filepath.Join(dir, "lib.jar")).stdout)
	d := digest.FromBytes(jar)
	ctx := filepath.Join(dir, "ctx")
	putFile(t, filepath.Join(ctx, "Dockerfile"), []byte("FROM scratch\n"+line+"\n"))
	build := func() bfResult {
		return bfRun(t, bin, "build", "--addr", addr, "--store", storeDir, "--progress", "plain", "-t", "app:v1", ctx)
	}
	if r := build(); r.code != 0 {
		t.Fatalf("build: exit %d\n%s", r.code, r.stderr)
	}
	rec := filepath.Join(storeDir, "blockfile", "verified", d.Encoded())
	if _, err := os.Stat(rec); err != nil {
		t.Fatalf("no verified-block record after the build: %v", err)
	}
	if r := build(); r.code != 0 {
		t.Fatalf("warm build: exit %d\n%s", r.code, r.stderr)
	}

	blob := filepath.Join(storeDir, "blobs", "sha256", d.Encoded())
	fi, err := os.Stat(blob)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), jar...)
	bad[1000] ^= 0xff
	os.Chmod(blob, 0o644)
	if err := os.WriteFile(blob, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(blob, fi.ModTime(), fi.ModTime())
	r := build()
	if r.code != 1 || !strings.Contains(r.stderr, "IMPORT on line 2") || !strings.Contains(r.stderr, "hash to") {
		t.Errorf("build over a tampered block: exit %d, want 1 naming line 2 and the mismatch\n%s", r.code, r.stderr)
	}
}
