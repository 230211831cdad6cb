package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/internal/fsutil"
)

// trustCache remembers blob files whose content this process has hashed
// (or written), by file identity: a file rewritten in place gets another
// mtime and ctime, a replaced one another inode, and is hashed again.
type trustCache struct {
	mu sync.Mutex
	m  map[digest.Digest]fsutil.ID
}

func (c *trustCache) ok(d digest.Digest, fi os.FileInfo) bool {
	id, ok := fsutil.IDOf(fi)
	if !ok {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	got, ok := c.m[d]
	return ok && got == id
}

func (c *trustCache) add(d digest.Digest, fi os.FileInfo) {
	id, ok := fsutil.IDOf(fi)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[digest.Digest]fsutil.ID{}
	}
	c.m[d] = id
}

func (c *trustCache) drop(d digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, d)
}

// present reports whether the blob d is in the store, of size (if size >=
// 0), and hashes to d. Presence is never judged by name or size alone: a
// file not yet trusted is hashed once (see trustCache). A damaged blob is
// absent, so a Push replaces it.
func (s *Store) present(ctx context.Context, d digest.Digest, size int64) (bool, error) {
	p := s.BlobPath(d)
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return s.presentExtent(ctx, d, size)
	}
	if err != nil {
		return false, fmt.Errorf("blob %s: %w", d, err)
	}
	if !fi.Mode().IsRegular() || (size >= 0 && fi.Size() != size) {
		return false, nil
	}
	if s.trust.ok(d, fi) {
		return true, nil
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("blob %s: %w", d, err)
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("blob %s: %w", d, err)
	}
	got, err := hashReader(ctx, f, d.Algorithm())
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, fmt.Errorf("blob %s (%s): %w", d, p, err)
	}
	if got != d {
		s.trust.drop(d)
		return false, nil
	}
	// Trust the identity the file had before it was read; if it changed
	// while being read, the next check hashes it again.
	s.trust.add(d, before)
	return true, nil
}

// trustWritten records that this process just wrote the verified blob d.
func (s *Store) trustWritten(d digest.Digest) {
	if fi, err := os.Stat(s.BlobPath(d)); err == nil {
		s.trust.add(d, fi)
	}
}

// trustExtents records that this process just wrote (and hashed) the
// extents exts of the blob host.
func (s *Store) trustExtents(host digest.Digest, exts []Extent) {
	if fi, err := os.Stat(s.BlobPath(host)); err == nil {
		for _, e := range exts {
			s.trust.add(e.Digest, fi)
		}
	}
}
