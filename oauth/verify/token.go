package verify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strings"
	"time"
)

// jws is a compact JWS split and decoded, not yet verified.
type jws struct {
	header    header
	signed    string // base64url(header) "." base64url(payload)
	payload   []byte
	signature []byte
}

type header struct {
	Alg  string          `json:"alg"`
	Typ  string          `json:"typ"`
	Kid  string          `json:"kid"`
	Crit json.RawMessage `json:"crit"`
}

// parseJWS splits a compact JWS and checks its header: alg ES256 only,
// typ at+jwt (RFC 9068 §4), a kid, no crit extension.
func parseJWS(token string) (*jws, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: no token", ErrInvalidToken)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: not a compact JWS", ErrInvalidToken)
	}
	var p jws
	if err := decodeSegment(parts[0], &p.header); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrInvalidToken, err)
	}
	h := p.header
	switch {
	case h.Alg != "ES256":
		return nil, fmt.Errorf("%w: alg must be ES256", ErrInvalidToken)
	case !strings.EqualFold(h.Typ, "at+jwt") && !strings.EqualFold(h.Typ, "application/at+jwt"):
		return nil, fmt.Errorf("%w: typ must be at+jwt", ErrInvalidToken)
	case h.Kid == "":
		return nil, fmt.Errorf("%w: no kid", ErrInvalidToken)
	case h.Crit != nil:
		return nil, fmt.Errorf("%w: crit header parameters are not supported", ErrInvalidToken)
	}
	var err error
	if p.payload, err = base64.RawURLEncoding.DecodeString(parts[1]); err != nil {
		return nil, fmt.Errorf("%w: payload is not base64url", ErrInvalidToken)
	}
	if p.signature, err = base64.RawURLEncoding.DecodeString(parts[2]); err != nil {
		return nil, fmt.Errorf("%w: signature is not base64url", ErrInvalidToken)
	}
	p.signed = token[:len(parts[0])+1+len(parts[1])]
	return &p, nil
}

func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return fmt.Errorf("not base64url")
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("not a JSON object")
	}
	return nil
}

// verify checks an ES256 signature: R || S, 32 bytes each (RFC 7518 §3.4).
func (p *jws) verify(key *ecdsa.PublicKey) bool {
	if len(p.signature) != 64 {
		return false
	}
	sum := sha256.Sum256([]byte(p.signed))
	r := new(big.Int).SetBytes(p.signature[:32])
	s := new(big.Int).SetBytes(p.signature[32:])
	return ecdsa.Verify(key, sum[:], r, s)
}

// Actor is one delegator of an RFC 8693 act chain.
type Actor struct {
	Subject string // the actor's SPIFFE ID
}

// Claims are a verified token's claims. They are shared by every request
// that presents the same token: read them, never modify them.
type Claims struct {
	Issuer   string
	Subject  string // the holder's SPIFFE ID
	Audience string // this server
	ClientID string
	JTI      string
	Scopes   []string
	// Level is the holder's maturity level at issuance: intern, junior,
	// senior or principal.
	Level      string
	DecisionID string // the broker's decision id, for its audit trail
	// Lineage lists the lineage nodes the token depends on, root first:
	// "agent:<root SPIFFE ID>", then "grant:<id>" for each grant.
	Lineage                     []string
	IssuedAt, NotBefore, Expiry time.Time
	actors                      []Actor
}

// Actors returns the delegation chain, immediate actor first: for a chain
// A → B → C held by C, [B, A]. It is empty for a token on the holder's own
// authority.
func (c *Claims) Actors() []Actor { return c.actors }

// Depth is the number of delegators behind the holder.
func (c *Claims) Depth() int { return len(c.actors) }

// Require returns an error wrapping ErrInsufficientScope unless the token
// grants every one of scopes: for a handler whose scopes depend on the
// request (an MCP method), after the middleware.
func (c *Claims) Require(scopes ...string) error {
	for _, s := range scopes {
		if !slices.Contains(c.Scopes, s) {
			return fmt.Errorf("%w: scope %q is required", ErrInsufficientScope, s)
		}
	}
	return nil
}

// rawClaims is the JSON form of the claims.
type rawClaims struct {
	Iss        string          `json:"iss"`
	Sub        string          `json:"sub"`
	Aud        json.RawMessage `json:"aud"`
	ClientID   string          `json:"client_id"`
	JTI        string          `json:"jti"`
	Scope      string          `json:"scope"`
	Exp        *float64        `json:"exp"`
	Nbf        *float64        `json:"nbf"`
	Iat        *float64        `json:"iat"`
	Act        *rawActor       `json:"act"`
	Level      string          `json:"atf_level"`
	DecisionID string          `json:"atf_decision_id"`
	Lineage    []string        `json:"atf_lineage"`
}

type rawActor struct {
	Sub string    `json:"sub"`
	Act *rawActor `json:"act"`
}

// decodeClaims decodes a verified payload and checks that the claims RFC
// 9068 §2.2 requires are present.
func decodeClaims(payload []byte) (*Claims, error) {
	var r rawClaims
	if err := json.Unmarshal(payload, &r); err != nil {
		return nil, fmt.Errorf("%w: claims are not a JSON object", ErrInvalidToken)
	}
	aud, err := audience(r.Aud)
	if err != nil {
		return nil, err
	}
	switch {
	case r.Iss == "", r.Sub == "", r.ClientID == "", r.JTI == "":
		return nil, fmt.Errorf("%w: iss, sub, client_id and jti are required", ErrInvalidToken)
	case r.Exp == nil || r.Iat == nil:
		return nil, fmt.Errorf("%w: exp and iat are required", ErrInvalidToken)
	}
	c := &Claims{
		Issuer: r.Iss, Subject: r.Sub, Audience: aud, ClientID: r.ClientID, JTI: r.JTI,
		Scopes: strings.Fields(r.Scope), Level: r.Level, DecisionID: r.DecisionID, Lineage: r.Lineage,
		Expiry: numericDate(*r.Exp), IssuedAt: numericDate(*r.Iat),
	}
	if r.Nbf != nil {
		c.NotBefore = numericDate(*r.Nbf)
	}
	for a := r.Act; a != nil; a = a.Act {
		if a.Sub == "" {
			return nil, fmt.Errorf("%w: an act claim has no sub", ErrInvalidToken)
		}
		c.actors = append(c.actors, Actor{Subject: a.Sub})
	}
	return c, nil
}

// audience returns the one audience of an aud claim: a string, or an array
// of exactly one string (see the package's Caveats).
func audience(raw json.RawMessage) (string, error) {
	var one string
	if json.Unmarshal(raw, &one) == nil && one != "" {
		return one, nil
	}
	var many []string
	if bytes.HasPrefix(bytes.TrimSpace(raw), []byte("[")) && json.Unmarshal(raw, &many) == nil && len(many) == 1 && many[0] != "" {
		return many[0], nil
	}
	return "", fmt.Errorf("%w: aud must name exactly one audience", ErrInvalidToken)
}

func numericDate(f float64) time.Time {
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9))
}
