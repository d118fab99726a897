package store_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev"
)

// migrationSource builds a store file with something in every bucket: the
// lineage fixture, a revoked lineage (queued in Vault), an approval, a
// policy, outcomes, evidence and a sign-off (buckets with sequences), an
// incident, a killed agent, and an audit trail most of which was moved to
// sealed segments. clean says whether its run ends with EndRun or, as in
// a crash, not. It returns the file's path, its audit dir and the clock
// it was written by, ten minutes after the fixture's start.
func migrationSource(t *testing.T, clean bool) (path, auditDir string, c *clock) {
	t.Helper()
	dir := t.TempDir()
	path, auditDir = filepath.Join(dir, "atf.db"), filepath.Join(dir, "atf.db.audit")
	c = newClock()
	s, err := store.Open(path, store.Options{Now: c.Now, AuditDir: auditDir, AuditSegmentSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, _, err = s.BeginRun("atfd")
	must("BeginRun", err)
	for _, id := range fixtureAgents {
		mustRegister(t, s, id, "alice")
	}
	for _, g := range fixtureGrants() {
		must("PutGrant", s.PutGrant(g, 16))
	}
	for _, a := range fixtureAnchors() {
		must("AddAnchor", s.AddAnchor(a))
	}
	for _, cr := range fixtureCredentials() {
		must("RecordCredential", s.RecordCredential(cr))
	}
	c.Advance(10 * time.Minute)
	_, err = s.RevokeLineage(store.Root{GrantID: "g-xy"}, "alice", "migration test")
	must("RevokeLineage", err)
	must("PutApproval", s.PutApproval(store.Approval{ID: "ap-1", AgentID: agentA, Role: "db-write", Class: "write",
		DecisionID: "dec-ap-1", CreatedAt: c.Now(), ExpiresAt: c.Now().Add(time.Hour)}))
	_, err = s.PutPolicy(store.PolicyVersion{Author: "alice", Comment: "first", Model: "m", Policy: "p"}, 0)
	must("PutPolicy", err)
	must("RecordOutcome", s.RecordOutcome(store.OutcomeReport{Agent: agentA, Reporter: agentA, Outcome: "success"}))
	must("AddEvidence", s.AddEvidence(store.Evidence{Agent: agentA, Kind: "review", Target: authz.Senior, Reference: "r-1", RecordedBy: "alice", At: c.Now()}))
	must("AddSignOff", s.AddSignOff(store.SignOff{Agent: agentA, Signer: "bob", RiskAcceptance: "ok", Target: authz.Senior, RecordedBy: "bob", At: c.Now()}))
	_, err = s.OpenIncident(store.Incident{ID: "inc-1", Agent: agentB, Severity: "low", Summary: "slow", OpenedAt: c.Now(), OpenedBy: "alice"})
	must("OpenIncident", err)
	_, _, err = s.KillAgent(agentX, "alice", "migration test", false)
	must("KillAgent", err)
	for range 60 {
		must("AppendAudit", s.AppendAudit(store.AuditRecord{Kind: "credential_denied", Actor: agentY, Subject: "db-read",
			Detail: map[string]string{"reason": "a record of some length, so that segments fill"}}))
	}
	for {
		n, err := s.ShipAudit()
		must("ShipAudit", err)
		if n == 0 {
			break
		}
	}
	// The newest records stay in the file: the trail is in both places.
	must("AppendAudit", s.AppendAudit(store.AuditRecord{Kind: "credential_denied", Actor: agentY, Subject: "after the segments"}))
	if clean {
		must("EndRun", s.EndRun())
	}
	must("Close", s.Close())
	return path, auditDir, c
}

// migrationDest is an empty prefix of the package's etcd cluster.
func migrationDest(t *testing.T) (*clientv3.Client, store.EtcdOptions) {
	t.Helper()
	cli, err := etcdClient()
	if err != nil {
		t.Fatal(err)
	}
	return cli, store.EtcdOptions{Prefix: "/migrate/" + rand.Text() + "/", MaxTxnOps: dev.MaxTxnOps}
}

// keysUnder counts the keys under prefix.
func keysUnder(t *testing.T, cli *clientv3.Client, prefix string) int64 {
	t.Helper()
	resp, err := cli.Get(t.Context(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

// A store file migrates into etcd whole: every bucket, its sequence, and
// the audit trail with the records its segments hold, one chain that
// verifies in etcd; the copy opens, holds what the file held, and numbers
// new records on without overwriting old ones. A dry run writes nothing,
// and a second migration into the same prefix is refused.
func TestMigrateToEtcd(t *testing.T) {
	path, auditDir, _ := migrationSource(t, true)
	cli, eo := migrationDest(t)
	m := store.Migration{Path: path, Client: cli, Etcd: eo}

	dry := m
	dry.DryRun = true
	surveyed, err := store.MigrateToEtcd(t.Context(), dry)
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	if n := keysUnder(t, cli, eo.Prefix); n != 0 {
		t.Fatalf("a dry run wrote %d keys", n)
	}
	rep, err := store.MigrateToEtcd(t.Context(), m)
	if err != nil {
		t.Fatalf("MigrateToEtcd: %v", err)
	}
	checkReport(t, rep, surveyed)
	before := keysUnder(t, cli, eo.Prefix)
	if before != rep.Keys {
		t.Errorf("etcd holds %d keys under the prefix, the report says %d", before, rep.Keys)
	}
	_, err = store.MigrateToEtcd(t.Context(), m)
	if !errors.Is(err, store.ErrExists) || !strings.Contains(err.Error(), "etcdctl del --prefix "+eo.Prefix) {
		t.Errorf("a second migration into the prefix = %v, want ErrExists saying what to do", err)
	}
	if after := keysUnder(t, cli, eo.Prefix); after != before {
		t.Errorf("a refused migration changed the prefix: %d keys, then %d", before, after)
	}

	src, err := store.Open(path, store.Options{AuditDir: auditDir})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := store.OpenEtcd(cli, eo, store.Options{})
	if err != nil {
		t.Fatalf("opening the copy: %v", err)
	}
	defer dst.Close()
	sameState(t, src, dst, rep)
	if crashed, _, err := dst.BeginRun("atfd"); err != nil || crashed {
		t.Errorf("BeginRun on the copy of a cleanly stopped store = crashed %t, %v", crashed, err)
	}
	// The sequence went on: a new sign-off does not overwrite the old one.
	if err := dst.AddSignOff(store.SignOff{Agent: agentA, Signer: "carol", Target: authz.Senior, RecordedBy: "carol", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if so, err := dst.AgentSignOffs(agentA); err != nil || len(so) != 2 || so[0].Signer != "bob" {
		t.Errorf("sign-offs after one more in etcd = %+v, %v; want bob's and carol's", so, err)
	}

}

// checkReport checks the report of a migration of migrationSource's file
// against the dry run's.
func checkReport(t *testing.T, rep, surveyed store.MigrationReport) {
	t.Helper()
	if !reflect.DeepEqual(rep.Buckets, surveyed.Buckets) || rep.AuditRecords != surveyed.AuditRecords || rep.AuditHead != surveyed.AuditHead {
		t.Errorf("the migration's report %+v differs from the dry run's %+v", rep, surveyed)
	}
	counts := map[string]store.BucketReport{}
	for _, b := range rep.Buckets {
		counts[b.Name] = b
	}
	for _, name := range []string{"agents", "agent_history", "credentials", "revocations", "grants", "anchors", "audit",
		"policies", "approvals", "meta", "outcomes", "evidence", "sign_offs", "incidents"} {
		if counts[name].Keys == 0 {
			t.Errorf("bucket %s: nothing copied (report %+v)", name, rep.Buckets)
		}
	}
	if counts["sign_offs"].Sequence != 1 || counts["evidence"].Sequence != 1 {
		t.Errorf("sequences: sign-offs %d, evidence %d; want 1 and 1", counts["sign_offs"].Sequence, counts["evidence"].Sequence)
	}
	if rep.FromSegments == 0 || rep.FromSegments >= rep.AuditRecords || uint64(counts["audit"].Keys) != rep.AuditRecords {
		t.Errorf("audit: %d records, %d from segments, %d keys copied; want some from segments, all copied", rep.AuditRecords, rep.FromSegments, counts["audit"].Keys)
	}
	if rep.Crashed {
		t.Error("the report says the cleanly stopped run crashed")
	}
}

// sameState checks that the copy in etcd holds what the file holds, as the
// store reads it.
func sameState(t *testing.T, src, dst *store.Store, rep store.MigrationReport) {
	t.Helper()
	for _, id := range fixtureAgents {
		a, err := dst.GetAgent(id)
		want, _ := src.GetAgent(id)
		if err != nil || !reflect.DeepEqual(a, want) {
			t.Errorf("agent %s in etcd = %+v, %v; want %+v", id, a, err, want)
		}
	}
	if a, _ := dst.GetAgent(agentX); a.Kill == nil {
		t.Error("the killed agent is not killed in etcd")
	}
	grants, creds, err := dst.Lineage(store.Root{GrantID: "g-xy"})
	if err != nil || len(grants) != 1 || grants[0].RevokedAt.IsZero() || slices.ContainsFunc(creds, func(c store.Credential) bool { return c.RevokedAt.IsZero() }) {
		t.Errorf("the revoked lineage in etcd: %+v, %+v, %v; want it revoked", grants, creds, err)
	}
	wantQ, _ := src.PendingRevocations()
	if q, err := dst.PendingRevocations(); err != nil || !slices.Equal(q, wantQ) || len(q) == 0 {
		t.Errorf("revocation queue in etcd = %v, %v; want %v", q, err, wantQ)
	}
	n, err := dst.VerifyAudit()
	if err != nil || n != rep.AuditRecords {
		t.Errorf("VerifyAudit in etcd = %d, %v; want %d records", n, err, rep.AuditRecords)
	}
	wantTrail, _ := src.Audit(0, 1000)
	if trail, err := dst.Audit(0, 1000); err != nil || !reflect.DeepEqual(trail, wantTrail) {
		t.Errorf("the audit trail in etcd differs from the file's and its segments' (%d and %d records): %v", len(trail), len(wantTrail), err)
	}
}

// What cannot be copied faithfully is refused, before anything is written:
// a file an atfd holds, a prefix that holds keys, a file that is not there,
// an audit trail whose segments are missing, a bucket of another version.
func TestMigrateRefuses(t *testing.T) {
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, m *store.Migration)
		is    error
		want  string
	}{
		{"locked", func(t *testing.T, m *store.Migration) {
			s, err := store.Open(m.Path, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
		}, store.ErrLocked, "is another atfd running on it?): stop it first"},
		{"prefix not empty", func(t *testing.T, m *store.Migration) {
			if _, err := m.Client.Put(t.Context(), m.Etcd.Prefix+"someone/else", "x"); err != nil {
				t.Fatal(err)
			}
		}, store.ErrExists, "etcd holds 1 keys under"},
		{"no file", func(t *testing.T, m *store.Migration) { m.Path += ".missing" }, store.ErrNotFound, "no store file at"},
		{"segments missing", func(t *testing.T, m *store.Migration) { m.AuditDir = t.TempDir() }, nil, "does not verify"},
		{"torn segment", func(t *testing.T, m *store.Migration) {
			segs, err := filepath.Glob(filepath.Join(m.Path+".audit", "audit-*.jsonl"))
			if err != nil || len(segs) == 0 {
				t.Fatalf("segments: %v, %v", segs, err)
			}
			f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteString(`{"seq":`); err != nil {
				t.Fatal(err)
			}
		}, store.ErrInvalid, "ends in a line torn by a crash: start atfd on"},
		{"unknown bucket", func(t *testing.T, m *store.Migration) {
			rawUpdate(t, m.Path, func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("from_the_future")); return err })
		}, store.ErrInvalid, `bucket "from_the_future" that this version does not know`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path, _, _ := migrationSource(t, true)
			cli, eo := migrationDest(t)
			m := store.Migration{Path: path, Client: cli, Etcd: eo}
			tt.setup(t, &m)
			before := keysUnder(t, cli, eo.Prefix)
			_, err := store.MigrateToEtcd(t.Context(), m)
			if err == nil || (tt.is != nil && !errors.Is(err, tt.is)) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("MigrateToEtcd = %v, want %v saying %q", err, tt.is, tt.want)
			}
			if after := keysUnder(t, cli, eo.Prefix); after != before {
				t.Errorf("a refused migration wrote %d keys", after-before)
			}
		})
	}
}

// The comparison after the copy catches a copy that differs from the file
// in any way (here damaged on purpose between the copy and the
// comparison), fails naming the difference, and leaves a copy that atfd
// refuses to open.
func TestMigrateVerifyCatchesDifferences(t *testing.T) {
	path, _, _ := migrationSource(t, true)
	// Keys of the etcd engine: <prefix><bucket>\x00<key>, and a bucket's
	// sequence at <prefix><bucket>\x01seq.
	for _, tt := range []struct {
		name   string
		damage func(ctx context.Context, cli *clientv3.Client, prefix string) error
		want   string
	}{
		{"value changed", func(ctx context.Context, cli *clientv3.Client, prefix string) error {
			_, err := cli.Put(ctx, prefix+"agents\x00"+agentA, `{"id":"`+agentA+`","level":4}`)
			return err
		}, `agents: the value of key "` + agentA + `" differs`},
		{"key deleted", func(ctx context.Context, cli *clientv3.Client, prefix string) error {
			_, err := cli.Delete(ctx, prefix+"grants\x00g-ab")
			return err
		}, `grants: key "g-ab" is missing from etcd`},
		{"key added", func(ctx context.Context, cli *clientv3.Client, prefix string) error {
			_, err := cli.Put(ctx, prefix+"grants\x00g-zz", "{}")
			return err
		}, `grants: key "g-zz" is in etcd, not in the file`},
		{"sequence changed", func(ctx context.Context, cli *clientv3.Client, prefix string) error {
			_, err := cli.Delete(ctx, prefix+"sign_offs\x01seq")
			return err
		}, "sign_offs: sequence 1 in the file, 0 in etcd"},
		{"key outside the buckets", func(ctx context.Context, cli *clientv3.Client, prefix string) error {
			_, err := cli.Put(ctx, prefix+"stray", "x")
			return err
		}, "keys outside the store's buckets"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cli, eo := migrationDest(t)
			store.AfterMigrationCopy(func() {
				if err := tt.damage(t.Context(), cli, eo.Prefix); err != nil {
					t.Error(err)
				}
			})
			defer store.AfterMigrationCopy(nil)
			_, err := store.MigrateToEtcd(t.Context(), store.Migration{Path: path, Client: cli, Etcd: eo})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "atfd will not open it") {
				t.Fatalf("MigrateToEtcd of a damaged copy = %v, want it to say %q", err, tt.want)
			}
			if s, err := store.OpenEtcd(cli, eo, store.Options{}); err == nil || !strings.Contains(err.Error(), "that did not finish") {
				if s != nil {
					s.Close()
				}
				t.Errorf("OpenEtcd of a failed migration = %v, want a refusal", err)
			}
		})
	}
}

