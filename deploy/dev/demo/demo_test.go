package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentictrust/atf/deploy/dev"
)

// haDemoTimeout bounds the HA demo's run (about 20 s on 2 cores).
const haDemoTimeout = 4 * time.Minute

// ansi matches the demo's colour codes.
var ansi = regexp.MustCompile(`\x1b\[[0-9;]*m`)

// `make demo-ha` end to end: atfd, atfctl and the demo built as `make
// build` builds them, the demo run as a person runs it. It exits 0 (every
// check held), and its narration says what the brief promises: the agent's
// next credential came from a replica other than the one killed, its watch
// resumed there, a lineage revoked on a third replica reached it, Vault
// refuses the three revoked tokens, and the survivors stopped cleanly.
func TestHADemo(t *testing.T) {
	out, took := runDemo(t, "-ha", haDemoTimeout)
	t.Logf("demo -ha passed in %s", took.Round(time.Second))
	find := matcher(t, out)
	killed := find(`kill -KILL \d+ +\((r\d), which the agent's connection is on\)`)[1]
	after := find(`✔ issued by (r\d), \S+ after the kill`)[1]
	find(`✔ the agent's revocation watch resumed on ` + after + ` where it broke`)
	m := find(`The agent's connection, and its revocation watch, is on (r\d); alice revokes on (r\d)`)
	if m[1] != after || m[2] == after || m[2] == killed || after == killed {
		t.Errorf("killed %s, the agent moved to %s, watched on %s, the revocation made on %s: want three distinct replicas", killed, after, m[1], m[2])
	}
	find(`✔ the agent heard, through ` + after + `, the revocation made on another replica`)
	for what, n := range map[string]int{"✔ refused: Vault no longer knows it": 3, "stopped cleanly": 2, "✘": 0} {
		if got := strings.Count(out, what); got != n {
			t.Errorf("%q %d times in the demo's output, want %d:\n%s", what, got, n, out)
		}
	}
	find(`Done\. Three atfd replicas served one store in etcd`)
}

// `make console` (the demo with -console, here with -once so that it
// stops once the console answers): the stack, the OpenID provider and
// atfd with its console start, the console sends a sign-in to the
// provider, and a Junior's write waits in the approvals inbox. The flows
// in the browser are TestConsole's (broker/console_e2e_test.go).
func TestConsoleDemo(t *testing.T) {
	out, took := runDemo(t, "-console", consoleDemoTimeout, "-once")
	t.Logf("demo -console passed in %s", took.Round(time.Second))
	find := matcher(t, out)
	find(`✔ the console sends a sign-in to the OpenID provider`)
	find(`✔ the drafter's request waits in the approvals inbox \([0-9a-f]{32}\)`)
	find(`Open http://127\.0\.0\.1:\d+ and sign in as`)
	find(`carol +password carol-demo`)
	find(`Done\. The console ran on real SPIRE SVIDs`)
}

// consoleDemoTimeout bounds TestConsoleDemo.
const consoleDemoTimeout = 3 * time.Minute

// A check that does not hold fails the demo, whatever the steps return:
// the demo is a check, not just a show.
func TestRunFailsOnAFailedCheck(t *testing.T) {
	sc := script{steps: []step{
		{"a check that holds", func(d *demo, _ context.Context) error { d.check(true, "holds"); return nil }},
		{"a check that does not", func(d *demo, _ context.Context) error { d.check(false, "does not hold"); return nil }},
	}, done: "never said"}
	err := run(t.Context(), sc, "", false)
	if err == nil || err.Error() != "1 check(s) did not behave as expected (marked ✘ above)" {
		t.Fatalf("run: %v, want 1 failed check", err)
	}
}

// runDemo builds the demo and runs it with flag, as a person runs it, for
// at most timeout. What it starts (atfd replicas, mcp-tools; SPIRE, Vault
// and etcd with them) are its children, in its process group: a demo that
// overruns goes with them. It fails the test unless the demo exits 0, and
// returns the demo's output without its colour codes, and how long it ran.
func runDemo(t *testing.T, flag string, timeout time.Duration, more ...string) (string, time.Duration) {
	t.Helper()
	bin := buildDemo(t)
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	demo := exec.CommandContext(ctx, filepath.Join(bin, "demo"), append([]string{flag, "-bin", bin}, more...)...)
	demo.Dir = repoRoot(t)
	demo.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	demo.Cancel = func() error { return syscall.Kill(-demo.Process.Pid, syscall.SIGKILL) }
	start := time.Now()
	raw, err := demo.CombinedOutput()
	out := ansi.ReplaceAllString(string(raw), "")
	if err != nil {
		t.Fatalf("demo %s: %v after %s\n%s", flag, err, time.Since(start).Round(time.Second), out)
	}
	return out, time.Since(start)
}

// matcher returns a find that returns the submatches of a regular
// expression in out, and fails the test when out does not match it.
func matcher(t *testing.T, out string) func(re string) []string {
	return func(re string) []string {
		t.Helper()
		m := regexp.MustCompile(re).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("the demo's output does not match %q:\n%s", re, out)
		}
		return m
	}
}

// buildDemo builds atfd, atfctl and the demo into a directory of the
// test's, as `make build` and `go run` do.
func buildDemo(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	build := exec.CommandContext(t.Context(), goTool, "build", "-o", bin+string(filepath.Separator), "./cmd/atfd", "./cmd/atfctl", "./deploy/dev/demo")
	build.Dir = repoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := dev.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}
