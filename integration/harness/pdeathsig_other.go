//go:build !linux

package harness

import "syscall"

// setPdeathsig: only Linux has a parent-death signal; the harness stops
// components by pid at the end instead (the tests run on Linux anyway, this
// keeps GOOS=darwin go build ./... working).
func setPdeathsig(*syscall.SysProcAttr) {}
