//go:build unix

package serve

import (
	"os"
	"syscall"
)

// layoutFileBudget is how many files the layouts of live jobs may hold open:
// 4096, or a quarter of the process's limit if that is less, which leaves
// the rest to connections and the store.
func layoutFileBudget() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur/4 < 4096 {
		return int(rl.Cur / 4)
	}
	return 4096
}

// unlinked reports whether the file has no name left (gc removed it).
func unlinked(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Nlink == 0
}
