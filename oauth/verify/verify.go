package verify

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Errors a verification ends with. Every refusal wraps one of them; the
// middleware maps them to RFC 6750 responses and gRPC status codes.
var (
	// ErrInvalidToken: the token is missing, malformed, forged, expired,
	// revoked, or meant for another server (HTTP 401, invalid_token).
	ErrInvalidToken = errors.New("verify: invalid token")
	// ErrInsufficientScope: the token is good but lacks a scope the route
	// requires (HTTP 403, insufficient_scope).
	ErrInsufficientScope = errors.New("verify: insufficient scope")
	// ErrRevocationUnknown: the token may have been revoked while the
	// revocation stream was not heard, and no introspection endpoint is
	// configured (HTTP 503): retry once the stream is back.
	ErrRevocationUnknown = errors.New("verify: revocation status unknown")
)

// Defaults and bounds of Config.
const (
	DefaultLeeway          = 30 * time.Second
	MaxLeeway              = 5 * time.Minute
	DefaultRefetchInterval = 10 * time.Second
	DefaultKeysStaleFor    = time.Hour
	// MinCacheTTL and MaxCacheTTL bound how long a fetched JWK Set is used
	// before it is fetched again, whatever its Cache-Control says;
	// DefaultCacheTTL applies when it says nothing.
	MinCacheTTL     = 30 * time.Second
	MaxCacheTTL     = 10 * time.Minute
	DefaultCacheTTL = 5 * time.Minute
	// MaxTokenSize bounds the tokens parsed: an oversized one costs a
	// length check.
	MaxTokenSize = 8 << 10
)

// Config configures a Verifier.
type Config struct {
	// Issuer is the token issuer's URL, exactly as the tokens' iss claim
	// spells it (atfd's oauth.issuer). Required, https.
	Issuer string
	// Audience is this server's resource indicator: a token's aud must be
	// exactly this. Required.
	Audience string
	// Client fetches the JWK Set and follows revocation events. It must
	// trust the issuer's certificate (atfd's X.509-SVID): build its
	// transport from go-spiffe's tlsconfig.MTLSClientConfig, or a CA pool
	// holding the SPIFFE bundle. Required.
	Client *http.Client
	// JWKSURL is where the JWK Set is; default Issuer + "/.well-known/jwks.json".
	JWKSURL string
	// Leeway is the clock skew allowed on exp, nbf and iat; 0 means
	// DefaultLeeway, a negative value none. At most MaxLeeway.
	Leeway time.Duration
	// RefetchInterval is the least time between two fetches of the JWK Set
	// for a kid it does not hold, so that tokens with forged kids cannot
	// make the Verifier hammer the issuer. Default DefaultRefetchInterval.
	RefetchInterval time.Duration
	// KeysStaleFor is how long after its expiry a JWK Set is still used
	// when fetching a new one fails. Default DefaultKeysStaleFor.
	KeysStaleFor time.Duration
	// Push, when set, makes tokens subject to the issuer's revocation
	// events; Subscribe must then run.
	Push *Push
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger receives fetch and stream failures; default slog.Default().
	// Tokens are never logged.
	Logger *slog.Logger
}

// Verifier verifies access tokens. It is safe for concurrent use.
type Verifier struct {
	cfg    Config
	leeway time.Duration
	keys   *keyCache
	revs   *revocations // nil without Push
	seen   seen
}

// New returns a Verifier for cfg. It does no I/O: the JWK Set is fetched
// on the first token.
func New(cfg Config) (*Verifier, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.JWKSURL == "" {
		cfg.JWKSURL = cfg.Issuer + "/.well-known/jwks.json"
	}
	leeway := cfg.Leeway
	switch {
	case leeway == 0:
		leeway = DefaultLeeway
	case leeway < 0:
		leeway = 0
	}
	v := &Verifier{cfg: cfg, leeway: leeway, keys: newKeyCache(cfg)}
	if cfg.Push != nil {
		v.revs = newRevocations(cfg, *cfg.Push, leeway)
	}
	return v, nil
}

