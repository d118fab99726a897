package decide_test

import (
	"cmp"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/delegation"
	"github.com/agentictrust/atf/deploy/policy"
)

// The agents of the shipped example policy (deploy/policy/policy.csv):
// reporter, writer and helper are in group:reporting, payroll in
// group:finance; outsider is in no group; stranger is never registered.
const (
	reporter = "spiffe://example.org/agents/reporter"
	writer   = "spiffe://example.org/agents/writer"
	helper   = "spiffe://example.org/agents/helper"
	payroll  = "spiffe://example.org/agents/finance/payroll"
	outsider = "spiffe://example.org/agents/outsider"
	stranger = "spiffe://example.org/agents/stranger"
)

// roles is the test brokers' roles file (deploy/dev/brokertest.Roles) with
// a role under archive/, which the example policy's deny line covers.
const roles = `roles:
  - name: reports-read
    class: read
    classification: internal
    policies: [demo-reports-read]
    max_ttl: 30m
  - name: reports-write
    class: write
    classification: internal
    policies: [demo-reports-write]
    max_ttl: 10m
  - name: payroll-read
    class: read
    classification: pii
    policies: [demo-payroll-read]
    max_ttl: 2m
  - name: archive/reports-write
    class: write
    classification: internal
    policies: [demo-archive-write]
    max_ttl: 10m
`

// roleFacts are what NewReasons reads from each role: class and
// classification.
var roleFacts = map[string][2]string{
	"reports-read":          {"read", "internal"},
	"reports-write":         {"write", "internal"},
	"payroll-read":          {"read", "pii"},
	"archive/reports-write": {"write", "internal"},
}

const (
	policyVersion = 7
	// openPolicy lets every agent of example.org hold every role, except
	// that outsider may never hold reports-read: a deny line that decides
	// for a delegator but not for its delegatee.
	openPolicy = "g, spiffe://example.org/*, group:all\n" +
		"p, group:all, *, *, intern, allow\n" +
		"p, " + outsider + ", reports-read, read, intern, deny\n"
	openDenyLine = "p, " + outsider + ", reports-read, read, intern, deny"
)

var now = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

// world is the real collaborators of a decision: the default gate, the
// shipped model with the example policy (and the open one), the roles.
type world struct {
	gate        *authz.Gate
	policy      *authz.Policy
	open        *authz.Policy
	roles       map[string]config.Role
	readersRole config.Role
}

func newWorld(t testing.TB) world {
	t.Helper()
	g, err := authz.NewGate(authz.DefaultLimits())
	if err != nil {
		t.Fatalf("NewGate(DefaultLimits()): %v", err)
	}
	example, err := authz.NewPolicy(policyVersion, policy.Model, policy.Example)
	if err != nil {
		t.Fatalf("NewPolicy(example): %v", err)
	}
	open, err := authz.NewPolicy(policyVersion+1, policy.Model, openPolicy)
	if err != nil {
		t.Fatalf("NewPolicy(open): %v", err)
	}
	path := filepath.Join(t.TempDir(), "roles.yaml")
	if err := os.WriteFile(path, []byte(roles), 0o600); err != nil {
		t.Fatal(err)
	}
	rs, err := config.LoadRoles(path)
	if err != nil {
		t.Fatalf("LoadRoles: %v", err)
	}
	return world{gate: g, policy: example, open: open, roles: rs, readersRole: rs["reports-read"]}
}

// role is the named role of the roles file.
func (w world) role(t testing.TB, name string) config.Role {
	t.Helper()
	r, ok := w.roles[name]
	if !ok {
		t.Fatalf("role %q is not in the roles file", name)
	}
	return r
}

// agent is an active registered agent at level with manifest roles.
func agent(id string, level authz.Level, roles ...string) store.Agent {
	return store.Agent{ID: id, Level: level, Status: store.Active, Roles: roles, CreatedAt: now.Add(-24 * time.Hour)}
}

func deregistered(a store.Agent) store.Agent {
	a.Status = store.Deregistered
	return a
}

func killed(a store.Agent) store.Agent {
	a.Kill = &store.Kill{At: now.Add(-time.Minute), By: "spiffe://example.org/ops", Reason: "test"}
	return a
}

// grant is a live grant of roles from one agent to another, at depth under
// parent, expiring at expires.
func grant(id, parent, from, to string, depth int, expires time.Time, roles ...string) delegation.Grant {
	return delegation.Grant{ID: id, ParentID: parent, Delegator: from, Delegatee: to, Roles: roles,
		ExpiresAt: expires, MaxDepth: 2, Depth: depth, CreatedAt: now.Add(-time.Hour)}
}

// ancestorsOf is the chain's delegators as the broker sees them: each
// agent narrowed by Principal.
func (w world) ancestorsOf(as ...store.Agent) map[string]delegation.Agent {
	m := map[string]delegation.Agent{}
	for _, a := range as {
		m[a.ID] = decide.Principal(a, w.roles, w.gate)
	}
	return m
}

// baseReasons are the reasons NewReasons starts with for req, written out.
func baseReasons(req decide.Request) decide.Reasons {
	f := roleFacts[req.Role.Name]
	return decide.Reasons{DecisionID: "d-1", RequestID: "r-1", Role: req.Role.Name, Class: f[0], Classification: f[1],
		GrantID: req.GrantID, ApprovalID: req.ApprovalID, Purpose: req.Purpose}
}

// exported is r without its unexported state, comparable with ==; what
// that state says is checked through Version and Detail.
func exported(r decide.Reasons) decide.Reasons {
	return decide.Reasons{
		DecisionID: r.DecisionID, RequestID: r.RequestID, Role: r.Role, Class: r.Class, Classification: r.Classification,
		GrantID: r.GrantID, ApprovalID: r.ApprovalID, Purpose: r.Purpose, Level: r.Level, Chain: r.Chain,
		Decision: r.Decision, Reason: r.Reason, Message: r.Message, Rule: r.Rule, Policy: r.Policy,
		PolicyVersion: r.PolicyVersion, Limit: r.Limit,
	}
}

// wantRefusal is a refusal as the caller and the audit trail see it.
type wantRefusal struct {
	outcome   decide.Outcome
	auditKind string
	kind      fault.Kind
	err       string
	reasons   decide.Reasons
	// version is Reasons.Version().
	version string
}

func checkRefusal(t *testing.T, ref *decide.Refusal, want wantRefusal) {
	t.Helper()
	if ref == nil {
		t.Fatalf("no refusal; want %s: %s", want.outcome, want.err)
	}
	if ref.Outcome != want.outcome {
		t.Errorf("Outcome = %q, want %q", ref.Outcome, want.outcome)
	}
	if got := ref.AuditKind(); got != want.auditKind {
		t.Errorf("AuditKind() = %q, want %q", got, want.auditKind)
	}
	if got := ref.Error(); got != want.err {
		t.Errorf("Error() =\n\t%q\nwant\n\t%q", got, want.err)
	}
	var fe *fault.Error
	if !errors.As(ref, &fe) {
		t.Errorf("errors.As(%T, *fault.Error) = false", ref.Err)
	} else if fe.Kind != want.kind {
		t.Errorf("fault kind = %s, want %s", fe.Kind, want.kind)
	}
	if got := exported(ref.Reasons); got != want.reasons {
		t.Errorf("Reasons =\n\t%+v\nwant\n\t%+v", got, want.reasons)
	}
	if got := ref.Reasons.Version(); got != want.version {
		t.Errorf("Reasons.Version() = %q, want %q", got, want.version)
	}
}

// wantPlan is what a Plan says to issue.
type wantPlan struct {
	level         authz.Level
	ttl           time.Duration
	maxUses       int
	notify        bool
	needsApproval bool
	chain         []string
	grantIDs      []string
	// levels are Plan.Levels, in order: root first, the caller last.
	levels  []authz.Level
	node    string
	reasons decide.Reasons
	version string
}

