package broker_test

import (
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The limit on an agent's live credentials holds across replicas exactly:
// concurrent requests spread over two replicas get exactly the limit, the
// rest are refused by the limit on either replica, and a revocation on
// one frees the places for the other.
func TestHALiveLimitsAcrossReplicas(t *testing.T) {
	f := brokertest.Setup(t)
	const limit, tries = 3, 10
	a, b := replicaPair(t, f, func(cfg *config.Config) { cfg.Limits.MaxLivePerAgent = limit })
	replicas := []*brokertest.Broker{a, b}
	agent := f.ID(t, "agent")
	replicas[0].Register(t, agent, brokerv1.Level_LEVEL_SENIOR, "reports-read")
	conns := []brokerv1.BrokerServiceClient{replicas[0].Dial(t, agent).Broker, replicas[1].Dial(t, agent).Broker}

	var mu sync.Mutex
	issued, limited := map[string]bool{}, 0
	var wg sync.WaitGroup
	for i := range tries {
		wg.Go(func() {
			r, err := conns[i%2].FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				issued[r.GetCredential().GetToken()] = true
			case status.Code(err) == codes.ResourceExhausted:
				limited++
				wantLimited(t, err, "live_per_agent", "limit live_per_agent: agent "+agent.String()+" already holds 3 live credentials")
			default:
				t.Errorf("fetch: %v", err)
			}
		})
	}
	wg.Wait()
	if len(issued) != limit || limited != tries-limit {
		t.Fatalf("%d credentials issued and %d refused by the limit across two replicas, want %d and %d", len(issued), limited, limit, tries-limit)
	}
	for tok := range issued {
		if f.Dead(t, tok) {
			t.Error("an issued credential is not live in Vault")
		}
	}

	// Revoked on b: a has the places again.
	if _, err := replicas[1].Dial(t, f.Admin).Admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{
		Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: agent.String()}, Reason: "free the places"}); err != nil {
		t.Fatal(err)
	}
	for range limit {
		if _, err := conns[0].FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
			t.Fatalf("fetch on a after the lineage was revoked on b: %v", err)
		}
	}
	_, err := conns[1].FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
	wantLimited(t, err, "live_per_agent", "limit live_per_agent: agent "+agent.String()+" already holds 3 live credentials")
}

// An agent's rate is split between the replicas, so that together they
// never allow more than the configured rate: with a burst of 4 and no
// refill to speak of, two replicas allow 4 requests in all, 2 each, and
// the one left alone allows the whole burst again.
func TestHARateSharedAcrossReplicas(t *testing.T) {
	f := brokertest.Setup(t)
	a, b := replicaPair(t, f, func(cfg *config.Config) {
		cfg.Limits.Rate = map[string]config.RateLimit{"intern": {PerSecond: 0.0001, Burst: 4}}
		cfg.MetricsAddr = freeAddr(t)
	})
	agents := []spiffeid.ID{f.ID(t, "first"), f.ID(t, "second")}
	for _, id := range agents {
		a.Register(t, id, brokerv1.Level_LEVEL_INTERN, "reports-read")
	}
	allowed := func(r *brokertest.Broker, id spiffeid.ID) int {
		c := r.Dial(t, id).Broker
		n := 0
		for range 10 {
			_, err := c.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
			if status.Code(err) == codes.ResourceExhausted {
				return n
			}
			if err != nil {
				t.Fatal(err)
			}
			n++
		}
		return n
	}
	// b joined after a: a hears of it through etcd.
	devtest.WaitFor(t, 5*time.Second, "both replicas to count each other", func() bool {
		return metricValue(t, a, "atf_replicas") == 2 && metricValue(t, b, "atf_replicas") == 2
	})
	if na, nb := allowed(a, agents[0]), allowed(b, agents[0]); na+nb != 4 {
		t.Errorf("two replicas allowed %d + %d requests of a burst of 4, want 4 in all", na, nb)
	}
	// What the store asks of etcd is counted (for the process: every
	// issuance here prefetched its caller and its record).
	families := scrape(t, "http://"+a.Cfg.MetricsAddr+"/metrics")
	for name, least := range map[string]float64{"atf_store_etcd_prefetches_total": 8, "atf_store_etcd_conflicts_total": 0, "atf_store_etcd_single_reads_total": 1,
		// Every issuance's decision and record read a recent snapshot
		// unless the member asked was behind.
		"atf_store_etcd_recent_reads_total": 1, "atf_store_etcd_stale_snapshots_total": 0} {
		if got, ok := value(families, name, nil); !ok || got < least {
			t.Errorf("%s = %v (found %t), want at least %v", name, got, ok, least)
		}
	}
	b.Stop()
	devtest.WaitFor(t, 5*time.Second, "a to count itself alone once b stopped", func() bool { return metricValue(t, a, "atf_replicas") == 1 })
	if n := allowed(a, agents[1]); n != 4 {
		t.Errorf("the replica left alone allowed %d requests of a burst of 4, want 4", n)
	}
}

// metricValue is the value of the unlabelled metric name on r (metrics_addr).
func metricValue(t *testing.T, r *brokertest.Broker, name string) float64 {
	t.Helper()
	v, _ := value(scrape(t, "http://"+r.Cfg.MetricsAddr+"/metrics"), name, nil)
	return v
}

// An approval is redeemed once across replicas: requested on a, approved
// on b, redeemed at once on both, exactly one credential is issued.
func TestHAApprovalRedeemedOnce(t *testing.T) {
	f := brokertest.Setup(t)
	approver := f.ID(t, "approver")
	a, b := replicaPair(t, f, func(cfg *config.Config) { cfg.Approvals.Approvers = []string{approver.String()} })
	junior := f.ID(t, "junior")
	a.Register(t, junior, brokerv1.Level_LEVEL_JUNIOR, "reports-write")
	onA, onB := delegAgent{id: junior, bc: a.Dial(t, junior).Broker}, delegAgent{id: junior, bc: b.Dial(t, junior).Broker}
	ap := onA.requestWrite(t, "ha test")
	if _, err := b.Dial(t, approver).Approvals.DecideApproval(t.Context(), &adminv1.DecideApprovalRequest{ApprovalId: ap.GetId(),
		Verdict: adminv1.Verdict_VERDICT_APPROVE, Reason: "ok"}); err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		var mu sync.Mutex
		var issued []string
		var wg sync.WaitGroup
		for _, on := range []delegAgent{onA, onB, onA, onB} {
			wg.Go(func() {
				cred, err := on.redeem(t.Context(), "reports-write", ap.GetId())
				if err == nil {
					mu.Lock()
					issued = append(issued, cred.GetAccessor())
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if want := map[bool]int{true: 1, false: 0}[round == 0]; len(issued) != want {
			t.Fatalf("round %d: approval %s redeemed %d times across two replicas (%v), want %d", round, ap.GetId(), len(issued), issued, want)
		}
	}
}
