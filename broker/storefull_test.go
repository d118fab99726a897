package broker_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Disk full (store_max_size): with the store at its limit, issuance and
// delegation are refused with ResourceExhausted before anything happens in
// Vault, a lineage revocation still commits and kills its credentials in
// Vault, and issuance works again once the store may grow.
func TestStoreFullRefusesIssuanceNotRevocation(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	const limit = 4 << 20
	cfg.StoreMaxSize = limit
	e := newDelegEnv(t, f, cfg)
	lead := e.register(t, "full-lead", brokerv1.Level_LEVEL_SENIOR, "reports-read")
	helper := e.register(t, "full-helper", brokerv1.Level_LEVEL_JUNIOR, "reports-read")
	own := lead.mustFetch(t, "reports-read", "")
	g, err := lead.delegate(t.Context(), helper.id, "", time.Hour, 0, "reports-read")
	if err != nil {
		t.Fatal(err)
	}
	under := helper.mustFetch(t, "reports-read", g.GetId())
	// Batch credentials: what lives in Vault is the anchors they hang on.
	anchors, err := f.Stack.LiveAnchors(t.Context(), lead.id.String(), helper.id.String())
	if err != nil || len(anchors) != 4 {
		t.Fatalf("live anchors %v (%v), want the lead's and the grant's, each with a role anchor", anchors, err)
	}

	// Fill the store to its limit while atfd is stopped.
	e.b.Stop()
	withDefaults := cfg
	if err := withDefaults.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(cfg.StorePath, store.Options{MaxSize: limit, AuditDir: withDefaults.Audit.Dir})
	if err != nil {
		t.Fatal(err)
	}
	// With live state, its audit records shipped as atfd ships them.
	for i := 0; err == nil; i++ {
		_, err = st.RegisterAgent(store.Agent{ID: fmt.Sprintf("spiffe://atf.test/filler/%d", i), Owner: "test",
			Purpose: strings.Repeat("x", 2000), Level: authz.Intern}, "test")
		if _, serr := st.ShipAudit(); serr != nil {
			t.Fatal(serr)
		}
	}
	st.Close()
	if !errors.Is(err, store.ErrFull) {
		t.Fatalf("filling the store: %v", err)
	}

	e.start(t)
	e.redial(t, &lead, &helper)
	_, err = lead.fetch(t.Context(), "reports-read", "")
	brokertest.WantCode(t, err, codes.ResourceExhausted, "store is full", "revocations still work")
	_, err = lead.delegate(t.Context(), helper.id, "", time.Hour, 0, "reports-read")
	brokertest.WantCode(t, err, codes.ResourceExhausted, "store is full")
	after, err := f.Stack.LiveAnchors(t.Context(), lead.id.String(), helper.id.String())
	if err != nil || !slices.Equal(after, anchors) || f.Dead(t, own.GetToken()) || f.Dead(t, under.GetToken()) {
		t.Fatalf("live anchors in Vault %v (%v), want only those of the two credentials issued before, %v, both alive", after, err, anchors)
	}

	// Revocation commits in the room kept for it, and Vault follows.
	r, err := e.admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: lead.id.String()}, Reason: "store full drill"})
	if err != nil {
		t.Fatalf("revoking with a full store: %v", err)
	}
	if r.GetSummary().GetCredentialsRevoked() != 2 {
		t.Fatalf("revocation summary %v, want 2 credentials", r.GetSummary())
	}
	for _, tok := range []string{own.GetToken(), under.GetToken()} {
		if !f.Dead(t, tok) {
			t.Fatal("a revoked credential is alive in Vault")
		}
	}
	_, err = helper.fetch(t.Context(), "reports-read", g.GetId())
	brokertest.WantCode(t, err, codes.ResourceExhausted)

	// Space returns: a higher limit, and issuance works again.
	e.b.Stop()
	e.cfg.StoreMaxSize = 4 * limit
	e.start(t)
	e.redial(t, &lead)
	if c := lead.mustFetch(t, "reports-read", ""); f.Dead(t, c.GetToken()) {
		t.Fatal("the credential issued after space returned is not valid in Vault")
	}
}

func sorted(s []string) []string { return slices.Sorted(slices.Values(s)) }
