package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/policy"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Governance from the command line: policy versions, human approval of
// Junior writes, the audit trail, the event stream and limits, against a
// real broker on the shared SPIRE and Vault.

// bgWait bounds how long a test waits for a background atfctl to say or
// finish something it must.
const bgWait = 30 * time.Second

// bg is atfctl running in the background, for the commands that block:
// events watch and creds fetch --wait. Its output can be read meanwhile.
type bg struct {
	mu      sync.Mutex
	out     bytes.Buffer
	written chan struct{} // closed and replaced at every write
	done    chan struct{}
	code    int // set before done is closed
}

func (c *bg) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.written)
	c.written = make(chan struct{})
	return c.out.Write(p)
}

func (c *bg) snapshot() (string, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String(), c.written
}

func (c *bg) ended() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// start runs atfctl in-process as id, like run, until it ends or ctx is
// cancelled. The test waits for it before its cleanups run.
func start(ctx context.Context, t *testing.T, b *brokertest.Broker, id spiffeid.ID, args ...string) *bg {
	t.Helper()
	s := b.F.SVID(t, id)
	return startArgs(ctx, t, append([]string{"--addr", b.Addr, "--broker-id", b.F.Stack.BrokerID.String(),
		"--svid", s.CertPath, "--svid-key", s.KeyPath, "--bundle", s.BundlePath}, args...)...)
}

// startArgs runs atfctl in-process with args alone, as start does.
func startArgs(ctx context.Context, t *testing.T, args ...string) *bg {
	t.Helper()
	c := &bg{written: make(chan struct{}), done: make(chan struct{})}
	root := newRoot()
	root.SetOut(c)
	root.SetErr(c)
	root.SetArgs(args)
	go func() {
		defer close(c.done)
		err := root.ExecuteContext(ctx)
		if err != nil {
			c.Write([]byte(message(err)))
		}
		c.code = exitCode(err)
	}()
	// t.Context is cancelled before cleanups run, which ends a command
	// started on it.
	t.Cleanup(func() { <-c.done })
	return c
}

// await returns re's submatches in c's output once they appear, failing t
// if c ends or bgWait passes first.
func (c *bg) await(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	timeout := time.After(bgWait)
	for {
		ended := c.ended()
		out, written := c.snapshot()
		if m := re.FindStringSubmatch(out); m != nil {
			return m
		}
		if ended {
			t.Fatalf("atfctl ended (exit %d) without printing %s:\n%s", c.code, re, out)
		}
		select {
		case <-written:
		case <-c.done:
		case <-timeout:
			t.Fatalf("atfctl did not print %s within %s:\n%s", re, bgWait, out)
		}
	}
}

// wait returns c's output and exit code once it ends.
func (c *bg) wait(t *testing.T) (string, int) {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(bgWait):
		out, _ := c.snapshot()
		t.Fatalf("atfctl did not end within %s:\n%s", bgWait, out)
	}
	out, _ := c.snapshot()
	return out, c.code
}

