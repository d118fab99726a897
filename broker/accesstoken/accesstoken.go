// Package accesstoken issues and checks the broker's OAuth 2.0 access
// tokens: JWTs in the RFC 9068 profile, for one resource (a role of kind
// jwt), carrying the delegation chain as nested RFC 8693 act claims,
// signed ES256 by a Vault transit key whose private half never leaves
// Vault (docs/oauth.md).
//
// # Basics
//
// Issue turns a decided Plan (package decide) into a signed token: one
// transit sign call per token, no signature cached or reused. JWKS is the
// key set verifiers fetch: the key's newest version and every older one
// that may still have signed an unexpired token (Overlap). Verify checks a
// token of this broker against the same set, for introspection and
// revocation by the holder.
//
// # Caveats
//
// The key versions are read from Vault at New and on Refresh (every
// minute while the broker serves, and after a rotation); a version
// another replica added is used for signing once read, and a token signed
// with it verifies here once read. A version trimmed from the set
// (older than Overlap past its successor) stops verifying here and at
// every verifier that refreshes its JWKS.
package accesstoken

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/vault"
)

// Transit is the Vault transit engine as the tokens use it.
type Transit interface {
	ReadTransitKey(ctx context.Context, mount, name string) (vault.TransitKey, error)
	RotateTransitKey(ctx context.Context, mount, name string) error
	TransitSign(ctx context.Context, mount, name string, version int, input []byte) ([]byte, error)
}

// Config is what Tokens need.
type Config struct {
	Transit Transit
	// Mount and Key name the transit key, of type ecdsa-p256.
	Mount, Key string
	// Issuer is the tokens' iss.
	Issuer string
	// Overlap is how long a key version stays published after its
	// successor appears: the longest lifetime of a token.
	Overlap time.Duration
	Now     func() time.Time
}

// Type is the JOSE typ of an access token (RFC 9068 §2.1).
const Type = "at+jwt"

// Errors of Verify; test with errors.Is.
var (
	ErrMalformed = errors.New("accesstoken: not a token of this broker")
	ErrSignature = errors.New("accesstoken: signature does not verify with a published key")
)

// Tokens issues and verifies access tokens.
type Tokens struct {
	cfg Config

	mu     sync.RWMutex
	latest int
	keys   []published // the published versions, oldest first
	jwks   []byte
}

// published is a key version in the JWKS.
type published struct {
	kid string
	pub *ecdsa.PublicKey
}

