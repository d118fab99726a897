package store_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/broker/store"
)

// openShipping opens a store at dir/atf.db whose audit trail ships to
// dir/audit in segments of segSize bytes.
func openShipping(t *testing.T, dir string, c *clock, segSize int64) *store.Store {
	t.Helper()
	boltOnly(t)
	return openAt(t, filepath.Join(dir, "atf.db"), store.Options{Now: c.Now, AuditDir: filepath.Join(dir, "audit"), AuditSegmentSize: segSize})
}

// appendN appends n records, advancing the clock a second each.
func appendN(t *testing.T, s *store.Store, c *clock, from, n int) {
	t.Helper()
	for i := range n {
		c.Advance(time.Second)
		if err := s.AppendAudit(store.AuditRecord{Kind: "grant_created", Actor: "alice", Subject: fmt.Sprintf("g%d", from+i),
			Detail: map[string]string{"agent": fmt.Sprintf("spiffe://td/a%d", (from+i)%3)}}); err != nil {
			t.Fatal(err)
		}
	}
}

// shipAll ships until the store holds no record.
func shipAll(t *testing.T, s *store.Store) int {
	t.Helper()
	total := 0
	for {
		n, err := s.ShipAudit()
		if err != nil {
			t.Fatalf("ShipAudit: %v", err)
		}
		if n == 0 {
			return total
		}
		total += n
	}
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "audit", "audit-*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Shipped records leave the store, yet the trail reads, queries and
// verifies as one chain across sealed segments, the open one and the
// store, before and after a restart, and the chain goes on from the
// last shipped record.
func TestAuditShipsToSegments(t *testing.T) {
	dir, c := t.TempDir(), newClock()
	s := openShipping(t, dir, c, 4<<10)
	shipped := 0
	for i := range 10 {
		appendN(t, s, c, 10*i, 10)
		shipped += shipAll(t, s)
	}
	if shipped != 100 {
		t.Fatalf("shipped %d records, want 100", shipped)
	}
	appendN(t, s, c, 100, 20) // these stay in the store
	if got := len(segments(t, dir)); got < 3 {
		t.Fatalf("%d segments for 100 records of ~200 bytes at 4 KiB each, want several", got)
	}
	check := func(s *store.Store) {
		t.Helper()
		if n := mustVerifyAudit(t, s); n != 120 {
			t.Fatalf("VerifyAudit = %d, want 120", n)
		}
		recs, err := s.Audit(0, 1000)
		if err != nil || len(recs) != 120 {
			t.Fatalf("Audit(0) = %d records, %v; want 120", len(recs), err)
		}
		for i, r := range recs {
			if r.Seq != uint64(i+1) || r.Subject != fmt.Sprintf("g%d", i) {
				t.Fatalf("record %d = seq %d subject %s", i, r.Seq, r.Subject)
			}
		}
		got, next, err := s.QueryAudit(store.AuditFilter{Agent: "spiffe://td/a1"}, 50, 10)
		if err != nil || len(got) != 10 || got[0].Subject != "g52" || next != got[9].Seq {
			t.Fatalf("QueryAudit across the boundary = %d records from %v, next %d, %v", len(got), got, next, err)
		}
		head, err := s.AuditHead()
		if err != nil || head.Seq != 120 || head.Hash != recs[119].Hash {
			t.Fatalf("AuditHead = %d %v", head.Seq, err)
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openShipping(t, dir, c, 4<<10)
	check(s)
	shipAll(t, s)
	appendN(t, s, c, 120, 1)
	if recs, err := s.Audit(120, 1); err != nil || len(recs) != 1 || recs[0].Seq != 121 {
		t.Fatalf("the record after a fully shipped trail = %v, %v; want seq 121", recs, err)
	}
	if n := mustVerifyAudit(t, s); n != 121 {
		t.Fatalf("VerifyAudit = %d, want 121", n)
	}
}

// What VerifyAudit finds in segments: an edited sealed segment, a missing
// one, an edited record in the open one, and the open one cut short.
func TestAuditSegmentsTampering(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(t *testing.T, segs []string)
		wantErr string
	}{
		{"sealed segment edited", func(t *testing.T, segs []string) {
			editFile(t, segs[0], func(b string) string { return strings.Replace(b, `"g1"`, `"gX"`, 1) })
		}, "was altered since it was sealed"},
		{"sealed segment removed", func(t *testing.T, segs []string) {
			if err := os.Remove(segs[1]); err != nil {
				t.Fatal(err)
			}
		}, "is missing"},
		{"open segment edited", func(t *testing.T, segs []string) {
			last := segs[len(segs)-1]
			editFile(t, last, func(b string) string { return strings.Replace(b, `"alice"`, `"mallory"`, 1) })
		}, "was altered"},
		{"open segment cut short", func(t *testing.T, segs []string) {
			last := segs[len(segs)-1]
			editFile(t, last, func(b string) string {
				lines := strings.SplitAfter(b, "\n")
				return strings.Join(lines[:len(lines)-3], "")
			})
		}, "the segments were cut short"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, c := t.TempDir(), newClock()
			s := openShipping(t, dir, c, 4<<10)
			for i := range 10 {
				appendN(t, s, c, 10*i, 10)
				shipAll(t, s)
			}
			appendN(t, s, c, 100, 5) // a segment begun, not sealed
			shipAll(t, s)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			tt.tamper(t, segments(t, dir))
			s = openShipping(t, dir, c, 4<<10)
			if n, err := s.VerifyAudit(); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("VerifyAudit = %d, %v; want an error with %q", n, err, tt.wantErr)
			}
		})
	}
}