// writeFile writes text to name in dir and returns its path.
func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// policyVersions lists the broker's policy versions, newest first, through
// policy list -o json.
func policyVersions(t *testing.T, b *brokertest.Broker) []string {
	t.Helper()
	out, code := run(t, b, b.F.Admin, "policy", "list", "-o", "json")
	var got struct {
		Versions []struct {
			Version string `json:"version"`
		} `json:"versions"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil {
		t.Fatalf("policy list -o json: exit %d\n%s", code, out)
	}
	var vs []string
	for _, v := range got.Versions {
		vs = append(vs, v.Version)
	}
	return vs
}

// The policy's life from the command line: list, show, a dry run, a new
// version, diff, test, rollback, and the changes the broker refuses.
func TestCLIPolicy(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	dir := t.TempDir()
	denied, other := f.ID(t, "denied"), f.ID(t, "other")
	b.Register(t, denied, brokerv1.Level_LEVEL_INTERN, "reports-read")
	b.Register(t, other, brokerv1.Level_LEVEL_INTERN, "reports-read", "reports-write")

	v1 := brokertest.OpenPolicy(f.Stack.TrustDomain)
	out, code := run(t, b, f.Admin, "policy", "list")
	if code != 0 || !regexp.MustCompile(`(?m)^1 \(current\)\s+\S+\s+atfd\s+1\s+seeded from `).MatchString(out) {
		t.Fatalf("policy list: exit %d\n%s", code, out)
	}
	if out, code = run(t, b, f.Admin, "policy", "show"); code != 0 || out != v1 {
		t.Fatalf("policy show: exit %d\n%s\nwant:\n%s", code, out, v1)
	}
	if out, code = run(t, b, f.Admin, "policy", "show", "--part", "model"); code != 0 || out != policy.Model {
		t.Fatalf("policy show --part model: exit %d\n%s", code, out)
	}

	// Version 2 allows only the reports roles, and denies one agent the
	// read.
	group := strings.SplitAfter(v1, "\n")[0]
	v2 := group +
		"p, group:all, reports-read, read, intern, allow\n" +
		"p, group:all, reports-write, write, junior, allow\n" +
		"p, " + denied.String() + ", reports-read, *, intern, deny\n"
	v1File, v2File := writeFile(t, dir, "v1.csv", v1), writeFile(t, dir, "v2.csv", v2)

	// The reader's credential under version 1: version 2 revokes it.
	if out, code = run(t, b, denied, "creds", "fetch", "--role", "reports-read"); code != 0 {
		t.Fatalf("fetch under version 1: exit %d\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "policy", "set", "--policy", writeFile(t, dir, "repeat.csv", v2+group), "--comment", "try", "--dry-run")
	if code != 0 || !regexp.MustCompile(`warning:\s+policy line 5 repeats an earlier line\n`).MatchString(out) ||
		!regexp.MustCompile(`Dry run:\s+the policy loads; nothing was changed\nWould revoke:\s+0 grants, 1 credentials `).MatchString(out) {
		t.Fatalf("policy set --dry-run: exit %d\n%s", code, out)
	}
	if vs := policyVersions(t, b); len(vs) != 1 {
		t.Fatalf("a dry run stored a version: %v", vs)
	}
	out, code = run(t, b, f.Admin, "policy", "set", "--policy", v2File, "--comment", "deny one reader")
	if code != 0 || !regexp.MustCompile(`Version:\s+2 \(now current\)\nDigest:\s+[0-9a-f]{64}\nGrants revoked:\s+0\nCredentials revoked:\s+1\n`).MatchString(out) {
		t.Fatalf("policy set: exit %d\n%s", code, out)
	}
	if out, code = run(t, b, denied, "creds", "fetch", "--role", "reports-read"); code != 3 || !strings.Contains(out, "a segmentation rule denies") {
		t.Fatalf("fetch under version 2: exit %d, want 3\n%s", code, out)
	}

	out, code = run(t, b, f.Admin, "policy", "diff", "1", "2")
	wantDiff := "--- version 1\n+++ version 2\n" +
		"- p, group:all, *, *, intern, allow\n" +
		"+ p, group:all, reports-read, read, intern, allow\n" +
		"+ p, group:all, reports-write, write, junior, allow\n" +
		"+ p, " + denied.String() + ", reports-read, *, intern, deny\n"
	if code != 0 || out != wantDiff {
		t.Fatalf("policy diff 1 2: exit %d\n%s\nwant:\n%s", code, out, wantDiff)
	}

	for _, tt := range []struct {
		name string
		args []string
		want []string // each a regexp the output matches
	}{
		{"deny line", []string{denied.String(), "--role", "reports-read"},
			[]string{`Outcome:\s+deny\n`, `Reason:\s+policy_denied\n`, `Matched:\s+p, ` + regexp.QuoteMeta(denied.String()) + `, reports-read, \*, intern, deny\n`, `Policy version:\s+2\n`}},
		{"allow line", []string{other.String(), "--role", "reports-read"},
			[]string{`Outcome:\s+allow\n`, `Matched:\s+p, group:all, reports-read, read, intern, allow\n`, `TTL:\s+\S+\n`}},
		{"as a junior", []string{other.String(), "--role", "reports-write", "--level", "junior"},
			[]string{`Outcome:\s+pending_approval\n`, `Matched:\s+p, group:all, reports-write, write, junior, allow\n`, `Maturity rule:\s+junior: write needs human approval\n`}},
		{"candidate policy", []string{denied.String(), "--role", "reports-read", "--policy", v1File},
			[]string{`Outcome:\s+allow\n`, `Matched:\s+p, group:all, \*, \*, intern, allow\n`, `Policy version:\s+0\n`}},
	} {
		t.Run("test "+tt.name, func(t *testing.T) {
			out, code := run(t, b, f.Admin, append([]string{"policy", "test"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d\n%s", code, out)
			}
			for _, w := range tt.want {
				if !regexp.MustCompile(w).MatchString(out) {
					t.Fatalf("output does not match %s:\n%s", w, out)
				}
			}
		})
	}

	out, code = run(t, b, f.Admin, "policy", "rollback", "1", "--comment", "version 2 locked out a reader")
	if code != 0 || !regexp.MustCompile(`Version:\s+3 \(restores 1, now current\)\nGrants revoked:\s+0\nCredentials revoked:\s+0\n`).MatchString(out) {
		t.Fatalf("policy rollback: exit %d\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "policy", "list")
	if code != 0 || !regexp.MustCompile(`(?s)\n3 \(current\) \(restores 1\)\s[^\n]*version 2 locked out a reader\n2\s[^\n]*deny one reader\n1\s`).MatchString(out) {
		t.Fatalf("policy list after rollback: exit %d\n%s", code, out)
	}
	if out, code = run(t, b, f.Admin, "policy", "show"); code != 0 || out != v1 {
		t.Fatalf("policy show after rollback: exit %d\n%s", code, out)
	}
	if out, code = run(t, b, f.Admin, "policy", "show", "--version", "2"); code != 0 || out != v2 {
		t.Fatalf("policy show --version 2: exit %d\n%s", code, out)
	}
	if out, code = run(t, b, f.Admin, "policy", "diff", "1"); code != 0 || out != "--- version 1\n+++ version 3\n" {
		t.Fatalf("policy diff 1 (to the current version): exit %d\n%s", code, out)
	}
	if out, code = run(t, b, denied, "creds", "fetch", "--role", "reports-read"); code != 0 {
		t.Fatalf("fetch after the rollback: exit %d\n%s", code, out)
	}

	// Refusals, after which version 3 still serves.
	midStar := writeFile(t, dir, "midstar.csv", v1+"p, group:all, kv/*/read, read, intern, allow\n")
	for _, tt := range []struct {
		name string
		as   spiffeid.ID
		args []string
		code int
		want string
	}{
		{"lint", f.Admin, []string{"policy", "set", "--policy", midStar, "--comment", "c"}, 6,
			`InvalidArgument: policy refused, the current one keeps serving: authz: policy line 3: pattern "kv/*/read": '*' is allowed only as the whole last segment`},
		{"lint in a dry run", f.Admin, []string{"policy", "set", "--policy", midStar, "--comment", "c", "--dry-run"}, 6, `pattern "kv/*/read"`},
		{"stale version", f.Admin, []string{"policy", "set", "--policy", v2File, "--comment", "c", "--expect-version", "99"}, 6,
			"the policy is at version 3, not 99"},
		{"stale rollback", f.Admin, []string{"policy", "rollback", "2", "--comment", "c", "--expect-version", "2"}, 6, "at version 3, not 2"},
		{"no such version", f.Admin, []string{"policy", "show", "--version", "99"}, 4, "NotFound"},
		{"rollback to no version", f.Admin, []string{"policy", "rollback", "99", "--comment", "c"}, 4, "NotFound"},
		{"non-admin", other, []string{"policy", "list"}, 3, "not a broker admin"},
		{"no comment", f.Admin, []string{"policy", "set", "--policy", v2File}, 2, "--policy and --comment are required"},
		{"no policy file", f.Admin, []string{"policy", "set", "--policy", filepath.Join(dir, "missing.csv"), "--comment", "c"}, 2, "no such file"},
		{"bad part", f.Admin, []string{"policy", "show", "--part", "both"}, 2, "--part must be policy or model"},
		{"bad diff version", f.Admin, []string{"policy", "diff", "0"}, 2, "not a positive number"},
		{"rollback without comment", f.Admin, []string{"policy", "rollback", "1"}, 2, "--comment is required"},
		{"test without role", f.Admin, []string{"policy", "test", other.String()}, 2, "--role is required"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(t, b, tt.as, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, want %d; output:\n%s", code, tt.code, out)
			}
		})
	}
	if vs := policyVersions(t, b); strings.Join(vs, " ") != "3 2 1" {
		t.Fatalf("versions after the refusals: %v, want 3 2 1", vs)
	}
	if out, code = run(t, b, f.Admin, "policy", "set", "--policy", v2File, "--comment", "reviewed", "--expect-version", "3"); code != 0 || !strings.Contains(out, "4 (now current)") {
		t.Fatalf("policy set --expect-version 3: exit %d\n%s", code, out)
	}
}

// Human approval of a Junior's write from the command line: the request,
// the approver's list and verdicts, redemption once, and --wait.
func TestCLIApprovals(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	approver, junior := f.ID(t, "approver"), f.ID(t, "junior")
	// The junior became an approver too after it was registered (an
	// approver is never registered as an agent), to show nobody approves
	// their own request.
	b := f.Start(t, cfg)
	b.Register(t, junior, brokerv1.Level_LEVEL_JUNIOR, "reports-write")
	b.Stop()
	cfg.Approvals.Approvers = []string{approver.String(), junior.String()}
	b = f.Start(t, cfg)
	fetch := []string{"creds", "fetch", "--role", "reports-write"}
	approvalLine := regexp.MustCompile(`Approval:\s+([0-9a-f]{32})\n`)

	out, code := run(t, b, junior, append(fetch, "--justification", "publish the Q3 numbers")...)
	m := approvalLine.FindStringSubmatch(out)
	if code != 8 || m == nil || !regexp.MustCompile(`Status:\s+pending\n`).MatchString(out) || !strings.Contains(out, "redeem it with --approval "+m[1]) {
		t.Fatalf("a junior's write: exit %d, want 8\n%s", code, out)
	}
	first := m[1]

	out, code = run(t, b, approver, "approvals", "list")
	if code != 0 || !regexp.MustCompile(`(?m)^`+first+`\s+`+regexp.QuoteMeta(junior.String())+`\s+reports-write\s+write\s+pending\s+\S+\s+publish the Q3 numbers$`).MatchString(out) {
		t.Fatalf("approvals list: exit %d\n%s", code, out)
	}
	out, code = run(t, b, approver, "approvals", "list", "-o", "json")
	var list struct {
		Approvals []struct {
			ID            string `json:"id"`
			AgentID       string `json:"agent_id"`
			Status        string `json:"status"`
			Justification string `json:"justification"`
		} `json:"approvals"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list.Approvals) != 1 || list.Approvals[0].ID != first ||
		list.Approvals[0].AgentID != junior.String() || list.Approvals[0].Status != "APPROVAL_STATUS_PENDING" ||
		list.Approvals[0].Justification != "publish the Q3 numbers" {
		t.Fatalf("approvals list -o json: exit %d\n%s", code, out)
	}

	if out, code = run(t, b, junior, append(fetch, "--approval", first)...); code != 6 || !strings.Contains(out, "still waits for an approver") {
		t.Fatalf("redeeming a pending approval: exit %d, want 6\n%s", code, out)
	}
	if out, code = run(t, b, junior, "approvals", "approve", first, "--reason", "mine"); code != 3 || !strings.Contains(out, "it is part of the request") {
		t.Fatalf("approving one's own request: exit %d, want 3\n%s", code, out)
	}
	out, code = run(t, b, approver, "approvals", "approve", first, "--reason", "ticket OPS-1")
	if code != 0 || !regexp.MustCompile(`Status:\s+approved\n`).MatchString(out) || !strings.Contains(out, "Redeem by:") {
		t.Fatalf("approvals approve: exit %d\n%s", code, out)
	}
	if out, code = run(t, b, approver, "approvals", "deny", first, "--reason", "changed my mind"); code != 6 || !strings.Contains(out, "is approved, not pending") {
		t.Fatalf("deciding twice: exit %d, want 6\n%s", code, out)
	}
	out, code = run(t, b, junior, append(fetch, "--approval", first, "--token-only")...)
	if code != 0 {
		t.Fatalf("redeeming the approval: exit %d\n%s", code, out)
	}
	if _, err := f.Lookup(t, strings.TrimSpace(out)); err != nil {
		t.Fatalf("the redeemed token is not valid in Vault: %v", err)
	}
	if out, code = run(t, b, junior, append(fetch, "--approval", first)...); code != 6 || !strings.Contains(out, "approval cannot be redeemed: approval "+first+" is redeemed") {
		t.Fatalf("redeeming twice: exit %d, want 6\n%s", code, out)
	}

	// --wait blocks until an approver decides, then fetches.
	waiting := regexp.MustCompile(`waiting for a human to approve request ([0-9a-f]{32})`)
	w := start(t.Context(), t, b, junior, append(fetch, "--justification", "rerun", "--wait")...)
	second := w.await(t, waiting)[1]
	if w.ended() {
		out, code := w.wait(t)
		t.Fatalf("--wait ended (exit %d) before a decision:\n%s", code, out)
	}
	if out, code = run(t, b, approver, "approvals", "approve", second, "--reason", "looks fine"); code != 0 {
		t.Fatalf("approvals approve: exit %d\n%s", code, out)
	}
	out, code = w.wait(t)
	tok := regexp.MustCompile(`Token:\s+(\S+)\n`).FindStringSubmatch(out)
	if code != 0 || tok == nil || !strings.Contains(out, "approved by "+approver.String()+": looks fine") || !regexp.MustCompile(`Role:\s+reports-write\n`).MatchString(out) {
		t.Fatalf("creds fetch --wait: exit %d\n%s", code, out)
	}
	if _, err := f.Lookup(t, tok[1]); err != nil {
		t.Fatalf("the token fetched with --wait is not valid in Vault: %v", err)
	}
	if out, code = run(t, b, junior, append(fetch, "--approval", second)...); code != 6 || !strings.Contains(out, "is redeemed") {
		t.Fatalf("redeeming a --wait approval again: exit %d, want 6\n%s", code, out)
	}

	// A denial ends --wait with a refusal and cannot be redeemed.
	w = start(t.Context(), t, b, junior, append(fetch, "--justification", "once more", "--wait")...)
	third := w.await(t, waiting)[1]
	out, code = run(t, b, approver, "approvals", "deny", third, "--reason", "not this quarter")
	if code != 0 || !regexp.MustCompile(`Status:\s+denied\n`).MatchString(out) || strings.Contains(out, "Redeem by:") {
		t.Fatalf("approvals deny: exit %d\n%s", code, out)
	}
	if out, code = w.wait(t); code != 3 || !strings.Contains(out, "approval "+third+" is denied: not this quarter") || strings.Contains(out, "Token:") {
		t.Fatalf("creds fetch --wait, denied: exit %d, want 3\n%s", code, out)
	}
	if out, code = run(t, b, junior, append(fetch, "--approval", third)...); code != 6 || !strings.Contains(out, "is denied") {
		t.Fatalf("redeeming a denied approval: exit %d, want 6\n%s", code, out)
	}

	out, code = run(t, b, approver, "approvals", "list", "--status", "redeemed", "--agent", junior.String(), "-o", "json")
	list.Approvals = nil
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list.Approvals) != 2 || list.Approvals[0].ID != second || list.Approvals[1].ID != first {
		t.Fatalf("approvals list --status redeemed -o json: exit %d, want %s then %s\n%s", code, second, first, out)
	}
	if out, code = run(t, b, approver, "approvals", "list", "--status", "denied"); code != 0 || !strings.Contains(out, third) || strings.Contains(out, first) {
		t.Fatalf("approvals list --status denied: exit %d\n%s", code, out)
	}
	if out, code = run(t, b, approver, "approvals", "list"); code != 0 || strings.Count(out, "\n") != 1 {
		t.Fatalf("approvals list with nothing pending: exit %d\n%s", code, out)
	}

	for _, tt := range []struct {
		name string
		as   spiffeid.ID
		args []string
		code int
		want string
	}{
		{"non-approver list", f.Admin, []string{"approvals", "list"}, 3, "is not an approver"},
		{"non-approver decide", f.Admin, []string{"approvals", "approve", first, "--reason", "r"}, 3, "is not an approver"},
		{"unknown approval", approver, []string{"approvals", "approve", strings.Repeat("0", 32), "--reason", "r"}, 4, "NotFound"},
		{"no reason", approver, []string{"approvals", "deny", first}, 2, "--reason is required"},
		{"bad status", approver, []string{"approvals", "list", "--status", "open"}, 2, `--status "open"`},
		{"no status", approver, []string{"approvals", "list", "--status", ""}, 2, `--status ""`},
		{"malformed approval id", junior, append(fetch, "--approval", "abc"), 6, "InvalidArgument"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(t, b, tt.as, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, want %d; output:\n%s", code, tt.code, out)
			}
		})
	}
}

