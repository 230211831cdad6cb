package fsutil

import (
	"os"

	"golang.org/x/sys/unix"
)

// HaveSyncFS: Linux flushes a whole file system with one syncfs(2), so a
// batch of files is made durable with one call instead of one fsync each.
const HaveSyncFS = true

// SyncFS makes every file written so far to the file system holding dir
// durable.
func SyncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// startWriteback starts writing back a range of f (n == 0: to the end)
// without waiting (sync_file_range). Only a hint: a later sync reports errors.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// fullSync is fsync: on Linux it reaches the disk.
func fullSync(f *os.File) error { return f.Sync() }
