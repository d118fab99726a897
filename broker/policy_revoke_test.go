package broker_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// A committed policy version revokes at once, through the anchors, every
// live credential and grant it no longer allows, like a demotion, and says
// how many; its dry run says the same without revoking. What the new
// version still allows stays live (docs/security.md).
func TestPolicyChangeRevokesWhatItNoLongerAllows(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	ctx := t.Context()
	open := brokertest.OpenPolicy(f.Stack.TrustDomain)
	holder := e.register(t, "pol-holder", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	helper := e.register(t, "pol-helper", brokerv1.Level_LEVEL_SENIOR, "reports-read")
	bystander := e.register(t, "pol-bystander", brokerv1.Level_LEVEL_SENIOR, "reports-read")

	own := holder.mustFetch(t, "reports-read", "")
	write := holder.mustFetch(t, "reports-write", "")
	g := holder.mustDelegate(t, helper.id, "", time.Hour, 0, "reports-read")
	delegated := helper.mustFetch(t, "reports-read", g.GetId())
	helperOwn := helper.mustFetch(t, "reports-read", "")
	other := bystander.mustFetch(t, "reports-read", "")

	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	watch := func(a delegAgent) grpc.ServerStreamingClient[brokerv1.WatchRevocationsResponse] {
		t.Helper()
		s, err := a.bc.WatchRevocations(wctx, &brokerv1.WatchRevocationsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Header(); err != nil {
			t.Fatalf("watch header: %v", err)
		}
		return s
	}
	holderW, helperW := watch(holder), watch(helper)

	deny := open + "p, " + holder.id.String() + ", reports-read, read, intern, deny\n"
	wantSummary := func(what string, s *brokerv1.RevocationSummary, grants, creds int32) {
		t.Helper()
		if s.GetGrantsRevoked() != grants || s.GetCredentialsRevoked() != creds {
			t.Errorf("%s: summary = %v, want %d grants and %d credentials revoked", what, s, grants, creds)
		}
	}

	// 1. The dry run counts, and revokes nothing.
	dry, err := e.admin.SetPolicy(ctx, &adminv1.SetPolicyRequest{Policy: deny, Comment: "no reports for the holder", DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	wantSummary("dry run", dry.GetSummary(), 1, 2)
	if s := dry.GetSummary(); s.GetVaultConfirmed() != 0 || s.GetVaultPending() != 0 {
		t.Errorf("dry run summary = %v: it touched Vault", s)
	}
	e.wantAlive(t, map[string]string{"holder's reports-read": own.GetToken(), "helper's under the grant": delegated.GetToken()})
	if g := e.lineage(t, &adminv1.GetLineageRequest{Root: &adminv1.GetLineageRequest_GrantId{GrantId: g.GetId()}}).GetGrants(); len(g) != 1 || g[0].GetRevokedAt() != nil {
		t.Errorf("after the dry run the grant is %v, want it live", g)
	}

	// 2. The commit revokes them, and says so.
	set, err := e.admin.SetPolicy(ctx, &adminv1.SetPolicyRequest{Policy: deny, Comment: "no reports for the holder"})
	if err != nil {
		t.Fatal(err)
	}
	wantSummary("SetPolicy", set.GetSummary(), 1, 2)
	e.wantDead(t, map[string]string{"holder's reports-read": own.GetToken(), "helper's under the grant": delegated.GetToken()})
	e.wantRevokedLineage(t, g.GetId(), 1)
	e.wantAlive(t, map[string]string{"holder's reports-write": write.GetToken(), "helper's own": helperOwn.GetToken(), "bystander's": other.GetToken()})
	rec := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Kind: "policy_updated", Agent: f.Admin.String()})
	wantDetail(t, rec, map[string]string{"version": "2", "grants_revoked": "1", "credentials_revoked": "2"})

	// 3. The agents watching hear it.
	for _, tt := range []struct {
		name      string
		w         grpc.ServerStreamingClient[brokerv1.WatchRevocationsResponse]
		grants    []string
		accessors []string
	}{
		{"holder", holderW, nil, []string{own.GetAccessor()}},
		{"helper", helperW, []string{g.GetId()}, []string{delegated.GetAccessor()}},
	} {
		ev, err := tt.w.Recv()
		if err != nil {
			t.Fatalf("%s's watch: %v", tt.name, err)
		}
		if !slices.Equal(ev.GetGrantIds(), tt.grants) || !slices.Equal(ev.GetAccessors(), tt.accessors) {
			t.Errorf("%s's event = %v, want grants %q and accessors %q", tt.name, ev, tt.grants, tt.accessors)
		}
	}

	// 4. A rollback to the deny revokes what was issued meanwhile.
	e.setPolicy(t, open, "reports again")
	again := holder.mustFetch(t, "reports-read", "")
	rb, err := e.admin.RollbackPolicy(ctx, &adminv1.RollbackPolicyRequest{Version: 2, Comment: "no reports again"})
	if err != nil {
		t.Fatal(err)
	}
	wantSummary("RollbackPolicy", rb.GetSummary(), 0, 1)
	e.wantDead(t, map[string]string{"holder's new reports-read": again.GetToken()})
	e.wantAlive(t, map[string]string{"holder's reports-write": write.GetToken(), "bystander's": other.GetToken()})
	rolled := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Kind: "policy_rolled_back"})
	wantDetail(t, rolled, map[string]string{"version": "4", "restored": "2", "grants_revoked": "0", "credentials_revoked": "1"})
}
