package revoke

import (
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/store"
)

// Ending every agent's watch (a compacted feed, the global kill switch)
// ends the watchers of all agents too, after what they were sent: they
// may have missed events, and a resource server that is not told so
// keeps accepting revoked tokens.
func TestEndAllEndsWatchersOfAll(t *testing.T) {
	h := &hub{epoch: "e"}
	all, cancelAll := h.subscribeAll()
	defer cancelAll()
	one, _, ended, cancelOne := h.subscribe("spiffe://td/a")
	defer cancelOne()
	other, cancelOther := h.subscribeAll()
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
	all, cancel := r.hub.subscribeAll()
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
