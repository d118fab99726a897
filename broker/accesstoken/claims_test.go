package accesstoken

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/vault"
)

var tools = config.Role{Name: "tools-read", Kind: config.KindJWT, Audience: "https://mcp.example/tools", Scopes: []string{"tools.list", "tools.call"}}

// The act nesting follows the chain, outermost the immediate delegator;
// the lineage names the root agent and every grant.
func TestClaimsChain(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tk := &Tokens{cfg: Config{Issuer: "https://atfd.test"}}
	for _, tt := range []struct {
		chain, grants []string
		act, lineage  string
		scopes        []string
		scope         string
	}{
		{[]string{"spiffe://td/a"}, nil, `null`, `["agent:spiffe://td/a"]`, nil, "tools.list tools.call"},
		{[]string{"spiffe://td/a", "spiffe://td/b"}, []string{"g1"}, `{"sub":"spiffe://td/a"}`, `["agent:spiffe://td/a","grant:g1"]`, []string{"tools.call"}, "tools.call"},
		{[]string{"spiffe://td/a", "spiffe://td/b", "spiffe://td/c", "spiffe://td/d"}, []string{"g1", "g2", "g3"},
			`{"sub":"spiffe://td/c","act":{"sub":"spiffe://td/b","act":{"sub":"spiffe://td/a"}}}`,
			`["agent:spiffe://td/a","grant:g1","grant:g2","grant:g3"]`, nil, "tools.list tools.call"},
	} {
		holder := tt.chain[len(tt.chain)-1]
		p := decide.Plan{Request: decide.Request{Caller: holder, Role: tools, Scopes: tt.scopes}, Level: authz.Senior, TTL: time.Minute,
			Authority: decide.Authority{Chain: tt.chain, GrantIDs: tt.grants}}
		c, err := tk.claimsOf(p, now)
		if err != nil {
			t.Fatal(err)
		}
		act, _ := json.Marshal(c.Act)
		lin, _ := json.Marshal(c.Lineage)
		if string(act) != tt.act || string(lin) != tt.lineage || c.Subject != holder || c.ClientID != holder || c.Scope != tt.scope ||
			c.Level != "senior" || c.Expiry != now.Add(time.Minute).Unix() {
			t.Errorf("chain %v: act %s lineage %s sub %s scope %q level %s exp %d", tt.chain, act, lin, c.Subject, c.Scope, c.Level, c.Expiry)
		}
	}
}

// exp never passes the chain's expiry, whatever the lifetime decided a
// moment before; a scope the role lacks is refused.
func TestClaimsBounds(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tk := &Tokens{cfg: Config{Issuer: "https://atfd.test"}}
	end := now.Add(30*time.Second + 500*time.Millisecond)
	p := decide.Plan{Request: decide.Request{Caller: "spiffe://td/b", Role: tools}, TTL: time.Minute,
		Authority: decide.Authority{Chain: []string{"spiffe://td/a", "spiffe://td/b"}, GrantIDs: []string{"g"}, NotAfter: end}}
	if c, err := tk.claimsOf(p, now); err != nil || c.Expiry != now.Add(30*time.Second).Unix() {
		t.Errorf("exp = %d, %v; want the grant's expiry, %d", c.Expiry, err, end.Unix())
	}
	p.Scopes = []string{"tools.admin"}
	if _, err := tk.claimsOf(p, now); err == nil || !strings.Contains(err.Error(), `scope "tools.admin" is not one of role tools-read's`) {
		t.Errorf("a scope the role lacks: %v", err)
	}
}

// The published versions: the newest, and each older one whose successor
// is younger than the overlap.
func TestPublish(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tk := &Tokens{cfg: Config{Key: "k", Overlap: 10 * time.Minute, Now: func() time.Time { return now }}}
	key := publicPEM(t)
	v := func(n int, age time.Duration) vault.KeyVersion {
		return vault.KeyVersion{Version: n, PublicKey: key, Created: now.Add(-age)}
	}
	keys, err := tk.publish(vault.TransitKey{Latest: 4, Versions: []vault.KeyVersion{v(1, 72*time.Hour), v(2, 48*time.Hour), v(3, 11*time.Minute), v(4, 9*time.Minute)}})
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range keys {
		kids = append(kids, k.kid)
	}
	if got := strings.Join(kids, ","); got != "k-3,k-4" {
		t.Errorf("published %s, want k-3,k-4 (k-2's successor is 11m old, past the 10m overlap)", got)
	}
}

// publicPEM is a P-256 public key, PEM, as Vault gives it.
func publicPEM(t *testing.T) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// Verify accepts a token signed with a published version and refuses one
// altered, of another issuer, algorithm or type, or naming a version not
// published.
func TestVerify(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tk := &Tokens{cfg: Config{Key: "k", Issuer: "https://atfd.test"}, keys: []published{{kid: "k-2", pub: &k.PublicKey}}}
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	sign := func(header map[string]string, claims Claims) string {
		input := enc(header) + "." + enc(claims)
		digest := sha256.Sum256([]byte(input))
		r, s, err := ecdsa.Sign(rand.Reader, k, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		sig := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
		return input + "." + base64.RawURLEncoding.EncodeToString(sig)
	}
	header := map[string]string{"alg": "ES256", "typ": Type, "kid": "k-2"}
	claims := Claims{Issuer: "https://atfd.test", Subject: "spiffe://td/a", ID: "j"}
	good := sign(header, claims)
	if c, err := tk.Verify(good); err != nil || c.Subject != "spiffe://td/a" || c.ID != "j" {
		t.Fatalf("a token signed with a published version: %+v, %v", c, err)
	}
	parts := strings.Split(good, ".")
	with := func(key, v string) map[string]string {
		h := map[string]string{"alg": header["alg"], "typ": header["typ"], "kid": header["kid"]}
		h[key] = v
		return h
	}
	for _, tt := range []struct {
		name, token string
		want        error
	}{
		{"claims altered", parts[0] + "." + enc(Claims{Issuer: "https://atfd.test", Subject: "spiffe://td/b", ID: "j"}) + "." + parts[2], ErrSignature},
		{"a version not published", sign(with("kid", "k-1"), claims), ErrSignature},
		{"alg none", enc(with("alg", "none")) + "." + parts[1] + ".", ErrMalformed},
		{"another type", sign(with("typ", "JWT"), claims), ErrMalformed},
		{"another issuer", sign(header, Claims{Issuer: "https://other.test", Subject: "spiffe://td/a"}), ErrMalformed},
		{"signature too long", good + "AA", ErrSignature},
		{"two parts", parts[0] + "." + parts[1], ErrMalformed},
	} {
		if _, err := tk.Verify(tt.token); err != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
}
