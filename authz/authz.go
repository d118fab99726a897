// Package authz decides whether an agent may have a credential for a role,
// and explains why.
//
// It owns the maturity levels and role classes of the Agentic Trust Framework
// and the hard invariants no policy file can override: an agent that is not
// registered and active gets nothing, a role outside the agent's capability
// manifest is never issued, and an Intern never gets a write or privileged
// credential. Decisions are data (allow or deny, a stable reason code, a
// message a person can act on, the granted TTL), so the caller can audit and
// report them.
package authz

import (
	"fmt"
	"slices"
	"time"
)

// Level is an agent's maturity level. The zero value is not a level.
type Level int

// The ATF maturity levels, in order of autonomy.
const (
	Intern Level = iota + 1
	Junior
	Senior
	Principal
)

var levelNames = [...]string{Intern: "intern", Junior: "junior", Senior: "senior", Principal: "principal"}

func (l Level) String() string {
	if l.Valid() {
		return levelNames[l]
	}
	return fmt.Sprintf("level(%d)", int(l))
}

// Valid reports whether l is one of the four levels.
func (l Level) Valid() bool { return l >= Intern && l <= Principal }

// ParseLevel parses a level name as written by String.
func ParseLevel(s string) (Level, error) {
	for l := Intern; l <= Principal; l++ {
		if levelNames[l] == s {
			return l, nil
		}
	}
	return 0, fmt.Errorf("authz: unknown level %q (want intern, junior, senior or principal)", s)
}

// Class is what a role lets its holder do.
type Class int

// Role classes, in increasing order of risk.
const (
	Read Class = iota + 1
	Write
	Privileged
)

var classNames = [...]string{Read: "read", Write: "write", Privileged: "privileged"}

func (c Class) String() string {
	if c >= Read && c <= Privileged {
		return classNames[c]
	}
	return fmt.Sprintf("class(%d)", int(c))
}

// ParseClass parses a class name as written by String.
func ParseClass(s string) (Class, error) {
	for c := Read; c <= Privileged; c++ {
		if classNames[c] == s {
			return c, nil
		}
	}
	return 0, fmt.Errorf("authz: unknown role class %q (want read, write or privileged)", s)
}

// LevelLimits is what one maturity level may be issued.
type LevelLimits struct {
	// Classes the level may hold without a human in the loop.
	Classes []Class
	// Approval lists classes the level may hold once a human approves each
	// request.
	Approval []Class
	// Notify lists classes whose every issuance notifies people.
	Notify []Class
	// MaxTTL caps every credential's lifetime.
	MaxTTL time.Duration
	// MaxUses caps how many Vault requests a credential may make; 0 means
	// unlimited within its TTL.
	MaxUses int
}

// DefaultLimits are docs/design.md §4's defaults.
func DefaultLimits() map[Level]LevelLimits {
	return map[Level]LevelLimits{
		Intern:    {Classes: []Class{Read}, MaxTTL: time.Hour},
		Junior:    {Classes: []Class{Read}, Approval: []Class{Write}, MaxTTL: 15 * time.Minute},
		Senior:    {Classes: []Class{Read, Write}, Notify: []Class{Write}, MaxTTL: 15 * time.Minute},
		Principal: {Classes: []Class{Read, Write, Privileged}, MaxTTL: 5 * time.Minute, MaxUses: 100},
	}
}

// Agent is the registry's view of the caller, as far as a decision needs it.
type Agent struct {
	ID     string
	Level  Level
	Active bool
	// Killed: the kill switch holds the agent.
	Killed bool
	// Roles is the agent's capability manifest.
	Roles []string
}

// Role is a credential the broker can issue.
type Role struct {
	Name           string
	Class          Class
	Classification Classification
	MaxTTL         time.Duration
}

// Reason is a stable code for a decision's outcome, for metrics and scripts.
type Reason string

// Decision reasons.
const (
	Allowed          Reason = "allowed"
	ApprovalRequired Reason = "approval_required"
	NotRegistered    Reason = "not_registered"
	NotActive        Reason = "not_active"
	Killed           Reason = "killed"
	InvalidLevel     Reason = "invalid_level"
	NotInManifest    Reason = "not_in_manifest"
	ClassNotAllowed  Reason = "class_not_allowed"
	InvalidRole      Reason = "invalid_role"
	NoPolicy         Reason = "no_policy"
	PolicyError      Reason = "policy_error"
	NoPolicyMatch    Reason = "no_policy_match"
	PolicyDenied     Reason = "policy_denied"
	LevelTooLow      Reason = "level_too_low"
)

