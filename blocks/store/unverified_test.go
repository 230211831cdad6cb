package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// rewriteBlob replaces the file of blob d (blobs are read-only).
func rewriteBlob(t *testing.T, s *Store, d digest.Digest, data []byte) {
	t.Helper()
	p := s.BlobPath(d)
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// OpenUnverified does not hash, but it checks the size at open and while
// reading, with errors naming the digest and the file.
func TestOpenUnverifiedChecksSize(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	data := bytes.Repeat([]byte("member bytes "), 1000)
	d := push(t, s, "application/octet-stream", data)
	read := func(desc ocispec.Descriptor) ([]byte, error) {
		rc, err := s.OpenUnverified(ctx, desc)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	}

	if got, err := read(d); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("intact blob: %v", err)
	}

	// Same size, other bytes: not detected here (the caller checks a digest
	// covering them), while Fetch refuses them.
	bad := bytes.Clone(data)
	bad[100] ^= 1
	rewriteBlob(t, s, d.Digest, bad)
	if got, err := read(d); err != nil || !bytes.Equal(got, bad) {
		t.Fatalf("same-size blob: %v", err)
	}
	rc, _ := s.Fetch(ctx, d)
	if _, err := io.ReadAll(rc); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Fetch of the same blob: %v, want a digest mismatch", err)
	}
	rc.Close()

	// A file of another size is refused at open.
	for _, size := range []int{len(data) - 1, len(data) + 1, 0} {
		rewriteBlob(t, s, d.Digest, bytes.Repeat([]byte{'x'}, size))
		_, err := read(d)
		if !errors.Is(err, ErrSizeMismatch) || !strings.Contains(err.Error(), d.Digest.String()) || !strings.Contains(err.Error(), s.BlobPath(d.Digest)) {
			t.Errorf("file of %d bytes: %v, want a size mismatch naming the digest and file", size, err)
		}
	}

	// A file that grows or shrinks after the open fails while reading.
	for _, tc := range []struct {
		name   string
		change func(f *os.File) error
	}{
		{"grows", func(f *os.File) error { _, err := f.Write([]byte("more")); return err }},
		{"shrinks", func(f *os.File) error { return f.Truncate(int64(len(data) / 2)) }},
	} {
		rewriteBlob(t, s, d.Digest, data)
		rc, err := s.OpenUnverified(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(s.BlobPath(d.Digest), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := tc.change(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		got, err := io.ReadAll(rc)
		rc.Close()
		if !errors.Is(err, ErrSizeMismatch) || !strings.Contains(err.Error(), d.Digest.String()) {
			t.Errorf("file %s after open: %v, want a size mismatch naming the digest", tc.name, err)
		}
		if len(got) > len(data) {
			t.Errorf("file %s after open: handed out %d bytes, more than the declared %d", tc.name, len(got), len(data))
		}
	}

	if _, err := read(descOf("x", []byte("absent"))); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing blob: %v", err)
	}
	if _, err := read(ocispec.Descriptor{Digest: "sha256:../../etc/passwd", Size: 1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad digest: %v", err)
	}
	if _, err := read(ocispec.Descriptor{Digest: d.Digest, Size: -1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative size: %v", err)
	}
}

// failAtEnd hands out r's bytes, then err instead of io.EOF: a producer that
// found a mismatch once everything was sent (layer.Hydrate).
type failAtEnd struct {
	r   io.Reader
	err error
}

func (f *failAtEnd) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if errors.Is(err, io.EOF) {
		return n, f.err
	}
	return n, err
}

// PushVerified stores a stream without hashing it, but checks its size,
// reads it to its end so a producer's late error stops the write, and
// leaves nothing behind on any failure.
func TestPushVerified(t *testing.T) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("standard layer "), 5000)
	d := descOf("application/vnd.oci.image.layer.v1.tar+gzip", data)
	errLate := errors.New("hydrate: output digest mismatch")
	for _, tc := range []struct {
		name string
		r    io.Reader
		want error
	}{
		{"short", bytes.NewReader(data[:len(data)-1]), ErrSizeMismatch},
		{"long", bytes.NewReader(append(bytes.Clone(data), 'x')), ErrSizeMismatch},
		{"empty", bytes.NewReader(nil), ErrSizeMismatch},
		{"producer fails at the end", &failAtEnd{bytes.NewReader(data), errLate}, errLate},
		{"producer fails midway", io.MultiReader(bytes.NewReader(data[:100]), &failAtEnd{bytes.NewReader(nil), errLate}), errLate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			err := s.PushVerified(ctx, d, tc.r)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), d.Digest.String()) {
				t.Fatalf("got %v, want %v naming %s", err, tc.want, d.Digest)
			}
			if ok, _ := s.Exists(ctx, d.Digest); ok {
				t.Errorf("a failed push left blob %s", d.Digest)
			}
			if left := ingestEntries(t, s); len(left) != 0 {
				t.Errorf("a failed push left temp files %v", left)
			}
		})
	}

	s := newStore(t)
	if err := s.PushVerified(ctx, d, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(s.BlobPath(d.Digest))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("stored blob: %v", err)
	}
	if fi, _ := os.Stat(s.BlobPath(d.Digest)); fi.Mode().Perm() != 0o444 {
		t.Errorf("stored blob mode %v, want read-only", fi.Mode().Perm())
	}
	if left := ingestEntries(t, s); len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
	// Already present: not an error, and the stream is not read.
	r := &failAtEnd{bytes.NewReader(nil), errors.New("read")}
	if err := s.PushVerified(ctx, d, r); err != nil {
		t.Errorf("push of a present blob: %v", err)
	}
}
