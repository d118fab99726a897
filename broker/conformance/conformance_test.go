package conformance_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/conformance"
	"github.com/agentictrust/atf/broker/notify"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	"github.com/agentictrust/atf/deploy/policy"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

const (
	met     = adminv1.ConformanceStatus_CONFORMANCE_STATUS_MET
	partial = adminv1.ConformanceStatus_CONFORMANCE_STATUS_PARTIAL
	notMet  = adminv1.ConformanceStatus_CONFORMANCE_STATUS_NOT_MET
)

// requirements indexes a statement's requirements by id.
func TestMain(m *testing.M) { devtest.Main(m) }

// minimal is a configuration that validates.
func minimal() config.Config {
	return config.Config{
		ListenAddr:   "127.0.0.1:0",
		TrustDomains: []string{"td"},
		StorePath:    "atf.db",
		RolesFile:    "roles.yaml",
		Vault:        config.VaultConfig{Address: "http://127.0.0.1:8200", Auth: config.VaultAuth{Method: "token"}},
	}
}

func requirements(st *adminv1.ConformanceStatement) map[string]*adminv1.ConformanceRequirement {
	out := map[string]*adminv1.ConformanceRequirement{}
	for _, e := range st.GetElements() {
		for _, r := range e.GetRequirements() {
			out[r.GetId()] = r
		}
	}
	return out
}

// scores is each element's "met/partial" count, in order.
func scores(st *adminv1.ConformanceStatement) [][2]int32 {
	var out [][2]int32
	for _, e := range st.GetElements() {
		out = append(out, [2]int32{e.GetMet(), e.GetPartial()})
	}
	return out
}

// now is when the pure tests' evidence was gathered.
var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// allowAll is a policy that gives every subject of the trust domain every
// role: the shape of brokertest.OpenPolicy.
const allowAll = "g, spiffe://td/*, group:all\np, group:all, *, *, intern, allow\n"