func checkPlan(t *testing.T, req decide.Request, p decide.Plan, want wantPlan) {
	t.Helper()
	if p.Level != want.level || p.TTL != want.ttl || p.MaxUses != want.maxUses || p.Notify != want.notify || p.NeedsApproval != want.needsApproval {
		t.Errorf("Plan: level %s, TTL %s, %d uses, notify %t, needs approval %t; want %s, %s, %d, %t, %t",
			p.Level, p.TTL, p.MaxUses, p.Notify, p.NeedsApproval, want.level, want.ttl, want.maxUses, want.notify, want.needsApproval)
	}
	if !reflect.DeepEqual(p.Request, req) {
		t.Errorf("Plan.Request = %+v, want the request %+v", p.Request, req)
	}
	if !slices.Equal(p.Policies, req.Role.Policies) {
		t.Errorf("Plan.Policies = %q, want the role's %q", p.Policies, req.Role.Policies)
	}
	if !slices.Equal(p.Chain, want.chain) || !slices.Equal(p.GrantIDs, want.grantIDs) {
		t.Errorf("Plan chain %q, grants %q; want %q, %q", p.Chain, p.GrantIDs, want.chain, want.grantIDs)
	}
	if !slices.Equal(p.Levels, want.levels) {
		t.Errorf("Plan.Levels = %v, want %v", p.Levels, want.levels)
	}
	if p.Lineage() != want.chain[0] {
		t.Errorf("Plan.Lineage() = %q, want %q", p.Lineage(), want.chain[0])
	}
	if got := p.Node(); got != want.node {
		t.Errorf("Plan.Node() = %q, want %q", got, want.node)
	}
	if got := exported(p.Reasons); got != want.reasons {
		t.Errorf("Reasons =\n\t%+v\nwant\n\t%+v", got, want.reasons)
	}
	if got := p.Reasons.Version(); got != want.version {
		t.Errorf("Reasons.Version() = %q, want %q", got, want.version)
	}
}

func TestAdmit(t *testing.T) {
	w := newWorld(t)
	req := decide.Request{Caller: reporter, Role: w.readersRole, Purpose: "weekly report"}
	why := decide.NewReasons("d-1", "r-1", req)
	if ref := decide.Admit(why, nil); ref != nil {
		t.Fatalf("Admit(nil kill) = %v, want nil", ref)
	}

	kill := &store.Kill{At: time.Date(2026, 12, 7, 11, 30, 0, 0, time.UTC), By: "spiffe://example.org/ops", Reason: "incident 42"}
	const msg = "the global kill switch stops every agent (since 2026-12-07T11:30:00Z); only a security operator can release it"
	if got := decide.KillSwitchMessage(kill); got != msg {
		t.Errorf("KillSwitchMessage() = %q, want %q", got, msg)
	}
	want := baseReasons(req)
	want.Decision, want.Reason, want.Message = "deny", "killed", msg
	// No decision id: the switch refuses before any decision is made.
	checkRefusal(t, decide.Admit(why, kill), wantRefusal{
		outcome: decide.Denied, auditKind: "credential_denied", kind: fault.Denied, err: msg, reasons: want, version: "",
	})
	if why != decide.NewReasons("d-1", "r-1", req) {
		t.Errorf("Admit changed the caller's reasons: %+v", why)
	}
}

