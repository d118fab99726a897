package broker

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/notify"
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
