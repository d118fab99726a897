package revoke

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agentictrust/atf/broker/fault"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// errBehind ends the watch of an agent too slow to keep up.
var errBehind = fault.New(fault.Exhausted, "revocation watcher fell behind; reconnect and refetch credentials")

// Event is a revocation event and its position: the revision of the feed
// entry that carries it (several replicas), or its rank among this
// process's events (one). A cursor names a position (epoch.position).
type Event struct {
	Pos int64
	Msg *brokerv1.WatchRevocationsResponse
	// here: published by this replica alone, outside the journal (its
	// feed entry was not confirmed); a resumed watch never skips it.
	here bool
}

// hub fans revocation events out to the agents watching them, in the
// order of their positions, and knows the position of the last one.
type hub struct {
	mu sync.Mutex
	// subs holds, by agent, each watcher's channel and why it was closed.
	subs map[string]map[chan Event]*error
	// epoch names the positions: the feed's cluster, or this process.
	epoch string
	pos   int64
	// moved is closed, and replaced, when pos moves (await).
	moved chan struct{}
	// ring keeps the recent events when no feed does (one process).
	ring ring
	// all are the watchers of every agent's events (SubscribeAll).
	all map[chan AgentEvent]struct{}
	// resumeFrom is the first position a watch may resume from: events
	// went to this replica's watchers alone (publishHere) at the one
	// before it, and the journal does not have them.
	resumeFrom int64
}

// AgentEvent is a revocation event of one agent, for a watcher of all
// of them.
type AgentEvent struct {
	Agent string
	// Cursor names the event's position (Msg's may be rewritten).
	Cursor string
	Event
}

// subscribeAll registers a watcher of every agent's events; from is the
// position after which it hears every one. Its channel closes if it falls
// behind (or on cancel): it must then assume it missed some.
func (h *hub) subscribeAll() (events <-chan AgentEvent, from int64, cancel func()) {
	ch := make(chan AgentEvent, 256)
	h.mu.Lock()
	if h.all == nil {
		h.all = map[chan AgentEvent]struct{}{}
	}
	h.all[ch] = struct{}{}
	from = h.pos
	h.mu.Unlock()
	return ch, from, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.all[ch]; ok {
			delete(h.all, ch)
			close(ch)
		}
	}
}

// subscribe registers a watcher for agent; from is the position after
// which it hears every event. When events closes, ended says why; cancel
// removes the watcher.
func (h *hub) subscribe(agent string) (events <-chan Event, from int64, ended func() error, cancel func()) {
	ch := make(chan Event, 64)
	why := new(error)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[string]map[chan Event]*error{}
	}
	if h.subs[agent] == nil {
		h.subs[agent] = map[chan Event]*error{}
	}
	h.subs[agent][ch] = why
	from = h.pos
	h.mu.Unlock()
	ended = func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		return *why
	}
	return ch, from, ended, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.subs[agent][ch] != nil {
			h.close(agent, ch, nil)
		}
	}
}

// close removes a watcher of agent and closes its channel, after the
// events already in it, for why. Called with mu held.
func (h *hub) close(agent string, ch chan Event, why error) {
	*h.subs[agent][ch] = why
	delete(h.subs[agent], ch)
	if len(h.subs[agent]) == 0 {
		delete(h.subs, agent)
	}
	close(ch)
}

// send sends ev to agent's watchers, with its cursor. A watcher too slow
// to keep up is cut off (its stream ends), so it reconnects and resumes
// rather than missing an event silently. Called with mu held.
func (h *hub) send(agent string, ev Event) {
	ev.Msg.Cursor = h.cursor(ev.Pos)
	for ch := range h.subs[agent] {
		select {
		case ch <- ev:
		default:
			h.close(agent, ch, errBehind)
		}
	}
	for ch := range h.all {
		select {
		case ch <- AgentEvent{Agent: agent, Cursor: ev.Msg.Cursor, Event: ev}:
		default:
			delete(h.all, ch)
			close(ch)
		}
	}
}

// publish gives each agent's event the next position, keeps it for the
// watches that resume (ring) and sends it: the journal of one process.
func (h *hub) publish(events map[string]*brokerv1.WatchRevocationsResponse) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	for _, agent := range slices.Sorted(maps.Keys(events)) {
		ev := Event{Pos: h.pos + 1, Msg: events[agent]}
		h.ring.add(agent, ev, now)
		h.advance(ev.Pos)
		h.send(agent, ev)
	}
}

// publishAt sends each agent's event at pos, the feed entry carrying
// them; the feed delivers its entries in order.
func (h *hub) publishAt(pos int64, events map[string]*brokerv1.WatchRevocationsResponse) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.advance(pos)
	for agent, msg := range events {
		h.send(agent, Event{Pos: pos, Msg: msg})
	}
}

