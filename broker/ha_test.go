package broker_test

import (
	"crypto/rand"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/metrics"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Two replicas on one store in a real three-member etcd cluster serve
// every API at once, and what one commits the other enforces on the next
// call: a registration, a grant, a lineage revocation (the credentials
// dead in Vault too), a kill of one agent, the global kill switch and its
// release. The audit trail is one chain, verified from either replica.
func TestHAReplicasShareOneTruth(t *testing.T) {
	f := brokertest.Setup(t)
	op := f.ID(t, "operator")
	a, b := replicaPair(t, f, func(cfg *config.Config) { cfg.SecurityOperators = []string{op.String()} })
	giver, taker := f.ID(t, "giver"), f.ID(t, "taker")
	a.Register(t, giver, brokerv1.Level_LEVEL_SENIOR, "reports-read")
	a.Register(t, taker, brokerv1.Level_LEVEL_INTERN, "reports-read")

	fetch := func(on *brokertest.Broker, who, grant string) (*brokerv1.Credential, error) {
		id := giver
		if who == "taker" {
			id = taker
		}
		r, err := on.Dial(t, id).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read", GrantId: grant})
		return r.GetCredential(), err
	}
	// Registered on a, served by b.
	if _, err := fetch(b, "giver", ""); err != nil {
		t.Fatalf("fetch on replica b of an agent registered on a: %v", err)
	}
	g, err := a.Dial(t, giver).Broker.Delegate(t.Context(), &brokerv1.DelegateRequest{Delegatee: taker.String(), Roles: []string{"reports-read"}, Ttl: durationpb.New(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	grant := g.GetGrant().GetId()
	under, err := fetch(b, "taker", grant)
	if err != nil {
		t.Fatalf("fetch on b under a grant made on a: %v", err)
	}

	// A lineage revoked on b: refused on a at once, dead in Vault, and the
	// taker, watching on a, hears it.
	takerW := watchOn(t, a, taker)
	if _, err := b.Dial(t, f.Admin).Admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{
		Root: &adminv1.RevokeLineageRequest_GrantId{GrantId: grant}, Reason: "ha test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := fetch(a, "taker", grant); status.Code(err) != codes.PermissionDenied {
		t.Errorf("fetch on a under a grant revoked on b = %v, want PermissionDenied", err)
	}
	if !f.Dead(t, under.GetToken()) {
		t.Error("the credential under the revoked grant is still live in Vault")
	}
	if ev := recvWithin(t, takerW, 5*time.Second); !slices.Contains(ev.GetGrantIds(), grant) || !slices.Contains(ev.GetAccessors(), under.GetAccessor()) {
		t.Errorf("the taker watching on a heard %v, want grant %s and accessor %s revoked on b", ev, grant, under.GetAccessor())
	}

	// The global kill switch flipped on b stops a; released on a, b serves.
	if _, err := b.Dial(t, f.Admin).Response.Kill(t.Context(), &adminv1.KillRequest{Target: &adminv1.KillRequest_All{All: true}, Reason: "ha test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := fetch(a, "taker", ""); status.Code(err) != codes.PermissionDenied {
		t.Errorf("fetch on a under the global kill switch flipped on b = %v, want PermissionDenied", err)
	}
	if _, err := a.Dial(t, op).Response.Release(t.Context(), &adminv1.ReleaseRequest{Target: &adminv1.ReleaseRequest_All{All: true}, Reason: "ha test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := fetch(b, "taker", ""); err != nil {
		t.Errorf("fetch on b after the release on a: %v", err)
	}

	// One agent killed on a: refused on b, and its watch on b ends.
	giverW := watchOn(t, b, giver)
	if _, err := a.Dial(t, f.Admin).Response.Kill(t.Context(), &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: giver.String()}, Reason: "ha test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := fetch(b, "giver", ""); status.Code(err) != codes.PermissionDenied {
		t.Errorf("fetch on b by an agent killed on a = %v, want PermissionDenied", err)
	}
	if err := endWithin(giverW, 5*time.Second); status.Code(err) != codes.PermissionDenied {
		t.Errorf("the killed agent's watch on b ended with %v, want PermissionDenied", err)
	}

	// A policy set on a is in force on b at once: its next decision denies.
	deny := brokertest.OpenPolicy(f.Stack.TrustDomain) + "p, " + taker.String() + ", reports-read, read, intern, deny\n"
	if _, err := a.Dial(t, f.Admin).Admin.SetPolicy(t.Context(), &adminv1.SetPolicyRequest{Policy: deny, Comment: "ha test"}); err != nil {
		t.Fatal(err)
	}
	devtest.WaitFor(t, 5*time.Second, "b to deny under the policy set on a", func() bool {
		_, err := fetch(b, "taker", "")
		return status.Code(err) == codes.PermissionDenied
	})

	// One chain, whichever replica wrote each record.
	for name, r := range map[string]*brokertest.Broker{"a": a, "b": b} {
		v, err := r.Dial(t, f.Admin).Admin.VerifyAudit(t.Context(), &adminv1.VerifyAuditRequest{})
		if err != nil {
			t.Fatalf("verify on %s: %v", name, err)
		}
		if !v.GetOk() || v.GetRecords() < 10 {
			t.Errorf("verify on %s: %v", name, v)
		}
	}
}

// replicaPair starts replicas a and b of one broker on the fixture's etcd,
// under a prefix of their own, each configured by tweak.
func replicaPair(t *testing.T, f *brokertest.Fixture, tweak func(*config.Config)) (a, b *brokertest.Broker) {
	t.Helper()
	prefix := "/ha-" + rand.Text() + "/"
	start := func(replica string) *brokertest.Broker {
		cfg := f.EtcdConfig(t, t.TempDir(), prefix, replica)
		tweak(&cfg)
		return f.Start(t, cfg)
	}
	return start("a"), start("b")
}

// watchOn opens id's revocation watch on r and waits until it is in place.
func watchOn(t testing.TB, r *brokertest.Broker, id spiffeid.ID) brokerv1.BrokerService_WatchRevocationsClient {
	t.Helper()
	w, err := r.Dial(t, id).Broker.WatchRevocations(t.Context(), &brokerv1.WatchRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if md, err := w.Header(); err != nil || len(md.Get(client.WatchHeader)) == 0 {
		t.Fatalf("watch of %s not in place: %v", id, err)
	}
	return w
}

// recvWithin is the watch's next event, failing after d.
func recvWithin(t *testing.T, w brokerv1.BrokerService_WatchRevocationsClient, d time.Duration) *brokerv1.WatchRevocationsResponse {
	t.Helper()
	got := make(chan *brokerv1.WatchRevocationsResponse, 1)
	go func() {
		ev, _ := w.Recv()
		got <- ev
	}()
	select {
	case ev := <-got:
		return ev
	case <-time.After(d):
		t.Fatalf("no revocation event within %s", d)
		return nil
	}
}

// endWithin is the error the watch ends with, skipping events, or a
// timeout error after d.
func endWithin(w brokerv1.BrokerService_WatchRevocationsClient, d time.Duration) error {
	got := make(chan error, 1)
	go func() {
		for {
			if _, err := w.Recv(); err != nil {
				got <- err
				return
			}
		}
	}()
	select {
	case err := <-got:
		return err
	case <-time.After(d):
		return errors.New("the watch did not end")
	}
}

// A replica whose etcd cluster loses its quorum fails closed: its calls
// that read the store fail (nothing is issued), its health turns
// NOT_SERVING within the probe interval plus store.etcd.timeout, and it
// serves again by itself once the quorum is back.
func TestHAQuorumLostFailsClosed(t *testing.T) {
	f := brokertest.Setup(t)
	ctx := t.Context()
	e, err := f.Stack.StartEtcd(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	cfg := f.EtcdConfigOn(t, e, t.TempDir(), "/quorum/", "solo")
	cfg.HealthInterval = 200 * time.Millisecond
	cfg.Store.Etcd.Timeout = time.Second
	cfg.MetricsAddr = freeAddr(t)
	b := f.Start(t, cfg)
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	conn := b.Dial(t, agent)
	health := func() healthpb.HealthCheckResponse_ServingStatus { return healthOf(t, conn) }
	fetch := func() error { _, err := fetchOn(t, conn); return err }
	devtest.WaitFor(t, 10*time.Second, "health SERVING", func() bool { return health() == healthpb.HealthCheckResponse_SERVING })
	if err := fetch(); err != nil {
		t.Fatal(err)
	}

	for _, i := range []int{1, 2} {
		if err := f.Stack.Stop(e.MemberName(i)); err != nil {
			t.Fatal(err)
		}
	}
	devtest.WaitFor(t, 10*time.Second, "health NOT_SERVING without a quorum", func() bool {
		return health() == healthpb.HealthCheckResponse_NOT_SERVING
	})
	if err := fetch(); err == nil {
		t.Error("a credential was issued without the store's quorum")
	}
	// The kubelet's view (deploy/k8s/components/etcd): readiness fails,
	// and liveness (/metrics, whose queue depth and kill switch gauges each
	// read the store) still answers within three times store.etcd.timeout,
	// the liveness probe's timeout there, so an etcd outage restarts no
	// replica.
	if code, body := ready(t, "http://"+cfg.MetricsAddr+metrics.ReadyPath); code != http.StatusServiceUnavailable {
		t.Errorf("%s without a quorum = %d %s, want 503", metrics.ReadyPath, code, body)
	}
	began := time.Now()
	scrape(t, "http://"+cfg.MetricsAddr+"/metrics")
	if took := time.Since(began); took > 3*cfg.Store.Etcd.Timeout {
		t.Errorf("/metrics without a quorum took %s, more than three times store.etcd.timeout (%s)", took, cfg.Store.Etcd.Timeout)
	}

	for _, i := range []int{1, 2} {
		if err := f.Stack.RestartEtcdMember(ctx, e, i); err != nil {
			t.Fatal(err)
		}
	}
	devtest.WaitFor(t, 20*time.Second, "health SERVING with the quorum back", func() bool { return health() == healthpb.HealthCheckResponse_SERVING })
	devtest.WaitFor(t, 10*time.Second, "issuance with the quorum back", func() bool { return fetch() == nil })
}
