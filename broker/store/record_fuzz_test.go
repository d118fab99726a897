package store_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/delegation"
)

// same reports whether a and b hold the same record: times are compared as
// instants, whatever their location, and a nil slice or map is the same as
// an empty one (omitempty writes neither).
func same(a, b reflect.Value) bool {
	if ta, ok := a.Interface().(time.Time); ok {
		return ta.Equal(b.Interface().(time.Time))
	}
	switch a.Kind() {
	case reflect.Struct:
		for i := range a.NumField() {
			if !same(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Pointer:
		return a.IsNil() == b.IsNil() && (a.IsNil() || same(a.Elem(), b.Elem()))
	case reflect.Slice:
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !same(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Map:
		if a.Len() != b.Len() {
			return false
		}
		for it := a.MapRange(); it.Next(); {
			if v := b.MapIndex(it.Key()); !v.IsValid() || !same(it.Value(), v) {
				return false
			}
		}
		return true
	}
	return a.Interface() == b.Interface()
}

// roundTrip checks what the store does when it reads a record of type T
// and writes it back (a revocation, a decision, an update): what decodes
// encodes, decodes again to the same record, and encodes to the same
// bytes.
func roundTrip[T any](t *testing.T, data []byte) {
	var v1 T
	if json.Unmarshal(data, &v1) != nil {
		return
	}
	b1, err := json.Marshal(v1)
	if err != nil {
		t.Fatalf("%T: %q decodes to %+v, which does not encode: %v", v1, data, v1, err)
	}
	var v2 T
	if err := json.Unmarshal(b1, &v2); err != nil {
		t.Fatalf("%T: %q decodes and encodes to %q, which does not decode: %v", v1, data, b1, err)
	}
	if !same(reflect.ValueOf(v1), reflect.ValueOf(v2)) {
		t.Fatalf("%T: %q decodes to\n %+v\nencoded %q, decodes to\n %+v", v1, data, v1, b1, v2)
	}
	if b2, err := json.Marshal(v2); err != nil || !bytes.Equal(b1, b2) {
		t.Fatalf("%T: encodes to %q, then to %q (%v)", v1, b1, b2, err)
	}
}

// recordType is a record the store keeps as JSON in bbolt, with its check.
type recordType struct {
	v     any
	check func(*testing.T, []byte)
}

var recordTypes = []recordType{
	{store.Agent{}, roundTrip[store.Agent]},
	{store.AgentChange{}, roundTrip[store.AgentChange]},
	{store.Credential{}, roundTrip[store.Credential]},
	{delegation.Grant{}, roundTrip[delegation.Grant]},
	{store.Anchor{}, roundTrip[store.Anchor]},
	{store.Approval{}, roundTrip[store.Approval]},
	{store.AuditRecord{}, roundTrip[store.AuditRecord]},
	{store.PolicyVersion{}, roundTrip[store.PolicyVersion]},
	{store.Kill{}, roundTrip[store.Kill]},
	{store.Outcomes{}, roundTrip[store.Outcomes]},
	{store.Evidence{}, roundTrip[store.Evidence]},
	{store.SignOff{}, roundTrip[store.SignOff]},
	{store.Incident{}, roundTrip[store.Incident]},
}

// recordExamples are records as the store writes them.
func recordExamples() []any {
	ag := agent(agentA)
	ag.Status, ag.CreatedAt, ag.UpdatedAt, ag.LevelSince, ag.Revision = store.Active, t0.UTC(), t0.UTC(), t0.UTC(), 3
	ag.Kill = &store.Kill{At: t0.UTC(), By: "spiffe://td/ops", Reason: "incident 7", Lineage: agentB}
	cred := fixtureCredentials()[4]
	cred.Chain, cred.GrantIDs, cred.RevokedAt, cred.AgentRevision = []string{agentA, agentB}, []string{"g-ab"}, t0.Add(time.Minute).UTC(), 2
	return []any{
		ag,
		store.AgentChange{Revision: 3, Time: t0.UTC(), Actor: "alice", Action: store.ActionKill, Reason: "incident 7", Agent: ag},
		cred,
		fixtureGrants()[1],
		fixtureAnchors()[3],
		store.Approval{ID: "ap-1", AgentID: agentB, Role: "db-write", Class: "write", Classification: "internal", Level: authz.Junior,
			GrantID: "g-ab", Chain: []string{agentA, agentB}, TTL: 10 * time.Minute, Purpose: "fix", Status: store.ApprovalApproved,
			CreatedAt: t0.UTC(), ExpiresAt: t0.Add(time.Hour).UTC(), DecidedBy: "bob", DecidedAt: t0.UTC(), DecisionID: "dec-1"},
		auditExample(),
		store.PolicyVersion{Version: 2, CreatedAt: t0.UTC(), Author: "alice", Comment: "why", Model: "[matchers]\nm = r.sub == p.sub",
			Policy: "p, group:all, *, read, intern, allow\n", Digest: "ab12", Lines: 1, RolledBackFrom: 1},
		*ag.Kill,
		store.Outcomes{Level: authz.Senior, Self: store.OutcomeCounts{Success: 10, Failure: 1, Rejected: 2, Errors: 3}, Attested: store.OutcomeCounts{Success: 4}},
		store.Evidence{Agent: agentA, Kind: "pentest", Target: authz.Senior, Reference: "https://example.org/r/1", RecordedBy: "alice", At: t0.UTC()},
		store.SignOff{Agent: agentA, Signer: "carol", RiskAcceptance: "accepted", Target: authz.Senior, RecordedBy: "carol", At: t0.UTC()},
		store.Incident{ID: "inc-1", Agent: agentA, Severity: "high", Summary: "leak", Level: authz.Senior, OpenedAt: t0.UTC(), OpenedBy: "alice",
			ClosedAt: t0.Add(time.Hour).UTC(), ClosedBy: "bob", RCA: "rotated"},
	}
}

// auditExample is an audit record as the store writes it, hashed.
func auditExample() store.AuditRecord {
	r := store.AuditRecord{Seq: 7, Time: time.Date(2025, 3, 1, 11, 0, 0, 123456789, time.UTC), Kind: "credential_issued",
		Actor: agentA, Subject: "db-read", Detail: map[string]string{"decision": "allow", "purpose": "<q3> & \"report\"", "request_id": "r-1"},
		Prev: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
	r.Hash = r.ComputeHash()
	return r
}

// FuzzRecordDecode decodes arbitrary bytes as each of the store's records.
// Decoding never panics, and a record that decodes survives the store's
// read-modify-write: it encodes, decodes to the same record, and encodes
// to the same bytes again.
func FuzzRecordDecode(f *testing.F) {
	for _, ex := range recordExamples() {
		b, err := json.Marshal(ex)
		if err != nil {
			f.Fatal(err)
		}
		i := slices.IndexFunc(recordTypes, func(rt recordType) bool { return reflect.TypeOf(rt.v) == reflect.TypeOf(ex) })
		if i < 0 {
			f.Fatalf("%T is not in recordTypes", ex)
		}
		f.Add(uint8(i), b)
	}
	for i, s := range []string{
		`null`, `{}`, `[]`, `{"kill":null}`, `{"kill":{}}`, `{"roles":[]}`, `{"chain":[]}`, `{"detail":{}}`, `{"detail":{"a":null}}`,
		`{"created_at":"2025-03-01T12:00:00+01:00"}`, `{"revoked_at":"0001-01-01T01:00:00+01:00"}`, `{"decided_at":"0001-01-01T00:00:00Z"}`,
		`{"time":"9999-12-31T23:59:59-23:59"}`, `{"time":"0000-01-01T00:00:00+23:59"}`, `{"at":"2025-03-01T11:00:00.000000000Z"}`,
		`{"level":1e0}`, `{"level":-1}`, `{"ttl":9223372036854775807}`, `{"ID":"a","id":"b"}`, "{\"id\":\"\xff\\ud800\"}",
		`{"prev":"\u003c\u2028"}`, `{"Expiresat":"2025-03-01T11:00:00Z","RevokedAt":"2025-03-01T11:00:00Z"}`,
	} {
		f.Add(uint8(i), []byte(s))
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		recordTypes[int(which)%len(recordTypes)].check(t, data)
	})
}

// FuzzAuditTamper changes one byte of an audit record as the store writes
// it, at every position in turn. The unaltered record passes the hash
// check VerifyAudit makes; what still decodes after the change either
// fails it or is the very record that was written: ComputeHash covers
// every byte that makes the record what it is.
func FuzzAuditTamper(f *testing.F) {
	ex := auditExample()
	f.Add(ex.Seq, ex.Time.UnixNano(), ex.Kind, ex.Actor, ex.Subject, "purpose", ex.Detail["purpose"], ex.Prev, byte(1))
	f.Add(uint64(1), int64(0), "policy_updated", "spiffe://td/admin", "policy", "", "", "", byte(0x20))
	f.Add(uint64(1<<63), int64(-1), "", "", "", "k", "", "", byte(0x80))
	f.Add(uint64(2), int64(1), "\xff", "a\u2028", "\"", "\\", "<>&", "0", byte(0xff))
	f.Fuzz(func(t *testing.T, seq uint64, nanos int64, kind, actor, subject, key, value, prev string, delta byte) {
		r := store.AuditRecord{Seq: seq, Time: time.Unix(0, nanos).UTC(), Kind: kind, Actor: actor, Subject: subject, Prev: prev}
		if key != "" {
			r.Detail = map[string]string{key: value, "request_id": "r-1"}
		}
		r.Hash = r.ComputeHash()
		enc, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("%+v does not encode: %v", r, err)
		}
		var back store.AuditRecord
		if err := json.Unmarshal(enc, &back); err != nil || back.Hash != back.ComputeHash() {
			t.Fatalf("%s: an unaltered record decodes to %+v (%v), which fails the hash check", enc, back, err)
		}
		written, err := json.Marshal(back) // as it reads back: invalid UTF-8 is U+FFFD
		if err != nil {
			t.Fatal(err)
		}
		if delta == 0 {
			delta = 1
		}
		tampered := make([]byte, len(enc))
		for i := range enc {
			copy(tampered, enc)
			tampered[i] ^= delta
			var got store.AuditRecord
			if json.Unmarshal(tampered, &got) != nil || got.Hash != got.ComputeHash() {
				continue
			}
			if again, err := json.Marshal(got); err != nil || !bytes.Equal(again, written) {
				t.Fatalf("byte %d changed:\n %s\ndecodes to a record that passes the hash check but is\n %s\nnot\n %s", i, tampered, again, written)
			}
		}
	})
}

// fuzzStore builds a store file holding every kind of record, with enough
// agents that its buckets have branch pages, left as a crashed run leaves
// it (so that opening it recovers). It returns the file, as a backup, and
// the audit trail written.
func fuzzStore(f *testing.F) ([]byte, []store.AuditRecord) {
	path := filepath.Join(f.TempDir(), "atf.db")
	c := newClock()
	s, err := store.Open(path, store.Options{Now: c.Now})
	if err != nil {
		f.Fatal(err)
	}
	must := func(err error) {
		f.Helper()
		if err != nil {
			f.Fatal(err)
		}
	}
	for _, id := range fixtureAgents {
		_, err := s.RegisterAgent(agent(id), "alice")
		must(err)
	}
	for _, g := range fixtureGrants() {
		must(s.PutGrant(g, 16))
	}
	for _, a := range fixtureAnchors() {
		must(s.AddAnchor(a))
	}
	for _, cr := range fixtureCredentials() {
		must(s.RecordCredential(cr))
	}
	_, err = s.PutPolicy(store.PolicyVersion{Author: "alice", Comment: "first", Model: "m", Policy: "p", Digest: "d", Lines: 1}, 0)
	must(err)
	must(s.PutApproval(store.Approval{ID: "ap-1", AgentID: agentB, Role: "db-write", Class: "write", Classification: "internal",
		Level: authz.Junior, TTL: time.Minute, CreatedAt: c.Now(), ExpiresAt: c.Now().Add(time.Hour), DecisionID: "dec-ap-1"}))
	must(s.RecordOutcome(store.OutcomeReport{Agent: agentA, Reporter: agentA, Outcome: "success", Role: "db-read", DecisionID: "dec-1", Message: "done"}))
	must(s.AddEvidence(store.Evidence{Agent: agentA, Kind: "pentest", Target: authz.Senior, Reference: "r", RecordedBy: "alice", At: c.Now()}))
	_, err = s.OpenIncident(store.Incident{ID: "inc-1", Agent: agentA, Severity: "high", Summary: "s", OpenedAt: c.Now(), OpenedBy: "alice"})
	must(err)
	_, _, err = s.KillAgent(agentX, "ops", "incident", true)
	must(err)
	fill(f, s, 0, 120)
	_, _, err = s.BeginRun("atfd")
	must(err)
	trail, err := s.Audit(0, 1<<20)
	must(err)
	// A backup is the file without the room bbolt grows it by: every byte
	// of it is a page the store reads.
	var raw bytes.Buffer
	_, err = s.Backup(&raw)
	must(err)
	must(s.Close())
	return raw.Bytes(), trail
}

// FuzzOpen opens a store file with fuzzed bytes written over it, as a
// crash, a bad disk or a hand edit could leave it. Open refuses the file
// with a *store.DamagedError, leaving it as it was (but see checkOpen), or
// opens it; it never panics or hangs. What opens can be read as atfd reads it at start and
// after, without a panic, and an audit trail that verifies is the trail
// written, or a prefix of it.
func FuzzOpen(f *testing.F) {
	raw, trail := fuzzStore(f)
	page := os.Getpagesize()
	f.Add(uint32(0), []byte{}, uint32(0), []byte{})
	f.Add(uint32(0), make([]byte, page), uint32(0), []byte{})
	f.Add(uint32(page), make([]byte, 64), uint32(0), []byte{})
	f.Add(uint32(2*page+16), []byte{0xff, 0xff, 0xff, 0x7f}, uint32(len(raw)/2), []byte("garbage"))
	// A page spanning far past the file, a branch pointing to itself, a
	// freelist longer than its page, an empty key: bbolt loops, allocates
	// without bound or panics on each (TestOpenDamagedTree).
	pageOf := func(flag uint16) uint32 {
		for at := 2 * page; at+page <= len(raw); at += page {
			if binary.NativeEndian.Uint16(raw[at+8:])&flag != 0 && binary.NativeEndian.Uint16(raw[at+10:]) > 1 {
				return uint32(at)
			}
		}
		f.Fatalf("the fixture has no page with flags %#x", flag)
		return 0
	}
	const branch, leaf, freelist = 0x01, 0x02, 0x10
	f.Add(pageOf(leaf)+12, []byte{0xff, 0xff, 0xff, 0xff}, uint32(0), []byte{})
	f.Add(pageOf(branch)+pageHeader+8, binary.NativeEndian.AppendUint64(nil, uint64(pageOf(branch))/uint64(page)), uint32(0), []byte{})
	f.Add(pageOf(freelist)+10, []byte{0xff, 0xff}, pageOf(freelist)+pageHeader, binary.NativeEndian.AppendUint64(nil, 1<<40))
	seed := filepath.Join(f.TempDir(), "atf.db")
	if err := os.WriteFile(seed, raw, 0o600); err != nil {
		f.Fatal(err)
	}
	f.Add(uint32(auditRoot(f, seed))+pageHeader+4, []byte{0, 0, 0, 0}, uint32(0), []byte{})
	for _, r := range trail[len(trail)-3:] {
		enc, err := json.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		if at := bytes.LastIndex(raw, enc); at >= 0 {
			f.Add(uint32(at+len(enc)/2), []byte{'!'}, uint32(0), []byte{})
			f.Add(uint32(at-2), []byte{0xff}, uint32(at), []byte{'{'})
		}
	}
	f.Fuzz(func(t *testing.T, at1 uint32, patch1 []byte, at2 uint32, patch2 []byte) {
		file := slices.Clone(raw)
		copy(file[int(at1)%len(file):], patch1)
		copy(file[int(at2)%len(file):], patch2)
		// A file of its own: a store that hung keeps its file locked.
		checkOpen(t, filepath.Join(t.TempDir(), "atf.db"), file, raw, trail)
	})
}

// checkOpen writes file, raw damaged, to path, and checks Open and
// readStore on it; trail is raw's audit trail.
func checkOpen(t *testing.T, path string, file, raw []byte, trail []store.AuditRecord) {
	page := os.Getpagesize()
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	// Open and the reads run where a hang can be seen and shown.
	type result struct{ open, read error }
	done := make(chan result, 1)
	go func() {
		s, err := store.Open(path, store.Options{Now: newClock().Now, LockTimeout: 100 * time.Millisecond})
		if err != nil {
			if s != nil {
				err = fmt.Errorf("a store, and %w", err)
			}
			done <- result{open: err}
			return
		}
		err = readStore(s, trail)
		s.Close()
		done <- result{read: err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		stacks := make([]byte, 1<<20)
		t.Fatalf("Open or reading the store hangs:\n%s", stacks[:runtime.Stack(stacks, true)])
	}
	if r.read != nil {
		t.Fatal(r.read)
	}
	if r.open != nil {
		var de *store.DamagedError
		if !errors.As(r.open, &de) {
			t.Fatalf("Open: %v; want a *store.DamagedError", r.open)
		}
		// With a page where a meta page should be, Open first commits
		// the store's last state again, as bbolt does to recover from a
		// torn commit, because bbolt's check cannot pass the page; only
		// then may it find other damage.
		after, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(after, file) && bytes.Equal(file[:2*page], raw[:2*page]) {
			t.Fatalf("Open refused the file (%v), and changed it (%v)", r.open, err)
		}
	}
}

// readStore checks the audit trail of s: if it verifies, it is trail or
// a prefix of it. Then it reads s as atfd does, at start and after.
func readStore(s *store.Store, trail []store.AuditRecord) error {
	if n, err := s.VerifyAudit(); err == nil {
		got, err := s.Audit(0, len(trail)+1)
		if err != nil || uint64(len(got)) != n || len(got) > len(trail) {
			return fmt.Errorf("VerifyAudit = %d records, but Audit reads %d (%v); %d were written", n, len(got), err, len(trail))
		}
		for i, r := range got {
			want, _ := json.Marshal(trail[i])
			if enc, _ := json.Marshal(r); !bytes.Equal(enc, want) {
				return fmt.Errorf("the audit trail verifies, but record %d reads\n %s\nnot\n %s", i+1, enc, want)
			}
		}
	}
	_, _, _ = s.BeginRun("atfd")
	_, _ = s.Policy(0)
	_, _ = s.Policies(0, 10)
	_, _ = s.PendingRevocations()
	_, _ = s.LiveCredentials(t0)
	_, _ = s.KilledAgents()
	_, _ = s.GlobalKill()
	_, _ = s.Approvals(store.ApprovalPending, "", 10)
	_, _ = s.Incidents("", false)
	_, _, _ = s.QueryAudit(store.AuditFilter{Kind: "test"}, 0, 10)
	_, _ = s.AuditHead()
	_, _ = s.Backup(io.Discard)
	after := ""
	for range 100 {
		agents, next, err := s.ListAgents(after, 50, true)
		if err != nil {
			break
		}
		for _, a := range agents {
			_, _ = s.AgentHistory(a.ID)
			_, _ = s.Credentials(a.ID)
			_, _ = s.GrantsGivenBy(a.ID)
			_, _ = s.AgentOutcomes(a.ID)
			_, _ = s.AgentEvidence(a.ID)
		}
		if next == "" {
			break
		}
		after = next
	}
	for _, g := range fixtureGrants() {
		_, _, _ = s.Lineage(store.Root{GrantID: g.ID})
		_, _ = s.Chain(g.ID)
	}
	return nil
}

// A record holding invalid UTF-8 is written with U+FFFD in its place, as
// JSON must be, and still verifies: the hash is that of the record as it
// reads back. (Found by FuzzAuditTamper.)
func TestAuditInvalidUTF8(t *testing.T) {
	s, _ := open(t)
	for _, r := range []store.AuditRecord{
		{Kind: "test\xff", Actor: "a\xc0\xaf", Subject: "\xed\xa0\x80", Detail: map[string]string{"k\xfe": "v\xff", "k\xff": "w"}},
		{Kind: "test", Actor: "\uFFFD", Subject: `\ufffd`},
	} {
		if err := s.AppendAudit(r); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.VerifyAudit(); err != nil || n != 2 {
		t.Fatalf("VerifyAudit = %d, %v; want 2 records that verify", n, err)
	}
	recs, err := s.Audit(0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if r := recs[0]; r.Kind != "test\uFFFD" || r.Actor != "a\uFFFD\uFFFD" || r.Detail["k\uFFFD"] != "w" || r.Hash != r.ComputeHash() {
		t.Errorf("record 1 reads back as %+v", r)
	}
}

// Damage that bbolt trusts and tx.Check lets through once had Open loop
// for hours, run out of memory or accept a freelist past the file, or the
// first write after it panic: bbolt follows page ids, spans and counts as
// it finds them. Each is refused, in bounded time. (Found by FuzzOpen.)
func TestOpenDamagedTree(t *testing.T) {
	boltOnly(t)
	dir := t.TempDir()
	orig := filepath.Join(dir, "atf.db")
	s := openAt(t, orig, store.Options{})
	fill(t, s, 0, 300)
	var file bytes.Buffer
	if _, err := s.Backup(&file); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(orig, file.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	put := func(path string, at int64, b []byte) {
		overwrite(func(int64) int64 { return at }, func(int) []byte { return b }, len(b))(t, path, 0)
	}
	u32 := func(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
	u64 := func(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }
	page := int64(os.Getpagesize())
	for _, tt := range []struct {
		name, refused string
		damage        func(path string)
	}{
		{"a leaf page spanning 2^32 pages", "spans 4294967295 more pages", func(path string) {
			put(path, findPage(t, path, "leaf")+12, u32(math.MaxUint32))
		}},
		{"a branch pointing to itself", "is reached twice", func(path string) {
			at := findPage(t, path, "branch")
			put(path, at+pageHeader+8, u64(uint64(at/page)))
		}},
		// A bucket's root page has no key above it to be checked against:
		// the keys are still in order, and the first write below panics.
		{"a bucket's root branch with an empty first key", "key 0 is empty", func(path string) {
			put(path, auditRoot(t, path)+pageHeader+4, u32(0))
		}},
		{"a freelist of 2^40 pages", "more than it holds", func(path string) {
			at := findPage(t, path, "freelist")
			put(path, at+10, []byte{0xff, 0xff})
			put(path, at+pageHeader, u64(1<<40))
		}},
		// bbolt would hand the page out, growing the file to 4 TiB.
		{"a freelist listing a page past the file", "lists page 1073741824 as free, outside the file", func(path string) {
			at := findPage(t, path, "freelist")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			n := binary.NativeEndian.Uint16(b[at+10:])
			put(path, at+10, binary.NativeEndian.AppendUint16(nil, n+1))
			put(path, at+pageHeader+8*int64(n), u64(1<<30))
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "atf.db")
			if err := os.WriteFile(path, file.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			tt.damage(path)
			done := make(chan error, 1)
			go func() {
				s, err := store.Open(path, store.Options{})
				if err == nil {
					s.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				var de *store.DamagedError
				if !errors.As(err, &de) || !strings.Contains(de.Reason, tt.refused) {
					t.Errorf("Open = %v; want a *store.DamagedError saying %q", err, tt.refused)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Open hangs")
			}
		})
	}
}

// auditRoot returns the offset of the audit bucket's root page in the
// store file at path, failing unless it is a branch page.
func auditRoot(t testing.TB, path string) int64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var root int
	err = db.View(func(tx *bolt.Tx) error {
		root = int(tx.Bucket([]byte("audit")).Root())
		p, err := tx.Page(root)
		if err == nil && p.Type != "branch" {
			err = fmt.Errorf("the audit bucket's root is a %s page", p.Type)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return int64(root * os.Getpagesize())
}
