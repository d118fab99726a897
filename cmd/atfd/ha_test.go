package main

import (
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/agentictrust/atf/broker/failpoint"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// newEtcdAtfdEnv is newAtfdEnv with the store in etcd under prefix, as
// replica.
func newEtcdAtfdEnv(t *testing.T, s *dev.Stack, bin string, e *dev.Etcd, prefix, replica string) *atfdEnv {
	t.Helper()
	env := newAtfdEnv(t, s, bin)
	b, err := os.ReadFile(env.cfg)
	if err != nil {
		t.Fatal(err)
	}
	etcd := fmt.Sprintf("store:\n  etcd:\n    endpoints: [%s]\n    ca_file: %s\n    cert_file: %s\n    key_file: %s\n    prefix: %s\n    max_txn_ops: %d\n    replica: %s\n",
		strings.Join(e.Endpoints, ", "), e.CAFile, e.CertFile, e.KeyFile, prefix, dev.MaxTxnOps, replica)
	cfg := strings.Replace(string(b), "store_path: "+env.storePath+"\n", etcd, 1)
	if cfg == string(b) {
		t.Fatal("the test config names no store_path to replace")
	}
	if err := os.WriteFile(env.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env.storePath = ""
	return env
}

// queueLeader is the replica leading prefix's revocation queue ("" if
// none).
func queueLeader(t *testing.T, cli *clientv3.Client, prefix string) string {
	t.Helper()
	r, err := cli.Get(t.Context(), prefix+"leader/revocations/", clientv3.WithFirstCreate()...)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) == 0 {
		return ""
	}
	return string(r.Kvs[0].Value)
}

// Two atfd processes on one store in a real etcd: one leads the durable
// revocation queue. Killed by SIGKILL while it drains a forced kill's
// revocations (after Vault revoked the first), its lease runs out, the
// other replica is elected and finishes the queue: nothing of the killed
// agents is left live in Vault.
func TestHAQueueLeaderKilledWhileDraining(t *testing.T) {
	s := devtest.Shared(t)
	bin := buildFailpointAtfd(t, s)
	ctx := t.Context()
	e, err := s.StartEtcd(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := e.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	prefix := "/ha-" + rand.Text() + "/"

	a := newEtcdAtfdEnv(t, s, bin, e, prefix, "a")
	a.start("ATF_FAILPOINT=" + failpoint.RevokeMidLineage)
	devtest.WaitFor(t, 20*time.Second, "replica a to lead the revocation queue", func() bool { return queueLeader(t, cli, prefix) == "a" })
	b := newEtcdAtfdEnv(t, s, bin, e, prefix, "b")
	b.start()

	// Two agents: the kill queues an anchor of each, so that after a
	// revokes the first and dies, one is left for b.
	admin := b.dial(testAdmin(s))
	var agents []string
	var creds []string
	for _, name := range []string{"agent-1", "agent-2"} {
		agent := spiffeid.RequireFromPath(s.TrustDomain, "/ha/queue/"+name)
		if _, err := admin.Admin.RegisterAgent(ctx, &adminv1.RegisterAgentRequest{SpiffeId: agent.String(), Owner: "o@example.org",
			Purpose: "ha queue test", Roles: []string{"reports-read"}}); err != nil {
			t.Fatal(err)
		}
		cred, err := b.dial(agent).Broker.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read"})
		if err != nil {
			t.Fatal(err)
		}
		if live := liveAnchorsOf(t, s, agent.String()); len(live) < 2 {
			t.Fatalf("live anchors of %s %v, want its own and its role's", agent, live)
		}
		agents, creds = append(agents, agent.String()), append(creds, cred.GetCredential().GetToken())
	}
	// Forced: b commits the kill and leaves Vault to the queue, which a
	// leads; a dies after Vault revoked the first anchor.
	if _, err := admin.Response.Kill(ctx, &adminv1.KillRequest{Target: &adminv1.KillRequest_All{All: true}, Forced: true, Reason: "ha test"}); err != nil {
		t.Fatal(err)
	}
	a.awaitKilled(failpoint.RevokeMidLineage)
	killed := time.Now()
	// The rest waits in the queue (a's election lease outlives it by
	// seconds): b has something to finish, and queueLen reads the queue.
	if n := queueLen(t, cli, prefix); n == 0 {
		t.Fatal("nothing is queued after the leader died mid-revocation: b would have nothing to finish")
	}

	devtest.WaitFor(t, 30*time.Second, "replica b to lead the revocation queue", func() bool { return queueLeader(t, cli, prefix) == "b" })
	devtest.WaitFor(t, 30*time.Second, "every anchor of the killed agents to die in Vault", func() bool {
		return len(liveAnchorsOf(t, s, agents...)) == 0
	})
	t.Logf("leadership handed over and the queue finished %v after the leader died", time.Since(killed).Round(time.Millisecond))
	for i, tok := range creds {
		if _, err := s.VaultClient().Auth().Token().LookupWithContext(ctx, tok); err == nil || !strings.Contains(err.Error(), "bad token") {
			t.Errorf("the credential of %s after the handover: %v, want dead in Vault", agents[i], err)
		}
	}
	if n := queueLen(t, cli, prefix); n != 0 {
		t.Errorf("%d revocations still queued after Vault confirmed them all", n)
	}
}

// queueLen is the number of entries in prefix's durable revocation queue
// (the store's "revocations" bucket; broker/store/kv lays a bucket's keys
// out as <prefix><bucket>\x00<key>).
func queueLen(t *testing.T, cli *clientv3.Client, prefix string) int64 {
	t.Helper()
	r, err := cli.Get(t.Context(), prefix+"revocations\x00", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return r.Count
}
