package bundle

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
)

// deflateRecord is a 'D' record of a member description.
func deflateRecord(raw []byte) []byte {
	r := append([]byte{'D', byte(layer.FormPieces)}, binary.AppendUvarint(nil, uint64(len(raw)))...)
	return append(r, raw...)
}

// A member patch whose 'D' record holds megabytes that deflate to almost
// nothing (zeros: a few bytes of zstd each) is refused after that record,
// by the bound on deflate input per output byte, and apply says so rather
// than blaming a deflate mismatch. The store is unchanged.
func TestApplyRefusesMemberPatchOverDeflateRatio(t *testing.T) {
	ctx := context.Background()
	f := newPatchFixture(t)
	h, orig := f.upgrade(t, "patched.bundle", CreateOptions{From: []string{"docs:v1"}})
	// The other patches of the upgrade, as the bundle carries them.
	files := bundleEntries(t, orig)
	hostile := *h
	hostile.Blobs = append([]Blob{}, h.Blobs...)
	var target *Blob
	for i, b := range hostile.Blobs {
		if b.Patch != nil && b.Patch.Encoding == PatchZstdGzipMembers {
			target = &hostile.Blobs[i]
		}
	}
	if target == nil {
		t.Fatal("the fixture's upgrade has no member patch")
	}
	base, err := loadBase(ctx, f.src, target.Patch.Base)
	if err != nil {
		t.Fatal(err)
	}
	spans, err := gzipSpans(base, maxMemberDict)
	if err != nil {
		t.Fatal(err)
	}
	// 4 MiB of zeros deflate to ~4 KiB; then more of the same, which must
	// never be reached.
	var desc bytes.Buffer
	for range 2 {
		desc.Write(deflateRecord(make([]byte, 4<<20)))
	}
	var patch bytes.Buffer
	if err := makePatch(&patch, bytes.NewReader(desc.Bytes()), int64(desc.Len()), memberDict(spans)); err != nil {
		t.Fatal(err)
	}
	t.Logf("hostile patch: %d bytes asking for %d bytes to be deflated", patch.Len(), desc.Len())
	pd := digest.FromBytes(patch.Bytes())
	pf := filepath.Join(t.TempDir(), pd.Encoded())
	if err := os.WriteFile(pf, patch.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	p := *target.Patch
	p.Digest, p.Size = pd, int64(patch.Len())
	target.Patch = &p
	hostile.Patched = patched(hostile.Blobs)
	var buf bytes.Buffer
	files[pd] = pf
	if err := Write(ctx, &buf, patchFiles{files: files, next: f.src}, &hostile, nil); err != nil {
		t.Fatal(err)
	}
	bf := filepath.Join(t.TempDir(), "hostile.bundle")
	if err := os.WriteFile(bf, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = applyMustFail(t, f.site, bf)
	t.Logf("refused in %s: %v", time.Since(start), err)
	if !errors.Is(err, ErrBound) || !strings.Contains(err.Error(), "per byte") {
		t.Errorf("apply = %v, want the deflate ratio bound (ErrBound, \"per byte\")", err)
	}
	if errors.Is(err, store.ErrDigestMismatch) || strings.Contains(err.Error(), "came out different") {
		t.Errorf("apply blames a deflate mismatch: %v", err)
	}
}

// The deflate work of all the member patches of a bundle is budgeted: once
// the budget is spent, the next record fails, naming the bound.
func TestMemberPatchDeflateBudget(t *testing.T) {
	base := memberBase(t)
	spans, _ := gzipSpans(base, maxMemberDict)
	// ~100 KB of hex digits: about 2 bytes per deflated byte, well within
	// the ratio.
	var text []byte
	for i := 0; len(text) < 100_000; i++ {
		text = append(text, digest.FromString(fmt.Sprint(i)).Encoded()...)
	}
	var desc bytes.Buffer
	for range 20 {
		desc.Write(deflateRecord(text))
	}
	budget := &deflateBudget{max: 1 << 20}
	err := rebuildMembers(io.Discard, bufio.NewReader(&desc), spans, base, 1<<30, budget)
	if !errors.Is(err, ErrBound) || !strings.Contains(err.Error(), "in one bundle") {
		t.Fatalf("rebuild over the budget = %v, want ErrBound naming the bundle budget", err)
	}
	if used := budget.used.Load(); used > budget.max+int64(len(text)) {
		t.Errorf("deflated %d bytes with a budget of %d", used, budget.max)
	}
	// Within the budget the same records rebuild.
	desc.Reset()
	desc.Write(deflateRecord(text))
	if err := rebuildMembers(io.Discard, bufio.NewReader(&desc), spans, base, 1<<30, &deflateBudget{max: 1 << 20}); err != nil {
		t.Fatalf("one record within the budget: %v", err)
	}
}

// Create never writes a 'D' record over the ratio: a member of zeros
// travels as its compressed bytes, and the patch rebuilds.
func TestMemberPatchShipsHighlyCompressibleMembersAsTheyAre(t *testing.T) {
	base := memberBase(t)
	var blob bytes.Buffer
	if err := layer.GzipMember(&blob, make([]byte, 1<<20), layer.FormPieces); err != nil {
		t.Fatal(err)
	}
	var patch bytes.Buffer
	if err := makeMemberPatch(&patch, blob.Bytes(), base, t.TempDir(), newDeflateBudget()); err != nil {
		t.Fatal(err)
	}
	spans, _ := gzipSpans(base, maxMemberDict)
	dec, err := dictDecoder(&patch, Blob{Digest: "sha256:x"}, memberDict(spans))
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	desc, err := io.ReadAll(dec)
	if err != nil {
		t.Fatal(err)
	}
	if len(desc) == 0 || desc[0] != 'L' {
		t.Fatalf("the zeros member is described by a %q record, want 'L'", desc[:1])
	}
	var out bytes.Buffer
	if err := rebuildMembers(&out, bufio.NewReader(bytes.NewReader(desc)), spans, base, int64(blob.Len()), newDeflateBudget()); err != nil || !bytes.Equal(out.Bytes(), blob.Bytes()) {
		t.Fatalf("rebuilt %d bytes (%v), want the %d of the blob", out.Len(), err, blob.Len())
	}
}

// A header declaring more patched bytes than a bundle may rebuild is
// refused before any patch is read.
func TestHeaderRefusesTooManyPatchedBytes(t *testing.T) {
	h := Header{MediaType: HeaderMediaType, Version: Version, Images: []Image{{Name: "app:v1",
		Index: ociDesc("index"), Standard: ociDesc("standard")}}}
	for i := range MaxPatchedBytes/maxPatchTarget + 1 {
		d := digest.FromString(string(rune('a' + i)))
		h.Blobs = append(h.Blobs, Blob{MediaType: "x", Digest: d, Size: maxPatchTarget, Kind: KindBlockedLayer,
			Patch: &Patch{Encoding: PatchZstdDict, Base: BlobRef{Digest: digest.FromString("base" + d.String()), Size: 1}, Digest: digest.FromString("patch" + d.String()), Size: 1}})
	}
	h.Adds = totals(h.Blobs)
	h.Patched = patched(h.Blobs)
	if err := h.check(); !errors.Is(err, ErrBound) || !strings.Contains(err.Error(), "travel as patches") {
		t.Fatalf("check = %v, want ErrBound on patched bytes", err)
	}
}

func ociDesc(s string) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromString(s), Size: 100}
}

