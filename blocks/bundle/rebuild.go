package bundle

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"

	"github.com/blockfile/blockfile/blocks/delta"
	"github.com/blockfile/blockfile/blocks/store"
)

// Rebuilding patched blobs once. Apply's check pass rebuilds every patched
// blob the store lacks (a block delta: inflate the base member, decode,
// deflate with the pinned deflater; a member patch: deflate its records)
// straight into a temp file of the store batch that the ingest pass commits,
// and checks it there against its digest and size. The ingest pass adopts
// those files instead of rebuilding the blobs a second time. Nothing is
// visible under a blob's name before the batch commits, after both passes
// (store.Batch), and a failure discards the temp files.
//
// The rebuilds run on rebuildWorkers goroutines while the check pass reads on:
// on the JRE upgrade of docs/BENCHMARKS.md most of apply is deflating the
// ~190 MB of rebuilt blocks, and one block at a time leaves a core idle while
// its base is inflated. Patch entries are small: the check pass spools each
// (in memory, or in a temp file past maxSpoolMem) and goes on reading, and
// the workers take the largest rebuild first, so that the longest one
// (lib/modules) does not run alone at the end. The bases held at once (a
// block delta holds its base uncompressed, a patch its base) are bounded by
// rebuildMemory; a larger one waits until it runs alone.

const (
	rebuildWorkers = 2
	// rebuildMemory bounds the base bytes held by concurrent rebuilds
	// (apply stays under 512 MiB peak RSS with a 256 MiB base alone).
	rebuildMemory = 192 << 20
	// maxSpoolMem: patch entries waiting for a worker are held in memory
	// up to this size in all, further ones in temp files of the store.
	maxSpoolMem = 32 << 20
)

// rebuilder runs the rebuilds of one apply's check pass.
type rebuilder struct {
	s      *store.Store
	path   string
	batch  *store.Batch
	budget *deflateBudget
	mem    *semaphore.Weighted
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex // batch, done, derived, err, queue, closed, spooled
	ready   *sync.Cond // a job is queued, or the queue is closed
	queue   []*rebuildJob
	closed  bool
	spooled int64 // bytes of queued patch entries held in memory
	done    map[digest.Digest]bool
	derived Count // blobs derived from standard layers (Blob.Derive)
	err     error
}

func newRebuilder(ctx context.Context, s *store.Store, path string, batch *store.Batch, budget *deflateBudget) *rebuilder {
	ctx, cancel := context.WithCancel(ctx)
	r := &rebuilder{s: s, path: path, batch: batch, budget: budget, mem: semaphore.NewWeighted(rebuildMemory),
		ctx: ctx, cancel: cancel, done: map[digest.Digest]bool{}}
	r.ready = sync.NewCond(&r.mu)
	for range rebuildWorkers {
		r.wg.Add(1)
		go r.worker()
	}
	return r
}

// rebuildJob is a patched blob waiting for a worker.
type rebuildJob struct {
	b    Blob
	p    *spooled
	work int64 // what it costs: the bytes it deflates or writes
}

// worker runs queued rebuilds, the largest first, until the queue is closed
// and empty; after a failure it only releases what is queued.
func (r *rebuilder) worker() {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		for len(r.queue) == 0 && !r.closed {
			r.ready.Wait()
		}
		if len(r.queue) == 0 {
			r.mu.Unlock()
			return
		}
		k := 0
		for i, j := range r.queue {
			if j.work > r.queue[k].work {
				k = i
			}
		}
		j := r.queue[k]
		r.queue = append(r.queue[:k], r.queue[k+1:]...)
		if j.p.file == nil {
			r.spooled -= j.p.size
		}
		failed := r.err != nil
		r.mu.Unlock()
		if !failed {
			if err := r.rebuild(j.b, j.p); err != nil {
				r.fail(err)
			}
		}
		j.p.release()
	}
}

// failed returns the first error of a rebuild, if any.
func (r *rebuilder) failed() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *rebuilder) fail(err error) {
	r.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.mu.Unlock()
	r.cancel()
}

// wait waits for every rebuild and returns the first error.
func (r *rebuilder) wait() error {
	r.mu.Lock()
	r.closed = true
	r.ready.Broadcast()
	r.mu.Unlock()
	r.wg.Wait()
	r.cancel()
	return r.failed()
}

// prepared reports whether the blob d was rebuilt into the batch.
func (r *rebuilder) prepared(d digest.Digest) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.done[d]
}