func (c Config) validate() error {
	iss, err := url.Parse(c.Issuer)
	switch {
	case c.Issuer == "":
		return errors.New("verify: Config.Issuer is required")
	case err != nil || iss.Scheme != "https" || iss.Host == "":
		return fmt.Errorf("verify: Config.Issuer %q must be an https URL", c.Issuer)
	case strings.HasSuffix(c.Issuer, "/"):
		return fmt.Errorf("verify: Config.Issuer %q must not end with a slash: tokens name the issuer without one", c.Issuer)
	case c.Audience == "":
		return errors.New("verify: Config.Audience is required: an empty audience would accept tokens meant for any server")
	case c.Client == nil:
		return errors.New("verify: Config.Client is required: an HTTPS client that trusts the issuer's SVID")
	case c.Leeway > MaxLeeway:
		return fmt.Errorf("verify: Config.Leeway %s is over %s", c.Leeway, MaxLeeway)
	case c.RefetchInterval < 0 || c.KeysStaleFor < 0:
		return errors.New("verify: Config.RefetchInterval and Config.KeysStaleFor must not be negative")
	}
	if c.Push != nil {
		return c.Push.validate()
	}
	return nil
}

// Verify checks token and returns its claims when it is a valid token for
// this server, not revoked, granting every scope in required. The error
// wraps ErrInvalidToken, ErrInsufficientScope or ErrRevocationUnknown; it
// never contains the token.
func (v *Verifier) Verify(ctx context.Context, token string, required ...string) (*Claims, error) {
	c, err := v.verifyToken(ctx, token)
	if err != nil {
		return nil, err
	}
	if v.revs != nil {
		if err := v.revs.check(ctx, c, token); err != nil {
			return nil, err
		}
	}
	if err := c.Require(required...); err != nil {
		return nil, err
	}
	return c, nil
}

// verifyToken checks the signature and claims of token.
func (v *Verifier) verifyToken(ctx context.Context, token string) (*Claims, error) {
	if len(token) > MaxTokenSize {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrInvalidToken, MaxTokenSize)
	}
	sum := sha256.Sum256([]byte(token))
	if e, ok := v.seen.get(sum); ok {
		// The signature verified before; its key must still be published.
		key, err := v.keys.key(ctx, e.kid)
		if err != nil {
			return nil, err
		}
		if !key.Equal(e.key) {
			return nil, fmt.Errorf("%w: the key id names another key now", ErrInvalidToken)
		}
		if err := v.checkClaims(e.claims); err != nil {
			return nil, err
		}
		return e.claims, nil
	}
	p, err := parseJWS(token)
	if err != nil {
		return nil, err
	}
	key, err := v.keys.key(ctx, p.header.Kid)
	if err != nil {
		return nil, err
	}
	if !p.verify(key) {
		return nil, fmt.Errorf("%w: bad signature", ErrInvalidToken)
	}
	c, err := decodeClaims(p.payload)
	if err != nil {
		return nil, err
	}
	if err := v.checkClaims(c); err != nil {
		return nil, err
	}
	v.seen.add(sum, seenToken{kid: p.header.Kid, key: key, claims: c}, v.cfg.Now())
	return c, nil
}

// checkClaims checks iss, aud and the times of verified claims.
func (v *Verifier) checkClaims(c *Claims) error {
	now := v.cfg.Now()
	switch {
	case c.Issuer != v.cfg.Issuer:
		return fmt.Errorf("%w: issuer is not %s", ErrInvalidToken, v.cfg.Issuer)
	case c.Audience != v.cfg.Audience:
		return fmt.Errorf("%w: audience is not this server (%s)", ErrInvalidToken, v.cfg.Audience)
	case !now.Before(c.Expiry.Add(v.leeway)):
		return fmt.Errorf("%w: expired at %s", ErrInvalidToken, c.Expiry.UTC().Format(time.RFC3339))
	case !c.NotBefore.IsZero() && now.Add(v.leeway).Before(c.NotBefore):
		return fmt.Errorf("%w: not valid before %s", ErrInvalidToken, c.NotBefore.UTC().Format(time.RFC3339))
	case now.Add(v.leeway).Before(c.IssuedAt):
		return fmt.Errorf("%w: issued in the future (%s)", ErrInvalidToken, c.IssuedAt.UTC().Format(time.RFC3339))
	}
	return nil
}
