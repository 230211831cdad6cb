package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/frontend"
	"github.com/blockfile/blockfile/integration/harness"
)

// feFixture is a store with a few blocks and a build context whose
// Dockerfile imports them FROM the harness's busybox base.
type feFixture struct {
	env                  *harness.Env
	storeDir, dir        string
	jarA, jarB, treeD    digest.Digest
	jarAData, jarBData   string
	dockerfileWithSyntax string
}

func newFEFixture(t *testing.T) *feFixture {
	t.Helper()
	env := harness.Get(t)
	f := &feFixture{env: env, dir: t.TempDir()}
	storeDir, st := feStore(t)
	f.storeDir = storeDir
	f.jarAData = strings.Repeat("jar A bytes\n", 1000)
	f.jarBData = "#!/bin/sh\necho tool\n"
	f.jarA = feAddBlock(t, st, []byte(f.jarAData))
	f.jarB = feAddBlock(t, st, []byte(f.jarBData))
	jdk := t.TempDir()
	writeFile(t, filepath.Join(jdk, "bin", "java"), "#!/bin/sh\necho java\n")
	if err := os.Chmod(filepath.Join(jdk, "bin", "java"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(jdk, "lib", "modules"), strings.Repeat("m", 5000))
	if err := os.Symlink("bin/java", filepath.Join(jdk, "java")); err != nil {
		t.Fatal(err)
	}
	f.treeD = feAddTree(t, st, jdk)
	return f
}

// dockerfile returns the fixture's Dockerfile; syntax adds a `# syntax=` line
// naming the frontend image (line numbers stay the same either way).
func (f *feFixture) dockerfile(t *testing.T, syntax bool) string {
	first := "# no syntax line"
	if syntax {
		first = "# syntax=" + f.env.FrontendImage(t)
	}
	return strings.Join([]string{
		first,
		"FROM " + f.env.BaseImage(t),
		"IMPORT block@" + f.jarA.String() + " /app/libs/a.jar",
		"IMPORT --chmod=0755 block@" + f.jarB.String() + " /app/bin/tool",
		"IMPORT block@" + f.treeD.String() + " /opt/jdk/",
		"RUN cat /app/libs/a.jar | wc -c > /app/size.txt && /app/bin/tool > /app/tool.txt && /opt/jdk/java > /app/java.txt && stat -c '%a %u %Y' /app/libs/a.jar /app/bin/tool /app/libs /opt/jdk/bin > /app/stat.txt",
		"",
	}, "\n")
}

// TestFrontendSameImageThreeWays: the same Dockerfile with IMPORTs gives
// the same image (manifest digest) in-process, through the frontend image
// with buildctl (`# syntax=`), and with docker buildx --build-context.
func TestFrontendSameImageThreeWays(t *testing.T) {
	harness.RequireIntegration(t)
	f := newFEFixture(t)
	writeFile(t, filepath.Join(f.dir, "Dockerfile"), f.dockerfile(t, true))

	inproc := feInProcess(t, f.env, f.dir, f.storeDir, nil).mustOK(t)
	f.checkImage(t, inproc)
	viaBuildctl := feBuildctl(t, f.env, f.dir, f.storeDir).mustOK(t)
	f.checkImage(t, viaBuildctl)
	viaBuildx := feBuildx(t, f.env, f.dir, f.storeDir).mustOK(t)
	f.checkImage(t, viaBuildx)

	if !strings.Contains(viaBuildctl.Output, "IMPORT 3 block(s)") {
		t.Errorf("buildctl progress does not show the import step:\n%s", viaBuildctl.Output)
	}
	if inproc.Manifest == "" || inproc.Manifest != viaBuildctl.Manifest || inproc.Manifest != viaBuildx.Manifest {
		t.Errorf("manifests differ: in-process %s, buildctl %s, buildx %s", inproc.Manifest, viaBuildctl.Manifest, viaBuildx.Manifest)
	}
}

// checkImage checks the files, modes, times and label of the fixture image.
func (f *feFixture) checkImage(t *testing.T, b feBuild) {
	t.Helper()
	files := layoutFiles(t, b.Layout)
	for p, want := range map[string]string{
		"app/libs/a.jar":      f.jarAData,
		"app/bin/tool":        f.jarBData,
		"opt/jdk/bin/java":    "#!/bin/sh\necho java\n",
		"opt/jdk/lib/modules": strings.Repeat("m", 5000),
		"app/size.txt":        fmt.Sprintf("%d\n", len(f.jarAData)),
		"app/tool.txt":        "tool\n",
		"app/java.txt":        "java\n",
		"app/stat.txt":        "644 0 0\n755 0 0\n755 0 0\n755 0 0\n",
	} {
		if got := files[p]; got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	man, cfg := feImage(t, b.Layout)
	got := feImports(t, cfg)
	want := map[string]string{
		"/app/libs/a.jar": f.jarA.String(),
		"/app/bin/tool":   f.jarB.String(),
		"/opt/jdk/":       f.treeD.String(),
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("imports label = %v, want %v", got, want)
	}
	// base layers + 1 import layer + 1 RUN layer
	if n := len(man.Layers); n < 3 {
		t.Errorf("%d layers", n)
	}
	t.Logf("manifest %s, %d layers", b.Manifest, len(man.Layers))
}

// TestFrontendUpstreamFeatures: multi-stage with --target, ARG, heredocs,
// RUN --mount=type=cache, COPY --from a stage and a named build context all
// work through the frontend image, and the imports label holds exactly the
// imports of the target's FROM chain.
func TestFrontendUpstreamFeatures(t *testing.T) {
	harness.RequireIntegration(t)
	f := newFEFixture(t)
	base := f.env.BaseImage(t)
	extra := t.TempDir()
	writeFile(t, filepath.Join(extra, "extra.txt"), "from a named context\n")
	writeFile(t, filepath.Join(f.dir, "Dockerfile"), strings.Join([]string{
		"# syntax=" + f.env.FrontendImage(t),
		"ARG MSG=hello",
		"FROM " + base + " AS build",
		"ARG MSG",
		"IMPORT block@" + f.jarA.String() + " /src/a.jar",
		"RUN --mount=type=cache,target=/cache echo \"$MSG\" > /cache/msg && cp /cache/msg /msg.txt",
		"COPY <<EOF /heredoc.txt",
		"from a heredoc",
		"EOF",
		"FROM " + base + " AS side",
		"IMPORT block@" + f.jarB.String() + " /side/tool",
		"FROM build AS final",
		"IMPORT block@" + f.treeD.String() + " /opt/jdk/",
		"COPY --from=side /side/tool /app/tool",
		"COPY --from=extra extra.txt /app/extra.txt",
		"FROM final AS unused",
		"RUN false",
		"",
	}, "\n"))
	b := feBuildctl(t, f.env, f.dir, f.storeDir,
		"--opt", "target=final", "--opt", "build-arg:MSG=world",
		"--local", "extra="+extra, "--opt", "context:extra=local:extra").mustOK(t)
	files := layoutFiles(t, b.Layout)
	for p, want := range map[string]string{
		"msg.txt":          "world\n",
		"heredoc.txt":      "from a heredoc\n",
		"src/a.jar":        f.jarAData,
		"app/tool":         f.jarBData,
		"app/extra.txt":    "from a named context\n",
		"opt/jdk/bin/java": "#!/bin/sh\necho java\n",
	} {
		if got := files[p]; got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	_, cfg := feImage(t, b.Layout)
	got := feImports(t, cfg)
	want := map[string]string{"/src/a.jar": f.jarA.String(), "/opt/jdk/": f.treeD.String()}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("imports label = %v, want %v (the FROM chain of the target only)", got, want)
	}
}

// TestFrontendCheck: `docker buildx build --check` lints a Dockerfile with
// IMPORTs through the frontend image: upstream's rules run, IMPORT is not an
// unknown instruction, the warning shows the user's lines (not the rewritten
// COPY), and no block source is needed. --call=targets works too.
func TestFrontendCheck(t *testing.T) {
	harness.RequireIntegration(t)
	f := newFEFixture(t)
	writeFile(t, filepath.Join(f.dir, "Dockerfile"), strings.Join([]string{
		"# syntax=" + f.env.FrontendImage(t),
		"FROM " + f.env.BaseImage(t) + " as final",
		"IMPORT block@" + f.jarA.String() + " /app/a.jar",
		"",
	}, "\n"))
	b := feBuildx(t, f.env, f.dir, "", "--check")
	if b.Err == nil {
		t.Fatalf("--check passed; want the FromAsCasing warning to fail it:\n%s", b.Output)
	}
	for _, want := range []string{"FromAsCasing", "Dockerfile:2", "IMPORT block@" + f.jarA.String() + " /app/a.jar"} {
		if !strings.Contains(b.Output, want) {
			t.Errorf("--check output lacks %q:\n%s", want, b.Output)
		}
	}
	for _, bad := range []string{"unknown instruction", "COPY --link"} {
		if strings.Contains(b.Output, bad) {
			t.Errorf("--check output shows %q:\n%s", bad, b.Output)
		}
	}
	b = feBuildx(t, f.env, f.dir, "", "--call=targets").mustOK(t)
	if !strings.Contains(b.Output, "final (default)") {
		t.Errorf("--call=targets does not list the final stage:\n%s", b.Output)
	}
}

// TestFrontendCacheOneBlockChanged: changing one block in a run of IMPORTs
// rebuilds that import layer and what follows only; the layers below keep
// their digests and their steps are CACHED.
func TestFrontendCacheOneBlockChanged(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	storeDir, st := feStore(t)
	a := feAddBlock(t, st, []byte("lib a v1\n"))
	b1 := feAddBlock(t, st, []byte("lib b v1\n"))
	b2 := feAddBlock(t, st, []byte("lib b v2\n"))
	dir := t.TempDir()
	dockerfile := func(b digest.Digest) string {
		return strings.Join([]string{
			"# syntax=" + env.FrontendImage(t),
			"FROM " + env.BaseImage(t),
			"RUN echo lower-$RANDOM > /lower.txt",
			"IMPORT block@" + a.String() + " /app/libs/a.jar",
			"IMPORT block@" + b.String() + " /app/libs/b.jar",
			"RUN cat /app/libs/*.jar > /app/all.txt && echo $RANDOM > /app/after.txt",
			"",
		}, "\n")
	}
	writeFile(t, filepath.Join(dir, "Dockerfile"), dockerfile(b1))
	v1 := feBuildctl(t, env, dir, storeDir).mustOK(t)
	writeFile(t, filepath.Join(dir, "Dockerfile"), dockerfile(b2))
	v2 := feBuildctl(t, env, dir, storeDir).mustOK(t)

	m1, _ := feImage(t, v1.Layout)
	m2, _ := feImage(t, v2.Layout)
	n := len(m1.Layers)
	if n != len(m2.Layers) || n < 4 {
		t.Fatalf("layers: %d then %d", n, len(m2.Layers))
	}
	// base layers and the lower RUN, then the import layer, then the last RUN.
	for i := 0; i < n-2; i++ {
		if m1.Layers[i].Digest != m2.Layers[i].Digest {
			t.Errorf("layer %d below the imports changed: %s -> %s", i, m1.Layers[i].Digest, m2.Layers[i].Digest)
		}
	}
	for i := n - 2; i < n; i++ {
		if m1.Layers[i].Digest == m2.Layers[i].Digest {
			t.Errorf("layer %d (import or after) did not change", i)
		}
	}
	if got := layoutFiles(t, v2.Layout)["app/all.txt"]; got != "lib a v1\nlib b v2\n" {
		t.Errorf("all.txt = %q", got)
	}
	if !feStepCached(v2.Output, "RUN echo lower") {
		t.Errorf("the RUN below the imports was not CACHED in the second build:\n%s", v2.Output)
	}
	if feStepCached(v2.Output, "RUN cat /app/libs") {
		t.Errorf("the RUN after the imports was CACHED although a block changed:\n%s", v2.Output)
	}

	// The import layer is reproducible: a third build with b1 again gives
	// the first image back.
	writeFile(t, filepath.Join(dir, "Dockerfile"), dockerfile(b1))
	v3 := feBuildctl(t, env, dir, storeDir).mustOK(t)
	if v3.Manifest != v1.Manifest {
		t.Errorf("rebuilding v1 gives %s, want %s", v3.Manifest, v1.Manifest)
	}
	// The frontend image verifies local blocks in a build step that BuildKit
	// caches by the blobs' content: unchanged blocks are not read again.
	if !feStepCached(v3.Output, "[blocks] verify") {
		t.Errorf("block verification ran again for blocks already verified:\n%s", v3.Output)
	}
}

// feStepCached reports whether plain progress shows the step whose name
// contains step as CACHED.
func feStepCached(out, step string) bool {
	ids := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || !strings.HasPrefix(f[0], "#") {
			continue
		}
		if strings.Contains(l, step) {
			ids[f[0]] = true
		}
		if ids[f[0]] && f[1] == "CACHED" {
			return true
		}
	}
	return false
}

// TestFrontendErrors: each bad input fails the build with a message that
// says what is wrong and points at the IMPORT's line.
func TestFrontendErrors(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	storeDir, st := feStore(t)
	good := feAddBlock(t, st, []byte("good block\n"))
	corrupt := feAddBlock(t, st, []byte("this block will be corrupted\n"))
	p := filepath.Join(storeDir, "blobs", "sha256", corrupt.Encoded())
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("THIS block will be corrupted\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := digest.FromString("not in the store")
	base := env.BaseImage(t)

	ociStore := map[string]string{"build-arg:" + frontend.ArgOCIStore: "blocks"}
	for _, tc := range []struct {
		name, line string
		noStore    bool
		attrs      map[string]string
		want       []string
	}{
		{name: "bad digest", line: "IMPORT block@sha256:1234 /a", want: []string{"invalid block reference"}},
		{name: "relative dest", line: "IMPORT block@" + good.String() + " app/a.jar", want: []string{"must be an absolute path"}},
		{name: "missing dest", line: "IMPORT block@" + good.String(), want: []string{"missing destination"}},
		{name: "unknown flag", line: "IMPORT --from=x block@" + good.String() + " /a", want: []string{"unknown flag: --from"}},
		{name: "variable", line: "IMPORT block@" + good.String() + " $DEST", want: []string{"variables are not expanded"}},
		{name: "missing block", line: "IMPORT block@" + missing.String() + " /a", want: []string{missing.String(), "not found in the block store", "line 4"}},
		{name: "corrupt block", line: "IMPORT block@" + corrupt.String() + " /a", want: []string{corrupt.String(), "does not match its digest", "line 4"}},
		{name: "file block to a folder", line: "IMPORT block@" + good.String() + " /app/", want: []string{"is a file, not a tree", "line 4"}},
		{name: "corrupt block in an OCI store", line: "IMPORT block@" + corrupt.String() + " /a", attrs: ociStore, want: []string{corrupt.String(), "digest mismatch", "line 4"}},
		{name: "missing block in an OCI store", line: "IMPORT block@" + missing.String() + " /a", attrs: ociStore, want: []string{missing.String(), "not found", "line 4"}},
		{name: "no block source", line: "IMPORT block@" + good.String() + " /a", noStore: true, want: []string{"no block source", "--build-context blocks="}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "Dockerfile"), "FROM "+base+"\nRUN true\n\n"+tc.line+"\nRUN true\n")
			sd := storeDir
			if tc.noStore {
				sd = ""
			}
			b := feInProcess(t, env, dir, sd, tc.attrs)
			if b.Err == nil {
				t.Fatal("build succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(b.Err.Error(), w) {
					t.Errorf("error %q does not contain %q", b.Err, w)
				}
			}
			if tc.noStore {
				return
			}
			if got := feErrorLine(b.Err); got != 4 {
				t.Errorf("error points at line %d, want 4: %v", got, b.Err)
			}
		})
	}

	// Through the frontend image, the client shows the user's line.
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "Dockerfile"), "# syntax="+env.FrontendImage(t)+"\nFROM "+base+"\nRUN true\nIMPORT block@"+corrupt.String()+" /a\n")
	b := feBuildctl(t, env, dir, storeDir)
	if b.Err == nil {
		t.Fatal("build with a corrupt block succeeded")
	}
	for _, w := range []string{"does not match its digest", corrupt.String(), "Dockerfile:4", ">>> IMPORT block@" + corrupt.String() + " /a"} {
		if !strings.Contains(b.Output, w) {
			t.Errorf("buildctl output lacks %q:\n%s", w, b.Output)
		}
	}

	// A block tampered with after a build that verified it (and cached the
	// verification) fails the next build too.
	later := feAddBlock(t, st, []byte("verified once, changed later\n"))
	writeFile(t, filepath.Join(dir, "Dockerfile"), "# syntax="+env.FrontendImage(t)+"\nFROM "+base+"\nRUN true\nIMPORT block@"+later.String()+" /a\n")
	feBuildctl(t, env, dir, storeDir).mustOK(t)
	p = filepath.Join(storeDir, "blobs", "sha256", later.Encoded())
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("VERIFIED once, changed later\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b = feBuildctl(t, env, dir, storeDir)
	if b.Err == nil {
		t.Fatalf("build with a block tampered after a cached verification succeeded:\n%s", b.Output)
	}
	for _, w := range []string{"does not match its digest", later.String(), "Dockerfile:4"} {
		if !strings.Contains(b.Output, w) {
			t.Errorf("buildctl output lacks %q:\n%s", w, b.Output)
		}
	}
}

