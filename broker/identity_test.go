package broker_test

import (
	"context"
	"strings"
	"testing"

	vaultapi "github.com/hashicorp/vault/api"
	"google.golang.org/grpc/codes"

	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Vault identity policies do not widen a credential (docs/security.md,
// "Vault identity"). An identity group that gives demo-payroll-read to
// atfd's own entity (its JWT login's) reaches no credential: credentials
// carry their agent's entity, not atfd's. The same group on the agent's
// entity makes the broker refuse, audited, and revoke what the agent had
// under that entity: nothing of it stays live in Vault. For batch
// credentials (the default) and service ones alike.
func TestVaultIdentityPoliciesDoNotWiden(t *testing.T) {
	f := brokertest.Setup(t)
	for _, kind := range []string{"batch", "service"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			cfg := f.Config(t, dir)
			if kind == "service" {
				cfg.RolesFile = brokertest.ServiceRoles(t, dir)
			}
			// atfd logs in with its JWT-SVID, as in production: its token
			// has an entity of its own.
			cfg.Vault.Auth = config.VaultAuth{Method: "jwt", Role: "atf-broker", Audience: "vault"}
			b := f.Start(t, cfg)
			root := f.Stack.VaultClient()
			broker := brokerEntity(t, root, f.Stack.BrokerID.String())
			identityGroup(t, root, "atf-test-widen-broker-"+kind, broker)

			agent := f.ID(t, "agent")
			b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
			conn := b.Dial(t, agent)
			r, err := conn.Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
			if err != nil {
				t.Fatal(err)
			}
			tok := r.GetCredential().GetToken()
			if readPayroll(t, f, tok) {
				t.Fatal("a reports-read credential reads secret/demo/payroll through atfd's identity group")
			}
			look, err := f.Lookup(t, tok)
			if err != nil {
				t.Fatal(err)
			}
			entity, _ := look.Data["entity_id"].(string)
			if entity == "" || entity == broker {
				t.Fatalf("the credential's entity is %q, atfd's is %q: want an entity of the agent's", entity, broker)
			}

			// The group on the agent's own entity: refused, fail closed.
			identityGroup(t, root, "atf-test-widen-agent-"+kind, entity)
			_, err = conn.Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
			brokertest.WantCode(t, err, codes.FailedPrecondition, "Vault identity", "nothing was issued")
			if !f.Dead(t, tok) {
				t.Error("the first credential, widened by the group on its entity, is still live")
			}
			if live, err := f.Stack.LiveAnchors(t.Context(), agent.String()); err != nil || len(live) != 0 {
				t.Errorf("live anchors of the agent: %v, %v; want none", live, err)
			}
			if live, err := f.Stack.LiveCredentials(t.Context(), agent.String()); err != nil || len(live) != 0 {
				t.Errorf("live service credentials of the agent: %v, %v; want none", live, err)
			}
			failed, err := b.Dial(t, f.Admin).Admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "credential_failed", Agent: agent.String(), PageSize: 10})
			if err != nil || len(failed.GetRecords()) != 1 || failed.GetRecords()[0].GetDetail()["reason"] != "vault_identity_policies" {
				t.Fatalf("credential_failed records: %v, %v; want one with reason vault_identity_policies", failed.GetRecords(), err)
			}
		})
	}
}

// brokerEntity is the Vault entity of atfd's JWT login as id.
func brokerEntity(t *testing.T, root *vaultapi.Client, id string) string {
	t.Helper()
	auths, err := root.Sys().ListAuthWithContext(t.Context())
	if err != nil || auths["jwt/"] == nil {
		t.Fatalf("auth methods: %v, %v", auths, err)
	}
	s, err := root.Logical().WriteWithContext(t.Context(), "identity/lookup/entity", map[string]any{
		"alias_name": id, "alias_mount_accessor": auths["jwt/"].Accessor,
	})
	if err != nil || s == nil {
		t.Fatalf("atfd's entity: %v, %v", s, err)
	}
	return s.Data["id"].(string)
}

// identityGroup makes, as Vault root, an identity group giving
// demo-payroll-read to entity, deleted when t ends.
func identityGroup(t *testing.T, root *vaultapi.Client, name, entity string) {
	t.Helper()
	if _, err := root.Logical().WriteWithContext(t.Context(), "identity/group", map[string]any{
		"name": name, "policies": []string{"demo-payroll-read"}, "member_entity_ids": []string{entity},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := root.Logical().DeleteWithContext(context.Background(), "identity/group/name/"+name); err != nil {
			t.Errorf("deleting identity group %s: %v", name, err)
		}
	})
}

// readPayroll reports whether token reads secret/demo/payroll; any other
// answer than a refusal fails t.
func readPayroll(t *testing.T, f *brokertest.Fixture, token string) bool {
	t.Helper()
	_, err := f.VaultAs(t, token).Logical().ReadWithContext(t.Context(), "secret/data/demo/payroll")
	if err != nil && !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("reading payroll: %v", err)
	}
	return err == nil
}