// TestDecide runs requests through the pipeline as the broker does (Own,
// Attenuate under a grant, Of, Decide) against the shipped model and the
// example policy, and checks the plan or the refusal.
func TestDecide(t *testing.T) {
	w := newWorld(t)
	in1h, in90s, inHalfSecond := now.Add(time.Hour), now.Add(90*time.Second+500*time.Millisecond), now.Add(500*time.Millisecond)
	chainOf := func(ids ...string) string {
		s := ids[0]
		for _, id := range ids[1:] {
			s += " > " + id
		}
		return s
	}
	for _, tt := range []struct {
		name string
		// caller is nil for an unregistered caller.
		caller    *store.Agent
		role      string
		ttl       time.Duration
		approval  string
		grants    []delegation.Grant
		ancestors []store.Agent
		// policy is the example policy unless set; noPolicy: none loaded.
		policy   *authz.Policy
		noPolicy bool
		plan     *wantPlan
		refusal  *wantRefusal
	}{
		{
			name: "unregistered caller",
			role: "reports-read",
			refusal: &wantRefusal{reasons: decide.Reasons{Reason: "not_registered",
				Message: "caller is not a registered agent; ask the platform team to register its SPIFFE ID"}},
		},
		{
			name:   "deregistered agent",
			caller: ptr(deregistered(agent(reporter, authz.Senior, "reports-read"))),
			role:   "reports-read",
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "senior", Chain: reporter, Reason: "not_active",
				Message: "agent " + reporter + " is deregistered"}},
		},
		{
			name:   "killed agent",
			caller: ptr(killed(agent(reporter, authz.Senior, "reports-read"))),
			role:   "reports-read",
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "senior", Chain: reporter, Reason: "killed",
				Message: "agent " + reporter + " is stopped by the kill switch; only a security operator can release it"}},
		},
		{
			name:   "role outside the manifest",
			caller: ptr(agent(reporter, authz.Senior, "reports-read")),
			role:   "reports-write",
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "senior", Chain: reporter, Reason: "not_in_manifest",
				Message: `role "reports-write" is not in agent ` + reporter + `'s capability manifest`}},
		},
		{
			name:   "intern write is refused whatever the policy says",
			caller: ptr(agent(reporter, authz.Intern, "reports-read", "reports-write")),
			role:   "reports-write",
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "intern", Chain: reporter, Reason: "class_not_allowed",
				Rule: "intern: read only (invariant)", Message: `intern agents may hold only read credentials (role "reports-write" is write)`}},
		},
		{
			name:   "intern read lives as long as the role allows",
			caller: ptr(agent(reporter, authz.Intern, "reports-read")),
			role:   "reports-read",
			plan: &wantPlan{level: authz.Intern, ttl: 30 * time.Minute, chain: []string{reporter}, node: "agent:" + reporter,
				reasons: decide.Reasons{Level: "intern", Chain: reporter, Reason: "allowed", Rule: "intern: read allowed",
					Message: `intern agent may hold read role "reports-read"`, Policy: "p, group:reporting, reports-read, read, intern, allow", PolicyVersion: policyVersion}},
		},
		{
			name:   "junior write waits for a human",
			caller: ptr(agent(reporter, authz.Junior, "reports-read", "reports-write")),
			role:   "reports-write",
			plan: &wantPlan{level: authz.Junior, ttl: 10 * time.Minute, needsApproval: true, chain: []string{reporter}, node: "agent:" + reporter,
				reasons: decide.Reasons{Level: "junior", Chain: reporter, Reason: "approval_required", Rule: "junior: write needs human approval",
					Message: `junior agents need a human's approval for write role "reports-write"; the request waits for an approver`,
					Policy:  "p, group:reporting, reports-write, write, junior, allow", PolicyVersion: policyVersion}},
		},
		{
			name:     "junior write with an approval is issued",
			caller:   ptr(agent(reporter, authz.Junior, "reports-read", "reports-write")),
			role:     "reports-write",
			approval: "ap-1",
			plan: &wantPlan{level: authz.Junior, ttl: 10 * time.Minute, chain: []string{reporter}, node: "agent:" + reporter,
				reasons: decide.Reasons{ApprovalID: "ap-1", Level: "junior", Chain: reporter, Reason: "approval_required", Rule: "junior: write needs human approval",
					Message: `junior agents need a human's approval for write role "reports-write"; the request waits for an approver`,
					Policy:  "p, group:reporting, reports-write, write, junior, allow", PolicyVersion: policyVersion}},
		},
		{
			name:   "senior write notifies",
			caller: ptr(agent(writer, authz.Senior, "reports-read", "reports-write")),
			role:   "reports-write",
			plan: &wantPlan{level: authz.Senior, ttl: 10 * time.Minute, notify: true, chain: []string{writer}, node: "agent:" + writer,
				reasons: decide.Reasons{Level: "senior", Chain: writer, Reason: "allowed", Rule: "senior: write allowed, notify",
					Message: `senior agent may hold write role "reports-write"`, Policy: "p, group:reporting, reports-write, write, junior, allow", PolicyVersion: policyVersion}},
		},
		{
			name:   "a requested TTL above the level's maximum is clamped",
			caller: ptr(agent(reporter, authz.Senior, "reports-read")),
			role:   "reports-read",
			ttl:    2 * time.Hour,
			plan: &wantPlan{level: authz.Senior, ttl: 15 * time.Minute, chain: []string{reporter}, node: "agent:" + reporter,
				reasons: decide.Reasons{Level: "senior", Chain: reporter, Reason: "allowed", Rule: "senior: read allowed",
					Message: `senior agent may hold read role "reports-read"`, Policy: "p, group:reporting, reports-read, read, intern, allow", PolicyVersion: policyVersion}},
		},
		{
			name:   "a shorter requested TTL is kept",
			caller: ptr(agent(reporter, authz.Senior, "reports-read")),
			role:   "reports-read",
			ttl:    90 * time.Second,
			plan: &wantPlan{level: authz.Senior, ttl: 90 * time.Second, chain: []string{reporter}, node: "agent:" + reporter,
				reasons: decide.Reasons{Level: "senior", Chain: reporter, Reason: "allowed", Rule: "senior: read allowed",
					Message: `senior agent may hold read role "reports-read"`, Policy: "p, group:reporting, reports-read, read, intern, allow", PolicyVersion: policyVersion}},
		},
		{
			name:   "principal credentials have a use limit",
			caller: ptr(agent(reporter, authz.Principal, "reports-read")),
			role:   "reports-read",
			plan: &wantPlan{level: authz.Principal, ttl: 5 * time.Minute, maxUses: 100, chain: []string{reporter}, node: "agent:" + reporter,
				reasons: decide.Reasons{Level: "principal", Chain: reporter, Reason: "allowed", Rule: "principal: read allowed",
					Message: `principal agent may hold read role "reports-read"`, Policy: "p, group:reporting, reports-read, read, intern, allow", PolicyVersion: policyVersion}},
		},
		{
			name:   "pii below senior: level too low",
			caller: ptr(agent(payroll, authz.Junior, "payroll-read")),
			role:   "payroll-read",
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "junior", Chain: payroll, Reason: "level_too_low", PolicyVersion: policyVersion,
				Message: `role "payroll-read" (read, pii data) needs maturity level senior or above; agent ` + payroll + ` is junior`}},
		},
		{
			name:   "no rule for the agent",
			caller: ptr(agent(reporter, authz.Senior, "payroll-read")),
			role:   "payroll-read",
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "senior", Chain: reporter, Reason: "no_policy_match", PolicyVersion: policyVersion,
				Message: `no segmentation rule lets agent ` + reporter + ` hold the read role "payroll-read" at level senior; ask the platform team`}},
		},
		{
			name:   "a deny line wins",
			caller: ptr(agent(writer, authz.Senior, "archive/reports-write")),
			role:   "archive/reports-write",
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "senior", Chain: writer, Reason: "policy_denied", PolicyVersion: policyVersion,
				Policy: "p, group:reporting, archive/*, write, intern, deny", Message: `a segmentation rule denies agent ` + writer + ` the write role "archive/reports-write"`}},
		},
		{
			name:     "no policy loaded",
			caller:   ptr(agent(reporter, authz.Senior, "reports-read")),
			role:     "reports-read",
			noPolicy: true,
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "senior", Chain: reporter, Reason: "no_policy",
				Message: "no segmentation policy is loaded, so the broker denies every request; ask the platform team to set one"}},
		},

		// Under a delegation chain.
		{
			name:      "chain: the credential hangs under the grant",
			caller:    ptr(agent(reporter, authz.Senior, "reports-read", "reports-write")),
			role:      "reports-read",
			grants:    []delegation.Grant{grant("g1", "", writer, reporter, 1, in1h, "reports-read")},
			ancestors: []store.Agent{agent(writer, authz.Senior, "reports-read", "reports-write")},
			plan: &wantPlan{level: authz.Senior, ttl: 15 * time.Minute, chain: []string{writer, reporter}, grantIDs: []string{"g1"},
				levels: []authz.Level{authz.Senior, authz.Senior}, node: "grant:g1",
				reasons: decide.Reasons{Level: "senior", Chain: chainOf(writer, reporter), Reason: "allowed", Rule: "senior: read allowed",
					Message: `senior agent may hold read role "reports-read"`, Policy: "p, group:reporting, reports-read, read, intern, allow", PolicyVersion: policyVersion}},
		},
		{
			// The caller's own manifest has the role, the grant does not:
			// the gate refuses it as outside the narrowed manifest.
			name:      "chain: a role outside the grant",
			caller:    ptr(agent(reporter, authz.Senior, "reports-read", "reports-write")),
			role:      "reports-write",
			grants:    []delegation.Grant{grant("g1", "", writer, reporter, 1, in1h, "reports-read")},
			ancestors: []store.Agent{agent(writer, authz.Senior, "reports-read", "reports-write")},
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "senior", Chain: chainOf(writer, reporter), Reason: "not_in_manifest",
				Message: `role "reports-write" is not in agent ` + reporter + `'s capability manifest`}},
		},
		{
			name:      "chain: a role the delegator does not hold",
			caller:    ptr(agent(reporter, authz.Senior, "reports-read", "reports-write")),
			role:      "reports-write",
			grants:    []delegation.Grant{grant("g1", "", writer, reporter, 1, in1h, "reports-read", "reports-write")},
			ancestors: []store.Agent{agent(writer, authz.Senior, "reports-read")},
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "senior", Chain: chainOf(writer, reporter), Reason: "not_in_manifest",
				Message: `role "reports-write" is not in agent ` + reporter + `'s capability manifest`}},
		},
		{
			name:      "chain: the lowest level decides",
			caller:    ptr(agent(reporter, authz.Senior, "reports-read", "reports-write")),
			role:      "reports-write",
			grants:    []delegation.Grant{grant("g1", "", helper, reporter, 1, in1h, "reports-write")},
			ancestors: []store.Agent{agent(helper, authz.Junior, "reports-write")},
			plan: &wantPlan{level: authz.Junior, ttl: 10 * time.Minute, needsApproval: true, chain: []string{helper, reporter}, grantIDs: []string{"g1"},
				levels: []authz.Level{authz.Junior, authz.Senior}, node: "grant:g1",
				reasons: decide.Reasons{Level: "junior", Chain: chainOf(helper, reporter), Reason: "approval_required", Rule: "junior: write needs human approval",
					Message: `junior agents need a human's approval for write role "reports-write"; the request waits for an approver`,
					Policy:  "p, group:reporting, reports-write, write, junior, allow", PolicyVersion: policyVersion}},
		},
		{
			name:      "chain: a principal ancestor's limits clamp lifetime and uses",
			caller:    ptr(agent(reporter, authz.Senior, "reports-read")),
			role:      "reports-read",
			grants:    []delegation.Grant{grant("g1", "", writer, reporter, 1, in1h, "reports-read")},
			ancestors: []store.Agent{agent(writer, authz.Principal, "reports-read")},
			plan: &wantPlan{level: authz.Senior, ttl: 5 * time.Minute, maxUses: 100, chain: []string{writer, reporter}, grantIDs: []string{"g1"},
				levels: []authz.Level{authz.Principal, authz.Senior}, node: "grant:g1",
				reasons: decide.Reasons{Level: "senior", Chain: chainOf(writer, reporter), Reason: "allowed", Rule: "senior: read allowed",
					Message: `senior agent may hold read role "reports-read"`, Policy: "p, group:reporting, reports-read, read, intern, allow", PolicyVersion: policyVersion}},
		},
		{
			name:   "chain: two hops",
			caller: ptr(agent(reporter, authz.Senior, "reports-read")),
			role:   "reports-read",
			ttl:    time.Minute,
			grants: []delegation.Grant{
				grant("g1", "", writer, helper, 1, in1h, "reports-read", "reports-write"),
				grant("g2", "g1", helper, reporter, 2, in1h, "reports-read"),
			},
			ancestors: []store.Agent{agent(writer, authz.Principal, "reports-read", "reports-write"), agent(helper, authz.Senior, "reports-read")},
			plan: &wantPlan{level: authz.Senior, ttl: time.Minute, maxUses: 100, chain: []string{writer, helper, reporter}, grantIDs: []string{"g1", "g2"},
				levels: []authz.Level{authz.Principal, authz.Senior, authz.Senior}, node: "grant:g2",
				reasons: decide.Reasons{Level: "senior", Chain: chainOf(writer, helper, reporter), Reason: "allowed", Rule: "senior: read allowed",
					Message: `senior agent may hold read role "reports-read"`, Policy: "p, group:reporting, reports-read, read, intern, allow", PolicyVersion: policyVersion}},
		},
		{
			name:      "chain: the grant's expiry clamps the lifetime to whole seconds",
			caller:    ptr(agent(reporter, authz.Senior, "reports-read")),
			role:      "reports-read",
			grants:    []delegation.Grant{grant("g1", "", writer, reporter, 1, in90s, "reports-read")},
			ancestors: []store.Agent{agent(writer, authz.Senior, "reports-read")},
			plan: &wantPlan{level: authz.Senior, ttl: 90 * time.Second, chain: []string{writer, reporter}, grantIDs: []string{"g1"},
				levels: []authz.Level{authz.Senior, authz.Senior}, node: "grant:g1",
				reasons: decide.Reasons{Level: "senior", Chain: chainOf(writer, reporter), Reason: "allowed", Rule: "senior: read allowed",
					Message: `senior agent may hold read role "reports-read"`, Policy: "p, group:reporting, reports-read, read, intern, allow", PolicyVersion: policyVersion}},
		},
		{
			// The reason and message are the expiry's; the policy
			// explanation stays the gate's, which allowed the role: its
			// rule, matched line and version.
			name:      "chain: a grant expiring within a second",
			caller:    ptr(agent(reporter, authz.Senior, "reports-read")),
			role:      "reports-read",
			grants:    []delegation.Grant{grant("g1", "", writer, reporter, 1, inHalfSecond, "reports-read")},
			ancestors: []store.Agent{agent(writer, authz.Senior, "reports-read")},
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "senior", Chain: chainOf(writer, reporter), Reason: "grant",
				Message: "grant g1 expires too soon to issue anything under it", Rule: "senior: read allowed",
				Policy: "p, group:reporting, reports-read, read, intern, allow", PolicyVersion: policyVersion}},
		},
		{
			// The chain's level is the Senior's, but the caller's own
			// level is along the chain too: a Principal keeps its own
			// lifetime and use limits.
			name:      "chain: a principal caller under a senior's grant keeps its own limits",
			caller:    ptr(agent(reporter, authz.Principal, "reports-read")),
			role:      "reports-read",
			grants:    []delegation.Grant{grant("g1", "", writer, reporter, 1, in1h, "reports-read")},
			ancestors: []store.Agent{agent(writer, authz.Senior, "reports-read")},
			plan: &wantPlan{level: authz.Senior, ttl: 5 * time.Minute, maxUses: 100, chain: []string{writer, reporter}, grantIDs: []string{"g1"},
				levels: []authz.Level{authz.Senior, authz.Principal}, node: "grant:g1",
				reasons: decide.Reasons{Level: "senior", Chain: chainOf(writer, reporter), Reason: "allowed", Rule: "senior: read allowed",
					Message: `senior agent may hold read role "reports-read"`, Policy: "p, group:reporting, reports-read, read, intern, allow", PolicyVersion: policyVersion}},
		},
		{
			// An approval request is clamped like an issuance: the
			// approver sees what would be issued.
			name:      "chain: a junior write's approval request keeps within a principal delegator's limits",
			caller:    ptr(agent(reporter, authz.Junior, "reports-read", "reports-write")),
			role:      "reports-write",
			grants:    []delegation.Grant{grant("g1", "", writer, reporter, 1, in1h, "reports-write")},
			ancestors: []store.Agent{agent(writer, authz.Principal, "reports-write")},
			plan: &wantPlan{level: authz.Junior, ttl: 5 * time.Minute, maxUses: 100, needsApproval: true, chain: []string{writer, reporter}, grantIDs: []string{"g1"},
				levels: []authz.Level{authz.Principal, authz.Junior}, node: "grant:g1",
				reasons: decide.Reasons{Level: "junior", Chain: chainOf(writer, reporter), Reason: "approval_required", Rule: "junior: write needs human approval",
					Message: `junior agents need a human's approval for write role "reports-write"; the request waits for an approver`,
					Policy:  "p, group:reporting, reports-write, write, junior, allow", PolicyVersion: policyVersion}},
		},
		{
			name:      "chain: a junior write's approval request ends with the grant",
			caller:    ptr(agent(reporter, authz.Junior, "reports-read", "reports-write")),
			role:      "reports-write",
			grants:    []delegation.Grant{grant("g1", "", writer, reporter, 1, in90s, "reports-write")},
			ancestors: []store.Agent{agent(writer, authz.Senior, "reports-write")},
			plan: &wantPlan{level: authz.Junior, ttl: 90 * time.Second, needsApproval: true, chain: []string{writer, reporter}, grantIDs: []string{"g1"},
				levels: []authz.Level{authz.Senior, authz.Junior}, node: "grant:g1",
				reasons: decide.Reasons{Level: "junior", Chain: chainOf(writer, reporter), Reason: "approval_required", Rule: "junior: write needs human approval",
					Message: `junior agents need a human's approval for write role "reports-write"; the request waits for an approver`,
					Policy:  "p, group:reporting, reports-write, write, junior, allow", PolicyVersion: policyVersion}},
		},
		{
			// No human is asked to approve what could not be issued.
			name:      "chain: a junior write under a grant expiring within a second",
			caller:    ptr(agent(reporter, authz.Junior, "reports-read", "reports-write")),
			role:      "reports-write",
			grants:    []delegation.Grant{grant("g1", "", writer, reporter, 1, inHalfSecond, "reports-write")},
			ancestors: []store.Agent{agent(writer, authz.Senior, "reports-write")},
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "junior", Chain: chainOf(writer, reporter), Reason: "grant",
				Message: "grant g1 expires too soon to issue anything under it", Rule: "junior: write needs human approval",
				Policy: "p, group:reporting, reports-write, write, junior, allow", PolicyVersion: policyVersion}},
		},
		{
			name:      "chain: a delegator the policy does not allow the role",
			caller:    ptr(agent(reporter, authz.Senior, "reports-read")),
			role:      "reports-read",
			grants:    []delegation.Grant{grant("g1", "", outsider, reporter, 1, in1h, "reports-read")},
			ancestors: []store.Agent{agent(outsider, authz.Senior, "reports-read")},
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "senior", Chain: chainOf(outsider, reporter), Reason: "no_policy_match", PolicyVersion: policyVersion,
				Message: `delegator ` + outsider + ` may not hold role "reports-read" itself, so it cannot pass it on: ` +
					`no segmentation rule lets agent ` + outsider + ` hold the read role "reports-read" at level senior; ask the platform team`}},
		},
		{
			name:      "chain: a delegator a deny line covers",
			caller:    ptr(agent(reporter, authz.Senior, "reports-read")),
			role:      "reports-read",
			grants:    []delegation.Grant{grant("g1", "", outsider, reporter, 1, in1h, "reports-read")},
			ancestors: []store.Agent{agent(outsider, authz.Senior, "reports-read")},
			policy:    w.open,
			refusal: &wantRefusal{reasons: decide.Reasons{Level: "senior", Chain: chainOf(outsider, reporter), Reason: "policy_denied", PolicyVersion: policyVersion + 1,
				Policy: openDenyLine, Message: `delegator ` + outsider + ` may not hold role "reports-read" itself, so it cannot pass it on: ` +
					`a segmentation rule denies agent ` + outsider + ` the read role "reports-read"`}},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := decide.Request{Caller: reporter, Role: w.role(t, tt.role), TTL: tt.ttl, ApprovalID: tt.approval,
				Purpose: "weekly report", Justification: "the board asked"}
			if tt.caller != nil {
				req.Caller = tt.caller.ID
			} else {
				req.Caller = stranger
			}
			if n := len(tt.grants); n > 0 {
				req.GrantID = tt.grants[n-1].ID
			}
			why := decide.NewReasons("d-1", "r-1", req)
			auth := decide.Own(req.Caller, tt.caller)
			if len(tt.grants) > 0 {
				var ref *decide.Refusal
				auth, ref = decide.Attenuate(why, auth, decide.Principal(*tt.caller, w.roles, w.gate), tt.grants, w.ancestorsOf(tt.ancestors...), now)
				if ref != nil {
					t.Fatalf("Attenuate: %v", ref)
				}
			}
			why.Of(auth)
			pol := w.policy
			switch {
			case tt.noPolicy:
				pol = nil
			case tt.policy != nil:
				pol = tt.policy
			}
			plan, ref := decide.Decide(decide.Input{Gate: w.gate, Policy: pol, Request: req, Authority: auth, Now: now}, why)

			base := baseReasons(req)
			if tt.refusal != nil {
				want := *tt.refusal
				want.outcome, want.auditKind, want.kind = decide.Denied, "credential_denied", fault.Denied
				want.err = want.reasons.Message + " (decision d-1)"
				// Every refusal here passed the gate, which explained it.
				want.version = "0"
				if want.reasons.PolicyVersion != 0 {
					want.version = uintString(want.reasons.PolicyVersion)
				}
				want.reasons = merge(base, want.reasons)
				want.reasons.Decision = "deny"
				checkRefusal(t, ref, want)
				if !reflect.DeepEqual(plan, decide.Plan{}) {
					t.Errorf("a refusal came with a plan: %+v", plan)
				}
				return
			}
			if ref != nil {
				t.Fatalf("Decide refused: %v (reasons %+v)", ref, ref.Reasons)
			}
			want := *tt.plan
			want.reasons = merge(base, want.reasons)
			want.version = uintString(want.reasons.PolicyVersion)
			checkPlan(t, req, plan, want)
		})
	}
}

