package store

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/internal/fsutil"
)

// copyBufs recycles copy buffers: exports push thousands of blobs.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// BlobWriter streams one new blob into the store when its digest is not known
// up front. Write hashes as it goes; Commit verifies and moves the blob into
// place; Close discards it if it was not committed.
type BlobWriter struct {
	s    *Store
	t    *fsutil.File
	alg  digest.Algorithm
	h    *Digester // hashes on another goroutine once the blob is large
	done bool

	follow *Follower // set by Follow

	// Extents (extents.go): the one being written hashes into ext.
	ext      *Digester
	extHash  *Digester
	extStart int64
	extents  []Extent
}

// NewWriter starts a sha256 blob in the store's ingest directory.
func (s *Store) NewWriter(ctx context.Context) (*BlobWriter, error) {
	return s.newWriter(digest.SHA256)
}

func (s *Store) newWriter(alg digest.Algorithm) (*BlobWriter, error) {
	t, err := fsutil.Create(s.path(ingestDir), "blob")
	if err != nil {
		return nil, fmt.Errorf("store %s: new blob: %w", s.root, err)
	}
	return &BlobWriter{s: s, t: t, alg: alg, h: newDigester(alg.Hash())}, nil
}

// Write appends p to the blob.
func (w *BlobWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, fmt.Errorf("write %s: blob writer is closed", w.t.Name())
	}
	n, err := w.t.Write(p)
	w.h.Write(p[:n])
	if w.ext != nil {
		w.ext.Write(p[:n])
	}
	if w.follow != nil {
		w.follow.advance(w.t.Size())
	}
	return n, err
}

// Size is the number of bytes written so far.
func (w *BlobWriter) Size() int64 { return w.t.Size() }

// ReadAt reads back bytes already written, before the blob is committed or
// added to a batch (a pull assembles a standard layer from the verbatim
// members of the blocked layer it is writing).
func (w *BlobWriter) ReadAt(p []byte, off int64) (int, error) {
	if w.done {
		return 0, fmt.Errorf("read %s: blob writer is closed", w.t.Name())
	}
	if off+int64(len(p)) > w.t.Size() {
		return 0, fmt.Errorf("read %s: %d bytes at %d, past the %d written: %w", w.t.Name(), len(p), off, w.t.Size(), io.ErrUnexpectedEOF)
	}
	return w.t.OS().ReadAt(p, off)
}

// Follower reads a blob at offsets while it is being written: a read of
// bytes not yet written waits for them, until End says no more will come.
// A pull dehydrates a standard layer as it downloads (registry, Range
// pulls); Write and the Follower's reads may run on different goroutines.
type Follower struct {
	f     *os.File
	mu    sync.Mutex
	cond  *sync.Cond
	n     int64 // bytes written
	ended bool
	err   error
}

// Follow returns the Follower of w. Call it before the first Write, from
// the writing goroutine, and End it when writing stops.
func (w *BlobWriter) Follow() *Follower {
	if w.follow == nil {
		w.follow = &Follower{f: w.t.OS(), n: w.t.Size()}
		w.follow.cond = sync.NewCond(&w.follow.mu)
	}
	return w.follow
}

func (f *Follower) advance(n int64) {
	f.mu.Lock()
	f.n = n
	f.mu.Unlock()
	f.cond.Broadcast()
}

// End says that no more bytes will be written (err: why writing stopped);
// reads past the end then return err, or io.EOF.
func (f *Follower) End(err error) {
	f.mu.Lock()
	f.ended, f.err = true, err
	f.mu.Unlock()
	f.cond.Broadcast()
}

// ReadAt reads len(p) bytes at off once they are written.
func (f *Follower) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	for !f.ended && f.n < off+int64(len(p)) {
		f.cond.Wait()
	}
	n, err := f.n, f.err
	f.mu.Unlock()
	if err == nil {
		err = io.EOF
	}
	if off >= n {
		return 0, err
	}
	k := min(int64(len(p)), n-off)
	m, rerr := f.f.ReadAt(p[:k], off)
	if rerr == nil && m < len(p) {
		rerr = err
	}
	return m, rerr
}

// Digest is the digest of the bytes written so far.
func (w *BlobWriter) Digest() digest.Digest {
	w.h.sync()
	return digest.NewDigest(w.alg, w.h.h)
}

// Commit syncs the blob, makes it read-only and renames it into blobs/. A
// blob of that name already there is replaced (it may be damaged; the new
// copy is verified, and readers that have the old one open keep it).
func (w *BlobWriter) Commit(ctx context.Context, mediaType string) (ocispec.Descriptor, error) {
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: w.Digest(), Size: w.t.Size()}
	return desc, w.commit(ctx, desc)
}

