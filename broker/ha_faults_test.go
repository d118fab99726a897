package broker_test

import (
	"context"
	"crypto/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// healthOf is the broker's gRPC health as conn sees it (UNKNOWN if it
// does not answer).
func healthOf(t *testing.T, conn *client.Conn) healthpb.HealthCheckResponse_ServingStatus {
	r, err := healthpb.NewHealthClient(conn.ClientConn).Check(t.Context(), &healthpb.HealthCheckRequest{})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN
	}
	return r.GetStatus()
}

func fetchOn(t *testing.T, conn *client.Conn) (*brokerv1.Credential, error) {
	r, err := conn.Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
	return r.GetCredential(), err
}

// A replica cut off from etcd (a TCP partition between it and every
// member) fails closed at once: nothing issued, NOT_SERVING; the other
// replica goes on issuing; when the network heals, the cut-off replica
// serves again by itself.
func TestHAPartitionedReplicaFailsClosed(t *testing.T) {
	f := brokertest.Setup(t)
	e := f.Etcd(t)
	prefix := "/ha-" + rand.Text() + "/"
	cfgA := f.EtcdConfig(t, t.TempDir(), prefix, "a")
	var proxies []*devtest.Proxy
	cfgA.Store.Etcd.Endpoints = nil // not e.Endpoints' array, which b uses
	for _, ep := range e.Endpoints {
		p := devtest.NewProxy(t, strings.TrimPrefix(ep, "https://"))
		proxies = append(proxies, p)
		cfgA.Store.Etcd.Endpoints = append(cfgA.Store.Etcd.Endpoints, "https://"+p.Addr)
	}
	cfgA.Store.Etcd.Timeout = time.Second
	cfgA.HealthInterval = 200 * time.Millisecond
	a := f.Start(t, cfgA)
	b := f.Start(t, f.EtcdConfig(t, t.TempDir(), prefix, "b"))
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	onA, onB := a.Dial(t, agent), b.Dial(t, agent)
	devtest.WaitFor(t, 10*time.Second, "a SERVING", func() bool { return healthOf(t, onA) == healthpb.HealthCheckResponse_SERVING })
	if _, err := fetchOn(t, onA); err != nil {
		t.Fatal(err)
	}

	for _, p := range proxies {
		p.Cut()
	}
	cut := time.Now()
	if cred, err := fetchOn(t, onA); err == nil {
		t.Fatalf("replica a issued %s while cut off from etcd", cred.GetAccessor())
	} else if c := status.Code(err); c != codes.Unavailable {
		t.Errorf("fetch on the cut-off replica = %v, want Unavailable", err)
	}
	refused := time.Since(cut)
	devtest.WaitFor(t, 10*time.Second, "a NOT_SERVING", func() bool { return healthOf(t, onA) == healthpb.HealthCheckResponse_NOT_SERVING })
	t.Logf("cut off: the next request refused after %v, NOT_SERVING after %v", refused.Round(time.Millisecond), time.Since(cut).Round(time.Millisecond))
	bt := time.Now()
	if _, err := fetchOn(t, onB); err != nil {
		t.Errorf("replica b, still in touch with etcd, refused after %v: %v", time.Since(bt), err)
	}

	for _, p := range proxies {
		p.Restore()
	}
	devtest.WaitFor(t, 20*time.Second, "a SERVING once the network heals", func() bool { return healthOf(t, onA) == healthpb.HealthCheckResponse_SERVING })
	devtest.WaitFor(t, 10*time.Second, "a issuing again", func() bool { _, err := fetchOn(t, onA); return err == nil })
}

// haLoadConfig is a replica's config for the fault tests below: no limits
// on live credentials, rates that a thousand requests do not reach.
func haLoadConfig(t *testing.T, f *brokertest.Fixture, e *dev.Etcd, prefix, replica string) config.Config {
	cfg := f.EtcdConfigOn(t, e, t.TempDir(), prefix, replica)
	cfg.Limits.MaxLivePerAgent, cfg.Limits.MaxLivePerLineage, cfg.Limits.MaxLivePerRole = -1, -1, -1
	cfg.Limits.Rate = map[string]config.RateLimit{"senior": {PerSecond: 10_000, Burst: 10_000}}
	cfg.Store.Etcd.Timeout = 10 * time.Second // a loaded CI host
	return cfg
}