// Outcome is what a decision comes to.
type Outcome int

// Outcomes. The zero value denies.
const (
	Deny Outcome = iota
	Allow
	// NeedsApproval: allowed once a human approves this request.
	NeedsApproval
)

func (o Outcome) String() string {
	switch o {
	case Allow:
		return "allow"
	case NeedsApproval:
		return "pending"
	}
	return "deny"
}

// Decision is the outcome of Decide, with why.
type Decision struct {
	Outcome Outcome
	Reason  Reason
	// Message explains the outcome to the requester, without policy
	// internals.
	Message string
	// Matched is the policy line that decided, for the audit trail.
	Matched string
	// Rule is the maturity rule that applied, e.g. "junior: write needs
	// human approval".
	Rule string
	// PolicyVersion is the version of the policy that decided (0: none).
	PolicyVersion uint64
	// TTL and MaxUses size an allowed credential; Notify says its issuance
	// notifies people.
	TTL     time.Duration
	MaxUses int
	Notify  bool
}

// Allowed reports whether the credential may be issued now.
func (d Decision) Allowed() bool { return d.Outcome == Allow }

// Gate applies maturity limits to credential requests. The zero value is not
// usable; build one with NewGate.
type Gate struct {
	limits map[Level]LevelLimits
}

// NewGate returns a gate enforcing limits, which must name every level. A
// limit may tighten the defaults but never lets an Intern hold more than
// read: that invariant is checked here, whatever the configuration says.
func NewGate(limits map[Level]LevelLimits) (*Gate, error) {
	for l := Intern; l <= Principal; l++ {
		lim, ok := limits[l]
		if !ok {
			return nil, fmt.Errorf("authz: no limits for level %s", l)
		}
		if lim.MaxTTL <= 0 {
			return nil, fmt.Errorf("authz: level %s: max TTL must be positive", l)
		}
		if l == Intern && slices.ContainsFunc(slices.Concat(lim.Classes, lim.Approval), func(c Class) bool { return c != Read }) {
			return nil, fmt.Errorf("authz: level intern may hold only read credentials")
		}
	}
	own := make(map[Level]LevelLimits, len(limits))
	for l, lim := range limits {
		lim.Classes = slices.Clone(lim.Classes)
		lim.Approval = slices.Clone(lim.Approval)
		lim.Notify = slices.Clone(lim.Notify)
		own[l] = lim
	}
	return &Gate{limits: own}, nil
}

