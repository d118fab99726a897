package broker_test

import (
	"context"
	"os"
	"testing"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// dynamicSamples is how many database users of each kind, broker and raw,
// one iteration of BenchmarkDynamicSecret has Vault create.
const dynamicSamples = 200

// BenchmarkDynamicSecret compares FetchCredential of a role with a dynamic
// secret (a PostgreSQL user from Vault's database engine, read with the
// new credential's token: token, read, record), end to end, with a raw
// read of the same path by a plain Vault token that holds the role's
// policy. Sequential calls alternate between the two (p50, p99).
func BenchmarkDynamicSecret(b *testing.B) {
	f := brokertest.Setup(b)
	cfg, _ := f.DatabaseConfig(b, b.TempDir())
	tok, err := os.ReadFile(cfg.Vault.Auth.TokenFile)
	if err != nil {
		b.Fatal(err)
	}
	revokeAtEnd(b, f, string(tok)) // and with the credentials, their users
	bk := f.Start(b, cfg)
	ctx := b.Context()
	agent := f.ID(b, "db-reader")
	bk.Register(b, agent, brokerv1.Level_LEVEL_INTERN, "orders-db")
	conn := bk.Dial(b, agent)
	viaBroker := func(ctx context.Context, _ int) error {
		_, err := conn.Broker.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "orders-db"})
		return err
	}
	plain, err := f.Stack.VaultClient().Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{
		Policies: []string{"demo-orders-db"}, NoDefaultPolicy: true, TTL: "1h"})
	if err != nil {
		b.Fatal(err)
	}
	revokeAtEnd(b, f, plain.Auth.ClientToken)
	raw := vaultClient(b, f, plain.Auth.ClientToken)
	direct := func(ctx context.Context, _ int) error {
		_, err := raw.Logical().ReadWithContext(ctx, dev.DatabaseCredsPath)
		return err
	}
	compareToRaw(b, []func(context.Context, int) error{direct, viaBroker}, dynamicSamples, 0, 0).report(b, 0, 1)
}
