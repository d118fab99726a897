package console

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// maxAgentsListed bounds the agents page.
const maxAgentsListed = 200

func (c *Console) agentsPage(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	// ListAgents counts each agent's live credentials in the same call.
	resp, err := call(ctx, c, &adminv1.ListAgentsRequest{PageSize: maxAgentsListed, PageToken: r.URL.Query().Get("page")}, c.cfg.Admin.ListAgents)
	if err != nil {
		c.failErr(w, r, s, err)
		return
	}
	c.render(w, r, s, "agents", map[string]any{"Agents": resp.GetAgents(), "Next": resp.GetNextPageToken()})
}

func (c *Console) agentPage(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	id := r.URL.Query().Get("id")
	ag, err := call(ctx, c, &adminv1.GetMaturityRequest{SpiffeId: id}, c.cfg.Maturity.GetMaturity)
	if err != nil {
		c.failErr(w, r, s, err)
		return
	}
	data := map[string]any{"M": ag, "Agent": ag.GetAgent()}
	if rep, err := call(ctx, c, &adminv1.EvaluatePromotionRequest{SpiffeId: id}, c.cfg.Maturity.EvaluatePromotion); err == nil {
		data["Report"] = rep.GetReport()
	} else {
		data["ReportError"] = err.Error()
	}
	if h, err := call(ctx, c, &adminv1.ListAgentHistoryRequest{SpiffeId: id}, c.cfg.Admin.ListAgentHistory); err == nil {
		data["History"] = h.GetChanges()
	}
	c.render(w, r, s, "agent", data)
}

// signOff records the signed-in admin's own sign-off of an agent's next
// promotion: the signer is the verified person, never a typed name.
func (c *Console) signOff(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PostFormValue("agent")
	target, err := level(r.PostFormValue("target"))
	if err != nil {
		c.failAs(w, r, s, http.StatusBadRequest, err.Error())
		return
	}
	req := &adminv1.RecordSignOffRequest{SpiffeId: id, Target: target, RiskAcceptance: r.PostFormValue("risk_acceptance")}
	submit(ctx, c, w, r, s, req, c.cfg.Maturity.RecordSignOff, "/agent?id="+url.QueryEscape(id))
}

func level(v string) (brokerv1.Level, error) {
	n, ok := brokerv1.Level_value["LEVEL_"+strings.ToUpper(v)]
	if !ok || n == 0 {
		return 0, fmt.Errorf("unknown level %q: intern, junior, senior or principal", v)
	}
	return brokerv1.Level(n), nil
}

func (c *Console) lineagePage(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	id := r.URL.Query().Get("id")
	l, err := call(ctx, c, &adminv1.GetLineageRequest{Root: &adminv1.GetLineageRequest_AgentId{AgentId: id}}, c.cfg.Admin.GetLineage)
	if err != nil {
		c.failErr(w, r, s, err)
		return
	}
	g := layout(id, l, c.cfg.Now())
	c.render(w, r, s, "lineage", map[string]any{"Root": id, "Graph": g, "Lineage": l})
}

// revokeConfirm names what revoking a subtree (a grant, or an agent's
// whole lineage) will kill, before it is done.
func (c *Console) revokeConfirm(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	root, grant := q.Get("agent"), q.Get("grant")
	req := &adminv1.GetLineageRequest{Root: &adminv1.GetLineageRequest_AgentId{AgentId: root}}
	if grant != "" {
		req.Root = &adminv1.GetLineageRequest_GrantId{GrantId: grant}
	}
	l, err := call(ctx, c, req, c.cfg.Admin.GetLineage)
	if err != nil {
		c.failErr(w, r, s, err)
		return
	}
	live := 0 // the grants that will die: those not revoked already
	for _, g := range l.GetGrants() {
		if g.GetRevokedAt() == nil {
			live++
		}
	}
	c.render(w, r, s, "revoke", map[string]any{"Agent": root, "Grant": grant, "Lineage": l, "Grants": live, "Back": localPath(q.Get("back"))})
}

func (c *Console) revoke(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	req := &adminv1.RevokeLineageRequest{Reason: r.PostFormValue("reason")}
	if g := r.PostFormValue("grant"); g != "" {
		req.Root = &adminv1.RevokeLineageRequest_GrantId{GrantId: g}
	} else {
		req.Root = &adminv1.RevokeLineageRequest_AgentId{AgentId: r.PostFormValue("agent")}
	}
	resp, err := call(ctx, c, req, c.cfg.Admin.RevokeLineage)
	if err != nil {
		c.failErr(w, r, s, err)
		return
	}
	c.render(w, r, s, "revoked", map[string]any{"Summary": resp.GetSummary(), "Back": localPath(r.PostFormValue("back"))})
}