// publishHere sends events the feed did not confirm to this replica's
// watchers alone, at the current position.
func (h *hub) publishHere(events map[string]*brokerv1.WatchRevocationsResponse) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.resumeFrom = h.pos + 1
	for agent, msg := range events {
		h.send(agent, Event{Pos: h.pos, Msg: msg, here: true})
	}
}

// advance moves the position to pos, if that is forward. Called with mu
// held.
func (h *hub) advance(pos int64) {
	if pos <= h.pos {
		return
	}
	h.pos = pos
	if h.moved != nil {
		close(h.moved)
		h.moved = nil
	}
}

// await waits up to d for the position to reach pos, and says whether it
// did.
func (h *hub) await(pos int64, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		h.mu.Lock()
		if h.pos >= pos {
			h.mu.Unlock()
			return true
		}
		if h.moved == nil {
			h.moved = make(chan struct{})
		}
		moved := h.moved
		h.mu.Unlock()
		select {
		case <-moved:
		case <-ctx.Done():
			return false
		}
	}
}

// mark is the position a watcher of agent reading ch has heard
// everything up to: the hub's, if nothing waits in ch and the hub did not
// cut it off (a watcher cut off missed the event that did not fit, and
// its position is past it).
func (h *hub) mark(agent string, ch <-chan Event) (int64, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.subs[agent] {
		if c == ch {
			return h.pos, len(ch) == 0
		}
	}
	return h.pos, false
}

// markAll is mark for a watcher of every agent's events.
func (h *hub) markAll(ch <-chan AgentEvent) (int64, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.all {
		if c == ch {
			return h.pos, len(ch) == 0
		}
	}
	return h.pos, false
}

// end ends the watches of agent for why (every agent's, if agent is ""),
// once they have received the events already published. Ending every
// agent's ends the watchers of all of them too (SubscribeAll): they may
// have missed events (a compacted feed), and must assume so.
func (h *hub) end(agent string, why error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for a, subs := range h.subs {
		if agent != "" && a != agent {
			continue
		}
		for ch := range subs {
			h.close(a, ch, why)
		}
	}
	if agent == "" {
		for ch := range h.all {
			delete(h.all, ch)
			close(ch)
		}
	}
}

// resumable says whether a watch may resume after position after from
// the journal: no event went to this replica's watchers alone since.
func (h *hub) resumable(after int64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return after >= h.resumeFrom
}

// cursor names pos in this hub's epoch.
func (h *hub) cursor(pos int64) string { return h.epoch + "." + strconv.FormatInt(pos, 10) }

// position is the position a cursor of this hub's epoch names; ok is
// false for any other cursor.
func (h *hub) position(cursor string) (pos int64, ok bool) {
	epoch, p, found := strings.Cut(cursor, ".")
	if !found || epoch != h.epoch {
		return 0, false
	}
	pos, err := strconv.ParseInt(p, 10, 64)
	return pos, err == nil && pos >= 0
}

// Since is the journal of one process (no feed): agent's events after
// position after, from the ring.
func (h *hub) Since(_ context.Context, agent string, after int64) ([]Event, int64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if after < h.ring.floor || after > h.pos {
		return nil, 0, ErrGap
	}
	return h.ring.since(agent, after), h.pos, nil
}

// SinceAll is Since for every agent's events.
func (h *hub) SinceAll(_ context.Context, after int64) ([]AgentEvent, int64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if after < h.ring.floor || after > h.pos {
		return nil, 0, ErrGap
	}
	var out []AgentEvent
	for _, e := range h.ring.events {
		if e.ev.Pos > after {
			out = append(out, AgentEvent{Agent: e.agent, Event: e.ev})
		}
	}
	return out, h.pos, nil
}

// ringSize bounds the events a ring keeps.
const ringSize = 8192

// ring keeps the events of the last keep (the resume window), and at most
// ringSize, oldest first, for the watches that resume in one process.
type ring struct {
	keep   time.Duration
	events []ringEvent
	// floor is the position of the newest event dropped: a watch cannot
	// resume from before it.
	floor int64
}

type ringEvent struct {
	agent string
	at    time.Time
	ev    Event
}

// add keeps ev and drops what is past the window.
func (r *ring) add(agent string, ev Event, now time.Time) {
	r.events = append(r.events, ringEvent{agent: agent, at: now, ev: ev})
	drop := 0
	for drop < len(r.events) && (len(r.events)-drop > ringSize || now.Sub(r.events[drop].at) > r.keep) {
		r.floor = r.events[drop].ev.Pos
		drop++
	}
	r.events = r.events[drop:]
}

// since is agent's events after position after.
func (r *ring) since(agent string, after int64) []Event {
	var out []Event
	for _, e := range r.events {
		if e.agent == agent && e.ev.Pos > after {
			out = append(out, e.ev)
		}
	}
	return out
}
