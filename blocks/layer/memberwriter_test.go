package layer

import (
	"bytes"
	"context"
	"math/rand"
	"testing"
)

// TestWriteBlockMemberIsGzipMember: the streaming writer gives the member
// GzipMember gives in FormPieces (the form of block members), at sizes
// around the piece boundaries.
func TestWriteBlockMemberIsGzipMember(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	data := make([]byte, 3<<20+700)
	for i := range data {
		data[i] = byte(r.Intn(16)) // compressible
	}
	for _, n := range []int{0, 1, 512, gzipChunk - 1, gzipChunk, gzipChunk + 1, 2 * gzipChunk, len(data)} {
		var want, got bytes.Buffer
		if err := GzipMember(&want, data[:n], FormPieces); err != nil {
			t.Fatal(err)
		}
		if err := WriteBlockMember(context.Background(), &got, bytes.NewReader(data[:n]), int64(n)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Errorf("%d bytes: WriteBlockMember differs from GzipMember(FormPieces)", n)
		}
	}
}
