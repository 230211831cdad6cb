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
// measured in one run, and the number of layers. Both build in-process
// through frontend.Build and export an OCI archive, as `blockfile build`
// does. Run: go test -run TestBenchImport -v ./integration/
func TestBenchImport(t *testing.T) {
	harness.RequireIntegration(t)
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
	writeFile(t, filepath.Join(importDir, "Dockerfile"), "FROM "+base+"\n"+strings.Join(imports, "\n")+"\n"+runLine+"\n")
	copyDir := t.TempDir()
	writeFile(t, filepath.Join(copyDir, "Dockerfile"), "FROM "+base+"\nCOPY libs/ /app/libs/\n"+runLine+"\n")

	build := func(name, dockerfileDir, contextDir string, attrs map[string]string) (time.Duration, int) {
		t.Helper()
		b, d := feTimedBuild(t, env, dockerfileDir, contextDir, storeDir, attrs)
		man, _ := feImage(t, b)
		t.Logf("%-12s %6.2fs  %d layers", name, d.Seconds(), len(man.Layers))
		return d, len(man.Layers)
	}
	prune := func() {
		t.Helper()
		run(t, env.Buildctl(t, "prune", "--all"))
	}

	// The machine is shared: each figure is the best of three rounds, and
	// the two variants alternate within a round.
	best := func(a *time.Duration, d time.Duration) {
		if *a == 0 || d < *a {
			*a = d
		}
	}
	var copyCold, copyWarm, importCold, importWarm, ociCold, ociWarm time.Duration
	var copyLayers, importLayers int
	oci := map[string]string{"build-arg:" + frontend.ArgOCIStore: "blocks"}
	for range 3 {
		prune()
		d, n := build("COPY cold", copyDir, filepath.Dir(libs), nil)
		best(&copyCold, d)
		copyLayers = n
		d, _ = build("COPY warm", copyDir, filepath.Dir(libs), nil)
		best(&copyWarm, d)
		prune()
		d, n = build("IMPORT cold", importDir, importDir, nil)
		best(&importCold, d)
		importLayers = n
		d, _ = build("IMPORT warm", importDir, importDir, nil)
		best(&importWarm, d)
		prune()
		d, _ = build("IMPORT/oci cold", importDir, importDir, oci)
		best(&ociCold, d)
		d, _ = build("IMPORT/oci warm", importDir, importDir, oci)
		best(&ociWarm, d)
	}

	ratio := func(a, b time.Duration) float64 { return a.Seconds() / b.Seconds() }
	fmt.Printf("BENCH import-vs-copy: %d files %.1f MiB, best of 3 | COPY cold %.2fs warm %.2fs | "+
		"IMPORT (store via --local, frontend verifies) cold %.2fs (%.2fx) warm %.2fs (%.2fx) | "+
		"IMPORT (store as OCI store, blockfile build) cold %.2fs (%.2fx) warm %.2fs (%.2fx) | layers IMPORT %d COPY %d\n",
		len(imports), float64(total)/(1<<20), copyCold.Seconds(), copyWarm.Seconds(),
		importCold.Seconds(), ratio(importCold, copyCold), importWarm.Seconds(), ratio(importWarm, copyWarm),
		ociCold.Seconds(), ratio(ociCold, copyCold), ociWarm.Seconds(), ratio(ociWarm, copyWarm),
		importLayers, copyLayers)
	if importLayers != copyLayers {
		t.Errorf("%d IMPORTs made %d layers; one COPY made %d: a run of imports must be one layer", len(imports), importLayers, copyLayers)
	}
}

// feTimedBuild builds in-process (Dockerfile from dockerfileDir, context
// contextDir, blocks from storeDir), exports an OCI archive and returns the
// extracted layout and the time the build and export took.
func feTimedBuild(t testing.TB, env *harness.Env, dockerfileDir, contextDir, storeDir string, attrs map[string]string) (string, time.Duration) {
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
	start := time.Now()
	_, err = c.Build(ctx, bkclient.SolveOpt{
		LocalMounts:   mounts,
		OCIStores:     feOCIStores(t, fattrs, storeDir),
		FrontendAttrs: fattrs,
		Exports: []bkclient.ExportEntry{{
			Type:   bkclient.ExporterOCI,
			Output: func(map[string]string) (io.WriteCloser, error) { return os.Create(tarPath) },
		}},
	}, "", frontend.Build, nil)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(out, "layout")
	feUntar(t, tarPath, layout)
	return layout, took
}
