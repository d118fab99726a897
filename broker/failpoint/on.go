//go:build failpoints

package failpoint

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

// armed is $ATF_FAILPOINT, read once at start.
var armed = strings.Split(os.Getenv("ATF_FAILPOINT"), ",")

// delay is how long Delayed lets what is in flight (an answer on its way
// to the agent) go on before the kill.
const delay = 500 * time.Millisecond

// Delayed kills the process like Hit, after delay, if name is armed.
func Delayed(name string) {
	if slices.Contains(armed, name) {
		time.Sleep(delay)
		Hit(name)
	}
}

// Hit kills the process with SIGKILL if name is armed.
func Hit(name string) {
	if slices.Contains(armed, name) {
		fmt.Fprintf(os.Stderr, "failpoint %s: SIGKILL\n", name)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