// commit checks the written bytes against want and moves them into place
// with the one committer (fsutil): size and digest check, fsync, 0444,
// rename, directory fsync.
func (w *BlobWriter) commit(ctx context.Context, want ocispec.Descriptor) error {
	if w.done {
		return fmt.Errorf("commit %s: blob writer is closed", want.Digest)
	}
	defer w.Close()
	if err := ctx.Err(); err != nil {
		return err
	}
	w.done = true
	w.h.Close()
	if w.ext != nil {
		return fmt.Errorf("commit %s: extent at offset %d not ended", want.Digest, w.extStart)
	}
	if err := w.t.CommitBlob(w.s.BlobPath(want.Digest), want, w.Digest()); err != nil {
		return err
	}
	w.s.trustWritten(want.Digest, len(w.extents) > 0)
	if len(w.extents) == 0 {
		return nil
	}
	defer w.s.trustExtents(want.Digest, w.extents)
	tmp, err := w.s.sealExtents(want, w.extents)
	if err != nil {
		return err
	}
	dst := w.s.extentRecordPath(want.Digest)
	if err := fsutil.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(dst))
}

// Close discards the blob unless it was committed. It is safe to call twice.
func (w *BlobWriter) Close() error {
	w.h.Close()
	if w.extHash != nil {
		w.extHash.Close()
	}
	w.done = true
	return w.t.Close()
}

// Push stores the content of r as the blob desc. The content is written to a
// temp file, checked against desc.Digest and desc.Size, and only then renamed
// into place; on any mismatch nothing is left behind. A blob already present
// and intact is not an error and r is not read; a damaged one (other size,
// or content that does not hash to its name) is replaced.
func (s *Store) Push(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error {
	if _, err := s.blobPath(desc.Digest); err != nil {
		return err
	}
	if desc.Size < 0 {
		return fmt.Errorf("blob %s: negative size %d: %w", desc.Digest, desc.Size, ErrInvalid)
	}
	if ok, err := s.present(ctx, desc.Digest, desc.Size); err != nil || ok {
		return err
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
// Commit syncs the filesystem once (fsutil.SyncFS; where the OS has none,
// Add synced each file), then renames every blob into place and syncs the
// blob directory. A blob is never visible under its name before its bytes
// are durable, and a failure or a kill before Commit leaves only temp files
// in the ingest directory, which Discard (or, after a kill, the next writer)
// removes.
type Batch struct {
	s     *Store
	items []batchItem
}

type batchItem struct {
	tmp  string
	desc ocispec.Descriptor
	// extents: tmp is the record of these extents of desc (renamed after
	// desc).
	extents []Extent
}

// syncEarly: blobs of at least this size are synced when added (Add).
const syncEarly = 8 << 20

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
	if err := w.t.Check(want, w.Digest()); err != nil {
		w.Close()
		return err
	}
	if w.ext != nil {
		w.Close()
		return fmt.Errorf("batch %s: extent at offset %d not ended", want.Digest, w.extStart)
	}
	w.done = true
	w.h.Close()
	// A large blob is synced here, on its writer's goroutine, while the
	// batch's other blobs are still being written: Commit then has little
	// left to wait for (a pull's layers otherwise all waited at the end).
	d := fsutil.Deferred
	if want.Size >= syncEarly {
		d = fsutil.Durable
	}
	tmp, err := w.t.Seal(0o444, d)
	if err != nil {
		return fmt.Errorf("blob %s: %w", want.Digest, err)
	}
	b.items = append(b.items, batchItem{tmp: tmp, desc: want})
	if len(w.extents) > 0 {
		rec, err := b.s.sealExtents(want, w.extents)
		if err != nil {
			return fmt.Errorf("blob %s: %w", want.Digest, err)
		}
		b.items = append(b.items, batchItem{tmp: rec, desc: want, extents: w.extents})
	}
	return nil
}

// Commit syncs the store's filesystem once and renames every blob of the
// batch into place (replacing any damaged copy), then syncs the blob
// directory.
func (b *Batch) Commit(ctx context.Context) error {
	if len(b.items) == 0 {
		return nil
	}
	if err := fsutil.SyncFS(b.s.path(ingestDir)); err != nil {
		return fmt.Errorf("store %s: sync before commit: %w", b.s.root, err)
	}
	extents := false
	for i, it := range b.items {
		if err := ctx.Err(); err != nil {
			b.items = b.items[i:]
			b.Discard()
			return err
		}
		dst := b.s.BlobPath(it.desc.Digest)
		if it.extents != nil {
			// After its host (items are in Add order): a record never
			// names a host that is not in place.
			dst, extents = b.s.extentRecordPath(it.desc.Digest), true
		}
		if err := fsutil.Rename(it.tmp, dst); err != nil {
			b.items = b.items[i:]
			b.Discard()
			return fmt.Errorf("blob %s: %w", it.desc.Digest, err)
		}
		if it.extents == nil {
			// A host's record follows its extents record (next item).
			hosts := i+1 < len(b.items) && b.items[i+1].extents != nil && b.items[i+1].desc.Digest == it.desc.Digest
			b.s.trustWritten(it.desc.Digest, hosts)
		} else {
			b.s.trustExtents(it.desc.Digest, it.extents)
		}
	}
	b.items = nil
	if extents {
		if err := syncDir(filepath.Dir(b.s.extentRecordPath(digest.SHA256.FromString("")))); err != nil {
			return err
		}
	}
	return syncDir(filepath.Join(b.s.root, blobsDir, digest.SHA256.String()))
}

// Discard removes the temp files of blobs not yet committed.
func (b *Batch) Discard() {
	for _, it := range b.items {
		os.Remove(it.tmp)
	}
	b.items = nil
}