// The audit trail from the command line: a query for an agent's denials,
// and verification of the chain against a head kept from earlier.
func TestCLIAudit(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent, other := f.ID(t, "agent"), f.ID(t, "other")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	b.Register(t, other, brokerv1.Level_LEVEL_INTERN, "reports-read")
	for _, r := range []struct {
		as   spiffeid.ID
		role string
		code int
	}{
		{agent, "reports-read", 0},
		{agent, "reports-write", 3},
		{agent, "payroll-read", 3},
		{other, "reports-write", 3},
	} {
		if out, code := run(t, b, r.as, "creds", "fetch", "--role", r.role); code != r.code {
			t.Fatalf("fetch %s: exit %d, want %d\n%s", r.role, code, r.code, out)
		}
	}

	out, code := run(t, b, f.Admin, "audit", "query", "--decision", "deny", "--agent", agent.String(), "-o", "json")
	var got struct {
		Records []struct {
			Kind    string            `json:"kind"`
			Actor   string            `json:"actor"`
			Subject string            `json:"subject"`
			Detail  map[string]string `json:"detail"`
		} `json:"records"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || len(got.Records) != 2 {
		t.Fatalf("audit query --decision deny --agent: exit %d, want the agent's 2 denials\n%s", code, out)
	}
	for i, role := range []string{"reports-write", "payroll-read"} {
		r := got.Records[i]
		if r.Kind != "credential_denied" || r.Actor != agent.String() || r.Subject != role || r.Detail["decision"] != "deny" || r.Detail["reason"] != "not_in_manifest" {
			t.Fatalf("record %d: %+v, want the denial of %s", i, r, role)
		}
	}
	out, code = run(t, b, f.Admin, "audit", "query", "--decision", "deny", "--agent", agent.String(), "--since", "1h")
	if code != 0 || strings.Count(out, "credential_denied") != 2 || !strings.Contains(out, `role "payroll-read" is not in agent `+agent.String()+`'s capability manifest`) {
		t.Fatalf("audit query (table): exit %d\n%s", code, out)
	}

	out, code = run(t, b, f.Admin, "audit", "verify")
	head := regexp.MustCompile(`Head:\s+(\d+):([0-9a-f]{64})\n`).FindStringSubmatch(out)
	if code != 0 || head == nil || !regexp.MustCompile(`Result:\s+ok, the chain is intact\n`).MatchString(out) {
		t.Fatalf("audit verify: exit %d\n%s", code, out)
	}
	seq, hash := head[1], head[2]
	if out, code = run(t, b, f.Admin, "audit", "verify", "--expect", seq+":"+hash); code != 0 {
		t.Fatalf("audit verify --expect the head: exit %d\n%s", code, out)
	}
	for _, tt := range []struct {
		name string
		as   spiffeid.ID
		args []string
		code int
		want string
	}{
		{"rewritten", f.Admin, []string{"audit", "verify", "--expect", seq + ":" + strings.Repeat("0", 64)}, 1,
			"audit trail verification failed: record " + seq + " has a different hash than expected"},
		{"cut off", f.Admin, []string{"audit", "verify", "--expect", "1" + seq + "0:" + hash}, 1, "record 1" + seq + "0 is gone: the trail was cut off"},
		// A malformed flag is a usage error, not a verdict on the trail.
		{"malformed expect", f.Admin, []string{"audit", "verify", "--expect", hash}, 2, "is not SEQ:HASH"},
		{"bad since", f.Admin, []string{"audit", "query", "--since", "yesterday"}, 2, "neither an RFC 3339 time nor a duration"},
		{"non-admin", agent, []string{"audit", "verify"}, 3, "not a broker admin"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(t, b, tt.as, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, want %d; output:\n%s", code, tt.code, out)
			}
		})
	}
}

