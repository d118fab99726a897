package store_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/delegation"
)

// The lineage fixture: A delegates to B (g-ab), B re-delegates to C (g-bc),
// A also delegates to D (g-ad), and X, unrelated, delegates to Y (g-xy).
// Probe is in no lineage; it tests whether an anchor is revoked.
const (
	agentA = "spiffe://td/agent/a"
	agentB = "spiffe://td/agent/b"
	agentC = "spiffe://td/agent/c"
	agentD = "spiffe://td/agent/d"
	agentX = "spiffe://td/agent/x"
	agentY = "spiffe://td/agent/y"
	probe  = "spiffe://td/agent/probe"
)

// fixtureGrants are the fixture's grants. g-bc expires before its parent.
func fixtureGrants() []delegation.Grant {
	grant := func(id, parent, from, to string, depth int, ttl time.Duration) delegation.Grant {
		return delegation.Grant{ID: id, ParentID: parent, Delegator: from, Delegatee: to, Roles: []string{"db-read"},
			Depth: depth, MaxDepth: 2 - depth, CreatedAt: t0.UTC(), ExpiresAt: t0.Add(ttl).UTC()}
	}
	return []delegation.Grant{
		grant("g-ab", "", agentA, agentB, 1, 24*time.Hour),
		grant("g-bc", "g-ab", agentB, agentC, 2, 12*time.Hour),
		grant("g-ad", "", agentA, agentD, 1, 24*time.Hour),
		grant("g-xy", "", agentX, agentY, 1, 24*time.Hour),
	}
}

// fixtureAnchors are the fixture's anchors, hung as the broker hangs them:
// a root grant's under its delegator's, any other under its parent grant's.
// Accessors sort against the hierarchy (children first), so that a queue
// kept in key order instead of lineage order shows.
func fixtureAnchors() []store.Anchor {
	anchor := func(acc, node, parent string, ttl time.Duration) store.Anchor {
		return store.Anchor{Accessor: acc, Node: node, Parent: parent, CreatedAt: t0.UTC(), ExpiresAt: t0.Add(ttl).UTC()}
	}
	return []store.Anchor{
		anchor("anc-3-a", store.AgentNode(agentA), "", time.Hour),
		anchor("anc-3-b", store.AgentNode(agentB), "", time.Hour),
		anchor("anc-3-x", store.AgentNode(agentX), "", time.Hour),
		anchor("anc-2-ab", store.GrantNode("g-ab"), "anc-3-a", time.Hour),
		anchor("anc-2-ad", store.GrantNode("g-ad"), "anc-3-a", time.Hour),
		anchor("anc-2-xy", store.GrantNode("g-xy"), "anc-3-x", time.Hour),
		anchor("anc-1-bc", store.GrantNode("g-bc"), "anc-2-ab", time.Hour),
		// Expired by the time the tests revoke; Vault has already dropped it.
		anchor("anc-0-bc-expired", store.GrantNode("g-bc"), "anc-2-ab", 5*time.Minute),
	}
}

// fixtureCredentials are the fixture's credentials. A bare one has no
// anchor, so a revocation must queue it on its own.
func fixtureCredentials() []store.Credential {
	cred := func(agentID, accessor, grantID, anchor string) store.Credential {
		c := credential(agentID, accessor)
		c.GrantID, c.Anchor = grantID, anchor
		return c
	}
	expired := func(c store.Credential) store.Credential {
		c.ExpiresAt = t0.Add(5 * time.Minute)
		return c
	}
	return []store.Credential{
		cred(agentA, "cred-a-anchored", "", "anc-3-a"),
		cred(agentA, "cred-a-bare", "", ""),
		expired(cred(agentA, "cred-a-expired", "", "")),
		cred(agentB, "cred-b-own", "", "anc-3-b"),
		cred(agentB, "cred-ab-anchored", "g-ab", "anc-2-ab"),
		cred(agentB, "cred-ab-bare", "g-ab", ""),
		cred(agentD, "cred-ad-anchored", "g-ad", "anc-2-ad"),
		cred(agentD, "cred-ad-bare", "g-ad", ""),
		cred(agentC, "cred-bc-anchored", "g-bc", "anc-1-bc"),
		cred(agentC, "cred-bc-bare", "g-bc", ""),
		expired(cred(agentC, "cred-bc-expired", "g-bc", "")),
		cred(agentY, "cred-xy-anchored", "g-xy", "anc-2-xy"),
		cred(agentY, "cred-xy-bare", "g-xy", ""),
	}
}

var fixtureAgents = []string{agentA, agentB, agentC, agentD, agentX, agentY, probe}

// openLineage opens a store at path holding the fixture, with the clock ten
// minutes on: the credentials have five minutes left, the expired ones and
// the expired anchor are past, and every grant is live.
func openLineage(t *testing.T, path string) (*store.Store, *clock) {
	t.Helper()
	c := newClock()
	s := openAt(t, path, store.Options{Now: c.Now})
	for _, id := range fixtureAgents {
		mustRegister(t, s, id, "alice")
	}
	for _, g := range fixtureGrants() {
		if err := s.PutGrant(g, 16); err != nil {
			t.Fatalf("PutGrant(%s): %v", g.ID, err)
		}
	}
	// Anchors and credentials go in concurrently: they share commits.
	concurrently(t, fixtureAnchors(), func(a store.Anchor) error { return s.AddAnchor(a) })
	concurrently(t, fixtureCredentials(), s.RecordCredential)
	c.Advance(10 * time.Minute)
	return s, c
}

func newLineage(t *testing.T) (*store.Store, *clock) {
	t.Helper()
	return openLineage(t, filepath.Join(t.TempDir(), "atf.db"))
}

