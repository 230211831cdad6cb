package layer

import (
	"bytes"
	"context"
	"testing"

	"github.com/blockfile/blockfile/blocks"
)

// TestWorkedExample pins the figures of docs/FORMAT.md section 7: change the
// document when this test changes.
func TestWorkedExample(t *testing.T) {
	tarb := makeTar(t, dir("app/"), reg("app/config.yaml", []byte("key: value\n")),
		reg("app/libs/a.jar", randBytes(1, 100_000)), reg("app/libs/b.jar", randBytes(2, 50_000)),
		reg("app/README", []byte("hello\n")))
	if len(tarb) != 155136 || sha(tarb) != "sha256:c1c0127fc487985c3b924e6dba50f17a8981f4252babcd62627a1548b1ee829e" {
		t.Fatalf("raw tar %d bytes %s", len(tarb), sha(tarb))
	}
	// Sizes of the members m0 (verbatim), m1/m3 (header members), m2/m4
	// (block members), m5 (trailing verbatim) and s (the shared stub member).
	type fig struct{ m0, m1, m2, m4, m5, s int64 }
	want := map[blocks.Compression]fig{
		blocks.Gzip: {m0: 132, m1: 535, m2: 100111, m4: 50087, m5: 103, s: 481},
		blocks.Zstd: {m0: 155, m1: 522, m2: 100368, m4: 50190, m5: 104, s: 471},
	}
	for _, c := range compressions {
		ms := newMemStore()
		res, std, blk, err := splitBytes(t, tarb, SplitOptions{Compression: c, MinBlockSize: 64 << 10,
			IsImported: func(n string) bool { return n == "app/libs/b.jar" }, Members: ms})
		if err != nil {
			t.Fatal(err)
		}
		stubs, err := ReadStubs(context.Background(), bytes.NewReader(blk))
		if err != nil || len(stubs) != 2 {
			t.Fatalf("%s: %d stubs, %v", c, len(stubs), err)
		}
		w := want[c]
		doc, _ := EncodeStub(stubs[0].Stub)
		e, _ := stubEntry("app/libs/a.jar", stubs[0].Stub)
		got := fig{m0: stubs[0].Offset, m1: HeaderMemberSize(c, 512), m2: res.Blocks[0].Member.Size, m4: res.Blocks[1].Member.Size}
		got.m5 = int64(len(std)) - got.m0 - 2*got.m1 - got.m2 - got.m4
		got.s = int64(len(blk)) - got.m0 - got.m5
		if got != w || stubs[1].Offset != stubs[0].Offset || len(doc) != 901 || len(e) != 1536 {
			t.Errorf("%s: members %+v, want %+v; stub offsets %d %d; document %d bytes, entry %d", c, got, w, stubs[0].Offset, stubs[1].Offset, len(doc), len(e))
		}
		t.Logf("%s: standard %d bytes, blocked %d; a.jar member %s; document\n%s", c, len(std), len(blk), res.Blocks[0].Member.Digest, doc)
	}
}
