package layer

import (
	"bytes"
	stdgzip "compress/gzip"
	"context"
	"encoding/hex"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/internal/deflate"
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
		m := AppendHeaderMember(nil, tc.c, []byte("abc"))
		if got := hex.EncodeToString(m); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.c, got, tc.want)
		}
		// The pinned bytes must also decompress to the input, with the
		// standard decoders.
		var back []byte
		var err error
		if tc.c == blocks.Gzip {
			back, err = io.ReadAll(mustGzipReader(t, m))
		} else {
			dec, derr := zstd.NewReader(bytes.NewReader(m))
			if derr != nil {
				t.Fatal(derr)
			}
			back, err = io.ReadAll(dec)
			dec.Close()
		}
		if err != nil || string(back) != "abc" {
			t.Errorf("%s: decompresses to %q (%v), want \"abc\"", tc.c, back, err)
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

// A gzip block member is compressed in 1 MiB pieces on several goroutines. Up
// to one piece it is byte for byte the standard compress/gzip at level 6; any size
// decompresses to the input, and the bytes do not depend on scheduling.
func TestChunkedGzip(t *testing.T) {
	tasks := make(chan *chunkTask, 2)
	for i := range 2 {
		go func() {
			var plain *deflate.Writer // one deflater reuses a writer, the other does not
			if i == 0 {
				plain, _ = deflate.NewWriter(io.Discard, gzipLevel)
			}
			for tk := range tasks {
				tk.run(plain)
			}
		}()
	}
	defer close(tasks)
	text := bytes.Repeat([]byte("a fairly compressible line of text, number 12345\n"), 70000)
	for _, n := range []int{1, 511, 32 << 10, gzipChunk - 1, gzipChunk, gzipChunk + 1, gzipChunk + gzipDict/2, 3*gzipChunk + 7} {
		in := append(randBytes(uint64(n), n/2), text[:n-n/2]...)
		var got bytes.Buffer
		if err := chunkedGzip(context.Background(), &got, bytes.NewReader(in), int64(len(in)), tasks); err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(mustGzipReader(t, got.Bytes()))
		if err != nil || !bytes.Equal(out, in) {
			t.Fatalf("%d bytes: does not decompress to the input (%v)", n, err)
		}
		if n <= gzipChunk {
			// One piece is one plain gzip stream, byte for byte what the
			// standard library's compress/gzip writes at level 6 (no name,
			// MTIME 0, OS 255): blocks/internal/deflate is Go 1.26.8's
			// compress/flate, frozen. With another Go release this may
			// differ; then the frozen copy is what keeps members stable.
			var want bytes.Buffer
			zw, err := stdgzip.NewWriterLevel(&want, 6)
			if err != nil {
				t.Fatal(err)
			}
			zw.Write(in)
			zw.Close()
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Errorf("%d bytes: differs from compress/gzip at level 6 (%d bytes, compress/gzip %d)", n, got.Len(), want.Len())
			}
		}
		var again bytes.Buffer
		if err := chunkedGzip(context.Background(), &again, bytes.NewReader(in), int64(len(in)), tasks); err != nil || !bytes.Equal(again.Bytes(), got.Bytes()) {
			t.Errorf("%d bytes: not deterministic (%v)", n, err)
		}
	}
}

func mustGzipReader(t *testing.T, b []byte) io.Reader {
	r, err := stdgzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	r.Multistream(false)
	return r
}
