// Package adminapi is AdminService, for the platform team: the agent
// registry, lineages, the segmentation policy, the audit trail and its
// events, backups and the ATF conformance statement.
package adminapi

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/notify"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// Notifier tells people what happened.
type Notifier interface {
	Notify(ctx context.Context, kind, agent, role, summary string, detail map[string]string)
}

// Events are the notifications admins watch.
type Events interface {
	Subscribe() (<-chan notify.Event, func())
}

// Policy is the policy in force (policy.Holder).
type Policy interface {
	Current() *authz.Policy
	Commit(ctx context.Context, pv store.PolicyVersion, p *authz.Policy, expected uint64, judge store.PolicyJudge) (store.PolicyVersion, store.Revocation, error)
}

// Levels revokes what a changed agent, or a changed policy, no longer
// backs (levels.Levels).
type Levels interface {
	RevokeUnbacked(ctx context.Context, agent store.Agent, actor string) (*brokerv1.RevocationSummary, error)
	PolicyJudge(p *authz.Policy) store.PolicyJudge
}

// Revoker revokes (revoke.Revoker).
type Revoker interface {
	GlobalKill() *store.Kill
	Lineage(ctx context.Context, root store.Root, actor, reason string) (*brokerv1.RevocationSummary, error)
	Finish(ctx context.Context, root store.Root, actor, reason string, rev store.Revocation, start time.Time, commit time.Duration, wait bool) *brokerv1.RevocationSummary
}

// Watcher shows what the behaviour watch knows of an agent (watch.Watch).
type Watcher interface {
	BreakerProto(agent string) *adminv1.Breaker
	BaselineFormed(agent string) bool
}

// Config is what the service needs.
type Config struct {
	Store *store.Store
	// Trust checks the trust domain of agents named in requests.
	Trust    edge.TrustChecker
	Roles    map[string]config.Role
	Gate     *authz.Gate
	Policy   Policy
	Levels   Levels
	Revoker  Revoker
	Watch    Watcher
	Notifier Notifier
	Events   Events
	// Config is atfd's configuration, and Probes its live checks, for the
	// conformance statement.
	Config config.Config
	Probes Probes
	// Closing is closed when atfd stops: streams end at once.
	Closing <-chan struct{}
	Now     func() time.Time
}

// Service is AdminService.
type Service struct {
	adminv1.UnimplementedAdminServiceServer
	cfg Config
}

// New returns the service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

// RegisterService registers the service with r.
func (s *Service) RegisterService(r grpc.ServiceRegistrar) { adminv1.RegisterAdminServiceServer(r, s) }

func (s *Service) db(ctx context.Context) *store.Store {
	return s.cfg.Store.ForRequest(edge.RequestIDs(ctx))
}