// TestFrontendRegistryAndHTTPSources: blocks fetched from a registry
// repository (BLOCKFILE_REPO, llb.ImageBlob) or an HTTP server
// (BLOCKFILE_URL, llb.HTTP with a checksum) give the same image as the
// local store.
func TestFrontendRegistryAndHTTPSources(t *testing.T) {
	harness.RequireIntegration(t)
	f := newFEFixture(t)
	writeFile(t, filepath.Join(f.dir, "Dockerfile"), f.dockerfile(t, false))
	fromStore := feInProcess(t, f.env, f.dir, f.storeDir, nil).mustOK(t)

	reg := f.env.Registry(t)
	blobs := filepath.Join(f.storeDir, "blobs", "sha256")
	ents, err := os.ReadDir(blobs)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(blobs, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fePushBlob(t, reg, "team/blocks", b)
	}
	fromRegistry := feInProcess(t, f.env, f.dir, "", map[string]string{"build-arg:BLOCKFILE_REPO": reg + "/team/blocks"}).mustOK(t)
	f.checkImage(t, fromRegistry)

	srv := httptest.NewServer(http.FileServer(http.Dir(f.storeDir)))
	defer srv.Close()
	fromHTTP := feInProcess(t, f.env, f.dir, "", map[string]string{"build-arg:BLOCKFILE_URL": srv.URL + "/blobs"}).mustOK(t)
	f.checkImage(t, fromHTTP)

	if fromRegistry.Manifest != fromStore.Manifest || fromHTTP.Manifest != fromStore.Manifest {
		t.Errorf("manifests differ: store %s, registry %s, http %s", fromStore.Manifest, fromRegistry.Manifest, fromHTTP.Manifest)
	}

	// A block the repository does not have fails at its line.
	dir := t.TempDir()
	missing := digest.FromString("nowhere")
	writeFile(t, filepath.Join(dir, "Dockerfile"), "FROM "+f.env.BaseImage(t)+"\nIMPORT block@"+missing.String()+" /a\n")
	b := feInProcess(t, f.env, dir, "", map[string]string{"build-arg:BLOCKFILE_REPO": reg + "/team/blocks"})
	if b.Err == nil || !strings.Contains(b.Err.Error(), missing.String()) || feErrorLine(b.Err) != 2 {
		t.Errorf("missing registry block: err = %v (line %d), want the digest at line 2", b.Err, feErrorLine(b.Err))
	}
}