// concurrently calls f on every item at once and fails the test on an error.
func concurrently[T any](t *testing.T, items []T, f func(T) error) {
	t.Helper()
	errs := make([]error, len(items))
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Go(func() { errs[i] = f(it) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// allCredentials returns every fixture agent's credentials by accessor.
func allCredentials(t *testing.T, s *store.Store) map[string]store.Credential {
	t.Helper()
	out := map[string]store.Credential{}
	for _, id := range fixtureAgents {
		for _, cr := range mustCredentials(t, s, id) {
			out[cr.Accessor] = cr
		}
	}
	return out
}

func grantIDs(gs []delegation.Grant) []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		out[i] = g.ID
	}
	return out
}

// sortedValues returns m with every value sorted, and nil for an empty m.
func sortedValues(m map[string][]string) map[string][]string {
	if len(m) == 0 {
		return nil
	}
	out := map[string][]string{}
	for k, v := range m {
		out[k] = slices.Sorted(slices.Values(v))
	}
	return out
}

// checkQueue checks a revocation queue: wantAnchors first, in that order,
// then wantCreds in any order.
func checkQueue(t *testing.T, what string, got, wantAnchors, wantCreds []string) {
	t.Helper()
	n := min(len(wantAnchors), len(got))
	gotCreds := slices.Sorted(slices.Values(got[n:]))
	if !slices.Equal(got[:n], wantAnchors) || !slices.Equal(gotCreds, slices.Sorted(slices.Values(wantCreds))) {
		t.Errorf("%s = %q, want anchors %q then credentials %q", what, got, wantAnchors, wantCreds)
	}
}

func mustAudit(t *testing.T, s *store.Store, after uint64) []store.AuditRecord {
	t.Helper()
	recs, err := s.Audit(after, 1<<20)
	if err != nil {
		t.Fatalf("Audit(%d): %v", after, err)
	}
	return recs
}

// lastSeq is the sequence number of the last audit record, 0 if none.
func lastSeq(t *testing.T, s *store.Store) uint64 {
	t.Helper()
	recs := mustAudit(t, s, 0)
	if len(recs) == 0 {
		return 0
	}
	return recs[len(recs)-1].Seq
}

// probeAnchor records a credential of the probe agent under anchor and
// reports whether the store took the anchor to be revoked.
func probeAnchor(t *testing.T, s *store.Store, anchor string) bool {
	t.Helper()
	cr := credential(probe, "probe-"+anchor)
	cr.Anchor = anchor
	err := s.RecordCredential(cr)
	if err != nil && !errors.Is(err, store.ErrRevoked) {
		t.Fatalf("RecordCredential under anchor %s: %v", anchor, err)
	}
	return err != nil
}

func TestRootString(t *testing.T) {
	for _, tt := range []struct {
		root store.Root
		want string
	}{
		{store.Root{AgentID: agentA}, "agent " + agentA},
		{store.Root{GrantID: "g-ab"}, "grant g-ab"},
	} {
		if got := tt.root.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.root, got, tt.want)
		}
	}
}