// bundleEntries saves every blob entry of a bundle to a file, by digest.
func bundleEntries(t *testing.T, bundle string) map[digest.Digest]string {
	t.Helper()
	f, err := os.Open(bundle)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	out := map[digest.Digest]string{}
	tr := tar.NewReader(f)
	for {
		th, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		hex, ok := strings.CutPrefix(th.Name, blobDir)
		if !ok || hex == "" {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, hex)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		out[digest.NewDigestFromEncoded(digest.SHA256, hex)] = p
	}
}

// The header entry is refused by its declared size, before it is read.
func TestOpenRefusesOversizedHeader(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: HeaderName, Typeflag: tar.TypeReg, Size: maxHeaderSize + 1, Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	tw.Flush()
	p := filepath.Join(t.TempDir(), "big-header.bundle")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p); !errors.Is(err, ErrBound) || !strings.Contains(err.Error(), HeaderName) {
		t.Fatalf("Open = %v, want ErrBound naming %s", err, HeaderName)
	}
}

// Manifests are held in memory while apply walks the images: one larger
// than a JSON document may be, or more than all may be, is refused from
// the header.
func TestHeaderRefusesOversizedManifests(t *testing.T) {
	h := Header{MediaType: HeaderMediaType, Version: Version, Images: []Image{{Name: "app:v1", Index: ociDesc("index"), Standard: ociDesc("standard")}}}
	h.Blobs = []Blob{{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("m"), Size: maxJSONSize + 1, Kind: KindManifest}}
	h.Adds = totals(h.Blobs)
	if err := h.check(); !errors.Is(err, ErrBound) || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("one manifest of %d bytes: check = %v, want ErrBound", maxJSONSize+1, err)
	}
	h.Blobs = nil
	for i := range maxMetaTotal/maxJSONSize + 1 {
		h.Blobs = append(h.Blobs, Blob{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString(fmt.Sprint(i)), Size: maxJSONSize, Kind: KindManifest})
	}
	h.Adds = totals(h.Blobs)
	if err := h.check(); !errors.Is(err, ErrBound) || !strings.Contains(err.Error(), "in all") {
		t.Fatalf("manifests over %d bytes in all: check = %v, want ErrBound", maxMetaTotal, err)
	}
}

// An inventory's memory follows the digests it holds, not the count its
// header announces; a count above the bound is refused.
func TestReadInventoryBounds(t *testing.T) {
	gz := func(s string) *bytes.Buffer {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write([]byte(s))
		zw.Close()
		return &b
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ReadInventory(gz(fmt.Sprintf("%s sha256 32 %d\n", inventoryMagic, maxInventoryLen) + strings.Repeat("a", 32) + strings.Repeat("b", 32)))
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("inventory announcing %d digests with 2: %v", maxInventoryLen, err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("reading a 2-digest inventory that announces %d allocated %d MiB", maxInventoryLen, alloc>>20)
	}
	if _, err := ReadInventory(gz(fmt.Sprintf("%s sha256 16 %d\n", inventoryMagic, maxInventoryLen+1))); err == nil || !strings.Contains(err.Error(), "bad prefix or count") {
		t.Fatalf("inventory over the count bound: %v", err)
	}
}

// Block deltas count in the bundle's deflate budget: each asks apply to
// deflate its whole block (up to maxDeltaRaw) whatever the size of its
// member, so a header whose deltas declare more than MaxDeflatedBytes in
// all is refused before any delta is read, and apply leaves the store as
// it was.
func TestApplyRefusesDeltasOverTheDeflateBudget(t *testing.T) {
	h := Header{MediaType: HeaderMediaType, Version: Version, Images: []Image{{Name: "app:v1",
		Index: ociDesc("index"), Standard: ociDesc("standard")}}}
	// Members of 300 KB each (the size of 256 MiB of zeros deflated):
	// well within MaxPatchedBytes, far beyond the deflate budget.
	n := MaxDeflatedBytes/maxDeltaRaw + 1
	for i := range n {
		d := digest.FromString(fmt.Sprint("member", i))
		h.Blobs = append(h.Blobs, Blob{MediaType: "application/vnd.blockfile.member.v1.tar+gzip", Digest: d, Size: 300 << 10, Kind: KindBlock,
			Patch: &Patch{Encoding: PatchDeltaMember, Base: BlobRef{Digest: digest.FromString(fmt.Sprint("base", i)), Size: 1000},
				Digest: digest.FromString(fmt.Sprint("delta", i)), Size: 100,
				Block: &BlobRef{Digest: digest.FromString(fmt.Sprint("block", i)), Size: maxDeltaRaw}}})
	}
	h.Adds = totals(h.Blobs)
	h.Patched = patched(h.Blobs)
	if err := h.check(); !errors.Is(err, ErrBound) || !strings.Contains(err.Error(), "deflated") {
		t.Fatalf("check = %v, want ErrBound on the deflate work of the deltas", err)
	}
	// One delta fewer is within the budget.
	h.Blobs = h.Blobs[:n-1]
	h.Adds = totals(h.Blobs)
	h.Patched = patched(h.Blobs)
	if err := h.check(); err != nil {
		t.Fatalf("%d deltas of %d bytes: %v", n-1, maxDeltaRaw, err)
	}

	// The same through apply: a bundle holding only the hostile header.
	h.Blobs = append(h.Blobs, Blob{MediaType: "application/vnd.blockfile.member.v1.tar+gzip", Digest: digest.FromString("last"), Size: 300 << 10, Kind: KindBlock,
		Patch: &Patch{Encoding: PatchDeltaMember, Base: BlobRef{Digest: digest.FromString("last base"), Size: 1000},
			Digest: digest.FromString("last delta"), Size: 100, Block: &BlobRef{Digest: digest.FromString("last block"), Size: maxDeltaRaw}}})
	h.Adds = totals(h.Blobs)
	h.Patched = patched(h.Blobs)
	data, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := writeFile(tw, HeaderName, data); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	p := filepath.Join(t.TempDir(), "hostile.bundle")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	err = applyMustFail(t, openStore(t), p)
	if !errors.Is(err, ErrBound) {
		t.Fatalf("apply = %v, want ErrBound", err)
	}
	t.Log(err)
}
