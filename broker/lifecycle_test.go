package broker_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/breaker"
	"github.com/agentictrust/atf/broker/config"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/agentictrust/atf/broker"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// The maturity lifecycle through the API, against the real SPIRE and Vault
// of the shared dev stack: promotion through the five gates, demotion by
// incident and by anomaly (revoking what the new level does not back),
// level rollback, the circuit breaker and the kill action.

const (
	day = 24 * time.Hour
	// owner is every agent's accountable human here, unless a test names
	// the signer (the fixture's second admin) as the owner.
	owner = "owner@example.org"
	// jwtTTL is how long, by the real clock, the JWT-SVIDs of these tests
	// live: longer than any of them runs.
	jwtTTL = 15 * time.Minute
)

var (
	junior = brokerv1.Level_LEVEL_JUNIOR
	senior = brokerv1.Level_LEVEL_SENIOR
	// juniorEvidence is what a promotion to Junior needs; seniorEvidence
	// what one to Senior needs.
	juniorEvidence = []string{"vulnerability_assessment", "code_review", "configuration_audit", "metrics_baseline", "stakeholder_signoff"}
	seniorEvidence = slices.Concat(juniorEvidence, []string{"pen_test", "improvement", "roi"})
	// quiet is the monitor's actions when only the breaker should act.
	quiet = map[string]string{"low": "alert", "medium": "alert", "high": "alert", "critical": "alert"}
)

// clock is a broker clock that stands still until the test moves it.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// pastClock starts far enough back for a lifecycle of six weeks and a half
// to end before the real now, and on the hour, so that a test's requests
// share an hour of day (unusual_hour stays quiet).
func pastClock() *clock {
	return &clock{now: time.Now().Add(-46 * day).Truncate(time.Hour)}
}

// party is one workload's clients of the broker; its calls carry its
// identity in ctx or on the connection.
type party struct {
	id       spiffeid.ID
	ctx      context.Context
	broker   brokerv1.BrokerServiceClient
	admin    adminv1.AdminServiceClient
	maturity adminv1.MaturityServiceClient
}

// lifeEnv is a broker and its admin.
type lifeEnv struct {
	f *brokertest.Fixture
	b *brokertest.Broker
	// tls, set with a clock, is a connection without a client certificate,
	// which parties share, each with its JWT-SVID.
	tls   *grpc.ClientConn
	admin party
	// signer is a second admin (the fixture's Signer), a person other
	// than admin and than owner, who signs promotions off.
	signer party
}

// newLifeEnv starts a broker on cfg with clk as its clock (nil: the real
// one).
//
// The broker judges SVIDs by its own clock, and SPIRE's dev CA lives a day,
// so no X.509-SVID is valid on a clock moved days away. With a clock,
// parties therefore authenticate with JWT-SVIDs: go-jose checks those by the
// real clock and the broker only their expiry by its own, which a clock in
// the past passes.
func newLifeEnv(t *testing.T, cfg config.Config, clk *clock) *lifeEnv {
	t.Helper()
	e := &lifeEnv{f: brokertest.Setup(t)}
	if clk == nil {
		e.b = e.f.Start(t, cfg)
	} else {
		e.b = e.f.StartWith(t, cfg, broker.WithClock(clk.Now))
		e.tls = dialNoClientCert(t, e.b)
	}
	e.admin = e.dial(t, e.f.Admin)
	e.signer = e.dial(t, e.f.Signer)
	return e
}

// dial connects as id: with its X.509-SVID, or its JWT-SVID if e has a clock.
func (e *lifeEnv) dial(t *testing.T, id spiffeid.ID) party {
	t.Helper()
	if e.tls == nil {
		c := e.b.Dial(t, id)
		return party{id: id, ctx: t.Context(), broker: c.Broker, admin: c.Admin, maturity: adminv1.NewMaturityServiceClient(c.ClientConn)}
	}
	tok, err := e.f.Stack.MintJWT(t.Context(), id, e.f.Stack.BrokerID.String(), jwtTTL)
	if err != nil {
		t.Fatal(err)
	}
	return party{id: id, ctx: metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+tok),
		broker: brokerv1.NewBrokerServiceClient(e.tls), admin: adminv1.NewAdminServiceClient(e.tls), maturity: adminv1.NewMaturityServiceClient(e.tls)}
}

