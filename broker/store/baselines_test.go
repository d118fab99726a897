package store_test

import (
	"fmt"
	"testing"

	"github.com/agentictrust/atf/broker/store"
)

// Baselines are kept per agent across transactions of a bounded size: a
// save of more agents than one transaction takes keeps them all, a later
// save of a few leaves the others as they were, and the first save after
// a store kept every agent's baselines in one value deletes that value,
// even a save of none.
func TestSaveBaselines(t *testing.T) {
	s, _ := open(t)
	if err := store.PutLegacyBaselines(s, []byte(`{"old":{}}`)); err != nil {
		t.Fatal(err)
	}
	if by, legacy, err := s.Baselines(); err != nil || len(by) != 0 || string(legacy) != `{"old":{}}` {
		t.Fatalf("Baselines before a save = %d agents, legacy %q, %v", len(by), legacy, err)
	}
	if err := s.SaveBaselines(nil); err != nil {
		t.Fatal(err)
	}
	if _, legacy, err := s.Baselines(); err != nil || legacy != nil {
		t.Fatalf("legacy value after a save of none = %q, %v; want it deleted", legacy, err)
	}
	all := map[string][]byte{}
	for i := range 1201 { // three transactions
		all[fmt.Sprintf("agent-%04d", i)] = fmt.Appendf(nil, `{"n":%d}`, i)
	}
	if err := s.SaveBaselines(all); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveBaselines(map[string][]byte{"agent-0007": []byte(`{"n":"new"}`)}); err != nil {
		t.Fatal(err)
	}
	by, _, err := s.Baselines()
	if err != nil || len(by) != len(all) {
		t.Fatalf("Baselines = %d agents, %v; want %d", len(by), err, len(all))
	}
	for a, v := range all {
		if a == "agent-0007" {
			v = []byte(`{"n":"new"}`)
		}
		if string(by[a]) != string(v) {
			t.Errorf("baselines of %s = %s, want %s", a, by[a], v)
		}
	}
}
