package main

import (
	"os"
	"syscall"
)

// sysProcAttr has the kernel kill the child if atfctl dies without stopping
// it (a child must not outlive the watch over its credentials), and puts it
// in its own process group when group is set.
func sysProcAttr(group bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: group, Pdeathsig: syscall.SIGKILL}
}

// signalChild sends s to p, or to its whole process group.
func signalChild(p *os.Process, group bool, s syscall.Signal) {
	if group {
		_ = syscall.Kill(-p.Pid, s) // the group may be gone already
		return
	}
	_ = p.Signal(s)
}
