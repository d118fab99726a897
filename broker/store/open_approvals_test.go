package store_test

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/broker/store"
)

// A lineage revocation cancels the open requests of the lineage's agents
// through the index of open requests by agent, also in a store written
// before that index (it is filled at Open), and a prune takes expired
// requests out of it.
func TestOpenApprovalsIndex(t *testing.T) {
	for _, older := range []bool{false, true} {
		name := "indexed"
		if older {
			name = "store before the index"
		}
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "atf.db")
			s, c := openLineage(t, path)
			put := func(id, agent, grant string) {
				t.Helper()
				if err := s.PutApproval(store.Approval{ID: id, AgentID: agent, GrantID: grant, Role: "db-write", Class: "write",
					DecisionID: "dec-" + id, CreatedAt: c.Now(), ExpiresAt: c.Now().Add(time.Hour)}); err != nil {
					t.Fatal(err)
				}
			}
			put("ap-a", agentA, "")
			put("ap-c-under-bc", agentC, "g-bc")
			put("ap-c-own", agentC, "")
			put("ap-x", agentX, "")
			put("ap-a-decided", agentA, "")
			if _, err := s.DecideApproval("ap-a-decided", "approver", false, "no", 0); err != nil {
				t.Fatal(err)
			}
			if older {
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				rawUpdate(t, path, func(tx *bolt.Tx) error {
					if err := tx.DeleteBucket([]byte("open_approvals")); err != nil {
						return err
					}
					return tx.Bucket([]byte("meta")).Delete([]byte("indexed_v2"))
				})
				s = openAt(t, path, store.Options{Now: c.Now})
			}
			rev, err := s.RevokeLineage(store.Root{AgentID: agentA}, "carol", "test")
			if err != nil {
				t.Fatal(err)
			}
			// A's own request and the one under g-bc (A > B > C); not C's
			// own, not X's, not the decided one.
			if got := slices.Sorted(slices.Values(rev.Approvals)); !slices.Equal(got, []string{"ap-a", "ap-c-under-bc"}) {
				t.Fatalf("cancelled %v, want ap-a and ap-c-under-bc", got)
			}
			for id, want := range map[string]store.ApprovalStatus{"ap-c-own": store.ApprovalPending, "ap-x": store.ApprovalPending, "ap-a": store.ApprovalCancelled} {
				if a, err := s.GetApproval(id); err != nil || a.Status != want {
					t.Errorf("%s = %s (%v), want %s", id, a.Status, err, want)
				}
			}
			c.Advance(2 * time.Hour)
			if p, err := s.Prune(c.Now(), "atfd"); err != nil || p.Approvals != 5 {
				t.Fatalf("Prune = %+v, %v; want the 5 requests", p, err)
			}
			if rev, err := s.RevokeLineage(store.Root{AgentID: agentX}, "carol", "test"); err != nil || len(rev.Approvals) != 0 {
				t.Fatalf("revoking X after the prune cancelled %v (%v), want nothing", rev.Approvals, err)
			}
		})
	}
}
