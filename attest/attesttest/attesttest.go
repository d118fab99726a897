// Package attesttest is a trust domain whose keys a test holds: a CA and a
// JWT signing key, published in a SPIFFE bundle. With it a test mints the
// SVIDs that a careless or compromised issuer could sign and SPIRE never
// would, and checks that a verifier trusting the bundle refuses them.
//
// Forgeries lists them, each with the reason a verifier must give, so that
// the attest package and the broker's gRPC edge are held to the same cases.
package attesttest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Authority is a test trust domain's CA and JWT signing key.
type Authority struct {
	TD spiffeid.TrustDomain
	CA *x509.Certificate
	// KeyID names the JWT signing key in the bundle; random, so that
	// two authorities of one trust domain (before and after a rotation)
	// have different ones.
	KeyID string

	caKey  *ecdsa.PrivateKey
	jwtKey *ecdsa.PrivateKey
}

// New returns an authority for the trust domain td with fresh keys.
func New(t testing.TB, td string) *Authority {
	t.Helper()
	var kid [8]byte
	_, _ = rand.Read(kid[:]) // crypto/rand.Read never fails
	a := &Authority{TD: spiffeid.RequireTrustDomainFromString(td), KeyID: hex.EncodeToString(kid[:]), caKey: newKey(t), jwtKey: newKey(t)}
	a.CA = a.sign(t, &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"attesttest"}, CommonName: td},
		URIs:                  []*url.URL{a.TD.ID().URL()},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, nil, a.caKey)
	return a
}

// Bundle returns the trust domain's bundle: the CA and the JWT key.
func (a *Authority) Bundle() *spiffebundle.Bundle {
	b := spiffebundle.FromX509Authorities(a.TD, []*x509.Certificate{a.CA})
	_ = b.AddJWTAuthority(a.KeyID, a.jwtKey.Public()) // fails only on an empty key ID
	return b
}

// WriteBundle writes the bundle in SPIFFE (JWKS) format to a file in dir
// and returns its path, for atfd's spiffe.bundle_files.
func (a *Authority) WriteBundle(t testing.TB, dir string) string {
	t.Helper()
	raw, err := a.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, a.TD.Name()+".bundle.json")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// SVID is an X.509-SVID chain, leaf first, and the leaf's key.
type SVID struct {
	Chain []*x509.Certificate
	Key   crypto.Signer
}