// TestDecideChainLimits runs a caller under a delegator's grant (a Senior
// under a Principal unless a case says otherwise) with level limits
// tightened through the configuration: the strictest lifetime and use
// limit of the chain's level and of every level along the chain, the
// delegator's and the caller's own, applies.
func TestDecideChainLimits(t *testing.T) {
	w := newWorld(t)
	grants := []delegation.Grant{grant("g1", "", writer, reporter, 1, now.Add(time.Hour), "reports-read")}
	for _, tt := range []struct {
		name string
		// self and delegator are the levels of the caller and the
		// delegator: Senior and Principal if unset.
		self, delegator authz.Level
		limits          config.LimitsConfig
		ttl             time.Duration
		maxUses         int
	}{
		{name: "defaults: the principal's", ttl: 5 * time.Minute, maxUses: 100},
		{
			name:   "the chain level's fewer uses are kept",
			limits: config.LimitsConfig{MaxUses: map[string]int{"senior": 50}},
			ttl:    5 * time.Minute, maxUses: 50,
		},
		{
			name:   "the ancestor's fewer uses and shorter lifetime win",
			limits: config.LimitsConfig{MaxUses: map[string]int{"senior": 50, "principal": 20}, MaxTTL: map[string]time.Duration{"principal": 2 * time.Minute}},
			ttl:    2 * time.Minute, maxUses: 20,
		},
		{
			name:   "the chain level's shorter lifetime is kept",
			limits: config.LimitsConfig{MaxTTL: map[string]time.Duration{"senior": time.Minute}},
			ttl:    time.Minute, maxUses: 100,
		},
		{
			name: "a principal caller under a senior: the caller's own defaults",
			self: authz.Principal, delegator: authz.Senior,
			ttl: 5 * time.Minute, maxUses: 100,
		},
		{
			name: "a principal caller under a senior: the caller's own tightened limits",
			self: authz.Principal, delegator: authz.Senior,
			limits: config.LimitsConfig{MaxUses: map[string]int{"principal": 20}, MaxTTL: map[string]time.Duration{"principal": 2 * time.Minute}},
			ttl:    2 * time.Minute, maxUses: 20,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			selfLevel, delegatorLevel := cmp.Or(tt.self, authz.Senior), cmp.Or(tt.delegator, authz.Principal)
			self := agent(reporter, selfLevel, "reports-read")
			ancestors := w.ancestorsOf(agent(writer, delegatorLevel, "reports-read"))
			limits, err := tt.limits.LevelLimits()
			if err != nil {
				t.Fatalf("LevelLimits: %v", err)
			}
			gate, err := authz.NewGate(limits)
			if err != nil {
				t.Fatalf("NewGate: %v", err)
			}
			req := decide.Request{Caller: reporter, Role: w.readersRole, GrantID: "g1"}
			why := decide.NewReasons("d-1", "r-1", req)
			auth, ref := decide.Attenuate(why, decide.Own(reporter, &self), decide.Principal(self, w.roles, gate), grants, ancestors, now)
			if ref != nil {
				t.Fatalf("Attenuate: %v", ref)
			}
			p, ref := decide.Decide(decide.Input{Gate: gate, Policy: w.policy, Request: req, Authority: auth, Now: now}, why)
			if ref != nil {
				t.Fatalf("Decide: %v", ref)
			}
			if p.TTL != tt.ttl || p.MaxUses != tt.maxUses {
				t.Errorf("Plan: TTL %s, %d uses; want %s, %d", p.TTL, p.MaxUses, tt.ttl, tt.maxUses)
			}
		})
	}
}

