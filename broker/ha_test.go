package broker_test

import (
	"crypto/rand"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Two replicas on one store in a real three-member etcd cluster serve
// every API at once, and what one commits the other enforces on the next
// call: a registration, a grant, a lineage revocation (the credentials
// dead in Vault too), a kill of one agent, the global kill switch and its
// release. The audit trail is one chain, verified from either replica.
func TestHAReplicasShareOneTruth(t *testing.T) {
	f := brokertest.Setup(t)
	prefix := "/ha-" + rand.Text() + "/"
	op := f.ID(t, "operator")
	start := func(replica string) *brokertest.Broker {
		cfg := f.EtcdConfig(t, t.TempDir(), prefix, replica)
		cfg.SecurityOperators = []string{op.String()}
		return f.Start(t, cfg)
	}
	a, b := start("a"), start("b")
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

	// A lineage revoked on b: refused on a at once, and dead in Vault.
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

	// One agent killed on a: refused on b.
	if _, err := a.Dial(t, f.Admin).Response.Kill(t.Context(), &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: giver.String()}, Reason: "ha test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := fetch(b, "giver", ""); status.Code(err) != codes.PermissionDenied {
		t.Errorf("fetch on b by an agent killed on a = %v, want PermissionDenied", err)
	}

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
