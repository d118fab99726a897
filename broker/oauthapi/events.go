package oauthapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/agentictrust/atf/broker/edge"
)

// events streams revocations to a resource server as Server-Sent Events
// (docs/oauth.md): "revoked" events with an id (a cursor), a "ping"
// every Ping, and a ping with an id at once and whenever the position
// moves with nothing for this client. A client that reconnects
// with Last-Event-ID hears the events it missed, if the resume window
// still holds them all; otherwise a "reset" (data: the broker's time)
// comes first: it must treat what it cached as stale. The stream ends
// if the client falls behind or the broker stops; the client reconnects
// and resumes. It also ends when the
// resource server's X.509-SVID expires, or stops verifying (checked at
// each ping: a trust bundle changed), as the gRPC edge ends a watch: the
// events name tokens and lineages, for resource servers only.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.resourceServer(w, r, "oauth2/events")
	if !ok {
		return
	}
	ctx, cancelAt := context.WithDeadline(ctx, edge.Identity(ctx).ExpiresAt)
	defer cancelAt()
	fl, ok := w.(http.Flusher)
	if !ok {
		s.fail(ctx, w, http.StatusInternalServerError, "server_error", "streaming is not supported here", "")
		return
	}
	last := r.Header.Get("Last-Event-ID")
	events, resumed, cancel := s.cfg.Revoker.Events(ctx, last)
	defer cancel()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if last != "" && !resumed {
		// time is the broker's clock: every token issued up to it may have
		// been revoked unheard.
		fmt.Fprintf(w, "event: reset\ndata: {\"time\":%q}\n\n", s.cfg.Now().UTC().Format(time.RFC3339Nano))
	}
	fmt.Fprint(w, ": subscribed\n\n")
	fl.Flush()
	ping := time.NewTicker(s.cfg.Ping)
	defer ping.Stop()
	sent := last // the last id the client got
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.cfg.Closing:
			return
		case <-ping.C:
			if _, ok, err := s.peer(r); !ok || err != nil {
				edge.Logger(ctx).Info("revocation events ended: the resource server's SVID no longer verifies")
				return
			}
			fmt.Fprint(w, "event: ping\ndata: {}\n\n")
		case ev, open := <-events:
			if !open {
				return // fell behind: the client reconnects and resumes
			}
			if ev.Mark {
				// The position moved with nothing for this client: a ping
				// carrying it as the id to resume from.
				if ev.Cursor == sent {
					continue
				}
				fmt.Fprintf(w, "event: ping\nid: %s\ndata: {}\n\n", ev.Cursor)
				sent = ev.Cursor
				break
			}
			data, _ := json.Marshal(ev) // an Event always marshals
			fmt.Fprintf(w, "event: revoked\nid: %s\ndata: %s\n\n", ev.Cursor, data)
			sent = ev.Cursor
		}
		fl.Flush()
	}
}
