// Package attest turns a caller's SPIFFE SVID into a verified identity.
//
// A caller proves who it is with an X.509-SVID presented over mutual TLS or
// with a JWT-SVID bearer token whose audience is the broker's own SPIFFE ID.
// Either is verified against the trust bundles of an allowlist of trust
// domains, on every call: a connection opened with an SVID that has since
// expired, or whose authority has left the bundle, is refused on its next
// call. An X.509 chain's signatures are checked once and the chain
// remembered (verified.go); its validity and its authority's place in the
// bundle are checked on every call. Nothing else identifies a caller; identity named in a request body is
// never trusted.
//
// SPIFFE IDs are parsed strictly: an ID must have a path (a trust domain on
// its own names no workload), and go-spiffe's parser already refuses
// uppercase trust domains, dot segments and percent-encoding.
package attest

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrUnauthenticated wraps every verification failure.
var ErrUnauthenticated = errors.New("attest: unauthenticated")

// MaxJWTSize bounds the bearer tokens the verifier will parse, so an
// oversized token costs nothing but a length check.
const MaxJWTSize = 8 << 10

// Method is how a caller proved its identity.
type Method int

// Authentication methods.
const (
	X509SVID Method = iota + 1
	JWTSVID
	// OIDC is a person signed in through OpenID Connect (the web
	// console): the Identity's Human says who.
	OIDC
)

func (m Method) String() string {
	switch m {
	case X509SVID:
		return "x509-svid"
	case JWTSVID:
		return "jwt-svid"
	case OIDC:
		return "oidc"
	}
	return fmt.Sprintf("method(%d)", int(m))
}

// Identity is a verified caller: a workload (ID, from its SVID) or a
// person (Human, from OpenID Connect; ID is then zero).
type Identity struct {
	ID     spiffeid.ID
	Method Method
	// ExpiresAt is when the presented SVID (or the person's session) stops
	// being valid.
	ExpiresAt time.Time
	// Human is the person, for Method OIDC; nil for a workload.
	Human *Human
}

// Principal is the caller as the broker records it (audit actor, approver,
// signer): the SPIFFE ID of a workload, Human.Principal of a person.
func (id Identity) Principal() string {
	if id.Human != nil {
		return id.Human.Principal()
	}
	return id.ID.String()
}

// Human is a person whose OpenID Connect ID token the broker verified.
// Issuer and Subject identify them; the rest is what the provider said
// about them at sign-in.
type Human struct {
	Issuer  string
	Subject string
	// Name is for display only: never compared.
	Name string
	// Email is set only when the provider verified it.
	Email string
	// Roles are the broker roles the provider's claims map to (console
	// configuration): admin, approver, security_operator, auditor.
	Roles []string
	// AuthTime is when the person last authenticated at the provider.
	AuthTime time.Time
}

// Principal is "oidc:" + issuer + "#" + subject: unique per person (an
// OpenID issuer has no fragment, so the first '#' splits it), stable
// across sign-ins, and never a SPIFFE ID.
func (h *Human) Principal() string { return "oidc:" + h.Issuer + "#" + h.Subject }

// Has says whether the person holds role.
func (h *Human) Has(role string) bool { return h != nil && slices.Contains(h.Roles, role) }

