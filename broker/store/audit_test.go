package store_test

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/store/kv"
	"github.com/agentictrust/atf/delegation"
	"github.com/agentictrust/atf/deploy/dev"
)

func mustVerifyAudit(t *testing.T, s *store.Store) uint64 {
	t.Helper()
	n, err := s.VerifyAudit()
	if err != nil {
		t.Fatalf("VerifyAudit: %v", err)
	}
	return n
}

func seqs(recs []store.AuditRecord) []uint64 {
	out := make([]uint64, len(recs))
	for i, r := range recs {
		out[i] = r.Seq
	}
	return out
}

// The store writes audit records itself for every change it commits (an
// agent registered, a grant created, a credential recorded or refused, a
// grant revoked) and appends the caller's; all of them are numbered and
// chained in commit order.
func TestAudit(t *testing.T) {
	s, c := open(t)
	if got := mustAudit(t, s, 0); len(got) != 0 {
		t.Fatalf("audit trail of a fresh store = %+v, want empty", got)
	}
	if n := mustVerifyAudit(t, s); n != 0 {
		t.Fatalf("VerifyAudit of an empty trail = %d, want 0", n)
	}
	const a, b = "spiffe://td/agent/a", "spiffe://td/agent/b"
	mustRegister(t, s, a, "alice")
	mustRegister(t, s, b, "alice")

	// The store numbers and chains the records, whatever the caller says,
	// and keeps them in time order: a time before the previous record's
	// becomes that record's.
	given := t0.Add(-time.Hour) // not UTC
	err := s.AppendAudit(
		store.AuditRecord{Kind: "agent_killed", Actor: "alice", Subject: a, Detail: map[string]string{"reason": "test"},
			Seq: 99, Prev: "forged", Hash: "forged"},
		store.AuditRecord{Time: given, Kind: "anomaly", Actor: "atfd", Subject: a},
	)
	if err != nil {
		t.Fatalf("AppendAudit: %v", err)
	}
	c.Advance(time.Minute)
	g := delegation.Grant{ID: "g1", Delegator: a, Delegatee: b, Roles: []string{"db-read"}, Depth: 1,
		CreatedAt: c.Now().UTC(), ExpiresAt: c.Now().Add(time.Hour).UTC()}
	if err := s.PutGrant(g, 16); err != nil {
		t.Fatalf("PutGrant: %v", err)
	}
	cr := credential(b, "acc-1")
	cr.GrantID, cr.Chain, cr.GrantIDs = "g1", []string{a, b}, []string{"g1"}
	mustRecord(t, s, cr)
	c.Advance(time.Minute)
	if _, err := s.RevokeLineage(store.Root{GrantID: "g1"}, "carol", "over-broad"); err != nil {
		t.Fatalf("RevokeLineage: %v", err)
	}
	late := cr
	late.Accessor, late.DecisionID = "acc-2", "dec-acc-2"
	if err := s.RecordCredential(late); err == nil {
		t.Fatal("RecordCredential under a revoked grant succeeded")
	}

	credDetail := func(decision string, extra ...string) map[string]string {
		d := map[string]string{"decision": "allow", "role": "db-read", "level": "senior", "decision_id": decision, "grant_id": "g1",
			"chain": a + " > " + b, "grant_ids": "g1", "policies": "db-read,default", "expires_at": "2025-03-01T11:15:00Z"}
		for i := 0; i+1 < len(extra); i += 2 {
			d[extra[i]] = extra[i+1]
		}
		return d
	}
	registered := func(id string) map[string]string {
		return map[string]string{"agent": id, "level": "junior", "revision": "1", "changed": "owner,purpose,roles,level,version,config_digest",
			"owner": "team-payments", "purpose": "reconcile invoices", "roles": "db-read,db-write", "version": "1.4.2", "config_digest": "sha256:0123"}
	}
	want := []store.AuditRecord{
		{Seq: 1, Time: t0.UTC(), Kind: "agent_registered", Actor: "alice", Subject: a, Detail: registered(a)},
		{Seq: 2, Time: t0.UTC(), Kind: "agent_registered", Actor: "alice", Subject: b, Detail: registered(b)},
		{Seq: 3, Time: t0.UTC(), Kind: "agent_killed", Actor: "alice", Subject: a, Detail: map[string]string{"reason": "test"}},
		{Seq: 4, Time: t0.UTC(), Kind: "anomaly", Actor: "atfd", Subject: a},
		{Seq: 5, Time: t0.Add(time.Minute).UTC(), Kind: "grant_created", Actor: a, Subject: "g1",
			Detail: map[string]string{"delegatee": b, "roles": "db-read", "parent": "", "expires_at": "2025-03-01T12:01:00Z"}},
		{Seq: 6, Time: t0.Add(time.Minute).UTC(), Kind: "credential_issued", Actor: b, Subject: "acc-1", Detail: credDetail("dec-acc-1")},
		{Seq: 7, Time: t0.Add(2 * time.Minute).UTC(), Kind: "grant_revoked", Actor: "carol", Subject: "g1",
			Detail: map[string]string{"delegator": a, "delegatee": b, "root": "grant g1", "reason": "over-broad"}},
		{Seq: 8, Time: t0.Add(2 * time.Minute).UTC(), Kind: "credential_refused", Actor: b, Subject: "acc-2", Detail: credDetail("dec-acc-2", "decision", "deny", "refused", "store: revoked: grant g1")},
	}
	got := mustAudit(t, s, 0)
	if len(got) != len(want) {
		t.Fatalf("audit trail has %d records, want %d:\n %+v", len(got), len(want), got)
	}
	prev := ""
	for i := range got {
		if got[i].Prev != prev || got[i].Hash == "" || got[i].Hash == "forged" {
			t.Errorf("record %d: Prev %q, Hash %q; want Prev %q and a fresh Hash", got[i].Seq, got[i].Prev, got[i].Hash, prev)
		}
		prev = got[i].Hash
		got[i].Prev, got[i].Hash = "", ""
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("record %d =\n %+v\nwant\n %+v", i+1, got[i], want[i])
		}
	}
	if n := mustVerifyAudit(t, s); n != 8 {
		t.Errorf("VerifyAudit = %d, want 8", n)
	}

	pages := []struct {
		after uint64
		limit int
		want  []uint64
	}{
		{0, 2, []uint64{1, 2}},
		{2, 2, []uint64{3, 4}},
		{6, 2, []uint64{7, 8}},
		{7, 2, []uint64{8}},
		{8, 2, []uint64{}},
		{5, 100, []uint64{6, 7, 8}},
		{0, 0, []uint64{}},
		{99, 2, []uint64{}},
	}
	for _, p := range pages {
		recs, err := s.Audit(p.after, p.limit)
		if err != nil {
			t.Fatalf("Audit(%d, %d): %v", p.after, p.limit, err)
		}
		if got := seqs(recs); !reflect.DeepEqual(got, p.want) {
			t.Errorf("Audit(%d, %d) = records %v, want %v", p.after, p.limit, got, p.want)
		}
	}
}

