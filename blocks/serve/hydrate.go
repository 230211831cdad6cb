package serve

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/internal/fsutil"
	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
)

// hydrator serves the standard layers the store holds only in blocked form.
// One producer per layer, however many requests ask for it while it runs
// or lingers, in one of two ways:
//
//   - laid out (a layer not kept, the default): the producer walks the
//     blocked layer once (layer.Layout) into the parts of the standard layer
//     (verbatim runs of the blocked layer, header members rebuilt from the
//     stubs, block members), then reads the parts in order and hashes them
//     against the layer's digest, writing nothing. The job holds the files
//     it hashed open, and readers send any byte range straight from the
//     parts, the files with sendfile. Writing the
//     layer to a temp file (pwrite) was the largest cost of a cold pull
//     (docs/BENCHMARKS.md); nothing is written now.
//   - hydrated into a temp file (--keep-hydrated, which adopts the file into
//     the store, or a blocked layer too large to lay out in memory):
//     layer.Hydrate writes the file and readers follow it as it grows.
//
// Either way a reader never sends a byte the producer has not read and
// hashed, nor the layer's last byte before the whole digest matched.
// Memory is bounded: producers use fixed buffers, readers send files with
// sendfile (or a pooled buffer), and the layouts held by live jobs are
// bounded by layoutBudget, their open files by fileBudget.
type hydrator struct {
	s      *store.Store
	keep   bool          // adopt what is hydrated into the store
	linger time.Duration // without keep: how long a finished layer stays for late readers
	log    *slog.Logger
	ctx    context.Context // the server's: producers outlive requests
	sem    chan struct{}   // bounds producers running at once (hydrating is CPU work)

	mu         sync.Mutex
	jobs       map[digest.Digest]*job
	layouts    int64 // bytes the layouts of live jobs hold (layoutCost)
	files      int   // files the layouts of live jobs hold open
	fileBudget int   // at most this many (layoutFileBudget)

	started atomic.Int64   // hydrations started
	running sync.WaitGroup // producers, until their layer is verified (and kept or dropped)
}

// layoutBudget bounds the memory the layouts of live jobs (running or
// lingering) hold together; a layout beyond it, or beyond the budget of
// open files, is not kept, and that layer is hydrated into a temp file
// instead. Typical layouts take a few hundred KiB (two parts and about
// 1 KiB of header records per block) and one file per block.
const layoutBudget = 256 << 20

// job is one layer being (or just) produced.
type job struct {
	h    *hydrator
	desc ocispec.Descriptor
	once sync.Once

	// The layer's source: lay or tmp, set by the producer (under mu) before
	// it publishes the first byte. Readers use it only once wait said bytes
	// are there.
	lay *layout
	tmp *os.File // hydrated into a temp file: the producer writes, readers reopen it

	mu     sync.Mutex
	ready  int64 // bytes readers may send: hashed by the producer
	done   bool
	err    error
	wake   chan struct{} // closed (and replaced) when ready or done change
	refs   int           // readers holding the job
	gone   bool          // removed from h.jobs
	timer  *time.Timer   // linger after the last reader
	linger bool          // finished and may linger (not being kept)
}

// layout is a laid-out layer: its parts, and the files the producer read
// them from, held open while the job lives (as the temp file was), so that
// gc removing them from the store (an image untagged meanwhile) does not
// take them from a reader. Readers send from descriptors of their own on
// these files, and check that each is unchanged since it was hashed (store
// blobs are immutable, but a file edited in place is refused rather than
// trusted).
type layout struct {
	comp    blocks.Compression
	parts   []layer.Part
	blocked ocispec.Descriptor
	// files[0] is the blocked layer, then one file per distinct member,
	// with their identities when hashed; fileOf maps a part to its file.
	// The producer fills files[k] and ids[k] before it publishes a byte of
	// a part in file k.
	files  []*os.File
	ids    []fsutil.ID
	bases  []int64 // where the blob starts in files[k] (an extent's offset)
	fileOf []int32
	cost   int64
}

