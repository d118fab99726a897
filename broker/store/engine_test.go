package store_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
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
	etcdCluster.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var e *dev.Etcd
		etcdCluster.stack, e, etcdCluster.err = dev.StartEtcdAlone(ctx, dev.Options{Logger: slog.New(slog.DiscardHandler)}, 3)
		if etcdCluster.err == nil {
			etcdCluster.cli, etcdCluster.err = e.Client()
		}
	})
	if etcdCluster.err != nil {
		return nil, etcdCluster.err
	}
	return store.OpenEtcd(etcdCluster.cli, store.EtcdOptions{Prefix: "/store" + path + "/", MaxTxnOps: dev.MaxTxnOps}, opts)
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
