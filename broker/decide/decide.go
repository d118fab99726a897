// Package decide is the credential decision: from the verified caller, its
// request, its agent record, the delegation chain it acts under and the
// policy in force, to either a Plan (what to issue: policies, lifetime,
// uses, chain, whether a human must approve or be notified) or a Refusal
// (denied, limited, killed, with the reason and the matched rule).
//
// It is pure: it reads only its inputs, changes nothing, and the same
// inputs give the same answer. The stateful checks that sit between its
// stages (rate limits, circuit breakers, the behaviour monitor) belong to
// the caller, which turns their verdicts into Refusals with Limited and
// Denied. A request flows through:
//
//	Admit      the global kill switch (unknown and killed callers are
//	           the gate's to refuse)
//	Attenuate  the authority of a delegation chain: roles intersected,
//	           level the lowest, expiry the earliest (package delegation)
//	Decide     the maturity gate and the segmentation policy, for the
//	           caller and for every delegator above it, then the limits of
//	           every level along the chain (the caller's own included) and
//	           of the chain's expiry
package decide

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/delegation"
)

// ErrChanged is under the error of an issuance whose record was refused
// because the agent (or the segmentation policy) changed after the
// decision: a decision on a record read a moment before another
// replica's change is made again (package agentapi).
var ErrChanged = errors.New("the agent or the policy changed after the decision")

// Reason codes of refusals that do not come from the gate.
const (
	ReasonGrant   authz.Reason = "grant"
	ReasonAnomaly authz.Reason = "anomaly"
	ReasonRevoked authz.Reason = "revoked"
	// ReasonScope: an access token asked for scopes wider than the
	// grants of the chain allow of its role.
	ReasonScope authz.Reason = "scope"
)

// Request is a credential request as the decision sees it.
type Request struct {
	// Caller is the verified SPIFFE ID.
	Caller string
	Role   config.Role
	// TTL is the lifetime asked for; 0 asks for the most allowed.
	TTL        time.Duration
	GrantID    string
	ApprovalID string
	// Purpose and Justification are the caller's free text, already
	// redacted.
	Purpose, Justification string
	// Scopes narrow an access token (a role of kind jwt) to these of its
	// role's scopes; none: all of them.
	Scopes []string
}

// Authority is what the caller may hold: its own, or what a delegation
// chain leaves of it.
type Authority struct {
	// Agent is the caller as the gate sees it, level and roles narrowed by
	// the chain; nil for a caller that is not a registered agent.
	Agent *authz.Agent
	// Chain is the agents the authority passed through, root first, the
	// caller last; GrantIDs the grants along it.
	Chain    []string
	GrantIDs []string
	// NotAfter is the chain's earliest expiry (zero: no chain).
	NotAfter time.Time
	// Levels are the levels of the agents along a chain, the delegators
	// above the caller and the caller itself, root first: a credential
	// issued under the chain keeps within the limits of every one of them.
	// Empty without a chain.
	Levels []authz.Level
	// GrantScopes are, for each access-token role the chain's grants
	// narrow, the scopes they allow of it (delegation.Authority.Scopes).
	GrantScopes map[string][]string
}

// Lineage is the agent whose authority the credential rests on.
func (a Authority) Lineage() string { return a.Chain[0] }

// Plan is what to issue.
type Plan struct {
	Request
	Level    authz.Level
	Policies []string
	TTL      time.Duration
	// MaxUses is the token's use limit (0: none).
	MaxUses int
	// Notify asks for a notification of the issuance (Senior writes);
	// NeedsApproval for a human's approval first (Junior writes).
	Notify, NeedsApproval bool
	Authority
	Reasons Reasons
}

// Node is the lineage node the credential hangs under in Vault: the
// grant's, or the agent's own.
func (p Plan) Node() string {
	if p.GrantID != "" {
		return store.GrantNode(p.GrantID)
	}
	return store.AgentNode(p.Caller)
}

// Outcome is how a refusal is recorded.
type Outcome string