// TestDecideEmptyChain: an Authority without a chain (not built by Own or
// Attenuate) is the caller's own: the caller is the chain, and Decide
// neither panics nor changes its input.
func TestDecideEmptyChain(t *testing.T) {
	w := newWorld(t)
	req := decide.Request{Caller: reporter, Role: w.readersRole}
	why := decide.NewReasons("d-1", "r-1", req)

	t.Run("registered caller", func(t *testing.T) {
		auth := decide.Authority{Agent: &authz.Agent{ID: reporter, Level: authz.Senior, Active: true, Roles: []string{"reports-read"}}}
		p, ref := decide.Decide(decide.Input{Gate: w.gate, Policy: w.policy, Request: req, Authority: auth, Now: now}, why)
		if ref != nil {
			t.Fatalf("Decide: %v", ref)
		}
		checkPlan(t, req, p, wantPlan{level: authz.Senior, ttl: 15 * time.Minute, chain: []string{reporter}, node: "agent:" + reporter,
			reasons: merge(baseReasons(req), decide.Reasons{Reason: "allowed", Rule: "senior: read allowed",
				Message: `senior agent may hold read role "reports-read"`, Policy: "p, group:reporting, reports-read, read, intern, allow", PolicyVersion: policyVersion}),
			version: uintString(policyVersion)})
		if auth.Chain != nil {
			t.Errorf("Decide changed its input's chain: %q", auth.Chain)
		}
	})
	t.Run("unregistered caller", func(t *testing.T) {
		_, ref := decide.Decide(decide.Input{Gate: w.gate, Policy: w.policy, Request: req, Now: now}, why)
		const msg = "caller is not a registered agent; ask the platform team to register its SPIFFE ID"
		want := baseReasons(req)
		want.Decision, want.Reason, want.Message = "deny", "not_registered", msg
		checkRefusal(t, ref, wantRefusal{outcome: decide.Denied, auditKind: "credential_denied", kind: fault.Denied,
			err: msg + " (decision d-1)", reasons: want, version: "0"})
	})
}

