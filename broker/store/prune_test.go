package store_test

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/store"
)

// Prune removes what expired before its cutoff (credential records,
// anchors, grants with their indexes, approvals) and all but each agent's
// newest 32 changes, keeps anchors still queued for revocation in Vault,
// and says what it removed in one audit record.
func TestPrune(t *testing.T) {
	s, c := newLineage(t) // t0+10m: two credentials and an anchor expired at t0+5m
	p, err := s.Prune(c.Now(), "atfd")
	if err != nil {
		t.Fatal(err)
	}
	if want := (store.Pruned{Credentials: 2, Anchors: 1}); p != want {
		t.Fatalf("Prune at t0+10m = %+v, want %+v", p, want)
	}
	creds := allCredentials(t, s)
	if _, ok := creds["cred-a-expired"]; ok || len(creds) != len(fixtureCredentials())-2 {
		t.Fatalf("credentials after the prune: %v", slices.Sorted(maps.Keys(creds)))
	}
	rec := mustAudit(t, s, lastSeq(t, s)-1)[0]
	if rec.Kind != "store_pruned" || rec.Detail["credentials"] != "2" || rec.Detail["anchors"] != "1" || rec.Actor != "atfd" {
		t.Fatalf("audit record of the prune = %+v", rec)
	}

	// X's lineage is revoked but Vault has not confirmed: its anchors stay
	// however old they get.
	rev, err := s.RevokeLineage(store.Root{AgentID: agentX}, "alice", "test")
	if err != nil || len(rev.Queued) == 0 {
		t.Fatalf("RevokeLineage(X) = %+v, %v", rev, err)
	}
	for range 40 {
		if _, err := s.UpdateAgent(agentA, "alice", 0, func(a *store.Agent) { a.Purpose += "." }); err != nil {
			t.Fatal(err)
		}
	}
	c.Advance(25 * time.Hour)
	p, err = s.Prune(c.Now(), "atfd")
	if err != nil {
		t.Fatal(err)
	}
	queuedAnchors := 0
	for _, a := range fixtureAnchors() {
		if slices.Contains(rev.Queued, a.Accessor) {
			queuedAnchors++
		}
	}
	want := store.Pruned{Credentials: len(fixtureCredentials()) - 2, Anchors: len(fixtureAnchors()) - 1 - queuedAnchors,
		Grants: len(fixtureGrants()), History: 41 - 32}
	if p != want {
		t.Fatalf("Prune a day later = %+v, want %+v", p, want)
	}
	if got := allCredentials(t, s); len(got) != 0 {
		t.Errorf("credentials left: %v", slices.Sorted(maps.Keys(got)))
	}
	if got := mustGivenBy(t, s, agentA); len(got) != 0 {
		t.Errorf("grants given by A left: %v", grantIDs(got))
	}
	grants, lcreds, err := s.Lineage(store.Root{AgentID: agentA})
	if err != nil || len(grants) != 0 || len(lcreds) != 0 {
		t.Errorf("A's lineage after the prune: %d grants, %d credentials, %v", len(grants), len(lcreds), err)
	}
	hist, err := s.AgentHistory(agentA)
	if err != nil || len(hist) != 32 || hist[31].Revision != 41 {
		t.Fatalf("A's history after the prune: %d changes, %v", len(hist), err)
	}
	if pending := mustPending(t, s); !slices.Equal(slices.Sorted(slices.Values(pending)), slices.Sorted(slices.Values(rev.Queued))) {
		t.Errorf("revocation queue after the prune = %v, want it untouched %v", pending, rev.Queued)
	}
	if p, err := s.Prune(c.Now(), "atfd"); err != nil || p.Total() != 0 {
		t.Errorf("a second Prune = %+v, %v; want nothing", p, err)
	}
	if n := mustVerifyAudit(t, s); n == 0 {
		t.Error("empty audit trail")
	}
}
