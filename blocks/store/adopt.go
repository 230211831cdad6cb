package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/blockfile/blockfile/blocks/internal/fsutil"
)

// CreateTemp creates a temp file in the store's ingest directory (the same
// filesystem as blobs/, so AdoptVerified can rename it into place). It is
// for a producer whose output other readers follow while it is written
// (blockfile serve streams a layer to several clients as it is hydrated):
// they read the file itself, so it must have a name they can share and a
// place it can be kept. name is a prefix for the file name. The file is
// flocked while it is open, so RemoveAbandonedTemps can tell the files of a
// process that died (the kernel drops its locks) from those still written;
// gc also removes temp files once they are StaleTempAge old.
func (s *Store) CreateTemp(name string) (*os.File, error) {
	// Named like every temp file of the store (kind, host, pid), so the
	// sweep of a lease or gc knows its owner.
	f, err := os.CreateTemp(s.path(ingestDir), fsutil.TempPattern(name))
	if err != nil {
		return nil, fmt.Errorf("store %s: new temp file: %w", s.root, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("store %s: lock %s: %w", s.root, f.Name(), err)
	}
	return f, nil
}

// RemoveAbandonedTemps removes the CreateTemp files named name whose writer
// is gone (killed, crashed): those whose lock can be taken, at once (the
// sweep of SweepTemp waits a minute after their owner died, in case its pid
// was reused). It returns how many it removed.
func (s *Store) RemoveAbandonedTemps(name string) (int, error) {
	ents, err := os.ReadDir(s.path(ingestDir))
	if err != nil {
		return 0, fmt.Errorf("store %s: %w", s.root, err)
	}
	n := 0
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasPrefix(e.Name(), name+".") {
			continue
		}
		p := filepath.Join(s.path(ingestDir), e.Name())
		f, err := os.Open(p)
		if err != nil {
			continue // gone meanwhile
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			if os.Remove(p) == nil {
				n++
			}
		}
		f.Close()
	}
	return n, nil
}

// AdoptVerified moves f, a temp file from CreateTemp whose content its
// producer has checked against desc (layer.Hydrate checks every byte it
// writes), into place as the blob desc without hashing it again: size
// check, fsync, read-only, rename. f stays open, so readers sharing it go on
// reading; the caller closes it. A blob already present is not an error (f
// is then removed). On error f stays where it was.
func (s *Store) AdoptVerified(ctx context.Context, desc ocispec.Descriptor, f *os.File) error {
	p, err := s.blobPath(desc.Digest)
	if err != nil {
		return err
	}
	if filepath.Dir(f.Name()) != s.path(ingestDir) {
		return fmt.Errorf("blob %s: %s is not a temp file of store %s: %w", desc.Digest, f.Name(), s.root, ErrInvalid)
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if fi.Size() != desc.Size {
		return fmt.Errorf("blob %s: %s is %d bytes, want %d: %w", desc.Digest, f.Name(), fi.Size(), desc.Size, ErrSizeMismatch)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Size() == desc.Size {
		// Another writer got there first: keep its file (readers may have
		// it open) and drop the name of ours.
		os.Remove(f.Name())
		return nil
	}
	// fsync before rename: after a crash a blob name never points at
	// unwritten data. 0444: blobs are immutable, by name.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("blob %s: sync %s: %w", desc.Digest, f.Name(), err)
	}
	if err := f.Chmod(0o444); err != nil {
		return fmt.Errorf("blob %s: chmod %s: %w", desc.Digest, f.Name(), err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if err := os.Rename(f.Name(), p); err != nil {
		return fmt.Errorf("blob %s: rename %s into %s: %w", desc.Digest, f.Name(), p, err)
	}
	return syncDir(filepath.Dir(p))
}
