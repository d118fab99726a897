package console

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/broker/config"
)

// People knows the OpenID provider people sign in with: the console's
// sign-ins and the ID tokens that people who ran `atfctl login` present
// on the gRPC API (docs/console.md, The command line). The provider is
// discovered on first use, so that atfd starts while it is down.
type People struct {
	cfg config.ConsoleConfig
	hc  *http.Client
	now func() time.Time

	mu   sync.Mutex
	prov *oidc.Provider
	cli  *oidc.IDTokenVerifier
	// failedAt and failed are the last discovery that failed: another is
	// tried only retryFetchAfter later, so that tokens anyone sends cannot
	// make atfd ask a provider that is down again and again.
	failedAt time.Time
	failed   error
}

// NewPeople returns the people of cfg's provider; hc reaches it (nil:
// http.DefaultClient), now is the clock (nil: time.Now).
func NewPeople(cfg config.ConsoleConfig, hc *http.Client, now func() time.Time) *People {
	if hc == nil {
		hc = http.DefaultClient
	}
	if now == nil {
		now = time.Now
	}
	return &People{cfg: cfg, hc: hc, now: now}
}

// provider is the provider, discovered once.
func (p *People) provider(ctx context.Context) (*oidc.Provider, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.prov != nil {
		return p.prov, nil
	}
	if p.failed != nil && p.now().Sub(p.failedAt) < retryFetchAfter {
		return nil, p.failed
	}
	// Apart from the caller's context: one that gives up does not fail
	// the discovery for the others.
	ctx, cancel := context.WithTimeout(oidc.ClientContext(context.WithoutCancel(ctx), p.hc), fetchTimeout)
	defer cancel()
	prov, err := oidc.NewProvider(ctx, p.cfg.OIDC.Issuer)
	if err != nil {
		p.failedAt, p.failed = p.now(), err
		return nil, err
	}
	var meta struct {
		JWKS string   `json:"jwks_uri"`
		Algs []string `json:"id_token_signing_alg_values_supported"`
	}
	if err := prov.Claims(&meta); err != nil || meta.JWKS == "" {
		p.failedAt, p.failed = p.now(), fmt.Errorf("the provider's discovery document names no jwks_uri: %v", err)
		return nil, p.failed
	}
	p.prov = prov
	p.cli = oidc.NewVerifier(p.cfg.OIDC.Issuer, &keySet{url: meta.JWKS, hc: p.hc, now: p.now},
		&oidc.Config{ClientID: p.cfg.CLIClientID, Now: p.now, SupportedSigningAlgs: meta.Algs})
	return prov, nil
}

// Issued says whether token says it comes from the provider (its iss,
// read unverified): the gRPC edge then verifies it as a person's ID
// token, not as a JWT-SVID. Always false without console.cli_client_id.
func (p *People) Issued(token string) bool {
	if p == nil || p.cfg.CLIClientID == "" || len(token) > attest.MaxJWTSize {
		return false
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return false
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return false
	}
	var c struct {
		Iss string `json:"iss"`
	}
	return json.Unmarshal(raw, &c) == nil && c.Iss != "" && c.Iss == p.cfg.OIDC.Issuer
}

// Verify verifies a person's ID token from `atfctl login`: the
// provider's signature, its issuer, the audience atfctl's client
// (console.cli_client_id), its expiry; a token older than
// console.session_ttl is refused as a console session would be. The
// person's roles come from the token's roles claim alone (no userinfo:
// atfctl keeps no access token).
func (p *People) Verify(ctx context.Context, token string) (attest.Identity, error) {
	if _, err := p.provider(ctx); err != nil {
		return attest.Identity{}, fmt.Errorf("%w: the OpenID provider (console.oidc.issuer) cannot be reached to verify your sign-in: %v",
			attest.ErrUnauthenticated, err)
	}
	ctx = oidc.ClientContext(ctx, p.hc)
	idt, err := p.cli.Verify(ctx, token)
	if err != nil {
		return attest.Identity{}, fmt.Errorf("%w: your sign-in is not valid here (%v); run 'atfctl login' again", attest.ErrUnauthenticated, err)
	}
	claims := map[string]any{}
	if err := idt.Claims(&claims); err != nil {
		return attest.Identity{}, fmt.Errorf("%w: the ID token's claims: %v", attest.ErrUnauthenticated, err)
	}
	// A token for several clients must say it was issued to atfctl's
	// (OpenID Connect Core 3.1.3.7): another client could replay it here.
	if azp, _ := claims["azp"].(string); (len(idt.Audience) > 1 || azp != "") && azp != p.cfg.CLIClientID {
		return attest.Identity{}, fmt.Errorf("%w: the ID token was issued to client %q, not atfctl's (console.cli_client_id); run 'atfctl login' again",
			attest.ErrUnauthenticated, azp)
	}
	h := p.human(idt, claims)
	// Every call verifies the token again, so the authentication's age
	// is judged against the provider's auth_time itself (zero if it does
	// not say: then no act that needs a fresh one is allowed).
	h.AuthTime = claimTime(claims["auth_time"])
	exp := idt.Expiry
	if end := idt.IssuedAt.Add(p.cfg.SessionTTL); end.Before(exp) {
		exp = end
	}
	if !p.now().Before(exp) {
		return attest.Identity{}, fmt.Errorf("%w: your sign-in is older than console.session_ttl (%s); run 'atfctl login' again",
			attest.ErrUnauthenticated, p.cfg.SessionTTL)
	}
	return attest.Identity{Method: attest.OIDC, ExpiresAt: exp, Human: h}, nil
}

// human is the person an ID token names, with claims (the token's, and
// userinfo's for the console); when they authenticated is the caller's
// to say (authAge, or auth_time itself).
func (p *People) human(idt *oidc.IDToken, claims map[string]any) *attest.Human {
	h := &attest.Human{Issuer: idt.Issuer, Subject: idt.Subject, Roles: p.roles(claims[p.cfg.RolesClaim])}
	h.Name, _ = claims["name"].(string)
	if h.Name == "" {
		h.Name, _ = claims["preferred_username"].(string)
	}
	if h.Name == "" {
		h.Name = idt.Subject
	}
	if v, _ := claims["email_verified"].(bool); v {
		h.Email, _ = claims["email"].(string)
	}
	return h
}

// authAge is how long before the token the person authenticated, judged
// by the provider's own clock (auth_time against iat), so that a skew
// between its clock and atfd's changes nothing; known is false if the
// token does not say (no auth_time).
func authAge(idt *oidc.IDToken, claims map[string]any) (age time.Duration, known bool) {
	at := claimTime(claims["auth_time"])
	if at.IsZero() {
		return 0, false
	}
	return max(idt.IssuedAt.Sub(at), 0), true
}

// roles maps the values of the roles claim to console roles.
func (p *People) roles(claim any) []string {
	var groups []string
	switch v := claim.(type) {
	case string:
		groups = strings.Fields(v)
	case []any:
		for _, g := range v {
			if s, ok := g.(string); ok {
				groups = append(groups, s)
			}
		}
	}
	var out []string
	for _, role := range config.ConsoleRoles {
		if slices.ContainsFunc(p.cfg.Roles[role], func(g string) bool { return slices.Contains(groups, g) }) {
			out = append(out, role)
		}
	}
	return out
}

func claimTime(v any) time.Time {
	if f, ok := v.(float64); ok && f > 0 {
		return time.Unix(int64(f), 0)
	}
	return time.Time{}
}
