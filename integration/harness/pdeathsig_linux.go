package harness

import "syscall"

// setPdeathsig has the kernel stop a component when the test binary dies.
func setPdeathsig(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGTERM }
