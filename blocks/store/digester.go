package store

import (
	"crypto/sha256"
	"hash"
	"sync"

	"github.com/opencontainers/go-digest"
)

// Digester computes the sha256 of what is written to it, on a goroutine of
// its own once a write is large, so that the caller reads or writes the
// next chunk while this one is hashed: on two cores, ingesting or checking
// a bundle is otherwise read, hash, write, hash, one after the other.
// Large writes are copied into pooled buffers, at most digestDepth in
// flight. BlobWriter uses one; so does a bundle's check pass.
type Digester struct {
	h    hash.Hash
	q    chan *[]byte
	done chan struct{}
}

const (
	digestChunk = 1 << 20
	digestDepth = 2
	// digestAsyncMin: hashing moves to the goroutine at the first write of
	// at least this many bytes (small blobs are hashed inline).
	digestAsyncMin = 256 << 10
)

var digestBufs = sync.Pool{New: func() any { b := make([]byte, 0, digestChunk); return &b }}

// NewDigester returns a sha256 Digester.
func NewDigester() *Digester { return newDigester(sha256.New()) }

func newDigester(h hash.Hash) *Digester { return &Digester{h: h} }

// Write hashes p (never fails).
func (d *Digester) Write(p []byte) (int, error) {
	if d.q == nil && len(p) >= digestAsyncMin {
		d.q, d.done = make(chan *[]byte, digestDepth), make(chan struct{})
		go func(q <-chan *[]byte, done chan<- struct{}) {
			defer close(done)
			for b := range q {
				d.h.Write(*b)
				digestBufs.Put(b)
			}
		}(d.q, d.done)
	}
	if d.q == nil {
		return d.h.Write(p)
	}
	for rest := p; len(rest) > 0; {
		b := digestBufs.Get().(*[]byte)
		k := min(len(rest), cap(*b))
		*b = append((*b)[:0], rest[:k]...)
		d.q <- b
		rest = rest[k:]
	}
	return len(p), nil
}

// sync waits until everything written is hashed; later writes hash inline
// until the next large one.
func (d *Digester) sync() {
	if d.q != nil {
		close(d.q)
		<-d.done
		d.q, d.done = nil, nil
	}
}

// Digest is the digest of everything written so far.
func (d *Digester) Digest() digest.Digest {
	d.sync()
	return digest.NewDigest(digest.SHA256, d.h)
}

// Reset starts over.
func (d *Digester) Reset() {
	d.sync()
	d.h.Reset()
}

// Close stops the hashing goroutine, if any. Digest and Reset do too.
func (d *Digester) Close() { d.sync() }
