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
	key, keyed := fileKeyOf(fi)
	if keyed && fi.Size() >= trustRecordMin {
		if _, ok := s.verifiedOnDisk(d, key); ok {
			s.trust.add(d, fi)
			return true, nil
		}
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
	if k, ok := fileKeyOf(before); ok && before.Size() >= trustRecordMin {
		s.writeVerified(verifiedRecord{Digest: d, File: k})
	}
	return true, nil
}

// trustWritten records that this process just wrote the verified blob d
// (and, for a large one, so does the store: verifiedDir, unless hosts is
// set: the blob hosts extents, and trustExtents writes its record).
func (s *Store) trustWritten(d digest.Digest, hosts bool) {
	if fi, err := os.Stat(s.BlobPath(d)); err == nil {
		s.trust.add(d, fi)
		if k, ok := fileKeyOf(fi); ok && fi.Size() >= trustRecordMin && !hosts {
			s.writeVerified(verifiedRecord{Digest: d, File: k})
		}
	}
}

// trustExtents records that this process just wrote (and hashed) the
// extents exts of the blob host and their record; the store records it in
// host's verified record, so that other processes trust the extents while
// neither the host nor the extents record changes.
func (s *Store) trustExtents(host digest.Digest, exts []Extent) {
	fi, err := os.Stat(s.BlobPath(host))
	if err != nil {
		return
	}
	for _, e := range exts {
		s.trust.add(e.Digest, fi)
	}
	s.stampExtents(host, fi)
}

// stampExtents writes host's verified record with the identities host (fi)
// and its extents record have now: every extent the record lists has just
// been checked in host.
func (s *Store) stampExtents(host digest.Digest, fi os.FileInfo) {
	hk, ok := fileKeyOf(fi)
	if !ok {
		return
	}
	rk, ok, err := statKey(s.extentRecordPath(host))
	if err != nil || !ok {
		return
	}
	s.writeVerified(verifiedRecord{Digest: host, File: hk, Extents: &rk})
	s.stamps.set(host, hostStamp{host: hk, extents: rk})
}

// extentsTrusted reports whether the extents of host (whose file is fi)
// were all checked while host and its extents record had the identities
// they have now.
func (s *Store) extentsTrusted(host digest.Digest, fi os.FileInfo) bool {
	hk, ok := fileKeyOf(fi)
	if !ok {
		return false
	}
	rk, ok, err := statKey(s.extentRecordPath(host))
	if err != nil || !ok {
		return false
	}
	// The record read once per process and host (a pull asks for hundreds
	// of extents of one layer); both identities are checked every time.
	want := hostStamp{host: hk, extents: rk}
	if s.stamps.has(host, want) {
		return true
	}
	r, ok := s.verifiedOnDisk(host, hk)
	if !ok || r.Extents == nil || *r.Extents != rk {
		return false
	}
	s.stamps.set(host, want)
	return true
}

// hostStamp is a host's verified record as extentsTrusted found it: the
// identities of the host file and of its extents record.
type hostStamp struct{ host, extents fileKey }

// stampCache holds the stamps extentsTrusted read and stampExtents wrote.
type stampCache struct {
	mu sync.Mutex
	m  map[digest.Digest]hostStamp
}

func (c *stampCache) has(host digest.Digest, st hostStamp) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	got, ok := c.m[host]
	return ok && got == st
}

func (c *stampCache) drop(host digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, host)
}

func (c *stampCache) set(host digest.Digest, st hostStamp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[digest.Digest]hostStamp{}
	}
	c.m[host] = st
}
