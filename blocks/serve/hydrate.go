package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
)

// hydrator runs on-demand hydrations of standard layers: one producer per
// layer writes a temp file in the store's ingest directory, and every
// request for that layer (however many, whenever they arrive while it runs)
// follows the file as it grows. Memory is bounded: producers write through
// layer.Hydrate's fixed buffers, readers read the file in fixed chunks.
type hydrator struct {
	s      *store.Store
	keep   bool          // adopt what is hydrated into the store
	linger time.Duration // without keep: how long a finished layer stays for late readers
	log    *slog.Logger
	ctx    context.Context // the server's: producers outlive requests
	sem    chan struct{}   // bounds producers running at once (hydrating is CPU work)

	mu   sync.Mutex
	jobs map[digest.Digest]*job

	started atomic.Int64   // hydrations started
	running sync.WaitGroup // producers, until their layer is kept or dropped
}

// job is one layer being (or just) hydrated.
type job struct {
	h    *hydrator
	desc ocispec.Descriptor
	f    *os.File // shared: the producer writes, readers ReadAt
	once sync.Once

	mu      sync.Mutex
	written int64
	done    bool
	err     error
	wake    chan struct{} // closed (and replaced) when written or done change
	refs    int           // readers holding the job
	gone    bool          // removed from h.jobs
	timer   *time.Timer   // linger after the last reader
	linger  bool          // the file is final and may linger (not being kept)
}

// tempName names the files hydrations write (store.CreateTemp).
const tempName = "serve-hydrate"

// wakeEvery is how many bytes the producer writes between waking readers.
const wakeEvery = 256 << 10

// acquire returns the job for layer l, starting its hydration unless one is
// running or lingering. The caller must release it. It returns nil (and no
// error) when the store has the layer after all: a job that kept it may have
// finished since the caller looked.
func (h *hydrator) acquire(ctx context.Context, l image.Layer) (_ *job, err error) {
	d := l.Standard.Digest
	var release func()
	if h.keep {
		// A writer of the store: gc waits for it (store.Lease) until the
		// layer is in place. Taken before h.mu, as it waits while a gc
		// runs; leases nest, so this costs nothing once one is held.
		if release, err = h.s.Lease(ctx); err != nil {
			return nil, err
		}
		defer func() {
			if release != nil { // not handed to a producer
				release()
			}
		}()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if j := h.jobs[d]; j != nil {
		j.mu.Lock()
		j.refs++
		if j.timer != nil {
			j.timer.Stop()
			j.timer = nil
		}
		j.mu.Unlock()
		return j, nil
	}
	if ok, err := h.s.Exists(ctx, d); err != nil || ok {
		return nil, err
	}
	f, err := h.s.CreateTemp(tempName)
	if err != nil {
		return nil, err
	}
	if !h.keep {
		// Nothing to keep: drop the name at once, so nothing is left behind
		// whatever happens to this process; readers share the open file.
		os.Remove(f.Name())
	}
	j := &job{h: h, desc: l.Standard, f: f, wake: make(chan struct{}), refs: 1}
	h.jobs[d] = j
	h.running.Add(1)
	go func(release func()) {
		if release != nil {
			defer release()
		}
		j.produce(l)
	}(release)
	release = nil
	return j, nil
}

// produce hydrates the layer into the job's file.
func (j *job) produce(l image.Layer) {
	h := j.h
	defer h.running.Done()
	select {
	case h.sem <- struct{}{}:
	case <-h.ctx.Done():
		j.finish(h.ctx.Err())
		return
	}
	h.started.Add(1)
	start := time.Now()
	h.log.Info("hydrate start", "digest", l.Standard.Digest, "size", l.Standard.Size, "blocked", l.Blocked.Digest)
	err := j.hydrate(h.ctx, l)
	<-h.sem
	if err != nil {
		h.log.Error("hydrate failed", "digest", l.Standard.Digest, "err", err)
		j.finish(err)
		return
	}
	h.log.Info("hydrated", "digest", l.Standard.Digest, "size", l.Standard.Size, "seconds", time.Since(start).Seconds())
	// Readers may finish now; keeping the layer (fsync, rename) is off
	// their path. The job stays in h.jobs until the blob is in place, so a
	// new request follows it instead of hydrating again.
	j.finish(nil)
	if h.keep {
		if err := h.s.AdoptVerified(h.ctx, plain(l.Standard), j.f); err != nil {
			h.log.Error("keep hydrated layer", "digest", l.Standard.Digest, "err", err)
			os.Remove(j.f.Name())
		} else {
			h.remove(j)
			return
		}
	}
	j.mu.Lock()
	j.linger = true
	if j.refs == 0 {
		j.lingerLocked()
	}
	j.mu.Unlock()
}

// hydrate writes the standard layer l into the job's file. The blocked
// layer is read without hashing it, as the members are: the standard
// layer's digest, which layer.Hydrate checks, covers every byte it yields
// (a tampered blocked layer either fails that check or yields the right
// layer). When the hydrate fails, the blocked layer is re-read verified so
// the error names it if it is the cause.
func (j *job) hydrate(ctx context.Context, l image.Layer) error {
	blocked, err := j.h.s.OpenUnverified(ctx, plain(l.Blocked))
	if err != nil {
		return fmt.Errorf("blocked layer %s: %w", l.Blocked.Digest, err)
	}
	err = layer.Hydrate(ctx, blocked, &jobWriter{j: j}, l.Members, j.h.s, plain(l.Standard))
	blocked.Close()
	if err != nil && ctx.Err() == nil {
		if rc, ferr := j.h.s.Fetch(ctx, plain(l.Blocked)); ferr != nil {
			err = fmt.Errorf("blocked layer %s: %w (hydrate: %w)", l.Blocked.Digest, ferr, err)
		} else {
			_, cerr := io.Copy(io.Discard, rc)
			rc.Close()
			if cerr != nil {
				err = fmt.Errorf("blocked layer %s: %w (hydrate: %w)", l.Blocked.Digest, cerr, err)
			}
		}
	}
	return err
}

// jobWriter appends to the job's file and wakes readers every wakeEvery
// bytes.
type jobWriter struct {
	j       *job
	n, told int64
}

func (w *jobWriter) Write(p []byte) (int, error) {
	n, err := w.j.f.WriteAt(p, w.n)
	w.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("layer %s: write %s: %w", w.j.desc.Digest, w.j.f.Name(), err)
	}
	if w.n-w.told >= wakeEvery {
		w.told = w.n
		w.j.progress(w.n)
	}
	return n, nil
}

