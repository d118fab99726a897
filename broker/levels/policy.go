package levels

import (
	"errors"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/delegation"
)

// PolicyJudge is what policy p still allows, for a policy change to revoke
// the rest as a demotion does (store.CommitPolicy; docs/security.md, "A
// policy change"):
//
//   - a live grant stays if p still lets its delegator, at its own level,
//     hold every role it passed on: what Delegate checks;
//   - a live credential stays if the decision would still issue it under
//     p: the maturity gate and p for its holder at its level and, under a
//     grant, for every delegator of the chain (decide.Attenuate and
//     decide.Decide, as FetchCredential decides), where a write that needs
//     a human's approval stays only if it was approved.
//
// Agents and grants are read as they are in the change's transaction; the
// decisions are remembered per holder, role, grant and approval, so a
// change costs one decision per distinct credential kind, not per
// credential.
func (l *Levels) PolicyJudge(p *authz.Policy) store.PolicyJudge {
	return &judge{l: l, p: p, now: l.cfg.Now(), agents: map[string]*store.Agent{}, kept: map[keptKey]bool{}}
}

// judge is a PolicyJudge for one policy change.
type judge struct {
	l      *Levels
	p      *authz.Policy
	now    time.Time
	agents map[string]*store.Agent // nil: not registered
	kept   map[keptKey]bool
}

// keptKey is what a credential's decision depends on, besides the agents
// and grants it reads.
type keptKey struct {
	agent, role, grant string
	approved           bool
}

// agent is the record of id (false: not registered), read once.
func (j *judge) agent(r store.Reader, id string) (store.Agent, bool, error) {
	if a, ok := j.agents[id]; ok {
		if a == nil {
			return store.Agent{}, false, nil
		}
		return *a, true, nil
	}
	a, err := r.Agent(id)
	if errors.Is(err, store.ErrNotFound) {
		j.agents[id] = nil
		return a, false, nil
	}
	if err != nil {
		return a, false, err
	}
	j.agents[id] = &a
	return a, true, nil
}

// KeepGrant keeps g unless p denies its delegator a role it passed on.
// A grant whose delegator is gone went with it (deregistration revokes
// its lineage); it is not the policy's to judge.
func (j *judge) KeepGrant(g delegation.Grant, r store.Reader) (bool, error) {
	a, ok, err := j.agent(r, g.Delegator)
	if err != nil || !ok {
		return true, err
	}
	self := a.Subject()
	for _, name := range g.Roles {
		role, ok := j.l.cfg.Roles[name]
		if !ok {
			continue // outside every manifest: delegation's rules refuse its use
		}
		if j.l.cfg.Gate.Decide(j.p, self, role.Authz(), 0).Outcome == authz.Deny {
			return false, nil
		}
	}
	return true, nil
}

// KeepCredential keeps c if the decision would still issue it under p.
func (j *judge) KeepCredential(c store.Credential, r store.Reader) (bool, error) {
	k := keptKey{agent: c.AgentID, role: c.Role, grant: c.GrantID, approved: c.ApprovalID != ""}
	if keep, ok := j.kept[k]; ok {
		return keep, nil
	}
	keep, err := j.decide(c, r)
	if err != nil {
		return false, err
	}
	j.kept[k] = keep
	return keep, nil
}

// decide runs the credential decision for c's holder, role and grant
// under p.
func (j *judge) decide(c store.Credential, r store.Reader) (bool, error) {
	role, ok := j.l.cfg.Roles[c.Role]
	if !ok {
		return false, nil // a role no longer defined is issued to no one
	}
	a, ok, err := j.agent(r, c.AgentID)
	if err != nil || !ok {
		return false, err
	}
	auth := decide.Own(c.AgentID, &a)
	if c.GrantID != "" {
		grants, err := r.Chain(c.GrantID)
		if errors.Is(err, store.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		ancestors := make(map[string]delegation.Agent, len(grants))
		for _, g := range grants {
			up, ok, err := j.agent(r, g.Delegator)
			if err != nil {
				return false, err
			}
			if ok {
				ancestors[g.Delegator] = decide.Principal(up, j.l.cfg.Roles, j.l.cfg.Gate)
			}
		}
		var ref *decide.Refusal
		if auth, ref = decide.Attenuate(decide.Reasons{}, auth, decide.Principal(a, j.l.cfg.Roles, j.l.cfg.Gate), grants, ancestors, j.now); ref != nil {
			return false, nil
		}
	}
	req := decide.Request{Caller: c.AgentID, Role: role, GrantID: c.GrantID, ApprovalID: c.ApprovalID}
	plan, ref := decide.Decide(decide.Input{Gate: j.l.cfg.Gate, Policy: j.p, Request: req, Authority: auth, Now: j.now}, decide.Reasons{})
	return ref == nil && !plan.NeedsApproval, nil
}
