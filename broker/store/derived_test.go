package store_test

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/broker/store"
)

// Revoking a lineage writes one record per revoked node (its anchors), not
// one per credential: a credential under a revoked anchor keeps its record
// as it was and reads as revoked when its anchor was; a credential with no
// anchor is still marked on its own. Live credentials, lineages and a
// second revocation see the derived state (crash recovery: run_test).
func TestRevocationDerivedFromAnchors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atf.db")
	s, c := openLineage(t, path)
	now := c.Now().UTC()
	rev, err := s.RevokeLineage(store.Root{GrantID: "g-ab"}, "admin", "derived")
	if err != nil {
		t.Fatal(err)
	}
	if got := rev.CredentialCount(); got != 4 { // ab-anchored, ab-bare, bc-anchored, bc-bare
		t.Fatalf("revoked %d credentials, want 4: %v", got, rev.Credentials)
	}
	creds := allCredentials(t, s)
	for _, acc := range []string{"cred-ab-anchored", "cred-ab-bare", "cred-bc-anchored", "cred-bc-bare"} {
		if !creds[acc].RevokedAt.Equal(now) {
			t.Errorf("%s reads as revoked at %v, want %v", acc, creds[acc].RevokedAt, now)
		}
	}
	if !creds["cred-a-anchored"].RevokedAt.IsZero() || !creds["cred-xy-anchored"].RevokedAt.IsZero() {
		t.Error("a credential outside the lineage reads as revoked")
	}
	live, err := s.LiveCredentials(now)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := accessorsOf(live), []string{"cred-a-anchored", "cred-a-bare", "cred-ad-anchored", "cred-ad-bare", "cred-b-own", "cred-xy-anchored", "cred-xy-bare"}; !slices.Equal(got, want) {
		t.Errorf("LiveCredentials = %v, want %v", got, want)
	}
	_, lin, err := s.Lineage(store.Root{AgentID: agentA})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := accessorsOf(lin), []string{"cred-a-anchored", "cred-a-bare", "cred-ad-anchored", "cred-ad-bare"}; !slices.Equal(got, want) {
		t.Errorf("A's lineage = %v, want %v", got, want)
	}
	// Revoking A's lineage now revokes what the first revocation left, once.
	again, err := s.RevokeLineage(store.Root{AgentID: agentA}, "admin", "the rest")
	if err != nil {
		t.Fatal(err)
	}
	if got := again.CredentialCount(); got != 4 {
		t.Errorf("revoking A's lineage revoked %d credentials (%v), want A's and A→D's 4", got, again.Credentials)
	}

	// On disk: the anchored credential's record was not written again.
	if onEtcd() {
		return
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for acc, rewritten := range map[string]bool{"cred-ab-anchored": false, "cred-ab-bare": true} {
			var raw map[string]any
			v := tx.Bucket([]byte("credentials")).Get(append(append([]byte(agentB), 0), acc...))
			if err := json.Unmarshal(v, &raw); err != nil {
				return err
			}
			if _, marked := raw["revoked_at"]; marked != rewritten {
				t.Errorf("%s's record has revoked_at %t, want %t", acc, marked, rewritten)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A role anchor being made while its node's anchor is revoked (the agent's
// lineage revoked, the agent still active) is refused when recorded: it
// hangs below a dead anchor, and credentials under it would read as live.
func TestAddAnchorUnderRevokedParent(t *testing.T) {
	s, c := newLineage(t)
	if _, err := s.RevokeLineage(store.Root{AgentID: agentB}, "admin", "rotate"); err != nil {
		t.Fatal(err)
	}
	role := store.Anchor{Accessor: "anc-role-b", Node: store.RoleNode(store.AgentNode(agentB), "db-read"), Parent: "anc-3-b",
		CreatedAt: c.Now().UTC(), ExpiresAt: c.Now().Add(time.Hour).UTC()}
	if err := s.AddAnchor(role); !errors.Is(err, store.ErrRevoked) {
		t.Fatalf("AddAnchor under a revoked parent = %v, want ErrRevoked", err)
	}
	role.Accessor, role.Parent = "anc-role-b2", ""
	if err := s.AddAnchor(role); err != nil {
		t.Fatalf("AddAnchor for the still active agent, under no recorded parent: %v", err)
	}
}

// accessorsOf is the sorted accessors of creds.
func accessorsOf(creds []store.Credential) []string {
	out := make([]string, 0, len(creds))
	for _, c := range creds {
		out = append(out, c.Accessor)
	}
	slices.Sort(out)
	return out
}
