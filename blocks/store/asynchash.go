package store

import (
	"hash"
	"sync"
)

// asyncHash hashes on a goroutine of its own what a BlobWriter writes, so
// that a large blob is hashed while the next chunk goes to the file: on two
// cores, ingesting a bundle is otherwise hash, write, hash, write on one.
// Chunks are copied into buffers from a shared pool; at most asyncDepth
// are in flight per writer.
type asyncHash struct {
	h    hash.Hash
	q    chan *[]byte
	done chan struct{}
}

const (
	asyncChunk = 1 << 20
	asyncDepth = 2
	// asyncMin: a writer starts hashing asynchronously at its first write
	// of at least this many bytes (small blobs are hashed inline).
	asyncMin = 256 << 10
)

var asyncBufs = sync.Pool{New: func() any { b := make([]byte, 0, asyncChunk); return &b }}

func newAsyncHash(h hash.Hash) *asyncHash {
	a := &asyncHash{h: h, q: make(chan *[]byte, asyncDepth), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		for b := range a.q {
			a.h.Write(*b)
			*b = (*b)[:0]
			asyncBufs.Put(b)
		}
	}()
	return a
}

// write queues a copy of p to be hashed, in order.
func (a *asyncHash) write(p []byte) {
	for len(p) > 0 {
		b := asyncBufs.Get().(*[]byte)
		k := min(len(p), cap(*b))
		*b = append((*b)[:0], p[:k]...)
		a.q <- b
		p = p[k:]
	}
}

// wait returns once everything queued is hashed, and stops the goroutine.
func (a *asyncHash) wait() {
	close(a.q)
	<-a.done
}
