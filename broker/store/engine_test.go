package store_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev"
)

// engine is the storage engine the package's tests run on: a bbolt file
// (unset or "bbolt"), or a real three-member etcd cluster on loopback
// ("etcd"). `make test` runs the package once with each.
var engine = os.Getenv("ATF_STORE_ENGINE")

// onEtcd reports whether the tests run on etcd.
func onEtcd() bool { return engine == "etcd" }

var etcdCluster struct {
	once  sync.Once
	stack *dev.Stack
	cli   *clientv3.Client
	err   error
}

// TestMain stops the etcd cluster, if the tests started one.
func TestMain(m *testing.M) {
	code := m.Run()
	if etcdCluster.cli != nil {
		etcdCluster.cli.Close()
	}
	if etcdCluster.stack != nil {
		if err := etcdCluster.stack.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	os.Exit(code)
}

// openStore opens the store at path: the bbolt file, or on etcd the store
// under a prefix named after path, so that reopening the same path finds
// the same store, as with a file.
func openStore(path string, opts store.Options) (*store.Store, error) {
	if !onEtcd() {
		return store.Open(path, opts)
	}
	cli, err := etcdClient()
	if err != nil {
		return nil, err
	}
	return store.OpenEtcd(cli, store.EtcdOptions{Prefix: "/store" + path + "/", MaxTxnOps: dev.MaxTxnOps}, opts)
}

// etcdClient is a client of the package's etcd cluster, started by the
// first test that asks, whichever engine the tests run on.
func etcdClient() (*clientv3.Client, error) {
	etcdCluster.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var e *dev.Etcd
		etcdCluster.stack, e, etcdCluster.err = dev.StartEtcdAlone(ctx, dev.Options{Logger: slog.New(slog.DiscardHandler)}, 3)
		if etcdCluster.err == nil {
			etcdCluster.cli, etcdCluster.err = e.Client()
		}
	})
	return etcdCluster.cli, etcdCluster.err
}

// boltOnly skips a test of what only a bbolt file has (its bytes, its
// lock, its size limit, its copy, audit segments beside it) when the
// tests run on etcd.
func boltOnly(t testing.TB) {
	t.Helper()
	if onEtcd() {
		t.Skip("a bbolt file's own behaviour; the tests run on etcd")
	}
}