func TestRevokeLineage(t *testing.T) {
	tests := []struct {
		name   string
		root   store.Root
		revoke func(s *store.Store) (store.Revocation, error)
		// wantGrants are revoked, parents first; wantAnchors queued, in
		// that order; wantCreds revoked, by agent; wantQueuedCreds queued,
		// being under no queued anchor.
		wantGrants      []string
		wantAnchors     []string
		wantCreds       map[string][]string
		wantQueuedCreds []string
		// deregistration: the root agent is deregistered, audited before
		// its grants are.
		deregistration bool
	}{
		{
			name:        "grant A→B",
			root:        store.Root{GrantID: "g-ab"},
			wantGrants:  []string{"g-ab", "g-bc"},
			wantAnchors: []string{"anc-2-ab", "anc-1-bc"},
			wantCreds: map[string][]string{
				agentB: {"cred-ab-anchored", "cred-ab-bare"},
				agentC: {"cred-bc-anchored", "cred-bc-bare"},
			},
			wantQueuedCreds: []string{"cred-ab-bare", "cred-bc-bare"},
		},
		{
			name:            "grant B→C, a leaf",
			root:            store.Root{GrantID: "g-bc"},
			wantGrants:      []string{"g-bc"},
			wantAnchors:     []string{"anc-1-bc"},
			wantCreds:       map[string][]string{agentC: {"cred-bc-anchored", "cred-bc-bare"}},
			wantQueuedCreds: []string{"cred-bc-bare"},
		},
		{
			name:        "agent A",
			root:        store.Root{AgentID: agentA},
			wantGrants:  []string{"g-ab", "g-ad", "g-bc"},
			wantAnchors: []string{"anc-3-a", "anc-2-ab", "anc-2-ad", "anc-1-bc"},
			wantCreds: map[string][]string{
				agentA: {"cred-a-anchored", "cred-a-bare"},
				agentB: {"cred-ab-anchored", "cred-ab-bare"},
				agentC: {"cred-bc-anchored", "cred-bc-bare"},
				agentD: {"cred-ad-anchored", "cred-ad-bare"},
			},
			wantQueuedCreds: []string{"cred-a-bare", "cred-ab-bare", "cred-ad-bare", "cred-bc-bare"},
		},
		{
			name: "deregistering agent A",
			root: store.Root{AgentID: agentA},
			revoke: func(s *store.Store) (store.Revocation, error) {
				_, rev, err := s.DeregisterAgent(agentA, "carol", "compromised")
				return rev, err
			},
			wantGrants:  []string{"g-ab", "g-ad", "g-bc"},
			wantAnchors: []string{"anc-3-a", "anc-2-ab", "anc-2-ad", "anc-1-bc"},
			wantCreds: map[string][]string{
				agentA: {"cred-a-anchored", "cred-a-bare"},
				agentB: {"cred-ab-anchored", "cred-ab-bare"},
				agentC: {"cred-bc-anchored", "cred-bc-bare"},
				agentD: {"cred-ad-anchored", "cred-ad-bare"},
			},
			wantQueuedCreds: []string{"cred-a-bare", "cred-ab-bare", "cred-ad-bare", "cred-bc-bare"},
			deregistration:  true,
		},
		{
			// B loses every credential it holds, even those under g-ab,
			// which stays live; their anchor stays live too, so they are
			// queued on their own.
			name:        "agent B, in the middle",
			root:        store.Root{AgentID: agentB},
			wantGrants:  []string{"g-bc"},
			wantAnchors: []string{"anc-3-b", "anc-1-bc"},
			wantCreds: map[string][]string{
				agentB: {"cred-ab-anchored", "cred-ab-bare", "cred-b-own"},
				agentC: {"cred-bc-anchored", "cred-bc-bare"},
			},
			wantQueuedCreds: []string{"cred-ab-anchored", "cred-ab-bare", "cred-bc-bare"},
		},
		{
			name:            "agent Y, which gave nothing",
			root:            store.Root{AgentID: agentY},
			wantCreds:       map[string][]string{agentY: {"cred-xy-anchored", "cred-xy-bare"}},
			wantQueuedCreds: []string{"cred-xy-anchored", "cred-xy-bare"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := newLineage(t)
			if tt.revoke == nil {
				tt.revoke = func(s *store.Store) (store.Revocation, error) {
					return s.RevokeLineage(tt.root, "carol", "compromised")
				}
			}
			now := c.Now().UTC()
			before := allCredentials(t, s)
			seq := lastSeq(t, s)

			rev, err := tt.revoke(s)
			if err != nil {
				t.Fatalf("revoking: %v", err)
			}
			if got := grantIDs(rev.Grants); !slices.Equal(got, tt.wantGrants) {
				t.Errorf("revoked grants %q, want %q", got, tt.wantGrants)
			}
			for _, g := range rev.Grants {
				if !g.RevokedAt.Equal(now) {
					t.Errorf("returned grant %s has RevokedAt %v, want %v", g.ID, g.RevokedAt, now)
				}
			}
			if got := sortedValues(rev.Credentials); !reflect.DeepEqual(got, tt.wantCreds) {
				t.Errorf("revoked credentials %q, want %q", got, tt.wantCreds)
			}
			checkQueue(t, "Revocation.Queued", rev.Queued, tt.wantAnchors, tt.wantQueuedCreds)
			pending := mustPending(t, s)
			checkQueue(t, "PendingRevocations", pending, tt.wantAnchors, tt.wantQueuedCreds)

			// Exactly the lineage is revoked, at the commit.
			for _, g := range fixtureGrants() {
				got, err := s.GetGrant(g.ID)
				if err != nil {
					t.Fatalf("GetGrant(%s): %v", g.ID, err)
				}
				if slices.Contains(tt.wantGrants, g.ID) {
					g.RevokedAt = now
				}
				if !reflect.DeepEqual(got, g) {
					t.Errorf("grant %s =\n %+v\nwant\n %+v", g.ID, got, g)
				}
			}
			want := maps.Clone(before)
			for _, accs := range tt.wantCreds {
				for _, acc := range accs {
					cr := want[acc]
					cr.RevokedAt = now
					want[acc] = cr
				}
			}
			if got := allCredentials(t, s); !reflect.DeepEqual(got, want) {
				t.Errorf("credentials after the revocation:\n %+v\nwant\n %+v", got, want)
			}

			// One audit record per revoked grant, after the deregistration's.
			var wantAudit []store.AuditRecord
			if tt.deregistration {
				wantAudit = append(wantAudit, store.AuditRecord{Time: now, Kind: "agent_deregistered", Actor: "carol", Subject: tt.root.AgentID,
					Detail: map[string]string{"agent": tt.root.AgentID, "level": "junior", "revision": "2", "reason": "compromised",
						"changed": "status", "status": "deregistered"}})
			}
			for _, g := range rev.Grants {
				wantAudit = append(wantAudit, store.AuditRecord{Time: now, Kind: "grant_revoked", Actor: "carol", Subject: g.ID,
					Detail: map[string]string{"delegator": g.Delegator, "delegatee": g.Delegatee, "root": tt.root.String(), "reason": "compromised"}})
			}
			audit := mustAudit(t, s, seq)
			for i := range audit {
				audit[i].Seq, audit[i].Prev, audit[i].Hash = 0, "", ""
			}
			if !reflect.DeepEqual(audit, wantAudit) {
				t.Errorf("audit records of the revocation:\n %+v\nwant\n %+v", audit, wantAudit)
			}

			// Revoking again finds nothing new.
			seq = lastSeq(t, s)
			again, err := s.RevokeLineage(tt.root, "dave", "again")
			if err != nil {
				t.Fatalf("second RevokeLineage: %v", err)
			}
			if len(again.Grants) != 0 || again.CredentialCount() != 0 || len(again.Queued) != 0 {
				t.Errorf("second RevokeLineage revoked %+v, want nothing", again)
			}
			if got := mustPending(t, s); !slices.Equal(got, pending) {
				t.Errorf("PendingRevocations after a second RevokeLineage = %q, want %q", got, pending)
			}
			if got := mustAudit(t, s, seq); len(got) != 0 {
				t.Errorf("second RevokeLineage wrote audit records %+v", got)
			}

			// Only the queued anchors are marked revoked; the expired one is
			// left as it was.
			for _, an := range fixtureAnchors() {
				if got, want := probeAnchor(t, s, an.Accessor), slices.Contains(tt.wantAnchors, an.Accessor); got != want {
					t.Errorf("anchor %s revoked = %v, want %v", an.Accessor, got, want)
				}
			}
		})
	}
}