// auditHash is how the store hashes a record, rebuilt here to forge one.
func auditHash(t *testing.T, r store.AuditRecord) string {
	t.Helper()
	r.Hash = ""
	v, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(v)
	return hex.EncodeToString(sum[:])
}

func TestVerifyAuditDetectsTampering(t *testing.T) {
	key := func(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }
	get := func(t *testing.T, b *bolt.Bucket, seq uint64) store.AuditRecord {
		t.Helper()
		var r store.AuditRecord
		if err := json.Unmarshal(b.Get(key(seq)), &r); err != nil {
			t.Fatalf("decode record %d: %v", seq, err)
		}
		return r
	}
	put := func(t *testing.T, b *bolt.Bucket, seq uint64, r store.AuditRecord) {
		t.Helper()
		v, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Put(key(seq), v); err != nil {
			t.Fatal(err)
		}
	}
	// rewrite changes record seq's actor, rehashing it and, if through is
	// beyond it, every record up to through as well.
	rewrite := func(seq, through uint64) func(*testing.T, *bolt.Bucket) {
		return func(t *testing.T, b *bolt.Bucket) {
			r := get(t, b, seq)
			r.Actor = "mallory"
			if through == 0 {
				put(t, b, seq, r)
				return
			}
			for {
				r.Hash = auditHash(t, r)
				put(t, b, r.Seq, r)
				if r.Seq == through {
					return
				}
				next := get(t, b, r.Seq+1)
				next.Prev = r.Hash
				r = next
			}
		}
	}
	del := func(seq uint64) func(*testing.T, *bolt.Bucket) {
		return func(t *testing.T, b *bolt.Bucket) {
			if err := b.Delete(key(seq)); err != nil {
				t.Fatal(err)
			}
		}
	}
	const removed = " (a record was removed or inserted)"
	tests := []struct {
		name   string
		tamper func(*testing.T, *bolt.Bucket)
		// wantErr "" means VerifyAudit cannot tell: then it returns wantN.
		wantErr string
		wantN   uint64
	}{
		{name: "untouched", tamper: func(*testing.T, *bolt.Bucket) {}, wantN: 4},
		{name: "edited record", tamper: rewrite(2, 0), wantErr: "store: audit record 2 was altered"},
		{name: "edited record, rehashed", tamper: rewrite(2, 2), wantErr: "store: audit record 3 does not follow record 2"},
		{name: "deleted record", tamper: del(2), wantErr: "store: audit record 3: expected sequence number 2" + removed},
		{name: "deleted first record", tamper: del(1), wantErr: "store: audit record 2: expected sequence number 1" + removed},
		{
			name: "replayed record",
			tamper: func(t *testing.T, b *bolt.Bucket) {
				if err := b.Put(key(5), b.Get(key(2))); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "store: audit record 2: expected sequence number 5" + removed,
		},
		{
			name: "swapped records",
			tamper: func(t *testing.T, b *bolt.Bucket) {
				r2, r3 := get(t, b, 2), get(t, b, 3)
				put(t, b, 2, r3)
				put(t, b, 3, r2)
			},
			wantErr: "store: audit record 3: expected sequence number 2" + removed,
		},
		{
			name: "unreadable record",
			tamper: func(t *testing.T, b *bolt.Bucket) {
				if err := b.Put(key(3), []byte("{")); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "store: audit record 3 is unreadable: unexpected end of JSON input",
		},
		// The chain alone cannot show a cut tail or a rewrite through to
		// the end: only a copy of the head (count and last hash) kept
		// outside the file can.
		{name: "deleted last record", tamper: del(4), wantN: 3},
		{name: "edited record, rehashed to the end", tamper: rewrite(2, 4), wantN: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "atf.db")
			c := newClock()
			s := openAt(t, path, store.Options{Now: c.Now})
			for _, subject := range []string{"g1", "g2", "g3", "g4"} {
				c.Advance(time.Minute)
				if err := s.AppendAudit(store.AuditRecord{Kind: "grant_created", Actor: "alice", Subject: subject}); err != nil {
					t.Fatalf("AppendAudit: %v", err)
				}
			}
			if n := mustVerifyAudit(t, s); n != 4 {
				t.Fatalf("VerifyAudit before tampering = %d, want 4", n)
			}
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			rawUpdate(t, path, func(tx *bolt.Tx) error {
				tt.tamper(t, tx.Bucket([]byte("audit")))
				return nil
			})

			s = openAt(t, path, store.Options{Now: c.Now})
			n, err := s.VerifyAudit()
			if tt.wantErr == "" {
				if err != nil || n != tt.wantN {
					t.Errorf("VerifyAudit = %d, %v; want %d, nil", n, err, tt.wantN)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("VerifyAudit = %d, %v; want error %q", n, err, tt.wantErr)
			}
		})
	}
}

// etcd serves a descending range by reading all of it (it sorts the whole
// range before it truncates), so what every audited write and every
// issuance read of the audit trail's tail and the current policy comes
// from meta keys that point to them: with a trail of hundreds of records
// in etcd, recording credentials, reading the policy and the trail's head
// read no descending page, and the chain verifies.
func TestTailsReadWithoutDescendingPages(t *testing.T) {
	cli, err := etcdClient()
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.OpenEtcd(cli, store.EtcdOptions{Prefix: "/store/" + t.Name() + "/", MaxTxnOps: dev.MaxTxnOps}, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	holder := mustRegister(t, s, "spiffe://td/tails", "admin").ID
	var pv store.PolicyVersion
	for i := range 3 {
		if pv, err = s.PutPolicy(store.PolicyVersion{Author: "alice", Comment: fmt.Sprint(i), Model: "m", Policy: "p"}, 0); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UTC()
	record := func(i int) {
		t.Helper()
		if err := s.RecordCredential(store.Credential{Accessor: fmt.Sprintf("b.%d", i), Kind: store.KindBatch, AgentID: holder, Role: "db-read",
			IssuedAt: now, ExpiresAt: now.Add(time.Hour), PolicyVersion: pv.Version}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 300 {
		record(i)
	}
	before := kv.EtcdCounts()
	record(300)
	head, err := s.AuditHead()
	if err != nil || head.Kind != "credential_issued" || head.Subject != "b.300" {
		t.Fatalf("AuditHead = %+v (%v), want the last record's", head, err)
	}
	if cur, err := s.Policy(0); err != nil || cur.Version != pv.Version || cur.Comment != "2" {
		t.Fatalf("Policy(0) = version %d %q (%v), want version %d", cur.Version, cur.Comment, err, pv.Version)
	}
	if list, err := s.Policies(0, 2); err != nil || len(list) != 2 || list[0].Version != 3 || list[1].Version != 2 {
		t.Fatalf("Policies(0, 2) = %+v (%v), want versions 3 and 2", list, err)
	}
	if list, err := s.Policies(2, 5); err != nil || len(list) != 1 || list[0].Version != 1 {
		t.Fatalf("Policies(2, 5) = %+v (%v), want version 1", list, err)
	}
	if d := kv.EtcdCounts().Descending - before.Descending; d != 0 {
		t.Errorf("%d descending pages read by a record, the head, the policy: each reads the whole span below it in etcd", d)
	}
	if n := mustVerifyAudit(t, s); n != head.Seq {
		t.Errorf("verified %d records, want %d", n, head.Seq)
	}
}

// The tail pointers (meta keys audit_tail, policy_current) are where the
// walk to the newest audit record and policy version starts, never the
// answer: a store written before them, or whose pointers a binary from
// before them left behind (it appended without moving them), goes on from
// its true newest record and version: the chain links on, the policy
// version counts on.
func TestTailsOfAStoreWithoutPointers(t *testing.T) {
	boltOnly(t)
	for _, damage := range []string{"deleted", "rewound"} {
		t.Run(damage, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "atf.db")
			s := openAt(t, path, store.Options{})
			mustRegister(t, s, "spiffe://td/old", "admin")
			for range 3 {
				if _, err := s.PutPolicy(store.PolicyVersion{Author: "alice", Model: "m", Policy: "p"}, 0); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			setPointers(t, path, damage)
			s = openAt(t, path, store.Options{})
			mustRegister(t, s, "spiffe://td/new", "admin")
			pv, err := s.PutPolicy(store.PolicyVersion{Author: "alice", Model: "m", Policy: "p2"}, 3)
			if err != nil || pv.Version != 4 {
				t.Fatalf("PutPolicy after version 3 = %d (%v), want version 4", pv.Version, err)
			}
			head, err := s.AuditHead()
			if err != nil || head.Kind != "policy_updated" || head.Seq != 6 {
				t.Fatalf("AuditHead = %+v (%v), want the policy's record, the 6th", head, err)
			}
			if n := mustVerifyAudit(t, s); n != 6 {
				t.Errorf("verified %d records, want the 6 written across the upgrade", n)
			}
		})
	}
}

// setPointers deletes the tail pointers of the store at path, or rewinds
// them to the first entry.
func setPointers(t *testing.T, path, how string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket([]byte("meta"))
		for _, k := range []string{"audit_tail", "policy_current"} {
			if meta.Get([]byte(k)) == nil {
				return fmt.Errorf("no %s written", k)
			}
			if how == "deleted" {
				if err := meta.Delete([]byte(k)); err != nil {
					return err
				}
			} else if err := meta.Put([]byte(k), binary.BigEndian.AppendUint64(nil, 1)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A replica that was idle while another appended hundreds of records
// finds the tail from the pointer once its walk from what it last saw
// runs long, in a few reads (5 here), not a read per page of the records
// between (12 without the pointer).
func TestTailOfAnIdleReplica(t *testing.T) {
	cli, err := etcdClient()
	if err != nil {
		t.Fatal(err)
	}
	open := func(replica string) *store.Store {
		s, err := store.OpenEtcd(cli, store.EtcdOptions{Prefix: "/store/" + t.Name() + "/", Replica: replica, MaxTxnOps: dev.MaxTxnOps}, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	idle, busy := open("idle"), open("busy")
	mustRegister(t, idle, "spiffe://td/first", "admin")
	for i := range 600 {
		mustRegister(t, busy, fmt.Sprintf("spiffe://td/busy-%d", i), "admin")
	}
	before := kv.EtcdCounts()
	mustRegister(t, idle, "spiffe://td/last", "admin")
	if gets := kv.EtcdCounts().Gets - before.Gets; gets > 6 {
		t.Errorf("the idle replica's append read %d times: it walked the records the other appended", gets)
	}
	head, err := idle.AuditHead()
	if err != nil || head.Subject != "spiffe://td/last" || head.Seq != 602 {
		t.Fatalf("AuditHead = %+v (%v), want the 602nd record, the idle replica's", head, err)
	}
	if n := mustVerifyAudit(t, busy); n != 602 {
		t.Errorf("verified %d records, want 602", n)
	}
}