// TestAttenuateRefusals covers the chains Attenuate refuses: each is
// denied with reason "grant" and delegation's explanation, leaves the
// caller's own authority as it was, and reads no policy (no version).
func TestAttenuateRefusals(t *testing.T) {
	w := newWorld(t)
	self := agent(reporter, authz.Senior, "reports-read")
	delegator := agent(writer, authz.Senior, "reports-read")
	live := grant("g1", "", writer, reporter, 1, now.Add(time.Hour), "reports-read")
	revoked := live
	revoked.RevokedAt = now.Add(-time.Hour)
	expired := live
	expired.ExpiresAt = now
	toOther := grant("g1", "", writer, helper, 1, now.Add(time.Hour), "reports-read")
	for _, tt := range []struct {
		name      string
		self      store.Agent
		grants    []delegation.Grant
		ancestors []store.Agent
		msg       string
	}{
		{
			name: "revoked grant", self: self, grants: []delegation.Grant{revoked}, ancestors: []store.Agent{delegator},
			msg: "delegation: grant revoked: grant g1 (" + writer + " → " + reporter + ") was revoked at 2026-12-07T11:00:00Z",
		},
		{
			name: "expired grant", self: self, grants: []delegation.Grant{expired}, ancestors: []store.Agent{delegator},
			msg: "delegation: grant expired: grant g1 (" + writer + " → " + reporter + ") expired at 2026-12-07T12:00:00Z; ask " + writer + " for a new grant",
		},
		{
			name: "killed caller", self: killed(self), grants: []delegation.Grant{live}, ancestors: []store.Agent{delegator},
			msg: "delegation: agent is not active: agent " + reporter + " is deregistered or killed and holds no authority",
		},
		{
			name: "killed delegator", self: self, grants: []delegation.Grant{live}, ancestors: []store.Agent{killed(delegator)},
			msg: "delegation: ancestor is not active: " + writer + ", which gave grant g1, is deregistered or killed; every grant below it is void",
		},
		{
			name: "delegator no longer registered", self: self, grants: []delegation.Grant{live},
			msg: "delegation: ancestor is not active: " + writer + ", which gave grant g1, is no longer registered; every grant below it is void",
		},
		{
			name: "grant to another agent", self: self, grants: []delegation.Grant{toOther}, ancestors: []store.Agent{delegator},
			msg: "delegation: malformed chain: the chain ends with grant g1 to " + helper + ", not to agent " + reporter,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := decide.Request{Caller: reporter, Role: w.readersRole, GrantID: "g1"}
			why := decide.NewReasons("d-1", "r-1", req)
			own := decide.Own(reporter, &tt.self)
			auth, ref := decide.Attenuate(why, own, decide.Principal(tt.self, w.roles, w.gate), tt.grants, w.ancestorsOf(tt.ancestors...), now)
			want := baseReasons(req)
			want.Decision, want.Reason, want.Message = "deny", "grant", tt.msg
			checkRefusal(t, ref, wantRefusal{outcome: decide.Denied, auditKind: "credential_denied", kind: fault.Denied,
				err: tt.msg + " (decision d-1)", reasons: want, version: ""})
			if !reflect.DeepEqual(auth, own) {
				t.Errorf("Attenuate returned %+v on a refusal, want the own authority %+v", auth, own)
			}
		})
	}
}

// TestAttenuateUnregistered: a caller that is not a registered agent
// (Own with no record) acts under no grant. Attenuate refuses it, without
// panicking and before looking at the chain, and leaves its authority as
// it was.
func TestAttenuateUnregistered(t *testing.T) {
	w := newWorld(t)
	req := decide.Request{Caller: stranger, Role: w.readersRole, GrantID: "g1"}
	why := decide.NewReasons("d-1", "r-1", req)
	own := decide.Own(stranger, nil)
	grants := []delegation.Grant{grant("g1", "", writer, stranger, 1, now.Add(time.Hour), "reports-read")}
	auth, ref := decide.Attenuate(why, own, delegation.Agent{ID: stranger}, grants,
		w.ancestorsOf(agent(writer, authz.Senior, "reports-read")), now)
	const msg = "only a registered agent acts under a grant"
	want := baseReasons(req)
	want.Decision, want.Reason, want.Message = "deny", "not_registered", msg
	checkRefusal(t, ref, wantRefusal{outcome: decide.Denied, auditKind: "credential_denied", kind: fault.Denied,
		err: msg + " (decision d-1)", reasons: want, version: ""})
	if !reflect.DeepEqual(auth, own) {
		t.Errorf("Attenuate returned %+v on a refusal, want the own authority %+v", auth, own)
	}
	if ref != nil {
		for _, k := range []string{"rule", "policy", "policy_version"} {
			if v, ok := ref.Reasons.Detail()[k]; ok {
				t.Errorf("Detail()[%q] = %q; no policy was read", k, v)
			}
		}
	}
}

func TestRefusals(t *testing.T) {
	w := newWorld(t)
	req := decide.Request{Caller: reporter, Role: w.readersRole, GrantID: "g1", ApprovalID: "ap-1", Purpose: "weekly report"}
	cause := errors.New("vault: 503 service unavailable")
	limited := fault.Limited("rate", 2*time.Second, "agent %s exceeded its request rate; retry in %s", reporter, 2*time.Second)
	for _, tt := range []struct {
		name string
		ref  func(decide.Reasons) *decide.Refusal
		want wantRefusal
		// cause is an error the refusal must wrap.
		cause error
	}{
		{
			// Deny takes d's reason and message only: the rule, the
			// matched line and the version are the gate's to explain, and
			// fresh reasons have none.
			name: "deny",
			ref: func(why decide.Reasons) *decide.Refusal {
				return decide.Deny(why, authz.Decision{Reason: decide.ReasonAnomaly, Message: "request refused: high behaviour anomaly (new role)",
					Rule: "r", Matched: "m", PolicyVersion: 3})
			},
			want: wantRefusal{outcome: decide.Denied, auditKind: "credential_denied", kind: fault.Denied,
				err:     "request refused: high behaviour anomaly (new role) (decision d-1)",
				reasons: decide.Reasons{Decision: "deny", Reason: "anomaly", Message: "request refused: high behaviour anomaly (new role)"},
				version: ""},
		},
		{
			name: "deny revoked",
			ref: func(why decide.Reasons) *decide.Refusal {
				return decide.Deny(why, authz.Decision{Reason: decide.ReasonRevoked, Message: "the lineage this credential belongs to was revoked"})
			},
			want: wantRefusal{outcome: decide.Denied, auditKind: "credential_denied", kind: fault.Denied,
				err:     "the lineage this credential belongs to was revoked (decision d-1)",
				reasons: decide.Reasons{Decision: "deny", Reason: "revoked", Message: "the lineage this credential belongs to was revoked"},
				version: ""},
		},
		{
			name: "limit",
			ref:  func(why decide.Reasons) *decide.Refusal { return decide.Limit(why, limited) },
			want: wantRefusal{outcome: decide.Limited, auditKind: "credential_limited", kind: fault.Exhausted,
				err:     "agent " + reporter + " exceeded its request rate; retry in 2s",
				reasons: decide.Reasons{Decision: "limited", Limit: "rate", Message: "agent " + reporter + " exceeded its request rate; retry in 2s"}},
		},
		{
			name: "fail",
			ref: func(why decide.Reasons) *decide.Refusal {
				return decide.Fail(why, "vault_unavailable", "Vault did not issue the credential; nothing was issued", fault.Wrap(fault.Unavailable, cause))
			},
			want: wantRefusal{outcome: decide.Failed, auditKind: "credential_failed", kind: fault.Unavailable,
				err:     "vault: 503 service unavailable",
				reasons: decide.Reasons{Decision: "error", Reason: "vault_unavailable", Message: "Vault did not issue the credential; nothing was issued"}},
			cause: cause,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			why := decide.NewReasons("d-1", "r-1", req)
			ref := tt.ref(why)
			want := tt.want
			want.reasons = merge(baseReasons(req), want.reasons)
			checkRefusal(t, ref, want)
			if tt.cause != nil && !errors.Is(ref, tt.cause) {
				t.Errorf("errors.Is(refusal, cause) = false; the refusal must wrap the issuer's error")
			}
			var asRef *decide.Refusal
			if !errors.As(error(ref), &asRef) || asRef != ref {
				t.Errorf("errors.As(*Refusal) does not find the refusal")
			}
		})
	}

	t.Run("limit keeps retry", func(t *testing.T) {
		ref := decide.Limit(decide.NewReasons("d-1", "r-1", req), limited)
		var fe *fault.Error
		if !errors.As(ref, &fe) || fe != limited || fe.Retry != 2*time.Second {
			t.Errorf("Limit's error = %#v, want the limit's own *fault.Error with its retry", ref.Err)
		}
	})
	t.Run("fail with a plain error", func(t *testing.T) {
		ref := decide.Fail(decide.NewReasons("d-1", "r-1", req), "vault_refused", "Vault refused to issue the credential; nothing was issued", cause)
		if ref.Error() != cause.Error() || !errors.Is(ref, cause) {
			t.Errorf("Fail(cause) = %q, errors.Is %t; want %q, true", ref.Error(), errors.Is(ref, cause), cause)
		}
		if k, ok := fault.KindOf(ref); ok || k != fault.Internal {
			t.Errorf("KindOf(Fail(plain error)) = %s, %t; want internal, false", k, ok)
		}
	})
}

