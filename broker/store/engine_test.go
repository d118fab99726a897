package store_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

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