// Outcomes of a refusal: the audit record's decision.
const (
	Denied  Outcome = "deny"
	Limited Outcome = "limited"
	Failed  Outcome = "error"
)

// Refusal is a request the broker will not serve. It is an error that
// wraps what the caller is told.
type Refusal struct {
	Outcome Outcome
	Reasons Reasons
	// Err is the caller's answer: a *fault.Error, or the issuer's error.
	Err error
}

func (r *Refusal) Error() string { return r.Err.Error() }
func (r *Refusal) Unwrap() error { return r.Err }

// AuditKind is the kind of the refusal's audit record.
func (r *Refusal) AuditKind() string {
	switch r.Outcome {
	case Limited:
		return "credential_limited"
	case Failed:
		return "credential_failed"
	}
	return "credential_denied"
}

// Deny is a refusal for d's reason; the caller is told its message and
// the decision's id. The policy explanation in why (rule, matched line,
// version) is the gate's, if the gate was asked; Deny does not change it.
func Deny(why Reasons, d authz.Decision) *Refusal {
	why.Reason, why.Message = string(d.Reason), d.Message
	why.Decision = string(Denied)
	return &Refusal{Outcome: Denied, Reasons: why, Err: &fault.Error{Kind: fault.Denied, Msg: fmt.Sprintf("%s (decision %s)", d.Message, why.DecisionID)}}
}

// Limit is a refusal by a limit the caller reached (rate, live
// credentials, an open circuit breaker).
func Limit(why Reasons, f *fault.Error) *Refusal {
	why.Limit, why.Message, why.Decision = f.Limit, f.Msg, string(Limited)
	return &Refusal{Outcome: Limited, Reasons: why, Err: f}
}

// Fail is an allowed request that was not served because issuing failed:
// reason says why (vault_unavailable, vault_refused), and err is the
// caller's answer.
func Fail(why Reasons, reason, message string, err error) *Refusal {
	why.Reason, why.Message, why.Decision = reason, message, string(Failed)
	return &Refusal{Outcome: Failed, Reasons: why, Err: err}
}

// Admit refuses what no policy may allow: the global kill switch holds
// every agent.
func Admit(why Reasons, globalKill *store.Kill) *Refusal {
	if globalKill == nil {
		return nil
	}
	msg := KillSwitchMessage(globalKill)
	why.Reason, why.Message, why.Decision = string(authz.Killed), msg, string(Denied)
	return &Refusal{Outcome: Denied, Reasons: why, Err: &fault.Error{Kind: fault.Denied, Msg: msg}}
}

// KillSwitchMessage is what agents hear while the global switch holds.
func KillSwitchMessage(k *store.Kill) string {
	return fmt.Sprintf("the global kill switch stops every agent (since %s); only a security operator can release it", k.At.Format(time.RFC3339))
}

// Principal is agent a as delegation sees it: its manifest narrowed to
// the roles its level may hold (Junior writes included: each still needs
// a human's approval when used).
func Principal(a store.Agent, roles map[string]config.Role, gate *authz.Gate) delegation.Agent {
	var held []string
	for _, r := range a.Roles {
		if role, ok := roles[r]; ok && gate.LevelMayRequest(a.Level, role.Authz().Class) {
			held = append(held, r)
		}
	}
	return delegation.Agent{ID: a.ID, Level: delegation.Level(a.Level), Active: a.Usable(), Roles: held}
}

// Own is the authority of a caller acting on its own: its agent record as
// it is (nil for an unregistered caller).
func Own(caller string, a *store.Agent) Authority {
	au := Authority{Chain: []string{caller}}
	if a != nil {
		au.Agent = a.Subject()
	}
	return au
}

