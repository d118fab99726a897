package broker

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/notify"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// notify publishes a notification to the webhook and admins' event
// streams. It never blocks the request.
func (s *Server) notify(ctx context.Context, kind, agent, role, summary string, detail map[string]string) {
	if detail == nil {
		detail = map[string]string{}
	}
	if rid := edge.RequestID(ctx); rid != "" {
		detail["request_id"] = rid
	}
	s.notifier.Publish(notify.Event{ID: edge.NewID(), Time: s.now().UTC(), Kind: kind, Agent: agent, Role: role, Summary: summary, Detail: detail})
}

func (a *adminService) WatchEvents(_ *adminv1.WatchEventsRequest, stream grpc.ServerStreamingServer[adminv1.WatchEventsResponse]) error {
	ctx := stream.Context()
	events, cancel := a.s.notifier.Subscribe()
	defer cancel()
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.s.closingCh:
			return errShuttingDown
		case ev, ok := <-events:
			if !ok {
				return fault.New(fault.Exhausted, "event watcher fell behind; reconnect (missed events are in the audit trail)")
			}
			if err := stream.Send(&adminv1.WatchEventsResponse{Event: &adminv1.Event{
				Id: ev.ID, Time: timestamppb.New(ev.Time), Kind: ev.Kind, Agent: ev.Agent, Role: ev.Role, Summary: ev.Summary, Detail: ev.Detail,
			}}); err != nil {
				return err
			}
		}
	}
}

func (a *adminService) QueryAudit(ctx context.Context, req *adminv1.QueryAuditRequest) (*adminv1.QueryAuditResponse, error) {
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
	recs, next, err := a.s.store.QueryAudit(f, req.GetAfterSeq(), size)
	if err != nil {
		return nil, fmt.Errorf("query audit: %w", err)
	}
	resp := &adminv1.QueryAuditResponse{NextAfterSeq: next}
	for _, r := range recs {
		resp.Records = append(resp.Records, protoconv.AuditToProto(r))
	}
	return resp, nil
}

func (a *adminService) VerifyAudit(ctx context.Context, _ *adminv1.VerifyAuditRequest) (*adminv1.VerifyAuditResponse, error) {
	n, verr := a.s.store.VerifyAudit()
	head, err := a.s.store.AuditHead()
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

// auditStreams starts the configured JSON-lines copies of the audit trail.
func (s *Server) auditStreams(cfg config.AuditConfig) error {
	if cfg.File != "" {
		st, err := audit.OpenFile(s.store, cfg.File, s.log)
		if err != nil {
			return fmt.Errorf("broker: audit.file: %w", err)
		}
		s.streamers = append(s.streamers, st)
	}
	if cfg.Stdout {
		head, err := s.store.AuditHead()
		if err != nil {
			return err
		}
		s.streamers = append(s.streamers, audit.NewStreamer(s.store, os.Stdout, head.Seq, s.log))
	}
	return nil
}
