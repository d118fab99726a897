// Package levels changes agents' maturity levels (promotion, demotion,
// rollback) and makes every change of an agent take effect at once: what
// its level and manifest no longer back, credentials and the lineages of
// grants it gave, is revoked before the change is answered.
package levels

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/revoke"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/delegation"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Notifier tells people what happened.
type Notifier interface {
	Notify(ctx context.Context, kind, agent, role, summary string, detail map[string]string)
}

// Config is what Levels needs.
type Config struct {
	Store    *store.Store
	Revoker  *revoke.Revoker
	Policy   interface{ Current() *authz.Policy }
	Gate     *authz.Gate
	Roles    map[string]config.Role
	Rules    delegation.Rules
	Notifier Notifier
	Now      func() time.Time
}

// Levels changes levels.
type Levels struct{ cfg Config }

// New returns Levels.
func New(cfg Config) *Levels { return &Levels{cfg: cfg} }

func (l *Levels) db(ctx context.Context) *store.Store {
	return l.cfg.Store.ForRequest(edge.RequestIDs(ctx))
}

// Demote lowers agent by steps levels (not below Intern) and at once
// revokes what the new level does not back: credentials and grants.
func (l *Levels) Demote(ctx context.Context, id, actor, reason string, steps int) (store.Agent, *brokerv1.RevocationSummary, error) {
	a, err := l.cfg.Store.GetAgent(id)
	if err != nil {
		return a, nil, fmt.Errorf("get agent: %w", err)
	}
	if a.Level == authz.Intern {
		return a, nil, fault.New(fault.Precondition, "%s is an intern already; stop it with the kill switch instead", id)
	}
	to := max(a.Level-authz.Level(steps), authz.Intern)
	return l.Change(ctx, a, actor, store.ActionDemote, reason, to)
}

// levelChangeEvents names the notification of each level change.
var levelChangeEvents = map[string]string{
	store.ActionPromote:  "agent_promoted",
	store.ActionDemote:   "agent_demoted",
	store.ActionRollback: "agent_level_rolled_back",
}

// Change sets the agent's level and revokes what it no longer backs.
func (l *Levels) Change(ctx context.Context, a store.Agent, actor, action, reason string, to authz.Level) (store.Agent, *brokerv1.RevocationSummary, error) {
	from := a.Level
	a, err := l.db(ctx).SetLevel(a.ID, actor, action, reason, to, 0)
	if err != nil {
		return a, nil, fmt.Errorf("%s: %w", action, err)
	}
	start := time.Now()
	sum, err := l.RevokeUnbacked(ctx, a, actor)
	if err != nil {
		return a, nil, err
	}
	edge.Logger(ctx).Warn("agent level changed", slog.String(edge.LogAgent, a.ID), slog.String("action", action),
		slog.String("from", from.String()), slog.String("to", to.String()), slog.Duration(edge.LogDuration, time.Since(start)))
	l.cfg.Notifier.Notify(ctx, levelChangeEvents[action], a.ID, "", fmt.Sprintf("%s: %s %s from %s to %s: %s", actor, action, a.ID, from, to, reason), nil)
	return a, sum, nil
}

// RevokeUnbacked revokes what agent's current level and manifest no longer
// back: its live credentials for roles it lost or whose class its level may
// not hold, and the lineage of every live grant it gave that exceeds its
// authority now. A demotion or a role taken away takes effect at once.
func (l *Levels) RevokeUnbacked(ctx context.Context, agent store.Agent, actor string) (*brokerv1.RevocationSummary, error) {
	start := time.Now()
	total := &brokerv1.RevocationSummary{}
	add := func(sum *brokerv1.RevocationSummary) {
		total.GrantsRevoked += sum.GetGrantsRevoked()
		total.CredentialsRevoked += sum.GetCredentialsRevoked()
		total.VaultConfirmed += sum.GetVaultConfirmed()
		total.VaultPending += sum.GetVaultPending()
	}
	reason := fmt.Sprintf("agent %s changed (level %s, roles %v)", agent.ID, agent.Level, agent.Roles)
	// A credential is backed if the agent, as it is now, would get it now:
	// the whole decision (invariants, policy, maturity), where a write that
	// needs approval is backed only if it was approved.
	policy := l.cfg.Policy.Current()
	asNow := agent.Subject()
	rev, err := l.db(ctx).RevokeCredentials(agent.ID, actor, reason, func(c store.Credential) bool {
		role, ok := l.cfg.Roles[c.Role]
		if c.GrantID != "" {
			return false // grants are checked below, as lineages
		}
		if !ok {
			return true
		}
		switch l.cfg.Gate.Decide(policy, asNow, role.Authz(), 0).Outcome {
		case authz.Allow:
			return false
		case authz.NeedsApproval:
			return c.ApprovalID == ""
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("revoke credentials: %w", err)
	}
	if rev.CredentialCount() > 0 || len(rev.Queued) > 0 {
		add(l.cfg.Revoker.Finish(ctx, store.Root{}, actor, reason, rev, start, time.Since(start), true))
	}
	given, err := l.cfg.Store.GrantsGivenBy(agent.ID)
	if err != nil {
		return nil, fmt.Errorf("list grants: %w", err)
	}
	p := decide.Principal(agent, l.cfg.Roles, l.cfg.Gate)
	now := l.cfg.Now()
	for _, g := range given {
		if !g.RevokedAt.IsZero() || !g.ExpiresAt.After(now) {
			continue
		}
		backed := l.cfg.Rules.MaxDepth[p.Level] > 0 && !slices.ContainsFunc(g.Roles, func(r string) bool { return !slices.Contains(p.Roles, r) })
		if backed {
			continue
		}
		reason := fmt.Sprintf("delegator %s no longer holds the authority grant %s needs (level %s, roles %v)", agent.ID, g.ID, agent.Level, p.Roles)
		sum, err := l.cfg.Revoker.Lineage(ctx, store.Root{GrantID: g.ID}, actor, reason)
		if err != nil {
			return nil, err
		}
		add(sum)
	}
	total.CommitDuration = durationpb.New(time.Since(start))
	total.TotalDuration = total.CommitDuration
	return total, nil
}
