package bundle

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/store"
)

// hashPipe checks the digests of blobs on a goroutine of its own while the
// caller reads the next bytes of the bundle: apply's check pass reads and
// hashes every byte, and on two cores the two overlap. Chunks are copied
// into pooled buffers, at most pipeDepth in flight.
type hashPipe struct {
	path string
	q    chan pipeJob
	done chan struct{}
	once sync.Once
	mu   sync.Mutex
	err  error // the first mismatch
}

type pipeJob struct {
	chunk *[]byte // bytes of the current blob, or nil: the blob ends
	want  Blob
}

const (
	pipeChunk = 1 << 20
	pipeDepth = 4
)

var pipeBufs = sync.Pool{New: func() any { b := make([]byte, pipeChunk); return &b }}

func newHashPipe(path string) *hashPipe {
	p := &hashPipe{path: path, q: make(chan pipeJob, pipeDepth), done: make(chan struct{})}
	go p.run()
	return p
}

func (p *hashPipe) run() {
	defer close(p.done)
	var h hash.Hash = sha256.New()
	var n int64
	for j := range p.q {
		if j.chunk != nil {
			h.Write(*j.chunk)
			n += int64(len(*j.chunk))
			pipeBufs.Put(j.chunk)
			continue
		}
		if got := digest.NewDigest(digest.SHA256, h); (got != j.want.Digest || n != j.want.Size) && p.failed() == nil {
			p.mu.Lock()
			p.err = fmt.Errorf("bundle %s: blob %s (%s): %d bytes hashing to %s: %w", p.path, j.want.Digest, j.want.Kind, n, got, store.ErrDigestMismatch)
			p.mu.Unlock()
		}
		h.Reset()
		n = 0
	}
}

// failed returns the first mismatch found so far.
func (p *hashPipe) failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// blob reads all of r (the bytes of b) and queues them to be checked.
func (p *hashPipe) blob(b Blob, r io.Reader) error {
	for {
		buf := pipeBufs.Get().(*[]byte)
		*buf = (*buf)[:cap(*buf)]
		k, err := io.ReadFull(r, *buf)
		if k > 0 {
			*buf = (*buf)[:k]
			p.q <- pipeJob{chunk: buf}
		} else {
			pipeBufs.Put(buf)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			p.q <- pipeJob{want: b}
			return p.failed()
		}
		if err != nil {
			return err
		}
	}
}

// close waits for the queued blobs and returns the first mismatch. It may
// be called more than once.
func (p *hashPipe) close() error {
	p.once.Do(func() {
		close(p.q)
		<-p.done
	})
	return p.failed()
}
