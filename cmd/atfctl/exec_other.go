//go:build !linux

package main

import (
	"os"
	"syscall"
)

// sysProcAttr: process groups and parent-death signals are Linux-only here;
// elsewhere the child alone is signalled.
func sysProcAttr(bool) *syscall.SysProcAttr { return nil }

func signalChild(p *os.Process, _ bool, s syscall.Signal) { _ = p.Signal(s) }
