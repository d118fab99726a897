package store_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
)

// The issuance history BenchmarkStoreAfterIssuances writes: 1M credentials
// of 5 minutes for 1,000 agents, 100 a second for 2.8 simulated hours,
// recorded 1,000 at a time (10 simulated seconds).
const (
	sizeIssuances = 1_000_000
	sizeRate      = 100
	sizeStep      = 10 * time.Second
	sizeAgents    = 1000
	sizeTTL       = 5 * time.Minute
	sizeRetention = 5 * time.Minute
)

// BenchmarkStoreAfterIssuances records 1M issuances (each credential with
// its audit record) as atfd does, moving the audit trail to segments as it
// goes and pruning every simulated minute what expired store_retention
// (here 5 minutes) before, and reports the store file and its pages in
// use against the audit trail it moved out to segments, the history the
// store no longer holds. (Kept whole in the store, without moving or
// pruning, the same history made a 1,442 MiB file on a 2-core machine;
// that run doubles the benchmark's time, so it is not repeated here.)
func BenchmarkStoreAfterIssuances(b *testing.B) {
	var bounded sizes
	for b.Loop() {
		bounded = issueHistory(b)
	}
	mib := func(n int64) float64 { return float64(n) / (1 << 20) }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(mib(bounded.file), "file-MiB")
	b.ReportMetric(mib(bounded.used), "used-MiB")
	b.ReportMetric(mib(bounded.segments), "segments-MiB")
	b.ReportMetric(float64(bounded.file)/float64(bounded.segments), "file-vs-segments")
}

type sizes struct{ file, used, segments int64 }

// issueHistory writes the history into a new store and measures it.
func issueHistory(b *testing.B) sizes {
	b.Helper()
	dir := b.TempDir()
	c := newClock()
	opts := store.Options{Now: c.Now, AuditDir: filepath.Join(dir, "audit")}
	path := filepath.Join(dir, "atf.db")
	s, err := store.Open(path, opts)
	if err != nil {
		b.Fatal(err)
	}
	for i := range sizeAgents {
		if _, err := s.RegisterAgent(store.Agent{ID: fmt.Sprintf("spiffe://td/agent/%d", i), Owner: "o", Level: authz.Senior}, "bench"); err != nil {
			b.Fatal(err)
		}
	}
	const perStep, workers = sizeRate * int(sizeStep/time.Second), 128
	for step := 0; step < sizeIssuances/perStep; step++ {
		c.Advance(sizeStep)
		now := c.Now()
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := w; i < perStep; i += workers {
					n := step*perStep + i
					cr := store.Credential{Accessor: fmt.Sprintf("b.%016x", n), Kind: store.KindBatch, AgentID: fmt.Sprintf("spiffe://td/agent/%d", n%sizeAgents),
						Role: "reports-read", Level: authz.Senior, Policies: []string{"demo-reports-read"}, DecisionID: fmt.Sprintf("%032x", n),
						IssuedAt: now, ExpiresAt: now.Add(sizeTTL)}
					if err := s.RecordCredential(cr); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if _, err := s.ShipAudit(); err != nil {
			b.Fatal(err)
		}
		if (step+1)%int(time.Minute/sizeStep) == 0 {
			if _, err := s.Prune(c.Now().Add(-sizeRetention), "atfd"); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	var out sizes
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	out.file = fi.Size()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	_ = db.View(func(tx *bolt.Tx) error { out.used = tx.Size(); return nil })
	db.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "audit", "*"))
	for _, f := range segs {
		if fi, err := os.Stat(f); err == nil {
			out.segments += fi.Size()
		}
	}
	return out
}
