package store

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestBlobWriterDigestsOnAnotherGoroutine: a large blob written in uneven pieces (small
// ones hashed inline, then large ones on the hashing goroutine, then small
// ones again) gets exactly the sha256 of its bytes, and a wrong digest is
// refused, as with inline hashing.
func TestBlobWriterDigestsOnAnotherGoroutine(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	data := make([]byte, 7<<20+13)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	pieces := []int{100, 4096, digestAsyncMin - 1, digestAsyncMin, 3 << 20, 7, 1 << 20}
	w, err := s.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rest := data
	for i := 0; len(rest) > 0; i++ {
		n := min(len(rest), pieces[i%len(pieces)])
		if _, err := w.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	if got, want := w.Digest(), digest.FromBytes(data); got != want {
		t.Fatalf("digest %s, want %s", got, want)
	}
	desc, err := w.Commit(ctx, "application/octet-stream")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := s.Fetch(ctx, desc)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := got.ReadFrom(rc); err != nil || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got.Bytes(), data))
	}
	rc.Close()

	// The same bytes declared with another digest: refused, nothing stored.
	b := s.NewBatch()
	w2, err := s.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w2.Write(data)
	wrong := digest.FromString("not these bytes")
	if err := b.Add(ctx, w2, ocispec.Descriptor{Digest: wrong, Size: int64(len(data))}); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("batch add with a wrong digest: %v", err)
	}
	if ok, _ := s.Exists(ctx, wrong); ok {
		t.Fatal("a blob with a wrong digest was stored")
	}
	// Closing a writer mid-way stops its hashing goroutine and drops it.
	w3, _ := s.NewWriter(ctx)
	w3.Write(data[:2<<20])
	if err := w3.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestDigesterReset: one Digester reused for several blobs (as a bundle's
// check pass does), small and large, gives each its own sha256.
func TestDigesterReset(t *testing.T) {
	d := NewDigester()
	defer d.Close()
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 10, digestAsyncMin, 3<<20 + 1, 100} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		d.Reset()
		for rest := data; len(rest) > 0; {
			k := min(len(rest), 1<<20)
			d.Write(rest[:k])
			rest = rest[k:]
		}
		if got, want := d.Digest(), digest.FromBytes(data); got != want {
			t.Errorf("%d bytes: %s, want %s", n, got, want)
		}
	}
}
