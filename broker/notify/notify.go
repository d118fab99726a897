// Package notify delivers the broker's notifications (approval requests,
// write issuances, anomalies) to people: an HTTP webhook and an in-process
// stream for admins' event watchers.
//
// # Basics
//
// A Notifier takes events from the broker and hands each to every Sink (a
// Webhook, say) and every subscriber. Publish never blocks the broker: each
// sink has its own queue and worker, and a subscriber that falls behind is
// cut off rather than waited for.
//
// # Caveats
//
// Delivery is at most once per sink and best effort: an event that finds a
// sink's queue full is dropped and counted (Dropped), one its sink fails to
// deliver is logged, and events still queued when Close gives up are
// dropped. Notifications are for people; the audit trail is the record.
package notify

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// queueSize is how many events wait for each sink.
	queueSize = 1024
	// subscriberBuffer is how many events a subscriber may fall behind by
	// before it is cut off.
	subscriberBuffer = 256
)

// Log field names.
const (
	logError = "error"
	logEvent = "event"
	logKind  = "kind"
	logSink  = "sink"
	logCount = "count"
)

// Event is one notification.
type Event struct {
	ID      string            `json:"id"` // unique, set by the caller
	Time    time.Time         `json:"time"`
	Kind    string            `json:"kind"` // e.g. approval_requested, write_issued
	Agent   string            `json:"agent,omitempty"`
	Role    string            `json:"role,omitempty"`
	Summary string            `json:"summary"` // one line for people, e.g. for a chat message
	Detail  map[string]string `json:"detail,omitempty"`
}

// Sink delivers events somewhere. Send must return when ctx is done.
type Sink interface {
	Send(ctx context.Context, ev Event) error
}

// Notifier fans events out to sinks and subscribers. It is safe for
// concurrent use.
type Notifier struct {
	log     *slog.Logger
	queues  []chan Event
	dropped atomic.Uint64

	// ctx is what workers send with; Close cancels it when it gives up.
	ctx     context.Context
	cancel  context.CancelFunc
	workers sync.WaitGroup

	statsMu sync.Mutex // guards stats
	stats   Deliveries

	mu     sync.Mutex // guards what follows, and sends on the channels
	closed bool
	full   []bool // whether a sink's queue was full when last tried
	subs   map[chan Event]struct{}
}

// New starts a worker for each sink. A nil log discards.
func New(log *slog.Logger, sinks ...Sink) *Notifier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Notifier{log: log, ctx: ctx, cancel: cancel, subs: make(map[chan Event]struct{})}
	for i, s := range sinks {
		q := make(chan Event, queueSize)
		n.queues = append(n.queues, q)
		n.full = append(n.full, false)
		n.workers.Add(1)
		go func() {
			defer n.workers.Done()
			n.deliver(i, s, q)
		}()
	}
	return n
}

// deliver sends the events of q to s until q is closed and empty.
func (n *Notifier) deliver(i int, s Sink, q <-chan Event) {
	var lost uint64
	for ev := range q {
		if n.ctx.Err() != nil {
			lost++
			continue
		}
		err := s.Send(n.ctx, ev)
		n.record(err)
		if err != nil {
			// The error names the event's kind and id, never its contents.
			n.log.Error("notification not delivered", slog.Int(logSink, i), slog.String(logEvent, ev.ID),
				slog.String(logKind, ev.Kind), slog.String(logError, err.Error()))
		}
	}
	if lost > 0 {
		n.dropped.Add(lost)
		n.log.Warn("notifications dropped at shutdown", slog.Int(logSink, i), slog.Uint64(logCount, lost))
	}
}

// Deliveries are the sinks' delivery outcomes since the Notifier started:
// live evidence that notifications reach someone (docs/conformance.md, B-4).
type Deliveries struct {
	// Sinks is the number of sinks (webhooks).
	Sinks int
	// Delivered and Failed count events a sink delivered or gave up on.
	Delivered, Failed uint64
	// LastDelivered and LastFailed are when that last happened; LastError
	// is the last failure (it names the sink's scheme and host only).
	LastDelivered, LastFailed time.Time
	LastError                 string
	// Queued is the number of events waiting for a sink; Dropped as
	// Dropped returns.
	Queued  int
	Dropped uint64
}

// record counts one delivery attempt's outcome.
func (n *Notifier) record(err error) {
	n.statsMu.Lock()
	defer n.statsMu.Unlock()
	if err == nil {
		n.stats.Delivered++
		n.stats.LastDelivered = time.Now()
		return
	}
	n.stats.Failed++
	n.stats.LastFailed = time.Now()
	n.stats.LastError = err.Error()
}

// Deliveries returns the delivery outcomes so far.
func (n *Notifier) Deliveries() Deliveries {
	n.statsMu.Lock()
	d := n.stats
	n.statsMu.Unlock()
	d.Sinks = len(n.queues)
	for _, q := range n.queues {
		d.Queued += len(q)
	}
	d.Dropped = n.Dropped()
	return d
}

// Publish queues ev for every sink and hands it to every subscriber. It
// never blocks: a sink whose queue is full misses the event (see Dropped),
// and a subscriber whose buffer is full is unsubscribed, its channel closed.
// After Close, events are dropped.
func (n *Notifier) Publish(ev Event) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		n.dropped.Add(uint64(len(n.queues)))
		return
	}
	for i, q := range n.queues {
		select {
		case q <- ev:
			n.full[i] = false
		default:
			n.dropped.Add(1)
			if !n.full[i] { // once a spell, not once an event
				n.full[i] = true
				n.log.Warn("notification queue full; dropping events", slog.Int(logSink, i), slog.String(logEvent, ev.ID),
					slog.String(logKind, ev.Kind))
			}
		}
	}
	for ch := range n.subs {
		select {
		case ch <- ev:
		default:
			delete(n.subs, ch)
			close(ch)
			n.log.Warn("event watcher fell behind; its stream is closed")
		}
	}
}

// Subscribe returns a channel of the events published from now on, and a
// func to unsubscribe. The channel is closed when the subscriber falls more
// than 256 events behind (it must subscribe again, and has missed events),
// when it unsubscribes, and when the Notifier closes.
func (n *Notifier) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, subscriberBuffer)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		close(ch)
		return ch, func() {}
	}
	n.subs[ch] = struct{}{}
	return ch, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		if _, ok := n.subs[ch]; ok {
			delete(n.subs, ch)
			close(ch)
		}
	}
}

// Dropped returns how many times an event missed a sink: its queue was
// full, the Notifier was closed, or Close gave up before it was sent.
func (n *Notifier) Dropped() uint64 { return n.dropped.Load() }

// Close stops accepting events, closes subscribers' channels, and waits
// for the sinks to deliver what is queued until ctx is done; then it
// cancels the deliveries under way, drops the rest, and returns once the
// workers have stopped.
func (n *Notifier) Close(ctx context.Context) {
	n.mu.Lock()
	if !n.closed {
		n.closed = true
		for _, q := range n.queues {
			close(q)
		}
		for ch := range n.subs {
			delete(n.subs, ch)
			close(ch)
		}
	}
	n.mu.Unlock()

	done := make(chan struct{})
	go func() {
		n.workers.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		n.cancel()
		<-done
	}
	n.cancel()
}
