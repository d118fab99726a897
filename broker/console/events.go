package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"google.golang.org/grpc/metadata"

	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

func (c *Console) eventsPage(_ context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	c.render(w, r, s, "events", nil)
}

// eventsStream relays the broker's live events (AdminService.WatchEvents)
// as server-sent events, until the browser leaves or the session ends.
func (c *Console) eventsStream(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	ctx, cancel := context.WithDeadline(ctx, s.Expires)
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, ": events of atfd\n\n")
	fl.Flush()
	_ = c.cfg.Admin.WatchEvents(&adminv1.WatchEventsRequest{}, &sseStream{ctx: ctx, w: w, fl: fl})
}

// sseStream is WatchEvents' stream written as server-sent events.
type sseStream struct {
	ctx context.Context
	w   http.ResponseWriter
	fl  http.Flusher
}

func (s *sseStream) Send(m *adminv1.WatchEventsResponse) error {
	ev := m.GetEvent()
	b, err := json.Marshal(map[string]any{"id": ev.GetId(), "time": ev.GetTime().AsTime(), "kind": ev.GetKind(), "agent": ev.GetAgent(),
		"role": ev.GetRole(), "summary": ev.GetSummary()})
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(s.w, "event: atf\ndata: %s\n\n", b); err != nil {
		return err
	}
	s.fl.Flush()
	return nil
}

func (s *sseStream) Context() context.Context     { return s.ctx }
func (s *sseStream) SetHeader(metadata.MD) error  { return nil }
func (s *sseStream) SendHeader(metadata.MD) error { return nil }
func (s *sseStream) SetTrailer(metadata.MD)       {}
func (s *sseStream) SendMsg(m any) error {
	ev, ok := m.(*adminv1.WatchEventsResponse)
	if !ok {
		return fmt.Errorf("console: events stream cannot send a %T", m)
	}
	return s.Send(ev)
}
func (s *sseStream) RecvMsg(any) error { return nil }