// events watch follows notifications until its context ends.
func TestCLIEvents(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	table := start(ctx, t, b, f.Admin, "events", "watch")
	asJSON := start(ctx, t, b, f.Admin, "events", "watch", "-o", "json")
	for _, w := range []*bg{table, asJSON} {
		w.await(t, regexp.MustCompile(`watching events; Ctrl-C to stop\n`))
	}

	file := writeFile(t, t.TempDir(), "policy.csv", brokertest.OpenPolicy(f.Stack.TrustDomain)+"# events\n")
	if out, code := run(t, b, f.Admin, "policy", "set", "--policy", file, "--comment", "watch me"); code != 0 {
		t.Fatalf("policy set: exit %d\n%s", code, out)
	}
	table.await(t, regexp.MustCompile(`policy_updated\s+segmentation policy version 2 set by `+regexp.QuoteMeta(f.Admin.String())+`: watch me\n`))
	asJSON.await(t, regexp.MustCompile(`"kind": "policy_updated"`))
	cancel()
	for _, w := range []*bg{table, asJSON} {
		if out, code := w.wait(t); code != 0 {
			t.Fatalf("events watch after cancel: exit %d, want 0\n%s", code, out)
		}
	}
	out, _ := asJSON.snapshot()
	_, events, _ := strings.Cut(out, "\n") // after the "watching" line
	var got struct {
		Event struct {
			Kind   string            `json:"kind"`
			Detail map[string]string `json:"detail"`
		} `json:"event"`
	}
	if err := json.NewDecoder(strings.NewReader(events)).Decode(&got); err != nil || got.Event.Kind != "policy_updated" || got.Event.Detail["version"] != "2" {
		t.Fatalf("events watch -o json: %v\n%s", err, out)
	}

	// Refused, it must not claim to be watching first.
	if out, code := run(t, b, f.ID(t, "agent"), "events", "watch"); code != 3 || !strings.Contains(out, "not a broker admin") || strings.Contains(out, "watching events") {
		t.Fatalf("events watch as a non-admin: exit %d, want 3 and no \"watching\"\n%s", code, out)
	}
}

