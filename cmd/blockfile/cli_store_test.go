package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
)

// testConfig is the image config putImage stores.
const testConfig = `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`

// buildBlockfile builds the real binary into a temp dir.
func buildBlockfile(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "blockfile")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// run runs the binary against storeDir and returns stdout, stderr, exit code.
func run(t *testing.T, bin, storeDir string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "BLOCKFILE_STORE="+storeDir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func sha256sum(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

// putImage writes an image shaped like export's output (image index with the
// dev.blockfile.standard annotation -> standard manifest -> config, layer)
// and tags it.
func putImage(t *testing.T, s *store.Store, name string) (index, std, layer ocispec.Descriptor) {
	t.Helper()
	ctx := context.Background()
	pushB := func(mt string, b []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
		if err := s.Push(ctx, d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	putJ := func(mt string, v any) ocispec.Descriptor {
		d, err := s.PutJSON(ctx, mt, v)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	config := pushB(ocispec.MediaTypeImageConfig, []byte(testConfig))
	layer = pushB(ocispec.MediaTypeImageLayerGzip, bytes.Repeat([]byte{0x1f, 0x8b, 0}, 1000))
	std = putJ(ocispec.MediaTypeImageManifest, ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest, Config: config, Layers: []ocispec.Descriptor{layer}})
	index = putJ(ocispec.MediaTypeImageIndex, ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{std},
		Annotations: map[string]string{
			blocks.AnnotationStandard:          string(std.Digest),
			blocks.AnnotationStandardMediaType: std.MediaType,
			blocks.AnnotationStandardSize:      strconv.FormatInt(std.Size, 10),
		}})
	if err := s.Tag(ctx, name, index); err != nil {
		t.Fatal(err)
	}
	return index, std, layer
}

func TestCLIStoreVerbs(t *testing.T) {
	bin := buildBlockfile(t)
	storeDir := filepath.Join(t.TempDir(), "store")
	src := t.TempDir()
	jar := filepath.Join(src, "guava.jar")
	os.WriteFile(jar, bytes.Repeat([]byte("jar bytes "), 5000), 0o644)
	jdk := filepath.Join(src, "jdk")
	os.MkdirAll(filepath.Join(jdk, "bin"), 0o755)
	os.WriteFile(filepath.Join(jdk, "bin", "java"), []byte("java"), 0o755)
	os.WriteFile(filepath.Join(jdk, "release"), []byte("21"), 0o644)

	// block add: sha256sum-style lines; the file digest is what sha256sum says.
	out, errOut, code := run(t, bin, storeDir, "block", "add", jar, jdk)
	if code != 0 {
		t.Fatalf("block add: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || lines[0] != sha256sum(t, jar)+"  "+jar || !strings.HasSuffix(lines[1], "  "+jdk) {
		t.Fatalf("block add printed:\n%s", out)
	}
	treeDigest := strings.Fields(lines[1])[0]
	// The blob file is the jar itself (what --build-context blocks=<store> reads).
	blob := filepath.Join(storeDir, "blobs", "sha256", strings.TrimPrefix(sha256sum(t, jar), "sha256:"))
	if sha256sum(t, blob) != sha256sum(t, jar) {
		t.Fatal("blob file differs from the jar")
	}

	// --json
	out, _, code = run(t, bin, storeDir, "block", "add", "--json", jar, jdk)
	var added []addedBlock
	if code != 0 || json.Unmarshal([]byte(out), &added) != nil || len(added) != 2 ||
		added[0].Kind != "file" || added[0].Size != 50000 || string(added[0].Digest) != sha256sum(t, jar) ||
		added[1].Kind != "tree" || string(added[1].Digest) != treeDigest || added[1].Files != 2 {
		t.Fatalf("block add --json (exit %d):\n%s", code, out)
	}

	// --import-to
	out, _, _ = run(t, bin, storeDir, "block", "add", "--import-to", "/app/libs/", jar, jdk)
	want := "IMPORT block@" + sha256sum(t, jar) + " /app/libs/guava.jar\nIMPORT block@" + treeDigest + " /app/libs/jdk/\n"
	if out != want {
		t.Fatalf("--import-to folder:\n%s\nwant:\n%s", out, want)
	}
	out, _, _ = run(t, bin, storeDir, "block", "add", "--import-to", "/opt/java", jdk)
	if out != "IMPORT block@"+treeDigest+" /opt/java/\n" {
		t.Fatalf("--import-to exact tree destination: %s", out)
	}
	if _, _, code := run(t, bin, storeDir, "block", "add", "--import-to", "relative", jar); code != 2 {
		t.Fatalf("relative --import-to: exit %d, want 2", code)
	}
	if _, errOut, code := run(t, bin, storeDir, "block", "add", filepath.Join(src, "nope")); code != 1 || !strings.Contains(errOut, "nope") {
		t.Fatalf("missing PATH: exit %d, %s", code, errOut)
	}
	if out, _, _ := run(t, bin, storeDir, "block", "ls"); strings.Count(out, "\n") != 2 || !strings.Contains(out, treeDigest) {
		t.Fatalf("block ls:\n%s", out)
	}

	// ls: an exported-shaped image and a tag from another tool.
	s, err := store.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	index, std, layer := putImage(t, s, "app:v1")
	if err := s.Tag(context.Background(), "other", std); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = run(t, bin, storeDir, "ls")
	if code != 0 || !strings.Contains(out, "app:v1") || !strings.Contains(out, string(std.Digest)) || !strings.Contains(out, "other") {
		t.Fatalf("ls (exit %d):\n%s%s", code, out, errOut)
	}
	out, _, _ = run(t, bin, storeDir, "ls", "--json")
	var entries []lsEntry
	if err := json.Unmarshal([]byte(out), &entries); err != nil || len(entries) != 2 {
		t.Fatalf("ls --json: %v\n%s", err, out)
	}
	app := entries[0]
	cfgSize := int64(len(testConfig))
	if app.Name != "app:v1" || app.Kind != "blockfile" || app.Digest != index.Digest || app.Standard == nil ||
		app.Standard.Digest != std.Digest || app.Size != std.Size+layer.Size+cfgSize {
		t.Fatalf("ls --json app:v1 = %+v (want size %d)", app, std.Size+layer.Size+cfgSize)
	}
	if entries[1].Name != "other" || entries[1].Kind != "other" || entries[1].Standard != nil {
		t.Fatalf("ls --json other = %+v", entries[1])
	}
	if _, _, code := run(t, bin, storeDir, "ls", "extra"); code != 2 {
		t.Fatalf("ls extra: exit %d, want 2", code)
	}

	// verify: sound, then a flipped byte in the layer.
	if out, errOut, code := run(t, bin, storeDir, "verify"); code != 0 || !strings.HasPrefix(out, "ok: ") {
		t.Fatalf("verify on a sound store: exit %d\n%s%s", code, out, errOut)
	}
	layerPath := s.BlobPath(layer.Digest)
	good, _ := os.ReadFile(layerPath)
	bad := bytes.Clone(good)
	bad[100] ^= 1
	os.Chmod(layerPath, 0o644)
	os.WriteFile(layerPath, bad, 0o444)
	out, errOut, code = run(t, bin, storeDir, "verify")
	if code != 1 || !strings.Contains(out, "corrupt: "+string(layer.Digest)+" "+layerPath) || !strings.Contains(errOut, "1 problem") {
		t.Fatalf("verify with a flipped byte: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	out, _, code = run(t, bin, storeDir, "verify", "--json")
	var vr struct {
		OK       bool            `json:"ok"`
		Problems []store.Problem `json:"problems"`
	}
	if code != 1 || json.Unmarshal([]byte(out), &vr) != nil || vr.OK || len(vr.Problems) != 1 || vr.Problems[0].Digest != layer.Digest {
		t.Fatalf("verify --json: exit %d\n%s", code, out)
	}
	os.WriteFile(layerPath, good, 0o444)

	// gc: garbage goes, images and added blocks stay.
	garbage := []byte("nobody references me")
	gd := ocispec.Descriptor{MediaType: "x", Digest: digest.FromBytes(garbage), Size: int64(len(garbage))}
	if err := s.Push(context.Background(), gd, bytes.NewReader(garbage)); err != nil {
		t.Fatal(err)
	}
	out, _, code = run(t, bin, storeDir, "gc", "--dry-run")
	if code != 0 || !strings.Contains(out, "would remove "+string(gd.Digest)) || !strings.Contains(out, "would free 20 B in 1 blob(s)") {
		t.Fatalf("gc --dry-run: exit %d\n%s", code, out)
	}
	if ok, _ := s.Exists(context.Background(), gd.Digest); !ok {
		t.Fatal("gc --dry-run removed a blob")
	}
	out, _, code = run(t, bin, storeDir, "gc")
	if code != 0 || !strings.Contains(out, "removed "+string(gd.Digest)) || !strings.Contains(out, "freed 20 B in 1 blob(s)") {
		t.Fatalf("gc: exit %d\n%s", code, out)
	}
	for _, d := range []digest.Digest{gd.Digest} {
		if ok, _ := s.Exists(context.Background(), d); ok {
			t.Fatalf("gc left %s", d)
		}
	}
	for _, d := range []string{sha256sum(t, jar), treeDigest, string(index.Digest), string(layer.Digest)} {
		if ok, _ := s.Exists(context.Background(), digest.Digest(d)); !ok {
			t.Fatalf("gc removed %s", d)
		}
	}
	if _, _, code := run(t, bin, storeDir, "verify"); code != 0 {
		t.Fatalf("verify after gc: exit %d", code)
	}
	// gc --blocks drops the added blocks (jar, tree, tree files), not the image.
	out, _, code = run(t, bin, storeDir, "gc", "--blocks", "--json")
	var gr struct {
		Removed []struct {
			Digest digest.Digest `json:"digest"`
		} `json:"removed"`
		BlockRecords []digest.Digest `json:"blockRecords"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &gr) != nil || len(gr.Removed) != 4 || len(gr.BlockRecords) != 2 {
		t.Fatalf("gc --blocks --json: exit %d\n%s", code, out)
	}
	if ok, _ := s.Exists(context.Background(), index.Digest); !ok {
		t.Fatal("gc --blocks removed the image")
	}
}

// verify passes on a store whose standard layer is absent but hydratable
// (what `bundle apply --materialize=false` leaves) and says so; once the
// block set is gone too, the layer is missing.
func TestCLIVerifyHydratable(t *testing.T) {
	bin := buildBlockfile(t)
	storeDir := filepath.Join(t.TempDir(), "store")
	s, err := store.Create(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	push := func(mt string, b []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
		if err := s.Push(ctx, d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	putJ := func(v ocispec.Manifest) ocispec.Descriptor {
		v.Versioned, v.MediaType = specs.Versioned{SchemaVersion: 2}, ocispec.MediaTypeImageManifest
		d, err := s.PutJSON(ctx, ocispec.MediaTypeImageManifest, v)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	config := push(ocispec.MediaTypeImageConfig, []byte(testConfig))
	layer := push(ocispec.MediaTypeImageLayerGzip, []byte("standard layer"))
	blockedLayer := push(ocispec.MediaTypeImageLayerGzip, []byte("blocked layer"))
	member := push(blocks.MediaTypeMemberGzip, []byte("member"))
	empty := push(ocispec.MediaTypeEmptyJSON, []byte("{}"))
	std := putJ(ocispec.Manifest{Config: config, Layers: []ocispec.Descriptor{layer}})
	blocked := putJ(ocispec.Manifest{ArtifactType: blocks.ArtifactTypeBlocked, Config: config, Layers: []ocispec.Descriptor{blockedLayer},
		Annotations: map[string]string{blocks.AnnotationBlockedOf: string(std.Digest)}})
	set := putJ(ocispec.Manifest{ArtifactType: blocks.ArtifactTypeBlockSet, Config: empty, Layers: []ocispec.Descriptor{member},
		Annotations: map[string]string{blocks.AnnotationBlockSetOf: string(blockedLayer.Digest)}})
	blocked.Annotations = map[string]string{blocks.AnnotationBlockedOf: string(std.Digest)}
	set.Annotations = map[string]string{blocks.AnnotationBlockSetOf: string(blockedLayer.Digest)}
	index, err := s.PutJSON(ctx, ocispec.MediaTypeImageIndex, ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{std, blocked, set},
		Annotations: map[string]string{
			blocks.AnnotationStandard:          string(std.Digest),
			blocks.AnnotationStandardMediaType: std.MediaType,
			blocks.AnnotationStandardSize:      strconv.FormatInt(std.Size, 10),
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(ctx, "app:v1", index); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(s.BlobPath(layer.Digest)); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := run(t, bin, storeDir, "verify")
	if code != 0 || !strings.HasPrefix(out, "ok: ") || !strings.Contains(out, "1 standard layer(s) absent but hydratable") {
		t.Fatalf("verify without the hydratable layer: exit %d\n%s%s", code, out, errOut)
	}
	var vr struct {
		OK         bool               `json:"ok"`
		Problems   []store.Problem    `json:"problems"`
		Hydratable []store.Hydratable `json:"hydratable"`
	}
	out, _, code = run(t, bin, storeDir, "verify", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &vr) != nil || !vr.OK || len(vr.Problems) != 0 ||
		len(vr.Hydratable) != 1 || vr.Hydratable[0].Digest != layer.Digest || vr.Hydratable[0].Blocked != blockedLayer.Digest ||
		vr.Hydratable[0].BlockSet != set.Digest || vr.Hydratable[0].Manifest != std.Digest {
		t.Fatalf("verify --json: exit %d\n%s", code, out)
	}

	if err := os.Remove(s.BlobPath(member.Digest)); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = run(t, bin, storeDir, "verify")
	if code != 1 || !strings.Contains(out, "missing: "+string(layer.Digest)) || !strings.Contains(out, "missing: "+string(member.Digest)) {
		t.Fatalf("verify without the member: exit %d\n%s%s", code, out, errOut)
	}
}
