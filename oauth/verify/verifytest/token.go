package verifytest

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Token describes a token to mint; its zero fields take the values a valid
// token of atfd has: iss the issuer, sub and client_id AgentC, aud
// Audience, scope "tools.list tools.call", a fresh jti, iat now, nbf iat,
// exp iat + 5 min, lineage A → g-ab → g-bc, level junior.
type Token struct {
	Kid     string // FirstKid; a kid not published signs with a new key
	Typ     string // "at+jwt"; "-" for none
	Iss     string
	Sub     string
	Aud     any
	Scope   string
	JTI     string
	Iat     time.Time
	Exp     time.Time
	Nbf     time.Time
	Act     []string // the delegators, immediate actor first
	Lineage []string
	Omit    string // a claim to leave out
}

var jtis atomic.Int64

// Claims returns tk's claims as atfd writes them.
func (is *Issuer) Claims(tk Token, now time.Time) map[string]any {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&tk.Iss, is.URL())
	def(&tk.Sub, AgentC)
	def(&tk.Scope, "tools.list tools.call")
	def(&tk.JTI, fmt.Sprintf("jti-%d", jtis.Add(1)))
	if tk.Aud == nil {
		tk.Aud = Audience
	}
	if tk.Iat.IsZero() {
		tk.Iat = now
	}
	if tk.Exp.IsZero() {
		tk.Exp = tk.Iat.Add(5 * time.Minute)
	}
	if tk.Nbf.IsZero() {
		tk.Nbf = tk.Iat
	}
	if tk.Lineage == nil {
		tk.Lineage = []string{"agent:" + AgentA, "grant:g-ab", "grant:g-bc"}
	}
	c := map[string]any{
		"iss": tk.Iss, "sub": tk.Sub, "client_id": tk.Sub, "aud": tk.Aud, "scope": tk.Scope, "jti": tk.JTI,
		"iat": tk.Iat.Unix(), "nbf": tk.Nbf.Unix(), "exp": tk.Exp.Unix(),
		"atf_level": "junior", "atf_decision_id": "d-123", "atf_lineage": tk.Lineage,
	}
	var act map[string]any
	for i := len(tk.Act) - 1; i >= 0; i-- {
		a := map[string]any{"sub": tk.Act[i]}
		if act != nil {
			a["act"] = act
		}
		act = a
	}
	if act != nil {
		c["act"] = act
	}
	delete(c, tk.Omit)
	return c
}

// Mint signs tk, ES256 with go-jose, as of now.
func (is *Issuer) Mint(tk Token, now time.Time) string {
	is.t.Helper()
	if tk.Kid == "" {
		tk.Kid = FirstKid
	}
	if tk.Typ == "" {
		tk.Typ = "at+jwt"
	}
	key := is.Key(tk.Kid)
	if key == nil {
		key = newKey(is.t)
	}
	return Sign(is.t, jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: tk.Kid}}, tk.Typ, is.Claims(tk, now))
}

// MintAfter mints tk issued d from now: after a subscription that began
// now, whose start makes every token issued up to it suspect.
func (is *Issuer) MintAfter(d time.Duration, tk Token) string {
	tk.Iat = time.Now().Add(d)
	return is.Mint(tk, time.Now())
}

// Sign signs claims with key under header typ ("-" for no typ).
func Sign(t testing.TB, key jose.SigningKey, typ string, claims map[string]any) string {
	t.Helper()
	opts := &jose.SignerOptions{}
	if typ != "-" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	signer, err := jose.NewSigner(key, opts)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Clock is a settable clock.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a Clock at the current time.
func NewClock() *Clock { return &Clock{t: time.Now()} }

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Add moves the clock by d.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
