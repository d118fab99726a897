// Package verifytest is a token issuer for tests of resource servers: a
// real HTTPS server with the endpoints of docs/oauth-verifier.md (JWK Set,
// revocation events, introspection), keys generated on the spot, and
// access tokens signed with go-jose, a library independent of the
// verifier.
package verifytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Defaults of the tokens minted.
const (
	Audience = "https://mcp.example/tools"
	AgentA   = "spiffe://example.org/agent/a"
	AgentB   = "spiffe://example.org/agent/b"
	AgentC   = "spiffe://example.org/agent/c"
	// FirstKid names the key the issuer starts with.
	FirstKid = "atf-oauth-1"
)

// Issuer is a test token issuer.
type Issuer struct {
	t   testing.TB
	srv *httptest.Server

	mu           sync.Mutex
	keys         map[string]*ecdsa.PrivateKey // served in the JWK Set
	cacheControl string
	active       func(token string) bool
	jwksFetches  atomic.Int64
	jwksHang     chan struct{} // while set, JWK Set requests wait for it to close
	introspects  atomic.Int64

	events      chan string   // SSE event blocks to write
	connects    chan string   // Last-Event-ID of each subscription
	dropStreams chan struct{} // ends the current stream
	refuse      atomic.Bool   // answers 503 to subscriptions
}

// NewIssuer starts an issuer with one key, FirstKid, serving its JWK Set
// with max-age 300; it stops when the test ends.
func NewIssuer(t testing.TB) *Issuer {
	t.Helper()
	is := &Issuer{t: t, keys: map[string]*ecdsa.PrivateKey{}, cacheControl: "public, max-age=300",
		events: make(chan string, 16), connects: make(chan string, 16), dropStreams: make(chan struct{}, 1)}
	is.AddKey(FirstKid)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/jwks.json", is.serveJWKS)
	mux.HandleFunc("GET /oauth2/events", is.serveEvents)
	mux.HandleFunc("POST /oauth2/introspect", is.serveIntrospect)
	is.srv = httptest.NewTLSServer(mux)
	t.Cleanup(is.srv.Close)
	return is
}

// URL is the issuer's URL: its tokens' iss.
func (is *Issuer) URL() string { return is.srv.URL }

// Client is an HTTPS client that trusts the issuer.
func (is *Issuer) Client() *http.Client { return is.srv.Client() }

// Close stops the issuer's server.
func (is *Issuer) Close() { is.srv.Close() }

// AddKey generates a key and publishes it as kid.
func (is *Issuer) AddKey(kid string) {
	k := newKey(is.t)
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys[kid] = k
}

// RemoveKey stops publishing kid; tokens can no longer be minted with it.
func (is *Issuer) RemoveKey(kid string) {
	is.mu.Lock()
	defer is.mu.Unlock()
	delete(is.keys, kid)
}

// Key returns the published key kid, or nil.
func (is *Issuer) Key(kid string) *ecdsa.PrivateKey {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.keys[kid]
}

// SetCacheControl sets the JWK Set's Cache-Control from the next fetch on.
func (is *Issuer) SetCacheControl(cc string) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.cacheControl = cc
}

// SetActive sets the introspection endpoint's answer; by default no token
// is active.
func (is *Issuer) SetActive(active func(token string) bool) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.active = active
}

// HangJWKS makes JWK Set requests wait, unanswered, until the returned
// func is called (or the test ends).
func (is *Issuer) HangJWKS() (release func()) {
	ch := make(chan struct{})
	is.mu.Lock()
	is.jwksHang = ch
	is.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			is.mu.Lock()
			is.jwksHang = nil
			is.mu.Unlock()
			close(ch)
		})
	}
	is.t.Cleanup(release)
	return release
}

// JWKSFetches counts the JWK Set's fetches.
func (is *Issuer) JWKSFetches() int64 { return is.jwksFetches.Load() }

// Introspections counts the introspection requests.
func (is *Issuer) Introspections() int64 { return is.introspects.Load() }

// Refuse makes the events endpoint answer 503, or answer again.
func (is *Issuer) Refuse(refuse bool) { is.refuse.Store(refuse) }

// DropStream ends the current event stream, after the events sent before.
func (is *Issuer) DropStream() { is.dropStreams <- struct{}{} }

// Send writes one event to the current (or next) stream.
func (is *Issuer) Send(typ, id string, data any) {
	b, err := json.Marshal(data)
	if err != nil {
		is.t.Fatal(err)
	}
	is.events <- fmt.Sprintf("event: %s\nid: %s\ndata: %s\n\n", typ, id, b)
}

// NextConnect waits for a subscription to the events and returns its
// Last-Event-ID.
func (is *Issuer) NextConnect(t testing.TB) string {
	t.Helper()
	select {
	case id := <-is.connects:
		return id
	case <-time.After(10 * time.Second):
		t.Fatal("verifytest: nothing subscribed to the events in 10 s")
		return ""
	}
}

func (is *Issuer) serveJWKS(w http.ResponseWriter, r *http.Request) {
	is.jwksFetches.Add(1)
	is.mu.Lock()
	hang := is.jwksHang
	is.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-r.Context().Done():
			return
		}
	}
	is.mu.Lock()
	var set jose.JSONWebKeySet
	for kid, k := range is.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: &k.PublicKey, KeyID: kid, Algorithm: "ES256", Use: "sig"})
	}
	cc := is.cacheControl
	is.mu.Unlock()
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", cc)
	_ = json.NewEncoder(w).Encode(set)
}

func (is *Issuer) serveEvents(w http.ResponseWriter, r *http.Request) {
	if is.refuse.Load() {
		http.Error(w, "not now", http.StatusServiceUnavailable)
		return
	}
	is.connects <- r.Header.Get("Last-Event-ID")
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-is.dropStreams:
			// What was sent before the drop goes out first, in order.
			for {
				select {
				case ev := <-is.events:
					if _, err := fmt.Fprint(w, ev); err != nil {
						return
					}
				default:
					w.(http.Flusher).Flush()
					return
				}
			}
		case ev := <-is.events:
			if _, err := fmt.Fprint(w, ev); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}
}

func (is *Issuer) serveIntrospect(w http.ResponseWriter, r *http.Request) {
	is.introspects.Add(1)
	_ = r.ParseForm()
	is.mu.Lock()
	active := is.active != nil && is.active(r.PostForm.Get("token"))
	is.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]bool{"active": active})
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
