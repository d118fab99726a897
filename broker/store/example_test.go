package store_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
)

// openExample opens a store in a fresh directory, reading the time from
// *now, and returns it with a function that closes and removes it.
func openExample(now *time.Time) (*store.Store, func()) {
	dir, err := os.MkdirTemp("", "atf-example")
	if err != nil {
		panic(err)
	}
	s, err := store.Open(filepath.Join(dir, "atf.db"), store.Options{Now: func() time.Time { return *now }})
	if err != nil {
		os.RemoveAll(dir)
		panic(err)
	}
	return s, func() {
		s.Close()
		os.RemoveAll(dir)
	}
}

func ExampleStore_AgentHistory() {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	s, done := openExample(&now)
	defer done()

	const id = "spiffe://example.org/agent/reconciler"
	a, err := s.RegisterAgent(store.Agent{ID: id, Owner: "team-payments", Roles: []string{"db-read"}, Level: authz.Junior}, "alice")
	if err != nil {
		panic(err)
	}
	now = now.Add(time.Hour)
	// Promote the agent, but only if nobody changed it since we read it.
	if _, err := s.UpdateAgent(id, "bob", a.Revision, func(a *store.Agent) { a.Level = authz.Senior }); err != nil {
		panic(err)
	}
	now = now.Add(time.Hour)
	if _, _, err := s.DeregisterAgent(id, "carol", "replaced by v2"); err != nil {
		panic(err)
	}

	history, err := s.AgentHistory(id)
	if err != nil {
		panic(err)
	}
	for _, ch := range history {
		line := fmt.Sprintf("rev %d at %s: %s by %s, now %s and %s", ch.Revision, ch.Time.Format(time.TimeOnly),
			ch.Action, ch.Actor, ch.Agent.Level, ch.Agent.Status)
		if ch.Reason != "" {
			line += " (" + ch.Reason + ")"
		}
		fmt.Println(line)
	}
	// Output:
	// rev 1 at 12:00:00: register by alice, now junior and active
	// rev 2 at 13:00:00: update by bob, now senior and active
	// rev 3 at 14:00:00: deregister by carol, now senior and deregistered (replaced by v2)
}

func ExampleStore_DeregisterAgent() {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	s, done := openExample(&now)
	defer done()

	const id = "spiffe://example.org/agent/reconciler"
	if _, err := s.RegisterAgent(store.Agent{ID: id, Owner: "team-payments", Level: authz.Junior}, "alice"); err != nil {
		panic(err)
	}
	issue := func(accessor string, ttl time.Duration) error {
		return s.RecordCredential(store.Credential{Accessor: accessor, AgentID: id, Role: "db-read",
			IssuedAt: now, ExpiresAt: now.Add(ttl)})
	}
	for accessor, ttl := range map[string]time.Duration{"acc-1": time.Minute, "acc-2": time.Hour, "acc-3": time.Hour} {
		if err := issue(accessor, ttl); err != nil {
			panic(err)
		}
	}

	now = now.Add(10 * time.Minute) // acc-1 has expired by now
	_, queued, err := s.DeregisterAgent(id, "carol", "compromised")
	if err != nil {
		panic(err)
	}
	fmt.Println("queued by the deregistration:", len(queued))
	// A credential issued while the deregistration ran is queued too.
	if err := issue("acc-4", time.Hour); errors.Is(err, store.ErrDeregistered) {
		fmt.Println("late credential:", err)
	}

	// The revoker works off the queue: revoke each accessor in Vault, then
	// confirm it here.
	pending, err := s.PendingRevocations()
	if err != nil {
		panic(err)
	}
	for _, c := range pending {
		if err := s.CompleteRevocation(c.Accessor); err != nil {
			panic(err)
		}
		fmt.Println("revoked", c.Accessor)
	}
	pending, err = s.PendingRevocations()
	if err != nil {
		panic(err)
	}
	fmt.Println("still pending:", len(pending))
	// Output:
	// queued by the deregistration: 2
	// late credential: store: agent is deregistered: spiffe://example.org/agent/reconciler; credential queued for revocation
	// revoked acc-2
	// revoked acc-3
	// revoked acc-4
	// still pending: 0
}
