package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/agentictrust/atf/broker/client"
)

// An agent with its SVID from the SPIRE Workload API
// ($SPIFFE_ENDPOINT_SOCKET) reads a secret with the credential the broker
// issues it. Asking for the credential before every use is cheap: it is
// cached, refreshed before it expires, and replaced at once if revoked.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	agent, err := client.New(ctx, client.Config{Addr: "atfd.example.org:8443"})
	if err != nil {
		log.Fatal(err)
	}
	defer agent.Close()

	cred, err := agent.Credential(ctx, "reports-read")
	if err != nil {
		log.Fatal(err)
	}
	cfg := vaultapi.DefaultConfig()
	cfg.Address = cred.GetVaultAddress()
	vault, err := vaultapi.NewClient(cfg)
	if err != nil {
		log.Fatal(err)
	}
	vault.SetToken(cred.GetToken())
	report, err := vault.KVv2("secret").Get(ctx, "demo/reports")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(report.Data["summary"])
}