// Decide says whether agent may have a credential for role, for at most
// requested (0 means as long as allowed), under policy p. A nil agent is an
// unregistered caller; a nil policy denies everything. The hard invariants
// come first and no policy can lift them.
func (g *Gate) Decide(p *Policy, agent *Agent, role Role, requested time.Duration) Decision {
	switch {
	case agent == nil:
		return deny(NotRegistered, "caller is not a registered agent; ask the platform team to register its SPIFFE ID")
	case agent.Killed:
		return deny(Killed, "agent %s is stopped by the kill switch; only a security operator can release it", agent.ID)
	case !agent.Active:
		return deny(NotActive, "agent %s is deregistered", agent.ID)
	case !agent.Level.Valid():
		return deny(InvalidLevel, "agent %s has no valid maturity level", agent.ID)
	case !slices.Contains(agent.Roles, role.Name):
		return deny(NotInManifest, "role %q is not in agent %s's capability manifest", role.Name, agent.ID)
	case role.MaxTTL <= 0 || role.Classification < Public || role.Classification > Secret || role.Class < Read || role.Class > Privileged:
		// Vault reads a zero TTL as "its default", which may be long.
		return deny(InvalidRole, "role %q lacks a positive max TTL, a class or a data classification; fix the roles file", role.Name)
	case agent.Level == Intern && role.Class != Read:
		d := deny(ClassNotAllowed, "intern agents may hold only read credentials (role %q is %s)", role.Name, role.Class)
		d.Rule = "intern: read only (invariant)"
		return d
	case p == nil:
		return deny(NoPolicy, "no segmentation policy is loaded, so the broker denies every request; ask the platform team to set one")
	}
	d := g.consult(p, agent, role)
	if d.Outcome == Deny {
		return d
	}
	lim := g.limits[agent.Level]
	switch {
	case slices.Contains(lim.Classes, role.Class):
		d.Outcome, d.Reason = Allow, Allowed
		d.Message = fmt.Sprintf("%s agent may hold %s role %q", agent.Level, role.Class, role.Name)
		d.Rule = fmt.Sprintf("%s: %s allowed", agent.Level, role.Class)
	case slices.Contains(lim.Approval, role.Class):
		d.Outcome, d.Reason = NeedsApproval, ApprovalRequired
		d.Message = fmt.Sprintf("%s agents need a human's approval for %s role %q; the request waits for an approver", agent.Level, role.Class, role.Name)
		d.Rule = fmt.Sprintf("%s: %s needs human approval", agent.Level, role.Class)
	default:
		d.Outcome, d.Reason = Deny, ClassNotAllowed
		d.Message = fmt.Sprintf("agents at level %s may not hold %s credentials (role %q)", agent.Level, role.Class, role.Name)
		d.Rule = fmt.Sprintf("%s: no %s", agent.Level, role.Class)
		return d
	}
	if slices.Contains(lim.Notify, role.Class) {
		d.Notify = true
		d.Rule += ", notify"
	}
	d.TTL = min(lim.MaxTTL, role.MaxTTL)
	if requested > 0 {
		d.TTL = min(d.TTL, requested)
	}
	d.MaxUses = lim.MaxUses
	return d
}

// consult asks the policy and, on a denial, works out a reason the
// requester can act on: an explicit deny rule, a level too low (the lowest
// level the policy would allow), or no rule at all.
func (g *Gate) consult(p *Policy, agent *Agent, role Role) Decision {
	q := Query{Subject: agent.ID, Role: role.Name, Class: role.Class, Level: agent.Level, Classification: role.Classification}
	v, err := p.Decide(q)
	d := Decision{PolicyVersion: p.Version(), Matched: v.Matched}
	switch {
	case err != nil:
		d.Reason, d.Message = PolicyError, "the segmentation policy could not be evaluated, so the request is denied; the platform team has the details"
		d.Matched = err.Error()
		return d
	case v.Allow:
		d.Outcome = Allow
		return d
	case v.Denied:
		d.Reason, d.Message = PolicyDenied, fmt.Sprintf("a segmentation rule denies agent %s the %s role %q", agent.ID, role.Class, role.Name)
		return d
	}
	for l := agent.Level + 1; l <= Principal; l++ {
		q.Level = l
		if v, err := p.Decide(q); err == nil && v.Allow {
			d.Reason = LevelTooLow
			d.Message = fmt.Sprintf("role %q (%s, %s data) needs maturity level %s or above; agent %s is %s",
				role.Name, role.Class, role.Classification, l, agent.ID, agent.Level)
			return d
		}
	}
	d.Reason = NoPolicyMatch
	d.Message = fmt.Sprintf("no segmentation rule lets agent %s hold the %s role %q at level %s; ask the platform team", agent.ID, role.Class, role.Name, agent.Level)
	return d
}

// Limits returns the limits of level (the zero LevelLimits for an invalid
// level).
func (g *Gate) Limits(level Level) LevelLimits { return g.limits[level] }

// LevelMayHold reports whether an agent at level may hold credentials of
// class at all, whatever its manifest says.
func (g *Gate) LevelMayHold(level Level, class Class) bool {
	// The Intern invariant holds even if a Gate were built around NewGate.
	if !level.Valid() || (level == Intern && class != Read) {
		return false
	}
	return slices.Contains(g.limits[level].Classes, class)
}

// LevelMayRequest reports whether an agent at level may hold credentials
// of class at all, counting classes that need a human's approval.
func (g *Gate) LevelMayRequest(level Level, class Class) bool {
	return g.LevelMayHold(level, class) || (level.Valid() && level != Intern && slices.Contains(g.limits[level].Approval, class))
}

func deny(r Reason, format string, args ...any) Decision {
	return Decision{Reason: r, Message: fmt.Sprintf(format, args...)}
}
