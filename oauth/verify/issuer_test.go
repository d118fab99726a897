package verify_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/agentictrust/atf/oauth/verify"
)

// The issuer of these tests is a real HTTPS server serving a JWK Set of
// keys generated here and a revocation stream the test writes to; tokens
// are signed with go-jose, a library independent of the verifier. It
// follows the endpoints of docs/oauth-verifier.md.

const (
	audience = "https://mcp.example/tools"
	agentA   = "spiffe://example.org/agent/a"
	agentB   = "spiffe://example.org/agent/b"
	agentC   = "spiffe://example.org/agent/c"
)

type issuer struct {
	t   *testing.T
	srv *httptest.Server

	mu           sync.Mutex
	keys         map[string]*ecdsa.PrivateKey // served in the JWK Set
	cacheControl string
	jwksFetches  atomic.Int64

	events      chan string   // raw SSE event blocks to write
	connects    chan string   // Last-Event-ID of each subscription
	dropStreams chan struct{} // closes the current stream
	refuse      atomic.Bool   // answers 503 to subscriptions
	active      func(token string) bool
	introspects atomic.Int64
}

func newIssuer(t *testing.T) *issuer {
	t.Helper()
	is := &issuer{t: t, keys: map[string]*ecdsa.PrivateKey{}, cacheControl: "public, max-age=300",
		events: make(chan string, 16), connects: make(chan string, 16), dropStreams: make(chan struct{}, 1)}
	is.addKey("atf-oauth-1")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/jwks.json", is.serveJWKS)
	mux.HandleFunc("GET /oauth2/events", is.serveEvents)
	mux.HandleFunc("POST /oauth2/introspect", is.serveIntrospect)
	is.srv = httptest.NewTLSServer(mux)
	t.Cleanup(is.srv.Close)
	return is
}

func (is *issuer) url() string { return is.srv.URL }

func (is *issuer) addKey(kid string) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		is.t.Fatal(err)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys[kid] = k
	return k
}

func (is *issuer) removeKey(kid string) *ecdsa.PrivateKey {
	is.mu.Lock()
	defer is.mu.Unlock()
	k := is.keys[kid]
	delete(is.keys, kid)
	return k
}

func (is *issuer) setCacheControl(cc string) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.cacheControl = cc
}

func (is *issuer) key(kid string) *ecdsa.PrivateKey {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.keys[kid]
}

func (is *issuer) serveJWKS(w http.ResponseWriter, _ *http.Request) {
	is.jwksFetches.Add(1)
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

func (is *issuer) serveEvents(w http.ResponseWriter, r *http.Request) {
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
			return
		case ev := <-is.events:
			if _, err := fmt.Fprint(w, ev); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}
}

func (is *issuer) serveIntrospect(w http.ResponseWriter, r *http.Request) {
	is.introspects.Add(1)
	_ = r.ParseForm()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]bool{"active": is.active != nil && is.active(r.PostForm.Get("token"))})
}

// send writes one event to the current stream.
func (is *issuer) send(typ, id string, data any) {
	b, err := json.Marshal(data)
	if err != nil {
		is.t.Fatal(err)
	}
	is.events <- fmt.Sprintf("event: %s\nid: %s\ndata: %s\n\n", typ, id, b)
}

// tok describes a token to mint; its zero fields take valid defaults.
type tok struct {
	kid     string
	iss     string
	sub     string
	aud     any
	typ     string
	scope   string
	jti     string
	iat     time.Time
	exp     time.Time
	nbf     time.Time
	act     []string // immediate actor first
	lineage []string
	omit    string // a claim to leave out
}

// claims returns the token's claims as the broker writes them.
func (is *issuer) claims(tk tok, now time.Time) map[string]any {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&tk.iss, is.url())
	def(&tk.sub, agentC)
	def(&tk.scope, "tools:list tools:call")
	def(&tk.jti, fmt.Sprintf("%x", time.Now().UnixNano()))
	if tk.aud == nil {
		tk.aud = audience
	}
	if tk.iat.IsZero() {
		tk.iat = now
	}
	if tk.exp.IsZero() {
		tk.exp = tk.iat.Add(5 * time.Minute)
	}
	if tk.nbf.IsZero() {
		tk.nbf = tk.iat
	}
	if tk.lineage == nil {
		tk.lineage = []string{"agent:" + agentA, "grant:g-ab", "grant:g-bc"}
	}
	c := map[string]any{
		"iss": tk.iss, "sub": tk.sub, "client_id": tk.sub, "aud": tk.aud, "scope": tk.scope, "jti": tk.jti,
		"iat": tk.iat.Unix(), "nbf": tk.nbf.Unix(), "exp": tk.exp.Unix(),
		"atf_level": "junior", "atf_decision_id": "d-123", "atf_lineage": tk.lineage,
	}
	var act map[string]any
	for i := len(tk.act) - 1; i >= 0; i-- {
		a := map[string]any{"sub": tk.act[i]}
		if act != nil {
			a["act"] = act
		}
		act = a
	}
	if act != nil {
		c["act"] = act
	}
	delete(c, tk.omit)
	return c
}

// mint signs tk with go-jose, ES256, by the issuer's key tk.kid.
func (is *issuer) mint(tk tok, now time.Time) string {
	is.t.Helper()
	if tk.kid == "" {
		tk.kid = "atf-oauth-1"
	}
	if tk.typ == "" {
		tk.typ = "at+jwt"
	}
	key := is.key(tk.kid)
	if key == nil {
		key = is.addKeyUnpublished()
	}
	return sign(is.t, jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: tk.kid}}, tk.typ, is.claims(tk, now))
}

func (is *issuer) addKeyUnpublished() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		is.t.Fatal(err)
	}
	return k
}

func sign(t *testing.T, key jose.SigningKey, typ string, claims map[string]any) string {
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

// clock is a settable clock for the verifier.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func (is *issuer) verifier(t *testing.T, edit func(*verify.Config)) *verify.Verifier {
	t.Helper()
	cfg := verify.Config{Issuer: is.url(), Audience: audience, Client: is.srv.Client(), Logger: slog.New(slog.DiscardHandler)}
	if edit != nil {
		edit(&cfg)
	}
	v, err := verify.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