func (c *Console) approvalsPage(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	status := brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING
	if r.URL.Query().Get("all") == "1" {
		status = brokerv1.ApprovalStatus_APPROVAL_STATUS_UNSPECIFIED
	}
	resp, err := call(ctx, c, &adminv1.ListApprovalsRequest{Status: status, PageSize: 200}, c.cfg.Approvals.ListApprovals)
	if err != nil {
		c.failErr(w, r, s, err)
		return
	}
	c.render(w, r, s, "approvals", map[string]any{"Approvals": resp.GetApprovals(), "All": status == brokerv1.ApprovalStatus_APPROVAL_STATUS_UNSPECIFIED})
}

func (c *Console) decide(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	verdict := adminv1.Verdict_VERDICT_DENY
	if r.PostFormValue("verdict") == "approve" {
		verdict = adminv1.Verdict_VERDICT_APPROVE
	}
	req := &adminv1.DecideApprovalRequest{ApprovalId: r.PostFormValue("id"), Verdict: verdict, Reason: r.PostFormValue("reason")}
	submit(ctx, c, w, r, s, req, c.cfg.Approvals.DecideApproval, "/approvals")
}

func (c *Console) killPage(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	resp, err := call(ctx, c, &adminv1.GetKillSwitchRequest{}, c.cfg.Response.GetKillSwitch)
	if err != nil {
		c.failErr(w, r, s, err)
		return
	}
	c.render(w, r, s, "kill", map[string]any{"Switch": resp})
}

// killConfirm names what killing an agent (and, with lineage, every
// agent below it) will stop, before it is done.
func (c *Console) killConfirm(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	id := q.Get("agent")
	l, err := call(ctx, c, &adminv1.GetLineageRequest{Root: &adminv1.GetLineageRequest_AgentId{AgentId: id}}, c.cfg.Admin.GetLineage)
	if err != nil {
		c.failErr(w, r, s, err)
		return
	}
	below := []string{}
	for _, g := range l.GetGrants() {
		if g.GetRevokedAt() == nil && !slices.Contains(below, g.GetDelegatee()) && g.GetDelegatee() != id {
			below = append(below, g.GetDelegatee())
		}
	}
	c.render(w, r, s, "killconfirm", map[string]any{"Agent": id, "Lineage": q.Get("lineage") == "1", "Below": below, "Live": len(l.GetCredentials())})
}

func (c *Console) kill(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	req := &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: r.PostFormValue("agent")}, Lineage: r.PostFormValue("lineage") == "1",
		Reason: r.PostFormValue("reason")}
	submit(ctx, c, w, r, s, req, c.cfg.Response.Kill, "/kill")
}

func (c *Console) killAll(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	req := &adminv1.KillRequest{Target: &adminv1.KillRequest_All{All: true}, Reason: r.PostFormValue("reason")}
	submit(ctx, c, w, r, s, req, c.cfg.Response.Kill, "/kill")
}

func (c *Console) release(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	req := &adminv1.ReleaseRequest{Target: &adminv1.ReleaseRequest_AgentId{AgentId: r.PostFormValue("agent")}, Reason: r.PostFormValue("reason")}
	submit(ctx, c, w, r, s, req, c.cfg.Response.Release, "/kill")
}

func (c *Console) releaseAll(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	req := &adminv1.ReleaseRequest{Target: &adminv1.ReleaseRequest_All{All: true}, Reason: r.PostFormValue("reason")}
	submit(ctx, c, w, r, s, req, c.cfg.Response.Release, "/kill")
}

func (c *Console) auditPage(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	req := &adminv1.QueryAuditRequest{Agent: q.Get("agent"), Role: q.Get("role"), Decision: q.Get("decision"), Kind: q.Get("kind"), PageSize: 100}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			c.failAs(w, r, s, http.StatusBadRequest, "after must be a record number")
			return
		}
		req.AfterSeq = n
	}
	for name, dst := range map[string]**timestamppb.Timestamp{"since": &req.Since, "until": &req.Until} {
		if v := q.Get(name); v != "" {
			t, err := time.Parse("2006-01-02T15:04", v)
			if err != nil {
				c.failAs(w, r, s, http.StatusBadRequest, name+" must be a time such as 2026-12-07T14:30 (UTC)")
				return
			}
			*dst = timestamppb.New(t)
		}
	}
	resp, err := call(ctx, c, req, c.cfg.Admin.QueryAudit)
	if err != nil {
		c.failErr(w, r, s, err)
		return
	}
	data := map[string]any{"Records": resp.GetRecords(), "Next": resp.GetNextAfterSeq(), "Q": q, "Decisions": []string{"allow", "deny", "pending", "limited"}}
	if v, at, err := c.verifyChain(ctx); err == nil {
		data["Verify"], data["VerifiedAt"] = v, at
	} else {
		data["VerifyError"] = err.Error()
	}
	c.render(w, r, s, "audit", data)
}

