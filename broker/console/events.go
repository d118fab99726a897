package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"google.golang.org/grpc/metadata"

	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

func (c *Console) eventsPage(_ context.Context, w http.ResponseWriter, r *http.Request, s *session) {
	c.render(w, r, s, "events", nil)
}

// eventsStream relays the broker's live events (AdminService.WatchEvents)
// as server-sent events, until the browser leaves or the session ends:
// it expires, or is signed out (on any replica), which each event sent
// checks, and every sessionCheck while none is.
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
	go c.untilSignedOut(ctx, cancel, s.ID)
	_ = c.cfg.Admin.WatchEvents(&adminv1.WatchEventsRequest{}, &sseStream{ctx: ctx, w: w, fl: fl, live: func() bool {
		ended, err := c.ended.has(s.ID)
		return err == nil && !ended
	}})
}

// sessionCheck is how often a quiet events stream checks that its session
// was not signed out.
var sessionCheck = 5 * time.Second

// untilSignedOut cancels ctx's stream once session id was signed out, or
// whether it was cannot be read.
func (c *Console) untilSignedOut(ctx context.Context, cancel context.CancelFunc, id string) {
	t := time.NewTicker(sessionCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if ended, err := c.ended.has(id); err != nil || ended {
				cancel()
				return
			}
		}
	}
}

// sseStream is WatchEvents' stream written as server-sent events.
type sseStream struct {
	ctx context.Context
	w   http.ResponseWriter
	fl  http.Flusher
	// live says whether the session still stands (not signed out).
	live func() bool
}

func (s *sseStream) Send(m *adminv1.WatchEventsResponse) error {
	if !s.live() {
		return errSignedOut
	}
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

// errSignedOut ends an events stream whose session was signed out.
var errSignedOut = errors.New("console: the session was signed out")

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
