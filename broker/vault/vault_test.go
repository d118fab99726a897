package vault_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/vault"
	"github.com/agentictrust/atf/deploy/dev/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func newIssuer(t *testing.T, addr string) *vault.Issuer {
	t.Helper()
	s := devtest.Shared(t)
	tok, err := s.BrokerVaultToken(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if addr == "" {
		addr = s.VaultAddr
	}
	is, err := vault.New(t.Context(), vault.Config{Address: addr, Token: tok, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(is.Close)
	return is
}

// Credentials and anchors against the real Vault: exact policies, anchors
// whose revocation kills everything below, and fail-closed errors.
func TestIssuer(t *testing.T) {
	s := devtest.Shared(t)
	is := newIssuer(t, "")
	root := s.VaultClient()
	ctx := t.Context()
	alive := func(token string) bool {
		_, err := root.Auth().Token().LookupWithContext(ctx, token)
		return err == nil
	}

	agent, err := is.CreateAnchor(ctx, nil, "spiffe://atf.test/test", time.Hour, map[string]string{"atf_node": "agent:test"})
	if err != nil {
		t.Fatal(err)
	}
	if !is.Usable(agent, 30*time.Minute) || is.Usable(agent, 2*time.Hour) {
		t.Errorf("a 1h anchor: usable for 30m children %t, for 2h children %t", is.Usable(agent, 30*time.Minute), is.Usable(agent, 2*time.Hour))
	}
	grant, err := is.CreateAnchor(ctx, agent, "spiffe://atf.test/Test", 2*time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	if grant.ExpiresAt.After(agent.ExpiresAt) {
		t.Errorf("child anchor outlives its parent: %s > %s", grant.ExpiresAt, agent.ExpiresAt)
	}
	// Each anchor carries its owner's entity, even below another's anchor:
	// owners differing only in case are different agents.
	if agent.EntityID == "" || grant.EntityID == "" || agent.EntityID == grant.EntityID {
		t.Errorf("anchor entities %q (owner .../test) and %q (owner .../Test): want two", agent.EntityID, grant.EntityID)
	}
	if _, err := is.CreateAnchor(ctx, nil, "", time.Hour, nil); !errors.Is(err, vault.ErrRejected) {
		t.Errorf("an anchor without owner: %v, want ErrRejected", err)
	}
	var creds []vault.Credential
	for _, parent := range []*vault.Anchor{nil, agent, grant} {
		c, err := is.Issue(ctx, vault.Request{Policies: []string{"demo-reports-read"}, TTL: 5 * time.Minute, Parent: parent, Metadata: map[string]string{"atf_role": "reports-read"}})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(c.Policies, []string{"demo-reports-read"}) || c.ExpiresAt.Sub(c.IssuedAt) > 5*time.Minute {
			t.Errorf("credential = %+v", c)
		}
		creds = append(creds, c)
	}

	// A policy outside the token role's allowed_policies is refused by Vault.
	_, err = is.Issue(ctx, vault.Request{Policies: []string{"root"}, TTL: time.Minute})
	if !errors.Is(err, vault.ErrRejected) {
		t.Errorf("issuing root: %v, want ErrRejected", err)
	}
	_, err = is.Issue(ctx, vault.Request{Policies: []string{"atf-broker"}, TTL: time.Minute, Parent: agent})
	if !errors.Is(err, vault.ErrRejected) {
		t.Errorf("issuing atf-broker under an anchor: %v, want ErrRejected", err)
	}
	if _, err := is.Issue(ctx, vault.Request{TTL: time.Minute}); !errors.Is(err, vault.ErrRejected) {
		t.Errorf("issuing no policy: %v, want ErrRejected (Vault would grant all allowed policies)", err)
	}

	// Revoking the agent anchor kills the anchor below it and both
	// credentials under them, not the one under the broker's own token.
	if err := is.Revoke(ctx, agent.Accessor); err != nil {
		t.Fatal(err)
	}
	if !alive(creds[0].Token) || alive(creds[1].Token) || alive(creds[2].Token) {
		t.Errorf("after revoking the agent anchor, alive = %t %t %t; want true false false", alive(creds[0].Token), alive(creds[1].Token), alive(creds[2].Token))
	}
	// Revoking what is already gone succeeds: the queue can retry blindly.
	if err := is.Revoke(ctx, grant.Accessor); err != nil {
		t.Errorf("revoking a dead anchor: %v", err)
	}
	if err := is.Revoke(ctx, creds[1].Accessor); err != nil {
		t.Errorf("revoking a dead credential: %v", err)
	}
	// Issuing under a revoked anchor is refused.
	if _, err := is.Issue(ctx, vault.Request{Policies: []string{"demo-reports-read"}, TTL: time.Minute, Parent: grant}); !errors.Is(err, vault.ErrRejected) {
		t.Errorf("issuing under a revoked anchor: %v, want ErrRejected", err)
	}
	if err := is.Healthy(ctx); err != nil {
		t.Errorf("Healthy: %v", err)
	}
}

// An unreachable Vault is ErrUnavailable, and errors never carry a token.
func TestIssuerUnavailable(t *testing.T) {
	s := devtest.Shared(t)
	tok, err := s.BrokerVaultToken(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// Nothing listens on port 1.
	_, err = vault.New(context.Background(), vault.Config{Address: "http://127.0.0.1:1", Token: tok, Timeout: time.Second})
	if !errors.Is(err, vault.ErrUnavailable) {
		t.Fatalf("New against a closed port: %v, want ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), tok) {
		t.Fatal("the error contains the token")
	}
	_, err = vault.New(t.Context(), vault.Config{Address: s.VaultAddr, Token: "hvs.not-a-token", Timeout: time.Second})
	if !errors.Is(err, vault.ErrRejected) || strings.Contains(err.Error(), "hvs.not-a-token") {
		t.Fatalf("New with a bad token: %v, want ErrRejected without the token", err)
	}
}

// Batch credentials against the real Vault: a role anchor that holds the
// role's policies creates batch children with exactly them (none of its
// own anchor policy, nothing it does not hold); they have no accessor,
// refuse a use count, and die at once, every one of them, with their
// anchor or any anchor above it, while a service credential under the same
// anchor can still be revoked alone.
func TestBatchCredentials(t *testing.T) {
	s := devtest.Shared(t)
	is := newIssuer(t, "")
	ctx := t.Context()
	// alive uses the token (a batch token is checked against its parent
	// at each use): each demo policy may read secret/demo/reports.
	alive := func(token string) bool {
		c, err := s.VaultClient().Clone()
		if err != nil {
			t.Fatal(err)
		}
		c.SetToken(token)
		_, err = c.Logical().ReadWithContext(ctx, "secret/data/demo/reports")
		return err == nil
	}

	node, err := is.CreateAnchor(ctx, nil, "spiffe://atf.test/batch", time.Hour, map[string]string{"atf_node": "agent:batch"})
	if err != nil {
		t.Fatal(err)
	}
	role, err := is.CreateAnchor(ctx, node, "spiffe://atf.test/batch", time.Hour, map[string]string{"atf_node": "agent:batch#reports-read"}, "demo-reports-read")
	if err != nil {
		t.Fatal(err)
	}
	other, err := is.CreateAnchor(ctx, node, "spiffe://atf.test/batch", time.Hour, map[string]string{"atf_node": "agent:batch#reports-write"}, "demo-reports-write")
	if err != nil {
		t.Fatal(err)
	}
	batch := func(parent *vault.Anchor, policies ...string) vault.Credential {
		t.Helper()
		c, err := is.Issue(ctx, vault.Request{Kind: vault.Batch, Policies: policies, TTL: 5 * time.Minute, Parent: parent,
			Metadata: map[string]string{"atf_role": "reports-read"}})
		if err != nil {
			t.Fatal(err)
		}
		if c.Accessor != "" || !slices.Equal(c.Policies, policies) || c.ExpiresAt.Sub(c.IssuedAt) > 5*time.Minute || !alive(c.Token) {
			t.Errorf("batch credential = accessor %q, policies %v, ttl %s, alive %t", c.Accessor, c.Policies, c.ExpiresAt.Sub(c.IssuedAt), alive(c.Token))
		}
		return c
	}
	reads := []vault.Credential{batch(role, "demo-reports-read"), batch(role, "demo-reports-read"), batch(role, "demo-reports-read")}
	write := batch(other, "demo-reports-write")
	svc, err := is.Issue(ctx, vault.Request{Kind: vault.Service, Policies: []string{"demo-reports-read"}, TTL: 5 * time.Minute, Parent: role, NumUses: 3})
	if err != nil || svc.Accessor == "" {
		t.Fatalf("service credential under a role anchor = %+v, %v", svc, err)
	}

	// Only what the anchor holds, never its anchor policy, never a use count.
	for _, tt := range []struct {
		name string
		req  vault.Request
	}{
		{"a policy the anchor does not hold", vault.Request{Kind: vault.Batch, Policies: []string{"demo-payroll-read"}, TTL: time.Minute, Parent: role}},
		{"the anchor policy", vault.Request{Kind: vault.Batch, Policies: []string{"atf-anchor"}, TTL: time.Minute, Parent: role}},
		{"a use count", vault.Request{Kind: vault.Batch, Policies: []string{"demo-reports-read"}, TTL: time.Minute, Parent: role, NumUses: 1}},
		{"no anchor", vault.Request{Kind: vault.Batch, Policies: []string{"demo-reports-read"}, TTL: time.Minute}},
	} {
		if _, err := is.Issue(ctx, tt.req); !errors.Is(err, vault.ErrRejected) {
			t.Errorf("batch with %s: %v, want ErrRejected", tt.name, err)
		}
	}

	// The service credential goes alone; the batch ones stay.
	if err := is.Revoke(ctx, svc.Accessor); err != nil || alive(svc.Token) || !alive(reads[0].Token) {
		t.Fatalf("revoking the service credential: %v; alive: service %t, batch %t", err, alive(svc.Token), alive(reads[0].Token))
	}
	// The role anchor takes every batch credential below it at once, not
	// the other role's.
	if err := is.Revoke(ctx, role.Accessor); err != nil {
		t.Fatal(err)
	}
	for i, c := range reads {
		if alive(c.Token) {
			t.Errorf("batch credential %d alive after its anchor was revoked", i)
		}
	}
	if !alive(write.Token) {
		t.Error("the other role's batch credential died with a sibling anchor")
	}
	// The node anchor takes the rest.
	if err := is.Revoke(ctx, node.Accessor); err != nil || alive(write.Token) {
		t.Errorf("after revoking the node anchor: %v, write alive %t", err, alive(write.Token))
	}
}
