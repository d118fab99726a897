package store_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
)

// A run that ends without EndRun is a crash: the next BeginRun revokes
// every live anchor and credential and queues them for Vault; a clean end
// revokes nothing.
func TestBeginRunAfterCrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atf.db")
	s, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if crashed, _, err := s.BeginRun("atfd"); err != nil || crashed {
		t.Fatalf("first run: crashed %t, %v", crashed, err)
	}
	agent := "spiffe://atf.test/agent"
	if _, err := s.RegisterAgent(store.Agent{ID: agent, Owner: "o@example.org", Purpose: "p", Roles: []string{"r"}, Level: authz.Intern}, "admin"); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	root := store.Anchor{Accessor: "anchor-root", Node: store.AgentNode(agent), CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := s.AddAnchor(root); err != nil {
		t.Fatal(err)
	}
	for _, acc := range []string{"cred-1", "cred-2"} {
		if err := s.RecordCredential(store.Credential{Accessor: acc, AgentID: agent, Role: "r", IssuedAt: now, ExpiresAt: now.Add(time.Minute), Anchor: root.Accessor}); err != nil {
			t.Fatal(err)
		}
	}
	// A clean end and start revoke nothing.
	if err := s.EndRun(); err != nil {
		t.Fatal(err)
	}
	if crashed, rev, err := s.BeginRun("atfd"); err != nil || crashed || len(rev.Queued) != 0 {
		t.Fatalf("after a clean end: crashed %t, %v, %v", crashed, rev, err)
	}
	// No EndRun: a crash.
	s.Close()
	if s, err = store.Open(path, store.Options{}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	crashed, rev, err := s.BeginRun("atfd")
	if err != nil || !crashed || rev.CredentialCount() != 2 || len(rev.Queued) != 1 || rev.Queued[0] != root.Accessor {
		t.Fatalf("after a crash: crashed %t, revocation %+v, %v", crashed, rev, err)
	}
	if live, err := s.LiveCredentials(time.Now()); err != nil || len(live) != 0 {
		t.Fatalf("live credentials after recovery: %v, %v", live, err)
	}
	if q, err := s.PendingRevocations(); err != nil || len(q) != 1 || q[0] != root.Accessor {
		t.Fatalf("revocation queue: %v, %v", q, err)
	}
	recs, err := s.Audit(0, 100)
	if err != nil || recs[len(recs)-1].Kind != "crash_recovery" || recs[len(recs)-1].Detail["credentials"] != "2" {
		t.Fatalf("last audit record: %+v, %v", recs[len(recs)-1], err)
	}
}
