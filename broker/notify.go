package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/notify"
	"github.com/agentictrust/atf/broker/store"
)

// notifier publishes the broker's notifications: it stamps each with an
// id, the time and the request id, and hands it to the webhook and the
// admins' event streams.
type notifier struct {
	n   *notify.Notifier
	now func() time.Time
}

// Notify publishes a notification to the webhook and admins' event
// streams. It never blocks the request.
func (n notifier) Notify(ctx context.Context, kind, agent, role, summary string, detail map[string]string) {
	if detail == nil {
		detail = map[string]string{}
	}
	if rid := edge.RequestID(ctx); rid != "" {
		detail["request_id"] = rid
	}
	n.n.Publish(notify.Event{ID: edge.NewID(), Time: n.now().UTC(), Kind: kind, Agent: agent, Role: role, Summary: summary, Detail: detail})
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

// shipEvery is how often committed audit records move to the segment
// files: the store holds about this much of the trail.
const shipEvery = time.Second

// shipAudit moves committed audit records from the store to the segment
// files (audit.dir) every shipEvery until ctx ends, and once more then. A
// failure is logged and retried; the records stay in the store meanwhile.
func (s *Server) shipAudit(ctx context.Context) {
	t := time.NewTicker(shipEvery)
	defer t.Stop()
	for {
		for {
			n, err := s.store.ShipAudit()
			if err != nil {
				s.log.Error("moving audit records to the segment files failed; they stay in the store and are retried",
					slog.String(edge.LogError, err.Error()))
			}
			if err != nil || n == 0 {
				break
			}
		}
		select {
		case <-ctx.Done():
			if _, err := s.store.ShipAudit(); err != nil && !errors.Is(err, store.ErrClosed) {
				s.log.Error("moving audit records to the segment files failed at shutdown", slog.String(edge.LogError, err.Error()))
			}
			return
		case <-t.C:
		}
	}
}

// pruneEvery is how often the store is pruned (store_retention).
const pruneEvery = 10 * time.Minute

// prune removes from the store what expired store_retention ago, every
// pruneEvery until ctx ends.
func (s *Server) prune(ctx context.Context) {
	every(ctx, pruneEvery, func() {
		p, err := s.store.Prune(s.now().Add(-s.cfg.StoreRetention), "atfd")
		if err != nil {
			s.log.Error("pruning the store failed; retried later", slog.String(edge.LogError, err.Error()))
			return
		}
		if p.Total() > 0 {
			s.log.Info("pruned the store", slog.Int("credentials", p.Credentials), slog.Int("anchors", p.Anchors),
				slog.Int("grants", p.Grants), slog.Int("approvals", p.Approvals), slog.Int("history", p.History))
		}
	})
}

// every calls fn every d (the first time d from now) until ctx ends.
func every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}
