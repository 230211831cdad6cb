//go:build unix

package fsutil

import (
	"os"
	"syscall"
)

// ID identifies a file's content as far as metadata can: a rewrite in
// place changes mtime and ctime, a replacement changes the inode.
type ID struct {
	Dev, Ino     uint64
	Size         int64
	Mtime, Ctime int64 // nanoseconds
}

// IDOf returns fi's identity; ok is false if the platform does not say.
func IDOf(fi os.FileInfo) (ID, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ID{}, false
	}
	return ID{Dev: uint64(st.Dev), Ino: uint64(st.Ino), Size: fi.Size(),
		Mtime: fi.ModTime().UnixNano(), Ctime: ctime(st)}, true
}
