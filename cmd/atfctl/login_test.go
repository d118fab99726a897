package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/agentictrust/atf/broker"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/oidcop"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// People on the command line: atfctl login through a real OpenID
// provider's device authorization grant (zitadel/oidc's, on loopback),
// then the admin services as that verified person, on the real SPIRE and
// Vault of the dev stack.
var loginUsers = []oidcop.User{
	{ID: "u-ann", Username: "ann", Password: "ann-pw", First: "Ann", Last: "Approver", Email: "ann@example.org", Groups: []string{"atf-approvers"}},
	{ID: "u-own", Username: "own", Password: "own-pw", First: "Olive", Last: "Owner", Email: "owner@example.org", Groups: []string{"atf-approvers"}},
	{ID: "u-sam", Username: "sam", Password: "sam-pw", First: "Sam", Last: "Secops", Email: "sam@example.org", Groups: []string{"atf-secops"}},
	{ID: "u-aud", Username: "aud", Password: "aud-pw", First: "Audrey", Last: "Auditor", Email: "aud@example.org", Groups: []string{"atf-auditors"}},
}

type loginEnv struct {
	b      *brokertest.Broker
	op     *oidcop.Provider
	cli    string // atfctl's client id at the provider
	bundle string
	dir    string
	offset *atomic.Int64 // added to the broker's clock
}

func newLoginEnv(t *testing.T) *loginEnv {
	t.Helper()
	f := brokertest.Setup(t)
	addr, err := dev.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	e := &loginEnv{cli: "atfctl-" + t.Name(), dir: t.TempDir(), offset: &atomic.Int64{}, bundle: f.SVID(t, f.Admin).BundlePath}
	e.op, err = oidcop.Start("127.0.0.1:0", loginUsers,
		oidcop.Client{ID: "atf-console-" + t.Name(), Secret: "console-secret", RedirectURIs: []string{"http://" + addr + "/auth/callback"}},
		oidcop.Client{ID: e.cli, Device: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.op.Close() })
	cfg := f.Config(t, e.dir)
	cfg.Console = config.ConsoleConfig{ListenAddr: addr, URL: "http://" + addr, CLIClientID: e.cli,
		OIDC:  config.OIDCConfig{Issuer: e.op.Issuer, ClientID: "atf-console-" + t.Name(), Scopes: []string{"profile", "email", oidcop.GroupsScope}},
		Roles: map[string][]string{"admin": {"atf-admins"}, "approver": {"atf-approvers"}, "security_operator": {"atf-secops"}, "auditor": {"atf-auditors"}}}
	clock := func() time.Time { return time.Now().Add(time.Duration(e.offset.Load())) }
	e.b = f.StartWith(t, cfg, broker.WithClock(clock))
	return e
}

// login signs user in with atfctl login, allowing it at the provider as
// they would in their browser, and returns their login file.
func (e *loginEnv) login(t *testing.T, user string) string {
	t.Helper()
	file := filepath.Join(e.dir, user+".json")
	w := startArgs(t.Context(), t, "--login-file", file, "--broker-id", e.b.F.Stack.BrokerID.String(), "--bundle", e.bundle,
		"login", "--issuer", e.op.Issuer, "--client-id", e.cli, "--scope", "profile,email,groups")
	code := w.await(t, regexp.MustCompile(`open (http://\S+/device) and enter the code (\S+)\n`))[2]
	for _, u := range loginUsers {
		if u.Username == user {
			if err := e.op.ApproveDevice(t.Context(), code, user, u.Password); err != nil {
				t.Fatal(err)
			}
		}
	}
	out, exit := w.wait(t)
	if exit != 0 || !regexp.MustCompile(`Signed in as \S+ \S+ \(oidc:`+regexp.QuoteMeta(e.op.Issuer)+`#u-`+user+`\) until`).MatchString(out) {
		t.Fatalf("atfctl login as %s: exit %d\n%s", user, exit, out)
	}
	st, err := os.Stat(file)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the sign-in file: %v, mode %v; want 0600", err, st.Mode().Perm())
	}
	return file
}

