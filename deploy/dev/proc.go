package dev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	// readyTimeout bounds the wait for one component to become healthy, on
	// top of the caller's context.
	readyTimeout = 30 * time.Second
	// pollInterval is the pause between two readiness probes.
	pollInterval = 100 * time.Millisecond
	// stopGrace is how long a component has to exit after SIGTERM.
	stopGrace = 5 * time.Second
	// errorLogLines is how much of a component's log a start error quotes.
	errorLogLines = 20
)

// process is one long-running component (spire-server, spire-agent, vault).
type process struct {
	name    string
	logPath string
	pid     int
	done    chan struct{} // closed once the process has exited and been reaped
	waitErr error         // valid after done is closed
}

// spawn starts bin/<tool> with args in its own process group, with stdout and
// stderr appended to <Dir>/<name>.log.
func (s *Stack) spawn(name string, env []string, tool string, args ...string) (*process, error) {
	cmd := exec.Command(filepath.Join(s.BinDir, tool), args...)
	cmd.Dir = s.Dir
	cmd.Env = env
	return s.spawnCmd(name, cmd, nil)
}

// spawnCmd is spawn for a command made by the caller, run as the user of
// as (nil: the caller's).
func (s *Stack) spawnCmd(name string, cmd *exec.Cmd, as *syscall.Credential) (*process, error) {
	logPath := filepath.Join(s.Dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("dev: %s: %w", name, err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = sysProcAttr()
	cmd.SysProcAttr.Credential = as
	p := &process{name: name, logPath: logPath, done: make(chan struct{})}

	// Start and reap the process from one goroutine locked to its OS thread:
	// on Linux the child's parent-death signal fires when the thread that
	// started it exits, so that thread must live exactly as long as the child.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer logFile.Close()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("dev: starting %s: %w", name, err)
	}
	p.pid = cmd.Process.Pid

	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p, nil
}

// stop sends SIGTERM to the process group, then SIGKILL if the process is
// still there after stopGrace, and returns once the process is reaped.
func (p *process) stop() {
	_ = syscall.Kill(-p.pid, syscall.SIGTERM)
	timer := time.NewTimer(stopGrace)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		<-p.done
	}
	// Anything the component left in its group goes too. The group ID stays
	// reserved while members remain, so this cannot hit an unrelated process.
	_ = syscall.Kill(-p.pid, syscall.SIGKILL)
}

// exited returns the error for a component that died before it was ready.
func (s *Stack) exited(p *process) error {
	return fmt.Errorf("dev: %s exited during start (%v); last lines of its log:\n%s",
		p.name, p.waitErr, s.tail(p.logPath, errorLogLines))
}

// addrInUse reports whether a component that exited failed to bind its port,
// which can happen when another process takes a free port between freePort
// and the component's own bind.
func (p *process) addrInUse() bool {
	b, _ := os.ReadFile(p.logPath)
	return bytes.Contains(b, []byte("address already in use"))
}

// awaitReady calls check until it succeeds, the process exits, or ctx (capped
// at readyTimeout) ends.
func (s *Stack) awaitReady(ctx context.Context, p *process, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return s.exited(p)
		case <-ctx.Done():
			return fmt.Errorf("dev: %s not ready: %w (last check: %v); last lines of its log:\n%s",
				p.name, ctx.Err(), err, s.tail(p.logPath, errorLogLines))
		case <-ticker.C:
		}
	}
}

// retry calls f until it succeeds or ctx (capped at readyTimeout) ends, for
// steps that fail briefly after a component reports healthy.
func retry(ctx context.Context, what string, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("dev: %s: %w (last error: %w)", what, ctx.Err(), err)
		case <-ticker.C:
		}
	}
}

// run runs bin/<tool> to completion and returns its stdout. The error quotes
// stderr, which is where the SPIRE and Vault CLIs explain failures.
func (s *Stack) run(ctx context.Context, env []string, tool string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(s.BinDir, tool), args...)
	cmd.Dir = s.Dir
	cmd.Env = env
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("dev: %s %s: %w", tool, firstArgs(args), ctx.Err())
		}
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.String(), fmt.Errorf("dev: %s %s: %w: %s", tool, firstArgs(args), err, msg)
	}
	return stdout.String(), nil
}

// firstArgs names a command for an error message by its leading words (the
// subcommand), leaving out flag values such as tokens.
func firstArgs(args []string) string {
	var words []string
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			break
		}
		words = append(words, a)
	}
	return strings.Join(words, " ")
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
//
// It picks below the kernel's ephemeral range, where neither a listener
// on port 0 nor an outgoing connection's local port can take it between
// this check and the component's own bind, nor while a stopped component
// (an etcd member) waits to be started again on it: with many test
// packages running at once, an ephemeral port was taken within seconds.
func freePort() (int, error) {
	lo, hi := 10000, ephemeralStart()
	for range 50 {
		if hi-lo < 1000 {
			break
		}
		p := lo + rand.N(hi-lo)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			l.Close()
			return p, nil
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("dev: finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ephemeralStart is the first port of the kernel's ephemeral range
// (32768 if it cannot be read).
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
}

// freePortPair returns a port p such that p and p+1 were both free a moment
// ago (Vault binds its cluster listener on the API port + 1).
func freePortPair() (int, error) {
	for range 20 {
		p, err := freePort()
		if err != nil {
			return 0, err
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		if err == nil {
			l.Close()
			return p, nil
		}
	}
	return 0, errors.New("dev: no two adjacent free ports found")
}

// tail returns the last n lines of the log file at path, with the secrets the
// Vault dev server prints masked.
func (s *Stack) tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	text := lastLines(string(b), n)
	if s.VaultRootToken != "" {
		text = strings.ReplaceAll(text, s.VaultRootToken, "<root token>")
	}
	return unsealKey.ReplaceAllString(text, "${1}<unseal key>")
}

// lastLines is the last n lines of text.
func lastLines(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// unsealKey matches the unseal key the Vault dev server prints.
var unsealKey = regexp.MustCompile(`(Unseal Key: )\S+`)

// FreeAddr is an address on 127.0.0.1 whose port was free a moment ago,
// below the ephemeral range (freePort), for a listener whose address
// must be known before it starts (the console's, named in its own URL;
// the demo's replicas and servers; a test's metrics).
func FreeAddr() (string, error) {
	p, err := freePort()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", p), nil
}
