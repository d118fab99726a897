package store_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/store"
)

func liveLimits(agent string, maxAgent, maxRole int) []store.LiveLimit {
	return []store.LiveLimit{{Key: store.LiveKey("agent", agent), Max: maxAgent}, {Key: store.LiveKey("role", "db-read"), Max: maxRole}}
}

func wantLiveLimit(t *testing.T, err error, key string, count int) {
	t.Helper()
	le, ok := store.IsLiveLimit(err)
	if !ok || le.Key != key || le.Count != count {
		t.Fatalf("reservation over the limit = %v, want a LiveLimitError on %q at %d", err, key, count)
	}
}

// Live credentials counted in the store: a reservation over a limit is
// refused and writes nothing; a cancelled, revoked (by accessor) or
// expired one frees its place; the total follows.
func TestLiveReservations(t *testing.T) {
	s, clock := open(t)
	exp := clock.Now().Add(time.Minute)
	first, err := s.ReserveLive(liveLimits("a", 2, 3), exp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReserveLive(liveLimits("a", 2, 3), exp.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	_, rollbacks := store.Committed(s)
	_, err = s.ReserveLive(liveLimits("a", 2, 3), exp)
	wantLiveLimit(t, err, store.LiveKey("agent", "a"), 2)
	if _, r := store.Committed(s); r != rollbacks {
		t.Errorf("a refusal rolled back its group (%d rollbacks): the others in it would run again", r-rollbacks)
	}
	if le, _ := store.IsLiveLimit(err); !le.Soonest.Equal(exp) {
		t.Errorf("soonest expiry %v, want the first reservation's %v", le.Soonest, exp)
	}
	third, err := s.ReserveLive(liveLimits("b", 2, 3), exp.Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.ReserveLive(liveLimits("c", 2, 3), exp)
	wantLiveLimit(t, err, store.LiveKey("role", "db-read"), 3)
	if n, err := s.LiveTotal(); err != nil || n != 3 {
		t.Fatalf("LiveTotal = %d, %v; want 3 (a refusal writes nothing)", n, err)
	}

	// Cancelled: its place is free.
	if err := s.CancelLive(third); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReserveLive(liveLimits("c", 2, 3), exp.Add(time.Hour)); err != nil {
		t.Fatalf("after a cancel: %v", err)
	}
	// Recorded with its credential, then revoked: free again.
	holder := mustRegister(t, s, "a", "admin").ID
	now := clock.Now()
	anchor := store.Anchor{Accessor: "anchor-a", Node: store.AgentNode(holder), CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := s.AddAnchor(anchor); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordCredential(store.Credential{Accessor: "acc-1", AgentID: holder, Role: "db-read", IssuedAt: now, ExpiresAt: exp,
		Anchor: anchor.Accessor, LiveReservation: first}); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseLive(holder, "acc-unknown", "acc-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReserveLive(liveLimits("a", 2, 3), exp.Add(time.Hour)); err != nil {
		t.Fatalf("after the revocation of one: %v", err)
	}
	_, err = s.ReserveLive(liveLimits("d", 2, 3), exp)
	wantLiveLimit(t, err, store.LiveKey("role", "db-read"), 3)

	// Expired (the second, at exp+1m) a minute ago, the slack for replicas'
	// clocks: swept by the next reservation.
	clock.Advance(3*time.Minute + time.Second)
	if _, err := s.ReserveLive(liveLimits("d", 2, 3), clock.Now().Add(time.Minute)); err != nil {
		t.Fatalf("after one expired: %v", err)
	}
	if n, err := s.LiveTotal(); err != nil || n != 3 {
		t.Fatalf("LiveTotal = %d, %v; want 3", n, err)
	}
}

// Concurrent reservations never overshoot a limit, also from two store
// handles on one etcd store (two replicas): exactly the limit succeed.
func TestLiveReservationsConcurrent(t *testing.T) {
	handles := sharedHandles(t)
	raceLimit(t, handles, 7, 40, func(h *store.Store, _ int) error {
		_, err := h.ReserveLive(liveLimits("shared", 7, -1), time.Now().Add(time.Hour))
		return err
	})
}

// sharedHandles opens a store, and on etcd a second handle on it (a
// second replica).
func sharedHandles(t *testing.T) []*store.Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "atf.db")
	handles := []*store.Store{openAt(t, path, store.Options{})}
	if onEtcd() {
		handles = append(handles, openAt(t, path, store.Options{}))
	}
	return handles
}

// raceLimit makes tries calls of reserve at once, spread over handles,
// under a live limit of limit: exactly limit succeed, the others are
// refused by the limit, and every handle counts limit in all.
func raceLimit(t *testing.T, handles []*store.Store, limit, tries int, reserve func(h *store.Store, i int) error) {
	t.Helper()
	var ok, refused atomic.Int32
	var wg sync.WaitGroup
	for i := range tries {
		wg.Go(func() {
			err := reserve(handles[i%len(handles)], i)
			if _, limited := store.IsLiveLimit(err); limited {
				refused.Add(1)
			} else if err != nil {
				t.Error(err)
			} else {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if int(ok.Load()) != limit || int(refused.Load()) != tries-limit {
		t.Fatalf("%d reservations succeeded and %d were refused by the limit, want %d and %d", ok.Load(), refused.Load(), limit, tries-limit)
	}
	for _, h := range handles {
		if n, err := h.LiveTotal(); err != nil || n != limit {
			t.Errorf("LiveTotal = %d, %v; want %d", n, err, limit)
		}
	}
}

// A record that reserves its place in the live counts (Credential.Reserve)
// does so in its own transaction: over a limit it is refused with nothing
// recorded; concurrent records, also from two handles on one etcd store,
// never overshoot; a voided record (Vault did not make the token) frees
// its place, is no longer live, and says why in the audit trail; a record
// refused by a revocation reserves nothing.
func TestRecordReserves(t *testing.T) {
	handles := sharedHandles(t)
	s := handles[0]
	holder := mustRegister(t, s, "reserver", "admin").ID
	now := time.Now()
	anchor := store.Anchor{Accessor: "anchor-r", Node: store.AgentNode(holder), CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := s.AddAnchor(anchor); err != nil {
		t.Fatal(err)
	}
	record := func(h *store.Store, acc string, max int) error {
		return h.RecordCredential(store.Credential{Accessor: acc, Kind: store.KindBatch, AgentID: holder, Role: "db-read", IssuedAt: now,
			ExpiresAt: now.Add(time.Hour), Anchor: anchor.Accessor,
			Reserve: &store.LiveReserve{Limits: liveLimits(holder, max, -1), Expires: now.Add(time.Hour)}})
	}
	const limit = 5
	raceLimit(t, handles, limit, 24, func(h *store.Store, i int) error { return record(h, fmt.Sprintf("b.%d", i), limit) })
	creds, err := s.Credentials(holder)
	if err != nil || len(creds) != limit {
		t.Fatalf("%d credentials recorded (%v), want %d: a record over the limit writes nothing", len(creds), err, limit)
	}

	// Voided: its place is free, its record gone, the trail says why.
	voided := creds[0].Accessor
	if err := s.VoidCredential(holder, voided, "Vault refused to issue it"); err != nil {
		t.Fatal(err)
	}
	if err := s.VoidCredential(holder, "b.unknown", "Vault refused to issue it"); err != nil {
		t.Fatalf("voiding an unknown record: %v", err)
	}
	if err := record(s, "b.after-void", limit); err != nil {
		t.Fatalf("a record after a void: %v", err)
	}
	if err := record(s, "b.over", limit); err == nil {
		t.Fatal("a record over the limit after the void was accepted")
	}
	if creds, err = s.Credentials(holder); err != nil {
		t.Fatal(err)
	}
	if len(creds) != limit || slices.ContainsFunc(creds, func(c store.Credential) bool { return c.Accessor == voided }) {
		t.Fatalf("%d credentials recorded (voided %s among them?): want %d without it", len(creds), voided, limit)
	}
	recs, _, err := s.QueryAudit(store.AuditFilter{Kind: "credential_voided"}, 0, 10)
	if err != nil || len(recs) != 1 || recs[0].Subject != voided || recs[0].Detail["reason"] != "Vault refused to issue it" {
		t.Fatalf("credential_voided records %+v, %v; want one for %s with its reason", recs, err, voided)
	}

	// Refused by a revocation: recorded revoked, nothing reserved.
	if _, err := s.RevokeLineage(store.Root{AgentID: holder}, "admin", "test"); err != nil {
		t.Fatal(err)
	}
	if err := record(s, "b.revoked", 100); !errors.Is(err, store.ErrRevoked) {
		t.Fatalf("record after the revocation = %v, want ErrRevoked", err)
	}
	if n, err := s.LiveTotal(); err != nil || n != limit {
		t.Errorf("LiveTotal after a refused record = %d, %v; want %d (the lineage's release aside)", n, err, limit)
	}
}