// Attenuate narrows own, the caller's own authority, to what the chain of
// grants leaves of it, given the chain's delegators as they are now. Only
// a registered caller acts under a grant: own.Agent must be set.
func Attenuate(why Reasons, own Authority, self delegation.Agent, grants []delegation.Grant, ancestors map[string]delegation.Agent, now time.Time) (Authority, *Refusal) {
	if own.Agent == nil {
		return own, Deny(why, authz.Decision{Reason: authz.NotRegistered, Message: "only a registered agent acts under a grant"})
	}
	auth, err := delegation.Effective(self, grants, ancestors, now)
	if err != nil {
		return own, Deny(why, authz.Decision{Reason: ReasonGrant, Message: err.Error()})
	}
	agent := *own.Agent
	agent.Level, agent.Roles = authz.Level(auth.Level), auth.Roles
	out := Authority{Agent: &agent, Chain: auth.Chain, GrantIDs: auth.GrantIDs, NotAfter: auth.ExpiresAt, GrantScopes: auth.Scopes}
	for _, g := range grants {
		if an, ok := ancestors[g.Delegator]; ok {
			out.Levels = append(out.Levels, authz.Level(an.Level))
		}
	}
	out.Levels = append(out.Levels, own.Agent.Level)
	return out, nil
}

// Input is what Decide reads.
type Input struct {
	Gate   *authz.Gate
	Policy *authz.Policy
	Request
	Authority
	Now time.Time
}

// Decide runs the gate for the caller and for every delegator above it
// (a delegation never launders authority), then clamps the lifetime and
// uses to what every level along the chain and the chain's expiry allow.
func Decide(in Input, why Reasons) (Plan, *Refusal) {
	if len(in.Chain) == 0 {
		in.Chain = []string{in.Caller}
	}
	role := in.Role.Authz()
	d := in.Gate.Decide(in.Policy, in.Agent, role, in.Request.TTL)
	for i, up := range in.Chain[:len(in.Chain)-1] {
		if d.Outcome == authz.Deny {
			break
		}
		d = delegatorDecision(in, role, up, i, d)
	}
	why.explain(d)
	if d.Outcome == authz.Deny {
		return Plan{}, Deny(why, d)
	}
	p := Plan{Request: in.Request, Level: in.Agent.Level, Policies: in.Role.Policies, TTL: d.TTL, MaxUses: d.MaxUses, Notify: d.Notify,
		NeedsApproval: d.Outcome == authz.NeedsApproval && in.ApprovalID == "", Authority: in.Authority, Reasons: why}
	if allowed, narrowed := in.GrantScopes[in.Role.Name]; narrowed {
		var refused *authz.Decision
		// What the grants allow, of what the role has now (a scope taken
		// from the role since is gone under the grants too).
		allowed = slices.DeleteFunc(slices.Clone(allowed), func(sc string) bool { return !slices.Contains(in.Role.Scopes, sc) })
		if p.Request.Scopes, refused = narrowScopes(in.Request.Scopes, allowed, in.Role.Name, in.GrantID); refused != nil {
			// The gate's explanation (rule, policy line) stays: Deny
			// sets the reason and message only.
			return Plan{}, Deny(why, *refused)
		}
	}
	// A delegated credential never exceeds what any agent along the chain
	// could hold itself: the strictest lifetime and use limits apply. An
	// approval request is clamped too, so the approver sees what would be
	// issued.
	for _, lvl := range in.Levels {
		lim := in.Gate.Limits(lvl)
		p.TTL = min(p.TTL, lim.MaxTTL)
		if lim.MaxUses > 0 && (p.MaxUses == 0 || lim.MaxUses < p.MaxUses) {
			p.MaxUses = lim.MaxUses
		}
	}
	if !in.NotAfter.IsZero() {
		p.TTL = min(p.TTL, in.NotAfter.Sub(in.Now).Truncate(time.Second))
		if p.TTL < time.Second {
			return Plan{}, Deny(why, authz.Decision{Reason: ReasonGrant, Message: fmt.Sprintf("grant %s expires too soon to issue anything under it", in.GrantID)})
		}
	}
	return p, nil
}

