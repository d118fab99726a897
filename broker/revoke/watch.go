package revoke

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/agentictrust/atf/broker/edge"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// ErrGap says a watch cannot resume from its cursor: some events after it
// may be gone (past the resume window), or the cursor is none the journal
// gave.
var ErrGap = errors.New("revoke: the events after this cursor may be gone")

// Journal keeps the events of the resume window for the watches that
// resume: the feed's entries in etcd (several replicas), or a ring in
// memory (one process).
type Journal interface {
	// Since returns agent's events after position after, in order, and
	// the position they run to; ErrGap if some may be gone.
	Since(ctx context.Context, agent string, after int64) (events []Event, upto int64, err error)
	// SinceAll is Since for every agent's events.
	SinceAll(ctx context.Context, after int64) (events []AgentEvent, upto int64, err error)
}

// Subscribe opens a watch of agent's revocations. With marks (implied by
// resumeAfter), its first message is a mark, resumed if resumeAfter was
// given and every event after it follows; marks follow now and then while
// nothing is revoked. When events closes, ended says why: the watcher fell
// behind, or the agent may no longer get anything (killed, deregistered,
// the global kill switch), which also refuses a new watch after the events
// it missed (docs/security.md). cancel ends the watch.
func (r *Revoker) Subscribe(ctx context.Context, agent, resumeAfter string, marks bool) (events <-chan *brokerv1.WatchRevocationsResponse, ended func() error, cancel func()) {
	in, from, ended, unsubscribe := r.hub.subscribe(agent)
	// Registered first, so a stop committed meanwhile ends it too.
	r.endStopped([]string{agent})
	w := &watch{hub: &r.hub, agent: agent, in: in, out: make(chan *brokerv1.WatchRevocationsResponse), done: make(chan struct{}),
		marks: marks || resumeAfter != "", markEvery: min(time.Minute, r.cfg.ResumeWindow/4), last: from}
	if resumeAfter != "" {
		w.resume(ctx, r.journal(), agent, resumeAfter)
	}
	go w.run()
	var once sync.Once
	return w.out, ended, func() {
		once.Do(func() {
			close(w.done)
			unsubscribe()
		})
	}
}

// journal is where watches resume from: the feed, or this process's ring.
func (r *Revoker) journal() Journal {
	if r.cfg.Feed != nil {
		return r.cfg.Feed
	}
	return &r.hub
}

// watch relays one watcher's events: its first mark, the events it
// missed, then those published, and marks now and then.
type watch struct {
	hub   *hub
	agent string
	in    <-chan Event
	out   chan *brokerv1.WatchRevocationsResponse
	done  chan struct{}
	marks bool
	// markEvery is how often a mark goes out while nothing else does, if
	// the position moved: well within the resume window, so that the
	// cursor the agent keeps stays one it can resume from.
	markEvery time.Duration
	resumePoint
	replay []Event
	// last is the position of the last message sent.
	last int64
}

// resumePoint is where a resumed watch's replay ends: if resumed, the
// journal's events up to upto were replayed, and those of the hub up to
// there are among them (but for the ones it published alone).
type resumePoint struct {
	resumed bool
	upto    int64
}

// replayed says whether ev was among the events replayed.
func (p resumePoint) replayed(ev Event) bool { return p.resumed && ev.Pos <= p.upto && !ev.here }

// resume finds the events after cursor, if the journal still has them all.
func (w *watch) resume(ctx context.Context, j Journal, agent, cursor string) {
	after, ok := w.hub.position(cursor)
	if !ok || !w.hub.resumable(after) {
		return
	}
	events, upto, err := j.Since(ctx, agent, after)
	if err != nil {
		if !errors.Is(err, ErrGap) {
			edge.Logger(ctx).Warn("a revocation watch could not resume; its agent drops what it holds", slog.String(edge.LogError, err.Error()))
		}
		return
	}
	for _, ev := range events {
		if ev.Msg.GetCursor() == "" { // the feed's: a copy of this watch's own
			ev.Msg.Cursor = w.hub.cursor(ev.Pos)
		}
	}
	w.resumePoint, w.replay, w.last = resumePoint{true, max(upto, after)}, events, after
}