func TestRevokeLineageUnknownRoot(t *testing.T) {
	tests := []struct {
		root    store.Root
		wantErr string
	}{
		{store.Root{AgentID: "spiffe://td/agent/nobody"}, "store: not found: agent spiffe://td/agent/nobody"},
		{store.Root{GrantID: "g-nope"}, "store: not found: grant g-nope"},
	}
	for _, tt := range tests {
		t.Run(tt.root.String(), func(t *testing.T) {
			s, _ := newLineage(t)
			seq := lastSeq(t, s)
			rev, err := s.RevokeLineage(tt.root, "carol", "typo")
			if !errors.Is(err, store.ErrNotFound) || err.Error() != tt.wantErr {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if !reflect.DeepEqual(rev, store.Revocation{}) {
				t.Errorf("RevokeLineage returned %+v along with its error", rev)
			}
			if got := mustPending(t, s); len(got) != 0 {
				t.Errorf("PendingRevocations = %q, want none", got)
			}
			if got := mustAudit(t, s, seq); len(got) != 0 {
				t.Errorf("failed RevokeLineage wrote audit records %+v", got)
			}
		})
	}
}

func TestLineage(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, s *store.Store)
		root    store.Root
		// wantGrants parents first; wantLive in any order.
		wantGrants []string
		wantLive   []string
	}{
		{
			name:       "grant A→B",
			root:       store.Root{GrantID: "g-ab"},
			wantGrants: []string{"g-ab", "g-bc"},
			wantLive:   []string{"cred-ab-anchored", "cred-ab-bare", "cred-bc-anchored", "cred-bc-bare"},
		},
		{
			name:       "agent A",
			root:       store.Root{AgentID: agentA},
			wantGrants: []string{"g-ab", "g-ad", "g-bc"},
			wantLive: []string{"cred-a-anchored", "cred-a-bare", "cred-ab-anchored", "cred-ab-bare",
				"cred-ad-anchored", "cred-ad-bare", "cred-bc-anchored", "cred-bc-bare"},
		},
		{
			name:     "agent C, which gave nothing",
			root:     store.Root{AgentID: agentC},
			wantLive: []string{"cred-bc-anchored", "cred-bc-bare"},
		},
		{
			// A revoked grant is still listed, so that its lineage can be
			// shown; its credentials are not.
			name: "grant A→B after revoking B→C",
			prepare: func(t *testing.T, s *store.Store) {
				if _, err := s.RevokeLineage(store.Root{GrantID: "g-bc"}, "carol", "test"); err != nil {
					t.Fatal(err)
				}
			},
			root:       store.Root{GrantID: "g-ab"},
			wantGrants: []string{"g-ab", "g-bc"},
			wantLive:   []string{"cred-ab-anchored", "cred-ab-bare"},
		},
		{
			name: "agent A after revoking agent B",
			prepare: func(t *testing.T, s *store.Store) {
				if _, err := s.RevokeLineage(store.Root{AgentID: agentB}, "carol", "test"); err != nil {
					t.Fatal(err)
				}
			},
			root:       store.Root{AgentID: agentA},
			wantGrants: []string{"g-ab", "g-ad", "g-bc"},
			wantLive:   []string{"cred-a-anchored", "cred-a-bare", "cred-ad-anchored", "cred-ad-bare"},
		},
		{
			name: "agent A after revoking it",
			prepare: func(t *testing.T, s *store.Store) {
				if _, err := s.RevokeLineage(store.Root{AgentID: agentA}, "carol", "test"); err != nil {
					t.Fatal(err)
				}
			},
			root:       store.Root{AgentID: agentA},
			wantGrants: []string{"g-ab", "g-ad", "g-bc"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newLineage(t)
			if tt.prepare != nil {
				tt.prepare(t, s)
			}
			grants, live, err := s.Lineage(tt.root)
			if err != nil {
				t.Fatalf("Lineage: %v", err)
			}
			if got := grantIDs(grants); !slices.Equal(got, tt.wantGrants) {
				t.Errorf("grants %q, want %q", got, tt.wantGrants)
			}
			stored := allCredentials(t, s)
			for _, cr := range live {
				if !reflect.DeepEqual(cr, stored[cr.Accessor]) {
					t.Errorf("live credential\n %+v\nis stored as\n %+v", cr, stored[cr.Accessor])
				}
			}
			if got := slices.Sorted(slices.Values(accessors(live))); !slices.Equal(got, tt.wantLive) {
				t.Errorf("live credentials %q, want %q", got, tt.wantLive)
			}
		})
	}
}

func TestLineageUnknownRoot(t *testing.T) {
	s, _ := newLineage(t)
	for _, tt := range []struct {
		root    store.Root
		wantErr string
	}{
		{store.Root{AgentID: "spiffe://td/agent/nobody"}, "store: not found: agent spiffe://td/agent/nobody"},
		{store.Root{GrantID: "g-nope"}, "store: not found: grant g-nope"},
	} {
		grants, live, err := s.Lineage(tt.root)
		if !errors.Is(err, store.ErrNotFound) || err.Error() != tt.wantErr {
			t.Errorf("Lineage(%v): err = %v, want %q", tt.root, err, tt.wantErr)
		}
		if grants != nil || live != nil {
			t.Errorf("Lineage(%v) returned %d grants and %d credentials along with its error", tt.root, len(grants), len(live))
		}
	}
}

func TestGrants(t *testing.T) {
	s, _ := newLineage(t)
	byID := map[string]delegation.Grant{}
	for _, g := range fixtureGrants() {
		byID[g.ID] = g
	}
	for id, want := range byID {
		if got, err := s.GetGrant(id); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("GetGrant(%s) = %+v, %v; want %+v", id, got, err, want)
		}
	}
	if _, err := s.GetGrant("g-nope"); !errors.Is(err, store.ErrNotFound) || err.Error() != "store: not found: grant g-nope" {
		t.Errorf("GetGrant(g-nope): err = %v, want ErrNotFound", err)
	}
	// Revoked grants are still found, chained and listed.
	if _, err := s.RevokeLineage(store.Root{GrantID: "g-ab"}, "carol", "test"); err != nil {
		t.Fatal(err)
	}

	chains := []struct {
		id   string
		want []string
	}{
		{"g-ab", []string{"g-ab"}},
		{"g-bc", []string{"g-ab", "g-bc"}},
		{"g-xy", []string{"g-xy"}},
	}
	for _, tt := range chains {
		chain, err := s.Chain(tt.id)
		if err != nil {
			t.Fatalf("Chain(%s): %v", tt.id, err)
		}
		if got := grantIDs(chain); !slices.Equal(got, tt.want) {
			t.Errorf("Chain(%s) = %q, want %q", tt.id, got, tt.want)
		}
	}
	if chain, err := s.Chain("g-nope"); !errors.Is(err, store.ErrNotFound) || chain != nil {
		t.Errorf("Chain(g-nope) = %q, %v; want ErrNotFound", grantIDs(chain), err)
	}

	given := []struct {
		agent string
		want  []string
	}{
		{agentA, []string{"g-ab", "g-ad"}},
		{agentB, []string{"g-bc"}},
		{agentC, nil},
		{"spiffe://td/agent", nil}, // a prefix of every fixture agent
		{"spiffe://td/agent/nobody", nil},
	}
	for _, tt := range given {
		gs, err := s.GrantsGivenBy(tt.agent)
		if err != nil {
			t.Fatalf("GrantsGivenBy(%s): %v", tt.agent, err)
		}
		if got := grantIDs(gs); !slices.Equal(got, tt.want) {
			t.Errorf("GrantsGivenBy(%s) = %q, want %q", tt.agent, got, tt.want)
		}
	}
}

