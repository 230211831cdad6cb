package layer

import (
	"bytes"
	stdgzip "compress/gzip"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
)

// gzipMembers cuts a gzip stream into its members' compressed bytes.
func gzipMembers(t *testing.T, b []byte) [][]byte {
	t.Helper()
	r := bytes.NewReader(b)
	var out [][]byte
	for r.Len() > 0 {
		start := r.Size() - int64(r.Len())
		zr, err := stdgzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		zr.Multistream(false)
		if _, err := io.Copy(io.Discard, zr); err != nil {
			t.Fatal(err)
		}
		out = append(out, b[start:r.Size()-int64(r.Len())])
	}
	return out
}

// TestGzipMemberRebuildsSplitMembers: every member of a blocked layer (and
// every block member) is rebuilt byte for byte by GzipMember from its
// uncompressed bytes in one of the forms; bundles depend on it.
func TestGzipMemberRebuildsSplitMembers(t *testing.T) {
	var es []entry
	for i := range 300 {
		es = append(es, reg(fmt.Sprintf("doc/%03d.txt", i), []byte(strings.Repeat(fmt.Sprintf("line %d\n", i), 40+i))))
	}
	es = append(es,
		reg("big/verbatim.bin", randBytes(5, 2<<20+777)),  // a verbatim member of over 1 MiB
		reg("big/exact.bin", randBytes(6, 1<<20-512-512)), // with its header: a 1 MiB verbatim member
		reg("lib/a.jar", randBytes(7, 3<<20+5)),           // a block of several pieces
		reg("lib/b.jar", randBytes(8, 70000)),             // consecutive blocks: one stub member
		reg("lib/c.jar", randBytes(9, 4<<20)),             // a block of exactly 4 pieces
	)
	tarb := makeTar(t, es...)
	ms := newMemStore()
	res, _, blk, err := splitBytes(t, tarb, SplitOptions{MinBlockSize: 3 << 20, Members: ms, IsImported: func(n string) bool { return strings.HasPrefix(n, "lib/") }})
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, m []byte) {
		t.Helper()
		zr, err := stdgzip.NewReader(bytes.NewReader(m))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		for f := MemberForm(0); f.Valid(); f++ {
			var out bytes.Buffer
			if err := GzipMember(&out, raw, f); err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(out.Bytes(), m) {
				return
			}
		}
		t.Errorf("%s (%d bytes, %d uncompressed): no form rebuilds it", what, len(m), len(raw))
	}
	members := gzipMembers(t, blk)
	if len(members) < 4 {
		t.Fatalf("%d members in the blocked layer", len(members))
	}
	for i, m := range members {
		check(fmt.Sprintf("blocked layer member %d", i), m)
	}
	for _, d := range memberDescs(res) {
		rc, err := ms.Fetch(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		m, _ := io.ReadAll(rc)
		rc.Close()
		check("block member "+d.Digest.String(), m)
	}
}

// goldenInput is 3 MiB + 5 of text and pseudo-random bytes, the same on
// every machine.
func goldenInput() []byte {
	text := bytes.Repeat([]byte("blockfile golden member, line of text 0123456789\n"), 50000)
	in := append(randBytes(77, 1<<20), text...)
	return in[:3<<20+5]
}

// TestGzipMemberGolden pins GzipMember's bytes: members must come out the
// same from the same bytes with any Go release (bundles deflate members
// again at the site; export reuses members), which is why the deflate
// compressor is a frozen copy (blocks/internal/deflate). If this fails, the
// format changed: docs/FORMAT.md section 2.
func TestGzipMemberGolden(t *testing.T) {
	in := goldenInput()
	for f, want := range map[MemberForm]string{
		FormPieces:          "sha256:2f2f3654061f3a8f53a8c544fbaaa3f254ef19bf0dadd4f442638d646158d075",
		FormPiecesEmptyLast: "sha256:e1fc9d791ec254766107258e2a46850698181d18bde922905444edff2338eccd",
		FormOneStream:       "sha256:311b4b1c6cf18264cee7c56a2772066bbb1b3e2b9409d4930794af22561d9812",
	} {
		var out bytes.Buffer
		if err := GzipMember(&out, in, f); err != nil {
			t.Fatal(err)
		}
		if got := sha(out.Bytes()).String(); got != want {
			t.Errorf("form %d: %s (%d bytes), want %s", f, got, out.Len(), want)
		}
		// The pinned bytes must also be a gzip of the input.
		zr, err := stdgzip.NewReader(bytes.NewReader(out.Bytes()))
		if err != nil {
			t.Fatalf("form %d: not gzip: %v", f, err)
		}
		back, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(back, in) {
			t.Errorf("form %d: decompresses to %d bytes (%v), not the %d of the input", f, len(back), err, len(in))
		}
	}
}
