package dev

import "syscall"

// sysProcAttr puts a component in its own process group, so that Close can
// signal everything it started, and has the kernel kill it if the process
// that started it dies without calling Close.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
