package bundle

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/blockfile/blockfile/blocks/layer"
)

// memberBase is a base blob of two gzip members, as Split writes them.
func memberBase(t testing.TB) []byte {
	var b bytes.Buffer
	for _, s := range []string{"first member, some text\n", "second member, other text\n"} {
		if err := layer.GzipMember(&b, bytes.Repeat([]byte(s), 50), layer.FormPieces); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// FuzzRebuildMembers: whatever a (decoded) member description holds,
// rebuilding never panics, never reads outside the base, and writes at most
// one record past the declared size before failing.
func FuzzRebuildMembers(f *testing.F) {
	base := memberBase(f)
	rec := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	uv := func(n uint64) []byte { return binary.AppendUvarint(nil, n) }
	f.Add(rec([]byte{'C'}, uv(0), []byte{'C'}, uv(1)))
	f.Add(rec([]byte{'D', 0}, uv(5), []byte("hello"), []byte{'L'}, uv(3), []byte("abc")))
	f.Add(rec([]byte{'C'}, uv(7)))
	f.Add(rec([]byte{'D', 9}, uv(1), []byte("x")))
	f.Add(rec([]byte{'L'}, uv(1<<40)))
	f.Add([]byte("Z"))
	f.Fuzz(func(t *testing.T, desc []byte) {
		spans, err := gzipSpans(base, maxMemberDict)
		if err != nil {
			t.Fatal(err)
		}
		const size = 4096
		var out bytes.Buffer
		err = rebuildMembers(&out, bufio.NewReader(bytes.NewReader(desc)), spans, base, size, newDeflateBudget())
		if err == nil && out.Len() > size+maxMemberRecord+64 {
			t.Fatalf("%d bytes out for a %d-byte blob", out.Len(), size)
		}
	})
}

// TestMemberPatchRoundTrip: a blob of members, some from the base, one
// changed, one from another compressor (not rebuildable), comes back
// exactly from its member patch.
func TestMemberPatchRoundTrip(t *testing.T) {
	base := memberBase(t)
	spans, _ := gzipSpans(base, maxMemberDict)
	var blob bytes.Buffer
	blob.Write(base[spans[1].off : spans[1].off+spans[1].n]) // a copy
	layer.GzipMember(&blob, bytes.Repeat([]byte("first member, some TEXT\n"), 50), layer.FormPieces)
	// A member no form rebuilds: stored (level 0) deflate.
	foreign := []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 1, 3, 0, 0xfc, 0xff, 'a', 'b', 'c', 0xc2, 0x41, 0x24, 0x35, 3, 0, 0, 0}
	blob.Write(foreign)
	var patch bytes.Buffer
	if err := makeMemberPatch(&patch, blob.Bytes(), base, t.TempDir(), newDeflateBudget()); err != nil {
		t.Fatal(err)
	}
	b := Blob{Digest: "sha256:x", Size: int64(blob.Len()), Patch: &Patch{Encoding: PatchZstdGzipMembers}}
	rd, stop, err := unpatchMembers(&patch, b, base, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	var got bytes.Buffer
	if _, err := got.ReadFrom(rd); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), blob.Bytes()) {
		t.Fatalf("rebuilt %d bytes, want the %d of the blob", got.Len(), blob.Len())
	}
	if patch.Len() >= blob.Len() {
		t.Errorf("patch of %d bytes for a %d-byte blob", patch.Len(), blob.Len())
	}
}