func (s *Service) RegisterAgent(ctx context.Context, req *adminv1.RegisterAgentRequest) (*adminv1.RegisterAgentResponse, error) {
	id, err := s.agentID(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	if err := s.checkRoles(req.GetRoles()); err != nil {
		return nil, err
	}
	if err := s.checkAgentOnly(id); err != nil {
		return nil, err
	}
	// The level field is deprecated: it is read only to refuse it.
	if l := protoconv.LevelFromProto(req.GetLevel()); l > authz.Intern {
		return nil, fault.New(fault.Precondition, "new agents start as intern: register %s without a level, then, once the sign-offs a promotion to %s needs are recorded, "+
			"place it there with a migration (atfctl agent migrate %s --level %s)", id, l, id, l)
	}
	agent, err := s.db(ctx).RegisterAgent(store.Agent{
		ID:           id,
		Owner:        req.GetOwner(),
		Purpose:      audit.Redact(req.GetPurpose()),
		Roles:        req.GetRoles(),
		Level:        authz.Intern,
		Version:      req.GetVersion(),
		ConfigDigest: req.GetConfigDigest(),
	}, edge.Caller(ctx))
	if err != nil {
		return nil, fmt.Errorf("register agent: %w", err)
	}
	edge.Logger(ctx).Info("agent registered", slog.String(edge.LogAgent, id), slog.String(edge.LogLevel, agent.Level.String()))
	return &adminv1.RegisterAgentResponse{Agent: protoconv.AgentToProto(agent)}, nil
}

func (s *Service) GetAgent(ctx context.Context, req *adminv1.GetAgentRequest) (*adminv1.GetAgentResponse, error) {
	agent, err := s.cfg.Store.GetAgent(req.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("get agent: %w", err)
	}
	out := protoconv.AgentToProto(agent)
	out.Breaker = s.cfg.Watch.BreakerProto(agent.ID)
	return &adminv1.GetAgentResponse{Agent: out}, nil
}

func (s *Service) ListAgents(ctx context.Context, req *adminv1.ListAgentsRequest) (*adminv1.ListAgentsResponse, error) {
	// The page token is the last ID of the previous page: opaque to callers,
	// and stable while agents are added.
	agents, next, err := s.cfg.Store.ListAgents(req.GetPageToken(), int(req.GetPageSize()), req.GetIncludeDeregistered())
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	ids := make([]string, len(agents))
	for i, ag := range agents {
		ids[i] = ag.ID
	}
	// The counts are a convenience: the page goes without them rather
	// than not at all.
	live, err := s.cfg.Store.LiveCounts(ids)
	if err != nil {
		edge.Logger(ctx).Warn("counting the listed agents' live credentials failed; listed without them", slog.String(edge.LogError, err.Error()))
	}
	resp := &adminv1.ListAgentsResponse{NextPageToken: next}
	for _, ag := range agents {
		a := protoconv.AgentToProto(ag)
		if err == nil {
			a.LiveCredentials = proto.Int32(int32(live[ag.ID]))
		}
		resp.Agents = append(resp.Agents, a)
	}
	return resp, nil
}

func (s *Service) UpdateAgent(ctx context.Context, req *adminv1.UpdateAgentRequest) (*adminv1.UpdateAgentResponse, error) {
	id, err := s.agentID(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	if req.Roles != nil {
		if err := s.checkRoles(req.GetRoles().GetRoles()); err != nil {
			return nil, err
		}
	}
	// Autonomy is earned through the promotion gates, never edited in.
	if req.Level != nil {
		cur, err := s.cfg.Store.GetAgent(id)
		if err != nil {
			return nil, fmt.Errorf("get agent: %w", err)
		}
		if protoconv.LevelFromProto(req.GetLevel()) > cur.Level {
			return nil, fault.New(fault.Precondition, "an update cannot raise %s's level above %s; promote it through the gates (atfctl agent promote)", id, cur.Level)
		}
	}
	agent, err := s.db(ctx).UpdateAgent(id, edge.Caller(ctx), req.GetExpectedRevision(), func(ag *store.Agent) {
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
	if _, err := s.cfg.Levels.RevokeUnbacked(ctx, agent, edge.Caller(ctx)); err != nil {
		return nil, err
	}
	return &adminv1.UpdateAgentResponse{Agent: protoconv.AgentToProto(agent)}, nil
}

func (s *Service) DeregisterAgent(ctx context.Context, req *adminv1.DeregisterAgentRequest) (*adminv1.DeregisterAgentResponse, error) {
	start := time.Now()
	actor := edge.Caller(ctx)
	reason := audit.Redact(req.GetReason())
	agent, rev, err := s.db(ctx).DeregisterAgent(req.GetSpiffeId(), actor, reason)
	if err != nil {
		return nil, fmt.Errorf("deregister agent: %w", err)
	}
	// Committed: from here the agent and its lineage get nothing, whatever
	// Vault says.
	sum := s.cfg.Revoker.Finish(ctx, store.Root{AgentID: agent.ID}, actor, reason, rev, start, time.Since(start), true)
	edge.Logger(ctx).Info("agent deregistered", slog.String(edge.LogAgent, agent.ID))
	return &adminv1.DeregisterAgentResponse{
		Agent:              protoconv.AgentToProto(agent),
		CredentialsRevoked: sum.GetCredentialsRevoked(),
		RevocationsPending: sum.GetVaultPending(),
	}, nil
}

func (s *Service) RevokeLineage(ctx context.Context, req *adminv1.RevokeLineageRequest) (*adminv1.RevokeLineageResponse, error) {
	sum, err := s.cfg.Revoker.Lineage(ctx, store.Root{AgentID: req.GetAgentId(), GrantID: req.GetGrantId()}, edge.Caller(ctx), req.GetReason())
	if err != nil {
		return nil, err
	}
	return &adminv1.RevokeLineageResponse{Summary: sum}, nil
}

func (s *Service) GetLineage(ctx context.Context, req *adminv1.GetLineageRequest) (*adminv1.GetLineageResponse, error) {
	grants, creds, err := s.cfg.Store.Lineage(store.Root{AgentID: req.GetAgentId(), GrantID: req.GetGrantId()})
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

func (s *Service) ListAgentHistory(ctx context.Context, req *adminv1.ListAgentHistoryRequest) (*adminv1.ListAgentHistoryResponse, error) {
	changes, err := s.cfg.Store.AgentHistory(req.GetSpiffeId())
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

// agentID checks a SPIFFE ID an admin wants to register or change.
func (s *Service) agentID(ctx context.Context, raw string) (string, error) {
	return edge.SubjectID(ctx, raw, s.cfg.Trust)
}

// checkAgentOnly refuses to register an ID that holds a person's role:
// an operator registered as an agent could release its own kill, an admin
// sign off its own promotion (docs/security.md).
func (s *Service) checkAgentOnly(id string) error {
	c := s.cfg.Config
	for _, r := range []struct {
		ids       []string
		role, key string
	}{
		{c.Admins, "an admin", "admins"},
		{c.Approvals.Approvers, "an approver", "approvals.approvers"},
		{c.SecurityOperators, "a security operator", "security_operators"},
		{c.Maturity.OutcomeReporters, "an outcome reporter", "maturity.outcome_reporters"},
	} {
		if slices.Contains(r.ids, id) {
			return fault.New(fault.Precondition, "%s is %s (atfd's configuration: %s), not an agent: people and agents are kept apart; "+
				"register the agent under its own SPIFFE ID", id, r.role, r.key)
		}
	}
	return nil
}

func (s *Service) checkRoles(roles []string) error {
	for _, r := range roles {
		if _, ok := s.cfg.Roles[r]; !ok {
			known := make([]string, 0, len(s.cfg.Roles))
			for name := range s.cfg.Roles {
				known = append(known, name)
			}
			slices.Sort(known)
			return fault.New(fault.Invalid, "role %q is not defined in the broker's roles file (defined: %v)", r, known)
		}
	}
	return nil
}
