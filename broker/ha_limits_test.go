package broker_test

import (
	"crypto/rand"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// The limit on an agent's live credentials holds across replicas exactly:
// concurrent requests spread over two replicas get exactly the limit, the
// rest are refused by the limit on either replica, and a revocation on
// one frees the places for the other.
func TestHALiveLimitsAcrossReplicas(t *testing.T) {
	f := brokertest.Setup(t)
	prefix := "/ha-" + rand.Text() + "/"
	const limit, tries = 3, 10
	start := func(replica string) *brokertest.Broker {
		cfg := f.EtcdConfig(t, t.TempDir(), prefix, replica)
		cfg.Limits.MaxLivePerAgent = limit
		return f.Start(t, cfg)
	}
	replicas := []*brokertest.Broker{start("a"), start("b")}
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