// layoutCost is what a layout of parts in nfiles files holds in memory,
// for layoutBudget.
func layoutCost(parts []layer.Part, nfiles int) int64 {
	n := int64(len(parts))*int64(unsafe.Sizeof(layer.Part{})+4) + int64(nfiles)*int64(unsafe.Sizeof(fsutil.ID{})+8)
	for _, p := range parts {
		n += int64(len(p.Header))
	}
	return n
}

// tempName names the files hydrations write (store.CreateTemp).
const tempName = "serve-hydrate"

// wakeEvery is how many bytes the producer hashes between waking readers.
const wakeEvery = 256 << 10

// errNoLayout: the layer is not laid out (too large, or over the budget);
// it is hydrated into a temp file instead.
var errNoLayout = errors.New("not laid out")

// errSource marks a reader's failure to read the layer's source (a file
// changed since it was hashed): the job is dropped, so the next request
// starts over.
var errSource = errors.New("layer source")

// acquire returns the job for layer l, starting its producer unless one is
// running or lingering, and the function that releases it. It returns a nil
// job (and no error) when the store has the layer after all: a job that
// kept it may have finished since the caller looked.
//
// The producer holds a store lease until its layer is verified (and kept):
// gc waits instead of removing the blocked layer or a member while they are
// read (with --keep-hydrated, the lease also covers the layer until it is
// in place). It is taken here, before h.mu as it waits while a gc runs, and
// before Exists, whose answer the caller relies on. Readers hold no lease:
// what they send is in files the job holds open.
func (h *hydrator) acquire(ctx context.Context, l image.Layer) (*job, func(), error) {
	d := l.Standard.Digest
	// A job running or lingering is joined without a lease, so its readers
	// never wait for a gc.
	h.mu.Lock()
	j := h.join(d)
	h.mu.Unlock()
	if j != nil {
		return j, j.release, nil
	}
	lease, err := h.s.Lease(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if lease != nil { // not handed to a producer
			lease()
		}
	}()
	h.mu.Lock()
	defer h.mu.Unlock()
	if j := h.join(d); j != nil {
		return j, j.release, nil
	}
	if ok, err := h.s.Exists(ctx, d); err != nil || ok {
		return nil, nil, err
	}
	// Two holds: the caller's, and the producer's until it is done.
	j = &job{h: h, desc: l.Standard, wake: make(chan struct{}), refs: 2}
	h.jobs[d] = j
	h.running.Add(1)
	go j.produce(l, lease)
	lease = nil
	return j, j.release, nil
}

// join takes a reader's hold on the job of layer d, if there is one.
// h.mu is held.
func (h *hydrator) join(d digest.Digest) *job {
	j := h.jobs[d]
	if j == nil {
		return nil
	}
	j.mu.Lock()
	j.refs++
	if j.timer != nil {
		j.timer.Stop()
		j.timer = nil
	}
	j.mu.Unlock()
	return j
}

// produce lays out (or hydrates) the layer and verifies it, then drops its
// hold on the job and its lease.
func (j *job) produce(l image.Layer, lease func()) {
	h := j.h
	defer h.running.Done()
	defer lease()
	defer j.release()
	select {
	case h.sem <- struct{}{}:
	case <-h.ctx.Done():
		j.finish(h.ctx.Err())
		return
	}
	h.started.Add(1)
	start := time.Now()
	h.log.Info("hydrate start", "digest", l.Standard.Digest, "size", l.Standard.Size, "blocked", l.Blocked.Digest)
	how := "temp file"
	var err error
	if !h.keep {
		how = "layout"
		err = j.layOut(h.ctx, l)
		if errors.Is(err, errNoLayout) {
			h.log.Info("hydrate into a temp file", "digest", l.Standard.Digest, "reason", err)
			how = "temp file"
			err = j.hydrate(h.ctx, l)
		}
	} else {
		err = j.hydrate(h.ctx, l)
	}
	<-h.sem
	if err != nil {
		h.log.Error("hydrate failed", "digest", l.Standard.Digest, "err", err)
		j.finish(err)
		return
	}
	h.log.Info("hydrated", "digest", l.Standard.Digest, "size", l.Standard.Size, "how", how, "seconds", time.Since(start).Seconds())
	// Readers may finish now; keeping the layer (fsync, rename) is off
	// their path. The job stays in h.jobs until the blob is in place, so a
	// new request follows it instead of hydrating again.
	j.finish(nil)
	if h.keep {
		if err := h.s.AdoptVerified(h.ctx, plain(l.Standard), j.tmp); err != nil {
			h.log.Error("keep hydrated layer", "digest", l.Standard.Digest, "err", err)
			os.Remove(j.tmp.Name())
		} else {
			h.remove(j)
			return
		}
	}
	// The deferred release lingers the job once no reader holds it.
	j.mu.Lock()
	j.linger = true
	j.mu.Unlock()
}