// register registers a new agent owned by owner, places it at level if
// that is above Intern, and connects as it.
func (e *lifeEnv) register(t *testing.T, name string, level brokerv1.Level, roles ...string) party {
	t.Helper()
	return e.registerOwned(t, name, owner, level, roles...)
}

func (e *lifeEnv) registerOwned(t *testing.T, name, owner string, level brokerv1.Level, roles ...string) party {
	t.Helper()
	id := e.f.ID(t, name)
	_, err := e.admin.admin.RegisterAgent(e.admin.ctx, &adminv1.RegisterAgentRequest{
		SpiffeId: id.String(), Owner: owner, Purpose: "lifecycle test", Roles: roles,
	})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	if level > brokerv1.Level_LEVEL_INTERN {
		e.place(t, id, level)
	}
	return e.dial(t, id)
}

// place migrates id to level on the sign-offs a promotion there needs:
// the signer's, and for Principal the admin's too.
func (e *lifeEnv) place(t *testing.T, id spiffeid.ID, level brokerv1.Level) {
	t.Helper()
	e.signOff(t, id, level, e.signer)
	if level == brokerv1.Level_LEVEL_PRINCIPAL {
		e.signOff(t, id, level, e.admin)
	}
	if _, err := e.admin.maturity.MigrateAgent(e.admin.ctx, &adminv1.MigrateAgentRequest{SpiffeId: id.String(), Level: level, Reason: "earned elsewhere"}); err != nil {
		t.Fatalf("migrate %s to %s: %v", id, level, err)
	}
}

func (e *lifeEnv) agent(t *testing.T, id spiffeid.ID) *adminv1.Agent {
	t.Helper()
	r, err := e.admin.admin.GetAgent(e.admin.ctx, &adminv1.GetAgentRequest{SpiffeId: id.String()})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetAgent()
}

// lastChange is the latest entry of id's history.
func (e *lifeEnv) lastChange(t *testing.T, id spiffeid.ID) *adminv1.AgentChange {
	t.Helper()
	r, err := e.admin.admin.ListAgentHistory(e.admin.ctx, &adminv1.ListAgentHistoryRequest{SpiffeId: id.String()})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetChanges()[len(r.GetChanges())-1]
}

// audit returns id's audit records of kind.
func (e *lifeEnv) audit(t *testing.T, id spiffeid.ID, kind string) []*adminv1.AuditRecord {
	t.Helper()
	r, err := e.admin.admin.QueryAudit(e.admin.ctx, &adminv1.QueryAuditRequest{Agent: id.String(), Kind: kind})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetRecords()
}

// evidence records evidence of each kind for id's promotion to target.
func (e *lifeEnv) evidence(t *testing.T, id spiffeid.ID, target brokerv1.Level, kinds ...string) {
	t.Helper()
	for _, k := range kinds {
		_, err := e.admin.maturity.RecordEvidence(e.admin.ctx, &adminv1.RecordEvidenceRequest{
			SpiffeId: id.String(), Kind: k, Target: target, Reference: "DOC-" + k,
		})
		if err != nil {
			t.Fatalf("record %s for %s: %v", k, id, err)
		}
	}
}

