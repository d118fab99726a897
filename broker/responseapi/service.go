// Package responseapi is ResponseService, incident response: the kill
// switch (per agent, per lineage, global) and session revocation, for
// admins and security operators; only security operators release.
package responseapi

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"

	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// Notifier tells people what happened.
type Notifier interface {
	Notify(ctx context.Context, kind, agent, role, summary string, detail map[string]string)
}

// Revoker stops agents and revokes what they hold (revoke.Revoker).
type Revoker interface {
	Kill(ctx context.Context, id, actor, reason string, lineage, wait bool) ([]string, *brokerv1.RevocationSummary, error)
	KillAll(ctx context.Context, actor, reason string, wait bool) (*brokerv1.RevocationSummary, error)
	ReleaseAll(ctx context.Context, actor, reason string) error
	Credentials(ctx context.Context, agent, actor, reason string, revoke func(store.Credential) bool) (*brokerv1.RevocationSummary, error)
}

// Config is what the service needs.
type Config struct {
	Store   *store.Store
	Revoker Revoker
	// Trust checks the trust domain of agents named in requests.
	Trust edge.TrustChecker
	// Operators are the security operators, who alone may release.
	Operators map[spiffeid.ID]bool
	Notifier  Notifier
}

// Service is ResponseService.
type Service struct {
	adminv1.UnimplementedResponseServiceServer
	cfg Config
}

// New returns the service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

// RegisterService registers the service with r.
func (s *Service) RegisterService(r grpc.ServiceRegistrar) {
	adminv1.RegisterResponseServiceServer(r, s)
}

func (s *Service) Kill(ctx context.Context, req *adminv1.KillRequest) (*adminv1.KillResponse, error) {
	actor := edge.Caller(ctx)
	reason := audit.Redact(req.GetReason())
	start := time.Now()
	var (
		killed []string
		sum    *brokerv1.RevocationSummary
		err    error
	)
	if req.GetAll() {
		killed = []string{"*"}
		sum, err = s.cfg.Revoker.KillAll(ctx, actor, reason, !req.GetForced())
	} else {
		id, perr := edge.SubjectID(ctx, req.GetAgentId(), s.cfg.Trust)
		if perr != nil {
			return nil, perr
		}
		killed, sum, err = s.cfg.Revoker.Kill(ctx, id, actor, reason, req.GetLineage(), !req.GetForced())
	}
	if err != nil {
		return nil, err
	}
	edge.Logger(ctx).Warn("kill switch", slog.Any("killed", killed), slog.Bool("lineage", req.GetLineage()), slog.Bool("forced", req.GetForced()),
		slog.Duration("commit", sum.GetCommitDuration().AsDuration()), slog.Duration(edge.LogDuration, time.Since(start)))
	s.cfg.Notifier.Notify(ctx, "kill", req.GetAgentId(), "", "kill switch: "+actor+" stopped "+killedSummary(killed)+": "+reason, map[string]string{"reason": reason})
	return &adminv1.KillResponse{Killed: killed, Summary: sum}, nil
}

func killedSummary(killed []string) string {
	switch {
	case len(killed) == 1 && killed[0] == "*":
		return "every agent"
	case len(killed) == 0:
		return "nobody new (already stopped)"
	case len(killed) == 1:
		return killed[0]
	}
	return killed[0] + " and " + strconv.Itoa(len(killed)-1) + " agent(s) below it"
}

func (s *Service) Release(ctx context.Context, req *adminv1.ReleaseRequest) (*adminv1.ReleaseResponse, error) {
	id := edge.Identity(ctx)
	caller := id.Principal()
	if !s.cfg.Operators[id.ID] && !id.Human.Has(config.ConsoleSecurityOperator) {
		return nil, fault.New(fault.Denied, "only a security operator may release the kill switch; %s is not one (atfd's configuration: security_operators, or console.roles for a person)", caller)
	}
	// An operator that is also a registered agent would release itself.
	if err := edge.ActOn(ctx, s.cfg.Store, req.GetAgentId()); err != nil {
		return nil, err
	}
	reason := audit.Redact(req.GetReason())
	if req.GetAll() {
		if err := s.cfg.Revoker.ReleaseAll(ctx, caller, reason); err != nil {
			return nil, err
		}
	} else {
		if _, err := s.cfg.Store.ForRequest(edge.RequestIDs(ctx)).ReleaseAgent(req.GetAgentId(), caller, reason); err != nil {
			return nil, fmt.Errorf("release agent: %w", err)
		}
	}
	edge.Logger(ctx).Warn("kill switch released", slog.String(edge.LogAgent, req.GetAgentId()), slog.Bool("all", req.GetAll()))
	s.cfg.Notifier.Notify(ctx, "release", req.GetAgentId(), "", "kill switch released by "+caller+": "+reason, nil)
	return &adminv1.ReleaseResponse{}, nil
}

func (s *Service) RevokeSessions(ctx context.Context, req *adminv1.RevokeSessionsRequest) (*adminv1.RevokeSessionsResponse, error) {
	sum, err := s.cfg.Revoker.Credentials(ctx, req.GetAgentId(), edge.Caller(ctx), audit.Redact(req.GetReason()), func(store.Credential) bool { return true })
	if err != nil {
		return nil, err
	}
	return &adminv1.RevokeSessionsResponse{Summary: sum}, nil
}

func (s *Service) GetKillSwitch(ctx context.Context, _ *adminv1.GetKillSwitchRequest) (*adminv1.GetKillSwitchResponse, error) {
	resp := &adminv1.GetKillSwitchResponse{}
	gk, err := s.cfg.Store.GlobalKill()
	if err != nil {
		return nil, fmt.Errorf("read the kill switch: %w", err)
	}
	resp.Global = protoconv.KillToProto(gk)
	agents, err := s.cfg.Store.KilledAgents()
	if err != nil {
		return nil, fmt.Errorf("list killed agents: %w", err)
	}
	for _, a := range agents {
		resp.Agents = append(resp.Agents, &adminv1.KilledAgent{SpiffeId: a.ID, Kill: protoconv.KillToProto(a.Kill)})
	}
	return resp, nil
}