// fePushBlob uploads data as a blob of repo (monolithic upload).
func fePushBlob(t testing.TB, reg, repo string, data []byte) {
	t.Helper()
	resp, err := http.Post("http://"+reg+"/v2/"+repo+"/blobs/uploads/", "application/octet-stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload: %s %v", resp.Status, err)
	}
	base, _ := url.Parse("http://" + reg + "/")
	loc = base.ResolveReference(loc)
	q := loc.Query()
	q.Set("digest", digest.FromBytes(data).String())
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload blob: %s", resp.Status)
	}
}

// TestBlockfileBuild: `blockfile build` builds a Dockerfile with IMPORTs
// in-process against buildkitd, with its store as the block source, and
// exports the image into the store: the printed digest is the standard
// image, and the imported files are blocks.
func TestBlockfileBuild(t *testing.T) {
	harness.RequireIntegration(t)
	f := newFEFixture(t)
	writeFile(t, filepath.Join(f.dir, "Dockerfile"), f.dockerfile(t, false))
	bin := f.env.BlockfileBin(t)
	r := bfMust(t, bin, "build", "--addr", f.env.BuildkitAddr(t), "--store", f.storeDir, "--progress", "plain",
		"--build-arg", "SOURCE_DATE_EPOCH=0", "--json", "-t", "app:v1", f.dir)
	var res image.ExportResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("build --json printed %q: %v", r.stdout, err)
	}
	if !strings.Contains(r.stderr, "IMPORT 3 block(s)") {
		t.Errorf("no BuildKit progress for the import step on stderr:\n%s", r.stderr)
	}
	s := openStoreT(t, f.storeDir)
	idx, err := s.Resolve(ctxT(t), "app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if idx.Digest != res.Index.Digest {
		t.Errorf("app:v1 is %s, export result says %s", idx.Digest, res.Index.Digest)
	}
	// a.jar, tool and the tree's two files are imported, so they are blocks
	// whatever their size (a.jar and modules are under 16 KiB).
	if res.Blocks < 4 {
		t.Errorf("export found %d blocks, want at least the 4 imported files", res.Blocks)
	}

	// Plain output prints the standard manifest digest.
	r = bfMust(t, bin, "build", "--addr", f.env.BuildkitAddr(t), "--store", f.storeDir, "--progress", "quiet",
		"--build-arg", "SOURCE_DATE_EPOCH=0", "-t", "app:v1", f.dir)
	if got := strings.TrimSpace(r.stdout); got != res.Standard.Digest.String() {
		t.Errorf("build printed %q, want the standard digest %s", got, res.Standard.Digest)
	}
}