// signOff records signer's own sign-off of id's promotion to target.
func (e *lifeEnv) signOff(t *testing.T, id spiffeid.ID, target brokerv1.Level, signer party) {
	t.Helper()
	_, err := signer.maturity.RecordSignOff(signer.ctx, &adminv1.RecordSignOffRequest{
		SpiffeId: id.String(), RiskAcceptance: "RA-" + signer.id.Path(), Target: target,
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (e *lifeEnv) evaluate(t *testing.T, id spiffeid.ID) *adminv1.PromotionReport {
	t.Helper()
	r, err := e.admin.maturity.EvaluatePromotion(e.admin.ctx, &adminv1.EvaluatePromotionRequest{SpiffeId: id.String()})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetReport()
}

func (e *lifeEnv) promote(id spiffeid.ID) (*adminv1.PromoteResponse, error) {
	return e.admin.maturity.Promote(e.admin.ctx, &adminv1.PromoteRequest{SpiffeId: id.String(), Reason: "passed every gate"})
}

// failing returns "gate: check: detail" for each failing check of r.
func failing(r *adminv1.PromotionReport) []string {
	var out []string
	for _, g := range r.GetGates() {
		for _, c := range g.GetChecks() {
			if !c.GetPass() {
				out = append(out, g.GetName()+": "+c.GetName()+": "+c.GetDetail())
			}
		}
	}
	return out
}

// wantPromotable fails t unless r passes all five gates, and the check
// named gate/check says detail.
func wantPromotable(t *testing.T, r *adminv1.PromotionReport, gate, check, detail string) {
	t.Helper()
	if !r.GetPromotable() || len(r.GetGates()) != 5 || len(failing(r)) > 0 {
		t.Fatalf("promotable %t with %d gates, failing %q; want all five passing", r.GetPromotable(), len(r.GetGates()), failing(r))
	}
	for _, g := range r.GetGates() {
		for _, c := range g.GetChecks() {
			if g.GetName() == gate && c.GetName() == check {
				if c.GetDetail() != detail {
					t.Errorf("%s: %s says %q, want %q", gate, check, c.GetDetail(), detail)
				}
				return
			}
		}
	}
	t.Errorf("the report has no %s: %s check", gate, check)
}

// wantStatus fails t unless err has code and exactly msg.
func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	if st, _ := status.FromError(err); st.Code() != code || st.Message() != msg {
		t.Errorf("got %v\nwant %s: %s", err, code, msg)
	}
}

func (p party) fetch(role string) (*brokerv1.FetchCredentialResponse, error) {
	return p.broker.FetchCredential(p.ctx, &brokerv1.FetchCredentialRequest{Role: role})
}

// credential fetches role, which must be issued at once.
func (p party) credential(t *testing.T, role string) *brokerv1.Credential {
	t.Helper()
	r, err := p.fetch(role)
	if err != nil || r.GetCredential() == nil {
		t.Fatalf("%s fetching %s: %v, %v", p.id, role, r, err)
	}
	return r.GetCredential()
}

// report reports n outcomes of work done with role, the caller's own.
func (p party) report(t *testing.T, role string, outcome brokerv1.Outcome, n int) {
	t.Helper()
	p.reportOn(t, spiffeid.ID{}, role, outcome, n)
}

// reportOn reports n outcomes of agent's work with role (the caller's own
// if agent is zero).
func (p party) reportOn(t *testing.T, agent spiffeid.ID, role string, outcome brokerv1.Outcome, n int) {
	t.Helper()
	req := &brokerv1.ReportOutcomeRequest{Outcome: outcome, Role: role}
	if !agent.IsZero() {
		req.AgentId = agent.String()
	}
	for range n {
		if _, err := p.broker.ReportOutcome(p.ctx, req); err != nil {
			t.Fatalf("%s reporting %s: %v", p.id, outcome, err)
		}
	}
}

// An agent earns Junior and then Senior through the five gates, on the
// broker's clock, and loses Senior to its first anomaly: a role it had
// never used. The demotion refuses the request and revokes what a Junior
// does not hold.
func TestLifecycleScenario(t *testing.T) {
	cfg := brokertest.Setup(t).Config(t, t.TempDir())
	cfg.Maturity.MinOutcomes = 5
	cfg.Monitor = config.MonitorConfig{
		// The baseline forms by count alone: 31 events come before step 6,
		// so the Junior's first write request is not yet new behaviour.
		BaselineWindow: 365 * day,
		BaselineOps:    50,
		Actions:        map[string]string{"low": "alert", "medium": "demote", "high": "alert", "critical": "alert"},
		Breaker:        breaker.Config{Failures: 1000},
	}
	clk := pastClock()
	e := newLifeEnv(t, cfg, clk)
	agent := e.register(t, "reporter", brokerv1.Level_LEVEL_INTERN, "reports-read", "reports-write", "payroll-read")
	id := agent.id

	// 1. An Intern reads and reports how its work went.
	read := agent.credential(t, "reports-read")
	agent.report(t, "reports-read", brokerv1.Outcome_OUTCOME_SUCCESS, 5)

	// 2. Fifteen days on, with its evidence and the sign-off of someone
	// other than its owner, it passes every gate and is promoted.
	clk.Advance(15 * day)
	e.evidence(t, id, junior, juniorEvidence...)
	e.signOff(t, id, junior, e.signer)
	wantPromotable(t, e.evaluate(t, id), "performance", "time at level", "15d at intern, needs 14d")
	p, err := e.promote(id)
	if err != nil || p.GetAgent().GetLevel() != junior {
		t.Fatalf("Promote = %v, %v; want a Junior", p, err)
	}

	// 3. A Junior's write waits for a human.
	r, err := agent.fetch("reports-write")
	if err != nil || r.GetCredential() != nil || r.GetApproval().GetStatus() != brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING {
		t.Fatalf("a Junior's reports-write = %v, %v; want a pending approval", r, err)
	}

	// 4. Twenty-nine days of over 95% success on (as reported by an
	// admin reviewing its work; its own report of a failure counts in
	// full), with the evidence a Senior needs and a sign-off, it is
	// promoted again.
	e.admin.reportOn(t, id, "reports-read", brokerv1.Outcome_OUTCOME_SUCCESS, 20)
	agent.report(t, "reports-write", brokerv1.Outcome_OUTCOME_FAILURE, 1)
	clk.Advance(29 * day)
	e.evidence(t, id, senior, seniorEvidence...)
	e.signOff(t, id, senior, e.signer)
	wantPromotable(t, e.evaluate(t, id), "performance", "success rate", "success 95.2% (20/21), needs > 95%")
	if p, err = e.promote(id); err != nil || p.GetAgent().GetLevel() != senior {
		t.Fatalf("Promote = %v, %v; want a Senior", p, err)
	}

	// 5. A Senior writes without asking.
	write := agent.credential(t, "reports-write")
	if write.GetLevel() != senior {
		t.Errorf("write credential issued at %s, want Senior", write.GetLevel())
	}

	// 6. Fifty reads, a minute apart, form its baseline.
	for range 50 {
		clk.Advance(time.Minute)
		read = agent.credential(t, "reports-read")
	}
	m, err := e.admin.maturity.GetMaturity(e.admin.ctx, &adminv1.GetMaturityRequest{SpiffeId: id.String()})
	if err != nil {
		t.Fatal(err)
	}
	if b := m.GetBaseline(); !b.GetFormed() || b.GetRoles()["payroll-read"] != 0 {
		t.Fatalf("baseline = %v, want formed, without payroll-read", b)
	}

	// 7. Its first request for payroll-read, in its manifest all along, is
	// new behaviour: refused, and the agent demoted.
	clk.Advance(time.Minute)
	_, err = agent.fetch("payroll-read")
	brokertest.WantCode(t, err, codes.PermissionDenied, "request refused: medium behaviour anomaly (new_role)")
	if a := e.agent(t, id); a.GetLevel() != junior {
		t.Errorf("level after the anomaly = %s, want Junior", a.GetLevel())
	}
	if ch := e.lastChange(t, id); ch.GetAction() != "demote" || ch.GetActor() != "atfd" || !strings.Contains(ch.GetReason(), "medium anomaly new_role") {
		t.Errorf("last change = %v, want atfd's demotion for the anomaly", ch)
	}
	recs := e.audit(t, id, "anomaly")
	if len(recs) != 1 || recs[0].GetDetail()["rule"] != "new_role" || recs[0].GetDetail()["severity"] != "medium" || recs[0].GetDetail()["action"] != "demote" {
		t.Errorf("anomaly records = %v, want one: new_role, medium, demote", recs)
	}

	// 8. The demotion revoked what a Junior does not hold: a write no human
	// approved. Reads are still backed.
	if !e.f.Dead(t, write.GetToken()) {
		t.Error("the Senior's unapproved reports-write credential is alive after the demotion to Junior, which may write only with approval")
	}
	if e.f.Dead(t, read.GetToken()) {
		t.Error("a reports-read credential died with the demotion; a Junior may read")
	}
}

// Each gate alone blocks a promotion, and Promote says which check failed
// and why, in full.
func TestLifecyclePromotionGates(t *testing.T) {
	clk := pastClock()
	e := newLifeEnv(t, brokertest.Setup(t).Config(t, t.TempDir()), clk)
	date := func(at time.Time) string { return at.UTC().Format(time.DateOnly) }
	start := date(clk.Now())
	cases := []struct {
		name     string
		late     bool   // registered when the others have served their time
		skip     string // evidence kind not recorded
		signed   bool   // the signer signs off
		owned    bool   // the signer owns the agent (and so may not sign off)
		incident string // severity of an incident opened and left open
		want     func(incident string) string
	}{
		{name: "missing evidence", skip: "code_review", signed: true,
			want: func(string) string { return "security: code_review: none for junior since " + start }},
		{name: "missing sign-off",
			want: func(string) string {
				return "governance: sign-off: 0 approvers for junior, needs 1 other than the owner"
			}},
		{name: "open high incident", signed: true, incident: "high",
			want: func(id string) string {
				return "incidents: open incidents: still open: " + id + " (high, opened " + date(clk.Now()) + ")"
			}},
		{name: "too little time", late: true, signed: true,
			want: func(string) string { return "performance: time at level: 0m at intern, needs 14d (14d to go)" }},
		{name: "owner-only sign-off", signed: true, owned: true,
			want: func(string) string {
				return "governance: sign-off: 0 approvers for junior, needs 1 other than the owner"
			}},
	}
	agents := make([]party, len(cases))
	register := func(t *testing.T, i int) {
		o := owner
		if cases[i].owned {
			o = e.signer.id.String()
		}
		agents[i] = e.registerOwned(t, fmt.Sprintf("agent-%d", i), o, brokerv1.Level_LEVEL_INTERN, "reports-read")
	}
	for i, c := range cases {
		if !c.late {
			register(t, i)
		}
	}
	clk.Advance(15 * day)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.late {
				register(t, i)
			}
			id := agents[i].id
			e.evidence(t, id, junior, slices.DeleteFunc(slices.Clone(juniorEvidence), func(k string) bool { return k == c.skip })...)
			switch {
			case c.owned:
				_, err := e.signer.maturity.RecordSignOff(e.signer.ctx, &adminv1.RecordSignOffRequest{SpiffeId: id.String(), RiskAcceptance: "mine", Target: junior})
				wantStatus(t, err, codes.PermissionDenied, e.signer.id.String()+" owns "+id.String()+": its promotion evidence, sign-offs and releases must come from someone else")
			case c.signed:
				e.signOff(t, id, junior, e.signer)
			}
			var incident string
			if c.incident != "" {
				r, err := e.admin.maturity.OpenIncident(e.admin.ctx, &adminv1.OpenIncidentRequest{SpiffeId: id.String(), Severity: c.incident, Summary: "leaked a report"})
				if err != nil || r.GetDemoted() != nil {
					t.Fatalf("OpenIncident = %v, %v; an Intern is never demoted", r, err)
				}
				incident = r.GetIncident().GetId()
			}
			want := c.want(incident)
			if got := failing(e.evaluate(t, id)); !slices.Equal(got, []string{want}) {
				t.Errorf("failing checks %q, want only %q", got, want)
			}
			_, err := e.promote(id)
			wantStatus(t, err, codes.FailedPrecondition, id.String()+" cannot be promoted to junior yet: "+want)
			if a := e.agent(t, id); a.GetLevel() != brokerv1.Level_LEVEL_INTERN {
				t.Errorf("level after a refused promotion = %s", a.GetLevel())
			}
		})
	}
}

