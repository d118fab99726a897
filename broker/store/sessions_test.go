package store_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/store"
)

// A console session ended on one replica is ended on all (on etcd, a
// second store on the same prefix is another replica), its id is never
// kept as is, and Prune forgets it once it would have expired anyway.
func TestEndedSessions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atf.db")
	c := newClock()
	s := openAt(t, path, store.Options{Now: c.Now})
	if err := s.EndSession("session-one", c.Now().Add(30*time.Minute)); err != nil {
		t.Fatal(err)
	}
	stores := []*store.Store{s}
	if onEtcd() {
		stores = append(stores, openAt(t, path, store.Options{Now: c.Now}))
	}
	for i, st := range stores {
		if ended, err := st.SessionEnded("session-one"); err != nil || !ended {
			t.Fatalf("replica %d: SessionEnded(ended) = %v, %v", i, ended, err)
		}
		if ended, err := st.SessionEnded("session-two"); err != nil || ended {
			t.Fatalf("replica %d: SessionEnded(live) = %v, %v", i, ended, err)
		}
	}
	if p, err := s.Prune(c.Now().Add(29*time.Minute), "atfd"); err != nil || p.Sessions != 0 {
		t.Fatalf("Prune before the session's expiry = %+v, %v", p, err)
	}
	p, err := s.Prune(c.Now().Add(31*time.Minute), "atfd")
	if err != nil || p.Sessions != 1 {
		t.Fatalf("Prune after the session's expiry = %+v, %v; want 1 session", p, err)
	}
	if rec := mustAudit(t, s, lastSeq(t, s)-1)[0]; rec.Detail["ended_sessions"] != "1" {
		t.Fatalf("the prune's audit record = %+v", rec)
	}
	if ended, err := s.SessionEnded("session-one"); err != nil || ended {
		t.Fatalf("SessionEnded after the prune = %v, %v", ended, err)
	}
}
