package broker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	"github.com/agentictrust/atf/broker/breaker"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Attacks on the maturity lifecycle by people who hold a role, or by the
// agent itself: forged sign-offs, people registered as agents, promotion
// evidence an agent makes up, and ways around the five gates
// (docs/security.md).

var principal = brokerv1.Level_LEVEL_PRINCIPAL

// check returns the check gate/name of r.
func check(t *testing.T, r *adminv1.PromotionReport, gate, name string) *adminv1.GateCheck {
	t.Helper()
	for _, g := range r.GetGates() {
		for _, c := range g.GetChecks() {
			if g.GetName() == gate && c.GetName() == name {
				return c
			}
		}
	}
	t.Fatalf("the report has no %s: %s check: %v", gate, name, r)
	return nil
}

// One admin typing two names is one sign-off, not the two distinct
// approvers a Principal needs: a sign-off is its signer's own verified
// identity, and a name typed for someone else is refused.
func TestAdversarialMaturityForgedSignOff(t *testing.T) {
	e := newLifeEnv(t, brokertest.Setup(t).Config(t, t.TempDir()), nil)
	id := e.register(t, "agent", senior, "reports-read").id

	for _, name := range []string{"alice@example.org", "bob@example.org"} {
		_, err := e.admin.maturity.RecordSignOff(e.admin.ctx, &adminv1.RecordSignOffRequest{
			SpiffeId: id.String(), Signer: name, RiskAcceptance: "RA-1", Target: principal,
		})
		brokertest.WantCode(t, err, codes.InvalidArgument, "signer", "own SVID")
	}
	for range 2 {
		e.signOff(t, id, principal, e.admin)
	}
	c := check(t, e.evaluate(t, id), "governance", "sign-off")
	if c.GetPass() {
		t.Fatalf("one admin signing twice passes the governance gate for Principal: %s", c.GetDetail())
	}
	want := "1 approver (" + e.f.Admin.String() + ") for principal, needs 2 other than the owner"
	if c.GetDetail() != want {
		t.Errorf("sign-off check says %q, want %q", c.GetDetail(), want)
	}

	// A second person, signing with their own SVID, makes two.
	e.signOff(t, id, principal, e.signer)
	if c := check(t, e.evaluate(t, id), "governance", "sign-off"); !c.GetPass() {
		t.Errorf("two admins' own sign-offs fail the governance gate: %s", c.GetDetail())
	}
	recs := e.audit(t, id, "promotion_signed_off")
	if n := len(recs); n < 3 || recs[n-1].GetActor() != e.signer.id.String() || recs[n-1].GetDetail()["signer"] != e.signer.id.String() {
		t.Errorf("last sign-off audit record = %v, want the signer as actor and signer", recs)
	}

	// With authorities named, an admin who is not one is told its
	// sign-off would not count.
	cfg := e.f.Config(t, t.TempDir())
	cfg.Maturity.Authorities = []string{e.f.Signer.String()}
	e = newLifeEnv(t, cfg, nil)
	id = e.register(t, "agent", brokerv1.Level_LEVEL_INTERN, "reports-read").id
	_, err := e.admin.maturity.RecordSignOff(e.admin.ctx, &adminv1.RecordSignOffRequest{SpiffeId: id.String(), RiskAcceptance: "RA-3"})
	wantStatus(t, err, codes.PermissionDenied, e.f.Admin.String()+" is not a promotion authority (atfd's configuration: maturity.authorities): its sign-off would not count")
}

