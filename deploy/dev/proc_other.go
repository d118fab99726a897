//go:build unix && !linux

package dev

import "syscall"

// sysProcAttr puts a component in its own process group, so that Close can
// signal everything it started.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
