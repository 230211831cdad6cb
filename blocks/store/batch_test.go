package store

import (
	"context"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// A batch checks every blob when it is added, shows none under its name
// before Commit, and leaves no temp file behind on Discard or on a bad blob.
func TestBatchCommitAndDiscard(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	write := func(data string) *BlobWriter {
		w, err := s.NewWriter(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(data)); err != nil {
			t.Fatal(err)
		}
		return w
	}

	b := s.NewBatch()
	a, c := descOf("x", []byte("alpha")), descOf("x", []byte("charlie"))
	if err := b.Add(ctx, write("alpha"), a); err != nil {
		t.Fatal(err)
	}
	if err := b.Add(ctx, write("charlie"), c); err != nil {
		t.Fatal(err)
	}
	wrong := descOf("x", []byte("bravo"))
	if err := b.Add(ctx, write("not bravo"), wrong); !errors.Is(err, ErrSizeMismatch) {
		t.Fatalf("add of other bytes: err = %v, want a size mismatch", err)
	}
	if err := b.Add(ctx, write("brav0"), wrong); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("add of other bytes of the same size: err = %v, want a digest mismatch", err)
	}
	if ok, _ := s.Exists(ctx, a.Digest); ok {
		t.Fatalf("blob %s is visible before Commit", a.Digest)
	}
	if n := len(ingestEntries(t, s)); n != 2 {
		t.Fatalf("ingest holds %d temp files before Commit, want the 2 added", n)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range [][]byte{[]byte("alpha"), []byte("charlie")} {
		desc := descOf("x", d)
		rc, err := s.Fetch(ctx, desc)
		if err != nil {
			t.Fatalf("fetch %s after Commit: %v", desc.Digest, err)
		}
		buf := make([]byte, 64)
		n, _ := rc.Read(buf)
		rc.Close()
		if string(buf[:n]) != string(d) {
			t.Fatalf("blob %s holds %q, want %q", desc.Digest, buf[:n], d)
		}
	}
	if n := len(ingestEntries(t, s)); n != 0 {
		t.Fatalf("ingest holds %d temp files after Commit", n)
	}

	d := s.NewBatch()
	x := descOf("x", []byte("discarded"))
	if err := d.Add(ctx, write("discarded"), x); err != nil {
		t.Fatal(err)
	}
	d.Discard()
	if ok, _ := s.Exists(ctx, x.Digest); ok {
		t.Fatal("a discarded blob is visible")
	}
	if n := len(ingestEntries(t, s)); n != 0 {
		t.Fatalf("ingest holds %d temp files after Discard", n)
	}
}

// A writer reads back what it wrote, before it is added to a batch, and
// nothing past it; once added, not at all.
func TestBlobWriterReadAt(t *testing.T) {
	ctx := context.Background()
	s, err := Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w, err := s.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("blocked layer bytes")
	w.Write(data)
	got := make([]byte, 5)
	if n, err := w.ReadAt(got, 8); err != nil || n != 5 || string(got) != "layer" {
		t.Fatalf("ReadAt: %d %q %v", n, got, err)
	}
	if _, err := w.ReadAt(got, int64(len(data))-2); err == nil {
		t.Error("ReadAt past what was written succeeded")
	}
	b := s.NewBatch()
	defer b.Discard()
	if err := b.Add(ctx, w, ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.ReadAt(got, 0); err == nil {
		t.Error("ReadAt after Add succeeded")
	}
}