// An ID that holds a person's role (admin, approver, security operator)
// is never registered as an agent; and one that became both later (the
// configuration changed) neither releases its own kill nor signs off or
// records evidence for itself. An owner does not vouch for their agent.
func TestAdversarialMaturityPeopleAsAgents(t *testing.T) {
	f := brokertest.Setup(t)
	dir := t.TempDir()
	cfg := f.Config(t, dir)
	operator, approver, admin2 := f.ID(t, "operator"), f.ID(t, "approver"), f.ID(t, "admin2")
	cfg.SecurityOperators = []string{operator.String()}
	cfg.Approvals.Approvers = []string{approver.String()}
	cfg.Admins = append(cfg.Admins, admin2.String())
	b := f.Start(t, cfg)
	admin := b.Dial(t, f.Admin)
	for _, c := range []struct {
		id   spiffeid.ID
		role string
	}{{operator, "a security operator"}, {approver, "an approver"}, {admin2, "an admin"}} {
		_, err := admin.Admin.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{SpiffeId: c.id.String(), Owner: owner, Purpose: "a person", Roles: []string{"reports-read"}})
		brokertest.WantCode(t, err, codes.FailedPrecondition, c.id.String()+" is "+c.role, "not an agent")
	}

	// An agent registered first, then made an operator and an admin.
	turncoat := f.ID(t, "turncoat")
	b.Register(t, turncoat, brokerv1.Level_LEVEL_INTERN, "reports-read")
	owned := f.ID(t, "owned")
	if _, err := admin.Admin.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{SpiffeId: owned.String(), Owner: admin2.String(), Purpose: "owned by admin2", Roles: []string{"reports-read"}}); err != nil {
		t.Fatal(err)
	}
	b.Stop()
	cfg.SecurityOperators = append(cfg.SecurityOperators, turncoat.String())
	cfg.Admins = append(cfg.Admins, turncoat.String())
	b = f.Start(t, cfg)
	admin = b.Dial(t, f.Admin)
	if _, err := admin.Response.Kill(t.Context(), &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: turncoat.String()}, Reason: "compromised"}); err != nil {
		t.Fatal(err)
	}
	self := b.Dial(t, turncoat)
	_, err := self.Response.Release(t.Context(), &adminv1.ReleaseRequest{Target: &adminv1.ReleaseRequest_AgentId{AgentId: turncoat.String()}, Reason: "all good"})
	brokertest.WantCode(t, err, codes.PermissionDenied, turncoat.String()+" may not act on its own agent record")
	// Nor does it release another agent, or all of them: an agent does not
	// vouch for agents.
	if _, err := admin.Response.Kill(t.Context(), &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: owned.String()}, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	_, err = self.Response.Release(t.Context(), &adminv1.ReleaseRequest{Target: &adminv1.ReleaseRequest_AgentId{AgentId: owned.String()}, Reason: "all good"})
	brokertest.WantCode(t, err, codes.PermissionDenied, turncoat.String()+" is registered as an agent")
	_, err = self.Response.Release(t.Context(), &adminv1.ReleaseRequest{Target: &adminv1.ReleaseRequest_All{All: true}, Reason: "all good"})
	brokertest.WantCode(t, err, codes.PermissionDenied, turncoat.String()+" is registered as an agent")
	if a, err := admin.Admin.GetAgent(t.Context(), &adminv1.GetAgentRequest{SpiffeId: turncoat.String()}); err != nil || a.GetAgent().GetStatus() != brokerv1.AgentStatus_AGENT_STATUS_KILLED {
		t.Fatalf("after its own release the agent is %v, %v; want still killed", a, err)
	}
	selfMaturity := adminv1.NewMaturityServiceClient(self.ClientConn)
	_, err = selfMaturity.RecordSignOff(t.Context(), &adminv1.RecordSignOffRequest{SpiffeId: turncoat.String(), RiskAcceptance: "me"})
	brokertest.WantCode(t, err, codes.PermissionDenied, turncoat.String()+" may not act on its own agent record")
	_, err = selfMaturity.RecordEvidence(t.Context(), &adminv1.RecordEvidenceRequest{SpiffeId: turncoat.String(), Kind: "code_review", Reference: "me"})
	brokertest.WantCode(t, err, codes.PermissionDenied, turncoat.String()+" may not act on its own agent record")
	_, err = selfMaturity.RecordSignOff(t.Context(), &adminv1.RecordSignOffRequest{SpiffeId: owned.String(), RiskAcceptance: "a peer"})
	brokertest.WantCode(t, err, codes.PermissionDenied, turncoat.String()+" is registered as an agent")

	// admin2 owns an agent: it records nothing that would promote it.
	ownerMaturity := adminv1.NewMaturityServiceClient(b.Dial(t, admin2).ClientConn)
	_, err = ownerMaturity.RecordSignOff(t.Context(), &adminv1.RecordSignOffRequest{SpiffeId: owned.String(), RiskAcceptance: "mine"})
	brokertest.WantCode(t, err, codes.PermissionDenied, admin2.String()+" owns "+owned.String())
	_, err = ownerMaturity.RecordEvidence(t.Context(), &adminv1.RecordEvidenceRequest{SpiffeId: owned.String(), Kind: "code_review", Reference: "mine"})
	brokertest.WantCode(t, err, codes.PermissionDenied, admin2.String()+" owns "+owned.String())
	m, err := admin.Admin.GetAgent(t.Context(), &adminv1.GetAgentRequest{SpiffeId: owned.String()})
	if err != nil {
		t.Fatal(err)
	}
	mat, err := adminv1.NewMaturityServiceClient(admin.ClientConn).GetMaturity(t.Context(), &adminv1.GetMaturityRequest{SpiffeId: m.GetAgent().GetSpiffeId()})
	if err != nil || len(mat.GetSignOffs()) != 0 || len(mat.GetEvidence()) != 0 {
		t.Errorf("the owned agent's maturity records = %v, %v; want none", mat, err)
	}
}

