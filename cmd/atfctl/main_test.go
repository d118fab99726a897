package main

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// run runs atfctl in-process as id and returns its output and exit code.
func run(t *testing.T, b *brokertest.Broker, id spiffeid.ID, args ...string) (string, int) {
	t.Helper()
	s := b.F.SVID(t, id)
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"--addr", b.Addr, "--broker-id", b.F.Stack.BrokerID.String(),
		"--svid", s.CertPath, "--svid-key", s.KeyPath, "--bundle", s.BundlePath}, args...))
	err := root.ExecuteContext(t.Context())
	if err != nil {
		out.WriteString(message(err))
	}
	return out.String(), exitCode(err)
}

func TestCLI(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent, stranger := f.ID(t, "agent"), f.ID(t, "stranger")

	out, code := run(t, b, f.Admin, "agent", "register", agent.String(), "--owner", "alice@example.org", "--purpose", "cli test", "--role", "reports-read")
	if code != 0 || !strings.Contains(out, "intern") || !strings.Contains(out, "alice@example.org") {
		t.Fatalf("register: exit %d\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "agent", "get", agent.String(), "-o", "json")
	var got struct {
		Agent struct {
			SpiffeID string `json:"spiffe_id"`
			Level    string `json:"level"`
		} `json:"agent"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.Agent.SpiffeID != agent.String() || got.Agent.Level != "LEVEL_INTERN" {
		t.Fatalf("get -o json: exit %d\n%s", code, out)
	}
	if out, code = run(t, b, f.Admin, "agent", "update", agent.String(), "--version", "1.2.0"); code != 0 || !strings.Contains(out, "revision 2") {
		t.Fatalf("update: exit %d\n%s", code, out)
	}
	if out, code = run(t, b, f.Admin, "agent", "list"); code != 0 || !strings.Contains(out, agent.String()) {
		t.Fatalf("list: exit %d\n%s", code, out)
	}

	out, code = run(t, b, agent, "whoami")
	if code != 0 || !strings.Contains(out, agent.String()) || !regexp.MustCompile(`Registered:\s+yes`).MatchString(out) {
		t.Fatalf("whoami: exit %d\n%s", code, out)
	}
	out, code = run(t, b, agent, "creds", "fetch", "--role", "reports-read", "--token-only")
	if code != 0 {
		t.Fatalf("creds fetch: exit %d\n%s", code, out)
	}
	if _, err := f.Lookup(t, strings.TrimSpace(out)); err != nil {
		t.Fatalf("the printed token is not valid in Vault: %v", err)
	}
	row := regexp.MustCompile(regexp.QuoteMeta(agent.String()) + `\s.*\sreports-read\s+1\n`)
	if out, code = run(t, b, f.Admin, "agent", "list"); code != 0 || !strings.Contains(out, "LIVE") || !row.MatchString(out) {
		t.Fatalf("list after a fetch: exit %d, want the agent's one live credential in LIVE\n%s", code, out)
	}

	// Exit codes scripts can rely on.
	for _, tt := range []struct {
		name string
		as   spiffeid.ID
		args []string
		code int
		want string
	}{
		{"unregistered", stranger, []string{"creds", "fetch", "--role", "reports-read"}, 3, "PermissionDenied"},
		{"non-admin", agent, []string{"agent", "list"}, 3, "not a broker admin"},
		{"not found", f.Admin, []string{"agent", "get", f.ID(t, "nobody").String()}, 4, "NotFound"},
		{"invalid", f.Admin, []string{"agent", "register", "spiffe://atf.test", "--owner", "o", "--purpose", "p"}, 6, "needs a path"},
		{"missing role flag", agent, []string{"creds", "fetch"}, 2, "--role is required"},
		{"a person as an agent", f.Admin, []string{"agent", "register", f.Signer.String(), "--owner", "o", "--purpose", "p"}, 6,
			f.Signer.String() + " is an admin (atfd's configuration: admins), not an agent"},
		{"missing argument", agent, []string{"agent", "get"}, 2, "takes 1 argument"},
		{"extra argument", agent, []string{"whoami", "me"}, 2, "takes 0 argument"},
		{"bad output", agent, []string{"whoami", "-o", "yaml"}, 2, "--output must be"},
		{"unknown flag", agent, []string{"whoami", "--bogus"}, 2, "unknown flag"},
		{"several replicas, the first down", agent, []string{"whoami", "--addr", "127.0.0.1:1," + b.Addr}, 0, agent.String()},
		{"an empty address among several", agent, []string{"whoami", "--addr", "127.0.0.1:1,," + b.Addr}, 2, "has an empty address"},
		{"a target among several", agent, []string{"whoami", "--addr", "dns:///atfd.example.org:8443," + b.Addr}, 1, "is not host:port"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(t, b, tt.as, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, want %d; output:\n%s", code, tt.code, out)
			}
		})
	}

	out, code = run(t, b, f.Admin, "agent", "deregister", agent.String(), "--reason", "cli test over")
	if code != 0 || !regexp.MustCompile(`Credentials revoked:\s+1\n`).MatchString(out) {
		t.Fatalf("deregister: exit %d\n%s", code, out)
	}
	if out, code = run(t, b, f.Admin, "agent", "history", agent.String()); code != 0 || strings.Count(out, "\n") != 4 || !strings.Contains(out, "cli test over") {
		t.Fatalf("history: exit %d\n%s", code, out)
	}
}

// Delegation from the command line: delegate, fetch under the grant, draw
// the lineage, revoke it.
func TestCLIDelegation(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	lead, helper := f.ID(t, "lead"), f.ID(t, "helper")
	for _, a := range []struct {
		id    spiffeid.ID
		level string
	}{{lead, "senior"}, {helper, "junior"}} {
		// New agents start as interns; these earned their levels elsewhere.
		if out, code := run(t, b, f.Admin, "agent", "register", a.id.String(), "--owner", "o@example.org", "--purpose", "cli delegation", "--role", "reports-read"); code != 0 {
			t.Fatalf("register: exit %d\n%s", code, out)
		}
		if out, code := run(t, b, f.Admin, "signoff", "add", a.id.String(), "--target", a.level, "--risk", "ran at "+a.level+" elsewhere"); code != 0 {
			t.Fatalf("signoff add: exit %d\n%s", code, out)
		}
		out, code := run(t, b, f.Admin, "agent", "migrate", a.id.String(), "--level", a.level, "--reason", "migrated from broker-eu")
		if code != 0 {
			t.Fatalf("agent migrate: exit %d\n%s", code, out)
		}
		mustMatch(t, "agent migrate", out,
			`^Sign-off:\s+1 approver \(`+regexp.QuoteMeta(f.Admin.String())+`\) for `+a.level+`, needs 1 other than the owner\n`,
			`Migrated:\s+`+regexp.QuoteMeta(a.id.String())+` is now `+a.level+` \(revision 2\)\n$`)
	}
	out, code := run(t, b, lead, "delegate", "--to", helper.String(), "--role", "reports-read", "--ttl", "10m", "-o", "json")
	var got struct {
		Grant struct {
			ID string `json:"id"`
		} `json:"grant"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || len(got.Grant.ID) != 32 {
		t.Fatalf("delegate: exit %d\n%s", code, out)
	}
	grant := got.Grant.ID
	if out, code := run(t, b, helper, "delegate", "--to", lead.String(), "--role", "reports-read"); code != 3 || !strings.Contains(out, "may not delegate") {
		t.Fatalf("a Junior delegating: exit %d, want 3\n%s", code, out)
	}
	out, code = run(t, b, helper, "creds", "fetch", "--role", "reports-read", "--grant", grant)
	if code != 0 || !strings.Contains(out, grant) || !strings.Contains(out, lead.String()+" → "+helper.String()) {
		t.Fatalf("creds fetch --grant: exit %d\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "lineage", "show", lead.String())
	if code != 0 || !strings.Contains(out, "grant "+grant) || !strings.Contains(out, "• credential") {
		t.Fatalf("lineage show: exit %d\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "revoke", "lineage", grant, "--reason", "cli test")
	if code != 0 || !regexp.MustCompile(`Grants revoked:\s+1\n`).MatchString(out) || !regexp.MustCompile(`Credentials revoked:\s+1\n`).MatchString(out) {
		t.Fatalf("revoke lineage: exit %d\n%s", code, out)
	}
	if out, code = run(t, b, f.Admin, "lineage", "show", grant); code != 0 || !strings.Contains(out, "REVOKED") {
		t.Fatalf("lineage show after revoke: exit %d\n%s", code, out)
	}
	if out, code = run(t, b, helper, "creds", "fetch", "--role", "reports-read", "--grant", grant); code != 3 {
		t.Fatalf("fetch under a revoked grant: exit %d, want 3\n%s", code, out)
	}
}
