package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// oauthDemoTimeout bounds the OAuth part's run (about 15 s on 2 cores,
// building mcp-tools included).
const oauthDemoTimeout = 3 * time.Minute

// The OAuth part of `make demo` end to end, alone (-oauth): atfd,
// atfctl and the demo built as `make build` builds them, mcp-tools built
// by the demo. It exits 0 (every check held), the tool server saw the
// chain A → B → C, and after the lineage was revoked refused C's next
// call within the push latency while A's own token still worked.
func TestOAuthDemo(t *testing.T) {
	bin := buildDemo(t)
	ctx, cancel := context.WithTimeout(t.Context(), oauthDemoTimeout)
	defer cancel()
	demo := exec.CommandContext(ctx, filepath.Join(bin, "demo"), "-oauth", "-bin", bin)
	demo.Dir = repoRoot(t)
	// atfd and mcp-tools are the demo's children, in its process group.
	demo.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	demo.Cancel = func() error { return syscall.Kill(-demo.Process.Pid, syscall.SIGKILL) }
	start := time.Now()
	raw, err := demo.CombinedOutput()
	out := ansi.ReplaceAllString(string(raw), "")
	if err != nil {
		t.Fatalf("demo -oauth: %v after %s\n%s", err, time.Since(start).Round(time.Second), out)
	}
	find := func(re string) []string {
		t.Helper()
		m := regexp.MustCompile(re).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("the demo's output does not match %q:\n%s", re, out)
		}
		return m
	}
	find(`agents/planner → \S+/agents/researcher → \S+/agents/summarizer \(level junior`)
	find(`✔ the tool server saw C acting for B acting for A`)
	refused := find(`✔ refused \(401\), \S+ after .atfctl revoke. started, (\S+) after it returned`)
	latency := find(`the tool server's log: revocation reason=.* latency=(\S+)`)
	find(`✔ A's own token still works`)
	if strings.Contains(out, "✘") {
		t.Errorf("a check failed:\n%s", out)
	}
	t.Logf("demo -oauth passed in %s: refused %s after the revocation returned, push latency %s",
		time.Since(start).Round(time.Second), refused[1], latency[1])
}
