package store

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/blockfile/blockfile/blocks"
)

func benchData(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// BenchmarkPush measures a cold write of a 64 MiB blob (hash, fsync, rename).
func BenchmarkPush(b *testing.B) {
	data := benchData(64 << 20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		b.StopTimer()
		s, err := Create(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		d := descOf(blocks.MediaTypeBlock, data)
		b.StartTimer()
		if err := s.Push(context.Background(), d, bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFetch measures a verified read of a 64 MiB blob.
func BenchmarkFetch(b *testing.B) {
	data := benchData(64 << 20)
	s, err := Create(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	d := descOf(blocks.MediaTypeBlock, data)
	if err := s.Push(context.Background(), d, bytes.NewReader(data)); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	buf := make([]byte, 256<<10)
	for b.Loop() {
		rc, err := s.Fetch(context.Background(), d)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(io.Discard, rc, buf); err != nil {
			b.Fatal(err)
		}
		rc.Close()
	}
}
