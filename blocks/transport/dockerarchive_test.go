package transport

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// tarEntry is one entry of a test archive: a file, or a symlink if link is set.
type tarEntry struct {
	name, link string
	data       []byte
}

func writeTestTar(t testing.TB, file string, entries []tarEntry) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), Typeflag: tar.TypeReg}
		if e.link != "" {
			h = &tar.Header{Name: e.name, Mode: 0o777, Typeflag: tar.TypeSymlink, Linkname: e.link}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// layerTar returns a one-file layer tar.
func layerTar(t testing.TB, name, content string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg})
	tw.Write([]byte(content))
	tw.Close()
	return buf.Bytes()
}

func gzipped(data []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(data)
	zw.Close()
	return buf.Bytes()
}

// legacyDockerSave writes an archive shaped like `docker save` before
// Docker 25: <id>/layer.tar per layer, the repeated layer as a symlink to
// the first, a gzip layer as docker load accepts, config <hex>.json. It
// returns the layer files' contents in manifest order.
func legacyDockerSave(t testing.TB, file string, tamper bool) (config []byte, layers [][]byte) {
	a := layerTar(t, "a.txt", "alpha")
	b := gzipped(layerTar(t, "b.txt", "bravo"))
	diffA, diffB := digest.FromBytes(a), digest.FromBytes(layerTar(t, "b.txt", "bravo"))
	config = []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + diffA + `","` + diffB + `","` + diffA + `"]}}`)
	cfgName := digest.FromBytes(config).Encoded() + ".json"
	man := `[{"Config":"` + cfgName + `","RepoTags":["app:v1","registry.example/team/app:v1"],"Layers":["l1/layer.tar","l2/layer.tar","l3/layer.tar"]}]`
	stored := a
	if tamper {
		stored = layerTar(t, "a.txt", "ALPHA")
	}
	writeTestTar(t, file, []tarEntry{
		{name: cfgName, data: config},
		{name: "l1/layer.tar", data: stored},
		{name: "l2/layer.tar", data: b},
		{name: "l3/layer.tar", link: "../l1/layer.tar"},
		{name: "manifest.json", data: []byte(man)},
		{name: "repositories", data: []byte(`{}`)},
	})
	return config, [][]byte{a, b, a}
}

