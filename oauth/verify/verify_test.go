package verify_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/agentictrust/atf/oauth/verify"
	"github.com/agentictrust/atf/oauth/verify/verifytest"
)

func TestVerifyExposesClaimsAndActChain(t *testing.T) {
	is := verifytest.NewIssuer(t)
	clk := verifytest.NewClock()
	v := newVerifier(t, is, func(c *verify.Config) { c.Now = clk.Now })
	token := is.Mint(tok{Act: []string{agentB, agentA}, JTI: "j-1"}, clk.Now())
	c, err := v.Verify(context.Background(), token, "tools.call")
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if c.Subject != agentC || c.ClientID != agentC || c.Audience != audience || c.Issuer != is.URL() || c.JTI != "j-1" {
		t.Errorf("claims = %+v", c)
	}
	if !slices.Equal(c.Scopes, []string{"tools.list", "tools.call"}) || c.Level != "junior" || c.DecisionID != "d-123" {
		t.Errorf("scopes %v, level %q, decision %q", c.Scopes, c.Level, c.DecisionID)
	}
	if !slices.Equal(c.Lineage, []string{"agent:" + agentA, "grant:g-ab", "grant:g-bc"}) {
		t.Errorf("lineage = %v", c.Lineage)
	}
	if got := c.Actors(); c.Depth() != 2 || !slices.Equal(got, []verify.Actor{{Subject: agentB}, {Subject: agentA}}) {
		t.Errorf("actors = %v (depth %d), want B then A", got, c.Depth())
	}
	if want := clk.Now().Add(5 * time.Minute).Truncate(time.Second); !c.Expiry.Equal(want) {
		t.Errorf("expiry = %s, want %s", c.Expiry, want)
	}
	own, err := v.Verify(context.Background(), is.Mint(tok{}, clk.Now()))
	if err != nil || own.Depth() != 0 || len(own.Actors()) != 0 {
		t.Errorf("own-authority token: depth %v, err %v", own, err)
	}
}

func TestVerifyRefuses(t *testing.T) {
	is := verifytest.NewIssuer(t)
	clk := verifytest.NewClock()
	v := newVerifier(t, is, func(c *verify.Config) { c.Now = clk.Now })
	now := clk.Now()
	pub := is.Key("atf-oauth-1").PublicKey
	pubJWK, _ := json.Marshal(jose.JSONWebKey{Key: &pub, KeyID: "atf-oauth-1"})
	pubPoint, err := pub.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	valid := is.Claims(tok{}, now)
	for _, tt := range []struct {
		name, token, want string
	}{
		{"wrong audience", is.Mint(tok{Aud: "https://other.example/api"}, now), "audience is not this server"},
		{"token of another resource server replayed", is.Mint(tok{Aud: "https://billing.example"}, now), "audience is not this server"},
		{"audience array naming two servers", is.Mint(tok{Aud: []string{audience, "https://billing.example"}}, now), "aud must name exactly one audience"},
		{"no audience", is.Mint(tok{Omit: "aud"}, now), "aud must name exactly one audience"},
		{"other issuer", is.Mint(tok{Iss: "https://evil.example"}, now), "issuer is not"},
		{"expired", is.Mint(tok{Iat: now.Add(-10 * time.Minute), Exp: now.Add(-time.Minute)}, now), "expired at"},
		{"not yet valid", is.Mint(tok{Nbf: now.Add(2 * time.Minute)}, now), "not valid before"},
		{"issued in the future", is.Mint(tok{Iat: now.Add(2 * time.Minute), Nbf: now}, now), "issued in the future"},
		{"no jti", is.Mint(tok{Omit: "jti"}, now), "iss, sub, client_id and jti are required"},
		{"no exp", is.Mint(tok{Omit: "exp"}, now), "exp and iat are required"},
		{"typ missing", is.Mint(tok{Typ: "-"}, now), "typ must be at+jwt"},
		{"typ JWT", is.Mint(tok{Typ: "JWT"}, now), "typ must be at+jwt"},
		{"alg none", unsigned(map[string]string{"alg": "none", "typ": "at+jwt", "kid": "atf-oauth-1"}, valid), "alg must be ES256"},
		{"HS256 keyed with the public key", verifytest.Sign(t, jose.SigningKey{Algorithm: jose.HS256, Key: jose.JSONWebKey{Key: pubJWK, KeyID: "atf-oauth-1"}}, "at+jwt", valid), "alg must be ES256"},
		{"HS256 keyed with the public point", verifytest.Sign(t, jose.SigningKey{Algorithm: jose.HS256, Key: jose.JSONWebKey{Key: pubPoint, KeyID: "atf-oauth-1"}}, "at+jwt", valid), "alg must be ES256"},
		{"RS256", verifytest.Sign(t, jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: rsaKey, KeyID: "atf-oauth-1"}}, "at+jwt", valid), "alg must be ES256"},
		{"ES256 by a key not published", is.Mint(tok{Kid: "forged"}, now), "unknown kid"},
		{"signature of another token", spliceSignature(is.Mint(tok{}, now), is.Mint(tok{Aud: "https://billing.example"}, now)), "bad signature"},
		{"not a JWS", "abc.def", "not a compact JWS"},
		{"empty", "", "no token"},
		{"oversized", strings.Repeat("a", verify.MaxTokenSize+1), "longer than"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), tt.token)
			if !errors.Is(err, verify.ErrInvalidToken) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Verify = %v, want ErrInvalidToken containing %q", err, tt.want)
			}
		})
	}
}