// An agent's own reports of success do not earn it the success rate of the
// performance gate; an approver's reports of its work do. Nobody else, and
// no other agent, reports on its work.
func TestAdversarialMaturitySelfReportedOutcomes(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Maturity.MinOutcomes = 5
	approver := spiffeid.RequireFromPath(f.Stack.TrustDomain, "/people/approver")
	cfg.Approvals.Approvers = []string{approver.String()}
	e := newLifeEnv(t, cfg, nil)
	agent := e.register(t, "agent", junior, "reports-read")
	peer := e.register(t, "peer", brokerv1.Level_LEVEL_INTERN, "reports-read")
	agent.report(t, "reports-read", brokerv1.Outcome_OUTCOME_SUCCESS, 30)
	c := check(t, e.evaluate(t, agent.id), "performance", "success rate")
	if c.GetPass() {
		t.Fatalf("30 successes the agent reported itself pass the success rate: %s", c.GetDetail())
	}
	if want := "0 outcome reports, needs 5 before rates count (5 more); 30 self-reported successes counted at weight 0"; c.GetDetail() != want {
		t.Errorf("success rate says %q, want %q", c.GetDetail(), want)
	}

	// Another agent vouching for it is refused, as is the agent naming
	// itself in a report that others make.
	_, err := peer.broker.ReportOutcome(peer.ctx, &brokerv1.ReportOutcomeRequest{Outcome: brokerv1.Outcome_OUTCOME_SUCCESS, AgentId: agent.id.String()})
	wantStatus(t, err, codes.PermissionDenied, peer.id.String()+" may not report on another agent's work: reporters are admins, approvers and maturity.outcome_reporters in atfd's configuration")

	e.dial(t, approver).reportOn(t, agent.id, "reports-read", brokerv1.Outcome_OUTCOME_SUCCESS, 20)
	c = check(t, e.evaluate(t, agent.id), "performance", "success rate")
	if want := "success 100.0% (20/20), needs > 95%; 30 self-reported successes counted at weight 0"; !c.GetPass() || c.GetDetail() != want {
		t.Errorf("success rate after an approver's reports: pass %t, %q; want a pass, %q", c.GetPass(), c.GetDetail(), want)
	}
	m, err := e.admin.maturity.GetMaturity(e.admin.ctx, &adminv1.GetMaturityRequest{SpiffeId: agent.id.String()})
	if err != nil || m.GetOutcomes().GetSuccess() != 20 || m.GetSelfReported().GetSuccess() != 30 {
		t.Errorf("GetMaturity outcomes %v, self-reported %v (%v); want 20 by others, 30 self-reported", m.GetOutcomes(), m.GetSelfReported(), err)
	}
	recs := e.audit(t, agent.id, "outcome_reported")
	if n := len(recs); n != 50 || recs[n-1].GetActor() != approver.String() || recs[n-1].GetDetail()["self_reported"] != "false" || recs[0].GetDetail()["self_reported"] != "true" {
		t.Errorf("outcome_reported records: %d, last %v; want 50, the last by the approver", n, recs[n-1])
	}
}

