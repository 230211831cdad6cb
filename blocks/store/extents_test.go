package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// hostWithExtents writes a host blob of three pieces through a batch: the
// first marked while written (StartExtent, EndExtent), the third after
// (AddExtent); the middle one is not an extent.
func hostWithExtents(t *testing.T, s *Store) (host ocispec.Descriptor, a, b, mid ocispec.Descriptor) {
	t.Helper()
	ctx := context.Background()
	pa, pm, pb := []byte(strings.Repeat("member a ", 1000)), []byte("in between"), []byte(strings.Repeat("member b ", 700))
	a, mid, b = descOf(blocks.MediaTypeMemberGzip, pa), descOf("x", pm), descOf(blocks.MediaTypeMemberGzip, pb)
	w, err := s.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.StartExtent(); err != nil {
		t.Fatal(err)
	}
	w.Write(pa)
	if err := w.EndExtent(a); err != nil {
		t.Fatal(err)
	}
	w.Write(pm)
	off := w.Size()
	w.Write(pb)
	if err := w.AddExtent(ctx, b, off); err != nil {
		t.Fatal(err)
	}
	all := append(append(append([]byte(nil), pa...), pm...), pb...)
	host = descOf(ocispec.MediaTypeImageLayerGzip, all)
	batch := s.NewBatch()
	if err := batch.Add(ctx, w, host); err != nil {
		t.Fatal(err)
	}
	if err := batch.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return host, a, b, mid
}

// TestExtentsReadLikeBlobs: a blob stored as an extent of another has no
// file of its own, and every reader finds it, verified, as a blob.
func TestExtentsReadLikeBlobs(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	host, a, b, mid := hostWithExtents(t, s)
	// A fresh Store: nothing trusted in memory, the record read from disk.
	s2, err := Open(s.Root())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []ocispec.Descriptor{a, b} {
		if exists(s2.BlobPath(m.Digest)) {
			t.Fatalf("extent %s has a file of its own", m.Digest)
		}
		if ok, err := s2.Exists(ctx, m.Digest); !ok || err != nil {
			t.Fatalf("Exists(%s) = %v, %v", m.Digest, ok, err)
		}
		if n, ok, err := s2.BlobSize(ctx, m.Digest); n != m.Size || !ok || err != nil {
			t.Fatalf("BlobSize(%s) = %d, %v, %v", m.Digest, n, ok, err)
		}
		rc, err := s2.Fetch(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || int64(len(got)) != m.Size || descOf(m.MediaType, got).Digest != m.Digest {
			t.Fatalf("Fetch(%s): %d bytes, %v", m.Digest, len(got), err)
		}
		bf, err := s2.OpenFile(m)
		if err != nil {
			t.Fatal(err)
		}
		if bf.Host != host.Digest || !strings.Contains(bf.Path, "at offset") {
			t.Fatalf("OpenFile(%s): host %s, path %s", m.Digest, bf.Host, bf.Path)
		}
		bf.Close()
	}
	if ok, _ := s2.Exists(ctx, mid.Digest); ok {
		t.Fatal("bytes between extents are not a blob")
	}
	// Once the host is gone, so are its extents.
	os.Remove(s2.BlobPath(host.Digest))
	if ok, _ := s2.Exists(ctx, a.Digest); ok {
		t.Fatal("extent present without its host")
	}
	if _, err := s2.Fetch(ctx, a); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch without host: %v, want ErrNotFound", err)
	}
}

// TestExtentsRefuseWrongBytes: an extent that does not hold its blob is
// refused where it is marked, naming the digest.
func TestExtentsRefuseWrongBytes(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	w, err := s.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	want := descOf(blocks.MediaTypeMemberGzip, []byte("expected"))
	w.StartExtent()
	w.Write([]byte("received"))
	if err := w.EndExtent(want); !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), want.Digest.String()) {
		t.Fatalf("EndExtent = %v", err)
	}
	if err := w.AddExtent(ctx, want, 0); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("AddExtent = %v", err)
	}
	if err := w.AddExtent(ctx, want, 4); !errors.Is(err, ErrSizeMismatch) {
		t.Fatalf("AddExtent past the end = %v", err)
	}
	w.StartExtent()
	if err := s.NewBatch().Add(ctx, w, descOf("x", []byte("receivedx"))); err == nil {
		t.Fatal("a blob with an extent left open was added")
	}
}

// TestGCExtractsExtentsOfSweptHost: gc sweeps a host no image uses, after
// giving the extents still referenced (here by a block record) a file of
// their own; the others go with the host.
func TestGCExtractsExtentsOfSweptHost(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	host, a, b, _ := hostWithExtents(t, s)
	if err := s.RecordBlock(ctx, a); err != nil {
		t.Fatal(err)
	}
	res, err := s.GCWithOptions(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Extracted) != 1 || res.Extracted[0].Digest != a.Digest || len(res.ExtentRecords) != 1 {
		t.Fatalf("extracted %v, records %v", res.Extracted, res.ExtentRecords)
	}
	if exists(s.BlobPath(host.Digest)) || !exists(s.BlobPath(a.Digest)) {
		t.Fatal("host kept or extent not extracted")
	}
	if ok, _ := s.Exists(ctx, b.Digest); ok {
		t.Fatal("an unreferenced extent outlived its host")
	}
	rc, err := s.Fetch(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
	if err := s.Verify(ctx, func(p Problem) { t.Errorf("verify: %s", p) }); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyChecksExtents: verify hashes every extent of an intact host
// and names the record of one that does not hold its blob.
func TestVerifyChecksExtents(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	host, a, _, _ := hostWithExtents(t, s)
	if err := s.RecordBlock(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(ctx, func(p Problem) { t.Errorf("verify: %s", p) }); err != nil {
		t.Fatal(err)
	}
	// Point a's extent one byte further.
	p := s.extentRecordPath(host.Digest)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.Replace(b, []byte(`"offset":0`), []byte(`"offset":1`), 1)
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, b, 0o444); err != nil {
		t.Fatal(err)
	}
	var probs []Problem
	err = s.Verify(ctx, func(p Problem) { probs = append(probs, p) })
	if !errors.Is(err, ErrProblems) || len(probs) != 1 || probs[0].Kind != ProblemBadRecord || probs[0].Path != p || probs[0].Digest != a.Digest {
		t.Fatalf("verify = %v, %+v", err, probs)
	}
}
