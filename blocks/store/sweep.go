package store

import (
	"context"
	"fmt"
	"time"

	"github.com/blockfile/blockfile/blocks/internal/fsutil"
)

// TempDir is the store's directory for temp and spool files (export's
// spools, bundle work files): on the store's file system, so renames into
// blobs/ are atomic, and swept by the next writer when a process that owned
// files there was killed. Name files in it with TempPattern.
func (s *Store) TempDir() string { return s.path(ingestDir) }

// TempPattern is the os.CreateTemp pattern for a temp file of kind ("spool",
// "patch", ...) in TempDir: the name says which process owns it, so that
// SweepTemp can tell a killed writer's files from a running one's.
func TempPattern(kind string) string { return fsutil.TempPattern(kind) }

// SweepTemp removes the temp and spool files in TempDir that no running
// writer owns: those of a process of this host that is gone (after a
// minute's grace), and any file older than StaleTempAge whose owner cannot
// be judged (another host sharing the store, or a name without owner). A
// running process's files are kept. Lease calls it; gc too.
func (s *Store) SweepTemp(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	removed, err := fsutil.Sweep(s.path(ingestDir), time.Now(), false)
	if err != nil {
		return removed, fmt.Errorf("store %s: %w", s.root, err)
	}
	return removed, nil
}
