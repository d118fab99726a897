package broker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// responseService is incident response: the kill switch and session
// revocation.
type responseService struct {
	adminv1.UnimplementedResponseServiceServer
	s *Server
}

func (r *responseService) Kill(ctx context.Context, req *adminv1.KillRequest) (*adminv1.KillResponse, error) {
	s := r.s
	actor := edge.Caller(ctx)
	reason := audit.Redact(req.GetReason())
	start := time.Now()
	var (
		rev    store.Revocation
		killed []string
		root   store.Root
		err    error
	)
	if req.GetAll() {
		rev, err = s.db(ctx).KillAll(actor, reason)
		if err == nil {
			gk, gerr := s.store.GlobalKill()
			if gerr != nil {
				return nil, fmt.Errorf("read the kill switch: %w", gerr)
			}
			s.globalKill.Store(gk)
			s.anchors.dropAll()
			killed = []string{"*"}
		}
	} else {
		id, perr := (&adminService{s: s}).agentID(ctx, req.GetAgentId())
		if perr != nil {
			return nil, perr
		}
		root = store.Root{AgentID: id}
		rev, killed, err = s.db(ctx).KillAgent(id, actor, reason, req.GetLineage())
		for _, k := range killed {
			s.anchors.drop(store.AgentNode(k))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kill: %w", err)
	}
	commit := time.Since(start)
	// Whoever waits for an approval hears of the cancellation now.
	s.approvals.fire()
	sum := s.finishRevocation(ctx, root, actor, reason, rev, start, commit, !req.GetForced())
	edge.Logger(ctx).Warn("kill switch", slog.Any("killed", killed), slog.Bool("lineage", req.GetLineage()), slog.Bool("forced", req.GetForced()),
		slog.Duration("commit", commit), slog.Duration(edge.LogDuration, time.Since(start)))
	s.notify(ctx, "kill", req.GetAgentId(), "", "kill switch: "+actor+" stopped "+killedSummary(killed)+": "+reason, map[string]string{"reason": reason})
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
	return killed[0] + " and " + itoa(int32(len(killed)-1)) + " agent(s) below it"
}

func (r *responseService) Release(ctx context.Context, req *adminv1.ReleaseRequest) (*adminv1.ReleaseResponse, error) {
	s := r.s
	caller := edge.Identity(ctx).ID
	if !s.operators[caller] {
		return nil, fault.New(fault.Denied, "only a security operator may release the kill switch; %s is not one (atfd's configuration: security_operators)", caller)
	}
	reason := audit.Redact(req.GetReason())
	if req.GetAll() {
		if err := s.db(ctx).ReleaseAll(caller.String(), reason); err != nil {
			return nil, fmt.Errorf("release all: %w", err)
		}
		s.globalKill.Store(nil)
	} else {
		if _, err := s.db(ctx).ReleaseAgent(req.GetAgentId(), caller.String(), reason); err != nil {
			return nil, fmt.Errorf("release agent: %w", err)
		}
	}
	edge.Logger(ctx).Warn("kill switch released", slog.String(edge.LogAgent, req.GetAgentId()), slog.Bool("all", req.GetAll()))
	s.notify(ctx, "release", req.GetAgentId(), "", "kill switch released by "+caller.String()+": "+reason, nil)
	return &adminv1.ReleaseResponse{}, nil
}

func (r *responseService) RevokeSessions(ctx context.Context, req *adminv1.RevokeSessionsRequest) (*adminv1.RevokeSessionsResponse, error) {
	s := r.s
	actor := edge.Caller(ctx)
	reason := audit.Redact(req.GetReason())
	start := time.Now()
	rev, err := s.db(ctx).RevokeCredentials(req.GetAgentId(), actor, reason, func(store.Credential) bool { return true })
	if err != nil {
		return nil, fmt.Errorf("revoke sessions: %w", err)
	}
	sum := s.finishRevocation(ctx, store.Root{}, actor, reason, rev, start, time.Since(start), true)
	return &adminv1.RevokeSessionsResponse{Summary: sum}, nil
}

func (r *responseService) GetKillSwitch(ctx context.Context, _ *adminv1.GetKillSwitchRequest) (*adminv1.GetKillSwitchResponse, error) {
	s := r.s
	resp := &adminv1.GetKillSwitchResponse{}
	gk, err := s.store.GlobalKill()
	if err != nil {
		return nil, fmt.Errorf("read the kill switch: %w", err)
	}
	resp.Global = protoconv.KillToProto(gk)
	agents, err := s.store.KilledAgents()
	if err != nil {
		return nil, fmt.Errorf("list killed agents: %w", err)
	}
	for _, a := range agents {
		resp.Agents = append(resp.Agents, &adminv1.KilledAgent{SpiffeId: a.ID, Kill: protoconv.KillToProto(a.Kill)})
	}
	return resp, nil
}

// killedError is the answer to an agent while the global switch holds.
func (s *Server) killedError() error {
	if gk := s.globalKill.Load(); gk != nil {
		return fault.New(fault.Denied, "the global kill switch stops every agent (since %s); only a security operator can release it", gk.At.Format(time.RFC3339))
	}
	return nil
}