func TestPutGrant(t *testing.T) {
	grant := func(id, parent, from, to string, depth int) delegation.Grant {
		return delegation.Grant{ID: id, ParentID: parent, Delegator: from, Delegatee: to, Roles: []string{"db-read"},
			Depth: depth, CreatedAt: t0.UTC(), ExpiresAt: t0.Add(time.Hour).UTC()}
	}
	revoke := func(root store.Root) func(*testing.T, *store.Store, *clock) {
		return func(t *testing.T, s *store.Store, _ *clock) {
			if _, err := s.RevokeLineage(root, "carol", "test"); err != nil {
				t.Fatal(err)
			}
		}
	}
	deregister := func(id string) func(*testing.T, *store.Store, *clock) {
		return func(t *testing.T, s *store.Store, _ *clock) { mustDeregister(t, s, id, "carol", "test") }
	}
	tests := []struct {
		name      string
		prepare   func(*testing.T, *store.Store, *clock)
		grant     delegation.Grant
		maxFanOut int
		wantIs    error
		wantErr   string
		wantChain []string
	}{
		{name: "of own authority", grant: grant("g-new", "", agentA, agentC, 1), maxFanOut: 16, wantChain: []string{"g-new"}},
		{name: "under a live chain", grant: grant("g-new", "g-bc", agentC, agentD, 3), maxFanOut: 16, wantChain: []string{"g-ab", "g-bc", "g-new"}},
		{
			name: "duplicate ID", grant: grant("g-ab", "", agentA, agentC, 1), maxFanOut: 16,
			wantIs: store.ErrExists, wantErr: "store: already exists: grant g-ab",
		},
		{
			name: "under a revoked parent", prepare: revoke(store.Root{GrantID: "g-bc"}),
			grant: grant("g-new", "g-bc", agentC, agentD, 3), maxFanOut: 16,
			wantIs: store.ErrRevoked, wantErr: "store: revoked: grant g-bc",
		},
		{
			name: "under a revoked ancestor", prepare: revoke(store.Root{GrantID: "g-ab"}),
			grant: grant("g-new", "g-bc", agentC, agentD, 3), maxFanOut: 16,
			wantIs: store.ErrRevoked, wantErr: "store: revoked: grant g-ab",
		},
		{
			name: "under a grant its delegator lost", prepare: deregister(agentB),
			grant: grant("g-new", "g-bc", agentC, agentD, 3), maxFanOut: 16,
			wantIs: store.ErrRevoked, wantErr: "store: revoked: grant g-bc",
		},
		{
			name:    "under an expired parent",
			prepare: func(_ *testing.T, _ *store.Store, c *clock) { c.Advance(12 * time.Hour) },
			grant:   grant("g-new", "g-bc", agentC, agentD, 3), maxFanOut: 16,
			wantIs: store.ErrRevoked, wantErr: "store: revoked: grant g-bc expired",
		},
		{
			name: "under an unknown parent", grant: grant("g-new", "g-nope", agentC, agentD, 3), maxFanOut: 16,
			wantIs: store.ErrNotFound, wantErr: "store: not found: grant g-nope",
		},
		{
			name: "inactive delegatee", prepare: deregister(agentD),
			grant: grant("g-new", "g-bc", agentC, agentD, 3), maxFanOut: 16,
			wantIs: store.ErrDeregistered, wantErr: "store: agent is deregistered: " + agentD,
		},
		{
			name: "inactive delegator", prepare: deregister(agentC),
			grant: grant("g-new", "", agentC, agentD, 1), maxFanOut: 16,
			wantIs: store.ErrDeregistered, wantErr: "store: agent is deregistered: " + agentC,
		},
		{
			name: "unknown delegatee", grant: grant("g-new", "", agentA, "spiffe://td/agent/nobody", 1), maxFanOut: 16,
			wantIs: store.ErrNotFound, wantErr: "store: not found: agent spiffe://td/agent/nobody",
		},
		{
			name: "killed delegator",
			prepare: func(t *testing.T, s *store.Store, _ *clock) {
				if _, _, err := s.KillAgent(agentC, "carol", "test", false); err != nil {
					t.Fatal(err)
				}
			},
			grant: grant("g-new", "", agentC, agentD, 1), maxFanOut: 16,
			wantIs: store.ErrKilled, wantErr: "store: stopped by the kill switch: agent " + agentC,
		},
		{
			name: "fan-out reached", grant: grant("g-new", "", agentA, agentC, 1), maxFanOut: 2,
			wantIs: store.ErrLimit, wantErr: "store: limit reached: " + agentA + " already holds out 2 live grants here (limit 2)",
		},
		{
			name: "fan-out counts live grants only", prepare: revoke(store.Root{GrantID: "g-ad"}),
			grant: grant("g-new", "", agentA, agentC, 1), maxFanOut: 2, wantChain: []string{"g-new"},
		},
		{
			// B's only grant hangs under g-ab, not under its own authority.
			name:  "fan-out counts grants under the same parent only",
			grant: grant("g-new", "", agentB, agentD, 1), maxFanOut: 1, wantChain: []string{"g-new"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := newLineage(t)
			if tt.prepare != nil {
				tt.prepare(t, s, c)
			}
			given, err := s.GrantsGivenBy(tt.grant.Delegator)
			if err != nil {
				t.Fatal(err)
			}
			before, beforeErr := s.GetGrant(tt.grant.ID)
			seq := lastSeq(t, s)

			err = s.ForRequest(store.Request{ID: "req-1"}).PutGrant(tt.grant, tt.maxFanOut)
			audit := mustAudit(t, s, seq)
			mustVerifyAudit(t, s)
			if tt.wantIs == nil {
				if err != nil {
					t.Fatalf("PutGrant: %v", err)
				}
				// Its audit record is committed with it.
				want := []store.AuditRecord{{Seq: seq + 1, Time: c.Now().UTC(), Kind: "grant_created", Actor: tt.grant.Delegator, Subject: tt.grant.ID,
					Detail: map[string]string{"delegatee": tt.grant.Delegatee, "roles": "db-read", "parent": tt.grant.ParentID, "expires_at": "2025-03-01T12:00:00Z",
						"request_id": "req-1"}}}
				for i := range audit {
					audit[i].Prev, audit[i].Hash = "", ""
				}
				if !reflect.DeepEqual(audit, want) {
					t.Errorf("audit records of PutGrant:\n %+v\nwant\n %+v", audit, want)
				}
				if got, err := s.GetGrant(tt.grant.ID); err != nil || !reflect.DeepEqual(got, tt.grant) {
					t.Errorf("GetGrant = %+v, %v; want %+v", got, err, tt.grant)
				}
				chain, err := s.Chain(tt.grant.ID)
				if err != nil || !slices.Equal(grantIDs(chain), tt.wantChain) {
					t.Errorf("Chain = %q, %v; want %q", grantIDs(chain), err, tt.wantChain)
				}
				if got := grantIDs(mustGivenBy(t, s, tt.grant.Delegator)); !slices.Contains(got, tt.grant.ID) || len(got) != len(given)+1 {
					t.Errorf("GrantsGivenBy(%s) = %q, want %q and %s", tt.grant.Delegator, got, grantIDs(given), tt.grant.ID)
				}
				return
			}
			if !errors.Is(err, tt.wantIs) || err.Error() != tt.wantErr {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			// A refused grant leaves no trace, in the audit trail neither.
			if len(audit) != 0 {
				t.Errorf("a refused PutGrant wrote audit records %+v", audit)
			}
			if after, afterErr := s.GetGrant(tt.grant.ID); !reflect.DeepEqual(after, before) || fmt.Sprint(afterErr) != fmt.Sprint(beforeErr) {
				t.Errorf("GetGrant after a refused PutGrant = %+v, %v; want %+v, %v", after, afterErr, before, beforeErr)
			}
			if got := mustGivenBy(t, s, tt.grant.Delegator); !reflect.DeepEqual(got, given) {
				t.Errorf("GrantsGivenBy(%s) = %q, want %q", tt.grant.Delegator, grantIDs(got), grantIDs(given))
			}
		})
	}
}

func mustGivenBy(t *testing.T, s *store.Store, agentID string) []delegation.Grant {
	t.Helper()
	gs, err := s.GrantsGivenBy(agentID)
	if err != nil {
		t.Fatalf("GrantsGivenBy(%s): %v", agentID, err)
	}
	return gs
}

// A credential racing a revocation of its lineage must end up revoked all
// the same: the store refuses it, records it as revoked and queues it.
func TestRecordCredentialRefused(t *testing.T) {
	revoke := func(root store.Root) func(*testing.T, *store.Store, *clock) {
		return func(t *testing.T, s *store.Store, _ *clock) {
			if _, err := s.RevokeLineage(root, "carol", "test"); err != nil {
				t.Fatal(err)
			}
		}
	}
	deregister := func(id string) func(*testing.T, *store.Store, *clock) {
		return func(t *testing.T, s *store.Store, _ *clock) { mustDeregister(t, s, id, "carol", "test") }
	}
	advance := func(d time.Duration) func(*testing.T, *store.Store, *clock) {
		return func(_ *testing.T, _ *store.Store, c *clock) { c.Advance(d) }
	}
	underBC := func(anchor string) store.Credential {
		c := credential(agentC, "cred-new")
		c.GrantID, c.Anchor = "g-bc", anchor
		return c
	}
	ownOfB := func(anchor string) store.Credential {
		c := credential(agentB, "cred-new")
		c.Anchor = anchor
		return c
	}
	const queued = "; credential queued for revocation"
	tests := []struct {
		name    string
		prepare func(*testing.T, *store.Store, *clock)
		cred    store.Credential
		wantIs  error // nil: recorded live
		wantErr string
	}{
		{name: "live grant and anchor", cred: underBC("anc-1-bc")},
		{name: "live anchor of the agent's own", cred: ownOfB("anc-3-b")},
		{
			name: "grant revoked", prepare: revoke(store.Root{GrantID: "g-bc"}), cred: underBC("anc-1-bc"),
			wantIs: store.ErrRevoked, wantErr: "store: revoked: grant g-bc" + queued,
		},
		{
			name: "ancestor grant revoked", prepare: revoke(store.Root{GrantID: "g-ab"}), cred: underBC("anc-1-bc"),
			wantIs: store.ErrRevoked, wantErr: "store: revoked: grant g-ab" + queued,
		},
		{
			name: "delegator deregistered", prepare: deregister(agentB), cred: underBC("anc-1-bc"),
			wantIs: store.ErrRevoked, wantErr: "store: revoked: grant g-bc" + queued,
		},
		{
			name: "root delegator deregistered", prepare: deregister(agentA), cred: underBC("anc-1-bc"),
			wantIs: store.ErrRevoked, wantErr: "store: revoked: grant g-ab" + queued,
		},
		{
			name: "holder deregistered", prepare: deregister(agentC), cred: underBC("anc-1-bc"),
			wantIs: store.ErrDeregistered, wantErr: "store: agent is deregistered: " + agentC + queued,
		},
		{
			name: "grant expired", prepare: advance(12 * time.Hour), cred: underBC("anc-1-bc"),
			wantIs: store.ErrRevoked, wantErr: "store: revoked: grant g-bc expired" + queued,
		},
		{
			name: "ancestor grant expired", prepare: advance(24 * time.Hour), cred: underBC("anc-1-bc"),
			wantIs: store.ErrRevoked, wantErr: "store: revoked: grant g-ab expired" + queued,
		},
		{
			// B stays active, but its lineage, its own anchor included, is
			// revoked.
			name: "anchor revoked", prepare: revoke(store.Root{AgentID: agentB}), cred: ownOfB("anc-3-b"),
			wantIs: store.ErrRevoked, wantErr: "store: revoked: anchor of " + agentB + queued,
		},
		{
			name: "unknown anchor", cred: underBC("anc-nope"),
			wantIs: store.ErrRevoked, wantErr: "store: revoked: anchor of " + agentC + queued,
		},
		{
			// Refused and queued like the others, but the error says why:
			// the store does not know the grant.
			name: "unknown grant", cred: func() store.Credential { c := underBC(""); c.GrantID = "g-nope"; return c }(),
			wantIs: store.ErrNotFound, wantErr: "store: not found: grant g-nope" + queued,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := newLineage(t)
			if tt.prepare != nil {
				tt.prepare(t, s, c)
			}
			pending := mustPending(t, s)

			err := s.RecordCredential(tt.cred)
			want := tt.cred
			wantPending := pending
			switch {
			case tt.wantIs == nil && err != nil:
				t.Fatalf("RecordCredential: %v", err)
			case tt.wantIs != nil && (!errors.Is(err, tt.wantIs) || err.Error() != tt.wantErr):
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			case tt.wantIs != nil:
				want.RevokedAt = c.Now().UTC()
				wantPending = append(slices.Clone(pending), want.Accessor)
			}
			if got := allCredentials(t, s)[want.Accessor]; !reflect.DeepEqual(got, want) {
				t.Errorf("recorded\n %+v\nwant\n %+v", got, want)
			}
			if got := mustPending(t, s); !slices.Equal(got, wantPending) {
				t.Errorf("PendingRevocations = %q, want %q", got, wantPending)
			}
			_, live, err := s.Lineage(store.Root{AgentID: want.AgentID})
			if err != nil {
				t.Fatalf("Lineage: %v", err)
			}
			if got := slices.Contains(accessors(live), want.Accessor); got != (tt.wantIs == nil) {
				t.Errorf("Lineage lists the credential as live: %v, want %v", got, tt.wantIs == nil)
			}
		})
	}
}