// narrowScopes are the scopes an access token of role may carry under a
// chain whose grants allow only allowed of it: those asked for if all are
// allowed, all allowed if none is asked for; else the refusal.
func narrowScopes(asked, allowed []string, role, grant string) ([]string, *authz.Decision) {
	if len(asked) == 0 {
		if len(allowed) == 0 {
			return nil, &authz.Decision{Outcome: authz.Deny, Reason: ReasonScope,
				Message: fmt.Sprintf("the grants of the chain under grant %s leave no scope of role %q", grant, role)}
		}
		return allowed, nil
	}
	for _, sc := range asked {
		if !slices.Contains(allowed, sc) {
			return nil, &authz.Decision{Outcome: authz.Deny, Reason: ReasonScope,
				Message: fmt.Sprintf("scope %q of role %q is wider than the grants of the chain under grant %s allow: %s", sc, role, grant, strings.Join(allowed, " "))}
		}
	}
	return asked, nil
}

// delegatorDecision is d unless the delegator up (the i-th agent of the
// chain) may not hold role itself, at the chain's level or at its own: a
// policy line that denies it at its level (a deny for seniors and above,
// say) is not escaped by passing the role to a lower level.
func delegatorDecision(in Input, role authz.Role, up string, i int, d authz.Decision) authz.Decision {
	levels := []authz.Level{in.Agent.Level}
	if len(in.Levels) == len(in.Chain) && in.Levels[i] != in.Agent.Level {
		levels = append(levels, in.Levels[i])
	}
	for _, lvl := range levels {
		ud := in.Gate.Decide(in.Policy, &authz.Agent{ID: up, Level: lvl, Active: true, Roles: in.Agent.Roles}, role, 0)
		if ud.Outcome == authz.Deny {
			ud.Message = fmt.Sprintf("delegator %s may not hold role %q itself, so it cannot pass it on: %s", up, in.Role.Name, ud.Message)
			return ud
		}
	}
	return d
}

// Reasons explain a decision, whatever its outcome: they become the
// detail of its audit record, the credential's record and its trace.
// Free text is redacted before it is put here.
type Reasons struct {
	DecisionID, RequestID        string
	Role, Class, Classification  string
	GrantID, ApprovalID, Purpose string
	Level, Chain                 string
	Decision                     string
	Reason, Message, Rule        string
	Policy                       string
	PolicyVersion                uint64
	explained                    bool
	Limit                        string
}

// NewReasons starts the reasons of decision id for r.
func NewReasons(id, requestID string, r Request) Reasons {
	role := r.Role.Authz()
	return Reasons{DecisionID: id, RequestID: requestID, Role: r.Role.Name, Class: role.Class.String(),
		Classification: role.Classification.String(), GrantID: r.GrantID, ApprovalID: r.ApprovalID, Purpose: r.Purpose}
}

// Of records who the decision is about once the caller is known as an
// agent: its level and chain.
func (r *Reasons) Of(a Authority) {
	if a.Agent != nil {
		r.Level, r.Chain = a.Agent.Level.String(), strings.Join(a.Chain, " > ")
	}
}

func (r *Reasons) explain(d authz.Decision) {
	r.Reason, r.Message, r.Rule, r.Policy, r.PolicyVersion = string(d.Reason), d.Message, d.Rule, d.Matched, d.PolicyVersion
	r.explained = true
}

// Version is the version of the policy the decision read ("" if none
// was read).
func (r Reasons) Version() string {
	if !r.explained {
		return ""
	}
	return strconv.FormatUint(r.PolicyVersion, 10)
}

// Detail is the reasons as an audit record's detail.
func (r Reasons) Detail() map[string]string {
	m := map[string]string{
		"decision_id": r.DecisionID, "request_id": r.RequestID, "role": r.Role, "class": r.Class,
		"classification": r.Classification, "grant_id": r.GrantID, "approval_id": r.ApprovalID, "purpose": r.Purpose,
	}
	set := func(k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	set("level", r.Level)
	set("chain", r.Chain)
	set("decision", r.Decision)
	set("limit", r.Limit)
	set("reason", r.Reason)
	set("message", r.Message)
	if r.explained {
		m["rule"], m["policy"], m["policy_version"] = r.Rule, r.Policy, strconv.FormatUint(r.PolicyVersion, 10)
	}
	return m
}
