package revoke

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/store"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Ending every agent's watch (a compacted feed, the global kill switch)
// ends the watchers of all agents too, after what they were sent: they
// may have missed events, and a resource server that is not told so
// keeps accepting revoked tokens.
func TestEndAllEndsWatchersOfAll(t *testing.T) {
	h := &hub{epoch: "e"}
	all, _, cancelAll := h.subscribeAll()
	defer cancelAll()
	one, _, ended, cancelOne := h.subscribe("spiffe://td/a")
	defer cancelOne()
	other, _, cancelOther := h.subscribeAll()
	defer cancelOther()

	h.end("spiffe://td/b", errors.New("b only"))
	select {
	case _, open := <-all:
		if !open {
			t.Fatal("ending one agent's watches ended a watcher of all agents")
		}
	default:
	}

	why := errors.New("missed")
	h.end("", why)
	for name, ch := range map[string]<-chan AgentEvent{"first": all, "second": other} {
		select {
		case _, open := <-ch:
			if open {
				t.Errorf("the %s watcher of all agents was sent an event, want its end", name)
			}
		case <-time.After(time.Second):
			t.Errorf("the %s watcher of all agents is still open after every watch ended", name)
		}
	}
	if _, open := <-one; open || !errors.Is(ended(), why) {
		t.Errorf("the agent's watch: open %v, ended %v; want closed for %v", open, ended(), why)
	}
}

// An access token handed out whose record did not commit is announced
// revoked to the watchers of all agents (resource servers following the
// events), since no Vault revocation can kill it.
func TestLostAccessTokenIsAnnounced(t *testing.T) {
	r := &Revoker{cfg: Config{Log: slog.New(slog.DiscardHandler)}, hub: hub{epoch: "e"}}
	all, _, cancel := r.hub.subscribeAll()
	defer cancel()
	r.Lost(store.Credential{Kind: store.KindJWT, Accessor: "jti-1", AgentID: "spiffe://td/a"})
	select {
	case ev := <-all:
		if ev.Agent != "spiffe://td/a" || !slices.Equal(ev.Msg.GetAccessors(), []string{"jti-1"}) {
			t.Errorf("event = %s %v, want the agent's jti-1", ev.Agent, ev.Msg.GetAccessors())
		}
	case <-time.After(time.Second):
		t.Error("a lost access token was not announced")
	}
}

// A watcher of all agents resumes after a cursor it heard: a mark at it,
// then the events after it (an event's cursor names the position before it,
// so its own position's events come again), then what is published, and
// a mark names the position once nothing waits. A cursor of another
// epoch, or from before the window, resumes nothing.
func TestSubscribeAllResumes(t *testing.T) {
	r := &Revoker{cfg: Config{Log: slog.New(slog.DiscardHandler), ResumeWindow: 40 * time.Millisecond}, hub: hub{epoch: "e"}}
	r.hub.ring.keep = time.Hour
	msg := func(acc string) map[string]*brokerv1.WatchRevocationsResponse {
		return map[string]*brokerv1.WatchRevocationsResponse{"spiffe://td/" + acc: {Accessors: []string{acc}}}
	}
	r.hub.publish(msg("a")) // position 1
	r.hub.publish(msg("b")) // 2
	r.hub.publish(msg("c")) // 3
	recv := func(ch <-chan AgentEvent) AgentEvent {
		t.Helper()
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("the watch ended")
			}
			return ev
		case <-time.After(2 * time.Second):
			t.Fatal("nothing came")
		}
		return AgentEvent{}
	}
	events, resumed, cancel := r.SubscribeAll(t.Context(), "e.2")
	defer cancel()
	if !resumed {
		t.Fatal("a cursor of the window did not resume")
	}
	if ev := recv(events); ev.Msg != nil || ev.Cursor != "e.2" {
		t.Fatalf("first = %+v, want a mark at the cursor resumed from", ev)
	}
	if ev := recv(events); ev.Agent != "spiffe://td/c" || ev.Cursor != "e.2" {
		t.Fatalf("first = %s %s, want c's event with cursor e.2 (the position before it)", ev.Agent, ev.Cursor)
	}
	r.hub.publish(msg("d"))
	if ev := recv(events); ev.Agent != "spiffe://td/d" || ev.Cursor != "e.3" {
		t.Fatalf("next = %s %s, want d's event, cursor e.3", ev.Agent, ev.Cursor)
	}
	if ev := recv(events); ev.Msg != nil || ev.Cursor != "e.4" {
		t.Fatalf("then %+v, want a mark at e.4", ev)
	}
	for _, cursor := range []string{"other.2", "e.99", "x", ""} {
		events, resumed, cancel := r.SubscribeAll(t.Context(), cursor)
		if resumed {
			t.Errorf("cursor %s resumed", cursor)
		}
		// Not resumed, it still gets a cursor at once to resume from later.
		if ev := recv(events); ev.Msg != nil || ev.Cursor != "e.4" {
			t.Errorf("cursor %q: first %+v, want a mark at e.4", cursor, ev)
		}
		cancel()
	}
}

