package verify

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime"
	"net/http"
	"strings"
	"time"
)

// Reconnection backoff of Subscribe, jittered.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
	// maxEventLine bounds one line of the stream.
	maxEventLine = 1 << 20
)

// Subscribe follows the issuer's revocation events until ctx is done, and
// returns ctx's error. It reconnects after a failure, with Last-Event-ID so
// that the issuer can replay what was missed. Run it in its own goroutine
// for as long as the Verifier serves; while it is not connected, tokens
// are treated as the package's Caveats say.
func (v *Verifier) Subscribe(ctx context.Context) error {
	if v.revs == nil {
		return errors.New("verify: Subscribe needs Config.Push")
	}
	backoff := minBackoff
	for {
		connected, err := v.revs.follow(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if connected {
			backoff = minBackoff
		}
		v.cfg.Logger.Warn("verify: revocation stream interrupted; reconnecting",
			slog.String("url", v.revs.push.EventsURL), slog.Any("error", err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// follow reads the stream once, from connection to failure. connected
// says whether the issuer answered.
func (r *revocations) follow(ctx context.Context) (connected bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.push.EventsURL, nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	cursor := r.lastID()
	if cursor != "" {
		req.Header.Set("Last-Event-ID", cursor)
	}
	// A stream silent past MaxSilence, connecting included, is presumed
	// dead: drop it.
	watchdog := time.AfterFunc(r.push.MaxSilence, cancel)
	defer watchdog.Stop()
	resp, err := r.client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); resp.StatusCode != http.StatusOK || mt != "text/event-stream" {
		return false, fmt.Errorf("status %s, content type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	connectedAt := r.issuerTime(resp.Header.Get("Date"))
	if cursor == "" {
		// Nothing to resume from: whatever was revoked before is unknown.
		r.reset(connectedAt, r.now())
	}
	r.heard("")
	watchdog.Reset(r.push.MaxSilence)
	first := true
	err = readEvents(resp.Body, func(e event) {
		watchdog.Reset(r.push.MaxSilence)
		r.dispatch(e, connectedAt, first)
		first = false
	})
	return true, err
}

// issuerTime is the issuer's clock from an HTTP Date header, or this
// server's clock plus the leeway when there is none.
func (r *revocations) issuerTime(date string) time.Time {
	if t, err := http.ParseTime(date); err == nil {
		return t
	}
	return r.now().Add(r.leeway)
}

// event is one Server-Sent Event.
type event struct{ typ, id, data string }

// dispatch applies one event. connectedAt is the issuer's clock when the
// stream opened; first says whether e is the stream's first event.
func (r *revocations) dispatch(e event, connectedAt time.Time, first bool) {
	switch e.typ {
	case "revoked":
		var d struct {
			JTIs   []string `json:"jtis"`
			Nodes  []string `json:"nodes"`
			Agents []string `json:"agents"`
			Reason string   `json:"reason"`
			Time   string   `json:"time"`
		}
		received := r.now()
		if err := json.Unmarshal([]byte(e.data), &d); err != nil {
			// A revocation that cannot be read may be any revocation.
			r.reset(r.issuerTime(""), received)
			break
		}
		at, err := time.Parse(time.RFC3339Nano, d.Time)
		if err != nil {
			at = r.issuerTime("")
		}
		ev := Revocation{JTIs: d.JTIs, Nodes: d.Nodes, Agents: d.Agents, Reason: d.Reason, Time: at, Received: received}
		r.apply(ev)
		if r.push.OnRevoked != nil {
			r.push.OnRevoked(ev)
		}
	case "reset":
		r.reset(r.resetTime(e.data, connectedAt, first), r.now())
	}
	r.heard(e.id)
}

// resetTime is the issuer's clock when it reset: the time in the event's
// data; else, for a reset sent first on connection, the connection's Date;
// else this server's clock plus the leeway.
func (r *revocations) resetTime(data string, connectedAt time.Time, first bool) time.Time {
	var d struct {
		Time string `json:"time"`
	}
	if json.Unmarshal([]byte(data), &d) == nil {
		if t, err := time.Parse(time.RFC3339Nano, d.Time); err == nil {
			return t
		}
	}
	if first {
		return connectedAt
	}
	return r.issuerTime("")
}

// readEvents parses a text/event-stream body and calls fn with each event
// (https://html.spec.whatwg.org/multipage/server-sent-events.html).
func readEvents(body io.Reader, fn func(event)) error {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 4096), maxEventLine)
	var e event
	var data []string
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if e.typ != "" || data != nil || e.id != "" {
				if e.typ == "" {
					e.typ = "message"
				}
				e.data = strings.Join(data, "\n")
				fn(e)
			}
			e, data = event{}, nil
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			e.typ = value
		case "data":
			data = append(data, value)
		case "id":
			e.id = value
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.ErrUnexpectedEOF
}
