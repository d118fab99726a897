package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/store"
)

// purpose is in every test record; it must never reach a log line.
const purpose = "reconcile invoices 7d1c"

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "atf.db"), store.Options{})
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// appendRecords appends n records to st.
func appendRecords(t *testing.T, st *store.Store, n int) {
	t.Helper()
	recs := make([]store.AuditRecord, n)
	for i := range recs {
		recs[i] = store.AuditRecord{Kind: "grant_created", Actor: "spiffe://td/agent/a", Subject: fmt.Sprintf("g%d", i),
			Detail: map[string]string{"purpose": purpose}}
	}
	if err := st.AppendAudit(recs...); err != nil {
		t.Fatalf("AppendAudit: %v", err)
	}
}

// run runs s until the returned stop is called (or the test ends).
func run(t *testing.T, s *audit.Streamer) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return stop
}

// waitWritten polls until s has written seq.
func waitWritten(t *testing.T, s *audit.Streamer, seq uint64) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for s.Written() < seq {
		select {
		case <-deadline:
			t.Fatalf("Written() = %d after 10s, want %d", s.Written(), seq)
		case <-tick.C:
		}
	}
}

// wantLines checks that the file at path is exactly json.Marshal of want,
// a line each.
func wantLines(t *testing.T, path string, want []store.AuditRecord) {
	t.Helper()
	var b []byte
	for _, r := range want {
		line, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		b = append(append(b, line...), '\n')
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, b) {
		t.Fatalf("file holds records %v, want %v", fileSeqs(t, got), seqsOf(want))
	}
}

func fileSeqs(t *testing.T, b []byte) []uint64 {
	t.Helper()
	var out []uint64
	for line := range bytes.Lines(b) {
		var r store.AuditRecord
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		out = append(out, r.Seq)
	}
	return out
}

func seqsOf(recs []store.AuditRecord) []uint64 {
	out := make([]uint64, len(recs))
	for i, r := range recs {
		out[i] = r.Seq
	}
	return out
}

func allRecords(t *testing.T, st *store.Store) []store.AuditRecord {
	t.Helper()
	recs, err := st.Audit(0, 1<<20)
	if err != nil {
		t.Fatalf("Audit: %v", err)
	}
	return recs
}