func editFile(t *testing.T, path string, edit func(string) string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(edit(string(b))), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A crash after a segment was written but before the store let go of its
// records (they are in both), or in the middle of a line: Open finishes
// the shipment and cuts the torn line, and the chain verifies once.
func TestAuditShipmentInterrupted(t *testing.T) {
	dir, c := t.TempDir(), newClock()
	s := openShipping(t, dir, c, 64<<20)
	appendN(t, s, c, 0, 10)
	shipAll(t, s)
	appendN(t, s, c, 10, 5)
	recs, err := s.Audit(10, 5)
	if err != nil || len(recs) != 5 {
		t.Fatal(recs, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// What ShipAudit writes before it commits, then half a line.
	f, err := os.OpenFile(segments(t, dir)[0], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs[:3] {
		line, _ := json.Marshal(r)
		f.Write(append(line, '\n'))
	}
	line, _ := json.Marshal(recs[3])
	f.Write(line[:len(line)/2])
	f.Close()

	s = openShipping(t, dir, c, 64<<20)
	if n := mustVerifyAudit(t, s); n != 15 {
		t.Fatalf("VerifyAudit = %d, want 15", n)
	}
	if n := shipAll(t, s); n != 2 {
		t.Errorf("shipped %d after the restart, want the 2 not written before", n)
	}
	all, err := s.Audit(0, 100)
	if err != nil || len(all) != 15 {
		t.Fatalf("Audit = %d records, %v", len(all), err)
	}
	if n := mustVerifyAudit(t, s); n != 15 {
		t.Fatalf("VerifyAudit = %d, want 15", n)
	}
}

// The store file stays the size of the live state however long the trail
// grows, when its records are shipped as they come.
func TestAuditShippingBoundsTheFile(t *testing.T) {
	boltOnly(t)
	size := func(shipping bool) int64 {
		dir, c := t.TempDir(), newClock()
		opts := store.Options{Now: c.Now}
		if shipping {
			opts.AuditDir = filepath.Join(dir, "audit")
		}
		s := openAt(t, filepath.Join(dir, "atf.db"), opts)
		batch := make([]store.AuditRecord, 500)
		for i := range 40 {
			for j := range batch {
				batch[j] = store.AuditRecord{Kind: "credential_issued", Actor: "spiffe://td/a", Subject: fmt.Sprintf("acc-%d-%d", i, j),
					Detail: map[string]string{"role": "reports-read", "decision": "allow"}}
			}
			if err := s.AppendAudit(batch...); err != nil {
				t.Fatal(err)
			}
			if shipping {
				shipAll(t, s)
			}
		}
		if n := mustVerifyAudit(t, s); n != 20_000 {
			t.Fatalf("VerifyAudit = %d, want 20000", n)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		// The pages in use (bbolt grows the file itself in 16 MiB steps).
		var used int64
		rawUpdate(t, filepath.Join(dir, "atf.db"), func(tx *bolt.Tx) error {
			used = tx.Size()
			return nil
		})
		return used
	}
	kept, shipped := size(false), size(true)
	t.Logf("store pages after 20,000 audit records: %d KiB kept, %d KiB shipped", kept>>10, shipped>>10)
	if shipped*20 > kept {
		t.Errorf("store pages with shipping %d bytes, without %d: want at most a twentieth", shipped, kept)
	}
}

// Readers of the trail while it is written and shipped see it whole: every
// read is a gapless run of records from the first.
func TestAuditShippingWhileReading(t *testing.T) {
	dir, c := t.TempDir(), newClock()
	s := openShipping(t, dir, c, 8<<10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 40 {
			appendN(t, s, c, 5*i, 5)
			if _, err := s.ShipAudit(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for reading := true; reading; {
		select {
		case <-done:
			reading = false
		default:
		}
		recs, err := s.Audit(0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range recs {
			if r.Seq != uint64(i+1) {
				t.Fatalf("read %d records, record %d has seq %d", len(recs), i, r.Seq)
			}
		}
	}
	if n := mustVerifyAudit(t, s); n != 200 {
		t.Fatalf("VerifyAudit = %d, want 200", n)
	}
}

// A shipment whose trim fails (the store refuses the commit) leaves its
// records in the segments and in the store; the next one neither writes
// them twice nor loses the segments it sealed.
func TestAuditShipmentTrimFails(t *testing.T) {
	dir, c := t.TempDir(), newClock()
	s := openShipping(t, dir, c, 4<<10)
	appendN(t, s, c, 0, 30)
	store.FailCommits(s, errors.New("input/output error"))
	if _, err := s.ShipAudit(); err == nil {
		t.Fatal("ShipAudit with a failing trim = nil error")
	}
	store.FailCommits(s, nil)
	appendN(t, s, c, 30, 5)
	if n := shipAll(t, s); n != 35 {
		t.Fatalf("shipped %d after the failed trim, want all 35", n)
	}
	if n := mustVerifyAudit(t, s); n != 35 {
		t.Fatalf("VerifyAudit = %d, want 35", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The sealed segment's digest made it into the checkpoint: editing it
	// is caught.
	editFile(t, segments(t, dir)[0], func(b string) string { return strings.Replace(b, `"g1"`, `"gX"`, 1) })
	s = openShipping(t, dir, c, 4<<10)
	if _, err := s.VerifyAudit(); err == nil || !strings.Contains(err.Error(), "altered since it was sealed") {
		t.Fatalf("VerifyAudit after editing the sealed segment = %v", err)
	}
}
