//go:build unix

package fsutil

import (
	"errors"
	"syscall"
)

// Alive reports whether a process pid exists (signal 0 is delivered, or
// would be but for permissions).
func Alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