// chainRecheck is how long a verification of the audit chain is shown
// before the next view of the audit page verifies again: verifying reads
// every record of the trail, too much for each page of 100 an auditor
// turns.
const chainRecheck = time.Minute

// chainCheck is the last verification of the audit chain.
type chainCheck struct {
	mu   sync.Mutex
	at   time.Time
	resp *adminv1.VerifyAuditResponse
}

// verifyChain verifies the audit chain, or returns the verification made
// less than chainRecheck ago, with when it was made.
func (c *Console) verifyChain(ctx context.Context) (*adminv1.VerifyAuditResponse, time.Time, error) {
	c.chain.mu.Lock()
	defer c.chain.mu.Unlock()
	now := c.cfg.Now()
	if c.chain.resp != nil && now.Sub(c.chain.at) < chainRecheck {
		return c.chain.resp, c.chain.at, nil
	}
	v, err := call(ctx, c, &adminv1.VerifyAuditRequest{}, c.cfg.Admin.VerifyAudit)
	if err != nil {
		return nil, time.Time{}, err
	}
	c.chain.resp, c.chain.at = v, now
	return v, now, nil
}

func (c *Console) policyPage(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	list, err := call(ctx, c, &adminv1.ListPoliciesRequest{PageSize: 50}, c.cfg.Admin.ListPolicies)
	if err != nil {
		c.failErr(w, r, s, err)
		return
	}
	q := r.URL.Query()
	var version uint64
	if v := q.Get("version"); v != "" {
		if version, err = strconv.ParseUint(v, 10, 64); err != nil {
			c.failAs(w, r, s, http.StatusBadRequest, "version must be a number")
			return
		}
	}
	cur, err := call(ctx, c, &adminv1.GetPolicyRequest{Version: version}, c.cfg.Admin.GetPolicy)
	if err != nil {
		c.failErr(w, r, s, err)
		return
	}
	data := map[string]any{"Versions": list.GetVersions(), "Shown": cur}
	if v := q.Get("diff"); v != "" {
		other, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			c.failAs(w, r, s, http.StatusBadRequest, "diff must be a version number")
			return
		}
		o, err := call(ctx, c, &adminv1.GetPolicyRequest{Version: other}, c.cfg.Admin.GetPolicy)
		if err != nil {
			c.failErr(w, r, s, err)
			return
		}
		data["DiffFrom"] = other
		data["Diff"] = diffLines(o.GetPolicy(), cur.GetPolicy())
	}
	c.render(w, r, s, "policy", data)
}

// policyTest is a dry run: the decision for an agent, role and level
// under the current policy or the one given.
func (c *Console) policyTest(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	lv, err := level(r.PostFormValue("level"))
	if err != nil {
		c.failAs(w, r, s, http.StatusBadRequest, err.Error())
		return
	}
	req := &adminv1.TestPolicyRequest{SpiffeId: r.PostFormValue("spiffe_id"), Role: r.PostFormValue("role"), Level: lv, Policy: r.PostFormValue("policy")}
	resp, err := call(ctx, c, req, c.cfg.Admin.TestPolicy)
	if err != nil {
		c.failErr(w, r, s, err)
		return
	}
	c.render(w, r, s, "policytest", map[string]any{"Req": req, "Decision": resp.GetDecision()})
}

func (c *Console) policyRollback(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	v, err := strconv.ParseUint(r.PostFormValue("version"), 10, 64)
	if err != nil {
		c.failAs(w, r, s, http.StatusBadRequest, "version must be a number")
		return
	}
	req := &adminv1.RollbackPolicyRequest{Version: v, Comment: r.PostFormValue("comment")}
	submit(ctx, c, w, r, s, req, c.cfg.Admin.RollbackPolicy, "/policy")
}

func (c *Console) policySet(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	exp, _ := strconv.ParseUint(r.PostFormValue("expected_version"), 10, 64)
	req := &adminv1.SetPolicyRequest{Policy: strings.ReplaceAll(r.PostFormValue("policy"), "\r\n", "\n"), Comment: r.PostFormValue("comment"),
		ExpectedVersion: exp}
	submit(ctx, c, w, r, s, req, c.cfg.Admin.SetPolicy, "/policy")
}

// can says whether s holds any of roles (for what a page shows; every act
// is checked again on the server).
func (s *session) can(roles []string) bool {
	return s != nil && slices.ContainsFunc(s.Roles, func(r string) bool { return slices.Contains(roles, r) })
}

// caps are what a page may offer its viewer.
type caps struct{ Approve, Respond, Release, Admin bool }

func capsOf(s *session) caps {
	return caps{Approve: s.can(approvers), Respond: s.can(responders), Release: s.can(operators), Admin: s.can(adminsOnly)}
}
