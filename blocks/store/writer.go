package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// copyBufs recycles copy buffers: exports push thousands of blobs.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// BlobWriter streams one new blob into the store when its digest is not known
// up front. Write hashes as it goes; Commit verifies and moves the blob into
// place; Close discards it if it was not committed.
type BlobWriter struct {
	s    *Store
	f    *os.File
	alg  digest.Algorithm
	h    *Digester // hashes on another goroutine once the blob is large
	n    int64
	done bool
}

// NewWriter starts a sha256 blob in the store's ingest directory.
func (s *Store) NewWriter(ctx context.Context) (*BlobWriter, error) {
	return s.newWriter(digest.SHA256)
}

func (s *Store) newWriter(alg digest.Algorithm) (*BlobWriter, error) {
	f, err := os.CreateTemp(s.path(ingestDir), "blob-*")
	if err != nil {
		return nil, fmt.Errorf("store %s: new blob: %w", s.root, err)
	}
	return &BlobWriter{s: s, f: f, alg: alg, h: newDigester(alg.Hash())}, nil
}

// Write appends p to the blob.
func (w *BlobWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, fmt.Errorf("write %s: blob writer is closed", w.f.Name())
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("write %s: %w", w.f.Name(), err)
	}
	return n, nil
}

// Size is the number of bytes written so far.
func (w *BlobWriter) Size() int64 { return w.n }

// Digest is the digest of the bytes written so far.
func (w *BlobWriter) Digest() digest.Digest {
	w.h.sync()
	return digest.NewDigest(w.alg, w.h.h)
}

// Commit syncs the blob, makes it read-only and renames it into blobs/. If the
// blob is already present the new copy is discarded (same content, by name).
func (w *BlobWriter) Commit(ctx context.Context, mediaType string) (ocispec.Descriptor, error) {
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: w.Digest(), Size: w.n}
	return desc, w.commit(ctx, desc)
}

// commit checks the written bytes against want and moves them into place.
func (w *BlobWriter) commit(ctx context.Context, want ocispec.Descriptor) error {
	if w.done {
		return fmt.Errorf("commit %s: blob writer is closed", want.Digest)
	}
	defer w.Close()
	if err := ctx.Err(); err != nil {
		return err
	}
	if w.n != want.Size {
		return fmt.Errorf("blob %s: got %d bytes, want %d: %w", want.Digest, w.n, want.Size, ErrSizeMismatch)
	}
	if got := w.Digest(); got != want.Digest {
		return fmt.Errorf("blob %s: content hashes to %s: %w", want.Digest, got, ErrDigestMismatch)
	}
	dst := w.s.BlobPath(want.Digest)
	if fi, err := os.Stat(dst); err == nil && fi.Mode().IsRegular() && fi.Size() == want.Size {
		// Another writer got there first: keep its file (and its inode, which
		// readers may have open) and drop ours.
		return nil
	}
	// fsync before rename: after a crash a blob name never points at
	// unwritten data. 0444: blobs are immutable, by name.
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("blob %s: sync %s: %w", want.Digest, w.f.Name(), err)
	}
	if err := w.f.Chmod(0o444); err != nil {
		return fmt.Errorf("blob %s: chmod %s: %w", want.Digest, w.f.Name(), err)
	}
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("blob %s: close %s: %w", want.Digest, w.f.Name(), err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("blob %s: %w", want.Digest, err)
	}
	// Rename over an existing blob is fine: both files hold the verified
	// content of the same digest, and rename is atomic for readers.
	if err := os.Rename(w.f.Name(), dst); err != nil {
		return fmt.Errorf("blob %s: rename into %s: %w", want.Digest, dst, err)
	}
	w.done = true
	return nil
}

// Close discards the blob unless it was committed. It is safe to call twice.
func (w *BlobWriter) Close() error {
	w.h.Close()
	if w.done {
		return nil
	}
	w.done = true
	w.f.Close()
	if err := os.Remove(w.f.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("discard %s: %w", w.f.Name(), err)
	}
	return nil
}

