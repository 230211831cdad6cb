package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestVerifyBlobCache: a blob is hashed once; unchanged, it is trusted from
// its record; rewritten in place (even with the old mtime put back), it is
// hashed again and a mismatch is reported.
func TestVerifyBlobCache(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("block "), 10000)
	desc, err := s.Ingest(ctx, "application/octet-stream", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if cached, err := s.VerifyBlob(ctx, desc.Digest); err != nil || cached {
		t.Fatalf("first verify: cached %v, %v; want a hash", cached, err)
	}
	if cached, err := s.VerifyBlob(ctx, desc.Digest); err != nil || !cached {
		t.Fatalf("second verify: cached %v, %v; want the record", cached, err)
	}

	// Tamper: same size, mtime restored; ctime moves, so it is re-hashed.
	p := s.BlobPath(desc.Digest)
	fi, _ := os.Stat(p)
	os.Chmod(p, 0o644)
	bad := bytes.Clone(data)
	bad[100] ^= 1
	time.Sleep(10 * time.Millisecond)
	if err := os.WriteFile(p, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	if _, err := s.VerifyBlob(ctx, desc.Digest); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("tampered blob: %v, want ErrDigestMismatch", err)
	}
	// Put back: hashed again, then cached again.
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if cached, err := s.VerifyBlob(ctx, desc.Digest); err != nil || cached {
		t.Fatalf("restored: cached %v, %v", cached, err)
	}
	if cached, err := s.VerifyBlob(ctx, desc.Digest); err != nil || !cached {
		t.Fatalf("restored, again: cached %v, %v", cached, err)
	}

	missing := digest.FromString("nothing")
	if _, err := s.VerifyBlob(ctx, missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing blob: %v", err)
	}
	if _, err := s.VerifyBlob(ctx, "sha256:../../etc/passwd"); err == nil {
		t.Error("malformed digest: no error")
	}
	// gc of the blob drops its record.
	if _, err := s.GC(ctx, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.path(verifiedDir + "/" + desc.Digest.Encoded())); !os.IsNotExist(err) {
		t.Errorf("record after gc: %v", err)
	}
}