// A critical incident demotes a Junior at once; it closes only with a root
// cause analysis; a rollback does not restore the higher level the agent
// had (new sign-offs do), and restores a lower one.
func TestLifecycleIncidentDemotion(t *testing.T) {
	e := newLifeEnv(t, brokertest.Setup(t).Config(t, t.TempDir()), nil)
	agent := e.register(t, "agent", junior, "reports-read", "reports-write")
	id := agent.id

	opened, err := e.admin.maturity.OpenIncident(e.admin.ctx, &adminv1.OpenIncidentRequest{SpiffeId: id.String(), Severity: "critical", Summary: "wrote to the wrong ledger"})
	if err != nil {
		t.Fatal(err)
	}
	inc := opened.GetIncident()
	if opened.GetDemoted().GetLevel() != brokerv1.Level_LEVEL_INTERN || inc.GetLevel() != junior {
		t.Fatalf("OpenIncident = %v; want an incident at Junior that demoted the agent to Intern", opened)
	}
	if a := e.agent(t, id); a.GetLevel() != brokerv1.Level_LEVEL_INTERN {
		t.Errorf("level after a critical incident = %s, want Intern", a.GetLevel())
	}
	if ch := e.lastChange(t, id); ch.GetAction() != "demote" || !strings.Contains(ch.GetReason(), "critical incident "+inc.GetId()) {
		t.Errorf("last change = %v, want the incident's demotion", ch)
	}

	_, err = e.admin.maturity.CloseIncident(e.admin.ctx, &adminv1.CloseIncidentRequest{IncidentId: inc.GetId()})
	brokertest.WantCode(t, err, codes.InvalidArgument, "rca")
	closed, err := e.admin.maturity.CloseIncident(e.admin.ctx, &adminv1.CloseIncidentRequest{IncidentId: inc.GetId(), Rca: "RCA-7: ledger names were ambiguous"})
	if err != nil {
		t.Fatal(err)
	}
	if c := closed.GetIncident(); c.GetClosedAt() == nil || c.GetRca() != "RCA-7: ledger names were ambiguous" || c.GetClosedBy() != e.f.Admin.String() {
		t.Errorf("closed incident = %v", c)
	}

	// Revision 1 is the registration, at Intern, 2 the migration to
	// Junior, 3 the demotion. Rolling back to Junior would skip the gates.
	_, err = e.admin.maturity.RollbackLevel(e.admin.ctx, &adminv1.RollbackLevelRequest{SpiffeId: id.String(), Revision: 2, Reason: "RCA-7 clears the agent"})
	wantStatus(t, err, codes.FailedPrecondition, "a rollback only lowers a level: "+id.String()+" is at intern and revision 2 had junior; "+
		"raise it through the gates (atfctl agent promote) or, with its sign-offs, a migration (atfctl agent migrate)")
	e.place(t, id, junior)
	if a := e.agent(t, id); a.GetLevel() != junior || a.GetRevision() != 4 {
		t.Fatalf("after a new sign-off and migration the agent is %v, want a Junior at revision 4", a)
	}

	// Revision 3 had Intern: that rollback lowers, and is notified under
	// its own name.
	wctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	events, err := e.admin.admin.WatchEvents(wctx, &adminv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := events.Header(); err != nil {
		t.Fatal(err)
	}
	rb, err := e.admin.maturity.RollbackLevel(e.admin.ctx, &adminv1.RollbackLevelRequest{SpiffeId: id.String(), Revision: 3, Reason: "migrated back too soon"})
	if err != nil {
		t.Fatal(err)
	}
	intern := brokerv1.Level_LEVEL_INTERN
	if rb.GetAgent().GetLevel() != intern || e.agent(t, id).GetLevel() != intern {
		t.Errorf("level after the rollback = %s, want Intern", rb.GetAgent().GetLevel())
	}
	if ch := e.lastChange(t, id); ch.GetAction() != "rollback" || ch.GetAgent().GetLevel() != intern || !strings.Contains(ch.GetReason(), "level of revision 3 restored") {
		t.Errorf("last change = %v, want the rollback", ch)
	}
	for {
		ev, err := events.Recv()
		if err != nil {
			t.Fatalf("no agent_level_rolled_back event before %v", err)
		}
		if k := ev.GetEvent().GetKind(); k == "agent_level_rolled_back" && ev.GetEvent().GetAgent() == id.String() {
			break
		} else if strings.HasPrefix(k, "agent_") && strings.HasSuffix(k, "d") && strings.Contains(k, "rollback") {
			t.Fatalf("rollback notified as %q", k)
		}
	}
}

// An incident raised to critical demotes the agent then, once; notes are
// appended, closed incidents are not updated, and level changes are in the
// audit trail.
func TestLifecycleIncidentUpdate(t *testing.T) {
	e := newLifeEnv(t, brokertest.Setup(t).Config(t, t.TempDir()), nil)
	id := e.register(t, "agent", senior, "reports-read").id
	opened, err := e.admin.maturity.OpenIncident(e.admin.ctx, &adminv1.OpenIncidentRequest{SpiffeId: id.String(), Severity: "medium", Summary: "odd reads"})
	if err != nil || opened.GetDemoted() != nil {
		t.Fatalf("OpenIncident = %v, %v; want a medium incident that demotes nobody", opened, err)
	}
	inc := opened.GetIncident().GetId()
	up, err := e.admin.maturity.UpdateIncident(e.admin.ctx, &adminv1.UpdateIncidentRequest{IncidentId: inc, Note: "reads match a scraping pattern"})
	if err != nil || up.GetDemoted() != nil || !strings.Contains(up.GetIncident().GetSummary(), "reads match a scraping pattern") {
		t.Fatalf("UpdateIncident(note) = %v, %v", up, err)
	}
	up, err = e.admin.maturity.UpdateIncident(e.admin.ctx, &adminv1.UpdateIncidentRequest{IncidentId: inc, Severity: "critical"})
	if err != nil || up.GetDemoted().GetLevel() != junior || up.GetIncident().GetSeverity() != "critical" {
		t.Fatalf("UpdateIncident(critical) = %v, %v; want the agent demoted to Junior", up, err)
	}
	// Already critical: a note does not demote again.
	up, err = e.admin.maturity.UpdateIncident(e.admin.ctx, &adminv1.UpdateIncidentRequest{IncidentId: inc, Severity: "critical", Note: "still"})
	if err != nil || up.GetDemoted() != nil || e.agent(t, id).GetLevel() != junior {
		t.Fatalf("UpdateIncident(critical again) = %v, %v; want no second demotion", up, err)
	}
	if _, err := e.admin.maturity.CloseIncident(e.admin.ctx, &adminv1.CloseIncidentRequest{IncidentId: inc, Rca: "RCA-9"}); err != nil {
		t.Fatal(err)
	}
	_, err = e.admin.maturity.UpdateIncident(e.admin.ctx, &adminv1.UpdateIncidentRequest{IncidentId: inc, Note: "late"})
	brokertest.WantCode(t, err, codes.FailedPrecondition, "is closed")
	recs, err := e.admin.admin.QueryAudit(e.admin.ctx, &adminv1.QueryAuditRequest{Kind: "agent_demote", Agent: id.String()})
	if err != nil || len(recs.GetRecords()) != 1 || recs.GetRecords()[0].GetDetail()["to"] != "junior" {
		t.Fatalf("agent_demote audit records = %v, %v; want one, to junior", recs.GetRecords(), err)
	}
}

// A Senior demoted to Junior keeps only what a Junior may hold: not a write
// no human approved, nor pii, which the policy keeps for Senior and above.
func TestLifecycleDemotionRevokesUnbacked(t *testing.T) {
	e := newLifeEnv(t, brokertest.Setup(t).Config(t, t.TempDir()), nil)
	dead := map[string]bool{"reports-read": false, "reports-write": true, "payroll-read": true}
	agent := e.register(t, "agent", senior, "reports-read", "reports-write", "payroll-read")
	held := map[string]*brokerv1.Credential{}
	for role := range dead {
		held[role] = agent.credential(t, role)
	}

	r, err := e.admin.maturity.Demote(e.admin.ctx, &adminv1.DemoteRequest{SpiffeId: agent.id.String(), Reason: "test"})
	if err != nil || r.GetAgent().GetLevel() != junior {
		t.Fatalf("Demote = %v, %v; want a Junior", r, err)
	}
	for role, want := range dead {
		if got := e.f.Dead(t, held[role].GetToken()); got != want {
			t.Errorf("%s credential dead = %t after the demotion to Junior, want %t", role, got, want)
		}
	}
	if n := r.GetSummary().GetCredentialsRevoked(); n != 2 {
		t.Errorf("demotion revoked %d credentials, want 2", n)
	}
}

// Denials and reported failures open an agent's breaker, which refuses it
// with when to retry, by the broker's clock, until a probe succeeds.
func TestBreaker(t *testing.T) {
	cfg := brokertest.Setup(t).Config(t, t.TempDir())
	const openFor = 2 * time.Second
	cfg.Monitor = config.MonitorConfig{Actions: quiet, Breaker: breaker.Config{Failures: 3, Window: time.Minute, OpenFor: openFor, Probes: 1}}
	clk := &clock{now: time.Now()}
	e := newLifeEnv(t, cfg, clk)
	agent := e.register(t, "agent", brokerv1.Level_LEVEL_INTERN, "reports-read", "reports-write")
	open := "circuit breaker open for " + agent.id.String() + " after repeated failures or denials"
	wantBreaker := func(t *testing.T, state string, until time.Time) {
		t.Helper()
		br := e.agent(t, agent.id).GetBreaker()
		if br.GetState() != state || (until.IsZero() != (br.GetOpenUntil() == nil)) || (!until.IsZero() && !br.GetOpenUntil().AsTime().Equal(until)) {
			t.Errorf("breaker = %v, want %s until %v", br, state, until)
		}
	}

	// 1. Three denials (an Intern asking to write) open it.
	for range 3 {
		_, err := agent.fetch("reports-write")
		brokertest.WantCode(t, err, codes.PermissionDenied, "intern agents may hold only read credentials")
	}
	_, err := agent.fetch("reports-read")
	if retry := wantLimited(t, err, "circuit_breaker", open); retry != openFor {
		t.Errorf("retry in %s, want %s: the broker's clock has not moved since the breaker opened", retry, openFor)
	}
	wantBreaker(t, "open", clk.Now().Add(openFor))
	if n := len(e.audit(t, agent.id, "breaker_open")); n != 1 {
		t.Errorf("%d breaker_open records, want 1", n)
	}

	// 2. Half-way, the wait left is half.
	clk.Advance(openFor / 2)
	_, err = agent.fetch("reports-read")
	if retry := wantLimited(t, err, "circuit_breaker", open); retry != openFor/2 {
		t.Errorf("retry in %s, want %s by the broker's clock", retry, openFor/2)
	}

	// 3. Then one probe goes through, and its success closes it.
	clk.Advance(openFor / 2)
	agent.credential(t, "reports-read")
	wantBreaker(t, "closed", time.Time{})
	agent.credential(t, "reports-read")

	// 4. Failures the agent reports count too.
	agent.report(t, "reports-read", brokerv1.Outcome_OUTCOME_FAILURE, 3)
	_, err = agent.fetch("reports-read")
	wantLimited(t, err, "circuit_breaker", open)
	wantBreaker(t, "open", clk.Now().Add(openFor))
	if n := len(e.audit(t, agent.id, "breaker_open")); n != 2 {
		t.Errorf("%d breaker_open records, want 2", n)
	}
}

// An anomaly whose action is kill stops the agent: the request is refused,
// the agent is killed, and its live credentials are dead in Vault.
func TestAnomalyKill(t *testing.T) {
	cfg := brokertest.Setup(t).Config(t, t.TempDir())
	cfg.Monitor = config.MonitorConfig{
		Actions: map[string]string{"low": "alert", "medium": "alert", "high": "kill", "critical": "alert"},
		Breaker: breaker.Config{Failures: 1000},
	}
	e := newLifeEnv(t, cfg, nil)
	agent := e.register(t, "agent", brokerv1.Level_LEVEL_INTERN, "reports-read")
	held := []*brokerv1.Credential{agent.credential(t, "reports-read"), agent.credential(t, "reports-read")}

	_, err := agent.fetch("payroll-read")
	brokertest.WantCode(t, err, codes.PermissionDenied, "request refused: high behaviour anomaly (outside_manifest)")

	a := e.agent(t, agent.id)
	if a.GetStatus() != brokerv1.AgentStatus_AGENT_STATUS_KILLED || a.GetKill().GetBy() != "atfd" || !strings.Contains(a.GetKill().GetReason(), "outside_manifest") {
		t.Errorf("agent after the anomaly = %v, want killed by atfd for outside_manifest", a)
	}
	for _, c := range held {
		if !e.f.Dead(t, c.GetToken()) {
			t.Errorf("credential %s is alive after the kill", c.GetAccessor())
		}
	}
	recs := e.audit(t, agent.id, "anomaly")
	if len(recs) != 1 || recs[0].GetDetail()["rule"] != "outside_manifest" || recs[0].GetDetail()["action"] != "kill" {
		t.Errorf("anomaly records = %v, want one: outside_manifest, kill", recs)
	}
	_, err = agent.fetch("reports-read")
	brokertest.WantCode(t, err, codes.PermissionDenied, "stopped by the kill switch")
}