// layOut lays out the layer l and verifies it: the parts are read in order
// (verbatim runs from the blocked layer, header members rebuilt from the
// stubs, block members from the store) and hashed against the standard
// descriptor, readers following the bytes hashed. Block members are read
// without a hash of their own, as layer.Hydrate reads them (the layer's
// digest covers every byte); when the layer does not match, the members
// are read again verified, then the blocked layer, so that the error names
// the blob at fault. It returns an error wrapping errNoLayout, before
// anything is published, when the layer is to be hydrated instead.
func (j *job) layOut(ctx context.Context, l image.Layer) (err error) {
	s := j.h.s
	var used []ocispec.Descriptor // members read unhashed, in first-use order
	defer func() {
		if err != nil && !errors.Is(err, errNoLayout) && ctx.Err() == nil {
			err = j.h.culprit(ctx, l, used, err)
		}
	}()
	rc, err := s.OpenUnverified(ctx, plain(l.Blocked))
	if err != nil {
		return fmt.Errorf("blocked layer %s: %w", l.Blocked.Digest, err)
	}
	comp, parts, err := layer.Layout(ctx, rc, l.Standard.MediaType)
	rc.Close()
	if errors.Is(err, layer.ErrTooLarge) {
		return fmt.Errorf("%w: %w", errNoLayout, err)
	}
	if err != nil {
		return fmt.Errorf("lay out blocked layer %s: %w", l.Blocked.Digest, err)
	}
	if err := checkParts(parts, l); err != nil {
		return err
	}
	lay := &layout{comp: comp, parts: parts, blocked: plain(l.Blocked), fileOf: make([]int32, len(parts))}
	fileOf := map[digest.Digest]int32{}
	for i, p := range parts {
		if p.Kind == layer.PartMember {
			k, ok := fileOf[p.Member]
			if !ok {
				k = int32(len(fileOf) + 1)
				fileOf[p.Member] = k
			}
			lay.fileOf[i] = k
		}
	}
	nfiles := len(fileOf) + 1
	lay.cost = layoutCost(parts, nfiles)
	if !j.h.reserve(lay.cost, nfiles) {
		return fmt.Errorf("%w: its layout (%d bytes, %d files) is over the budget of the layouts held", errNoLayout, lay.cost, nfiles)
	}
	lay.files, lay.ids, lay.bases = make([]*os.File, nfiles), make([]fsutil.ID, nfiles), make([]int64, nfiles)
	// From here the job owns the layout: close releases its files and
	// budget, whatever happens.
	j.mu.Lock()
	j.lay = lay
	j.mu.Unlock()
	bf, bbase, bid, err := openStored(s, lay.blocked)
	if err != nil {
		return fmt.Errorf("blocked layer %s: %w", l.Blocked.Digest, err)
	}
	lay.files[0], lay.ids[0], lay.bases[0] = bf, bid, bbase

	hh, err := newHash(j.desc.Digest)
	if err != nil {
		return err
	}
	bp := bufs.Get().(*[]byte)
	defer bufs.Put(bp)
	buf := *bp
	pw := &progressWriter{j: j, h: hh}
	var hdr []byte
	for i, p := range parts {
		if err := ctx.Err(); err != nil {
			return err
		}
		switch p.Kind {
		case layer.PartVerbatim:
			if err := copyN(pw, io.NewSectionReader(bf, bbase+p.BlockedOffset, p.Size), p.Size, buf); err != nil {
				return fmt.Errorf("blocked layer %s: %d bytes at %d: %w", l.Blocked.Digest, p.Size, p.BlockedOffset, err)
			}
		case layer.PartHeader:
			hdr = layer.AppendHeaderMember(hdr[:0], comp, p.Header)
			if int64(len(hdr)) != p.Size {
				return fmt.Errorf("header member of block member %s: %d bytes, laid out as %d: %w", p.Member, len(hdr), p.Size, layer.ErrMismatch)
			}
			pw.Write(hdr)
		case layer.PartMember:
			k := lay.fileOf[i]
			if lay.files[k] == nil {
				m := ocispec.Descriptor{Digest: p.Member, Size: p.Size}
				used = append(used, m)
				f, base, id, err := openStored(s, m)
				if err != nil {
					return fmt.Errorf("block member %s: %w", p.Member, err)
				}
				lay.files[k], lay.ids[k], lay.bases[k] = f, id, base // before any of its bytes are published
			}
			if err := copyN(pw, io.NewSectionReader(lay.files[k], lay.bases[k], p.Size), p.Size, buf); err != nil {
				return fmt.Errorf("block member %s (%s): %w", p.Member, lay.files[k].Name(), err)
			}
		}
	}
	if got := digest.NewDigest(j.desc.Digest.Algorithm(), hh); pw.n != j.desc.Size || got != j.desc.Digest {
		return fmt.Errorf("layer %s laid out from blocked layer %s: %d bytes hashing to %s: %w", j.desc.Digest, l.Blocked.Digest, pw.n, got, layer.ErrMismatch)
	}
	return nil
}