// However recordings under a grant and a revocation of its lineage
// interleave, no credential stays live: one recorded before the revocation
// is revoked by it and queued (or dies with its queued anchor), one recorded
// after is refused, recorded as revoked and queued. Each worker records in
// sequence until it is refused, and the revocation starts once the first
// record is in, so that both cases occur.
func TestRecordCredentialRacesRevokeLineage(t *testing.T) {
	tests := []struct {
		name   string
		revoke func(*store.Store) (store.Revocation, error)
		// changes is the number of agent records the revocation changes.
		changes int
	}{
		{"the grant", func(s *store.Store) (store.Revocation, error) {
			return s.RevokeLineage(store.Root{GrantID: "g-bc"}, "carol", "race")
		}, 0},
		{"its parent grant", func(s *store.Store) (store.Revocation, error) {
			return s.RevokeLineage(store.Root{GrantID: "g-ab"}, "carol", "race")
		}, 0},
		{"the root delegator", func(s *store.Store) (store.Revocation, error) {
			return s.RevokeLineage(store.Root{AgentID: agentA}, "carol", "race")
		}, 0},
		{"deregistering the delegator", func(s *store.Store) (store.Revocation, error) {
			_, rev, err := s.DeregisterAgent(agentB, "carol", "race")
			return rev, err
		}, 1},
	}
	const workers = 50
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := newLineage(t)
			type attempt struct {
				cred store.Credential
				err  error
			}
			attempts := make([][]attempt, workers)
			var (
				rev       store.Revocation
				revErr    error
				wg        sync.WaitGroup
				firstIn   = make(chan struct{})
				closeOnce sync.Once
				revoked   = make(chan struct{})
			)
			for w := range workers {
				wg.Go(func() {
					for i := 0; ; i++ {
						cr := credential(agentC, fmt.Sprintf("race-%02d-%03d", w, i))
						cr.GrantID = "g-bc"
						if w%2 == 0 {
							cr.Anchor = "anc-1-bc"
						}
						var after bool // the revocation is done before this attempt
						select {
						case <-revoked:
							after = true
						default:
						}
						err := s.RecordCredential(cr)
						attempts[w] = append(attempts[w], attempt{cr, err})
						closeOnce.Do(func() { close(firstIn) })
						if err != nil || after {
							return
						}
					}
				})
			}
			wg.Go(func() {
				defer close(revoked)
				<-firstIn
				rev, revErr = tt.revoke(s)
			})
			wg.Wait()
			if revErr != nil {
				t.Fatalf("revoking: %v", revErr)
			}

			before := map[string]bool{}
			for _, acc := range rev.Credentials[agentC] {
				before[acc] = true
			}
			queuedByRev := map[string]bool{}
			for _, acc := range rev.Queued {
				queuedByRev[acc] = true
			}
			pending := map[string]bool{}
			for _, acc := range mustPending(t, s) {
				pending[acc] = true
			}
			stored := allCredentials(t, s)
			now := c.Now().UTC()
			var recorded, refused int
			for _, as := range attempts {
				for _, a := range as {
					acc := a.cred.Accessor
					switch {
					case a.err == nil:
						recorded++
						if !before[acc] {
							t.Errorf("%s recorded before the revocation but not revoked by it", acc)
						}
						// Queued on its own exactly when its anchor is not.
						if underQueued := a.cred.Anchor != "" && queuedByRev[a.cred.Anchor]; queuedByRev[acc] == underQueued {
							t.Errorf("%s (anchor %q): queued on its own = %v, its anchor queued = %v", acc, a.cred.Anchor, queuedByRev[acc], underQueued)
						}
						if !pending[acc] && !(a.cred.Anchor != "" && pending[a.cred.Anchor]) {
							t.Errorf("%s is neither queued nor under a queued anchor", acc)
						}
					case errors.Is(a.err, store.ErrRevoked):
						refused++
						if before[acc] {
							t.Errorf("%s refused yet revoked by the revocation", acc)
						}
						if !pending[acc] {
							t.Errorf("%s refused but not queued", acc)
						}
					default:
						t.Errorf("RecordCredential(%s): %v", acc, a.err)
					}
					if got := stored[acc].RevokedAt; !got.Equal(now) {
						t.Errorf("%s: RevokedAt = %v, want %v", acc, got, now)
					}
				}
			}
			t.Logf("%d credentials recorded before the revocation, %d refused", recorded, refused)
			if recorded == 0 || refused != workers || len(before) != recorded+2 { // +2: the fixture's live ones
				t.Errorf("%d recorded before, %d refused, %d revoked by the revocation; want at least 1, %d, and 2 more than recorded",
					recorded, refused, len(before), workers)
			}
			_, live, err := s.Lineage(store.Root{GrantID: "g-bc"})
			if err != nil {
				t.Fatalf("Lineage: %v", err)
			}
			if len(live) != 0 {
				t.Errorf("live credentials under the revoked grant: %q", accessors(live))
			}
			// One audit record per agent change, grant created and
			// credential, the fixture's included, and per revoked grant,
			// however the commits were shared.
			fixture := len(fixtureAgents) + len(fixtureGrants()) + len(fixtureCredentials())
			if n, want := mustVerifyAudit(t, s), uint64(fixture+recorded+refused+len(rev.Grants)+tt.changes); n != want {
				t.Errorf("VerifyAudit = %d records, want %d", n, want)
			}
		})
	}
}

func TestRevocationQueueSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atf.db")
	s, c := openLineage(t, path)
	rev, err := s.RevokeLineage(store.Root{AgentID: agentA}, "carol", "compromised")
	if err != nil {
		t.Fatalf("RevokeLineage: %v", err)
	}
	pending := mustPending(t, s)
	if len(pending) != 8 {
		t.Fatalf("PendingRevocations = %q, want 4 anchors and 4 credentials", pending)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = openAt(t, path, store.Options{Now: c.Now})
	if got := mustPending(t, s); !slices.Equal(got, pending) {
		t.Errorf("PendingRevocations after reopen = %q, want %q", got, pending)
	}
	// What was revoked stays revoked.
	for _, g := range rev.Grants {
		if got, err := s.GetGrant(g.ID); err != nil || !got.RevokedAt.Equal(c.Now()) {
			t.Errorf("GetGrant(%s) after reopen = %+v, %v; want revoked", g.ID, got, err)
		}
	}
	if !probeAnchor(t, s, "anc-2-ab") {
		t.Error("anchor anc-2-ab is live again after reopen")
	}
	pending = mustPending(t, s) // with the probe's credential

	// The revoker works the queue off in order, across another reopen.
	half := len(pending) / 2
	for _, acc := range pending[:half] {
		if err := s.CompleteRevocation(acc); err != nil {
			t.Fatalf("CompleteRevocation(%s): %v", acc, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = openAt(t, path, store.Options{Now: c.Now})
	if got := mustPending(t, s); !slices.Equal(got, pending[half:]) {
		t.Errorf("PendingRevocations after completing %d and reopening = %q, want %q", half, got, pending[half:])
	}
	for _, acc := range pending[half:] {
		if err := s.CompleteRevocation(acc); err != nil {
			t.Fatalf("CompleteRevocation(%s): %v", acc, err)
		}
	}
	if got := mustPending(t, s); len(got) != 0 {
		t.Errorf("PendingRevocations after completing all = %q, want none", got)
	}
}

// The store's API cannot write a cycle: PutGrant needs the parent to exist
// already and refuses an ID it holds, so a grant can never become its own
// ancestor. A corrupt or hand-edited file can hold one, though, and then the
// store must neither loop nor accept anything under it. The cycle is written
// directly into the bbolt file: g-ab's parent becomes g-bc.
func TestGrantCycle(t *testing.T) {
	setup := func(t *testing.T) (*store.Store, *clock) {
		path := filepath.Join(t.TempDir(), "atf.db")
		s, c := openLineage(t, path)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		rawUpdate(t, path, func(tx *bolt.Tx) error {
			grants := tx.Bucket([]byte("grants"))
			var g delegation.Grant
			if err := json.Unmarshal(grants.Get([]byte("g-ab")), &g); err != nil {
				return err
			}
			g.ParentID = "g-bc"
			v, err := json.Marshal(g)
			if err != nil {
				return err
			}
			if err := grants.Put([]byte("g-ab"), v); err != nil {
				return err
			}
			children := tx.Bucket([]byte("grant_children"))
			if err := children.Delete(pair("", "g-ab")); err != nil {
				return err
			}
			return children.Put(pair("g-bc", "g-ab"), nil)
		})
		return openAt(t, path, store.Options{Now: c.Now}), c
	}

	t.Run("Chain", func(t *testing.T) {
		s, _ := setup(t)
		for _, id := range []string{"g-ab", "g-bc"} {
			chain, err := s.Chain(id)
			if want := "store: invalid record: grant chain loops at " + id; !errors.Is(err, store.ErrInvalid) || err.Error() != want {
				t.Errorf("Chain(%s) = %q, %v; want %q", id, grantIDs(chain), err, want)
			}
		}
	})
	t.Run("PutGrant", func(t *testing.T) {
		s, _ := setup(t)
		g := delegation.Grant{ID: "g-new", ParentID: "g-bc", Delegator: agentC, Delegatee: agentD, Depth: 3, ExpiresAt: t0.Add(time.Hour)}
		if err := s.PutGrant(g, 16); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("PutGrant under the cycle: err = %v, want ErrInvalid", err)
		}
	})
	t.Run("RecordCredential", func(t *testing.T) {
		s, _ := setup(t)
		cr := credential(agentC, "cred-new")
		cr.GrantID = "g-bc"
		if err := s.RecordCredential(cr); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("RecordCredential under the cycle: err = %v, want ErrInvalid", err)
		}
		if got := mustPending(t, s); !slices.Equal(got, []string{"cred-new"}) {
			t.Errorf("PendingRevocations = %q, want the refused credential", got)
		}
	})

	roots := []struct {
		root       store.Root
		wantGrants []string
	}{
		{store.Root{GrantID: "g-ab"}, []string{"g-ab", "g-bc"}},
		{store.Root{GrantID: "g-bc"}, []string{"g-bc", "g-ab"}},
		{store.Root{AgentID: agentA}, []string{"g-ab", "g-ad", "g-bc"}},
		{store.Root{AgentID: agentB}, []string{"g-bc", "g-ab"}},
	}
	for _, tt := range roots {
		// A loop here would hang until go test's -timeout.
		t.Run("Lineage of "+tt.root.String(), func(t *testing.T) {
			s, _ := setup(t)
			grants, _, err := s.Lineage(tt.root)
			if err != nil || !slices.Equal(grantIDs(grants), tt.wantGrants) {
				t.Errorf("Lineage = %q, %v; want %q", grantIDs(grants), err, tt.wantGrants)
			}
		})
		t.Run("RevokeLineage of "+tt.root.String(), func(t *testing.T) {
			s, _ := setup(t)
			rev, err := s.RevokeLineage(tt.root, "carol", "cycle")
			if err != nil || !slices.Equal(grantIDs(rev.Grants), tt.wantGrants) {
				t.Errorf("RevokeLineage revoked %q, %v; want %q", grantIDs(rev.Grants), err, tt.wantGrants)
			}
			for _, id := range tt.wantGrants {
				if g, err := s.GetGrant(id); err != nil || g.RevokedAt.IsZero() {
					t.Errorf("GetGrant(%s) = %+v, %v; want revoked", id, g, err)
				}
			}
		})
	}
}

// Settle says how many credential records it is about to read, before it
// reads them (revoke.Finish holds a large listing back until Vault has
// answered), and lists what died with the anchors.
func TestSettleCountsAhead(t *testing.T) {
	s, _ := openLineage(t, filepath.Join(t.TempDir(), "atf.db"))
	rev, err := s.SettleLater().RevokeLineage(store.Root{AgentID: agentA}, "carol", "test")
	if err != nil {
		t.Fatal(err)
	}
	calls, ahead := 0, -1
	if err := s.Settle(&rev, func(n int) { calls++; ahead = n }); err != nil {
		t.Fatal(err)
	}
	listed := 0
	for _, accs := range rev.Credentials {
		listed += len(accs)
	}
	if calls != 1 || ahead < listed || listed == 0 {
		t.Fatalf("ahead called %d times with %d; %d credentials listed: want once, with at least as many records as listed", calls, ahead, listed)
	}
	if err := s.Settle(&rev, func(int) { t.Error("ahead called for a settled revocation") }); err != nil {
		t.Fatal(err)
	}
}
