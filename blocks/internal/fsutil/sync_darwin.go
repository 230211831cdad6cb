package fsutil

import (
	"os"

	"golang.org/x/sys/unix"
)

// HaveSyncFS: macOS has no syncfs; Seal syncs each file instead.
const HaveSyncFS = false

// SyncFS is a no-op on macOS: every sealed file was synced on its own.
func SyncFS(string) error { return nil }

// startWriteback: macOS has no sync_file_range; the hint is skipped.
func startWriteback(*os.File, int64, int64) {}

// fullSync is F_FULLFSYNC: on macOS fsync(2) only reaches the drive's
// cache. Some file systems (network, FUSE) refuse F_FULLFSYNC; fsync then.
func fullSync(f *os.File) error {
	if _, err := unix.FcntlInt(f.Fd(), unix.F_FULLFSYNC, 0); err == nil {
		return nil
	}
	return f.Sync()
}
