// Package approvalapi is ApprovalService, the API approvers call to list
// and decide Junior agents' requests (package approval keeps them).
package approvalapi

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// Config is what the service needs.
type Config struct {
	Store     *store.Store
	Approvals Decider
}

// Decider records approvers' verdicts (approval.Book).
type Decider interface {
	Decide(ctx context.Context, id, approver string, approve bool, reason string) (store.Approval, error)
}

// Service is ApprovalService.
type Service struct {
	adminv1.UnimplementedApprovalServiceServer
	cfg Config
}

// New returns the service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

// RegisterService registers the service with r.
func (s *Service) RegisterService(r grpc.ServiceRegistrar) {
	adminv1.RegisterApprovalServiceServer(r, s)
}

func (s *Service) ListApprovals(ctx context.Context, req *adminv1.ListApprovalsRequest) (*adminv1.ListApprovalsResponse, error) {
	size := int(req.GetPageSize())
	if size == 0 {
		size = 100
	}
	list, err := s.cfg.Store.Approvals(protoconv.ApprovalStatusFromProto(req.GetStatus()), req.GetAgent(), size)
	if err != nil {
		return nil, fmt.Errorf("list approvals: %w", err)
	}
	resp := &adminv1.ListApprovalsResponse{}
	for _, ap := range list {
		resp.Approvals = append(resp.Approvals, protoconv.ApprovalToProto(ap))
	}
	return resp, nil
}

func (s *Service) DecideApproval(ctx context.Context, req *adminv1.DecideApprovalRequest) (*adminv1.DecideApprovalResponse, error) {
	ap, err := s.cfg.Approvals.Decide(ctx, req.GetApprovalId(), edge.Caller(ctx), req.GetVerdict() == adminv1.Verdict_VERDICT_APPROVE, audit.Redact(req.GetReason()))
	if err != nil {
		return nil, err
	}
	return &adminv1.DecideApprovalResponse{Approval: protoconv.ApprovalToProto(ap)}, nil
}
