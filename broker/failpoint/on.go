//go:build failpoints

package failpoint

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
)

// armed is $ATF_FAILPOINT, read once at start.
var armed = strings.Split(os.Getenv("ATF_FAILPOINT"), ",")

// Hit kills the process with SIGKILL if name is armed.
func Hit(name string) {
	if slices.Contains(armed, name) {
		fmt.Fprintf(os.Stderr, "failpoint %s: SIGKILL\n", name)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
