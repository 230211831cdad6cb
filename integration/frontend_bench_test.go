package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bkclient "github.com/moby/buildkit/client"
	"github.com/tonistiigi/fsutil"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/frontend"
	"github.com/blockfile/blockfile/integration/harness"
)

// benchLibs is the dependency folder of the benchmark scenario (148 jars);
// without it the benchmark generates 148 files of a similar size.
const benchLibs = "/tmp/bench/scenario/layers/deps@v1/app/libs"

// TestBenchImport compares IMPORT with COPY for the same 148 jars: build
// time cold (empty BuildKit cache) and warm (nothing changed), as ratios
// measured in one run, and the number of layers, both in-process (as
// `blockfile build` runs) and through the frontend image with buildctl.
// Every build exports an OCI image. Run:
//
//	make bench-import   (BLOCKFILE_BENCH=1 go test -run TestBenchImport -v ./integration/)
//
// It is a benchmark that prints figures, not a test: it asserts only that
// the builds work, so `make test` leaves it out unless BLOCKFILE_BENCH=1.
func TestBenchImport(t *testing.T) {
	harness.RequireIntegration(t)
	if os.Getenv("BLOCKFILE_BENCH") == "" {
		t.Skip("benchmark: run with BLOCKFILE_BENCH=1 (make bench-import)")
	}
	env := harness.Get(t)
	base := env.BaseImage(t)

	libs := benchLibs
	if _, err := os.Stat(libs); err != nil {
		libs = filepath.Join(t.TempDir(), "libs")
		for i := range 148 {
			putFile(t, filepath.Join(libs, fmt.Sprintf("lib-%03d.jar", i)), randBytes(int64(i), 100<<10+i*7000))
		}
		t.Logf("%s not found: using 148 generated files", benchLibs)
	}
	ents, err := os.ReadDir(libs)
	if err != nil {
		t.Fatal(err)
	}
	storeDir, st := feStore(t)
	var imports []string
	var total int64
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		fh, err := os.Open(filepath.Join(libs, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		desc, err := st.Ingest(context.Background(), blocks.MediaTypeBlock, fh)
		fh.Close()
		if err != nil {
			t.Fatal(err)
		}
		total += desc.Size
		imports = append(imports, "IMPORT block@"+desc.Digest.String()+" /app/libs/"+e.Name())
	}
	t.Logf("%d files, %.1f MiB", len(imports), float64(total)/(1<<20))

	runLine := "RUN ls /app/libs | wc -l > /app/count.txt"
	importDir := t.TempDir()
	writeFile(t, filepath.Join(importDir, "Dockerfile"), "# syntax="+env.FrontendImage(t)+"\nFROM "+base+"\n"+strings.Join(imports, "\n")+"\n"+runLine+"\n")
	copyDir := t.TempDir()
	writeFile(t, filepath.Join(copyDir, "Dockerfile"), "FROM "+base+"\nCOPY libs/ /app/libs/\n"+runLine+"\n")
	copySyntaxDir := t.TempDir()
	writeFile(t, filepath.Join(copySyntaxDir, "Dockerfile"), "# syntax="+env.FrontendImage(t)+"\nFROM "+base+"\nCOPY libs/ /app/libs/\n"+runLine+"\n")

	// Two ways to build: in-process (blockfile build: the frontend verifies
	// local blocks by reading them back) and buildctl with the frontend
	// image (`# syntax=`; blocks verified in a cached build step). COPY goes
	// the same ways: in-process through frontend.Build (which hands it to
	// upstream), and buildctl through the same frontend image, so that the
	// ratio is IMPORT's cost, not the cost of a `# syntax=` frontend.
	type variant struct {
		name                      string
		dockerfileDir, contextDir string
		buildctl                  bool
		cold, warm                time.Duration
		layers                    int
	}
	variants := []*variant{
		{name: "COPY in-process", dockerfileDir: copyDir, contextDir: filepath.Dir(libs)},
		{name: "IMPORT in-process", dockerfileDir: importDir, contextDir: importDir},
		{name: "COPY buildctl", dockerfileDir: copySyntaxDir, contextDir: filepath.Dir(libs), buildctl: true},
		{name: "IMPORT buildctl", dockerfileDir: importDir, contextDir: importDir, buildctl: true},
	}
	build := func(v *variant) (time.Duration, int) {
		t.Helper()
		var layout string
		var d time.Duration
		if v.buildctl {
			start := time.Now()
			b := feBuildctl(t, env, v.dockerfileDir, storeDir, "--local", "context="+v.contextDir).mustOK(t)
			d, layout = time.Since(start), b.Layout
		} else {
			// As blockfile build runs it: blocks checked on disk through
			// the store's verified-block cache.
			layout, d = feTimedBuild(t, env, v.dockerfileDir, v.contextDir, storeDir, nil, st)
		}
		man, _ := feImage(t, layout)
		return d, len(man.Layers)
	}
	// The machine is shared: each figure is the best of three rounds.
	best := func(a *time.Duration, d time.Duration) {
		if *a == 0 || d < *a {
			*a = d
		}
	}
	for range 3 {
		for _, v := range variants {
			run(t, env.Buildctl(t, "prune", "--all"))
			// Cold means nothing verified yet either.
			if err := os.RemoveAll(filepath.Join(storeDir, "blockfile", "verified")); err != nil {
				t.Fatal(err)
			}
			cold, n := build(v)
			warm, _ := build(v)
			best(&v.cold, cold)
			best(&v.warm, warm)
			v.layers = n
			t.Logf("%-18s cold %6.2fs warm %6.2fs  %d layers", v.name, cold.Seconds(), warm.Seconds(), n)
		}
	}

	ratio := func(a, b time.Duration) float64 { return a.Seconds() / b.Seconds() }
	for i := 0; i < len(variants); i += 2 {
		c, im := variants[i], variants[i+1]
		fmt.Printf("BENCH import-vs-copy %s: %d files %.1f MiB, best of 3 | cold IMPORT %.2fs COPY %.2fs ratio %.2f | "+
			"warm IMPORT %.2fs COPY %.2fs ratio %.2f | layers IMPORT %d COPY %d\n",
			strings.TrimPrefix(c.name, "COPY "), len(imports), float64(total)/(1<<20),
			im.cold.Seconds(), c.cold.Seconds(), ratio(im.cold, c.cold),
			im.warm.Seconds(), c.warm.Seconds(), ratio(im.warm, c.warm),
			im.layers, c.layers)
		if im.layers != c.layers {
			t.Errorf("%d IMPORTs made %d layers; one COPY made %d: a run of imports must be one layer", len(imports), im.layers, c.layers)
		}
	}
}

// feTimedBuild builds in-process (Dockerfile from dockerfileDir, context
// contextDir, blocks from storeDir), exports an OCI archive and returns the
// extracted layout and the time the build and export took. With v, the
// frontend checks local blocks through it (frontend.BuildWithStore).
func feTimedBuild(t testing.TB, env *harness.Env, dockerfileDir, contextDir, storeDir string, attrs map[string]string, v frontend.BlockVerifier) (string, time.Duration) {
	t.Helper()
	ctx := context.Background()
	c, err := bkclient.New(ctx, env.BuildkitAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mounts := map[string]fsutil.FS{}
	for name, p := range map[string]string{"context": contextDir, "dockerfile": dockerfileDir, "blocks": storeDir} {
		fs, err := fsutil.NewFS(p)
		if err != nil {
			t.Fatal(err)
		}
		mounts[name] = fs
	}
	out := t.TempDir()
	tarPath := filepath.Join(out, "image.tar")
	fattrs := map[string]string{"build-arg:SOURCE_DATE_EPOCH": "0"}
	for k, v := range attrs {
		fattrs[k] = v
	}
	buildFunc := frontend.Build
	if v != nil {
		buildFunc = frontend.BuildWithStore(v)
	}
	start := time.Now()
	_, err = c.Build(ctx, bkclient.SolveOpt{
		LocalMounts:   mounts,
		OCIStores:     feOCIStores(t, fattrs, storeDir),
		FrontendAttrs: fattrs,
		Exports: []bkclient.ExportEntry{{
			Type:   bkclient.ExporterOCI,
			Output: func(map[string]string) (io.WriteCloser, error) { return os.Create(tarPath) },
		}},
	}, "", buildFunc, nil)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(out, "layout")
	feUntar(t, tarPath, layout)
	return layout, took
}