func TestNewReasonsAndOf(t *testing.T) {
	w := newWorld(t)
	req := decide.Request{Caller: writer, Role: w.role(t, "payroll-read"), GrantID: "g9", ApprovalID: "ap-3",
		Purpose: "audit", Justification: "not recorded in the reasons"}
	why := decide.NewReasons("d-7", "r-7", req)
	want := decide.Reasons{DecisionID: "d-7", RequestID: "r-7", Role: "payroll-read", Class: "read", Classification: "pii",
		GrantID: "g9", ApprovalID: "ap-3", Purpose: "audit"}
	if got := exported(why); got != want {
		t.Fatalf("NewReasons = %+v, want %+v", got, want)
	}

	for _, tt := range []struct {
		name string
		auth decide.Authority
		want decide.Reasons
	}{
		{name: "unregistered caller", auth: decide.Own(stranger, nil), want: want},
		{
			name: "own authority",
			auth: decide.Own(writer, ptr(agent(writer, authz.Senior, "payroll-read"))),
			want: merge(want, decide.Reasons{Level: "senior", Chain: writer}),
		},
		{
			name: "chain",
			auth: decide.Authority{Agent: &authz.Agent{ID: writer, Level: authz.Junior}, Chain: []string{payroll, helper, writer}},
			want: merge(want, decide.Reasons{Level: "junior", Chain: payroll + " > " + helper + " > " + writer}),
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := why
			r.Of(tt.auth)
			if got := exported(r); got != tt.want {
				t.Errorf("Of: %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestOwn(t *testing.T) {
	for _, tt := range []struct {
		name   string
		caller string
		agent  *store.Agent
		want   *authz.Agent
	}{
		{name: "unregistered", caller: stranger},
		{
			name: "active", caller: reporter, agent: ptr(agent(reporter, authz.Junior, "reports-read", "reports-write")),
			want: &authz.Agent{ID: reporter, Level: authz.Junior, Active: true, Roles: []string{"reports-read", "reports-write"}},
		},
		{
			name: "deregistered", caller: reporter,
			agent: ptr(deregistered(agent(reporter, authz.Senior, "reports-read"))),
			want:  &authz.Agent{ID: reporter, Level: authz.Senior, Roles: []string{"reports-read"}},
		},
		{
			name: "killed", caller: reporter, agent: ptr(killed(agent(reporter, authz.Principal, "reports-read"))),
			want: &authz.Agent{ID: reporter, Level: authz.Principal, Active: true, Killed: true, Roles: []string{"reports-read"}},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := decide.Own(tt.caller, tt.agent)
			want := decide.Authority{Agent: tt.want, Chain: []string{tt.caller}}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Own = %+v (agent %+v), want %+v (agent %+v)", got, got.Agent, want, want.Agent)
			}
			if got.Lineage() != tt.caller {
				t.Errorf("Lineage() = %q, want the caller %q", got.Lineage(), tt.caller)
			}
		})
	}
}

func TestPrincipal(t *testing.T) {
	w := newWorld(t)
	all := []string{"reports-read", "reports-write", "payroll-read", "archive/reports-write", "undefined-role"}
	for _, tt := range []struct {
		name  string
		agent store.Agent
		want  delegation.Agent
	}{
		{
			// Undefined roles and, for an Intern, writes are dropped.
			name:  "intern holds reads only",
			agent: agent(reporter, authz.Intern, all...),
			want:  delegation.Agent{ID: reporter, Level: delegation.Intern, Active: true, Roles: []string{"reports-read", "payroll-read"}},
		},
		{
			// Junior writes stay: each still needs an approval when used.
			name:  "junior keeps writes",
			agent: agent(reporter, authz.Junior, all...),
			want: delegation.Agent{ID: reporter, Level: delegation.Junior, Active: true,
				Roles: []string{"reports-read", "reports-write", "payroll-read", "archive/reports-write"}},
		},
		{
			name:  "killed agent is not active",
			agent: killed(agent(reporter, authz.Senior, "reports-read")),
			want:  delegation.Agent{ID: reporter, Level: delegation.Senior, Roles: []string{"reports-read"}},
		},
		{
			name:  "deregistered agent is not active",
			agent: deregistered(agent(reporter, authz.Principal, "reports-read")),
			want:  delegation.Agent{ID: reporter, Level: delegation.Principal, Roles: []string{"reports-read"}},
		},
		{
			name:  "nothing held",
			agent: agent(reporter, authz.Senior, "undefined-role"),
			want:  delegation.Agent{ID: reporter, Level: delegation.Senior, Active: true},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := decide.Principal(tt.agent, w.roles, w.gate); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Principal = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestAttenuate checks the authority a chain leaves: the caller's record
// with the chain's level and roles, the chain, its grants and expiry, and
// the levels along it, the delegators' root first and the caller's own
// last.
func TestAttenuate(t *testing.T) {
	w := newWorld(t)
	self := agent(reporter, authz.Principal, "reports-read", "reports-write", "payroll-read")
	grants := []delegation.Grant{
		grant("g1", "", writer, helper, 1, now.Add(2*time.Hour), "reports-read", "reports-write", "payroll-read"),
		grant("g2", "g1", helper, reporter, 2, now.Add(time.Hour), "reports-read", "reports-write"),
	}
	// payroll is known to the broker but not along the chain: its level
	// is not among the chain's.
	ancestors := w.ancestorsOf(agent(writer, authz.Principal, "reports-read", "reports-write"), agent(helper, authz.Junior, "reports-read", "reports-write"),
		agent(payroll, authz.Intern, "payroll-read"))
	req := decide.Request{Caller: reporter, Role: w.readersRole, GrantID: "g2"}
	own := decide.Own(reporter, &self)
	auth, ref := decide.Attenuate(decide.NewReasons("d-1", "r-1", req), own, decide.Principal(self, w.roles, w.gate), grants, ancestors, now)
	if ref != nil {
		t.Fatalf("Attenuate: %v", ref)
	}
	want := decide.Authority{
		Agent:    &authz.Agent{ID: reporter, Level: authz.Junior, Active: true, Roles: []string{"reports-read", "reports-write"}},
		Chain:    []string{writer, helper, reporter},
		GrantIDs: []string{"g1", "g2"},
		NotAfter: now.Add(time.Hour),
		Levels:   []authz.Level{authz.Principal, authz.Junior, authz.Principal},
	}
	if !reflect.DeepEqual(auth, want) {
		t.Errorf("Attenuate = %+v (agent %+v), want %+v (agent %+v)", auth, auth.Agent, want, want.Agent)
	}
	// The levels follow the grants, not the ancestors map's order: the
	// same chain gives the same levels every time.
	for range 20 {
		again, ref := decide.Attenuate(decide.NewReasons("d-1", "r-1", req), own, decide.Principal(self, w.roles, w.gate), grants, ancestors, now)
		if ref != nil || !slices.Equal(again.Levels, want.Levels) {
			t.Fatalf("Attenuate again: levels %v, %v; want %v", again.Levels, ref, want.Levels)
		}
	}
	if auth.Lineage() != writer {
		t.Errorf("Lineage() = %q, want the root %q", auth.Lineage(), writer)
	}
	// The caller's own record is not touched.
	if own.Agent.Level != authz.Principal || len(own.Agent.Roles) != 3 {
		t.Errorf("Attenuate changed the own authority's agent: %+v", own.Agent)
	}
}

func TestReasonsDetail(t *testing.T) {
	w := newWorld(t)
	req := decide.Request{Caller: reporter, Role: w.readersRole, Purpose: "weekly report"}
	always := map[string]string{
		"decision_id": "d-1", "request_id": "r-1", "role": "reports-read", "class": "read", "classification": "internal",
		"grant_id": "", "approval_id": "", "purpose": "weekly report",
	}
	with := func(kv ...string) map[string]string {
		m := maps.Clone(always)
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	senior := decide.Own(reporter, ptr(agent(reporter, authz.Senior, "reports-read")))
	for _, tt := range []struct {
		name    string
		why     func(decide.Reasons) decide.Reasons
		want    map[string]string
		version string
	}{
		{
			name: "fresh",
			why:  func(r decide.Reasons) decide.Reasons { return r },
			want: always,
		},
		{
			name: "of an agent",
			why:  func(r decide.Reasons) decide.Reasons { r.Of(senior); return r },
			want: with("level", "senior", "chain", reporter),
		},
		{
			name: "killed by the global switch: not explained",
			why: func(r decide.Reasons) decide.Reasons {
				return decide.Admit(r, &store.Kill{At: now}).Reasons
			},
			want: with("decision", "deny", "reason", "killed", "message", "the global kill switch stops every agent (since 2026-12-07T12:00:00Z); only a security operator can release it"),
		},
		{
			name: "limited: not explained",
			why: func(r decide.Reasons) decide.Reasons {
				return decide.Limit(r, fault.Limited("live_per_agent", 0, "too many live credentials")).Reasons
			},
			want: with("decision", "limited", "limit", "live_per_agent", "message", "too many live credentials"),
		},
		{
			// Deny outside the gate explains nothing, whatever d says.
			name: "denied before the gate: not explained",
			why: func(r decide.Reasons) decide.Reasons {
				return decide.Deny(r, authz.Decision{Reason: decide.ReasonGrant, Message: "no", Rule: "r", Matched: "m", PolicyVersion: 3}).Reasons
			},
			want: with("decision", "deny", "reason", "grant", "message", "no"),
		},
		{
			// Explained by the gate, even without a rule or policy: those
			// keys are there, empty.
			name: "denied by the gate without a policy",
			why: func(r decide.Reasons) decide.Reasons {
				r.Of(senior)
				_, ref := decide.Decide(decide.Input{Gate: w.gate, Request: req, Authority: senior, Now: now}, r)
				if ref == nil {
					t.Fatal("Decide without a policy: no refusal")
				}
				return ref.Reasons
			},
			want: with("level", "senior", "chain", reporter, "decision", "deny", "reason", "no_policy",
				"message", "no segmentation policy is loaded, so the broker denies every request; ask the platform team to set one",
				"rule", "", "policy", "", "policy_version", "0"),
			version: "0",
		},
		{
			// A refusal after the gate allowed (the kill switch or a
			// revocation while the request was in flight) keeps the
			// gate's explanation.
			name: "denied after the gate allowed: explained by the gate",
			why: func(r decide.Reasons) decide.Reasons {
				r.Of(senior)
				p, ref := decide.Decide(decide.Input{Gate: w.gate, Policy: w.policy, Request: req, Authority: senior, Now: now}, r)
				if ref != nil {
					t.Fatalf("Decide: %v", ref)
				}
				return decide.Deny(p.Reasons, authz.Decision{Reason: decide.ReasonRevoked, Message: "revoked"}).Reasons
			},
			want: with("level", "senior", "chain", reporter, "decision", "deny", "reason", "revoked", "message", "revoked",
				"rule", "senior: read allowed", "policy", "p, group:reporting, reports-read, read, intern, allow", "policy_version", "7"),
			version: "7",
		},
		{
			name: "planned",
			why: func(r decide.Reasons) decide.Reasons {
				r.Of(senior)
				p, ref := decide.Decide(decide.Input{Gate: w.gate, Policy: w.policy, Request: req, Authority: senior, Now: now}, r)
				if ref != nil {
					t.Fatalf("Decide: %v", ref)
				}
				return p.Reasons
			},
			want: with("level", "senior", "chain", reporter, "reason", "allowed", "message", `senior agent may hold read role "reports-read"`,
				"rule", "senior: read allowed", "policy", "p, group:reporting, reports-read, read, intern, allow", "policy_version", "7"),
			version: "7",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.why(decide.NewReasons("d-1", "r-1", req))
			if got := r.Detail(); !maps.Equal(got, tt.want) {
				t.Errorf("Detail() =\n\t%v\nwant\n\t%v", got, tt.want)
			}
			if got := r.Version(); got != tt.version {
				t.Errorf("Version() = %q, want %q", got, tt.version)
			}
		})
	}
}

func TestPlanNode(t *testing.T) {
	for _, tt := range []struct {
		name string
		req  decide.Request
		want string
	}{
		{name: "own authority", req: decide.Request{Caller: reporter}, want: store.AgentNode(reporter)},
		{name: "under a grant", req: decide.Request{Caller: reporter, GrantID: "g1"}, want: store.GrantNode("g1")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := (decide.Plan{Request: tt.req}).Node(); got != tt.want {
				t.Errorf("Node() = %q, want %q", got, tt.want)
			}
		})
	}
	if store.AgentNode(reporter) != "agent:"+reporter || store.GrantNode("g1") != "grant:g1" {
		t.Errorf("node names changed: %q, %q", store.AgentNode(reporter), store.GrantNode("g1"))
	}
}

// TestDecideIsPure decides the same input twice, and a refusal twice: the
// answers are the same and the input is not changed.
func TestDecideIsPure(t *testing.T) {
	w := newWorld(t)
	self := agent(reporter, authz.Senior, "reports-read", "reports-write")
	grants := []delegation.Grant{grant("g1", "", writer, reporter, 1, now.Add(10*time.Minute), "reports-read", "reports-write")}
	req := decide.Request{Caller: reporter, Role: w.role(t, "reports-write"), GrantID: "g1", TTL: time.Hour}
	why := decide.NewReasons("d-1", "r-1", req)
	auth, ref := decide.Attenuate(why, decide.Own(reporter, &self), decide.Principal(self, w.roles, w.gate), grants,
		w.ancestorsOf(agent(writer, authz.Principal, "reports-read", "reports-write")), now)
	if ref != nil {
		t.Fatalf("Attenuate: %v", ref)
	}
	why.Of(auth)
	for _, tt := range []struct {
		name string
		in   decide.Input
	}{
		{name: "plan", in: decide.Input{Gate: w.gate, Policy: w.policy, Request: req, Authority: auth, Now: now}},
		{name: "refusal", in: decide.Input{Gate: w.gate, Policy: w.policy, Request: req, Authority: auth, Now: now.Add(10 * time.Minute)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := clone(tt.in)
			p1, r1 := decide.Decide(tt.in, why)
			p2, r2 := decide.Decide(tt.in, why)
			if !reflect.DeepEqual(p1, p2) || !reflect.DeepEqual(r1, r2) {
				t.Errorf("Decide twice:\n\t%+v, %v\n\t%+v, %v", p1, r1, p2, r2)
			}
			if !reflect.DeepEqual(tt.in.Authority, before.Authority) || !reflect.DeepEqual(*tt.in.Agent, *before.Agent) {
				t.Errorf("Decide changed its input: %+v, want %+v", tt.in.Authority, before.Authority)
			}
			if tt.name == "plan" && (r1 != nil || p1.TTL != 5*time.Minute || p1.MaxUses != 100 || !p1.Notify) {
				t.Errorf("plan = %+v, %v; want a 5m, 100-use write that notifies", p1, r1)
			}
			if tt.name == "refusal" && (r1 == nil || r1.Reasons.Reason != "grant") {
				t.Errorf("refusal = %v, want the grant's expiry", r1)
			}
		})
	}
	if why != withOf(decide.NewReasons("d-1", "r-1", req), auth) {
		t.Errorf("Decide changed the caller's reasons: %+v", why)
	}
}

// clone copies in's Authority deeply enough to notice a change.
func clone(in decide.Input) decide.Input {
	out := in
	a := *in.Agent
	a.Roles = slices.Clone(a.Roles)
	out.Agent = &a
	out.Chain, out.GrantIDs, out.Levels = slices.Clone(in.Chain), slices.Clone(in.GrantIDs), slices.Clone(in.Levels)
	return out
}

// withOf is r after r.Of(a).
func withOf(r decide.Reasons, a decide.Authority) decide.Reasons {
	r.Of(a)
	return r
}

// merge is base with the non-empty fields of over.
func merge(base, over decide.Reasons) decide.Reasons {
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&base.ApprovalID, over.ApprovalID)
	set(&base.Level, over.Level)
	set(&base.Chain, over.Chain)
	set(&base.Decision, over.Decision)
	set(&base.Reason, over.Reason)
	set(&base.Message, over.Message)
	set(&base.Rule, over.Rule)
	set(&base.Policy, over.Policy)
	set(&base.Limit, over.Limit)
	if over.PolicyVersion != 0 {
		base.PolicyVersion = over.PolicyVersion
	}
	return base
}

func uintString(v uint64) string { return strconv.FormatUint(v, 10) }

func ptr[T any](v T) *T { return &v }