// New reads the transit key and returns Tokens signing with it.
func New(ctx context.Context, cfg Config) (*Tokens, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := &Tokens{cfg: cfg}
	if err := t.Refresh(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

// Refresh reads the key's versions from Vault and republishes the set.
func (t *Tokens) Refresh(ctx context.Context) error {
	k, err := t.cfg.Transit.ReadTransitKey(ctx, t.cfg.Mount, t.cfg.Key)
	if err != nil {
		return fmt.Errorf("accesstoken: transit key %s/keys/%s (created by deploy/vault/setup.sh): %w", t.cfg.Mount, t.cfg.Key, err)
	}
	if k.Type != "ecdsa-p256" {
		return fmt.Errorf("accesstoken: transit key %s/keys/%s is of type %q; tokens are ES256, which needs ecdsa-p256", t.cfg.Mount, t.cfg.Key, k.Type)
	}
	keys, err := t.publish(k)
	if err != nil {
		return err
	}
	jwks, err := encodeJWKS(keys)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.latest, t.keys, t.jwks = k.Latest, keys, jwks
	return nil
}

// publish picks the versions to publish: the newest, and each older one
// whose successor is younger than the overlap.
func (t *Tokens) publish(k vault.TransitKey) ([]published, error) {
	now := t.cfg.Now()
	var keys []published
	for i, v := range k.Versions {
		if v.Version != k.Latest && (i+1 >= len(k.Versions) || now.Sub(k.Versions[i+1].Created) > t.cfg.Overlap) {
			continue
		}
		pub, err := parseKey(v.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("accesstoken: transit key %s version %d: %w", t.cfg.Key, v.Version, err)
		}
		keys = append(keys, published{kid: t.kid(v.Version), pub: pub})
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("accesstoken: transit key %s: Vault lists no version %d", t.cfg.Key, k.Latest)
	}
	return keys, nil
}

func (t *Tokens) kid(version int) string { return t.cfg.Key + "-" + strconv.Itoa(version) }

func parseKey(pemKey string) (*ecdsa.PublicKey, error) {
	b, _ := pem.Decode([]byte(pemKey))
	if b == nil {
		return nil, errors.New("public key is not PEM")
	}
	k, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("public key is not P-256")
	}
	return pub, nil
}

// RotateIfDue rotates the key if its newest version is at least every
// old, and refreshes the published set either way.
func (t *Tokens) RotateIfDue(ctx context.Context, every time.Duration) (rotated bool, err error) {
	k, err := t.cfg.Transit.ReadTransitKey(ctx, t.cfg.Mount, t.cfg.Key)
	if err != nil {
		return false, fmt.Errorf("accesstoken: read key for rotation: %w", err)
	}
	if n := len(k.Versions); n > 0 && t.cfg.Now().Sub(k.Versions[n-1].Created) >= every {
		return true, t.Rotate(ctx)
	}
	return false, t.Refresh(ctx)
}

// Rotate adds a version to the key, signs with it from now on, and
// republishes the set.
func (t *Tokens) Rotate(ctx context.Context) error {
	if err := t.cfg.Transit.RotateTransitKey(ctx, t.cfg.Mount, t.cfg.Key); err != nil {
		return fmt.Errorf("accesstoken: rotate key: %w", err)
	}
	return t.Refresh(ctx)
}

// JWKS is the published key set, as JSON (RFC 7517).
func (t *Tokens) JWKS() []byte {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.jwks
}

func encodeJWKS(keys []published) ([]byte, error) {
	type jwk struct {
		Kty string `json:"kty"`
		Crv string `json:"crv"`
		X   string `json:"x"`
		Y   string `json:"y"`
		Kid string `json:"kid"`
		Alg string `json:"alg"`
		Use string `json:"use"`
	}
	set := struct {
		Keys []jwk `json:"keys"`
	}{}
	for _, k := range slices.Backward(keys) {
		set.Keys = append(set.Keys, jwk{Kty: "EC", Crv: "P-256", X: coord(k.pub.X), Y: coord(k.pub.Y), Kid: k.kid, Alg: "ES256", Use: "sig"})
	}
	return json.Marshal(set)
}

// coord is a P-256 coordinate as a JWK has it: 32 bytes, base64url.
func coord(n *big.Int) string {
	return base64.RawURLEncoding.EncodeToString(n.FillBytes(make([]byte, 32)))
}

// Claims are an access token's claims (docs/oauth.md).
type Claims struct {
	Issuer     string   `json:"iss"`
	Subject    string   `json:"sub"`
	Audience   string   `json:"aud"`
	IssuedAt   int64    `json:"iat"`
	NotBefore  int64    `json:"nbf"`
	Expiry     int64    `json:"exp"`
	ID         string   `json:"jti"`
	ClientID   string   `json:"client_id"`
	Scope      string   `json:"scope,omitempty"`
	Act        *Actor   `json:"act,omitempty"`
	Level      string   `json:"atf_level"`
	DecisionID string   `json:"atf_decision_id"`
	Lineage    []string `json:"atf_lineage"`
}

// Actor is an RFC 8693 actor claim: who acted, and for whom (Act).
type Actor struct {
	Subject string `json:"sub"`
	Act     *Actor `json:"act,omitempty"`
}

// claimsOf are the claims of the token p plans, issued at now.
func (t *Tokens) claimsOf(p decide.Plan, now time.Time) (Claims, error) {
	scopes := p.Role.Scopes
	if len(p.Scopes) > 0 {
		for _, sc := range p.Scopes {
			if !slices.Contains(p.Role.Scopes, sc) {
				return Claims{}, fmt.Errorf("accesstoken: scope %q is not one of role %s's", sc, p.Role.Name)
			}
		}
		scopes = p.Scopes
	}
	chain := p.Chain
	if len(chain) == 0 {
		chain = []string{p.Caller}
	}
	var act *Actor
	for _, id := range chain[:len(chain)-1] {
		act = &Actor{Subject: id, Act: act}
	}
	lineage := []string{store.AgentNode(chain[0])}
	for _, g := range p.GrantIDs {
		lineage = append(lineage, store.GrantNode(g))
	}
	// The decision capped the lifetime at the chain's expiry a moment ago:
	// exp holds to it from now.
	exp := now.Add(p.TTL)
	if !p.NotAfter.IsZero() && exp.After(p.NotAfter) {
		exp = p.NotAfter
	}
	return Claims{Issuer: t.cfg.Issuer, Subject: p.Caller, Audience: p.Role.Audience, IssuedAt: now.Unix(), NotBefore: now.Unix(),
		Expiry: exp.Unix(), ID: edge.NewID(), ClientID: p.Caller, Scope: strings.Join(scopes, " "), Act: act,
		Level: p.Level.String(), DecisionID: p.Reasons.DecisionID, Lineage: lineage}, nil
}

// Issue signs the token p plans. Its jti is the credential's accessor.
func (t *Tokens) Issue(ctx context.Context, p decide.Plan) (vault.Credential, error) {
	// Whole seconds: exp never exceeds what was decided.
	now := t.cfg.Now().Truncate(time.Second)
	c, err := t.claimsOf(p, now)
	if err != nil {
		return vault.Credential{}, err
	}
	t.mu.RLock()
	version := t.latest
	t.mu.RUnlock()
	header, _ := json.Marshal(map[string]string{"alg": "ES256", "typ": Type, "kid": t.kid(version)})
	body, err := json.Marshal(c)
	if err != nil {
		return vault.Credential{}, fmt.Errorf("accesstoken: encode claims: %w", err)
	}
	input := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(body)
	sig, err := t.cfg.Transit.TransitSign(ctx, t.cfg.Mount, t.cfg.Key, version, []byte(input))
	if err != nil {
		return vault.Credential{}, err
	}
	// Its scopes are what it grants, as a Vault token's policies are: the
	// record and its audit record list them.
	return vault.Credential{Token: input + "." + base64.RawURLEncoding.EncodeToString(sig), Accessor: c.ID,
		Policies: strings.Fields(c.Scope), IssuedAt: now, ExpiresAt: time.Unix(c.Expiry, 0)}, nil
}

// Verify checks that token is an access token this broker signed with a
// published key and returns its claims. It does not judge its lifetime
// or whether it was revoked.
func (t *Tokens) Verify(token string) (Claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return Claims{}, ErrMalformed
	}
	var h struct{ Alg, Typ, Kid string }
	raw, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || json.Unmarshal(raw, &h) != nil || h.Alg != "ES256" || h.Typ != Type {
		return Claims{}, ErrMalformed
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return Claims{}, ErrSignature
	}
	t.mu.RLock()
	i := slices.IndexFunc(t.keys, func(k published) bool { return k.kid == h.Kid })
	var pub *ecdsa.PublicKey
	if i >= 0 {
		pub = t.keys[i].pub
	}
	t.mu.RUnlock()
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if pub == nil || !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return Claims{}, ErrSignature
	}
	var c Claims
	if raw, err = base64.RawURLEncoding.DecodeString(parts[1]); err != nil || json.Unmarshal(raw, &c) != nil || c.Issuer != t.cfg.Issuer {
		return Claims{}, ErrMalformed
	}
	return c, nil
}
