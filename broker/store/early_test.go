package store_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/store"
)

// RecordCredential answers before its commit is durable, yet every read
// after the answer sees the record, and nothing else is answered early: a
// registration still waits for its commit.
func TestRecordCredentialReadYourWrites(t *testing.T) {
	s, _ := open(t)
	const id = "spiffe://td/agent/early"
	mustRegister(t, s, id, "alice")
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			c := credential(id, "acc-"+string(rune('A'+i%26))+string(rune('a'+i/26)))
			if err := s.RecordCredential(c); err != nil {
				t.Errorf("RecordCredential: %v", err)
				return
			}
			got, err := s.Credentials(id)
			if err != nil {
				t.Error(err)
				return
			}
			for _, g := range got {
				if g.Accessor == c.Accessor {
					return
				}
			}
			t.Errorf("a read after RecordCredential answered does not see %s", c.Accessor)
		})
	}
	wg.Wait()
	if got := mustCredentials(t, s, id); len(got) != 64 {
		t.Fatalf("%d credentials recorded, want 64", len(got))
	}
}

// A commit that fails after RecordCredential answered calls OnLost with
// the credential, once, and leaves nothing of it in the store; a write
// that waits for its commit (a registration) gets the error instead.
func TestRecordCredentialLostCommit(t *testing.T) {
	boltOnly(t)
	lost := make(chan store.Credential, 4)
	c := newClock()
	s := openAt(t, filepath.Join(t.TempDir(), "atf.db"), store.Options{Now: c.Now, OnLost: func(cr store.Credential) { lost <- cr }})
	const id = "spiffe://td/agent/lost"
	mustRegister(t, s, id, "alice")
	if err := s.AddAnchor(store.Anchor{Accessor: "anchor-1", Node: store.AgentNode(id), CreatedAt: c.Now(), ExpiresAt: c.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	head, err := s.AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	fault := errors.New("input/output error")
	store.FailCommits(s, fault)
	cr := credential(id, "acc-lost")
	cr.Kind, cr.Anchor = store.KindBatch, "anchor-1"
	if err := s.RecordCredential(cr); err != nil {
		t.Fatalf("RecordCredential answered %v; it answers before the commit", err)
	}
	select {
	case got := <-lost:
		if got.Accessor != cr.Accessor || got.Anchor != "anchor-1" || got.Kind != store.KindBatch {
			t.Errorf("OnLost(%+v), want the lost credential", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnLost was not called for a credential whose commit failed")
	}
	if _, err := s.RegisterAgent(agent("spiffe://td/agent/other"), "alice"); !errors.Is(err, fault) {
		t.Errorf("RegisterAgent during failing commits = %v, want the commit's error", err)
	}
	store.FailCommits(s, nil)
	if got := mustCredentials(t, s, id); len(got) != 0 {
		t.Errorf("credentials after the lost commit: %q, want none", accessors(got))
	}
	if h, err := s.AuditHead(); err != nil || h.Seq != head.Seq {
		t.Errorf("audit head after the lost commit = %d (%v), want %d: nothing of it committed", h.Seq, err, head.Seq)
	}
	select {
	case got := <-lost:
		t.Errorf("OnLost called again, for %s", got.Accessor)
	default:
	}
}

// A write that fails in a group commit costs the others one rollback: they
// commit together without it, in one transaction, and only it hears its
// error (before, one bad write made every write of its group commit alone).
func TestGroupCommitSurvivesABadWrite(t *testing.T) {
	boltOnly(t)
	s, _ := open(t)
	const id = "spiffe://td/agent/group"
	mustRegister(t, s, id, "alice")
	commits, rollbacks := store.Committed(s)
	release := store.HoldWriter(s)
	defer release()
	results := make(chan error, 21)
	for i := range 21 {
		agent := id
		if i%4 == 3 {
			agent = "spiffe://td/agent/unknown" // fails: not registered
		}
		go func() { results <- s.RecordCredential(credential(agent, fmt.Sprintf("acc-%02d", i))) }()
	}
	// All wait: queued, or in the group the committer took and holds,
	// waiting for the writer.
	time.Sleep(200 * time.Millisecond)
	release()
	var failed int
	for range 21 {
		if err := <-results; errors.Is(err, store.ErrNotFound) {
			failed++
		} else if err != nil {
			t.Errorf("RecordCredential: %v", err)
		}
	}
	c, r := store.Committed(s)
	if failed != 5 || c-commits > 2 || r-rollbacks != 5 {
		t.Errorf("%d refused, %d commits, %d rollbacks; want 5 refused, at most 2 commits (the group the committer held, then the rest together), 5 rollbacks", failed, c-commits, r-rollbacks)
	}
	if got := mustCredentials(t, s, id); len(got) != 16 {
		t.Errorf("%d credentials recorded, want 16", len(got))
	}
}

// What follows a committed revocation is answered before its fsync too: a
// completed queue entry and the revocation's audit summary are seen by
// every read after the answer; if their commit fails, the entry stays
// queued (the drain revokes it again, harmlessly) and the summary's lost
// function is called, once, with nothing of it in the trail.
func TestRevocationFollowUpsEarly(t *testing.T) {
	boltOnly(t)
	s, _ := openLineage(t, filepath.Join(t.TempDir(), "atf.db"))
	if _, err := s.RevokeLineage(store.Root{AgentID: agentA}, "carol", "compromised"); err != nil {
		t.Fatalf("RevokeLineage: %v", err)
	}
	pending := mustPending(t, s)
	summary := func(n int) store.AuditRecord {
		return store.AuditRecord{Kind: "lineage_revoked", Actor: "carol", Subject: "agent " + agentA, Detail: map[string]string{"n": fmt.Sprint(n)}}
	}
	for i, acc := range pending[:2] {
		if err := s.CompleteRevocation(acc); err != nil {
			t.Fatalf("CompleteRevocation(%s): %v", acc, err)
		}
		if got := mustPending(t, s); slices.Contains(got, acc) {
			t.Errorf("a read after CompleteRevocation(%s) answered still lists it", acc)
		}
		if err := s.AppendSummary(summary(i), func() { t.Errorf("lost called for a summary that committed") }); err != nil {
			t.Fatalf("AppendSummary: %v", err)
		}
		h, err := s.AuditHead()
		if err != nil {
			t.Fatal(err)
		}
		if recs, err := s.Audit(h.Seq-1, 1); err != nil || len(recs) != 1 || recs[0].Kind != "lineage_revoked" || recs[0].Detail["n"] != fmt.Sprint(i) {
			t.Errorf("the last audit record after AppendSummary answered = %+v, %v; want the summary", recs, err)
		}
	}

	head, err := s.AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	lost := make(chan struct{}, 2)
	store.FailCommits(s, errors.New("input/output error"))
	if err := s.CompleteRevocation(pending[2]); err != nil {
		t.Fatalf("CompleteRevocation answered %v; it answers before the commit", err)
	}
	if err := s.AppendSummary(summary(9), func() { lost <- struct{}{} }); err != nil {
		t.Fatalf("AppendSummary answered %v; it answers before the commit", err)
	}
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("lost was not called for a summary whose commit failed")
	}
	store.FailCommits(s, nil)
	if got := mustPending(t, s); !slices.Equal(got, pending[2:]) {
		t.Errorf("pending after a lost completion = %q, want %q (the entry still queued)", got, pending[2:])
	}
	if h, err := s.AuditHead(); err != nil || h.Seq != head.Seq {
		t.Errorf("audit head after the lost commit = %d (%v), want %d", h.Seq, err, head.Seq)
	}
	select {
	case <-lost:
		t.Error("lost called twice")
	default:
	}
}
