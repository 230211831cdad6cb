package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	bkclient "github.com/moby/buildkit/client"
	"github.com/moby/buildkit/solver/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/tonistiigi/fsutil"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/tree"
	"github.com/blockfile/blockfile/frontend"
	"github.com/blockfile/blockfile/integration/harness"
)

// feStore creates an empty block store.
func feStore(t testing.TB) (string, *store.Store) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "store")
	s, err := store.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, s
}

// feAddBlock puts data into s as a raw block and returns its digest.
func feAddBlock(t testing.TB, s *store.Store, data []byte) digest.Digest {
	t.Helper()
	desc := ocispec.Descriptor{MediaType: blocks.MediaTypeBlock, Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := s.Push(context.Background(), desc, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	return desc.Digest
}

// feAddTree adds the folder dir to s as a tree block (its files as blocks).
func feAddTree(t testing.TB, s *store.Store, dir string) digest.Digest {
	t.Helper()
	ctx := context.Background()
	doc, _, err := tree.Build(ctx, dir, func(ctx context.Context, p string) (blocks.Ref, error) {
		f, err := os.Open(p)
		if err != nil {
			return blocks.Ref{}, err
		}
		defer f.Close()
		desc, err := s.Ingest(ctx, blocks.MediaTypeBlock, f)
		if err != nil {
			return blocks.Ref{}, err
		}
		return blocks.Ref{Digest: desc.Digest, Size: desc.Size}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ref := tree.DocRef(doc)
	if err := s.Push(ctx, ref.Descriptor(blocks.MediaTypeTree), bytes.NewReader(doc)); err != nil {
		t.Fatal(err)
	}
	return ref.Digest
}

// feBuild is the outcome of one build.
type feBuild struct {
	Manifest digest.Digest // the image manifest
	Layout   string        // OCI layout directory of the image
	Output   string        // progress output (buildctl, buildx)
	Err      error
}

// feInProcess builds dir (context and Dockerfile) with frontend.Build running
// in this process, blocks from storeDir, and exports an OCI layout.
func feInProcess(t testing.TB, env *harness.Env, dir, storeDir string, attrs map[string]string) feBuild {
	t.Helper()
	ctx := context.Background()
	c, err := bkclient.New(ctx, env.BuildkitAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mounts := map[string]fsutil.FS{}
	for name, p := range map[string]string{"context": dir, "dockerfile": dir, "blocks": storeDir} {
		if p == "" {
			continue
		}
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
	resp, err := c.Build(ctx, bkclient.SolveOpt{
		LocalMounts:   mounts,
		OCIStores:     feOCIStores(t, fattrs, storeDir),
		FrontendAttrs: fattrs,
		Exports: []bkclient.ExportEntry{{
			Type:   bkclient.ExporterOCI,
			Output: func(map[string]string) (io.WriteCloser, error) { return os.Create(tarPath) },
		}},
	}, "", frontend.Build, nil)
	if err != nil {
		return feBuild{Err: err}
	}
	layout := filepath.Join(out, "layout")
	feUntar(t, tarPath, layout)
	return feBuild{Manifest: digest.Digest(resp.ExporterResponse["containerimage.digest"]), Layout: layout}
}

// feOCIStores attaches storeDir as the session OCI store named by the
// BLOCKFILE_OCI_STORE build arg, if set (as `blockfile build` does).
func feOCIStores(t testing.TB, attrs map[string]string, storeDir string) map[string]content.Store {
	t.Helper()
	id := attrs["build-arg:"+frontend.ArgOCIStore]
	if id == "" {
		return nil
	}
	cs, err := contentlocal.NewStore(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]content.Store{id: cs}
}

// feBuildctl builds dir with `buildctl build --frontend dockerfile.v0`, so a
// `# syntax=` line picks the frontend image.
func feBuildctl(t testing.TB, env *harness.Env, dir, storeDir string, extra ...string) feBuild {
	t.Helper()
	out := t.TempDir()
	layout := filepath.Join(out, "layout")
	meta := filepath.Join(out, "metadata.json")
	args := []string{"build", "--progress=plain", "--frontend", "dockerfile.v0",
		"--local", "context=" + dir, "--local", "dockerfile=" + dir,
		"--opt", "build-arg:SOURCE_DATE_EPOCH=0",
		"--output", "type=oci,dest=" + layout + ",tar=false",
		"--metadata-file", meta}
	if storeDir != "" {
		args = append(args, "--local", "blocks="+storeDir)
	}
	return feRun(t, env.Buildctl(t, append(args, extra...)...), layout, meta)
}

// feBuildx builds dir with `docker buildx build` on the remote-driver builder.
func feBuildx(t testing.TB, env *harness.Env, dir, storeDir string, extra ...string) feBuild {
	t.Helper()
	docker, denv := env.Buildx(t)
	out := t.TempDir()
	layout := filepath.Join(out, "layout")
	meta := filepath.Join(out, "metadata.json")
	args := []string{"buildx", "build", "--progress=plain", "--provenance=false",
		"--build-arg", "SOURCE_DATE_EPOCH=0",
		"--output", "type=oci,dest=" + layout + ",tar=false",
		"--metadata-file", meta}
	if storeDir != "" {
		args = append(args, "--build-context", "blocks="+storeDir)
	}
	args = append(append(args, extra...), dir)
	cmd := exec.Command(docker, args...)
	cmd.Env = denv
	return feRun(t, cmd, layout, meta)
}

func feRun(t testing.TB, cmd *exec.Cmd, layout, meta string) feBuild {
	t.Helper()
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s: %v", strings.Join(cmd.Args, " "), err)
	}
	b := feBuild{Layout: layout, Output: buf.String()}
	if err != nil {
		b.Err = fmt.Errorf("%s: %w\n%s", filepath.Base(cmd.Args[0]), err, buf.String())
		return b
	}
	var m map[string]any
	readJSONFile(t, meta, &m)
	if d, ok := m["containerimage.digest"].(string); ok {
		b.Manifest = digest.Digest(d)
	}
	return b
}

// mustOK fails t if the build failed.
func (b feBuild) mustOK(t testing.TB) feBuild {
	t.Helper()
	if b.Err != nil {
		t.Fatalf("build failed: %v", b.Err)
	}
	return b
}

// feErrorLine returns the first Dockerfile line an error points at: from the
// error's sources (in-process) or from the client's "Dockerfile:N" output.
func feErrorLine(err error) int {
	for _, s := range errdefs.Sources(err) {
		for _, r := range s.Ranges {
			return int(r.Start.Line)
		}
	}
	return 0
}

// feImage reads the image manifest and config of a single-image layout.
func feImage(t testing.TB, layout string) (ocispec.Manifest, ocispec.Image) {
	t.Helper()
	var idx ocispec.Index
	readJSONFile(t, filepath.Join(layout, "index.json"), &idx)
	if len(idx.Manifests) != 1 {
		t.Fatalf("%s: %d manifests, want 1", layout, len(idx.Manifests))
	}
	var man ocispec.Manifest
	readBlobJSON(t, layout, idx.Manifests[0], &man)
	var cfg ocispec.Image
	readBlobJSON(t, layout, man.Config, &cfg)
	return man, cfg
}

// feImports decodes the dev.blockfile.imports label of a config.
func feImports(t testing.TB, cfg ocispec.Image) map[string]string {
	t.Helper()
	v, ok := cfg.Config.Labels[blocks.LabelImports]
	if !ok {
		t.Fatalf("config has no %s label (labels %v)", blocks.LabelImports, cfg.Config.Labels)
	}
	m := map[string]string{}
	if err := json.Unmarshal([]byte(v), &m); err != nil {
		t.Fatalf("label %s = %q: %v", blocks.LabelImports, v, err)
	}
	return m
}

// feUntar extracts an OCI archive into dir.
func feUntar(t testing.TB, archive, dir string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(p, filepath.Clean(dir)+string(filepath.Separator)) {
			t.Fatalf("archive entry %q escapes", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				var w *os.File
				if w, err = os.Create(p); err == nil {
					_, err = io.Copy(w, tr)
					if cerr := w.Close(); err == nil {
						err = cerr
					}
				}
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
