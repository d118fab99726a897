package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// awaitFile returns the contents of path once pred accepts them, failing t
// after bgWait.
func awaitFile(t *testing.T, path string, pred func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(bgWait)
	for {
		b, err := os.ReadFile(path)
		if err == nil && pred(string(b)) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not as expected within %s (err %v):\n%s", path, bgWait, err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether process pid exists.
func alive(pid int) bool {
	return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// lines is the non-empty lines of s.
func lines(s string) []string {
	var out []string
	for l := range strings.Lines(s) {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// atfctl exec with real processes: the child gets its token, is restarted
// with a fresh one when the credential is refreshed, and is stopped
// (SIGTERM, then SIGKILL when it ignores SIGTERM) when the agent's lineage
// is revoked; exec then exits 9.
func TestCLIExec(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent := f.ID(t, "exec-agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	dir := t.TempDir()
	tokens, pids := filepath.Join(dir, "tokens"), filepath.Join(dir, "pids")

	// The child records each token it starts with and its pid, and ignores
	// SIGTERM, so exec must escalate to SIGKILL.
	script := `echo "$VAULT_TOKEN $VAULT_ADDR" >> "$1"; echo $$ >> "$2"; trap '' TERM; while :; do sleep 0.05; done`
	c := start(t.Context(), t, b, agent, "exec", "--role", "reports-read", "--ttl", "4s", "--grace", "300ms", "--",
		"/bin/sh", "-c", script, "sh", tokens, pids)

	// Refreshed at about 70% of 4 s: the child restarts with a new token.
	got := awaitFile(t, tokens, func(s string) bool { return len(lines(s)) >= 2 })
	ls := lines(got)
	first, second := strings.Fields(ls[0]), strings.Fields(ls[1])
	if len(first) != 2 || first[1] != f.Stack.VaultAddr || first[0] == second[0] {
		t.Fatalf("want two different tokens with VAULT_ADDR %s:\n%s", f.Stack.VaultAddr, got)
	}
	c.await(t, regexp.MustCompile(`reports-read refreshed; restarting /bin/sh`))
	if _, err := f.Lookup(t, second[0]); err != nil {
		t.Fatalf("the restarted child's token is not valid in Vault: %v", err)
	}
	pidList := lines(awaitFile(t, pids, func(s string) bool { return len(lines(s)) >= 2 }))
	firstPid, _ := strconv.Atoi(pidList[0])
	if alive(firstPid) {
		t.Fatalf("the first child (pid %d) still runs after the restart", firstPid)
	}

	out, code := run(t, b, f.Admin, "revoke", "lineage", agent.String(), "--reason", "exec test")
	if code != 0 {
		t.Fatalf("revoke lineage: exit %d\n%s", code, out)
	}
	out, code = c.wait(t)
	if code != exitRevoked || !strings.Contains(out, "credential for role reports-read was revoked") || !strings.Contains(out, "killing it") {
		t.Fatalf("exec after the revocation: exit %d, want %d\n%s", code, exitRevoked, out)
	}
	for _, p := range lines(awaitFile(t, pids, func(string) bool { return true })) {
		if pid, _ := strconv.Atoi(p); alive(pid) {
			t.Fatalf("child %d still runs after exec ended", pid)
		}
	}
	for _, l := range lines(awaitFile(t, tokens, func(string) bool { return true })) {
		if tok := strings.Fields(l)[0]; !f.Dead(t, tok) {
			t.Fatal("a token the child held is still alive in Vault after the lineage revocation")
		}
	}
}

// exec passes on its command's exit status, sets the variables it is told
// to, and refuses bad usage before fetching anything.
func TestCLIExecStatusAndUsage(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent := f.ID(t, "exec-status")
	b.Register(t, agent, brokerv1.Level_LEVEL_SENIOR, "reports-read", "reports-write")
	out, code := run(t, b, agent, "exec", "--role", "reports-read=READ", "--role", "reports-write", "--vault-addr-env", "", "--",
		"/bin/sh", "-c", `test -n "$READ" && test -n "$ATF_TOKEN_REPORTS_WRITE" && test "$READ" != "$ATF_TOKEN_REPORTS_WRITE" && test -z "$VAULT_ADDR$VAULT_TOKEN" && exit 7`)
	if code != 7 {
		t.Fatalf("exit %d, want the command's 7\n%s", code, out)
	}
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"exec", "--", "true"}, 2, "--role is required"},
		{[]string{"exec", "--role", "reports-read", "true"}, 2, "put the command after --"},
		{[]string{"exec", "--role", "reports-read", "--role", "reports-read", "--", "true"}, 2, "given twice"},
		{[]string{"exec", "--role", "=X", "--", "true"}, 2, "want ROLE or ROLE=NAME"},
		{[]string{"exec", "--role", "payroll-read", "--", "true"}, 3, "PermissionDenied"},
	} {
		if out, code := run(t, b, agent, tt.args...); code != tt.code || !strings.Contains(out, tt.want) {
			t.Errorf("%v: exit %d, want %d with %q\n%s", tt.args, code, tt.code, tt.want, out)
		}
	}
}

// atfctl sidecar keeps a 0600 file fresh, removes it and exits 9 when the
// agent is killed; --once leaves the file.
func TestCLISidecar(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent := f.ID(t, "sidecar-agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_SENIOR, "reports-read", "reports-write")
	dir := filepath.Join(t.TempDir(), "creds")

	c := start(t.Context(), t, b, agent, "sidecar", "--role", "reports-read", "--role", "reports-write=write",
		"--dir", dir, "--ttl", "4s")
	read, write := filepath.Join(dir, "reports-read"), filepath.Join(dir, "write")
	awaitFile(t, write, func(s string) bool { return s != "" })
	for _, p := range []string{read, write, dir} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o600)
		if fi.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	tok := awaitFile(t, read, func(s string) bool { return s != "" })
	if _, err := f.Lookup(t, tok); err != nil {
		t.Fatalf("the token file is not valid in Vault: %v", err)
	}
	// Refreshed before the 4 s lifetime ends.
	fresh := awaitFile(t, read, func(s string) bool { return s != "" && s != tok })
	if _, err := f.Lookup(t, fresh); err != nil {
		t.Fatalf("the refreshed token is not valid in Vault: %v", err)
	}

	if out, code := run(t, b, f.Admin, "kill", agent.String(), "--reason", "sidecar test"); code != 0 {
		t.Fatalf("kill: exit %d\n%s", code, out)
	}
	out, code := c.wait(t)
	if code != exitRevoked || !strings.Contains(out, "refuses a new credential") {
		t.Fatalf("sidecar after the kill: exit %d, want %d\n%s", code, exitRevoked, out)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("files left after the kill: %v", ents)
	}

	other := f.ID(t, "sidecar-once")
	b.Register(t, other, brokerv1.Level_LEVEL_INTERN, "reports-read")
	if out, code := run(t, b, other, "sidecar", "--role", "reports-read=cred.json", "--format", "json", "--dir", dir, "--once"); code != 0 {
		t.Fatalf("--once: exit %d\n%s", code, out)
	}
	var cred struct{ Token, Accessor, Role string }
	raw, err := os.ReadFile(filepath.Join(dir, "cred.json"))
	if err != nil || json.Unmarshal(raw, &cred) != nil || cred.Role != "reports-read" || cred.Accessor == "" || f.Dead(t, cred.Token) {
		t.Fatalf("--once --format json left no live credential (%v):\n%s", err, raw)
	}
	if out, code := run(t, b, other, "sidecar", "--role", "reports-read=../x", "--dir", dir); code != 2 || !strings.Contains(out, "plain name") {
		t.Fatalf("a file outside --dir: exit %d\n%s", code, out)
	}
}

// The Python agent example (deploy/examples/python) reads a Vault secret
// with the token atfctl exec puts in its environment, and with the file
// atfctl sidecar writes.
func TestPythonExample(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	script, err := filepath.Abs(filepath.Join("..", "..", "deploy", "examples", "python", "agent.py"))
	if err != nil {
		t.Fatal(err)
	}
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent := f.ID(t, "python-agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	const want = `"summary": "Q3 revenue up 12%"`

	out, code := run(t, b, agent, "exec", "--role", "reports-read", "--", python, script, "--secret", "demo/reports", "--once")
	if code != 0 || !strings.Contains(out, want) {
		t.Fatalf("under atfctl exec: exit %d\n%s", code, out)
	}

	dir := t.TempDir()
	if out, code := run(t, b, agent, "sidecar", "--role", "reports-read", "--dir", dir, "--once"); code != 0 {
		t.Fatalf("sidecar: exit %d\n%s", code, out)
	}
	py := exec.CommandContext(t.Context(), python, script, "--token-file", filepath.Join(dir, "reports-read"), "--secret", "demo/reports", "--once")
	py.Env = append(os.Environ(), "VAULT_ADDR="+f.Stack.VaultAddr, "VAULT_TOKEN=")
	got, err := py.CombinedOutput()
	if err != nil || !strings.Contains(string(got), want) {
		t.Fatalf("with the sidecar's file: %v\n%s", err, got)
	}
	// Payroll is not in its manifest: the broker refuses, the agent never runs.
	if out, code := run(t, b, agent, "exec", "--role", "payroll-read", "--", python, script, "--secret", "demo/payroll", "--once"); code != 3 || strings.Contains(out, "1,234,567") {
		t.Fatalf("payroll under exec: exit %d, want 3\n%s", code, out)
	}
}

// atfctl exec with a role whose credential carries a dynamic secret: the
// child finds the database user in ATF_SECRET_USERNAME and
// ATF_SECRET_PASSWORD and the lease in ATF_LEASE_ID, and logs in to a real
// PostgreSQL with them until the agent's lineage is revoked.
func TestCLIExecDynamicSecret(t *testing.T) {
	f := brokertest.Setup(t)
	cfg, pg := f.DatabaseConfig(t, t.TempDir())
	b := f.Start(t, cfg)
	agent := f.ID(t, "db-agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "orders-db")
	env := filepath.Join(t.TempDir(), "env")

	out, code := run(t, b, agent, "exec", "--role", "orders-db", "--",
		"/bin/sh", "-c", `printf '%s\n%s\n%s\n%s\n' "$ATF_SECRET_USERNAME" "$ATF_SECRET_PASSWORD" "$ATF_LEASE_ID" "$VAULT_TOKEN" > "$1"`, "sh", env)
	if code != 0 {
		t.Fatalf("exec: exit %d\n%s", code, out)
	}
	raw, err := os.ReadFile(env)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
	if len(got) != 4 || got[0] == "" || got[1] == "" || !strings.HasPrefix(got[2], "database/creds/orders-db/") || got[3] == "" {
		t.Fatalf("the child's environment lacks the database user, its lease or the token: %d lines", len(got))
	}
	if err := pg.Login(t.Context(), got[0], got[1]); err != nil {
		t.Fatalf("the child's database user cannot log in: %v", err)
	}
	if out, code := run(t, b, f.Admin, "revoke", "lineage", agent.String(), "--reason", "exec test"); code != 0 {
		t.Fatalf("revoke lineage: exit %d\n%s", code, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for err := pg.Login(t.Context(), got[0], got[1]); err == nil || !strings.Contains(err.Error(), "password authentication failed"); err = pg.Login(t.Context(), got[0], got[1]) {
		if time.Now().After(deadline) {
			t.Fatalf("the database user still logs in 30s after the lineage was revoked (last: %v)", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Secret fields go in variables named after them, prefixed by the role
// when exec fetches several; fields that would share one are refused.
func TestSecretEnv(t *testing.T) {
	c := &brokerv1.Credential{LeaseId: "database/creds/db/x", Secret: map[string]string{"username": "u", "password": "p"}}
	for _, tt := range []struct {
		only bool
		want []string
	}{
		{true, []string{"ATF_LEASE_ID=database/creds/db/x", "ATF_SECRET_PASSWORD=p", "ATF_SECRET_USERNAME=u"}},
		{false, []string{"ATF_LEASE_ID_ORDERS_DB=database/creds/db/x", "ATF_SECRET_ORDERS_DB_PASSWORD=p", "ATF_SECRET_ORDERS_DB_USERNAME=u"}},
	} {
		got, err := secretEnv(c, "orders-db", tt.only)
		if err != nil || strings.Join(got, " ") != strings.Join(tt.want, " ") {
			t.Errorf("secretEnv(only=%t) = %q, %v; want %q", tt.only, got, err, tt.want)
		}
	}
	if got, err := secretEnv(&brokerv1.Credential{Token: "t"}, "reports-read", true); err != nil || got != nil {
		t.Errorf("a credential without a lease: %q, %v; want nothing", got, err)
	}
	clash := &brokerv1.Credential{LeaseId: "l", Secret: map[string]string{"user-name": "a", "user_name": "b"}}
	if _, err := secretEnv(clash, "db", true); err == nil || err.Error() != `role db: secret fields "user-name" and "user_name" would both be ATF_SECRET_USER_NAME` {
		t.Errorf("clashing fields: %v", err)
	}
}