// A watcher the hub cut off (it fell behind) gets no mark: the event that
// did not fit is behind the hub's position, and a mark past it would let
// the watcher resume without it.
func TestNoMarkForAWatcherCutOff(t *testing.T) {
	h := &hub{epoch: "e"}
	all, _, cancelAll := h.subscribeAll()
	defer cancelAll()
	one, _, _, cancelOne := h.subscribe("spiffe://td/a")
	defer cancelOne()
	for i := range 300 {
		h.publish(map[string]*brokerv1.WatchRevocationsResponse{"spiffe://td/a": {Accessors: []string{fmt.Sprint(i)}}})
	}
	for len(all) > 0 {
		<-all
	}
	for len(one) > 0 {
		<-one
	}
	if pos, idle := h.markAll(all); idle {
		t.Errorf("a watcher of all cut off is marked idle at %d", pos)
	}
	if pos, idle := h.mark("spiffe://td/a", one); idle {
		t.Errorf("an agent's watcher cut off is marked idle at %d", pos)
	}
}

// Events that went to this replica's watchers alone (the feed did not
// take them) are in no journal: a watch from a cursor at or before them
// is not resumed, so its client is reset rather than missing them.
func TestNoResumePastEventsHereAlone(t *testing.T) {
	r := &Revoker{cfg: Config{Log: slog.New(slog.DiscardHandler), ResumeWindow: time.Minute}, hub: hub{epoch: "e"}}
	r.hub.ring.keep = time.Hour
	r.hub.publish(map[string]*brokerv1.WatchRevocationsResponse{"spiffe://td/a": {Accessors: []string{"x"}}})
	r.hub.publish(map[string]*brokerv1.WatchRevocationsResponse{"spiffe://td/a": {Accessors: []string{"y"}}})
	if _, resumed, cancel := r.SubscribeAll(t.Context(), "e.1"); !resumed {
		t.Fatal("a cursor of the window did not resume")
	} else {
		cancel()
	}
	r.hub.publishHere(map[string]*brokerv1.WatchRevocationsResponse{"spiffe://td/a": {Accessors: []string{"z"}}})
	for _, cursor := range []string{"e.1", "e.2"} {
		if _, resumed, cancel := r.SubscribeAll(t.Context(), cursor); resumed {
			cancel()
			t.Errorf("resumed from %s past an event sent here alone", cursor)
		} else {
			cancel()
		}
	}
	r.hub.publish(map[string]*brokerv1.WatchRevocationsResponse{"spiffe://td/a": {Accessors: []string{"w"}}})
	if _, resumed, cancel := r.SubscribeAll(t.Context(), "e.3"); !resumed {
		t.Error("a cursor after the event sent here alone did not resume")
	} else {
		cancel()
	}
}