// TLS returns the SVID as a TLS client or server certificate.
func (s SVID) TLS() tls.Certificate {
	c := tls.Certificate{PrivateKey: s.Key, Leaf: s.Chain[0]}
	for _, cert := range s.Chain {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c
}

// X509 returns a well-formed X.509-SVID for id, valid for an hour.
func (a *Authority) X509(t testing.TB, id spiffeid.ID) SVID {
	t.Helper()
	return a.leaf(t, id, nil)
}

// leaf mints an SVID for id after edit changes the leaf's template.
func (a *Authority) leaf(t testing.TB, id spiffeid.ID, edit func(*x509.Certificate)) SVID {
	t.Helper()
	tmpl := &x509.Certificate{
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if edit != nil {
		edit(tmpl)
	}
	key := newKey(t)
	return SVID{Chain: []*x509.Certificate{a.sign(t, tmpl, key, a.caKey)}, Key: key}
}

// sign signs tmpl for key with signer, by the CA; a nil key makes tmpl
// self-signed by signer.
func (a *Authority) sign(t testing.TB, tmpl *x509.Certificate, key, signer *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	parent := a.CA
	if key == nil {
		key, parent = signer, tmpl
	}
	return signCert(t, tmpl, parent, key.Public(), signer)
}

func signCert(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Minute)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(time.Hour)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// JWT returns a well-formed JWT-SVID for id with the one audience, valid
// for ttl.
func (a *Authority) JWT(t testing.TB, id spiffeid.ID, audience string, ttl time.Duration) string {
	t.Helper()
	return a.es256(t, a.header(), a.claims(id, []string{audience}, time.Now().Add(ttl)), a.jwtKey)
}

func (a *Authority) header() map[string]any {
	return map[string]any{"alg": "ES256", "kid": a.KeyID, "typ": "JWT"}
}

func (a *Authority) claims(id spiffeid.ID, audience []string, exp time.Time) map[string]any {
	now := time.Now()
	return map[string]any{"sub": id.String(), "aud": audience, "exp": exp.Unix(), "iat": now.Add(-time.Second).Unix()}
}

// es256 signs a compact JWS with key.
func (a *Authority) es256(t testing.TB, header, claims map[string]any, key *ecdsa.PrivateKey) string {
	t.Helper()
	input := encodeJSON(t, header) + "." + encodeJSON(t, claims)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + b64(sig)
}

// Forgery is an SVID that a verifier trusting the authority's bundle must
// refuse: a JWT-SVID (Token) or an X.509-SVID (SVID).
type Forgery struct {
	Name  string
	Token string
	SVID  SVID
	// WantErr is part of the reason the verifier must give.
	WantErr string
}

// JWTForgeries returns JWT-SVIDs for id that a verifier expecting the one
// audience must refuse. Expiry is judged by the wall clock: each token is
// made when the call is.
func (a *Authority) JWTForgeries(t testing.TB, id spiffeid.ID, audience string) []Forgery {
	t.Helper()
	now := time.Now()
	valid := func() map[string]any { return a.claims(id, []string{audience}, now.Add(5*time.Minute)) }
	with := func(m map[string]any, kv ...any) map[string]any {
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(m, kv[i].(string))
			} else {
				m[kv[i].(string)] = kv[i+1]
			}
		}
		return m
	}
	sign := func(header, claims map[string]any) string { return a.es256(t, header, claims, a.jwtKey) }
	unsigned := func(header, claims map[string]any) string {
		return encodeJSON(t, header) + "." + encodeJSON(t, claims) + "."
	}
	// HS256 keyed with the public key: the verifier must not treat the
	// bundle's key as an HMAC secret.
	spki, err := x509.MarshalPKIXPublicKey(a.jwtKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	hs256 := func(header, claims map[string]any) string {
		input := encodeJSON(t, header) + "." + encodeJSON(t, claims)
		mac := hmac.New(sha256.New, spki)
		mac.Write([]byte(input))
		return input + "." + b64(mac.Sum(nil))
	}
	good := sign(a.header(), valid())
	parts := strings.Split(good, ".")
	other := spiffeid.RequireFromPath(a.TD, "/someone-else")
	return []Forgery{
		{Name: "alg none", Token: unsigned(with(a.header(), "alg", "none"), valid()), WantErr: "unable to parse JWT token"},
		{Name: "HS256 keyed with the bundle's public key", Token: hs256(with(a.header(), "alg", "HS256"), valid()), WantErr: "unable to parse JWT token"},
		{Name: "no kid", Token: sign(with(a.header(), "kid", nil), valid()), WantErr: "token header missing key id"},
		{Name: "kid not in the bundle", Token: a.es256(t, with(a.header(), "kid", "retired"), valid(), newKey(t)), WantErr: `no JWT authority "retired" found`},
		{Name: "signed by another key under the bundle key's id", Token: a.es256(t, a.header(), valid(), newKey(t)), WantErr: "unable to get claims from token"},
		{Name: "payload swapped after signing", Token: parts[0] + "." + encodeJSON(t, with(valid(), "sub", other.String())) + "." + parts[2], WantErr: "unable to get claims from token"},
		{Name: "typ not JWT", Token: sign(with(a.header(), "typ", "at+jwt"), valid()), WantErr: "token header type"},
		{Name: "crit header", Token: sign(with(a.header(), "crit", []string{"exp"}, "exp", now.Unix()), valid()), WantErr: "unsupported critical header"},
		{Name: "no exp", Token: sign(a.header(), with(valid(), "exp", nil)), WantErr: "token missing exp claim"},
		// go-jose allows a minute of leeway; the verifier allows none.
		{Name: "expired 30s ago", Token: sign(a.header(), with(valid(), "exp", now.Add(-30*time.Second).Unix())), WantErr: "JWT-SVID expired at"},
		{Name: "expired 90s ago", Token: sign(a.header(), with(valid(), "exp", now.Add(-90*time.Second).Unix())), WantErr: "token has expired"},
		{Name: "not valid for 10 minutes", Token: sign(a.header(), with(valid(), "nbf", now.Add(10*time.Minute).Unix())), WantErr: "not valid yet"},
		{Name: "issued 10 minutes in the future", Token: sign(a.header(), with(valid(), "iat", now.Add(10*time.Minute).Unix())), WantErr: "issued in the future"},
		{Name: "two audiences", Token: sign(a.header(), with(valid(), "aud", []string{audience, "spiffe://" + a.TD.Name() + "/other-service"})), WantErr: "names 2 audiences"},
		{Name: "wrong audience", Token: sign(a.header(), with(valid(), "aud", []string{"spiffe://" + a.TD.Name() + "/other-service"})), WantErr: "expected audience"},
		{Name: "no audience", Token: sign(a.header(), with(valid(), "aud", nil)), WantErr: "expected audience"},
		{Name: "subject without path", Token: sign(a.header(), with(valid(), "sub", a.TD.IDString())), WantErr: "has no path"},
		{Name: "subject not a SPIFFE ID", Token: sign(a.header(), with(valid(), "sub", "admin")), WantErr: "invalid subject claim"},
		{Name: "no subject", Token: sign(a.header(), with(valid(), "sub", nil)), WantErr: "token missing subject claim"},
		// The trust domain comes from the unverified subject, so it is
		// checked before any key is looked up.
		{Name: "subject in an untrusted trust domain", Token: sign(a.header(), with(valid(), "sub", "spiffe://untrusted.test/agent")), WantErr: `trust domain "untrusted.test" is not trusted`},
		{Name: "JWS JSON serialization", Token: `{"payload":"` + parts[1] + `","protected":"` + parts[0] + `","signature":"` + parts[2] + `"}`, WantErr: "not a compact JWS"},
		{Name: "many dots", Token: strings.Repeat(".", 8000), WantErr: "not a compact JWS"},
		{Name: "4 MiB", Token: good + strings.Repeat("A", 4<<20), WantErr: "longer than 8192 bytes"},
		{Name: "a million dots", Token: strings.Repeat(".", 1_000_000), WantErr: "longer than 8192 bytes"},
	}
}

// X509Forgeries returns X.509-SVIDs for id, signed by the authority's CA
// unless said otherwise, that a verifier must refuse. victim is an ID of
// another trusted trust domain, whose SVIDs this CA must not be able to
// sign.
func (a *Authority) X509Forgeries(t testing.TB, id, victim spiffeid.ID) []Forgery {
	t.Helper()
	forgery := func(name, wantErr string, id spiffeid.ID, edit func(*x509.Certificate)) Forgery {
		return Forgery{Name: name, SVID: a.leaf(t, id, edit), WantErr: wantErr}
	}
	uris := func(u ...string) func(*x509.Certificate) {
		return func(c *x509.Certificate) {
			c.URIs = nil
			for _, s := range u {
				parsed, err := url.Parse(s)
				if err != nil {
					t.Fatal(err)
				}
				c.URIs = append(c.URIs, parsed)
			}
		}
	}
	// A valid SVID used as a CA: the leaf it signs chains to the bundle
	// only through a certificate that may not sign.
	issuer := a.X509(t, spiffeid.RequireFromPath(a.TD, "/issuer"))
	key := newKey(t)
	bySVID := SVID{Chain: []*x509.Certificate{signCert(t, &x509.Certificate{
		URIs: []*url.URL{id.URL()}, KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
	}, issuer.Chain[0], key.Public(), issuer.Key), issuer.Chain[0]}, Key: key}
	rogue := New(t, a.TD.Name())
	return []Forgery{
		forgery("leaf with the CA flag", "leaf certificate with CA flag set to true", id, func(c *x509.Certificate) { c.IsCA = true }),
		forgery("leaf with keyCertSign", "leaf certificate with KeyCertSign key usage", id, func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }),
		forgery("leaf with cRLSign", "leaf certificate with KeyCrlSign key usage", id, func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCRLSign }),
		forgery("two URI SANs", "not an X.509-SVID: certificate contains more than one URI SAN", id, uris(id.String(), spiffeid.RequireFromPath(a.TD, "/admin").String())),
		forgery("no URI SAN", "not an X.509-SVID: certificate contains no URI SAN", id, uris()),
		forgery("SPIFFE ID without path", "has no path", id, uris(a.TD.IDString())),
		forgery("URI SAN not a SPIFFE ID", "not an X.509-SVID: scheme is missing or invalid", id, uris("https://"+a.TD.Name()+"/agent")),
		forgery("expired", "certificate has expired", id, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		}),
		forgery("another trust domain's ID", "could not verify leaf certificate", victim, nil),
		{Name: "issued by an SVID", SVID: bySVID, WantErr: "could not verify leaf certificate"},
		{Name: "CA not in the bundle", SVID: rogue.X509(t, id), WantErr: "could not verify leaf certificate"},
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func encodeJSON(t testing.TB, v any) string {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b64(raw)
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
