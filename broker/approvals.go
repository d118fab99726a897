package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// signal wakes everyone waiting for a change: wait returns a channel that
// is closed at the next fire.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

// approvalService lets approvers decide Junior agents' requests.
type approvalService struct {
	adminv1.UnimplementedApprovalServiceServer
	s *Server
}

func (a *approvalService) ListApprovals(ctx context.Context, req *adminv1.ListApprovalsRequest) (*adminv1.ListApprovalsResponse, error) {
	st := protoconv.ApprovalStatusFromProto(req.GetStatus())
	size := int(req.GetPageSize())
	if size == 0 {
		size = 100
	}
	list, err := a.s.store.Approvals(st, req.GetAgent(), size)
	if err != nil {
		return nil, fmt.Errorf("list approvals: %w", err)
	}
	resp := &adminv1.ListApprovalsResponse{}
	for _, ap := range list {
		resp.Approvals = append(resp.Approvals, protoconv.ApprovalToProto(ap))
	}
	return resp, nil
}

func (a *approvalService) DecideApproval(ctx context.Context, req *adminv1.DecideApprovalRequest) (*adminv1.DecideApprovalResponse, error) {
	s := a.s
	approver := edge.Caller(ctx)
	ap, err := s.store.GetApproval(req.GetApprovalId())
	if err != nil {
		return nil, fmt.Errorf("get approval: %w", err)
	}
	// Nobody decides a request they are part of: the requester, or anyone
	// along the delegation chain it acts under.
	if ap.AgentID == approver || slices.Contains(ap.Chain, approver) {
		edge.Logger(ctx).Warn("self-approval refused", slog.String("approval", ap.ID))
		return nil, fault.New(fault.Denied, "%s may not decide approval %s: it is part of the request", approver, ap.ID)
	}
	approve := req.GetVerdict() == adminv1.Verdict_VERDICT_APPROVE
	ap, err = s.db(ctx).DecideApproval(ap.ID, approver, approve, audit.Redact(req.GetReason()), s.cfg.Approvals.RedeemWithin)
	if err != nil {
		return nil, fmt.Errorf("decide approval: %w", err)
	}
	s.approvals.fire()
	verb := "denied"
	if approve {
		verb = "approved"
	}
	edge.Logger(ctx).Info("approval "+verb, slog.String("approval", ap.ID), slog.String(edge.LogAgent, ap.AgentID), slog.String(edge.LogRole, ap.Role))
	s.notify(ctx, "approval_"+verb, ap.AgentID, ap.Role, fmt.Sprintf("%s %s %s's request for %s: %s", approver, verb, ap.AgentID, ap.Role, ap.Reason),
		map[string]string{"approval_id": ap.ID, "approver": approver})
	return &adminv1.DecideApprovalResponse{Approval: protoconv.ApprovalToProto(ap)}, nil
}

func (b *brokerService) WaitApproval(req *brokerv1.WaitApprovalRequest, stream grpc.ServerStreamingServer[brokerv1.WaitApprovalResponse]) error {
	s := b.s
	ctx := stream.Context()
	caller := edge.Caller(ctx)
	var last store.ApprovalStatus
	for {
		// Take the wake-up channel before reading, so no change is missed.
		changed := s.approvals.wait()
		ap, err := s.store.GetApproval(req.GetApprovalId())
		if err == nil && ap.AgentID != caller {
			err = fmt.Errorf("%w: approval %s", store.ErrNotFound, req.GetApprovalId())
		}
		if err != nil {
			return fmt.Errorf("get approval: %w", err)
		}
		if ap.Status != last {
			if err := stream.Send(&brokerv1.WaitApprovalResponse{Approval: protoconv.ApprovalToProto(ap)}); err != nil {
				return err
			}
			last = ap.Status
		}
		if ap.Status != store.ApprovalPending {
			return nil // decided, expired or cancelled
		}
		timer := time.NewTimer(ap.ExpiresAt.Sub(s.now()) + 10*time.Millisecond)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-s.closingCh:
			timer.Stop()
			return errShuttingDown
		case <-changed:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// requestApproval records a pending request and tells the approvers.
func (s *Server) requestApproval(ctx context.Context, ap store.Approval) (*brokerv1.FetchCredentialResponse, error) {
	ap.ExpiresAt = ap.CreatedAt.Add(s.cfg.Approvals.PendingTTL)
	ap.Status = store.ApprovalPending
	if err := s.db(ctx).PutApproval(ap); err != nil {
		return nil, fmt.Errorf("record approval request: %w", err)
	}
	s.approvals.fire()
	edge.Logger(ctx).Info("credential waits for approval", slog.String("approval", ap.ID), slog.String(edge.LogRole, ap.Role))
	s.notify(ctx, "approval_requested", ap.AgentID, ap.Role,
		fmt.Sprintf("%s agent %s asks for %s role %s: %s (approve: atfctl approvals approve %s --reason ...)", ap.Level, ap.AgentID, ap.Class, ap.Role, ap.Justification, ap.ID),
		map[string]string{"approval_id": ap.ID, "expires_at": ap.ExpiresAt.Format(time.RFC3339)})
	return &brokerv1.FetchCredentialResponse{Approval: protoconv.ApprovalToProto(ap)}, nil
}

// claimApproval redeems an approved request for this decision; release
// gives it back if the credential cannot be issued after all.
func (s *Server) claimApproval(ctx context.Context, id, agent, role, grantID, decisionID string) (release func(), err error) {
	_, err = s.db(ctx).ClaimApproval(id, agent, role, grantID, decisionID)
	if err != nil {
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			return nil, fault.New(fault.Precondition, "approval cannot be redeemed: %w", err)
		}
		return nil, fmt.Errorf("claim approval: %w", err)
	}
	s.approvals.fire()
	return func() {
		if err := s.db(ctx).ReleaseApproval(id, decisionID); err != nil {
			edge.Logger(ctx).Error("releasing an approval after a failed issuance failed", slog.String(edge.LogError, err.Error()))
		}
		s.approvals.fire()
	}, nil
}
