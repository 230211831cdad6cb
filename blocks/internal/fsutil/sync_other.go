//go:build !linux && !darwin

package fsutil

import "os"

// HaveSyncFS: no per-file-system sync here; Seal syncs each file instead.
const HaveSyncFS = false

// SyncFS is a no-op: every sealed file was synced on its own.
func SyncFS(string) error { return nil }

// startWriteback has no portable form; the hint is skipped.
func startWriteback(*os.File, int64, int64) {}

// fullSync is fsync.
func fullSync(f *os.File) error { return f.Sync() }