// TestFrontendMultiPlatform: a multi-platform build imports the blocks
// into every platform's image, and each config carries the imports label.
func TestFrontendMultiPlatform(t *testing.T) {
	harness.RequireIntegration(t)
	f := newFEFixture(t)
	writeFile(t, filepath.Join(f.dir, "Dockerfile"), "FROM scratch\nIMPORT block@"+f.jarA.String()+" /app/a.jar\n")
	b := feInProcess(t, f.env, f.dir, f.storeDir, map[string]string{"platform": "linux/amd64,linux/arm64"}).mustOK(t)
	var top ocispec.Index
	readJSONFile(t, filepath.Join(b.Layout, "index.json"), &top)
	if len(top.Manifests) != 1 {
		t.Fatalf("index.json lists %d entries, want the image index", len(top.Manifests))
	}
	var idx ocispec.Index
	readBlobJSON(t, b.Layout, top.Manifests[0], &idx)
	platforms := map[string]bool{}
	for _, m := range idx.Manifests {
		if m.Platform == nil {
			continue
		}
		platforms[m.Platform.Architecture] = true
		var man ocispec.Manifest
		readBlobJSON(t, b.Layout, m, &man)
		var cfg ocispec.Image
		readBlobJSON(t, b.Layout, man.Config, &cfg)
		if got := feImports(t, cfg); got["/app/a.jar"] != f.jarA.String() || len(got) != 1 {
			t.Errorf("%s: imports label %v", m.Platform.Architecture, got)
		}
		if len(man.Layers) != 1 {
			t.Errorf("%s: %d layers, want the import layer only", m.Platform.Architecture, len(man.Layers))
		}
	}
	if !platforms["amd64"] || !platforms["arm64"] {
		t.Errorf("platforms %v, want amd64 and arm64", platforms)
	}
}
