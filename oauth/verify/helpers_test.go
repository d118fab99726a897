package verify_test

import (
	"log/slog"
	"testing"

	"github.com/agentictrust/atf/oauth/verify"
	"github.com/agentictrust/atf/oauth/verify/verifytest"
)

type tok = verifytest.Token

const (
	audience = verifytest.Audience
	agentA   = verifytest.AgentA
	agentB   = verifytest.AgentB
	agentC   = verifytest.AgentC
)

// newVerifier returns a Verifier of is's tokens for audience, edited.
func newVerifier(t testing.TB, is *verifytest.Issuer, edit func(*verify.Config)) *verify.Verifier {
	t.Helper()
	cfg := verify.Config{Issuer: is.URL(), Audience: audience, Client: is.Client(), Logger: slog.New(slog.DiscardHandler)}
	if edit != nil {
		edit(&cfg)
	}
	v, err := verify.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