func TestVerifyTypAndScope(t *testing.T) {
	is := verifytest.NewIssuer(t)
	clk := verifytest.NewClock()
	v := newVerifier(t, is, func(c *verify.Config) { c.Now = clk.Now })
	for _, typ := range []string{"at+jwt", "AT+JWT", "application/at+jwt"} {
		if _, err := v.Verify(context.Background(), is.Mint(tok{Typ: typ}, clk.Now())); err != nil {
			t.Errorf("typ %q: %v", typ, err)
		}
	}
	_, err := v.Verify(context.Background(), is.Mint(tok{Scope: "tools.list"}, clk.Now()), "tools.call")
	if !errors.Is(err, verify.ErrInsufficientScope) || err.Error() != `verify: insufficient scope: scope "tools.call" is required` {
		t.Errorf("Verify without the scope = %v", err)
	}
	// Leeway: a token expired 10 s ago passes with the default 30 s, not
	// with none.
	late := is.Mint(tok{Iat: clk.Now().Add(-time.Minute), Exp: clk.Now().Add(-10 * time.Second)}, clk.Now())
	if _, err := v.Verify(context.Background(), late); err != nil {
		t.Errorf("within the leeway: %v", err)
	}
	strict := newVerifier(t, is, func(c *verify.Config) { c.Now = clk.Now; c.Leeway = -1 })
	if _, err := strict.Verify(context.Background(), late); !errors.Is(err, verify.ErrInvalidToken) {
		t.Errorf("no leeway: %v", err)
	}
}

// unsigned builds a token with header h, claims c and an empty signature.
func unsigned(h map[string]string, c map[string]any) string {
	hb, _ := json.Marshal(h)
	cb, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(cb) + "."
}

// spliceSignature puts b's signature on a's header and payload.
func spliceSignature(a, b string) string {
	return a[:strings.LastIndex(a, ".")] + b[strings.LastIndex(b, "."):]
}

func TestNewRefusesBadConfig(t *testing.T) {
	is := verifytest.NewIssuer(t)
	for _, tt := range []struct {
		cfg  verify.Config
		want string
	}{
		{verify.Config{Audience: audience, Client: is.Client()}, "verify: Config.Issuer is required"},
		{verify.Config{Issuer: "http://atfd.example", Audience: audience, Client: is.Client()}, `verify: Config.Issuer "http://atfd.example" must be an https URL`},
		{verify.Config{Issuer: "https://atfd.example/", Audience: audience, Client: is.Client()}, `verify: Config.Issuer "https://atfd.example/" must not end with a slash: tokens name the issuer without one`},
		{verify.Config{Issuer: "https://atfd.example", Client: is.Client()}, "verify: Config.Audience is required: an empty audience would accept tokens meant for any server"},
		{verify.Config{Issuer: "https://atfd.example", Audience: audience}, "verify: Config.Client is required: an HTTPS client that trusts the issuer's SVID"},
		{verify.Config{Issuer: "https://atfd.example", Audience: audience, Client: is.Client(), Leeway: time.Hour}, "verify: Config.Leeway 1h0m0s is over 5m0s"},
		{verify.Config{Issuer: "https://atfd.example", Audience: audience, Client: is.Client(), Push: &verify.Push{IntrospectionURL: "http://x"}}, `verify: Push.IntrospectionURL "http://x" must be an https URL`},
	} {
		if _, err := verify.New(tt.cfg); err == nil || err.Error() != tt.want {
			t.Errorf("New = %v, want %q", err, tt.want)
		}
	}
}

func TestSubscribeWithoutPush(t *testing.T) {
	v := newVerifier(t, verifytest.NewIssuer(t), nil)
	if err := v.Subscribe(context.Background()); err == nil || err.Error() != "verify: Subscribe needs Config.Push" {
		t.Errorf("Subscribe = %v", err)
	}
}
