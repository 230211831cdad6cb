package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/gofrs/flock"
)

// gcLockFile is the store-wide lock between writers and gc: every writer
// holds it shared (a lease) from its first blob to its last tag or record,
// gc holds it exclusive while it marks and sweeps. It is a file of its own,
// not index.lock, so that tagging (exclusive on index.lock, for a moment)
// and writing (shared on gc.lock, for minutes) do not wait for each other.
const gcLockFile = "blockfile/gc.lock"

// ErrLeaseHeld: GC was called by a process that holds a lease on the same
// store through the same *Store, so it would wait for itself.
var ErrLeaseHeld = errors.New("this process holds a lease on the store")

// leases counts the leases taken through one *Store; the shared flock is
// taken by the first and dropped by the last, so nested leases (apply ->
// materialize) cost nothing and never wait for a gc queued behind them.
type leases struct {
	mu sync.Mutex
	n  int
	fl *flock.Flock
}

// Lease protects everything the caller writes to the store, and every blob
// it finds present and will reference, from gc until release is called: gc
// waits until no lease is held, and a lease waits while gc runs. Take it
// before the first write (or the first presence check whose answer you rely
// on) and release it after the tag, RecordBlock or RecordMember that makes
// the writes reachable; the lease covers the gap in between, where a blob is
// in the store but nothing references it yet.
//
// Export, block add, bundle apply, hydrate and materialize take a lease; so
// must any new writer (registry pull, the site mirror). It is a shared flock
// on blockfile/gc.lock, so it works across processes and is dropped by the
// kernel when a process dies. Leases nest and may be taken from several
// goroutines; release is idempotent. Lease waits until ctx is done if gc is
// running.
//
// Taking the first lease of a *Store also removes temp and spool files that
// killed processes left in the store (see SweepTemp).
func (s *Store) Lease(ctx context.Context) (release func(), err error) {
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	if s.leases.n == 0 {
		fl := flock.New(s.path(gcLockFile))
		ok, err := fl.TryRLockContext(ctx, 20*time.Millisecond)
		if err != nil || !ok {
			fl.Close()
			if err == nil {
				err = ctx.Err()
			}
			return nil, fmt.Errorf("lease on store %s (is gc running?): %w", s.root, err)
		}
		s.leases.fl = fl
		// Under the lease a gc cannot run, and the sweep only removes files
		// of dead processes: no live writer loses a temp file.
		if _, err := s.SweepTemp(ctx); err != nil {
			fl.Close()
			s.leases.fl = nil
			return nil, err
		}
	}
	s.leases.n++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.leases.mu.Lock()
			defer s.leases.mu.Unlock()
			s.leases.n--
			if s.leases.n == 0 {
				s.leases.fl.Close() // closing the file drops the flock
				s.leases.fl = nil
			}
		})
	}, nil
}

// lockGC takes gc.lock exclusive: it waits until every lease, in this
// process and others, is released. It refuses to wait for a lease held
// through s itself.
func (s *Store) lockGC(ctx context.Context) (unlock func(), err error) {
	s.leases.mu.Lock()
	held := s.leases.n > 0
	s.leases.mu.Unlock()
	if held {
		return nil, fmt.Errorf("gc %s: %w", s.root, ErrLeaseHeld)
	}
	fl := flock.New(s.path(gcLockFile))
	ok, err := fl.TryLockContext(ctx, 20*time.Millisecond)
	if err != nil || !ok {
		fl.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("gc %s: wait for writers: %w", s.root, err)
	}
	return func() { fl.Close() }, nil
}