// haLoadPair starts a cluster of its own and two replicas on it
// (haLoadConfig), and registers a Senior agent connected to both.
func haLoadPair(t *testing.T) (f *brokertest.Fixture, e *dev.Etcd, a, b *brokertest.Broker, agent spiffeid.ID, conns []*client.Conn) {
	f = brokertest.Setup(t)
	e, err := f.Stack.StartEtcd(t.Context(), 3)
	if err != nil {
		t.Fatal(err)
	}
	prefix := "/ha-" + rand.Text() + "/"
	a, b = f.Start(t, haLoadConfig(t, f, e, prefix, "a")), f.Start(t, haLoadConfig(t, f, e, prefix, "b"))
	agent = f.ID(t, "agent")
	a.Register(t, agent, brokerv1.Level_LEVEL_SENIOR, "reports-read")
	return f, e, a, b, agent, []*client.Conn{a.Dial(t, agent), b.Dial(t, agent)}
}

// stopLeader stops the member of e that leads it, waits until another
// leads, and returns its index.
func stopLeader(t *testing.T, f *brokertest.Fixture, e *dev.Etcd) int {
	t.Helper()
	leader, err := f.Stack.StopEtcdLeader(t.Context(), e)
	if err != nil {
		t.Fatal(err)
	}
	return leader
}

// The etcd leader killed while two replicas issue: requests in flight
// either get a credential, live in Vault and known to the store (revoking
// the lineage kills every one), or a clean Unavailable; issuance goes on
// under the new leader.
func TestHAEtcdLeaderKilledDuringIssuance(t *testing.T) {
	f, e, a, _, agent, conns := haLoadPair(t)

	var mu sync.Mutex
	var issued []string
	var killedAt time.Time
	after := 0
	ctx, stop := context.WithTimeout(t.Context(), 4*time.Second)
	defer stop()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				cred, err := fetchOn(t, conns[w%2])
				mu.Lock()
				switch {
				case err == nil:
					issued = append(issued, cred.GetToken())
					if !killedAt.IsZero() {
						after++
					}
				case status.Code(err) != codes.Unavailable:
					t.Errorf("fetch while the etcd leader died = %v, want a credential or Unavailable", err)
				}
				mu.Unlock()
			}
		})
	}
	time.Sleep(time.Second)
	mu.Lock()
	killedAt = time.Now()
	mu.Unlock()
	leader := stopLeader(t, f, e)
	wg.Wait()
	if after == 0 {
		t.Fatalf("no credential issued in the 3 s after the etcd leader (member %d) died", leader)
	}
	t.Logf("%d credentials issued, %d of them after the etcd leader died", len(issued), after)
	if _, err := a.Dial(t, f.Admin).Admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{
		Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: agent.String()}, Reason: "ha fault test"}); err != nil {
		t.Fatal(err)
	}
	for _, tok := range issued {
		if !f.Dead(t, tok) {
			t.Fatal("a credential issued while the etcd leader died outlived its lineage's revocation: the store did not know it")
		}
	}
}