func (j *job) progress(n int64) {
	j.mu.Lock()
	j.written = n
	close(j.wake)
	j.wake = make(chan struct{})
	j.mu.Unlock()
}

// finish records the producer's result. A failed job leaves h.jobs at once,
// so the next request hydrates again.
func (j *job) finish(err error) {
	if err == nil {
		if fi, serr := j.f.Stat(); serr != nil || fi.Size() != j.desc.Size {
			err = fmt.Errorf("layer %s: hydrated file is not %d bytes: %w", j.desc.Digest, j.desc.Size, store.ErrSizeMismatch)
		}
	}
	j.mu.Lock()
	j.done, j.err = true, err
	if err == nil {
		j.written = j.desc.Size
	}
	close(j.wake)
	j.wake = make(chan struct{})
	j.mu.Unlock()
	if err != nil {
		j.h.remove(j)
		if j.h.keep {
			os.Remove(j.f.Name())
		}
	}
}

// remove takes j out of h.jobs; its file is closed when the last reader
// releases it.
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

// release drops a reader's hold on j.
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

func (j *job) close() { j.once.Do(func() { j.f.Close() }) }

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

// wait blocks until more than off bytes are written (or the job is done)
// and returns how many bytes may be read: the whole layer only once it is
// verified; before that, never its last byte, so a client never holds a
// complete body that did not match its digest.
func (j *job) wait(ctx context.Context, off int64) (int64, error) {
	for {
		j.mu.Lock()
		written, done, err, wake := j.written, j.done, j.err, j.wake
		j.mu.Unlock()
		if done && err != nil {
			return 0, fmt.Errorf("layer %s: %w: %w", j.desc.Digest, errHydrateFailed, err)
		}
		avail := written
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

// copyRange writes bytes [off, end) of the layer to w as they become
// available. Each reader sends from a descriptor of its own on the file, so
// that the HTTP server passes it to the socket with sendfile (the bytes
// never enter user space: layer.Hydrate checked them as it wrote them, and
// wait holds the last byte back until the digest matched); where the file
// cannot be reopened, it copies through a buffer.
func (j *job) copyRange(ctx context.Context, w io.Writer, off, end int64) error {
	if rf := j.reopen(); rf != nil {
		defer rf.Close()
		for off < end {
			avail, err := j.wait(ctx, off)
			if err != nil {
				return err
			}
			n := min(avail, end) - off
			if n <= 0 {
				return fmt.Errorf("layer %s: hydrated file ends at %d, want %d: %w", j.desc.Digest, avail, end, store.ErrSizeMismatch)
			}
			if _, err := rf.Seek(off, io.SeekStart); err != nil {
				return fmt.Errorf("layer %s: seek %s: %w", j.desc.Digest, j.f.Name(), err)
			}
			k, err := io.Copy(w, io.LimitReader(rf, n))
			off += k
			if err != nil {
				return err
			}
			if k != n {
				return fmt.Errorf("layer %s: read %s: %d bytes at %d, want %d: %w", j.desc.Digest, j.f.Name(), k, off-k, n, io.ErrUnexpectedEOF)
			}
		}
		return nil
	}
	bp := bufs.Get().(*[]byte)
	defer bufs.Put(bp)
	buf := *bp
	for off < end {
		avail, err := j.wait(ctx, off)
		if err != nil {
			return err
		}
		n := min(avail, end) - off
		if n <= 0 {
			return fmt.Errorf("layer %s: hydrated file ends at %d, want %d: %w", j.desc.Digest, avail, end, store.ErrSizeMismatch)
		}
		for n > 0 {
			k, err := j.f.ReadAt(buf[:min(int64(len(buf)), n)], off)
			if k > 0 {
				if _, werr := w.Write(buf[:k]); werr != nil {
					return werr
				}
				off += int64(k)
				n -= int64(k)
			}
			if err != nil && !(errors.Is(err, io.EOF) && k > 0) {
				return fmt.Errorf("layer %s: read %s: %w", j.desc.Digest, j.f.Name(), err)
			}
		}
	}
	return nil
}

// reopen opens the job's file again, with an offset of its own (through
// /proc, which also reaches the unlinked file of a layer not kept), or
// returns nil where that is not possible. The caller closes it; the job's
// file stays open while the caller holds the job.
func (j *job) reopen() *os.File {
	f, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", j.f.Fd()))
	if err != nil {
		return nil
	}
	return f
}

// bufs are the readers' copy buffers.
var bufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// plain is d without platform, annotations and the like: what the store and
// layer.Hydrate compare.
func plain(d ocispec.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
}
