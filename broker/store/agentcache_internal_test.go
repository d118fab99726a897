package store

import (
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/agentictrust/atf/authz"
)

// Agent.clone copies every field of a reference type: a field added to
// Agent of a kind it does not know fails here until clone copies it, so
// that an agent remembered by agentsDecoded never shares memory with one
// a caller changes.
func TestAgentCloneShares(t *testing.T) {
	copied := []string{"Roles", "Kill"}
	typ := reflect.TypeFor[Agent]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		switch f.Type.Kind() {
		case reflect.Slice, reflect.Map, reflect.Pointer, reflect.Interface, reflect.Chan, reflect.Func:
			if !slices.Contains(copied, f.Name) {
				t.Errorf("Agent.%s is a %s that Agent.clone does not copy", f.Name, f.Type.Kind())
			}
		}
	}
	a := Agent{ID: "a", Roles: []string{"r1", "r2"}, Level: authz.Senior, Kill: &Kill{At: time.Now(), Reason: "why"}}
	b := a.clone()
	b.Roles[0], b.Kill.Reason = "changed", "changed"
	if a.Roles[0] != "r1" || a.Kill.Reason != "why" {
		t.Errorf("changing a clone changed the original: %+v", a)
	}
}

// getAgent answers from what it decoded before only for the same bytes,
// and what it answers can be changed without changing what it remembers.
func TestAgentsDecoded(t *testing.T) {
	raw := []byte(`{"id":"cache-test","roles":["r1"],"level":2,"revision":1}`)
	agentsDecoded.put("cache-test", raw, Agent{ID: "cache-test", Roles: []string{"r1"}, Revision: 1})
	got, ok := agentsDecoded.get("cache-test", raw)
	if !ok || got.Revision != 1 {
		t.Fatalf("get of the same bytes = %+v, %t", got, ok)
	}
	got.Roles[0] = "changed"
	if again, _ := agentsDecoded.get("cache-test", raw); again.Roles[0] != "r1" {
		t.Errorf("a change to an answer reached the cache: %v", again.Roles)
	}
	if _, ok := agentsDecoded.get("cache-test", []byte(`{"id":"cache-test","revision":2}`)); ok {
		t.Error("get of other bytes answered from the cache")
	}
}

// Reading an agent through the store fills agentsDecoded and answers from
// it, and a change to the record is read as changed, never as remembered;
// a caller changing what it read changes nothing for the next reader.
func TestGetAgentRemembers(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "atf.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id := "spiffe://atf.test/cache/agent"
	if _, err := s.RegisterAgent(Agent{ID: id, Owner: "o@example.org", Purpose: "cache", Roles: []string{"r1"}, Level: authz.Intern}, "test"); err != nil {
		t.Fatal(err)
	}
	first, _, err := s.Caller(id)
	if err != nil {
		t.Fatal(err)
	}
	agentsDecoded.mu.Lock()
	d, ok := agentsDecoded.m[id]
	agentsDecoded.mu.Unlock()
	if !ok || d.a.Revision != first.Revision {
		t.Fatalf("after a read, agentsDecoded holds %+v (%t), want revision %d", d.a, ok, first.Revision)
	}
	first.Roles[0] = "changed by a caller"
	if again, _, _ := s.Caller(id); again.Roles[0] != "r1" {
		t.Errorf("a caller's change to what it read reached the next reader: %v", again.Roles)
	}
	if _, err := s.UpdateAgent(id, "test", 0, func(a *Agent) { a.Roles = []string{"r2"} }); err != nil {
		t.Fatal(err)
	}
	if after, _, _ := s.Caller(id); after.Roles[0] != "r2" || after.Revision == first.Revision {
		t.Errorf("after an update the store read %v at revision %d, want r2 at a new revision", after.Roles, after.Revision)
	}
}