// checkParts checks a layout against the layer as Hydrate checks the
// stubs: every block member is listed in the block set with its size (and
// the block its annotation names, if any), and the parts add up to the
// standard layer's size.
func checkParts(parts []layer.Part, l image.Layer) error {
	listed := make(map[digest.Digest]ocispec.Descriptor, len(l.Members))
	for _, m := range l.Members {
		listed[m.Digest] = m
	}
	var end int64
	for _, p := range parts {
		end = p.Offset + p.Size
		if p.Kind != layer.PartMember {
			continue
		}
		m, ok := listed[p.Member]
		if !ok || m.Size != p.Size {
			return fmt.Errorf("blocked layer %s: block %s is %w (member %s, %d bytes)", l.Blocked.Digest, p.Block, layer.ErrNotListed, p.Member, p.Size)
		}
		if a, ok := m.Annotations[blocks.AnnotationBlockDigest]; ok && a != p.Block.String() {
			return fmt.Errorf("blocked layer %s: member %s holds block %s per the block set, the stub says %s: %w", l.Blocked.Digest, m.Digest, a, p.Block, layer.ErrMismatch)
		}
	}
	if end != l.Standard.Size {
		return fmt.Errorf("blocked layer %s lays out a layer of %d bytes, want %d: %w", l.Blocked.Digest, end, l.Standard.Size, layer.ErrMismatch)
	}
	return nil
}

// culprit returns err, or an error naming the blob that caused it: the
// first of the members read unhashed (used) that fails a verified read, else
// the blocked layer if it does.
func (h *hydrator) culprit(ctx context.Context, l image.Layer, used []ocispec.Descriptor, err error) error {
	for _, m := range used {
		if ferr := h.readVerified(ctx, m); ferr != nil {
			if ctx.Err() != nil {
				return err
			}
			return fmt.Errorf("block member %s: %w (hydrate: %w)", m.Digest, ferr, err)
		}
	}
	if ferr := h.readVerified(ctx, plain(l.Blocked)); ferr != nil && ctx.Err() == nil {
		return fmt.Errorf("blocked layer %s: %w (hydrate: %w)", l.Blocked.Digest, ferr, err)
	}
	return err
}