// as runs atfctl as the person signed in with file.
func (e *loginEnv) as(t *testing.T, file string, args ...string) (string, int) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"--addr", e.b.Addr, "--login-file", file}, args...))
	err := root.ExecuteContext(t.Context())
	if err != nil {
		out.WriteString(message(err))
	}
	return out.String(), exitCode(err)
}

func TestCLILogin(t *testing.T) {
	e := newLoginEnv(t)
	f := e.b.F
	junior := f.ID(t, "junior")
	e.b.Register(t, junior, brokerv1.Level_LEVEL_JUNIOR, "reports-write") // owner@example.org: Olive
	ann, own, sam, aud := e.login(t, "ann"), e.login(t, "own"), e.login(t, "sam"), e.login(t, "aud")
	annID := "oidc:" + e.op.Issuer + "#u-ann"

	// An approver decides from the terminal as a verified person: the
	// agent waiting with --wait gets its Vault token, and the approval
	// names her.
	waiting := regexp.MustCompile(`waiting for a human to approve request ([0-9a-f]{32})`)
	w := start(t.Context(), t, e.b, junior, "creds", "fetch", "--role", "reports-write", "--justification", "publish Q3", "--wait")
	req := w.await(t, waiting)[1]
	if out, code := e.as(t, ann, "approvals", "list"); code != 0 || !strings.Contains(out, req) {
		t.Fatalf("approvals list as ann: exit %d\n%s", code, out)
	}
	// The owner, an approver too, may not approve her own agent's request.
	if out, code := e.as(t, own, "approvals", "approve", req, "--reason", "mine"); code != 3 || !strings.Contains(out, "oidc:"+e.op.Issuer+"#u-own owns "+junior.String()) {
		t.Fatalf("the owner approving: exit %d, want 3\n%s", code, out)
	}
	if out, code := e.as(t, ann, "approvals", "approve", req, "--reason", "ticket OPS-7"); code != 0 || !regexp.MustCompile(`Status:\s+approved\n`).MatchString(out) {
		t.Fatalf("approvals approve as ann: exit %d\n%s", code, out)
	}
	out, code := w.wait(t)
	tok := regexp.MustCompile(`Token:\s+(\S+)\n`).FindStringSubmatch(out)
	if code != 0 || tok == nil || !strings.Contains(out, "approved by "+annID+": ticket OPS-7") {
		t.Fatalf("creds fetch --wait: exit %d\n%s", code, out)
	}
	if _, err := f.Lookup(t, tok[1]); err != nil {
		t.Fatalf("the token approved from the terminal is not valid in Vault: %v", err)
	}

	// An auditor reads the audit trail, which names the approver by her
	// verified identity and her display name, and may not stop anyone.
	out, code = e.as(t, aud, "audit", "query", "--agent", junior.String(), "-o", "json")
	if code != 0 || !strings.Contains(out, `"actor": "`+annID+`"`) || !strings.Contains(out, `"actor_name": "Ann Approver"`) {
		t.Fatalf("audit query as the auditor: exit %d\n%s", code, out)
	}
	if out, code = e.as(t, aud, "kill", junior.String(), "--reason", "test"); code != 3 || !strings.Contains(out, "needs the console role security_operator or admin, and they hold auditor") {
		t.Fatalf("kill as the auditor: exit %d, want 3\n%s", code, out)
	}
	// People are not agents.
	if out, code = e.as(t, ann, "whoami"); code != 3 || !strings.Contains(out, "is a person") {
		t.Fatalf("whoami as a person: exit %d, want 3\n%s", code, out)
	}

	// The global kill switch needs a recent sign-in (console.reauth_after,
	// 5m): six minutes on, it is refused until the person signs in again.
	e.offset.Store(int64(6 * time.Minute))
	if out, code = e.as(t, sam, "kill", "--all", "--reason", "drill"); code != 3 || !strings.Contains(out, "needs a sign-in less than 5m0s old") {
		t.Fatalf("kill --all with a stale sign-in: exit %d, want 3\n%s", code, out)
	}
	if out, code = e.as(t, sam, "kill", junior.String(), "--reason", "drill"); code != 0 {
		t.Fatalf("kill of one agent needs no fresh sign-in: exit %d\n%s", code, out)
	}
	e.offset.Store(0)
	if out, code = e.as(t, sam, "kill", "--all", "--reason", "drill"); code != 0 {
		t.Fatalf("kill --all as a security operator: exit %d\n%s", code, out)
	}
	if out, code = e.as(t, sam, "unkill", "--all", "--reason", "drill over"); code != 0 {
		t.Fatalf("unkill --all as a security operator: exit %d\n%s", code, out)
	}
	if out, code = e.as(t, sam, "unkill", junior.String(), "--reason", "drill over"); code != 0 {
		t.Fatalf("unkill as a security operator: exit %d\n%s", code, out)
	}

	// A sign-in older than console.session_ttl (30m) is over, whatever the
	// token's own expiry (the provider's: 1h).
	e.offset.Store(int64(31 * time.Minute))
	if out, code = e.as(t, aud, "approvals", "list"); code != 3 || !strings.Contains(out, "older than console.session_ttl") {
		t.Fatalf("a sign-in past session_ttl: exit %d, want 3\n%s", code, out)
	}
	e.offset.Store(0)

	// A token altered, or kept where others read it, is refused.
	raw, err := os.ReadFile(aud)
	if err != nil {
		t.Fatal(err)
	}
	forged := filepath.Join(e.dir, "forged.json")
	i := bytes.Index(raw, []byte(`"id_token": "`)) + len(`"id_token": "`)
	raw[i+20] ^= 1 // the header: no longer the provider's signature over it
	if err := os.WriteFile(forged, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code = e.as(t, forged, "approvals", "list"); code != 3 || !strings.Contains(out, "Unauthenticated") {
		t.Fatalf("an altered ID token: exit %d, want 3\n%s", code, out)
	}
	// A person's sign-in stands alone: sent over a workload's mutual TLS,
	// the call would be two callers', and is refused as such.
	var saved struct {
		IDToken string `json:"id_token"`
	}
	if raw, err = os.ReadFile(aud); err != nil || json.Unmarshal(raw, &saved) != nil || saved.IDToken == "" {
		t.Fatalf("read the ID token of %s: %v", aud, err)
	}
	both := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+saved.IDToken)
	if _, err := e.b.Dial(t, junior).Approvals.ListApprovals(both, &adminv1.ListApprovalsRequest{}); status.Code(err) != codes.Unauthenticated ||
		!strings.Contains(err.Error(), "comes without an X.509-SVID") || !strings.Contains(err.Error(), junior.String()) {
		t.Fatalf("an ID token over a workload's X.509-SVID: %v, want Unauthenticated naming the workload", err)
	}
	if err := os.Chmod(ann, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code = e.as(t, ann, "approvals", "list"); code != 1 || !strings.Contains(out, "others may read") {
		t.Fatalf("a sign-in others may read: exit %d, want 1\n%s", code, out)
	}
	if out, code = e.as(t, aud, "logout"); code != 0 {
		t.Fatalf("logout: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(aud); !os.IsNotExist(err) {
		t.Fatalf("logout left the sign-in: %v", err)
	}
}

// atfctl login refuses to start a sign-in it could not use: without the
// broker's bundle and SPIFFE ID, no command could verify the broker.
func TestLoginNeedsTheBroker(t *testing.T) {
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"--login-file", filepath.Join(t.TempDir(), "login.json"), "login", "--issuer", "https://op.example"})
	err := root.ExecuteContext(t.Context())
	if exitCode(err) != 2 || !strings.Contains(message(err), "--bundle and --broker-id are required") {
		t.Fatalf("login without --bundle and --broker-id: exit %d, %v", exitCode(err), err)
	}
}
