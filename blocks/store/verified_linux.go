package store

import (
	"fmt"
	"os"
	"syscall"
)

// statKey returns the identity of the regular file p; ok is false where the
// platform gives no inode and change time (then nothing is cached).
func statKey(p string) (fileKey, bool, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return fileKey{}, false, err
	}
	if !fi.Mode().IsRegular() {
		return fileKey{}, false, fmt.Errorf("%s: not a regular file", p)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileKey{}, false, nil
	}
	return fileKey{
		Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size,
		Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano(),
	}, true, nil
}