// readVerified reads the stored blob desc through the store's verifying
// reader.
func (h *hydrator) readVerified(ctx context.Context, desc ocispec.Descriptor) error {
	rc, err := h.s.Fetch(ctx, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	bp := bufs.Get().(*[]byte)
	defer bufs.Put(bp)
	_, err = io.CopyBuffer(struct{ io.Writer }{io.Discard}, rc, *bp)
	return err
}

func (h *hydrator) reserve(n int64, files int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.layouts+n > layoutBudget || h.files+files > h.fileBudget {
		return false
	}
	h.layouts += n
	h.files += files
	return true
}

func (h *hydrator) unreserve(n int64, files int) {
	h.mu.Lock()
	h.layouts -= n
	h.files -= files
	h.mu.Unlock()
}

// newHash returns the hash of d's algorithm (crypto/sha256 for sha256: the
// one with the fast assembly).
func newHash(d digest.Digest) (hash.Hash, error) {
	alg := d.Algorithm()
	if alg == digest.SHA256 {
		return sha256.New(), nil
	}
	if !alg.Available() {
		return nil, fmt.Errorf("layer %s: unsupported digest algorithm: %w", d, store.ErrInvalid)
	}
	return alg.Hash(), nil
}

// copyN copies exactly n bytes of r to w through buf.
func copyN(w io.Writer, r io.Reader, n int64, buf []byte) error {
	k, err := io.CopyBuffer(w, io.LimitReader(r, n), buf)
	if err != nil {
		return err
	}
	if k != n {
		return fmt.Errorf("%d bytes, want %d: %w", k, n, io.ErrUnexpectedEOF)
	}
	return nil
}

// progressWriter hashes the laid-out layer and tells readers how far it got
// every wakeEvery bytes.
type progressWriter struct {
	j    *job
	h    hash.Hash
	n    int64
	told int64
}

func (w *progressWriter) Write(p []byte) (int, error) {
	w.h.Write(p)
	w.n += int64(len(p))
	if w.n-w.told >= wakeEvery {
		w.told = w.n
		w.j.progress(w.n)
	}
	return len(p), nil
}

// openStored opens the store's file of blob desc for reading as a file (so
// that it can be sent with sendfile), checks its size and returns where the
// blob starts in it (a blob stored as an extent of another lies inside that
// one's file) and the file's identity. Its bytes are not checked: the
// caller hashes them, or compares the identity with that of the file it
// hashed.
func openStored(s *store.Store, desc ocispec.Descriptor) (*os.File, int64, fsutil.ID, error) {
	bf, err := s.OpenFile(desc)
	if err != nil {
		return nil, 0, fsutil.ID{}, err
	}
	fi, err := bf.File.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		bf.Close()
		return nil, 0, fsutil.ID{}, fmt.Errorf("blob %s (%s): not a regular file: %v", desc.Digest, bf.Path, err)
	}
	id, _ := fsutil.IDOf(fi) // where the platform gives none, every file has the zero ID
	return bf.File, bf.Offset, id, nil
}

// hydrate writes the standard layer l into a temp file with layer.Hydrate
// (kept: adopted into the store afterwards). The blocked layer is read
// without hashing it, as the members are: the standard layer's digest,
// which layer.Hydrate checks, covers every byte it yields (a tampered
// blocked layer either fails that check or yields the right layer). When
// the hydrate fails, the blocked layer is re-read verified so the error
// names it if it is the cause (layer.Hydrate names a bad member itself).
func (j *job) hydrate(ctx context.Context, l image.Layer) error {
	f, err := j.h.s.CreateTemp(tempName)
	if err != nil {
		return err
	}
	if !j.h.keep {
		// Nothing to keep: drop the name at once, so nothing is left behind
		// whatever happens to this process; readers share the open file.
		os.Remove(f.Name())
	}
	j.mu.Lock()
	j.tmp = f
	j.mu.Unlock()
	blocked, err := j.h.s.OpenUnverified(ctx, plain(l.Blocked))
	if err != nil {
		return fmt.Errorf("blocked layer %s: %w", l.Blocked.Digest, err)
	}
	err = layer.Hydrate(ctx, blocked, &jobWriter{j: j}, l.Members, j.h.s, plain(l.Standard))
	blocked.Close()
	if err == nil {
		if fi, serr := f.Stat(); serr != nil || fi.Size() != j.desc.Size {
			err = fmt.Errorf("layer %s: hydrated file is not %d bytes: %w", j.desc.Digest, j.desc.Size, store.ErrSizeMismatch)
		}
	}
	if err != nil && ctx.Err() == nil {
		err = j.h.culprit(ctx, l, nil, err)
	}
	return err
}

