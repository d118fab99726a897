package store_test

import (
	"errors"
	"testing"

	"github.com/agentictrust/atf/broker/store"
)

// Caller reads the agent and the global kill switch in one snapshot: a
// registered caller or ErrNotFound, and the switch either way.
func TestCaller(t *testing.T) {
	s, _ := open(t)
	if _, err := s.RegisterAgent(agent("spiffe://td/a"), "ops"); err != nil {
		t.Fatal(err)
	}
	a, k, err := s.Caller("spiffe://td/a")
	if err != nil || a.ID != "spiffe://td/a" || k != nil {
		t.Fatalf("Caller(registered) = %s, %v, %v; want the agent, no kill", a.ID, k, err)
	}
	// A recent read sees this store's own writes, and Same tells reads
	// of one state from reads of another.
	alive := s.CallerRecent("spiffe://td/a")
	if alive.Err != nil || alive.Agent.Revision != a.Revision || alive.Kill != nil || !alive.Same(store.CallerRead{Agent: a}) {
		t.Fatalf("CallerRecent(registered) = %+v; want what Caller read", alive)
	}
	if _, err := s.KillAll("ops", "drill"); err != nil {
		t.Fatal(err)
	}
	killed := s.CallerRecent("spiffe://td/a")
	if killed.Kill == nil || killed.Kill.Reason != "drill" || killed.Same(alive) || !killed.Same(killed) {
		t.Errorf("CallerRecent after the switch = %+v; want the switch, a state other than before", killed)
	}
	if stranger := s.CallerRecent("spiffe://td/stranger"); !errors.Is(stranger.Err, store.ErrNotFound) || stranger.Same(killed) {
		t.Errorf("CallerRecent(stranger) = %+v; want ErrNotFound, a state other than a registered agent's", stranger)
	}
	for _, id := range []string{"spiffe://td/a", "spiffe://td/stranger"} {
		_, k, err := s.Caller(id)
		if k == nil || k.Reason != "drill" {
			t.Errorf("Caller(%s) under the global switch: kill %v", id, k)
		}
		if want := id == "spiffe://td/stranger"; errors.Is(err, store.ErrNotFound) != want {
			t.Errorf("Caller(%s): err %v; want ErrNotFound %v", id, err, want)
		}
	}
}
