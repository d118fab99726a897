package attest_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/attest/attesttest"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func TestParseID(t *testing.T) {
	for _, tt := range []struct {
		in      string
		wantErr string
	}{
		{"spiffe://example.org/agents/a", ""},
		{"spiffe://example.org/a/b-c_d.e", ""},
		{"spiffe://example.org", "needs a path"},
		{"spiffe://example.org/", "trailing slash"},
		{"spiffe://Example.org/a", "trust domain characters"},
		{"spiffe://example.org/a/../b", "dot segment"},
		{"spiffe://example.org/./a", "dot segment"},
		{"spiffe://example.org/a%2Fb", "path segment characters"},
		{"spiffe://example.org/a b", "path segment characters"},
		{"spiffe://example.org//a", "empty segment"},
		{"https://example.org/a", "scheme"},
		{"", "empty"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			id, err := attest.ParseID(tt.in)
			if tt.wantErr == "" {
				if err != nil || id.String() != tt.in {
					t.Fatalf("ParseID(%q) = %v, %v", tt.in, id, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "attest: ") {
				t.Fatalf("ParseID(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestNewRequiresAudienceForJWT(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	b := spiffebundle.New(td)
	for _, tt := range []struct {
		name    string
		cfg     attest.Config
		wantErr string
	}{
		{"no trust domain", attest.Config{X509Bundles: b}, "trust domain"},
		{"no bundles", attest.Config{TrustDomains: []spiffeid.TrustDomain{td}}, "bundle source"},
		{"jwt without audience", attest.Config{TrustDomains: []spiffeid.TrustDomain{td}, X509Bundles: b, JWTBundles: b}, "empty audience"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := attest.New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

// Verification against SVIDs minted by a real SPIRE server.
func TestVerifySPIRESVIDs(t *testing.T) {
	s := devtest.Shared(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	broker := spiffeid.RequireFromPath(s.TrustDomain, "/atfd")
	agent := spiffeid.RequireFromPath(s.TrustDomain, "/agents/verify")
	bundle, sv := spireSVID(t, ctx, s, agent)
	jwt, err := s.MintJWT(ctx, agent, broker.String(), 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	otherAud, err := s.MintJWT(ctx, agent, "spiffe://atf.test/not-the-broker", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	verifier := func(now time.Time, tds ...spiffeid.TrustDomain) *attest.Verifier {
		v, err := attest.New(attest.Config{TrustDomains: tds, X509Bundles: bundle, JWTBundles: bundle, Audience: broker.String(), Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	now := time.Now()
	other := spiffeid.RequireTrustDomainFromString("other.test")

	t.Run("x509 valid", func(t *testing.T) {
		id, err := verifier(now, s.TrustDomain).VerifyX509(sv.Certificates)
		if err != nil || id.ID != agent || id.Method != attest.X509SVID || !id.ExpiresAt.Equal(sv.Certificates[0].NotAfter) {
			t.Fatalf("VerifyX509 = %+v, %v", id, err)
		}
	})
	t.Run("x509 trust domain not allowlisted", func(t *testing.T) {
		_, err := verifier(now, other).VerifyX509(sv.Certificates)
		wantErr(t, err, `trust domain "atf.test" is not trusted`)
	})
	t.Run("x509 expired", func(t *testing.T) {
		_, err := verifier(sv.Certificates[0].NotAfter.Add(time.Second), s.TrustDomain).VerifyX509(sv.Certificates)
		wantErr(t, err, "expired")
	})
	t.Run("x509 no certificate", func(t *testing.T) {
		_, err := verifier(now, s.TrustDomain).VerifyX509(nil)
		wantErr(t, err, "no client certificate")
	})
	t.Run("jwt valid", func(t *testing.T) {
		id, err := verifier(now, s.TrustDomain).VerifyJWT(jwt)
		if err != nil || id.ID != agent || id.Method != attest.JWTSVID {
			t.Fatalf("VerifyJWT = %+v, %v", id, err)
		}
	})
	t.Run("jwt other audience", func(t *testing.T) {
		_, err := verifier(now, s.TrustDomain).VerifyJWT(otherAud)
		wantErr(t, err, "audience")
	})
	t.Run("jwt trust domain not allowlisted", func(t *testing.T) {
		_, err := verifier(now, other).VerifyJWT(jwt)
		wantErr(t, err, "not trusted")
	})
	t.Run("jwt expired by the broker's clock", func(t *testing.T) {
		_, err := verifier(now.Add(10*time.Minute), s.TrustDomain).VerifyJWT(jwt)
		wantErr(t, err, "expired")
	})
	t.Run("jwt tampered", func(t *testing.T) {
		parts := strings.Split(jwt, ".")
		parts[2] = strings.Repeat("A", len(parts[2]))
		_, err := verifier(now, s.TrustDomain).VerifyJWT(strings.Join(parts, "."))
		wantErr(t, err, "")
	})
	t.Run("jwt oversized", func(t *testing.T) {
		_, err := verifier(now, s.TrustDomain).VerifyJWT(strings.Repeat("a.", attest.MaxJWTSize))
		wantErr(t, err, "longer than")
	})
}

// A chain verified once is remembered (its signatures are not checked
// again), yet every call still refuses it once any certificate on it has
// expired or once its authority leaves the bundle, whether the bundle is
// changed in place or the source hands out another one: SVIDs minted by a
// real SPIRE server.
func TestVerifyX509Remembered(t *testing.T) {
	s := devtest.Shared(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	agent := spiffeid.RequireFromPath(s.TrustDomain, "/agents/remembered")
	spire, sv := spireSVID(t, ctx, s, agent)
	authorities := spire.X509Authorities()
	bundle := x509bundle.FromX509Authorities(s.TrustDomain, authorities)
	source := &swappable{bundle: bundle}
	now := time.Now()
	v, err := attest.New(attest.Config{TrustDomains: []spiffeid.TrustDomain{s.TrustDomain}, X509Bundles: source, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ok := func(step string) {
		t.Helper()
		if id, err := v.VerifyX509(sv.Certificates); err != nil || id.ID != agent || !id.ExpiresAt.Equal(sv.Certificates[0].NotAfter) {
			t.Fatalf("%s: VerifyX509 = %+v, %v; want %s", step, id, err, agent)
		}
	}
	ok("first call")
	ok("second call, remembered")

	now = sv.Certificates[0].NotAfter.Add(time.Second)
	_, err = v.VerifyX509(sv.Certificates)
	wantErr(t, err, "expired")
	now = sv.Certificates[0].NotBefore.Add(-time.Second)
	_, err = v.VerifyX509(sv.Certificates)
	wantErr(t, err, "not yet valid")
	now = time.Now()
	ok("back within its lifetime")

	for _, a := range authorities {
		bundle.RemoveX509Authority(a)
	}
	_, err = v.VerifyX509(sv.Certificates)
	wantErr(t, err, "certificate signed by unknown authority")
	for _, a := range authorities {
		bundle.AddX509Authority(a)
	}
	ok("authority back in the bundle")

	other := attesttest.New(t, s.TrustDomain.Name())
	source.set(x509bundle.FromX509Authorities(s.TrustDomain, []*x509.Certificate{other.CA}))
	_, err = v.VerifyX509(sv.Certificates)
	wantErr(t, err, "certificate signed by unknown authority")
	source.set(nil)
	_, err = v.VerifyX509(sv.Certificates)
	wantErr(t, err, "no X.509 bundle")
	source.set(bundle)
	ok("bundle back")

	// Another chain of the same workload is a chain of its own: one whose
	// leaf is signed by a key outside the bundle is refused even though
	// the genuine chain of that SPIFFE ID was remembered.
	forged := other.X509(t, agent)
	_, err = v.VerifyX509(forged.Chain)
	wantErr(t, err, "certificate signed by unknown authority")
	ok("the genuine chain still")
}

// spireSVID returns the SPIRE server's bundle and an hour's X.509-SVID
// for agent, minted by it.
func spireSVID(t *testing.T, ctx context.Context, s *dev.Stack, agent spiffeid.ID) (*spiffebundle.Bundle, *x509svid.SVID) {
	t.Helper()
	bundle, err := spiffebundle.Load(s.TrustDomain, s.SPIFFEBundlePath)
	if err != nil {
		t.Fatal(err)
	}
	files, err := s.MintX509(ctx, agent, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := x509svid.Load(files.CertPath, files.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	return bundle, sv
}

// swappable is a bundle source whose bundle a test replaces; nil means
// it has none.
type swappable struct {
	mu     sync.Mutex
	bundle *x509bundle.Bundle
}

func (s *swappable) set(b *x509bundle.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bundle = b
}

func (s *swappable) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bundle == nil {
		return nil, fmt.Errorf("no X.509 bundle for %s", td)
	}
	return s.bundle, nil
}

func wantErr(t *testing.T, err error, part string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), part) || !strings.HasPrefix(err.Error(), "attest: unauthenticated") {
		t.Fatalf("error = %v, want an attest: unauthenticated error containing %q", err, part)
	}
}
