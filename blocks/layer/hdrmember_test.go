package layer

import (
	"bytes"
	stdgzip "compress/gzip"
	"encoding/hex"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/blockfile/blockfile/blocks"
)

// The header member encoders must produce streams that stock decoders read
// back, with exactly the sizes HeaderMemberSize predicts.
func TestHeaderMemberDecodes(t *testing.T) {
	sizes := []int{0, 1, 255, 256, 512, 1024, 65535, 65536, 65791, 65792, 131072, 131073, 300_000}
	for _, c := range compressions {
		for _, n := range sizes {
			raw := randBytes(uint64(n), n)
			m := AppendHeaderMember(nil, c, raw)
			if int64(len(m)) != HeaderMemberSize(c, n) {
				t.Errorf("%s %d: member of %d bytes, HeaderMemberSize says %d", c, n, len(m), HeaderMemberSize(c, n))
			}
			var got []byte
			var err error
			if c == blocks.Zstd {
				d, _ := zstd.NewReader(nil)
				got, err = d.DecodeAll(m, nil)
				d.Close()
			} else {
				var g *stdgzip.Reader
				g, err = stdgzip.NewReader(bytes.NewReader(m))
				if err == nil {
					got, err = io.ReadAll(g)
				}
			}
			if err != nil || !bytes.Equal(got, raw) {
				t.Errorf("%s %d: decoded %d bytes, err %v", c, n, len(got), err)
			}
			// Deterministic: the same input gives the same bytes.
			if !bytes.Equal(m, AppendHeaderMember(nil, c, raw)) {
				t.Errorf("%s %d: not deterministic", c, n)
			}
		}
	}
}

// Golden bytes of the header member of 3 bytes "abc", as in docs/FORMAT.md.
func TestHeaderMemberGolden(t *testing.T) {
	for _, tc := range []struct {
		c    blocks.Compression
		want string
	}{
		{blocks.Gzip, "1f8b08000000000000ff" + "010300fcff" + "616263" + "c2412435" + "03000000"},
		{blocks.Zstd, "28b52ffd" + "20" + "03" + "190000" + "616263"},
	} {
		if got := hex.EncodeToString(AppendHeaderMember(nil, tc.c, []byte("abc"))); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.c, got, tc.want)
		}
	}
}

// Normally compressed members (verbatim, stub and block members) carry a
// gzip header with no name, MTIME 0, XFL 0 and OS 255, so a block member
// depends only on the block's bytes.
func TestMemberGzipHeader(t *testing.T) {
	k, err := newCompressor(blocks.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	w := k.begin(&b)
	w.Write(randBytes(1, 10000))
	w.Close()
	if got := hex.EncodeToString(b.Bytes()[:10]); got != "1f8b08000000000000ff" {
		t.Errorf("gzip member header %s", got)
	}
}