// A file whose atfd crashed keeps its run marker in etcd: the first
// replica to begin a run there revokes what that atfd made (its live
// anchors and credentials, queued for Vault), audited, and removes the
// marker; the next replica finds nothing to recover.
func TestMigrateCrashedRun(t *testing.T) {
	path, _, c := migrationSource(t, false)
	cli, eo := migrationDest(t)
	rep, err := store.MigrateToEtcd(t.Context(), store.Migration{Path: path, Client: cli, Etcd: eo})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Crashed {
		t.Error("the report does not say the file's run crashed")
	}
	open := func(replica string) *store.Store {
		o := eo
		o.Replica = replica
		s, err := store.OpenEtcd(cli, o, store.Options{Now: c.Now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a := open("a")
	live, err := a.LiveCredentials(c.Now())
	if err != nil || len(live) == 0 {
		t.Fatalf("live credentials before recovery: %d, %v", len(live), err)
	}
	crashed, rev, err := a.BeginRun("atfd")
	if err != nil || !crashed || rev.CredentialCount() != len(live) || len(rev.Queued) == 0 {
		t.Fatalf("replica a's BeginRun = crashed %t, %d credentials revoked, %v queued, %v; want the %d live ones revoked",
			crashed, rev.CredentialCount(), rev.Queued, err, len(live))
	}
	if live, err := a.LiveCredentials(c.Now()); err != nil || len(live) != 0 {
		t.Errorf("live credentials after recovery: %d, %v", len(live), err)
	}
	head, err := a.AuditHead()
	if err != nil || head.Kind != "crash_recovery" || !strings.Contains(head.Detail["reason"], "migrated") {
		t.Errorf("last audit record = %+v, %v; want the migrated run's crash recovery", head, err)
	}
	if crashed, rev, err := open("b").BeginRun("atfd"); err != nil || crashed || len(rev.Queued) != 0 {
		t.Errorf("replica b's BeginRun after a's = crashed %t, %v, %v; want nothing left to recover", crashed, rev.Queued, err)
	}
	if _, err := a.VerifyAudit(); err != nil {
		t.Error(err)
	}
}

// A migration counts every credential of the file still live, across
// several seeding transactions, and no expired or revoked one: on the
// copy, the agent is at a limit of exactly that many, and each
// credential's revocation frees its place.
func TestMigrateSeedsLiveCounts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atf.db")
	s, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	holder := mustRegister(t, s, "a", "alice").ID
	now := time.Now()
	anchor := store.Anchor{Accessor: "anchor-a", Node: store.AgentNode(holder), CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := s.AddAnchor(anchor); err != nil {
		t.Fatal(err)
	}
	const live = 450 // three of seedLive's transactions
	for i := range live + 2 {
		exp := now.Add(time.Hour)
		if i == live {
			exp = now.Add(-time.Minute) // expired
		}
		cr := store.Credential{Accessor: fmt.Sprintf("acc-%04d", i), AgentID: holder, Role: "db-read", IssuedAt: now.Add(-2 * time.Minute),
			ExpiresAt: exp, Anchor: anchor.Accessor}
		if err := s.RecordCredential(cr); err != nil {
			t.Fatal(err)
		}
	}
	revoked := fmt.Sprintf("acc-%04d", live+1)
	if _, err := s.RevokeCredentials(holder, "alice", "test", func(c store.Credential) bool { return c.Accessor == revoked }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	cli, eo := migrationDest(t)
	rep, err := store.MigrateToEtcd(t.Context(), store.Migration{Path: path, Client: cli, Etcd: eo, CountLive: store.LiveKinds{Agent: true}})
	if err != nil || rep.LiveCounted != live {
		t.Fatalf("MigrateToEtcd = %d counted, %v; want %d", rep.LiveCounted, err, live)
	}
	d, err := store.OpenEtcd(cli, eo, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if n, err := d.LiveTotal(); err != nil || n != live {
		t.Fatalf("LiveTotal on the copy = %d, %v; want %d", n, err, live)
	}
	limit := []store.LiveLimit{{Key: store.LiveKey("agent", holder), Max: live}}
	_, err = d.ReserveLive(limit, now.Add(time.Hour))
	wantLiveLimit(t, err, store.LiveKey("agent", holder), live)
	if err := d.ReleaseLive(holder, "acc-0000", fmt.Sprintf("acc-%04d", live-1)); err != nil {
		t.Fatal(err)
	}
	if n, err := d.LiveTotal(); err != nil || n != live-2 {
		t.Fatalf("LiveTotal after releasing two = %d, %v; want %d", n, err, live-2)
	}
	if _, err := d.ReserveLive(limit, now.Add(time.Hour)); err != nil {
		t.Fatalf("reservation after two were released: %v", err)
	}
}