// The etcd leader killed during the revocation of a lineage of a thousand
// credentials: the revocation either answers or fails cleanly and is
// done again; in the end every one of them is dead in Vault, the grant
// refused on both replicas, and the audit chain verifies.
func TestHAEtcdLeaderKilledDuringRevocation(t *testing.T) {
	f, e, a, b, agent, conns := haLoadPair(t)
	const n = 1000
	tokens := make([]string, n)
	began := time.Now()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				// Setting up, not the point: a busy host's store timeout
				// is retried.
				var cred *brokerv1.Credential
				var err error
				for try := 0; try < 5; try++ {
					if cred, err = fetchOn(t, conns[i%2]); status.Code(err) != codes.Unavailable {
						break
					}
				}
				if err != nil {
					t.Error(err)
					return
				}
				tokens[i] = cred.GetToken()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d credentials issued through two replicas in %v", n, time.Since(began).Round(time.Millisecond))

	admin := a.Dial(t, f.Admin).Admin
	revoke := func() error {
		_, err := admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{
			Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: agent.String()}, Reason: "ha fault test"})
		return err
	}
	done := make(chan error, 1)
	revoking := time.Now()
	go func() { done <- revoke() }()
	time.Sleep(2 * time.Millisecond)
	stopLeader(t, f, e)
	if err := <-done; err != nil {
		t.Logf("the revocation the leader's death interrupted: %v; again", err)
		devtest.WaitFor(t, 20*time.Second, "the revocation under the new leader", func() bool { return revoke() == nil })
	}
	devtest.WaitFor(t, 30*time.Second, "the lineage's anchors to die in Vault", func() bool {
		live, err := f.Stack.LiveAnchors(t.Context(), agent.String())
		return err == nil && len(live) == 0
	})
	t.Logf("the lineage dead in Vault %v after the revocation began, the etcd leader killed meanwhile", time.Since(revoking).Round(time.Millisecond))
	// Batch credentials die with their anchors (none is left live); a
	// sample of them shows it token by token.
	for i := 0; i < n; i += 10 {
		if !f.Dead(t, tokens[i]) {
			t.Fatalf("credential %d of the revoked lineage is live in Vault", i)
		}
	}
	for name, r := range map[string]*brokertest.Broker{"a": a, "b": b} {
		v, err := r.Dial(t, f.Admin).Admin.VerifyAudit(t.Context(), &adminv1.VerifyAuditRequest{})
		if err != nil || !v.GetOk() {
			t.Errorf("audit verify on %s: %v, %v", name, v, err)
		}
	}
}

// The whole etcd cluster restarted: both replicas refuse while it is
// down and recover by themselves; a revocation made on one afterwards is
// heard by a watcher on the other (the change feed resumed).
func TestHAEtcdClusterRestarted(t *testing.T) {
	f := brokertest.Setup(t)
	e, err := f.Stack.StartEtcd(t.Context(), 3)
	if err != nil {
		t.Fatal(err)
	}
	prefix := "/ha-" + rand.Text() + "/"
	start := func(replica string) *brokertest.Broker {
		cfg := f.EtcdConfigOn(t, e, t.TempDir(), prefix, replica)
		cfg.Store.Etcd.Timeout = time.Second
		cfg.HealthInterval = 200 * time.Millisecond
		return f.Start(t, cfg)
	}
	a, b := start("a"), start("b")
	agent := f.ID(t, "agent")
	a.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	onA, onB := a.Dial(t, agent), b.Dial(t, agent)

	for i := range e.Endpoints {
		if err := f.Stack.Stop(e.MemberName(i)); err != nil {
			t.Fatal(err)
		}
	}
	for name, c := range map[string]*client.Conn{"a": onA, "b": onB} {
		devtest.WaitFor(t, 10*time.Second, name+" NOT_SERVING", func() bool { return healthOf(t, c) == healthpb.HealthCheckResponse_NOT_SERVING })
		if _, err := fetchOn(t, c); err == nil {
			t.Errorf("replica %s issued with etcd down", name)
		}
	}
	if err := f.Stack.RestartEtcd(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	var cred *brokerv1.Credential
	for name, c := range map[string]*client.Conn{"a": onA, "b": onB} {
		devtest.WaitFor(t, 20*time.Second, name+" issuing after the restart", func() bool {
			cred, err = fetchOn(t, c)
			return err == nil
		})
	}
	w := watchOn(t, a, agent)
	if _, err := b.Dial(t, f.Admin).Admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{
		Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: agent.String()}, Reason: "after the restart"}); err != nil {
		t.Fatal(err)
	}
	if ev := recvWithin(t, w, 10*time.Second); !strings.Contains(strings.Join(ev.GetAccessors(), " "), cred.GetAccessor()) {
		t.Errorf("the watcher on a heard %v, want the revocation made on b after the restart (accessor %s)", ev, cred.GetAccessor())
	}
}
