package attest_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/attest/attesttest"
)

// adversarial is a test trust domain with a verifier trusting it (and
// victim.test), as the broker would with its audience.
type adversarial struct {
	adv, victim *attesttest.Authority
	bundle      *spiffebundle.Bundle // adv's, live: the verifier sees changes
	v           *attest.Verifier
	agent       spiffeid.ID
	audience    string
}

func newAdversarial(t *testing.T) *adversarial {
	a := &adversarial{adv: attesttest.New(t, "adv.test"), victim: attesttest.New(t, "victim.test")}
	a.bundle = a.adv.Bundle()
	a.agent = spiffeid.RequireFromPath(a.adv.TD, "/agents/a")
	a.audience = spiffeid.RequireFromPath(a.adv.TD, "/atfd").String()
	set := spiffebundle.NewSet(a.bundle, a.victim.Bundle())
	var err error
	a.v, err = attest.New(attest.Config{
		TrustDomains: []spiffeid.TrustDomain{a.adv.TD, a.victim.TD},
		X509Bundles:  set, JWTBundles: set, Audience: a.audience,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// X.509-SVIDs that a CA in the bundle signed but that are no SVIDs, or
// that no CA in the bundle signed.
func TestAdversarialX509(t *testing.T) {
	a := newAdversarial(t)
	if id, err := a.v.VerifyX509(a.adv.X509(t, a.agent).Chain); err != nil || id.ID != a.agent {
		t.Fatalf("well-formed SVID: %+v, %v", id, err)
	}
	for _, f := range a.adv.X509Forgeries(t, a.agent, spiffeid.RequireFromPath(a.victim.TD, "/agents/v")) {
		t.Run(f.Name, func(t *testing.T) {
			_, err := a.v.VerifyX509(f.SVID.Chain)
			t.Log(err)
			wantErr(t, err, f.WantErr)
		})
	}
}

// Forged and malformed JWT-SVIDs, including ones signed with the bundle's
// own key.
func TestAdversarialJWT(t *testing.T) {
	a := newAdversarial(t)
	if id, err := a.v.VerifyJWT(a.adv.JWT(t, a.agent, a.audience, time.Minute)); err != nil || id.ID != a.agent {
		t.Fatalf("well-formed JWT-SVID: %+v, %v", id, err)
	}
	for _, f := range a.adv.JWTForgeries(t, a.agent, a.audience) {
		t.Run(f.Name, func(t *testing.T) {
			_, err := a.v.VerifyJWT(f.Token)
			if len(f.Token) < 1<<10 {
				t.Log(err)
			}
			wantErr(t, err, f.WantErr)
		})
	}
}

// An oversized bearer token costs a length check: no parsing, no copy.
func TestAdversarialJWTOversizedIsCheap(t *testing.T) {
	a := newAdversarial(t)
	for _, tt := range []struct {
		name, token string
	}{
		{"4 MiB", strings.Repeat("A", 4<<20)},
		{"a million dots", strings.Repeat(".", 1_000_000)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			verify := func() { _, err = a.v.VerifyJWT(tt.token) }
			verify()
			wantErr(t, err, "longer than 8192 bytes")
			if allocs := testing.AllocsPerRun(100, verify); allocs > 10 {
				t.Errorf("%v allocations per refusal", allocs)
			}
			if per := allocatedPerRun(100, verify); per > 1<<10 {
				t.Errorf("%d bytes allocated per refusal of a %d-byte token", per, len(tt.token))
			}
		})
	}
}

// allocatedPerRun is the bytes f allocates per run, averaged over runs.
func allocatedPerRun(runs int, f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / uint64(runs)
}

// A bundle that changes under a verifier (authorities rotated out, keys
// retired) changes the next verification: nothing is cached per SVID.
func TestAdversarialBundleRotation(t *testing.T) {
	a := newAdversarial(t)
	old := a.adv.X509(t, a.agent)
	oldJWT := a.adv.JWT(t, a.agent, a.audience, time.Minute)
	for _, check := range []func() (attest.Identity, error){
		func() (attest.Identity, error) { return a.v.VerifyX509(old.Chain) },
		func() (attest.Identity, error) { return a.v.VerifyJWT(oldJWT) },
	} {
		if _, err := check(); err != nil {
			t.Fatalf("before rotation: %v", err)
		}
	}

	// The trust domain moves to a new CA and JWT key; the old ones leave.
	next := attesttest.New(t, a.adv.TD.Name())
	a.bundle.SetX509Authorities([]*x509.Certificate{next.CA})
	a.bundle.SetJWTAuthorities(next.Bundle().JWTAuthorities())

	_, err := a.v.VerifyX509(old.Chain)
	wantErr(t, err, "could not verify leaf certificate")
	_, err = a.v.VerifyJWT(oldJWT)
	wantErr(t, err, `no JWT authority "`+a.adv.KeyID+`" found`)
	if _, err := a.v.VerifyX509(next.X509(t, a.agent).Chain); err != nil {
		t.Errorf("SVID of the new CA: %v", err)
	}
	if _, err := a.v.VerifyJWT(next.JWT(t, a.agent, a.audience, time.Minute)); err != nil {
		t.Errorf("JWT-SVID of the new key: %v", err)
	}
}

// The broker's TLS configuration never resumes a session: a resumed
// session would skip the handshake in which the client proves it holds
// its SVID's key. The control shows that the same client does resume
// where a server allows it, so the refusal is the configuration's doing.
func TestAdversarialNoSessionResumption(t *testing.T) {
	a := newAdversarial(t)
	server := a.adv.X509(t, spiffeid.RequireFromPath(a.adv.TD, "/atfd"))
	src := &x509svid.SVID{ID: spiffeid.RequireFromPath(a.adv.TD, "/atfd"), Certificates: server.Chain, PrivateKey: server.Key}
	shipped := a.v.ServerTLSConfig(src)
	if !shipped.SessionTicketsDisabled {
		t.Error("ServerTLSConfig allows session tickets")
	}
	resumable := shipped.Clone()
	resumable.SessionTicketsDisabled = false

	client := a.adv.X509(t, a.agent).TLS()
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, tt := range []struct {
			name   string
			cfg    *tls.Config
			resume bool
		}{
			{"shipped", shipped, false},
			{"control with tickets", resumable, true},
		} {
			t.Run(tls.VersionName(version)+" "+tt.name, func(t *testing.T) {
				addr := serveTLS(t, tt.cfg)
				cache := &countingCache{ClientSessionCache: tls.NewLRUClientSessionCache(4)}
				cfg := tlsconfig.TLSClientConfig(a.bundle, tlsconfig.AuthorizeAny())
				cfg.Certificates = []tls.Certificate{client}
				cfg.ClientSessionCache = cache
				cfg.MaxVersion = version
				for i := range 2 {
					st := handshake(t, addr, cfg)
					if want := tt.resume && i == 1; st.DidResume != want {
						t.Fatalf("connection %d: DidResume = %v, want %v", i+1, st.DidResume, want)
					}
					if len(st.PeerCertificates) == 0 {
						t.Fatalf("connection %d: no server certificate", i+1)
					}
				}
				if got := cache.stored > 0; got != tt.resume {
					t.Errorf("%d sessions offered for resumption", cache.stored)
				}
			})
		}
	}
}

// countingCache counts the sessions a server offered for resumption.
type countingCache struct {
	tls.ClientSessionCache
	stored int
}

func (c *countingCache) Put(key string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.stored++
	}
	c.ClientSessionCache.Put(key, cs)
}

// serveTLS accepts TLS connections with cfg on loopback, completes the
// handshake and echoes one byte.
func serveTLS(t *testing.T, cfg *tls.Config) string {
	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err == nil {
					_, _ = c.Write(b[:])
				}
			}()
		}
	}()
	return lis.Addr().String()
}

// handshake connects, exchanges a byte (so that TLS 1.3 session tickets,
// sent after the handshake, are read) and returns the connection state.
func handshake(t *testing.T, addr string, cfg *tls.Config) tls.ConnectionState {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatal(err)
	}
	return c.ConnectionState()
}
