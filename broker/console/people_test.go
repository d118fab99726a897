package console

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/broker/config"
)

// People.Verify takes a person's ID token only for atfctl's client: its
// audience, and its azp when it names several; a token of another issuer
// is not one of the provider's at all; a sign-in past session_ttl is over.
func TestPeopleVerify(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var issuer string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			_ = json.NewEncoder(w).Encode(map[string]any{"issuer": issuer, "authorization_endpoint": issuer + "/auth", "token_endpoint": issuer + "/token",
				"jwks_uri": issuer + "/keys", "id_token_signing_alg_values_supported": []string{"ES256"}})
		case "/keys":
			_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k", Algorithm: "ES256", Use: "sig"}}})
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	issuer = srv.URL
	p := NewPeople(config.ConsoleConfig{OIDC: config.OIDCConfig{Issuer: issuer, ClientID: "atf-console"}, CLIClientID: "atfctl",
		SessionTTL: 30 * time.Minute, RolesClaim: "groups", Roles: map[string][]string{config.ConsoleApprover: {"approvers"}}}, srv.Client(), nil)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "k"))
	if err != nil {
		t.Fatal(err)
	}
	token := func(change func(map[string]any)) string {
		now := time.Now()
		c := map[string]any{"iss": issuer, "sub": "u-1", "aud": "atfctl", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
			"auth_time": now.Unix(), "groups": []string{"approvers"}, "name": "Ann"}
		change(c)
		b, _ := json.Marshal(c)
		jws, err := signer.Sign(b)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := jws.CompactSerialize()
		return s
	}
	good := token(func(map[string]any) {})
	if !p.Issued(good) {
		t.Fatal("a token of the provider is not recognised as a person's")
	}
	id, err := p.Verify(t.Context(), good)
	if err != nil || id.Human.Principal() != "oidc:"+issuer+"#u-1" || !id.Human.Has(config.ConsoleApprover) || id.Method != attest.OIDC {
		t.Fatalf("Verify(good) = %+v, %v", id.Human, err)
	}
	if p.Issued(token(func(c map[string]any) { c["iss"] = "https://elsewhere.example" })) {
		t.Error("a token of another issuer is taken for the provider's")
	}
	for name, change := range map[string]func(map[string]any){
		"the console's client":           func(c map[string]any) { c["aud"] = "atf-console" },
		"several clients, azp another's": func(c map[string]any) { c["aud"] = []string{"atfctl", "other"}; c["azp"] = "other" },
		"several clients, no azp":        func(c map[string]any) { c["aud"] = []string{"atfctl", "other"} },
		"older than session_ttl":         func(c map[string]any) { c["iat"] = time.Now().Add(-31 * time.Minute).Unix() },
		"expired":                        func(c map[string]any) { c["exp"] = time.Now().Add(-time.Minute).Unix() },
	} {
		if _, err := p.Verify(t.Context(), token(change)); err == nil || !strings.Contains(err.Error(), "unauthenticated") {
			t.Errorf("%s: %v, want Unauthenticated", name, err)
		}
	}
	if _, err := p.Verify(t.Context(), token(func(c map[string]any) { c["aud"] = []string{"atfctl", "other"}; c["azp"] = "atfctl" })); err != nil {
		t.Errorf("several clients, azp atfctl's: %v", err)
	}
}
