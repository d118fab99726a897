package conformance_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/conformance"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
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

// conformanceBase is a validated configuration with every default, and a
// registry of one Junior and one Senior agent.
func conformanceBase(t *testing.T) (config.Config, conformance.Facts) {
	t.Helper()
	cfg := minimal()
	cfg.Admins = []string{"spiffe://td/ops/admin"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg, conformance.Facts{
		Agents:              map[authz.Level]int{authz.Junior: 1, authz.Senior: 1},
		Bound:               1,
		PolicyVersion:       3,
		PolicyLines:         12,
		RoleClasses:         map[string]int{"read": 2, "write": 1},
		RoleClassifications: map[string]int{"internal": 2, "pii": 1},
		AuditHead:           40,
		MaxRequestBytes:     64 << 10,
	}
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
		facts  func(*conformance.Facts)
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
		{name: "webhook", cfg: func(c *config.Config) { c.Notifications.Webhook.URLEnv = "ATF_WEBHOOK" },
			want: map[string]adminv1.ConformanceStatus{"B-4": met}},
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
		{name: "agent without owner or purpose", facts: func(f *conformance.Facts) { f.NoOwner, f.NoPurpose = 1, 2 },
			want:    map[string]adminv1.ConformanceStatus{"I-3": partial, "I-4": partial},
			wantGap: map[string]string{"I-3": "active agents without an owner: 1", "I-4": "active agents without a purpose: 2"}},
		{name: "no policy", facts: func(f *conformance.Facts) { f.PolicyVersion = 0 },
			want:    map[string]adminv1.ConformanceStatus{"S-1": partial},
			wantGap: map[string]string{"S-1": "no segmentation policy is stored: every credential request is denied"}},
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
		"B-1": "audit.file set",
		"B-4": "notifications.webhook set",
		"S-1": "segmentation policy in force: version 1, policy lines: 1",
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