// Push stores the content of r as the blob desc. The content is written to a
// temp file, checked against desc.Digest and desc.Size, and only then renamed
// into place; on any mismatch nothing is left behind. A blob already present
// (with the right size) is not an error and r is not read.
func (s *Store) Push(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error {
	p, err := s.blobPath(desc.Digest)
	if err != nil {
		return err
	}
	if desc.Size < 0 {
		return fmt.Errorf("blob %s: negative size %d: %w", desc.Digest, desc.Size, ErrInvalid)
	}
	// A present blob of the wrong size is damaged: fall through and replace it
	// with verified content rather than keep it.
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Size() == desc.Size {
		return nil
	}
	w, err := s.newWriter(desc.Digest.Algorithm())
	if err != nil {
		return err
	}
	defer w.Close()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	// Read at most one byte past the declared size: enough to know it is wrong.
	if _, err := io.CopyBuffer(w, io.LimitReader(ctxReader{ctx, r}, desc.Size+1), *bp); err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	return w.commit(ctx, desc)
}

// Ingest stores the content of r as a new blob whose digest is computed while
// writing, and returns its descriptor.
func (s *Store) Ingest(ctx context.Context, mediaType string, r io.Reader) (ocispec.Descriptor, error) {
	w, err := s.NewWriter(ctx)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer w.Close()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	if _, err := io.CopyBuffer(w, ctxReader{ctx, r}, *bp); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("ingest %s: %w", mediaType, err)
	}
	return w.Commit(ctx, mediaType)
}

// Batch moves many written blobs into place with one filesystem sync instead
// of one fsync per blob: ingesting a bundle of a thousand blocks is otherwise
// mostly waiting for fsync. Add checks each blob and closes its temp file;
// Commit syncs the filesystem once, then renames every blob into place. A blob
// is never visible under its name before its bytes are durable, and a failure
// or a kill before Commit leaves only temp files in the ingest directory,
// which Discard (or, after a kill, gc) removes.
type Batch struct {
	s     *Store
	items []batchItem
}

type batchItem struct {
	tmp  string
	desc ocispec.Descriptor
}

// NewBatch starts an empty batch.
func (s *Store) NewBatch() *Batch { return &Batch{s: s} }

// Add checks that w holds exactly want, makes it read-only and closes it; the
// batch then owns the temp file (w is done either way).
func (b *Batch) Add(ctx context.Context, w *BlobWriter, want ocispec.Descriptor) error {
	if w.done {
		return fmt.Errorf("batch %s: blob writer is closed", want.Digest)
	}
	if err := ctx.Err(); err != nil {
		w.Close()
		return err
	}
	if w.n != want.Size {
		w.Close()
		return fmt.Errorf("blob %s: got %d bytes, want %d: %w", want.Digest, w.n, want.Size, ErrSizeMismatch)
	}
	if got := w.Digest(); got != want.Digest {
		w.Close()
		return fmt.Errorf("blob %s: content hashes to %s: %w", want.Digest, got, ErrDigestMismatch)
	}
	if err := w.f.Chmod(0o444); err != nil {
		w.Close()
		return fmt.Errorf("blob %s: chmod %s: %w", want.Digest, w.f.Name(), err)
	}
	// Start writing the file back now (sync_file_range does not wait), so
	// that the one sync of Commit finds little left to flush; only a hint,
	// Commit's sync reports errors.
	_ = unix.SyncFileRange(int(w.f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	if err := w.f.Close(); err != nil {
		w.done = true
		os.Remove(w.f.Name())
		return fmt.Errorf("blob %s: close %s: %w", want.Digest, w.f.Name(), err)
	}
	w.done = true
	b.items = append(b.items, batchItem{tmp: w.f.Name(), desc: want})
	return nil
}

// Commit syncs the store's filesystem once and renames every blob of the
// batch into place. A blob already present is kept and the copy dropped.
func (b *Batch) Commit(ctx context.Context) error {
	if len(b.items) == 0 {
		return nil
	}
	if err := syncFS(b.s.path(ingestDir)); err != nil {
		return fmt.Errorf("store %s: sync before commit: %w", b.s.root, err)
	}
	for i, it := range b.items {
		if err := ctx.Err(); err != nil {
			b.items = b.items[i:]
			b.Discard()
			return err
		}
		dst := b.s.BlobPath(it.desc.Digest)
		if fi, err := os.Stat(dst); err == nil && fi.Mode().IsRegular() && fi.Size() == it.desc.Size {
			os.Remove(it.tmp)
			continue
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			b.items = b.items[i:]
			b.Discard()
			return fmt.Errorf("blob %s: %w", it.desc.Digest, err)
		}
		if err := os.Rename(it.tmp, dst); err != nil {
			b.items = b.items[i:]
			b.Discard()
			return fmt.Errorf("blob %s: rename into %s: %w", it.desc.Digest, dst, err)
		}
	}
	b.items = nil
	return nil
}

// Discard removes the temp files of blobs not yet committed.
func (b *Batch) Discard() {
	for _, it := range b.items {
		os.Remove(it.tmp)
	}
	b.items = nil
}

// syncFS flushes the filesystem that holds dir (syncfs(2)): every file
// written to it so far is durable when it returns.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}