func openFile(t *testing.T, st audit.Source, path string, log *slog.Logger) *audit.Streamer {
	t.Helper()
	s, err := audit.OpenFile(st, path, log)
	if err != nil {
		t.Fatalf("OpenFile: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// syncBuffer is a bytes.Buffer a logger and a test may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A streamer writes what is there and what comes, in batches, and a new one
// on the same file resumes where the last stopped: every record once.
func TestStreamerFile(t *testing.T) {
	st := openStore(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	appendRecords(t, st, 5)

	s := openFile(t, st, path, nil)
	if got := s.Written(); got != 0 {
		t.Fatalf("Written() of a new file = %d, want 0", got)
	}
	stop := run(t, s)
	waitWritten(t, s, 5)
	appendRecords(t, st, 2500) // more than a batch
	s.Notify()
	waitWritten(t, s, 2505)
	// Records that come after the last Notify are written on the way out.
	appendRecords(t, st, 3)
	stop()
	if got := s.Written(); got != 2508 {
		t.Fatalf("Written() after Run returned = %d, want 2508", got)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wantLines(t, path, allRecords(t, st))
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode = %v, want 0600", fi.Mode().Perm())
	}

	// A restart, with records appended while no streamer ran.
	appendRecords(t, st, 4)
	s = openFile(t, st, path, nil)
	if got := s.Written(); got != 2508 {
		t.Fatalf("Written() on reopening = %d, want 2508", got)
	}
	run(t, s)
	waitWritten(t, s, 2512)
	wantLines(t, path, allRecords(t, st))
}

// A line torn by a crash is cut off and written again whole; a last line
// that is whole but no record is refused rather than guessed at.
func TestStreamerTornLine(t *testing.T) {
	st := openStore(t)
	appendRecords(t, st, 3)
	recs := allRecords(t, st)
	var whole []byte
	for _, r := range recs[:2] {
		line, _ := json.Marshal(r)
		whole = append(append(whole, line...), '\n')
	}
	last, _ := json.Marshal(recs[2])

	tests := []struct {
		name    string
		content string
		written uint64
		err     string
	}{
		{"torn record", string(whole) + string(last[:20]), 2, ""},
		{"whole record without its newline", string(whole) + string(last), 2, ""},
		{"zeros", string(whole) + "\x00\x00\x00\x00", 2, ""},
		{"only a torn line", string(last[:20]), 0, ""},
		{"empty", "", 0, ""},
		{"last line no record", string(whole) + "not json\n", 0, "the last line is not an audit record"},
		{"last line too long", strings.Repeat("x", 2<<20+10) + "\n", 0, "the last line is longer than 1048576 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			log := &syncBuffer{}
			s, err := audit.OpenFile(st, path, slog.New(slog.NewTextHandler(log, nil)))
			if tt.err != "" {
				if want := "audit: " + path + ": " + tt.err; err == nil || err.Error() != want {
					t.Fatalf("OpenFile: %v, want %s", err, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenFile: %v", err)
			}
			t.Cleanup(func() { s.Close() })
			if got := s.Written(); got != tt.written {
				t.Fatalf("Written() = %d, want %d", got, tt.written)
			}
			if torn := !strings.HasSuffix(tt.content, "\n") && tt.content != ""; torn != strings.Contains(log.String(), "torn") {
				t.Errorf("log = %q; torn line = %v", log, torn)
			}
			run(t, s)
			waitWritten(t, s, 3)
			wantLines(t, path, recs)
		})
	}
}

// A file ahead of the store (the store restored from an older backup) is
// appended to after its own last record, never rewritten; a store that
// holds another record under the file's last number is logged.
func TestStreamerFileAhead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	old := openStore(t)
	appendRecords(t, old, 5)
	s := openFile(t, old, path, nil)
	run(t, s)()
	s.Close()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	st := openStore(t)
	appendRecords(t, st, 6)
	log := &syncBuffer{}
	s = openFile(t, st, path, slog.New(slog.NewTextHandler(log, nil)))
	if got := s.Written(); got != 5 {
		t.Fatalf("Written() = %d, want 5", got)
	}
	if !strings.Contains(log.String(), "level=ERROR") || !strings.Contains(log.String(), "different records under the same number") {
		t.Errorf("log = %q, want an error about the diverging record", log)
	}
	run(t, s)
	appendRecords(t, st, 1)
	s.Notify()
	waitWritten(t, s, 7)

	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(got, before) {
		t.Fatalf("the file's first records were rewritten")
	}
	if seqs := fileSeqs(t, got); !slices.Equal(seqs, []uint64{1, 2, 3, 4, 5, 6, 7}) {
		t.Fatalf("file holds records %v, want 1 to 7", seqs)
	}
}

// faultySource fails its first reads.
type faultySource struct {
	audit.Source
	mu    sync.Mutex
	fails int
}

func (f *faultySource) Audit(after uint64, limit int) ([]store.AuditRecord, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fails > 0 {
		f.fails--
		return nil, errors.New("disk on fire")
	}
	return f.Source.Audit(after, limit)
}

// faultyWriter fails its first writes, each after writing part of what it
// was given.
type faultyWriter struct {
	mu    sync.Mutex
	b     bytes.Buffer
	fails int
}

func (w *faultyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fails > 0 {
		w.fails--
		n, _ := w.b.Write(p[:len(p)/3])
		return n, errors.New("connection reset")
	}
	return w.b.Write(p)
}

// Failures to read or write are logged, without the records, and retried;
// a write that stopped part way goes on from there.
func TestStreamerRetries(t *testing.T) {
	tests := []struct {
		name       string
		readFails  int
		writeFails int
		log        string
	}{
		{"read", 2, 0, `level=ERROR msg="streaming the audit trail failed; retrying" error="audit: read the records after 0: disk on fire"`},
		{"write", 0, 3, `level=ERROR msg="streaming the audit trail failed; retrying" error="audit: write the records up to 5: connection reset"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := openStore(t)
			appendRecords(t, st, 5)
			w := &faultyWriter{fails: tt.writeFails}
			log := &syncBuffer{}
			s := audit.NewStreamer(&faultySource{Source: st, fails: tt.readFails}, w, 0, slog.New(slog.NewTextHandler(log, nil)))
			stop := run(t, s)
			waitWritten(t, s, 5)
			stop()

			w.mu.Lock()
			n, last, err := audit.VerifyLines(&w.b)
			w.mu.Unlock()
			if err != nil || n != 5 || last.Seq != 5 {
				t.Fatalf("VerifyLines = %d, record %d, %v; want 5 records up to 5", n, last.Seq, err)
			}
			if !strings.Contains(log.String(), tt.log) {
				t.Errorf("log = %q, want %q", log, tt.log)
			}
			if strings.Contains(log.String(), purpose) {
				t.Errorf("log = %q holds a record's contents", log)
			}
		})
	}
}