// conformanceBase is a validated configuration with every default, and the
// evidence of a healthy broker: a registry of one Junior and one Senior
// agent, the example policy and the default gate in force, the audit tail
// verified, Vault and SPIRE answering, no revocation queued, no webhook.
func conformanceBase(t *testing.T) (config.Config, conformance.Evidence) {
	t.Helper()
	cfg := minimal()
	cfg.Admins = []string{"spiffe://td/ops/admin"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rolesFile := filepath.Join(t.TempDir(), "roles.yaml")
	if err := os.WriteFile(rolesFile, []byte(brokertest.Roles), 0o600); err != nil {
		t.Fatal(err)
	}
	roles, err := config.LoadRoles(rolesFile)
	if err != nil {
		t.Fatal(err)
	}
	lim, err := cfg.Limits.LevelLimits()
	if err != nil {
		t.Fatal(err)
	}
	gate, err := authz.NewGate(lim)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, conformance.Evidence{
		Facts: conformance.Facts{
			Agents:              map[authz.Level]int{authz.Junior: 1, authz.Senior: 1},
			Bound:               1,
			PolicyVersion:       3,
			RoleClasses:         map[string]int{"read": 2, "write": 1},
			RoleClassifications: map[string]int{"internal": 2, "pii": 1},
			AuditHead:           40,
			MaxRequestBytes:     64 << 10,
		},
		Now:       now,
		Policy:    mustPolicy(t, policy.Example),
		Gate:      gate,
		Roles:     roles,
		AuditTail: conformance.AuditTail{From: 1, To: 40},
		Vault:     conformance.Check{Checked: true},
		Identity: conformance.Identity{
			SVIDNotBefore: now.Add(-10 * time.Minute), SVIDNotAfter: now.Add(50 * time.Minute),
			WorkloadAPI: conformance.Check{Checked: true}, Authorities: map[string]int{"td": 1},
		},
	}
}

func mustPolicy(t *testing.T, text string) *authz.Policy {
	t.Helper()
	p, err := authz.NewPolicy(3, policy.Model, text)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The evaluation is a function of the configuration and the registry's
// counts: each setting moves exactly the requirements that depend on it.
func TestEvaluateConformance(t *testing.T) {
	// With the defaults: the audit trail stays in the store, no webhook,
	// no approvers.
	defaults := map[string]adminv1.ConformanceStatus{
		"I-1": met, "I-2": met, "I-3": met, "I-4": met, "I-5": met,
		"B-1": partial, "B-2": met, "B-3": met, "B-4": partial, "B-5": partial,
		"D-1": partial, "D-2": partial, "D-3": partial, "D-4": notMet, "D-5": partial,
		"S-1": met, "S-2": partial, "S-3": met, "S-4": met, "S-5": met,
		"R-1": met, "R-2": met, "R-3": met, "R-4": partial, "R-5": met,
	}
	for _, tt := range []struct {
		name   string
		cfg    func(*config.Config)
		facts  func(*conformance.Evidence)
		target authz.Level
		// The requirements whose status differs from defaults, and a part
		// of the first gap of each that has one.
		want    map[string]adminv1.ConformanceStatus
		wantGap map[string]string
	}{
		{name: "defaults"},
		{name: "audit file", cfg: func(c *config.Config) { c.Audit.File = "/var/log/atf/audit.jsonl" },
			want: map[string]adminv1.ConformanceStatus{"B-1": met}},
		{name: "audit stdout", cfg: func(c *config.Config) { c.Audit.Stdout = true },
			want: map[string]adminv1.ConformanceStatus{"B-1": met}},
		// B-4 rests on what the webhook did, not on its URL being set.
		{name: "webhook delivering", facts: func(e *conformance.Evidence) {
			e.Webhook = notify.Deliveries{Sinks: 1, Delivered: 3, LastDelivered: now.Add(-time.Minute)}
		},
			want: map[string]adminv1.ConformanceStatus{"B-4": met}},
		{name: "webhook set but nothing sent", facts: func(e *conformance.Evidence) { e.Webhook = notify.Deliveries{Sinks: 1} },
			wantGap: map[string]string{"B-4": "its delivery is unproven"}},
		{name: "webhook failing", facts: func(e *conformance.Evidence) {
			e.Webhook = notify.Deliveries{Sinks: 1, Delivered: 1, LastDelivered: now.Add(-time.Hour),
				Failed: 2, LastFailed: now.Add(-time.Minute), LastError: "connection refused"}
		},
			want:    map[string]adminv1.ConformanceStatus{"B-4": notMet},
			wantGap: map[string]string{"B-4": "the webhook's last delivery failed 1m ago (connection refused)"}},
		{name: "webhook recovered", facts: func(e *conformance.Evidence) {
			e.Webhook = notify.Deliveries{Sinks: 1, Delivered: 2, LastDelivered: now.Add(-time.Minute), Failed: 2, LastFailed: now.Add(-time.Hour)}
		},
			want: map[string]adminv1.ConformanceStatus{"B-4": met}},
		{name: "allow-all policy", facts: func(e *conformance.Evidence) { e.Policy = mustPolicy(t, allowAll) },
			want:    map[string]adminv1.ConformanceStatus{"S-1": notMet},
			wantGap: map[string]string{"S-1": "the policy in force allows spiffe://td/atf-conformance-probe/unregistered, which no agent is registered under"}},
		{name: "revocations draining", facts: func(e *conformance.Evidence) {
			e.Queue = store.QueueState{Pending: 3, Oldest: now.Add(-30 * time.Second)}
		}},
		{name: "revocations stale", facts: func(e *conformance.Evidence) {
			e.Queue = store.QueueState{Pending: 3, Oldest: now.Add(-10 * time.Minute)}
		},
			want:    map[string]adminv1.ConformanceStatus{"R-3": notMet},
			wantGap: map[string]string{"R-3": "revocations have waited longer than 5m (3 queued, the oldest for 10m)"}},
		{name: "vault down", facts: func(e *conformance.Evidence) { e.Vault.Err = "connection refused" },
			want:    map[string]adminv1.ConformanceStatus{"R-3": partial},
			wantGap: map[string]string{"R-3": "Vault does not answer now (connection refused)"}},
		{name: "audit chain broken", facts: func(e *conformance.Evidence) { e.AuditTail = conformance.AuditTail{Err: "audit record 7 was altered"} },
			want:    map[string]adminv1.ConformanceStatus{"B-1": notMet},
			wantGap: map[string]string{"B-1": "the audit chain does not verify: audit record 7 was altered"}},
		{name: "svid expired", facts: func(e *conformance.Evidence) { e.Identity.SVIDNotAfter = now.Add(-time.Second) },
			want:    map[string]adminv1.ConformanceStatus{"I-2": notMet},
			wantGap: map[string]string{"I-2": "the broker's own X.509-SVID expired"}},
		{name: "svid rotation late", facts: func(e *conformance.Evidence) { e.Identity.SVIDNotAfter = now.Add(time.Minute) },
			want:    map[string]adminv1.ConformanceStatus{"I-2": partial},
			wantGap: map[string]string{"I-2": "past two thirds of its life"}},
		{name: "workload api down", facts: func(e *conformance.Evidence) { e.Identity.WorkloadAPI.Err = "connection refused" },
			want:    map[string]adminv1.ConformanceStatus{"I-2": partial},
			wantGap: map[string]string{"I-2": "SPIRE's Workload API does not answer now"}},
		{name: "no trust bundle", facts: func(e *conformance.Evidence) { e.Identity.Authorities = nil },
			want:    map[string]adminv1.ConformanceStatus{"I-1": notMet},
			wantGap: map[string]string{"I-1": "no trust bundle for any configured trust domain (td)"}},
		{name: "manifest names an unknown role", facts: func(e *conformance.Evidence) { e.UnknownRoles = 1 },
			want:    map[string]adminv1.ConformanceStatus{"I-5": partial},
			wantGap: map[string]string{"I-5": "active agents whose manifest names a role the roles file lacks: 1"}},
		{name: "approvers", cfg: func(c *config.Config) { c.Approvals.Approvers = []string{"spiffe://td/people/ann"} },
			want: map[string]adminv1.ConformanceStatus{"S-2": met}},
		{name: "no approvers, intern target", target: authz.Intern,
			want: map[string]adminv1.ConformanceStatus{"S-2": met}},
		{name: "no approvers, junior target", target: authz.Junior,
			wantGap: map[string]string{"S-2": "approvals.approvers is empty: a Junior agent's write can never be approved"}},
		{name: "short baseline window", cfg: func(c *config.Config) { c.Monitor.BaselineWindow = time.Hour },
			want:    map[string]adminv1.ConformanceStatus{"B-3": partial},
			wantGap: map[string]string{"B-3": "a baseline forms after 1h or 1000 events, sooner than the spec's 7 days or 1000 operations"}},
		{name: "few baseline operations", cfg: func(c *config.Config) { c.Monitor.BaselineOps = 50 },
			want:    map[string]adminv1.ConformanceStatus{"B-3": partial},
			wantGap: map[string]string{"B-3": "a baseline forms after 7d or 50 events"}},
		{name: "rate limits off", cfg: func(c *config.Config) { c.Limits.Rate = map[string]config.RateLimit{} },
			want:    map[string]adminv1.ConformanceStatus{"S-3": notMet},
			wantGap: map[string]string{"S-3": "limits.rate is empty: no agent is rate limited"}},
		{name: "rate limits for some levels", cfg: func(c *config.Config) {
			c.Limits.Rate = map[string]config.RateLimit{"intern": {PerSecond: 1, Burst: 5}, "junior": {PerSecond: 2, Burst: 5}}
		},
			want:    map[string]adminv1.ConformanceStatus{"S-3": partial},
			wantGap: map[string]string{"S-3": "limits.rate has no entry for senior, principal: those agents are not rate limited"}},
		{name: "no lineage limit", cfg: func(c *config.Config) { c.Limits.MaxLivePerLineage = -1 },
			want:    map[string]adminv1.ConformanceStatus{"S-5": partial},
			wantGap: map[string]string{"S-5": "limits.max_live_per_lineage set to -1"}},
		{name: "anomalies only alert", cfg: func(c *config.Config) {
			c.Monitor.Actions = map[string]string{"low": "alert", "medium": "alert", "high": "alert", "critical": "alert"}
		},
			want:    map[string]adminv1.ConformanceStatus{"R-5": partial},
			wantGap: map[string]string{"R-5": "nothing lowers autonomy automatically"}},
		{name: "breaker trips demote", cfg: func(c *config.Config) {
			c.Monitor.Actions = map[string]string{"low": "alert", "medium": "alert", "high": "alert", "critical": "alert"}
			c.Maturity.DemoteOnBreakerTrip = true
		}},
		{name: "nobody may kill", cfg: func(c *config.Config) { c.Admins = nil },
			want:    map[string]adminv1.ConformanceStatus{"R-2": partial},
			wantGap: map[string]string{"R-2": "nobody can pull the kill switch"}},
		{name: "agent without owner or purpose", facts: func(f *conformance.Evidence) { f.NoOwner, f.NoPurpose = 1, 2 },
			want:    map[string]adminv1.ConformanceStatus{"I-3": partial, "I-4": partial},
			wantGap: map[string]string{"I-3": "active agents without an owner: 1", "I-4": "active agents without a purpose: 2"}},
		{name: "no policy", facts: func(f *conformance.Evidence) { f.PolicyVersion, f.Policy = 0, nil },
			want:    map[string]adminv1.ConformanceStatus{"S-1": partial},
			wantGap: map[string]string{"S-1": "no segmentation policy is in force: every credential request is denied"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, facts := conformanceBase(t)
			if tt.cfg != nil {
				tt.cfg(&cfg)
				if err := cfg.Validate(); err != nil {
					t.Fatal(err)
				}
			}
			if tt.facts != nil {
				tt.facts(&facts)
			}
			st := conformance.Evaluate(cfg, facts, tt.target)
			reqs := requirements(st)
			if len(st.GetElements()) != 5 || len(reqs) != 25 || st.GetTotal() != 25 {
				t.Fatalf("%d elements, %d requirements, total %d; want 5, 25, 25", len(st.GetElements()), len(reqs), st.GetTotal())
			}
			var metN, partialN int32
			for id, want := range defaults {
				if w, ok := tt.want[id]; ok {
					want = w
				}
				r := reqs[id]
				if r.GetStatus() != want {
					t.Errorf("%s %s: %s, want %s; gaps %q", id, r.GetName(), r.GetStatus(), want, r.GetGaps())
				}
				// A requirement is partial or not met exactly when it says why.
				if (r.GetStatus() == met) != (len(r.GetGaps()) == 0) || len(r.GetEvidence()) == 0 || r.GetOperatorScope() == "" {
					t.Errorf("%s: status %s with gaps %q, evidence %q, operator scope %q", id, r.GetStatus(), r.GetGaps(), r.GetEvidence(), r.GetOperatorScope())
				}
				switch r.GetStatus() {
				case met:
					metN++
				case partial:
					partialN++
				}
			}
			if st.GetMet() != metN || st.GetPartial() != partialN {
				t.Errorf("statement counts %d met, %d partial; requirements say %d, %d", st.GetMet(), st.GetPartial(), metN, partialN)
			}
			for id, want := range tt.wantGap {
				if gaps := reqs[id].GetGaps(); len(gaps) == 0 || !strings.Contains(gaps[0], want) {
					t.Errorf("%s gaps %q, want one containing %q", id, gaps, want)
				}
			}
		})
	}
}

// The target level decides the obligations: taken from the registry unless
// asked for, and what it makes MUST but is not fully met is listed.
func TestEvaluateConformanceTarget(t *testing.T) {
	cfg, facts := conformanceBase(t)
	for _, tt := range []struct {
		name    string
		agents  map[authz.Level]int
		target  authz.Level
		want    brokerv1.Level
		derived bool
		// I-2's obligation: SHOULD at Intern, MUST above.
		i2 adminv1.Obligation
		// Intern: D-3 (MUST everywhere) and B-1 (MUST everywhere).
		unmet []string
	}{
		{"empty registry", nil, 0, brokerv1.Level_LEVEL_INTERN, true, adminv1.Obligation_OBLIGATION_SHOULD, []string{"B-1", "D-3"}},
		{"highest active level", map[authz.Level]int{authz.Intern: 4, authz.Principal: 1}, 0, brokerv1.Level_LEVEL_PRINCIPAL, true, adminv1.Obligation_OBLIGATION_MUST,
			[]string{"B-1", "B-4", "B-5", "D-1", "D-2", "D-3", "D-4", "D-5", "S-2", "R-4"}},
		{"asked for", map[authz.Level]int{authz.Principal: 1}, authz.Junior, brokerv1.Level_LEVEL_JUNIOR, false, adminv1.Obligation_OBLIGATION_MUST,
			[]string{"B-1", "D-1", "D-2", "D-3", "S-2"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			facts.Agents = tt.agents
			st := conformance.Evaluate(cfg, facts, tt.target)
			if st.GetTargetLevel() != tt.want || st.GetTargetLevelDerived() != tt.derived {
				t.Errorf("target %s (derived %t), want %s (%t)", st.GetTargetLevel(), st.GetTargetLevelDerived(), tt.want, tt.derived)
			}
			if got := requirements(st)["I-2"].GetObligation(); got != tt.i2 {
				t.Errorf("I-2 obligation %s, want %s", got, tt.i2)
			}
			if !slices.Equal(st.GetUnmetMust(), tt.unmet) {
				t.Errorf("unmet MUST %q, want %q", st.GetUnmetMust(), tt.unmet)
			}
		})
	}
}

// Against the real stack: the statement reads the running broker's
// configuration and registry, and switching features off in the
// configuration of the same store flips the requirements that depend on
// them and lowers their elements' scores. Only admins may ask.
func TestConformance(t *testing.T) {
	f := brokertest.Setup(t)
	dir := t.TempDir()
	off := f.Config(t, dir)
	on := off
	on.Audit.File = filepath.Join(dir, "audit.jsonl")
	on.Notifications.Webhook.URLFile = webhookURLFile(t, dir)
	on.Approvals.Approvers = []string{f.ID(t, "approver").String()}
	on.Limits = config.LimitsConfig{} // the defaults: rates per level, live credential limits
	on.Monitor.Actions = map[string]string{"low": "alert", "medium": "alert", "high": "breaker", "critical": "demote"}

	b := f.Start(t, on)
	junior, senior := f.ID(t, "junior"), f.ID(t, "senior")
	b.Register(t, junior, brokerv1.Level_LEVEL_JUNIOR, "reports-read", "reports-write")
	b.Register(t, senior, brokerv1.Level_LEVEL_SENIOR, "reports-read")
	// An allowlist in place of the fixture's allow-all policy; the change
	// is notified, so the webhook shows a delivery.
	setPolicy(t, b, f, allowlist(junior.String(), senior.String()))
	waitStatus(t, b, f, "B-4", met)
	if _, err := b.Dial(t, f.Admin).Admin.UpdateAgent(t.Context(), &adminv1.UpdateAgentRequest{
		SpiffeId: senior.String(), Version: ptr("1.4.2"), ConfigDigest: ptr("sha256:0f1e"),
	}); err != nil {
		t.Fatal(err)
	}

	_, err := b.Dial(t, junior).Admin.GetConformance(t.Context(), &adminv1.GetConformanceRequest{})
	brokertest.WantCode(t, err, codes.PermissionDenied, "is not a broker admin")

	assess := func(b *brokertest.Broker) *adminv1.ConformanceStatement {
		t.Helper()
		r, err := b.Dial(t, f.Admin).Admin.GetConformance(t.Context(), &adminv1.GetConformanceRequest{Organization: "Example Corp"})
		if err != nil {
			t.Fatalf("GetConformance: %v", err)
		}
		return r.GetStatement()
	}
	before := assess(b)
	if before.GetOrganization() != "Example Corp" || before.GetAtfVersion() != "0.9.0" || before.GetAssessedAt() == nil ||
		before.GetTargetLevel() != brokerv1.Level_LEVEL_SENIOR || !before.GetTargetLevelDerived() {
		t.Errorf("statement header: %v", before)
	}
	reqs := requirements(before)
	for id, want := range map[string]string{
		"I-1": "active agents registered: 2",
		"I-2": "active agents with a version and config digest recorded: 1 of 2",
		"I-3": "active agents: 2, without an owner: 0",
		"B-1": "audit.file: a JSON-lines copy of the trail, newest record copied:",
		"B-4": "delivered, 0 failed, 0 queued, 0 dropped",
		"S-1": "segmentation policy in force: version 2, policy lines: 3",
		"R-3": "waiting in the durable queue: none",
		"R-2": "probe: the admit decision refuses every request with the global switch on",
		"S-2": "approvals.approvers: 1",
		"S-3": "limits.rate (token bucket per agent): intern 1/s burst 10, junior 2/s burst 20, senior 10/s burst 50, principal 20/s burst 100",
		"S-5": "limits.max_live_per_agent 50, max_live_per_lineage 500, max_live_per_role 5000",
		"R-5": "anomalies of severity critical demote the agent",
	} {
		if ev := strings.Join(reqs[id].GetEvidence(), "\n"); !strings.Contains(ev, want) {
			t.Errorf("%s evidence does not say %q:\n%s", id, want, ev)
		}
	}
	if got, want := scores(before), [][2]int32{{5, 0}, {4, 1}, {0, 4}, {5, 0}, {4, 1}}; !slices.Equal(got, want) {
		t.Errorf("element scores (met, partial) %v, want %v", got, want)
	}

	// The same store, with the features off (the test defaults: no audit
	// copy, no webhook, no approvers, no rate or live limits, anomalies
	// only alert).
	b.Stop()
	b = f.Start(t, off)
	after := assess(b)
	reqs = requirements(after)
	for id, want := range map[string]adminv1.ConformanceStatus{
		"B-1": partial, "B-4": partial, "S-2": partial, "S-3": notMet, "S-5": partial, "R-5": partial,
		"I-1": met, "B-2": met, "S-4": met, "R-2": met,
	} {
		if got := reqs[id].GetStatus(); got != want {
			t.Errorf("%s with the features off: %s, want %s; gaps %q", id, got, want, reqs[id].GetGaps())
		}
	}
	if got, want := scores(after), [][2]int32{{5, 0}, {2, 3}, {0, 4}, {2, 2}, {3, 2}}; !slices.Equal(got, want) {
		t.Errorf("element scores with the features off %v, want %v", got, want)
	}
	if after.GetMet() != 12 || before.GetMet() != 18 {
		t.Errorf("met %d before, %d after; want 18, 12", before.GetMet(), after.GetMet())
	}
	if !slices.Contains(after.GetUnmetMust(), "S-3") || slices.Contains(before.GetUnmetMust(), "S-3") {
		t.Errorf("unmet MUST before %q, after %q: S-3 should be only after", before.GetUnmetMust(), after.GetUnmetMust())
	}
	if _, err := os.Stat(on.Audit.File); err != nil {
		t.Errorf("the first broker's audit file: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// allowlist is a segmentation policy naming its agents: junior and senior
// may read reports, junior may write them.
func allowlist(junior, senior string) string {
	return "p, " + junior + ", reports-read, read, intern, allow\n" +
		"p, " + junior + ", reports-write, write, junior, allow\n" +
		"p, " + senior + ", reports-read, read, intern, allow\n"
}

func setPolicy(t *testing.T, b *brokertest.Broker, f *brokertest.Fixture, text string) {
	t.Helper()
	if _, err := b.Dial(t, f.Admin).Admin.SetPolicy(t.Context(), &adminv1.SetPolicyRequest{Policy: text, Comment: "conformance test"}); err != nil {
		t.Fatalf("SetPolicy: %v", err)
	}
}

// statement asks b for its conformance statement, indexed by requirement.
func statement(t *testing.T, b *brokertest.Broker, f *brokertest.Fixture) map[string]*adminv1.ConformanceRequirement {
	t.Helper()
	r, err := b.Dial(t, f.Admin).Admin.GetConformance(t.Context(), &adminv1.GetConformanceRequest{})
	if err != nil {
		t.Fatalf("GetConformance: %v", err)
	}
	return requirements(r.GetStatement())
}

// waitStatus asks for the statement until requirement id has status want,
// for up to a minute, and returns it.
func waitStatus(t *testing.T, b *brokertest.Broker, f *brokertest.Fixture, id string, want adminv1.ConformanceStatus) *adminv1.ConformanceRequirement {
	t.Helper()
	// One connection for every try: the broker bounds connections per IP.
	admin := b.Dial(t, f.Admin).Admin
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := admin.GetConformance(t.Context(), &adminv1.GetConformanceRequest{})
		if err != nil {
			t.Fatalf("GetConformance: %v", err)
		}
		r := requirements(resp.GetStatement())[id]
		if r.GetStatus() == want {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s stayed %s, want %s; evidence %q, gaps %q", id, r.GetStatus(), want, r.GetEvidence(), r.GetGaps())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// wantStatus checks requirement r's status and that its first gap (or,
// met, its evidence) says what part does.
func wantStatus(t *testing.T, r *adminv1.ConformanceRequirement, want adminv1.ConformanceStatus, part string) {
	t.Helper()
	text := strings.Join(r.GetGaps(), "\n")
	if want == met {
		text = strings.Join(r.GetEvidence(), "\n")
	}
	if r.GetStatus() != want || !strings.Contains(text, part) {
		t.Errorf("%s: %s, want %s saying %q; evidence %q, gaps %q", r.GetId(), r.GetStatus(), want, part, r.GetEvidence(), r.GetGaps())
	}
}

// S-1 runs the policy in force on an unregistered subject: the fixture's
// allow-all policy (every agent of the trust domain, every role) is not
// an allowlist, and an allowlist naming agents is.
func TestConformanceAllowAllPolicy(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	wantStatus(t, statement(t, b, f)["S-1"], notMet, "the policy in force allows spiffe://"+f.Stack.TrustDomain.Name()+"/atf-conformance-probe/unregistered")
	setPolicy(t, b, f, allowlist(f.ID(t, "junior").String(), f.ID(t, "senior").String()))
	wantStatus(t, statement(t, b, f)["S-1"], met, "all denied by the policy in force")
}

// B-4 rests on what the webhook did: a URL that is set but reaches nothing
// is not met once a notification has failed.
func TestConformanceDeadWebhook(t *testing.T) {
	f := brokertest.Setup(t)
	dir := t.TempDir()
	cfg := f.Config(t, dir)
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close() // its port now refuses connections
	cfg.Notifications.Webhook.URLFile = filepath.Join(dir, "webhook-url")
	if err := os.WriteFile(cfg.Notifications.Webhook.URLFile, []byte(dead.URL+"/hook"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Notifications.Webhook.MaxAttempts = 1
	b := f.Start(t, cfg)
	wantStatus(t, statement(t, b, f)["B-4"], partial, "its delivery is unproven")
	setPolicy(t, b, f, allowlist(f.ID(t, "junior").String(), f.ID(t, "senior").String()))
	r := waitStatus(t, b, f, "B-4", notMet)
	wantStatus(t, r, notMet, "the webhook's last delivery failed")
	if ev := strings.Join(r.GetEvidence(), "\n"); !strings.Contains(ev, "0 delivered, 1 failed") {
		t.Errorf("B-4 evidence does not count the failure:\n%s", ev)
	}
}

// offsetClock is the real time plus an offset the test moves.
type offsetClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *offsetClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *offsetClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

// R-3 rests on the durable revocation queue: revocations Vault cannot
// confirm for longer than conformance.StaleRevocation make it not met, and
// it is met again once the queue drains.
func TestConformanceStaleRevocations(t *testing.T) {
	f := brokertest.Setup(t)
	proxy := brokertest.NewFaultProxy(t, strings.TrimPrefix(f.Stack.VaultAddr, "http://"))
	dir := t.TempDir()
	cfg := f.Config(t, dir)
	cfg.RolesFile = brokertest.ServiceRoles(t, dir) // revoked by accessor, one by one
	cfg.Vault.Address = proxy.URL()
	clk := &offsetClock{}
	b := f.StartWith(t, cfg, broker.WithClock(clk.Now))
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	if _, err := b.Dial(t, agent).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, statement(t, b, f)["R-3"], met, "waiting in the durable queue: none")

	proxy.Down()
	if _, err := b.Dial(t, f.Admin).Admin.DeregisterAgent(t.Context(), &adminv1.DeregisterAgentRequest{SpiffeId: agent.String(), Reason: "conformance test"}); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, statement(t, b, f)["R-3"], partial, "Vault does not answer now")
	clk.Advance(2 * conformance.StaleRevocation)
	wantStatus(t, statement(t, b, f)["R-3"], notMet, "revocations have waited longer than 5m")

	proxy.Restore(t)
	wantStatus(t, waitStatus(t, b, f, "R-3", met), met, "waiting in the durable queue: none")
}

// webhookURLFile is a file naming a webhook that accepts every post.
func webhookURLFile(t *testing.T, dir string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(srv.Close)
	path := filepath.Join(dir, "webhook-url")
	if err := os.WriteFile(path, []byte(srv.URL), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