// Config configures a Verifier.
type Config struct {
	// TrustDomains lists the trust domains whose workloads may call. Required.
	TrustDomains []spiffeid.TrustDomain
	// X509Bundles holds the X.509 authorities of those trust domains.
	// Required.
	X509Bundles x509bundle.Source
	// JWTBundles holds their JWT authorities. Nil disables JWT-SVIDs.
	JWTBundles jwtbundle.Source
	// Audience is the audience a JWT-SVID must carry: the broker's own
	// SPIFFE ID. Required when JWTBundles is set.
	Audience string
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Verifier verifies SVIDs. It is safe for concurrent use.
type Verifier struct {
	cfg  Config
	seen verifiedChains
}

// New returns a Verifier for cfg.
func New(cfg Config) (*Verifier, error) {
	switch {
	case len(cfg.TrustDomains) == 0:
		return nil, errors.New("attest: at least one trusted trust domain is required")
	case cfg.X509Bundles == nil:
		return nil, errors.New("attest: an X.509 bundle source is required")
	case cfg.JWTBundles != nil && cfg.Audience == "":
		return nil, errors.New("attest: JWT-SVIDs need an audience (the broker's SPIFFE ID); an empty audience would accept tokens meant for anyone")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Verifier{cfg: cfg}, nil
}

// ParseID parses a workload SPIFFE ID strictly: it must have a path.
func ParseID(s string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("attest: invalid SPIFFE ID %q: %w", s, err)
	}
	if id.Path() == "" {
		return spiffeid.ID{}, fmt.Errorf("attest: invalid SPIFFE ID %q: a workload ID needs a path after the trust domain", s)
	}
	return id, nil
}

// CheckID checks that id is a workload ID of a trusted trust domain.
func (v *Verifier) CheckID(id spiffeid.ID) error {
	if id.Path() == "" {
		return fmt.Errorf("%w: SPIFFE ID %q has no path", ErrUnauthenticated, id)
	}
	if !slices.Contains(v.cfg.TrustDomains, id.TrustDomain()) {
		return fmt.Errorf("%w: trust domain %q is not trusted by this broker", ErrUnauthenticated, id.TrustDomain().Name())
	}
	return nil
}

// VerifyX509 verifies an X.509-SVID chain, leaf first, as of now.
func (v *Verifier) VerifyX509(chain []*x509.Certificate) (Identity, error) {
	if len(chain) == 0 {
		return Identity{}, fmt.Errorf("%w: no client certificate", ErrUnauthenticated)
	}
	// The trust domain is checked before any signature work.
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return Identity{}, fmt.Errorf("%w: client certificate is not an X.509-SVID: %v", ErrUnauthenticated, err)
	}
	if err := v.CheckID(id); err != nil {
		return Identity{}, err
	}
	now := v.cfg.Now()
	key := chainKey(chain)
	if v.seen.still(key, id.TrustDomain(), v.cfg.X509Bundles, now) {
		return Identity{ID: id, Method: X509SVID, ExpiresAt: chain[0].NotAfter}, nil
	}
	_, paths, err := x509svid.Verify(chain, v.cfg.X509Bundles, x509svid.WithTime(now))
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	v.seen.add(key, paths, now)
	return Identity{ID: id, Method: X509SVID, ExpiresAt: chain[0].NotAfter}, nil
}

// VerifyJWT verifies a JWT-SVID bearer token. The token must name exactly
// one audience, the broker's: a token for several relying parties could be
// replayed to the broker by any of them.
func (v *Verifier) VerifyJWT(token string) (Identity, error) {
	if v.cfg.JWTBundles == nil {
		return Identity{}, fmt.Errorf("%w: JWT-SVIDs are not accepted by this broker", ErrUnauthenticated)
	}
	if len(token) > MaxJWTSize {
		return Identity{}, fmt.Errorf("%w: bearer token longer than %d bytes", ErrUnauthenticated, MaxJWTSize)
	}
	if strings.Count(token, ".") != 2 {
		return Identity{}, fmt.Errorf("%w: bearer token is not a compact JWS", ErrUnauthenticated)
	}
	// Check the trust domain before the signature, from unverified claims.
	unverified, err := jwtsvid.ParseInsecure(token, []string{v.cfg.Audience})
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	if err := v.CheckID(unverified.ID); err != nil {
		return Identity{}, err
	}
	svid, err := jwtsvid.ParseAndValidate(token, v.cfg.JWTBundles, []string{v.cfg.Audience})
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	if len(svid.Audience) != 1 {
		return Identity{}, fmt.Errorf("%w: JWT-SVID names %d audiences; it must name only this broker", ErrUnauthenticated, len(svid.Audience))
	}
	// go-jose allows a minute of leeway; the broker's clock is the judge.
	if !v.cfg.Now().Before(svid.Expiry) {
		return Identity{}, fmt.Errorf("%w: JWT-SVID expired at %s", ErrUnauthenticated, svid.Expiry.Format(time.RFC3339))
	}
	return Identity{ID: svid.ID, Method: JWTSVID, ExpiresAt: svid.Expiry}, nil
}

// ServerTLSConfig returns the broker's TLS configuration: it serves svid
// and asks for a client certificate without judging it. The handshake still
// proves the client holds the certificate's key; the certificate itself is
// verified on every call (VerifyX509), so a caller gets an Unauthenticated
// status saying what is wrong rather than a bare TLS alert, and an SVID that
// expires or loses its authority mid-connection stops working at once.
// Callers that authenticate with a JWT-SVID present no certificate.
func (v *Verifier) ServerTLSConfig(svid x509svid.Source) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: tlsconfig.GetCertificate(svid),
		ClientAuth:     tls.RequestClientCert,
		// No resumption: every connection runs a full handshake.
		SessionTicketsDisabled: true,
	}
}
