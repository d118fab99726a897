package store_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
)

// A store at its size limit refuses what records something new (ErrFull),
// still commits revocations in the room kept for them, and takes writes
// again once it may grow.
func TestStoreFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atf.db")
	const limit = 4 << 20
	s, err := store.Open(path, store.Options{MaxSize: limit})
	if err != nil {
		t.Fatal(err)
	}
	agent := "spiffe://atf.test/full/agent"
	if _, err := s.RegisterAgent(store.Agent{ID: agent, Owner: "o@example.org", Purpose: "p", Roles: []string{"r"}, Level: authz.Senior}, "admin"); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	live := map[string]bool{}
	record := func(i int) error {
		acc := fmt.Sprintf("acc-%06d", i)
		err := s.RecordCredential(store.Credential{Accessor: acc, AgentID: agent, Role: "r", Policies: []string{"p"}, IssuedAt: now,
			ExpiresAt: now.Add(time.Hour), Why: map[string]string{"decision": "allow", "padding": fmt.Sprintf("%0600d", i)}})
		if err == nil {
			live[acc] = true
		}
		return err
	}
	var n int
	for n = 0; n < 100_000; n++ {
		if err := record(n); err != nil {
			if !errors.Is(err, store.ErrFull) {
				t.Fatalf("record %d: %v, want ErrFull", n, err)
			}
			break
		}
	}
	if n == 100_000 || n < 100 {
		t.Fatalf("%d credentials recorded before the store was full", n)
	}
	if err := s.Full(); !errors.Is(err, store.ErrFull) {
		t.Fatalf("Full() = %v", err)
	}
	for _, write := range []func() error{
		func() error { return s.AppendAudit(store.AuditRecord{Kind: "credential_denied", Actor: agent}) },
		func() error {
			_, err := s.RegisterAgent(store.Agent{ID: agent + "-2", Owner: "o", Purpose: "p", Level: authz.Intern}, "admin")
			return err
		},
		func() error {
			return s.AddAnchor(store.Anchor{Accessor: "anchor-new", Node: store.AgentNode(agent), CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
		},
	} {
		if err := write(); !errors.Is(err, store.ErrFull) {
			t.Fatalf("a new record on a full store: %v, want ErrFull", err)
		}
	}
	// The revocation commits: every live credential of the lineage.
	rev, err := s.RevokeLineage(store.Root{AgentID: agent}, "admin", "store full")
	if err != nil {
		t.Fatalf("revoking on a full store: %v", err)
	}
	if rev.CredentialCount() != len(live) {
		t.Fatalf("revoked %d of %d live credentials", rev.CredentialCount(), len(live))
	}
	if _, _, err := s.KillAgent(agent, "admin", "store full", false); err != nil {
		t.Fatalf("kill on a full store: %v", err)
	}
	if v, err := s.VerifyAudit(); err != nil {
		t.Fatalf("audit after %d records: %v", v, err)
	}
	s.Close()

	// Space returns: the same file under a higher limit.
	if s, err = store.Open(path, store.Options{MaxSize: 4 * limit}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Full(); err != nil {
		t.Fatalf("Full() after raising the limit: %v", err)
	}
	if _, err := s.RegisterAgent(store.Agent{ID: agent + "-3", Owner: "o", Purpose: "p", Level: authz.Intern}, "admin"); err != nil {
		t.Fatalf("a new agent once space returned: %v", err)
	}
	t.Logf("%d credentials fit in %d bytes", n, limit)
}
