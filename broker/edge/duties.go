package edge

import (
	"context"
	"errors"
	"fmt"

	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/store"
)

// Agents reads the agent registry (*store.Store).
type Agents interface {
	GetAgent(id string) (store.Agent, error)
}

// ActOn keeps duties apart for an act that raises an agent's standing or
// feeds its promotion gates (a sign-off, evidence, a promotion, a release
// from the kill switch): the caller may not be the agent, nor the owner
// named in its record, nor a registered agent at all, whose roles as a
// person would let it vouch for itself or its peers (docs/security.md).
// agent is "" for an act on every agent. Acts that stop or lower an agent
// (kill, demotion, an incident opened) are never refused by this rule.
func ActOn(ctx context.Context, agents Agents, agent string) error {
	caller := Caller(ctx)
	if caller == agent {
		return fault.New(fault.Denied, "%s may not act on its own agent record; another person must", caller)
	}
	if err := NotAnAgent(ctx, agents); err != nil {
		return err
	}
	if agent == "" {
		return nil
	}
	a, err := agents.GetAgent(agent)
	if err != nil {
		// The act itself says what is wrong with the agent.
		return nil
	}
	if Owns(ctx, a.Owner) {
		return fault.New(fault.Denied, "%s owns %s: its promotion evidence, sign-offs and releases must come from someone else", caller, agent)
	}
	return nil
}

// NotAnAgent refuses a caller that is a registered agent an act that
// vouches for agents: agents do not vouch for one another.
func NotAnAgent(ctx context.Context, agents Agents) error {
	caller := Caller(ctx)
	self, err := agents.GetAgent(caller)
	switch {
	case err == nil && self.Status == store.Active:
		return fault.New(fault.Denied, "%s is registered as an agent: an agent does not vouch for, promote or release agents; "+
			"deregister it, or act with a person's own identity", caller)
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("get caller's agent record: %w", err)
	}
	return nil
}
