package adminapi

import (
	"context"
	"fmt"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/notify"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

func (s *Service) WatchEvents(_ *adminv1.WatchEventsRequest, stream grpc.ServerStreamingServer[adminv1.WatchEventsResponse]) error {
	ctx := stream.Context()
	events, cancel := s.cfg.Events.Subscribe()
	defer cancel()
	behind := func() error {
		return fault.New(fault.Exhausted, "event watcher fell behind; reconnect (missed events are in the audit trail)")
	}
	return edge.Relay(ctx, stream, s.cfg.Closing, events, behind, func(ev notify.Event) error {
		return stream.Send(&adminv1.WatchEventsResponse{Event: &adminv1.Event{
			Id: ev.ID, Time: timestamppb.New(ev.Time), Kind: ev.Kind, Agent: ev.Agent, Role: ev.Role, Summary: ev.Summary, Detail: ev.Detail,
		}})
	})
}

func (s *Service) QueryAudit(ctx context.Context, req *adminv1.QueryAuditRequest) (*adminv1.QueryAuditResponse, error) {
	f := store.AuditFilter{Agent: req.GetAgent(), Role: req.GetRole(), Decision: req.GetDecision(), Kind: req.GetKind()}
	if req.GetSince() != nil {
		f.Since = req.GetSince().AsTime()
	}
	if req.GetUntil() != nil {
		f.Until = req.GetUntil().AsTime()
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = 100
	}
	recs, next, err := s.cfg.Store.QueryAudit(f, req.GetAfterSeq(), size)
	if err != nil {
		return nil, fmt.Errorf("query audit: %w", err)
	}
	resp := &adminv1.QueryAuditResponse{NextAfterSeq: next}
	for _, r := range recs {
		resp.Records = append(resp.Records, protoconv.AuditToProto(r))
	}
	return resp, nil
}

func (s *Service) VerifyAudit(ctx context.Context, _ *adminv1.VerifyAuditRequest) (*adminv1.VerifyAuditResponse, error) {
	n, verr := s.cfg.Store.VerifyAudit()
	head, err := s.cfg.Store.AuditHead()
	if err != nil {
		return nil, fmt.Errorf("read audit head: %w", err)
	}
	resp := &adminv1.VerifyAuditResponse{Ok: verr == nil, Records: n, HeadSeq: head.Seq, HeadHash: head.Hash}
	if verr != nil {
		resp.Error = verr.Error()
		edge.Logger(ctx).Error("audit trail verification failed", slog.String(edge.LogError, verr.Error()))
	}
	return resp, nil
}
