package broker_test

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/etcdclient"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// A broker on bbolt that crashed, then migrated to etcd: the migration
// revokes nothing itself, the first replica to start on the copy revokes
// what the crashed broker made (its credential dies in Vault), once and
// audited, and the next replica to start finds nothing of it to recover
// (a credential issued since stays live). Agents fetch anew.
func TestMigrateCrashedBrokerToEtcd(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	b := f.Start(t, cfg)
	agent := f.ID(t, "crashed-on-bbolt")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	fetch := func(on *brokertest.Broker) string {
		t.Helper()
		r, err := on.Dial(t, agent).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetCredential().GetToken()
	}
	before := fetch(b)
	b.Stop()
	// A crash: the run marked in use and never marked clean, as a SIGKILL
	// leaves it.
	s, err := store.Open(cfg.StorePath, store.Options{AuditDir: cfg.StorePath + ".audit"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.BeginRun("atfd"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	prefix := "/migrate-crashed-" + rand.Text() + "/"
	onEtcd := f.EtcdConfig(t, t.TempDir(), prefix, "a")
	cli, err := etcdclient.New(onEtcd.Store.Etcd)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	rep, err := store.MigrateToEtcd(t.Context(), store.Migration{Path: cfg.StorePath, Client: cli,
		Etcd: store.EtcdOptions{Prefix: prefix, MaxTxnOps: onEtcd.Store.Etcd.MaxTxnOps}})
	if err != nil || !rep.Crashed {
		t.Fatalf("MigrateToEtcd = crashed %t, %v; want the crashed run reported", rep.Crashed, err)
	}
	if f.Dead(t, before) {
		t.Fatal("the migration itself revoked the credential: that is the first replica's crash recovery")
	}

	a := f.Start(t, onEtcd)
	devtest.WaitFor(t, 10*time.Second, "the crashed broker's credential to die in Vault", func() bool { return f.Dead(t, before) })
	since := fetch(a)
	f.Start(t, f.EtcdConfig(t, t.TempDir(), prefix, "b"))
	if f.Dead(t, since) {
		t.Error("replica b's start revoked a credential replica a issued after the recovery")
	}
	q, err := a.Dial(t, f.Admin).Admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "crash_recovery"})
	if err != nil || len(q.GetRecords()) != 1 || q.GetRecords()[0].GetDetail()["credentials"] != "1" {
		t.Errorf("crash_recovery records = %v, %v; want one, revoking the crashed broker's one credential", q.GetRecords(), err)
	}
}

// The credentials live when a bbolt store is migrated count against the
// live-credential limits on etcd: an agent at its limit on bbolt is still
// at it on the copy, until a revocation frees its places.
func TestMigrateKeepsLiveCounts(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Limits.MaxLivePerAgent = 2
	b := f.Start(t, cfg)
	agent := f.ID(t, "at-its-limit")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	for range 2 {
		if _, err := b.Dial(t, agent).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
			t.Fatal(err)
		}
	}
	b.Stop()

	prefix := "/migrate-live-" + rand.Text() + "/"
	onEtcd := f.EtcdConfig(t, t.TempDir(), prefix, "a")
	onEtcd.Limits.MaxLivePerAgent = 2
	cli, err := etcdclient.New(onEtcd.Store.Etcd)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	rep, err := store.MigrateToEtcd(t.Context(), store.Migration{Path: cfg.StorePath, Client: cli,
		Etcd: store.EtcdOptions{Prefix: prefix, MaxTxnOps: onEtcd.Store.Etcd.MaxTxnOps}, CountLive: store.LiveKinds{Agent: true}})
	if err != nil || rep.LiveCounted != 2 {
		t.Fatalf("MigrateToEtcd = %d live credentials counted, %v; want 2", rep.LiveCounted, err)
	}
	a := f.Start(t, onEtcd)
	_, err = a.Dial(t, agent).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
	wantLimited(t, err, "live_per_agent", "limit live_per_agent: agent "+agent.String()+" already holds 2 live credentials")
	if _, err := a.Dial(t, f.Admin).Admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{
		Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: agent.String()}, Reason: "free the places"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Dial(t, agent).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
		t.Fatalf("fetch after the migrated credentials were revoked: %v", err)
	}
}
