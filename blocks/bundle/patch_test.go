package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// docsLayers is an image whose second layer holds many small text files
// (they stay in the blocked layer's verbatim members) and a jar (a block).
// version changes one small file and the jar.
func docsLayers(version string) []map[string][]byte {
	docs := map[string][]byte{}
	for i := range 300 {
		var b strings.Builder
		for l := range 40 {
			fmt.Fprintf(&b, "package %d, line %d: %s\n", i, l, strings.Repeat(fmt.Sprint(i*l%97), l%7+1))
		}
		docs[fmt.Sprintf("usr/share/doc/pkg%03d/README", i)] = []byte(b.String())
	}
	docs["usr/share/doc/pkg150/changelog"] = []byte("release " + version + "\n")
	docs["usr/lib/libx.so"] = jar("libx "+version, 50000)
	return []map[string][]byte{
		{"etc/os-release": []byte("ID=test\n")},
		docs,
	}
}

// patchFixture exports v1 and v2 of docsLayers into a source store, and
// applies v1 to a site.
type patchFixture struct {
	src, site *store.Store
	v1, v2    *image.ExportResult
	full      string
	dir       string
}

func newPatchFixture(t *testing.T) *patchFixture {
	ctx := context.Background()
	f := &patchFixture{src: openStore(t), site: openStore(t), dir: t.TempDir()}
	f.v1 = export(t, f.src, "docs:v1", docsLayers("v1"))
	f.v2 = export(t, f.src, "docs:v2", docsLayers("v2"))
	f.full = filepath.Join(f.dir, "v1.bundle")
	if _, err := Create(ctx, f.src, []string{"docs:v1"}, f.full, CreateOptions{Full: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(ctx, f.site, f.full, ApplyOptions{NoMaterialize: true}); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *patchFixture) upgrade(t *testing.T, name string, opts CreateOptions) (*Header, string) {
	t.Helper()
	p := filepath.Join(f.dir, name)
	h, err := Create(context.Background(), f.src, []string{"docs:v2"}, p, opts)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestPatchShipsOnlyWhatChanged: the v2 blocked layer differs from v1's in
// one small file's member and one stub; it travels as a patch against v1's
// blocked layer, a fraction of its size, and apply rebuilds the exact image.
func TestPatchShipsOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	f := newPatchFixture(t)
	whole, wholePath := f.upgrade(t, "whole.bundle", CreateOptions{From: []string{"docs:v1"}, NoPatches: true})
	h, p := f.upgrade(t, "patched.bundle", CreateOptions{From: []string{"docs:v1"}})
	if whole.Patched != nil {
		t.Fatalf("--no-patches bundle has patches: %+v", whole.Patched)
	}
	if h.Patched == nil {
		t.Fatal("the v1->v2 bundle carries no patch")
	}
	var layer *Blob
	for i, b := range h.Blobs {
		if b.Kind == KindBlockedLayer {
			layer = &h.Blobs[i]
		}
	}
	if layer == nil || layer.Patch == nil {
		t.Fatalf("the changed blocked layer is not patched: %+v", layer)
	}
	if layer.Patch.Encoding != PatchZstdGzipMembers {
		t.Errorf("the gzip blocked layer travels as a %s patch, want %s", layer.Patch.Encoding, PatchZstdGzipMembers)
	}
	t.Logf("blocked layer %d bytes travels as a %d-byte patch; bundle %d bytes, %d without patches",
		layer.Size, layer.Patch.Size, fileSize(t, p), fileSize(t, wholePath))
	if layer.Patch.Size*4 > layer.Size {
		t.Errorf("patch of %d bytes for a %d-byte blocked layer where one small file changed", layer.Patch.Size, layer.Size)
	}
	if fileSize(t, p) >= fileSize(t, wholePath) {
		t.Errorf("patched bundle %d bytes, whole %d", fileSize(t, p), fileSize(t, wholePath))
	}
	// The base is a prerequisite: one more required blob than without patches.
	if h.Requires.Blobs <= whole.Requires.Blobs {
		t.Errorf("requires %d blobs with patches, %d without: the patch base is not counted", h.Requires.Blobs, whole.Requires.Blobs)
	}
	// Adds counts the blobs rebuilt, whatever travels.
	if h.Adds.Bytes != whole.Adds.Bytes || h.Adds.Blobs != whole.Adds.Blobs {
		t.Errorf("adds %+v with patches, %+v without", h.Adds, whole.Adds)
	}
	if h.Shipped() >= h.Adds.Bytes {
		t.Errorf("shipped %d bytes, adds %d", h.Shipped(), h.Adds.Bytes)
	}
	// The same inputs make the same bytes.
	_, again := f.upgrade(t, "again.bundle", CreateOptions{From: []string{"docs:v1"}})
	a, _ := os.ReadFile(p)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Error("two bundles of the same upgrade differ")
	}

	res, err := Apply(ctx, f.site, p, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Images[0].Standard.Digest; got != f.v2.Standard.Digest {
		t.Fatalf("applied %s, built %s", got, f.v2.Standard.Digest)
	}
	if err := f.site.Verify(ctx, func(p store.Problem) { t.Errorf("verify: %+v", p) }); err != nil {
		t.Fatal(err)
	}
	// The rebuilt blocked layer is the source's, byte for byte.
	want, _ := os.ReadFile(f.src.BlobPath(layer.Digest))
	got, _ := os.ReadFile(f.site.BlobPath(layer.Digest))
	if !bytes.Equal(got, want) {
		t.Error("the blocked layer rebuilt from the patch differs from the source's")
	}
}

// TestPatchBaseMissingFailsBeforeWriting: a site that lacks the patch base
// gets the base listed as missing, and nothing is written.
func TestPatchBaseMissingFailsBeforeWriting(t *testing.T) {
	f := newPatchFixture(t)
	h, p := f.upgrade(t, "patched.bundle", CreateOptions{From: []string{"docs:v1"}})
	var base BlobRef
	for _, b := range h.Blobs {
		if b.Kind == KindBlockedLayer && b.Patch != nil {
			base = b.Patch.Base
		}
	}
	if base.Digest == "" {
		t.Fatal("no patched blocked layer")
	}
	if err := os.Remove(f.site.BlobPath(base.Digest)); err != nil {
		t.Fatal(err)
	}
	err := applyMustFail(t, f.site, p)
	var me *MissingError
	if !errors.As(err, &me) || !strings.Contains(err.Error(), base.Digest.String()) {
		t.Fatalf("apply without the patch base: %v; want a MissingError naming %s", err, base.Digest)
	}
}

// TestPatchDamagedFailsBeforeWriting: a flipped byte in a patch, or a patch
// against the wrong base, fails the check pass and writes nothing.
func TestPatchDamagedFailsBeforeWriting(t *testing.T) {
	f := newPatchFixture(t)
	h, p := f.upgrade(t, "patched.bundle", CreateOptions{From: []string{"docs:v1"}})
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var patched Blob
	for _, b := range h.Blobs {
		if b.Kind == KindBlockedLayer && b.Patch != nil {
			patched = b
		}
	}
	off := entryOffset(t, data, blobName(patched.Patch.Digest))
	bad := bytes.Clone(data)
	bad[off+patched.Patch.Size/2] ^= 0x40
	bp := filepath.Join(t.TempDir(), "flipped.bundle")
	if err := os.WriteFile(bp, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	err = applyMustFail(t, f.site, bp)
	if !strings.Contains(err.Error(), patched.Patch.Digest.String()) {
		t.Errorf("error %q does not name the damaged patch %s", err, patched.Patch.Digest)
	}
}

// entryOffset returns where the data of the tar entry name starts in data.
func entryOffset(t *testing.T, data []byte, name string) int64 {
	t.Helper()
	cr := &countingReader{r: bytes.NewReader(data)}
	tr := tar.NewReader(cr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			t.Fatalf("no entry %s", name)
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == name {
			return cr.n
		}
	}
}

// TestPatchZstdLayers: zstd blocked layers cannot be described member by
// member; they travel as zstd-dict patches of their compressed bytes, and
// apply still rebuilds the exact image.
func TestPatchZstdLayers(t *testing.T) {
	ctx := context.Background()
	src, site := openStore(t), openStore(t)
	dir := t.TempDir()
	exportZstd := func(name, version string) *image.ExportResult {
		ld := t.TempDir()
		writeLayout(t, ld, docsLayers(version))
		s, err := transport.ParseSource(ctx, "oci:"+ld)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		res, err := image.Export(ctx, src, s, name, image.ExportOptions{MinBlockSize: 4096, Compression: blocks.Zstd})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	exportZstd("z:v1", "v1")
	v2 := exportZstd("z:v2", "v2")
	full, up := filepath.Join(dir, "v1.bundle"), filepath.Join(dir, "v2.bundle")
	if _, err := Create(ctx, src, []string{"z:v1"}, full, CreateOptions{Full: true}); err != nil {
		t.Fatal(err)
	}
	h, err := Create(ctx, src, []string{"z:v2"}, up, CreateOptions{From: []string{"z:v1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range h.Blobs {
		if b.Patch != nil && b.Patch.Encoding != PatchZstdDict {
			t.Errorf("%s travels as a %s patch; zstd layers and manifests take %s", b, b.Patch.Encoding, PatchZstdDict)
		}
	}
	if h.Patched == nil {
		t.Error("no blob of the zstd upgrade travels as a patch")
	}
	for _, p := range []string{full, up} {
		if _, err := Apply(ctx, site, p, ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	info, err := image.Inspect(ctx, site, "z:v2")
	if err != nil || info.Standard.Digest != v2.Standard.Digest {
		t.Fatalf("applied z:v2: %v %v, want %s", info, err, v2.Standard.Digest)
	}
}

// TestPatchFromAndHaveAgree: with an inventory, patch bases are looked for
// in every image of the source store, also ones the site lacks (here one
// that shares more layers with v2 than v1 does); only blobs the inventory
// lists may be bases, so the bundle is byte for byte the one --from makes.
func TestPatchFromAndHaveAgree(t *testing.T) {
	ctx := context.Background()
	f := newPatchFixture(t)
	export(t, f.src, "docs:other", append(docsLayers("v2"), map[string][]byte{"extra/file": []byte("x")}))
	var ds []digest.Digest
	if err := f.site.Walk(ctx, func(d digest.Digest, _ int64) error { ds = append(ds, d); return nil }); err != nil {
		t.Fatal(err)
	}
	inv, err := NewInventory(ds, DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	hf, from := f.upgrade(t, "from.bundle", CreateOptions{From: []string{"docs:v1"}})
	_, have := f.upgrade(t, "have.bundle", CreateOptions{Have: inv})
	a, _ := os.ReadFile(from)
	b, _ := os.ReadFile(have)
	if !bytes.Equal(a, b) {
		t.Errorf("--from and --have bundles differ (%d and %d bytes)", len(a), len(b))
	}
	var cfg bool
	for _, bl := range hf.Blobs {
		cfg = cfg || bl.Kind == KindConfig && bl.Patch != nil
	}
	if !cfg {
		t.Error("the config does not travel as a patch against v1's")
	}
	if _, err := Apply(ctx, f.site, have, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
}