// spooled is a patch entry, read and verified, waiting for its rebuild.
type spooled struct {
	data []byte
	file *os.File
	size int64
}

func (p *spooled) reader() io.Reader {
	if p.file != nil {
		return bufio.NewReaderSize(io.NewSectionReader(p.file, 0, p.size), 1<<20)
	}
	return bytes.NewReader(p.data)
}

func (p *spooled) release() {
	if p.file != nil {
		p.file.Close()
		os.Remove(p.file.Name())
	}
}

// submit reads the patch entry of b from rd (verified against its digest)
// and queues its rebuild.
func (r *rebuilder) submit(b Blob, rd io.Reader, buf []byte) error {
	if err := r.failed(); err != nil {
		return err
	}
	p := &spooled{size: b.Patch.Size}
	rd = store.VerifyReader(rd, b.entry())
	r.mu.Lock()
	inMem := r.spooled+b.Patch.Size <= maxSpoolMem
	if inMem {
		r.spooled += b.Patch.Size
	}
	r.mu.Unlock()
	var err error
	if inMem {
		w := bytes.NewBuffer(make([]byte, 0, b.Patch.Size+bytes.MinRead))
		_, err = w.ReadFrom(rd)
		p.data = w.Bytes()
	} else if p.file, err = os.CreateTemp(r.s.TempDir(), store.TempPattern("patch")); err == nil {
		_, err = io.CopyBuffer(p.file, rd, buf)
	}
	j := &rebuildJob{b: b, p: p, work: b.Size}
	if b.Patch.Block != nil {
		j.work = b.Patch.Block.Size
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		if inMem {
			r.spooled -= b.Patch.Size
		}
		p.release()
		return fmt.Errorf("bundle %s: %w", r.path, err)
	}
	r.queue = append(r.queue, j)
	r.ready.Signal()
	return nil
}

// weight is the memory a rebuild of b holds: a delta's base uncompressed
// (from the delta header), a patch's base (compressed, and for a member
// patch also uncompressed, within maxMemberDict).
func weight(b Blob, p *spooled) int64 {
	switch b.Patch.Encoding {
	case PatchDeltaMember:
		h, err := delta.ReadHeader(bufio.NewReader(p.reader()))
		if err != nil {
			return 1 // the decoder reports it
		}
		return min(max(h.BaseSize, 1), maxDeltaRaw)
	case PatchZstdGzipMembers:
		return b.Patch.Base.Size + maxMemberDict
	default:
		return b.Patch.Base.Size
	}
}

// rebuild writes blob b, rebuilt from its patch p and its base in the store,
// into a temp file and adds it to the batch, which checks digest and size.
func (r *rebuilder) rebuild(b Blob, p *spooled) error {
	ctx := r.ctx
	n := min(weight(b, p), rebuildMemory)
	if err := r.mem.Acquire(ctx, n); err != nil {
		return err
	}
	defer r.mem.Release(n)
	out, closeDec, err := openPatched(ctx, r.s, b, p.reader(), r.budget)
	if err != nil {
		return fmt.Errorf("bundle %s: %w", r.path, err)
	}
	var once sync.Once
	stop := func() { once.Do(closeDec) }
	defer stop()
	w, err := r.s.NewWriter(ctx)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(w, io.LimitReader(out, b.Size+1), buf); err != nil {
		w.Close()
		return fmt.Errorf("bundle %s: %w", r.path, err)
	}
	stop()
	r.mu.Lock()
	err = r.batch.Add(ctx, w, b.Descriptor())
	if err == nil {
		r.done[b.Digest] = true
	}
	r.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("bundle %s: rebuild %s: %w", r.path, b, err)
		if errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrSizeMismatch) {
			switch b.Patch.Encoding {
			case PatchDeltaMember:
				// The delta rebuilt the block's bytes (the decoder checks
				// their sha256); deflating them gave another member.
				err = fmt.Errorf("%w (the block was rebuilt exactly but deflated here into another member: a bundle made with --no-deltas carries it as it is)", err)
			case PatchZstdGzipMembers:
				// The patch itself was intact (or zstd would have failed):
				// the deflate of this build differs from the one that made
				// the layer.
				err = fmt.Errorf("%w (the layer's members were deflated again here and came out different: a bundle made with --no-patches carries them as they are)", err)
			}
		}
		return err
	}
	return nil
}