// jobWriter appends to the job's temp file and wakes readers every
// wakeEvery bytes.
type jobWriter struct {
	j       *job
	n, told int64
}

func (w *jobWriter) Write(p []byte) (int, error) {
	n, err := w.j.tmp.WriteAt(p, w.n)
	w.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("layer %s: write %s: %w", w.j.desc.Digest, w.j.tmp.Name(), err)
	}
	if w.n-w.told >= wakeEvery {
		w.told = w.n
		w.j.progress(w.n)
	}
	return n, nil
}

func (j *job) progress(n int64) {
	j.mu.Lock()
	j.ready = n
	close(j.wake)
	j.wake = make(chan struct{})
	j.mu.Unlock()
}

// finish records the producer's result. A failed job leaves h.jobs at once,
// so the next request starts over.
func (j *job) finish(err error) {
	j.mu.Lock()
	j.done, j.err = true, err
	if err == nil {
		j.ready = j.desc.Size
	}
	close(j.wake)
	j.wake = make(chan struct{})
	tmp := j.tmp
	j.mu.Unlock()
	if err != nil {
		j.h.remove(j)
		if j.h.keep && tmp != nil {
			os.Remove(tmp.Name())
		}
	}
}

// remove takes j out of h.jobs; its resources are released when the last
// hold on it (readers', the producer's) is released.
func (h *hydrator) remove(j *job) {
	h.mu.Lock()
	if h.jobs[j.desc.Digest] == j {
		delete(h.jobs, j.desc.Digest)
	}
	h.mu.Unlock()
	j.mu.Lock()
	j.gone = true
	if j.timer != nil {
		j.timer.Stop()
		j.timer = nil
	}
	closeNow := j.refs == 0
	j.mu.Unlock()
	if closeNow {
		j.close()
	}
}

// release drops a hold on j (a reader's, or the producer's when it is done).
func (j *job) release() {
	j.mu.Lock()
	j.refs--
	last := j.refs == 0
	gone := j.gone
	if last && j.linger && !gone {
		j.lingerLocked()
	}
	j.mu.Unlock()
	if last && gone {
		j.close()
	}
}

// close releases the job's temp file or layout, once it is gone and
// nothing holds it (the producer is done).
func (j *job) close() {
	j.once.Do(func() {
		j.mu.Lock()
		tmp, lay := j.tmp, j.lay
		j.mu.Unlock()
		if tmp != nil {
			tmp.Close()
		}
		if lay != nil {
			for _, f := range lay.files {
				if f != nil {
					f.Close()
				}
			}
			j.h.unreserve(lay.cost, len(lay.files))
		}
	})
}

// lingerLocked keeps a finished job for late readers (a wave of nodes
// pulling one image seldom arrives at the same instant), then drops it.
func (j *job) lingerLocked() {
	if j.timer != nil {
		return
	}
	j.timer = time.AfterFunc(j.h.linger, func() {
		j.mu.Lock()
		idle := j.refs == 0
		j.timer = nil
		j.mu.Unlock()
		if idle {
			j.h.remove(j)
		}
	})
}

// errHydrateFailed is what a reader reports when the producer failed; the
// producer logged why, naming the digest.
var errHydrateFailed = errors.New("hydrate failed")

