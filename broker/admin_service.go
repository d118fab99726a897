package broker

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

type adminService struct {
	adminv1.UnimplementedAdminServiceServer
	s *Server
}

func (a *adminService) RegisterAgent(ctx context.Context, req *adminv1.RegisterAgentRequest) (*adminv1.RegisterAgentResponse, error) {
	id, err := a.agentID(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	if err := a.checkRoles(req.GetRoles()); err != nil {
		return nil, err
	}
	agent, err := a.s.db(ctx).RegisterAgent(store.Agent{
		ID:           id,
		Owner:        req.GetOwner(),
		Purpose:      audit.Redact(req.GetPurpose()),
		Roles:        req.GetRoles(),
		Level:        protoconv.LevelFromProto(req.GetLevel()),
		Version:      req.GetVersion(),
		ConfigDigest: req.GetConfigDigest(),
	}, edge.Caller(ctx))
	if err != nil {
		return nil, fmt.Errorf("register agent: %w", err)
	}
	edge.Logger(ctx).Info("agent registered", slog.String(edge.LogAgent, id), slog.String(edge.LogLevel, agent.Level.String()))
	return &adminv1.RegisterAgentResponse{Agent: protoconv.AgentToProto(agent)}, nil
}

func (a *adminService) GetAgent(ctx context.Context, req *adminv1.GetAgentRequest) (*adminv1.GetAgentResponse, error) {
	agent, err := a.s.store.GetAgent(req.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("get agent: %w", err)
	}
	out := protoconv.AgentToProto(agent)
	out.Breaker = a.s.breakerToProto(agent.ID)
	return &adminv1.GetAgentResponse{Agent: out}, nil
}

func (a *adminService) ListAgents(ctx context.Context, req *adminv1.ListAgentsRequest) (*adminv1.ListAgentsResponse, error) {
	// The page token is the last ID of the previous page: opaque to callers,
	// and stable while agents are added.
	agents, next, err := a.s.store.ListAgents(req.GetPageToken(), int(req.GetPageSize()), req.GetIncludeDeregistered())
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	resp := &adminv1.ListAgentsResponse{NextPageToken: next}
	for _, ag := range agents {
		resp.Agents = append(resp.Agents, protoconv.AgentToProto(ag))
	}
	return resp, nil
}

func (a *adminService) UpdateAgent(ctx context.Context, req *adminv1.UpdateAgentRequest) (*adminv1.UpdateAgentResponse, error) {
	id, err := a.agentID(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	if req.Roles != nil {
		if err := a.checkRoles(req.GetRoles().GetRoles()); err != nil {
			return nil, err
		}
	}
	// Autonomy is earned through the promotion gates, never edited in.
	if req.Level != nil {
		cur, err := a.s.store.GetAgent(id)
		if err != nil {
			return nil, fmt.Errorf("get agent: %w", err)
		}
		if protoconv.LevelFromProto(req.GetLevel()) > cur.Level {
			return nil, fault.New(fault.Precondition, "an update cannot raise %s's level above %s; promote it through the gates (atfctl agent promote)", id, cur.Level)
		}
	}
	agent, err := a.s.db(ctx).UpdateAgent(id, edge.Caller(ctx), req.GetExpectedRevision(), func(ag *store.Agent) {
		if req.Owner != nil {
			ag.Owner = req.GetOwner()
		}
		if req.Purpose != nil {
			ag.Purpose = audit.Redact(req.GetPurpose())
		}
		if req.Roles != nil {
			ag.Roles = req.GetRoles().GetRoles()
		}
		if req.Level != nil {
			ag.Level = protoconv.LevelFromProto(req.GetLevel())
		}
		if req.Version != nil {
			ag.Version = req.GetVersion()
		}
		if req.ConfigDigest != nil {
			ag.ConfigDigest = req.GetConfigDigest()
		}
	})
	if err != nil {
		return nil, fmt.Errorf("update agent: %w", err)
	}
	edge.Logger(ctx).Info("agent updated", slog.String(edge.LogAgent, id), slog.Uint64("revision", agent.Revision))
	if _, err := a.s.revokeUnbacked(ctx, agent, edge.Caller(ctx)); err != nil {
		return nil, err
	}
	return &adminv1.UpdateAgentResponse{Agent: protoconv.AgentToProto(agent)}, nil
}

// revokeUnbacked revokes what agent's current level and manifest no longer
// back: its live credentials for roles it lost or whose class its level may
// not hold, and the lineage of every live grant it gave that exceeds its
// authority now. A demotion or a role taken away takes effect at once.
func (s *Server) revokeUnbacked(ctx context.Context, agent store.Agent, actor string) (*brokerv1.RevocationSummary, error) {
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
	policy := s.policy.Load()
	asNow := &authz.Agent{ID: agent.ID, Level: agent.Level, Active: agent.Usable(), Killed: agent.Kill != nil, Roles: agent.Roles}
	rev, err := s.db(ctx).RevokeCredentials(agent.ID, actor, reason, func(c store.Credential) bool {
		role, ok := s.roles[c.Role]
		if c.GrantID != "" {
			return false // grants are checked below, as lineages
		}
		if !ok {
			return true
		}
		switch s.gate.Decide(policy, asNow, role.Authz(), 0).Outcome {
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
	if len(rev.Queued) > 0 {
		add(s.finishRevocation(ctx, store.Root{}, actor, reason, rev, start, time.Since(start), true))
	}
	given, err := s.store.GrantsGivenBy(agent.ID)
	if err != nil {
		return nil, fmt.Errorf("list grants: %w", err)
	}
	p := s.principal(agent)
	now := s.now()
	for _, g := range given {
		if !g.RevokedAt.IsZero() || !g.ExpiresAt.After(now) {
			continue
		}
		backed := s.rules.MaxDepth[p.Level] > 0 && !slices.ContainsFunc(g.Roles, func(r string) bool { return !slices.Contains(p.Roles, r) })
		if backed {
			continue
		}
		reason := fmt.Sprintf("delegator %s no longer holds the authority grant %s needs (level %s, roles %v)", agent.ID, g.ID, agent.Level, p.Roles)
		sum, err := s.revokeLineage(ctx, store.Root{GrantID: g.ID}, actor, reason)
		if err != nil {
			return nil, err
		}
		add(sum)
	}
	total.CommitDuration = durationpb.New(time.Since(start))
	total.TotalDuration = total.CommitDuration
	return total, nil
}

func (a *adminService) DeregisterAgent(ctx context.Context, req *adminv1.DeregisterAgentRequest) (*adminv1.DeregisterAgentResponse, error) {
	start := time.Now()
	actor := edge.Caller(ctx)
	reason := audit.Redact(req.GetReason())
	agent, rev, err := a.s.db(ctx).DeregisterAgent(req.GetSpiffeId(), actor, reason)
	if err != nil {
		return nil, fmt.Errorf("deregister agent: %w", err)
	}
	// Committed: from here the agent and its lineage get nothing, whatever
	// Vault says.
	sum := a.s.finishRevocation(ctx, store.Root{AgentID: agent.ID}, actor, reason, rev, start, time.Since(start), true)
	edge.Logger(ctx).Info("agent deregistered", slog.String(edge.LogAgent, agent.ID))
	return &adminv1.DeregisterAgentResponse{
		Agent:              protoconv.AgentToProto(agent),
		CredentialsRevoked: sum.GetCredentialsRevoked(),
		RevocationsPending: sum.GetVaultPending(),
	}, nil
}

func (a *adminService) RevokeLineage(ctx context.Context, req *adminv1.RevokeLineageRequest) (*adminv1.RevokeLineageResponse, error) {
	sum, err := a.s.revokeLineage(ctx, store.Root{AgentID: req.GetAgentId(), GrantID: req.GetGrantId()}, edge.Caller(ctx), req.GetReason())
	if err != nil {
		return nil, err
	}
	return &adminv1.RevokeLineageResponse{Summary: sum}, nil
}

func (a *adminService) GetLineage(ctx context.Context, req *adminv1.GetLineageRequest) (*adminv1.GetLineageResponse, error) {
	grants, creds, err := a.s.store.Lineage(store.Root{AgentID: req.GetAgentId(), GrantID: req.GetGrantId()})
	if err != nil {
		return nil, fmt.Errorf("get lineage: %w", err)
	}
	resp := &adminv1.GetLineageResponse{}
	for _, g := range grants {
		resp.Grants = append(resp.Grants, protoconv.GrantToProto(g))
	}
	for _, c := range creds {
		resp.Credentials = append(resp.Credentials, &adminv1.LiveCredential{
			Accessor: c.Accessor, AgentId: c.AgentID, Role: c.Role, GrantId: c.GrantID, ExpiresAt: timestamppb.New(c.ExpiresAt),
		})
	}
	return resp, nil
}

func (a *adminService) ListAgentHistory(ctx context.Context, req *adminv1.ListAgentHistoryRequest) (*adminv1.ListAgentHistoryResponse, error) {
	changes, err := a.s.store.AgentHistory(req.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("list agent history: %w", err)
	}
	resp := &adminv1.ListAgentHistoryResponse{}
	for _, c := range changes {
		resp.Changes = append(resp.Changes, &adminv1.AgentChange{
			Revision: c.Revision,
			Time:     timestamppb.New(c.Time),
			Actor:    c.Actor,
			Action:   c.Action,
			Agent:    protoconv.AgentToProto(c.Agent),
			Reason:   c.Reason,
		})
	}
	return resp, nil
}

// agentID checks a SPIFFE ID an admin wants to register or change: strictly
// parsed, of a trusted trust domain, and not the admin's own (nobody grants
// themselves authority).
func (a *adminService) agentID(ctx context.Context, raw string) (string, error) {
	id, err := attest.ParseID(raw)
	if err != nil {
		return "", fault.Wrap(fault.Invalid, err)
	}
	if err := a.s.verifier.CheckID(id); err != nil {
		return "", fault.New(fault.Invalid, "%s can never authenticate here: its trust domain is not in trust_domains", id)
	}
	if id == edge.Identity(ctx).ID {
		return "", fault.New(fault.Denied, "%s may not register or change its own agent record", id)
	}
	return id.String(), nil
}

func (a *adminService) checkRoles(roles []string) error {
	for _, r := range roles {
		if _, ok := a.s.roles[r]; !ok {
			known := make([]string, 0, len(a.s.roles))
			for name := range a.s.roles {
				known = append(known, name)
			}
			slices.Sort(known)
			return fault.New(fault.Invalid, "role %q is not defined in the broker's roles file (defined: %v)", r, known)
		}
	}
	return nil
}