// run sends the watch's messages to out until in closes or done.
func (w *watch) run() {
	defer close(w.out)
	if w.marks && !w.send(w.last, &brokerv1.WatchRevocationsResponse{Cursor: w.hub.cursor(w.last), Resumed: w.resumed}) {
		return
	}
	for _, ev := range w.replay {
		if !w.send(ev.Pos, ev.Msg) {
			return
		}
	}
	w.replay = nil
	var tick <-chan time.Time
	if w.marks {
		t := time.NewTicker(w.markEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case ev, ok := <-w.in:
			if !ok {
				return
			}
			if w.replayed(ev) {
				continue
			}
			if !w.send(ev.Pos, ev.Msg) {
				return
			}
		case <-tick:
			if pos, idle := w.hub.mark(w.agent, w.in); idle && pos > w.last && !w.send(pos, &brokerv1.WatchRevocationsResponse{Cursor: w.hub.cursor(pos)}) {
				return
			}
		case <-w.done:
			return
		}
	}
}

// send sends m, at position pos, unless the watch is done first.
func (w *watch) send(pos int64, m *brokerv1.WatchRevocationsResponse) bool {
	select {
	case w.out <- m:
		w.last = max(w.last, pos)
		return true
	case <-w.done:
		return false
	}
}

// SubscribeAll is a watch of every agent's revocation events, for the
// resource servers of the OAuth endpoints (docs/oauth.md): those of this
// replica and, through the change feed, of the others. Given
// resumeAfter, a cursor it heard (an event's or a mark's), the events
// after it come first if the journal still has them all (resumed);
// otherwise it hears what comes next only, and must assume it missed
// some. Marks (an AgentEvent without Msg) name the position everything
// sent so far runs to: one first, then now and then while nothing is
// revoked, so that the cursor a client keeps stays within the resume
// window. Its channel
// closes if the watcher falls behind, or on cancel.
func (r *Revoker) SubscribeAll(ctx context.Context, resumeAfter string) (events <-chan AgentEvent, resumed bool, cancel func()) {
	in, from, unsubscribe := r.hub.subscribeAll()
	w := &allWatch{hub: &r.hub, in: in, out: make(chan AgentEvent), done: make(chan struct{}),
		markEvery: min(time.Minute, r.cfg.ResumeWindow/4), last: from}
	if after, ok := r.hub.position(resumeAfter); ok && r.hub.resumable(after) {
		evs, upto, err := r.journal().SinceAll(ctx, after)
		switch {
		case err == nil:
			w.resumePoint, w.replay, w.last = resumePoint{true, max(upto, after)}, evs, after
		case !errors.Is(err, ErrGap):
			edge.Logger(ctx).Warn("a revocation event stream could not resume; its resource server is reset", slog.String(edge.LogError, err.Error()))
		}
	}
	go w.run()
	var once sync.Once
	return w.out, w.resumed, func() {
		once.Do(func() {
			close(w.done)
			unsubscribe()
		})
	}
}

// allWatch relays the events of every agent to one watcher: those it
// missed (replay, up to upto), then those published, and marks.
type allWatch struct {
	hub       *hub
	in        <-chan AgentEvent
	out       chan AgentEvent
	done      chan struct{}
	markEvery time.Duration
	resumePoint
	replay []AgentEvent
	// last is the position the watcher's cursor runs to.
	last int64
}

func (w *allWatch) run() {
	defer close(w.out)
	// A mark first, as an agent's watch sends: a client that hears
	// nothing revoked still has a cursor to resume from.
	if !w.send(AgentEvent{Cursor: w.hub.cursor(w.last), Event: Event{Pos: w.last}}) {
		return
	}
	for _, ev := range w.replay {
		if !w.send(ev) {
			return
		}
	}
	w.replay = nil
	t := time.NewTicker(w.markEvery)
	defer t.Stop()
	for {
		select {
		case ev, ok := <-w.in:
			if !ok {
				return
			}
			if w.replayed(ev.Event) {
				continue
			}
			if !w.send(ev) {
				return
			}
		case <-t.C:
			if pos, idle := w.hub.markAll(w.in); idle && pos > w.last && !w.send(AgentEvent{Cursor: w.hub.cursor(pos), Event: Event{Pos: pos}}) {
				return
			}
		case <-w.done:
			return
		}
	}
}

// send sends ev. An event's cursor names the position before it: the
// events of one change share its position (one per agent), so a stream
// cut between two of them and resumed after the first hears both again.
// Delivery is at least once; a revocation heard twice changes nothing.
func (w *allWatch) send(ev AgentEvent) bool {
	heard := ev.Pos // how far the watcher's cursor now runs
	if ev.Msg != nil {
		heard = max(ev.Pos-1, 0)
		ev.Cursor = w.hub.cursor(heard)
	}
	select {
	case w.out <- ev:
		w.last = max(w.last, heard)
		return true
	case <-w.done:
		return false
	}
}