// wait blocks until more than off bytes are ready (or the job is done) and
// returns how many bytes may be read: the whole layer only once it is
// verified; before that, never its last byte, so a client never holds a
// complete body that did not match its digest.
func (j *job) wait(ctx context.Context, off int64) (int64, error) {
	for {
		j.mu.Lock()
		ready, done, err, wake := j.ready, j.done, j.err, j.wake
		j.mu.Unlock()
		if done && err != nil {
			return 0, fmt.Errorf("layer %s: %w: %w", j.desc.Digest, errHydrateFailed, err)
		}
		avail := ready
		if !done && avail >= j.desc.Size {
			avail = j.desc.Size - 1
		}
		if avail > off || done {
			return avail, nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// copyRange writes bytes [off, end) of the layer to w as they become ready.
func (j *job) copyRange(ctx context.Context, w io.Writer, off, end int64) error {
	snd := &sender{j: j, w: w}
	defer snd.close()
	for off < end {
		avail, err := j.wait(ctx, off)
		if err != nil {
			return err
		}
		n := min(avail, end) - off
		if n <= 0 {
			return fmt.Errorf("layer %s: %d bytes ready, want %d: %w", j.desc.Digest, avail, end, store.ErrSizeMismatch)
		}
		if err := snd.send(off, n); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// sender sends byte ranges of a job's layer, from its temp file or its
// parts. Files go out as io.Copy(w, io.LimitReader(f, n)) from a descriptor
// of the reader's own, positioned with Seek, so that the HTTP server passes
// them to the socket with sendfile: the bytes never enter user space (the
// producer hashed them, and wait holds the last byte back until the digest
// matched). Header members are rebuilt from the stub's records (a few KiB
// at most, one at a time).
type sender struct {
	j       *job
	w       io.Writer
	tmp     *os.File // the temp file, reopened
	blocked *os.File // the blocked layer, once a verbatim part was sent
	ownBlk  bool     // blocked is the reader's own descriptor
	hdr     []byte
	bp      *[]byte // copy buffer, where w takes no file (no sendfile)
}

func (s *sender) close() {
	if s.tmp != nil {
		s.tmp.Close()
	}
	if s.blocked != nil && s.ownBlk {
		s.blocked.Close()
	}
	if s.bp != nil {
		bufs.Put(s.bp)
	}
}

// send writes bytes [off, off+n) of the layer, all ready, to s.w. Errors
// reading the source wrap errSource.
func (s *sender) send(off, n int64) error {
	j := s.j
	if j.tmp != nil {
		if s.tmp == nil {
			f, err := reopen(j.tmp)
			if err != nil {
				// Where the file cannot be reopened (no /proc): read it
				// at offsets through a buffer.
				return s.copy(io.NewSectionReader(j.tmp, off, n), n, j.tmp.Name())
			}
			s.tmp = f
		}
		return s.copyFile(s.tmp, off, n, j.tmp.Name())
	}
	lay := j.lay
	parts := lay.parts
	i := sort.Search(len(parts), func(i int) bool { return parts[i].Offset+parts[i].Size > off })
	for ; n > 0; i++ {
		if i >= len(parts) {
			return fmt.Errorf("layer %s: byte %d is past the parts: %w", j.desc.Digest, off, errSource)
		}
		p := parts[i]
		a := off - p.Offset
		k := min(p.Size-a, n)
		switch p.Kind {
		case layer.PartVerbatim:
			if s.blocked == nil {
				f, own, err := s.open(0, lay.blocked.Digest)
				if err != nil {
					return err
				}
				s.blocked, s.ownBlk = f, own
			}
			if err := s.sendFrom(s.blocked, s.ownBlk, lay.bases[0]+p.BlockedOffset+a, k, "blocked layer "+lay.blocked.Digest.String()); err != nil {
				return err
			}
		case layer.PartHeader:
			s.hdr = layer.AppendHeaderMember(s.hdr[:0], lay.comp, p.Header)
			if int64(len(s.hdr)) != p.Size {
				return fmt.Errorf("layer %s: header member at %d: %d bytes, laid out as %d: %w", j.desc.Digest, p.Offset, len(s.hdr), p.Size, errSource)
			}
			if _, err := s.w.Write(s.hdr[a : a+k]); err != nil {
				return err
			}
		case layer.PartMember:
			f, own, err := s.open(lay.fileOf[i], p.Member)
			if err != nil {
				return err
			}
			err = s.sendFrom(f, own, s.j.lay.bases[lay.fileOf[i]]+a, k, "block member "+p.Member.String())
			if own {
				f.Close()
			}
			if err != nil {
				return err
			}
		}
		off += k
		n -= k
	}
	return nil
}

// open returns file k of the layout (blob d), checked unchanged since the
// producer hashed it: opened again with an offset of its own (own), or where
// that is not possible (no /proc) the job's descriptor, to read at offsets.
func (s *sender) open(k int32, d digest.Digest) (f *os.File, own bool, err error) {
	lay := s.j.lay
	f, own = lay.files[k], false
	if rf, err := reopen(f); err == nil {
		f, own = rf, true
	}
	fi, err := f.Stat()
	if err == nil {
		if id, _ := fsutil.IDOf(fi); !sameContent(id, lay.ids[k], fi) {
			err = fmt.Errorf("%s (%s) was changed since it was hashed", d, f.Name())
		}
	}
	if err != nil {
		if own {
			f.Close()
		}
		return nil, false, fmt.Errorf("layer %s: %w: blob %s: %w", s.j.desc.Digest, errSource, d, err)
	}
	return f, own, nil
}

// sendFrom sends n bytes of f from offset off: with sendfile from a
// descriptor of the reader's own, else read at offsets.
func (s *sender) sendFrom(f *os.File, own bool, off, n int64, what string) error {
	if own {
		return s.copyFile(f, off, n, what)
	}
	return s.copy(io.NewSectionReader(f, off, n), n, what)
}

// sameContent says whether a file of identity id (info fi) holds what it
// held with identity was. Removing the last name of a file (gc removing a
// blob a job holds open) changes its ctime, not its content: a file with no
// name left is compared by inode, size and mtime.
func sameContent(id, was fsutil.ID, fi os.FileInfo) bool {
	if id == was {
		return true
	}
	id.Ctime, was.Ctime = 0, 0
	return id == was && unlinked(fi)
}

// reopen opens f again, with an offset of its own, through /proc (which
// also reaches a file since unlinked: a temp file not kept, a blob gc
// removed); os.Open names no file where /proc is missing.
func reopen(f *os.File) (*os.File, error) {
	return os.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
}

// copyFile sends n bytes of f from offset off.
func (s *sender) copyFile(f *os.File, off, n int64, what string) error {
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return fmt.Errorf("layer %s: %s: %w: %w", s.j.desc.Digest, what, errSource, err)
	}
	return s.copy(io.LimitReader(f, n), n, what)
}

// copy sends the n bytes of r: through w's ReadFrom where it has one (the
// HTTP server's, which uses sendfile for a limited *os.File), else through
// a pooled buffer. A source that ends early is an errSource; other errors
// are the client's.
func (s *sender) copy(r io.Reader, n int64, what string) error {
	var buf []byte
	if _, ok := s.w.(io.ReaderFrom); !ok {
		if s.bp == nil {
			s.bp = bufs.Get().(*[]byte)
		}
		buf = *s.bp
	}
	k, err := io.CopyBuffer(s.w, r, buf)
	if err != nil {
		return err
	}
	if k != n {
		return fmt.Errorf("layer %s: %s: %d bytes, want %d: %w: %w", s.j.desc.Digest, what, k, n, errSource, io.ErrUnexpectedEOF)
	}
	return nil
}

// bufs are the copy buffers of producers and readers.
var bufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// plain is d without platform, annotations and the like: what the store and
// layer.Hydrate compare.
func plain(d ocispec.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
}