// A half-open breaker closes on a real request that succeeds, not on the
// agent's claim that something did.
func TestAdversarialMaturityBreakerClaim(t *testing.T) {
	cfg := brokertest.Setup(t).Config(t, t.TempDir())
	const openFor = 2 * time.Second
	cfg.Monitor = config.MonitorConfig{Actions: quiet, Breaker: breaker.Config{Failures: 3, Window: time.Minute, OpenFor: openFor, Probes: 1}}
	clk := &clock{now: time.Now()}
	e := newLifeEnv(t, cfg, clk)
	agent := e.register(t, "agent", brokerv1.Level_LEVEL_INTERN, "reports-read", "reports-write")
	for range 3 {
		_, err := agent.fetch("reports-write")
		brokertest.WantCode(t, err, codes.PermissionDenied, "intern agents may hold only read credentials")
	}
	clk.Advance(openFor)
	agent.report(t, "reports-read", brokerv1.Outcome_OUTCOME_SUCCESS, 3)
	if st := e.agent(t, agent.id).GetBreaker().GetState(); st != "half-open" {
		t.Fatalf("breaker after the agent claimed 3 successes = %s, want half-open", st)
	}
	agent.credential(t, "reports-read")
	if st := e.agent(t, agent.id).GetBreaker().GetState(); st != "closed" {
		t.Errorf("breaker after a real request succeeded = %s, want closed", st)
	}
}

// New agents start as Intern, and a rollback only lowers a level: neither
// skips the five gates.
func TestAdversarialMaturityGateBypass(t *testing.T) {
	e := newLifeEnv(t, brokertest.Setup(t).Config(t, t.TempDir()), nil)
	id := e.f.ID(t, "principal")
	_, err := e.admin.admin.RegisterAgent(e.admin.ctx, &adminv1.RegisterAgentRequest{
		SpiffeId: id.String(), Owner: owner, Purpose: "straight to the top", Roles: []string{"reports-read"}, Level: principal,
	})
	brokertest.WantCode(t, err, codes.FailedPrecondition, "new agents start as intern", "atfctl agent migrate")

	// A migration needs the sign-offs a promotion to its level needs, and
	// the trail says it was one and who signed.
	p := e.register(t, "principal", brokerv1.Level_LEVEL_INTERN, "reports-read")
	e.signOff(t, p.id, principal, e.signer)
	_, err = e.admin.maturity.MigrateAgent(e.admin.ctx, &adminv1.MigrateAgentRequest{SpiffeId: p.id.String(), Level: principal, Reason: "principal at the old broker"})
	wantStatus(t, err, codes.FailedPrecondition, p.id.String()+" cannot be placed at principal without the sign-offs a promotion there needs: 1 approver ("+
		e.signer.id.String()+") for principal, needs 2 other than the owner; each signer records their own (atfctl signoff add "+p.id.String()+" --target principal)")
	e.signOff(t, p.id, principal, e.admin)
	m, err := e.admin.maturity.MigrateAgent(e.admin.ctx, &adminv1.MigrateAgentRequest{SpiffeId: p.id.String(), Level: principal, Reason: "principal at the old broker"})
	if err != nil || m.GetAgent().GetLevel() != principal || !m.GetSignOff().GetPass() {
		t.Fatalf("MigrateAgent with two sign-offs = %v, %v; want a Principal", m, err)
	}
	recs := e.audit(t, p.id, "agent_migrate")
	if len(recs) != 1 || recs[0].GetActor() != e.f.Admin.String() || recs[0].GetDetail()["to"] != "principal" ||
		!strings.Contains(recs[0].GetDetail()["reason"], "migration from intern to principal: principal at the old broker; sign-off: 2 approvers") {
		t.Errorf("agent_migrate records = %v, want one by the admin naming the migration and its sign-offs", recs)
	}

	agent := e.register(t, "agent", junior, "reports-read")
	hist, err := e.admin.admin.ListAgentHistory(e.admin.ctx, &adminv1.ListAgentHistoryRequest{SpiffeId: agent.id.String()})
	if err != nil {
		t.Fatal(err)
	}
	var atJunior uint64
	for _, ch := range hist.GetChanges() {
		if ch.GetAgent().GetLevel() == junior {
			atJunior = ch.GetRevision()
		}
	}
	if _, err := e.admin.maturity.Demote(e.admin.ctx, &adminv1.DemoteRequest{SpiffeId: agent.id.String(), Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	_, err = e.admin.maturity.RollbackLevel(e.admin.ctx, &adminv1.RollbackLevelRequest{SpiffeId: agent.id.String(), Revision: atJunior, Reason: "undo"})
	brokertest.WantCode(t, err, codes.FailedPrecondition, "a rollback only lowers a level")
	if a := e.agent(t, agent.id); a.GetLevel() != brokerv1.Level_LEVEL_INTERN {
		t.Errorf("level after a refused rollback = %s, want Intern", a.GetLevel())
	}
}