// A limit hit exits 7, so a script knows to retry later.
func TestCLIRateLimit(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Limits.Rate = map[string]config.RateLimit{"intern": {PerSecond: 0.5, Burst: 1}}
	b := f.Start(t, cfg)
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")

	if out, code := run(t, b, agent, "creds", "fetch", "--role", "reports-read"); code != 0 {
		t.Fatalf("first fetch: exit %d\n%s", code, out)
	}
	out, code := run(t, b, agent, "creds", "fetch", "--role", "reports-read")
	if code != 7 || !strings.Contains(out, "ResourceExhausted: rate limit: intern agents may make 0.5 credential requests per second (burst 1); retry in ") {
		t.Fatalf("second quick fetch: exit %d, want 7\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "audit", "query", "--decision", "limited", "--agent", agent.String())
	if code != 0 || strings.Count(out, "credential_limited") != 1 {
		t.Fatalf("audit query --decision limited: exit %d\n%s", code, out)
	}
}

// watch prints the caller's revocations as they happen.
func TestCLIWatchRevocations(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	out, code := run(t, b, agent, "creds", "fetch", "--role", "reports-read", "-o", "json")
	if code != 0 {
		t.Fatalf("creds fetch: exit %d\n%s", code, out)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	w := start(ctx, t, b, agent, "watch")
	w.await(t, regexp.MustCompile(`watching revocations; Ctrl-C to stop\n`))
	if out, code := run(t, b, f.Admin, "revoke", "lineage", agent.String(), "--reason", "rotate"); code != 0 {
		t.Fatalf("revoke lineage: exit %d\n%s", code, out)
	}
	w.await(t, regexp.MustCompile(`revoked: 1 credential\(s\) \S+, grant\(s\) : rotate\n`))
	cancel()
	if out, code := w.wait(t); code != 0 {
		t.Fatalf("watch after cancel: exit %d, want 0\n%s", code, out)
	}
}
