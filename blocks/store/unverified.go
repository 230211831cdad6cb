package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/internal/fsutil"
)

// The two methods below skip the digest check of Fetch and Push. Each is
// only for a caller that checks a digest covering the same bytes itself, so
// that a byte is hashed once instead of two or three times: layer.Hydrate
// reads block members with OpenUnverified, hashes the whole standard layer
// it writes against the layer's digest, and image.Materialize stores that
// already-checked stream with PushVerified. Sizes are always checked.

// OpenUnverified opens the blob desc without hashing it. Only for callers
// that verify a digest covering these bytes (and that re-read the blob with
// Fetch to name it when that check fails). The size is checked: a file of
// another size is refused at once, and the reader fails (ErrSizeMismatch,
// naming the digest and the file) on reading past desc.Size or on reaching
// EOF before it.
func (s *Store) OpenUnverified(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	bf, err := s.OpenFile(desc)
	if err != nil {
		return nil, err
	}
	return &sizedReader{r: ctxReader{ctx, bf.reader()}, f: bf.File, desc: desc, path: bf.Path}, nil
}

// sizedReader is a blob file read without hashing: it checks only that the
// content is exactly desc.Size bytes (the file may change after the Stat).
type sizedReader struct {
	r    io.Reader
	f    *os.File
	desc ocispec.Descriptor
	path string
	n    int64
	err  error // sticky
}

func (r *sizedReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	// At most one byte past the declared size: enough to know it is wrong.
	if rem := r.desc.Size - r.n + 1; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, err := r.r.Read(p)
	r.n += int64(n)
	switch {
	case r.n > r.desc.Size:
		r.err = fmt.Errorf("blob %s (%s): content is longer than the declared %d bytes: %w", r.desc.Digest, r.path, r.desc.Size, ErrSizeMismatch)
		return n - int(r.n-r.desc.Size), r.err
	case errors.Is(err, io.EOF) && r.n != r.desc.Size:
		r.err = fmt.Errorf("blob %s (%s): content is %d bytes, declared %d: %w", r.desc.Digest, r.path, r.n, r.desc.Size, ErrSizeMismatch)
	case errors.Is(err, io.EOF):
		r.err = io.EOF
	case err != nil:
		r.err = fmt.Errorf("blob %s (%s): %w", r.desc.Digest, r.path, err)
	}
	return n, r.err
}

func (r *sizedReader) Close() error { return r.f.Close() }

// PushVerified stores the content of r as the blob desc like Push (temp
// file, fsync, read-only, rename; a blob already present is not an error and
// r is then not read), but without hashing it. Only for streams whose
// producer checks them against desc and fails the stream (a Read error
// instead of io.EOF) on any mismatch, as layer.Hydrate does for the layer it
// writes. r is read to its end, so such a failure always reaches the store
// before the rename; the size is checked here.
func (s *Store) PushVerified(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error {
	return s.writeUnhashed(ctx, desc, func(w io.Writer) (int64, error) {
		bp := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(bp)
		// Read at most one byte past the declared size. After desc.Size
		// bytes the copy still asks r for one more, so it sees r's end:
		// io.EOF, or the producer's mismatch error.
		return io.CopyBuffer(w, io.LimitReader(ctxReader{ctx, r}, desc.Size+1), *bp)
	})
}

// WriteVerified is PushVerified for a producer that writes: write is called
// with a writer to the temp file (unless the blob is already present) and
// must check what it writes against desc, returning an error on any
// mismatch, as layer.Hydrate does. Writing more than desc.Size bytes fails
// at once; the size is checked at the end.
func (s *Store) WriteVerified(ctx context.Context, desc ocispec.Descriptor, write func(w io.Writer) error) error {
	return s.writeUnhashed(ctx, desc, func(w io.Writer) (int64, error) {
		lw := &limitWriter{w: w, desc: desc}
		err := write(lw)
		return lw.n, err
	})
}

// limitWriter refuses to write more than desc.Size bytes.
type limitWriter struct {
	w    io.Writer
	desc ocispec.Descriptor
	n    int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n+int64(len(p)) > l.desc.Size {
		return 0, fmt.Errorf("content is longer than the declared %d bytes: %w", l.desc.Size, ErrSizeMismatch)
	}
	n, err := l.w.Write(p)
	l.n += int64(n)
	return n, err
}

// writeUnhashed creates the blob desc from what fill writes to a temp file:
// the committer's size check, fsync, read-only, rename, directory fsync.
// fill returns the number of bytes written. A blob already present and
// intact is kept (and fill not called); a damaged one is replaced.
func (s *Store) writeUnhashed(ctx context.Context, desc ocispec.Descriptor, fill func(w io.Writer) (int64, error)) (err error) {
	p, err := s.blobPath(desc.Digest)
	if err != nil {
		return err
	}
	if desc.Size < 0 {
		return fmt.Errorf("blob %s: negative size %d: %w", desc.Digest, desc.Size, ErrInvalid)
	}
	if ok, err := s.present(ctx, desc.Digest, desc.Size); err != nil || ok {
		return err
	}
	t, err := fsutil.Create(s.path(ingestDir), "blob")
	if err != nil {
		return fmt.Errorf("store %s: new blob: %w", s.root, err)
	}
	defer t.Close()
	n, err := fill(t)
	if err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if n != t.Size() {
		return fmt.Errorf("blob %s: wrote %d bytes, counted %d", desc.Digest, t.Size(), n)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// The producer checked the digest (see PushVerified): "" asks the
	// committer for the size check only.
	if err := t.CommitBlob(p, desc, ""); err != nil {
		return err
	}
	s.trustWritten(desc.Digest, false)
	return nil
}
