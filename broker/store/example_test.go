package store_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/delegation"
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
	_, rev, err := s.DeregisterAgent(id, "carol", "compromised")
	if err != nil {
		panic(err)
	}
	fmt.Println("revoked by the deregistration:", rev.Queued)
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
	for _, accessor := range pending {
		if err := s.CompleteRevocation(accessor); err != nil {
			panic(err)
		}
		fmt.Println("revoked in Vault:", accessor)
	}
	pending, err = s.PendingRevocations()
	if err != nil {
		panic(err)
	}
	fmt.Println("still pending:", len(pending))
	// Output:
	// revoked by the deregistration: [acc-2 acc-3]
	// late credential: store: agent is deregistered: spiffe://example.org/agent/reconciler; credential queued for revocation
	// revoked in Vault: acc-2
	// revoked in Vault: acc-3
	// revoked in Vault: acc-4
	// still pending: 0
}

func ExampleStore_RevokeLineage() {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	s, done := openExample(&now)
	defer done()

	const planner, researcher, summarizer = "spiffe://example.org/agent/planner",
		"spiffe://example.org/agent/researcher", "spiffe://example.org/agent/summarizer"
	for _, id := range []string{planner, researcher, summarizer} {
		if _, err := s.RegisterAgent(store.Agent{ID: id, Owner: "team-research", Level: authz.Senior}, "alice"); err != nil {
			panic(err)
		}
	}
	// The planner delegates to the researcher, which re-delegates to the
	// summarizer. Each grant has an anchor, a child of the one above it.
	grants := []delegation.Grant{
		{ID: "g1", Delegator: planner, Delegatee: researcher, Roles: []string{"web-read"}, Depth: 1, MaxDepth: 1},
		{ID: "g2", ParentID: "g1", Delegator: researcher, Delegatee: summarizer, Roles: []string{"web-read"}, Depth: 2},
	}
	for _, g := range grants {
		g.CreatedAt, g.ExpiresAt = now, now.Add(time.Hour)
		if err := s.PutGrant(g, 16); err != nil {
			panic(err)
		}
		parent := ""
		if g.ParentID != "" {
			parent = "anchor-" + g.ParentID
		}
		if err := s.AddAnchor(store.Anchor{Accessor: "anchor-" + g.ID, Node: store.GrantNode(g.ID), Parent: parent,
			CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
			panic(err)
		}
	}
	issue := func(accessor string) error {
		return s.RecordCredential(store.Credential{Accessor: accessor, AgentID: summarizer, Role: "web-read",
			GrantID: "g2", Anchor: "anchor-g2", IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	}
	if err := issue("token-1"); err != nil {
		panic(err)
	}

	// Revoking the planner's grant revokes everything below it.
	rev, err := s.RevokeLineage(store.Root{GrantID: "g1"}, "alice", "researcher compromised")
	if err != nil {
		panic(err)
	}
	for _, g := range rev.Grants {
		fmt.Println("revoked grant", g.ID)
	}
	fmt.Println("credentials revoked:", rev.CredentialCount())
	// token-1 dies with its anchor in Vault, so only the anchors are queued.
	fmt.Println("to revoke in Vault:", rev.Queued)
	if err := issue("token-2"); errors.Is(err, store.ErrRevoked) {
		fmt.Println("late credential:", err)
	}
	// Output:
	// revoked grant g1
	// revoked grant g2
	// credentials revoked: 1
	// to revoke in Vault: [anchor-g1 anchor-g2]
	// late credential: store: revoked: grant g1; credential queued for revocation
}