// Replicas share a store in etcd, each with its own run: one that crashed
// revokes at its next start what it made (its anchors, and the credentials
// under them), never another replica's.
func TestReplicaCrashRevokesItsOwn(t *testing.T) {
	if !onEtcd() {
		t.Skip("replicas share a store in etcd only")
	}
	path := filepath.Join(t.TempDir(), "atf.db")
	c := newClock()
	open := func(replica string) *store.Store {
		if _, err := openStore(path, store.Options{}); err != nil { // starts the cluster
			t.Fatal(err)
		}
		s, err := store.OpenEtcd(etcdCluster.cli, store.EtcdOptions{Prefix: "/store" + path + "/", MaxTxnOps: dev.MaxTxnOps, Replica: replica}, store.Options{Now: c.Now})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b := open("a"), open("b")
	defer a.Close()
	for _, s := range []*store.Store{a, b} {
		if crashed, _, err := s.BeginRun("atfd"); err != nil || crashed {
			t.Fatalf("first BeginRun = crashed %t, %v", crashed, err)
		}
	}
	const agent = "spiffe://td/agent/ha"
	mustRegister(t, a, agent, "alice")
	for _, an := range []struct {
		s   *store.Store
		acc string
	}{{a, "anchor-of-a"}, {b, "anchor-of-b"}} {
		if err := an.s.AddAnchor(store.Anchor{Accessor: an.acc, Node: store.AgentNode(agent), CreatedAt: c.Now(), ExpiresAt: c.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	// b stops without EndRun (a crash), a stays up; b starts again.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = open("b")
	defer b.Close()
	crashed, rev, err := b.BeginRun("atfd")
	if err != nil || !crashed {
		t.Fatalf("BeginRun after b's crash = crashed %t, %v; want crashed", crashed, err)
	}
	if fmt.Sprint(rev.Queued) != "[anchor-of-b]" {
		t.Errorf("b's crash recovery queued %v, want only b's own anchor", rev.Queued)
	}
	// a's run is untouched: a clean stop of a is not a crash.
	if err := a.EndRun(); err != nil {
		t.Fatal(err)
	}
	if crashed, _, err := a.BeginRun("atfd"); err != nil || crashed {
		t.Errorf("a's BeginRun after a clean stop = crashed %t, %v", crashed, err)
	}
}

// The global kill switch holds a fleet larger than one transaction may
// carry: the switch commits alone, then the lineages in chunks, every
// anchor queued for Vault. On etcd the store is opened with etcd's
// default limit of 128 operations per transaction, which 60 agents with
// an anchor each pass many times over in one.
func TestKillAllLargeFleet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atf.db")
	var s *store.Store
	var err error
	if onEtcd() {
		if _, err = etcdClient(); err != nil {
			t.Fatal(err)
		}
		s, err = store.OpenEtcd(etcdCluster.cli, store.EtcdOptions{Prefix: "/store" + path + "/", MaxTxnOps: 128}, store.Options{})
	} else {
		s, err = store.Open(path, store.Options{})
	}
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 60
	ids := fill(t, s, 0, n)
	var anchors, queued []string
	now := time.Now().UTC()
	for i, id := range ids {
		a := store.Anchor{Accessor: fmt.Sprintf("anc-%03d", i), Node: store.AgentNode(id), CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
		if err := s.AddAnchor(a); err != nil {
			t.Fatalf("anchor of %s: %v", id, err)
		}
		anchors = append(anchors, a.Accessor)
		// Credentials without an anchor (access tokens), one of them
		// expired and kept for store_retention: each is read, so 16
		// agents' lineages no longer fit one transaction of 128.
		for j, exp := range []time.Time{now.Add(time.Hour), now.Add(time.Hour), now.Add(-time.Hour)} {
			acc := fmt.Sprintf("bare-%03d-%d", i, j)
			if err := s.RecordCredential(store.Credential{Accessor: acc, AgentID: id, Role: "reports-read", IssuedAt: exp.Add(-2 * time.Hour), ExpiresAt: exp}); err != nil {
				t.Fatalf("credential of %s: %v", id, err)
			}
			if exp.After(now) {
				queued = append(queued, acc)
			}
		}
	}
	rev, err := s.KillAll("ops", "drill")
	if err != nil {
		t.Fatalf("KillAll over %d agents: %v", n, err)
	}
	if gk, err := s.GlobalKill(); err != nil || gk == nil || gk.By != "ops" {
		t.Fatalf("global kill switch = %v, %v; want set by ops", gk, err)
	}
	want := slices.Sorted(slices.Values(append(anchors, queued...)))
	if got := slices.Sorted(slices.Values(rev.Queued)); !slices.Equal(got, want) {
		t.Errorf("queued %d accessors, want the %d anchors and %d live credentials without one: %v", len(got), len(anchors), len(queued), got)
	}
	// Nothing more is anchored for anyone.
	err = s.AddAnchor(store.Anchor{Accessor: "anc-late", Node: store.AgentNode(ids[0]), CreatedAt: time.Now().UTC(), ExpiresAt: time.Now().Add(time.Hour).UTC()})
	if !errors.Is(err, store.ErrKilled) {
		t.Errorf("an anchor after the kill: %v, want ErrKilled", err)
	}
}

// Crash recovery of a run larger than one transaction may carry: on etcd
// with etcd's default 128 operations per transaction, 300 anchors and 300
// bare credentials (and 300 expired records, which a store keeps for
// store_retention) are revoked and queued in chunks, the audit record
// counts them all, and the marker stays set for the next run.
func TestCrashRecoveryLargeRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atf.db")
	openSmall := func() *store.Store {
		t.Helper()
		var s *store.Store
		var err error
		if onEtcd() {
			if _, err = etcdClient(); err != nil {
				t.Fatal(err)
			}
			s, err = store.OpenEtcd(etcdCluster.cli, store.EtcdOptions{Prefix: "/store" + path + "/", MaxTxnOps: 128, Replica: "r1"}, store.Options{})
		} else {
			s, err = store.Open(path, store.Options{})
		}
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := openSmall()
	if crashed, _, err := s.BeginRun("atfd"); err != nil || crashed {
		t.Fatalf("first run: crashed %t, %v", crashed, err)
	}
	const n = 300
	agent := "spiffe://atf.test/agent"
	if _, err := s.RegisterAgent(store.Agent{ID: agent, Owner: "o@example.org", Purpose: "p", Roles: []string{"r"}, Level: authz.Intern}, "admin"); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	var anchors []string
	for i := range n {
		a := store.Anchor{Accessor: fmt.Sprintf("anchor-%03d", i), Node: store.AgentNode(agent), CreatedAt: now.Add(time.Duration(i)), ExpiresAt: now.Add(time.Hour)}
		if err := s.AddAnchor(a); err != nil {
			t.Fatal(err)
		}
		anchors = append(anchors, a.Accessor)
		for _, c := range []store.Credential{
			{Accessor: fmt.Sprintf("bare-%03d", i), AgentID: agent, Role: "r", IssuedAt: now, ExpiresAt: now.Add(time.Hour)},
			{Accessor: fmt.Sprintf("old-%03d", i), AgentID: agent, Role: "r", IssuedAt: now.Add(-2 * time.Hour), ExpiresAt: now.Add(-time.Hour)},
		} {
			if err := s.RecordCredential(c); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.Close() // no EndRun: a crash
	s = openSmall()
	defer s.Close()
	crashed, rev, err := s.BeginRun("atfd")
	if err != nil || !crashed {
		t.Fatalf("after a crash: crashed %t, %v", crashed, err)
	}
	if rev.CredentialCount() != n || len(rev.Queued) != 2*n || !slices.Equal(rev.Queued[:n], anchors) {
		t.Fatalf("recovery revoked %d credentials and queued %d (first %v); want %d, and the %d anchors in creation order first, then the bare credentials",
			rev.CredentialCount(), len(rev.Queued), rev.Queued[:min(3, len(rev.Queued))], n, n)
	}
	if live, err := s.LiveCredentials(time.Now()); err != nil || len(live) != 0 {
		t.Fatalf("live credentials after recovery: %d, %v", len(live), err)
	}
	recs, err := s.Audit(0, 1<<20)
	if err != nil || recs[len(recs)-1].Kind != "crash_recovery" || recs[len(recs)-1].Detail["anchors"] != strconv.Itoa(n) ||
		recs[len(recs)-1].Detail["credentials"] != strconv.Itoa(n) {
		t.Fatalf("last audit record: %+v, %v", recs[len(recs)-1], err)
	}
	// This run's marker is set: a crash now is recovered again, and finds
	// nothing left to revoke.
	s.Close()
	s = openSmall()
	defer s.Close()
	if crashed, rev, err := s.BeginRun("atfd"); err != nil || !crashed || len(rev.Queued) != 0 {
		t.Fatalf("the next start: crashed %t, queued %d, %v; want a crash with nothing left", crashed, len(rev.Queued), err)
	}
}
