package store_test

import (
	"maps"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/store"
)

// LiveCounts counts, for a page of agents in one read, the credentials
// each holds that are neither revoked (one by one, or with their lineage)
// nor expired.
func TestLiveCounts(t *testing.T) {
	s, c := open(t)
	const a, b, none = "spiffe://td/agent/a", "spiffe://td/agent/b", "spiffe://td/agent/none"
	for _, id := range []string{a, b, none} {
		mustRegister(t, s, id, "alice")
	}
	for _, cr := range []store.Credential{credential(a, "a-1"), credential(a, "a-2"), credential(a, "a-3"), credential(b, "b-1")} {
		if err := s.RecordCredential(cr); err != nil {
			t.Fatal(err)
		}
	}
	want := func(step string, w map[string]int) {
		t.Helper()
		got, err := s.LiveCounts([]string{a, b, none, "spiffe://td/agent/unknown"})
		if err != nil || !maps.Equal(got, w) {
			t.Errorf("%s: LiveCounts = %v, %v; want %v", step, got, err, w)
		}
	}
	want("recorded", map[string]int{a: 3, b: 1})
	if _, err := s.RevokeCredentials(a, "alice", "one", func(cr store.Credential) bool { return cr.Accessor == "a-2" }); err != nil {
		t.Fatal(err)
	}
	want("one of a's revoked", map[string]int{a: 2, b: 1})
	if _, err := s.RevokeLineage(store.Root{AgentID: b}, "alice", "lineage"); err != nil {
		t.Fatal(err)
	}
	want("b's lineage revoked", map[string]int{a: 2})
	c.Advance(20 * time.Minute)
	want("expired", map[string]int{})
}