func readAllFetch(t *testing.T, src Source, d ocispec.Descriptor) ([]byte, error) {
	t.Helper()
	rc, err := src.Fetch(context.Background(), d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func TestDockerArchiveSource(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "save.tar")
	config, layers := legacyDockerSave(t, file, false)
	for _, ref := range []string{"", ":app:v1", ":registry.example/team/app:v1", ":docker.io/library/app:v1", ":@0"} {
		src, err := ParseSource(ctx, "docker-archive:"+file+ref)
		if err != nil {
			t.Fatalf("%q: %v", ref, err)
		}
		root, _ := src.Resolve(ctx)
		data, err := readAllFetch(t, src, root)
		if err != nil {
			t.Fatal(err)
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(data, &m); err != nil || root.MediaType != MediaTypeDockerManifest || len(m.Layers) != 3 {
			t.Fatalf("%q: manifest %s (%v)", ref, data, err)
		}
		if m.Config.Digest != digest.FromBytes(config) {
			t.Errorf("config digest %s, want the config file's", m.Config.Digest)
		}
		wantMT := []string{MediaTypeDockerLayerTar, MediaTypeDockerLayerGzip, MediaTypeDockerLayerTar}
		for i, l := range m.Layers {
			if l.MediaType != wantMT[i] || l.Digest != digest.FromBytes(layers[i]) {
				t.Errorf("layer %d: %s %s", i, l.MediaType, l.Digest)
			}
			got, err := readAllFetch(t, src, l)
			if err != nil || !bytes.Equal(got, layers[i]) {
				t.Errorf("layer %d: %d bytes, %v", i, len(got), err)
			}
		}
		if got, err := readAllFetch(t, src, m.Config); err != nil || !bytes.Equal(got, config) {
			t.Errorf("config: %v", err)
		}
		src.Close()
	}
	for _, ref := range []string{":other:v1", ":@1", ":@x"} {
		if _, err := ParseSource(ctx, "docker-archive:"+file+ref); err == nil {
			t.Errorf("%q: no error", ref)
		}
	}
	if _, err := ParseSink(ctx, "docker-archive:"+file); !errors.Is(err, ErrBadReference) {
		t.Errorf("docker-archive sink: %v, want ErrBadReference", err)
	}
}

// A layer whose bytes do not match the config's diff ID fails when read.
func TestDockerArchiveTamperedLayer(t *testing.T) {
	file := filepath.Join(t.TempDir(), "save.tar")
	legacyDockerSave(t, file, true)
	src, err := ParseSource(context.Background(), "docker-archive:"+file)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	root, _ := src.Resolve(context.Background())
	data, _ := readAllFetch(t, src, root)
	var m ocispec.Manifest
	json.Unmarshal(data, &m)
	if _, err := readAllFetch(t, src, m.Layers[0]); !IsVerifyError(err) {
		t.Errorf("tampered layer: %v, want a verify error", err)
	}
}

func TestDockerArchiveRejects(t *testing.T) {
	dir := t.TempDir()
	cfg := []byte(`{"rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("0", 64) + `"]}}`)
	for name, entries := range map[string][]tarEntry{
		"no manifest":    {{name: "x", data: []byte("x")}},
		"escaping layer": {{name: "c.json", data: cfg}, {name: "manifest.json", data: []byte(`[{"Config":"c.json","Layers":["../../etc/passwd"]}]`)}},
		"missing config": {{name: "manifest.json", data: []byte(`[{"Config":"c.json","Layers":[]}]`)}},
		"layer count":    {{name: "c.json", data: cfg}, {name: "manifest.json", data: []byte(`[{"Config":"c.json","Layers":[]}]`)}},
		"two images":     {{name: "c.json", data: cfg}, {name: "manifest.json", data: []byte(`[{"Config":"c.json"},{"Config":"c.json"}]`)}},
		"symlink loop":   {{name: "c.json", data: cfg}, {name: "l", link: "m"}, {name: "m", link: "l"}, {name: "manifest.json", data: []byte(`[{"Config":"c.json","Layers":["l"]}]`)}},
		"bad diff id":    {{name: "c.json", data: []byte(`{"rootfs":{"type":"layers","diff_ids":["sha256:x"]}}`)}, {name: "l", data: []byte("x")}, {name: "manifest.json", data: []byte(`[{"Config":"c.json","Layers":["l"]}]`)}},
		"not json":       {{name: "manifest.json", data: []byte(`{`)}},
	} {
		file := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".tar")
		writeTestTar(t, file, entries)
		if src, err := ParseSource(context.Background(), "docker-archive:"+file); err == nil {
			src.Close()
			t.Errorf("%s: no error", name)
		}
	}
}

// FuzzDockerArchive: any manifest.json and config either open into an image
// whose blobs all verify, or fail; never panic.
func FuzzDockerArchive(f *testing.F) {
	f.Add([]byte(`[{"Config":"c.json","RepoTags":["a:b"],"Layers":["l"]}]`), []byte(`{"rootfs":{"type":"layers","diff_ids":["sha256:`+strings.Repeat("0", 64)+`"]}}`))
	f.Add([]byte(`[{"Config":"c.json","Layers":["l","l"],"LayerSources":{}}]`), []byte(`{}`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, man, cfg []byte) {
		file := filepath.Join(dir, "f.tar")
		writeTestTar(t, file, []tarEntry{{name: "c.json", data: cfg}, {name: "l", data: layerTar(t, "x", "y")}, {name: "manifest.json", data: man}})
		src, err := ParseSource(context.Background(), "docker-archive:"+file)
		if err != nil {
			return
		}
		defer src.Close()
		root, _ := src.Resolve(context.Background())
		data, err := readAllFetch(t, src, root)
		if err != nil {
			t.Fatalf("made-up manifest does not verify: %v", err)
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatal(err)
		}
		for _, l := range m.Layers {
			readAllFetch(t, src, l) // may fail verification; must not panic
		}
	})
}
