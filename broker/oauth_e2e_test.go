package broker_test

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/oauth/verify"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// The resource servers' verifier (oauth/verify, docs/oauth-verifier.md)
// against a real broker: the verifier knows nothing of the broker but the
// contract of docs/oauth.md, so this is where the two sides meet.

// e2eServer is a resource server for the tools audience: the verifier's
// middleware around a handler that answers the holder and its act chain,
// following the broker's revocation events as a resource server of
// oauth.resource_servers.
type e2eServer struct {
	url     string
	client  *http.Client
	revoked chan verify.Revocation
}

// e2eCaller is what the handler saw of a call.
type e2eCaller struct {
	Sub    string   `json:"sub"`
	Actors []string `json:"actors"`
	Depth  int      `json:"depth"`
}

func (e *oauthEnv) resourceServer(t *testing.T) *e2eServer {
	t.Helper()
	s := &e2eServer{client: &http.Client{Timeout: 10 * time.Second}, revoked: make(chan verify.Revocation, 64)}
	v, err := verify.New(verify.Config{
		Issuer:   brokertest.OAuthIssuer,
		Audience: brokertest.OAuthToolsAudience,
		// The issuer's name is not where this broker listens: the key
		// set, events and introspection are found at its address.
		Client:          e.b.HTTPClient(t, e.rs),
		JWKSURL:         e.b.OAuthURL() + "/.well-known/jwks.json",
		RefetchInterval: 50 * time.Millisecond,
		Push: &verify.Push{
			EventsURL: e.b.OAuthURL() + "/oauth2/events",
			// Tokens issued in the second the stream opened are checked
			// by introspection once; revocations come by the stream.
			IntrospectionURL: e.b.OAuthURL() + "/oauth2/introspect",
			OnRevoked:        func(r verify.Revocation) { s.revoked <- r },
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = v.Subscribe(t.Context()) }()
	h := v.Middleware("tools.call")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := verify.ClaimsFrom(r.Context())
		got := e2eCaller{Sub: c.Subject, Depth: c.Depth()}
		for _, a := range c.Actors() {
			got.Actors = append(got.Actors, a.Subject)
		}
		_ = json.NewEncoder(w).Encode(got)
	}))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

// call calls the resource server with token: its status, and the caller
// it saw when it accepted.
func (s *e2eServer) call(t *testing.T, token string) (int, e2eCaller) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.url, strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c e2eCaller
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, c
}

func (s *e2eServer) mustAccept(t *testing.T, what, token string) e2eCaller {
	t.Helper()
	st, c := s.call(t, token)
	if st != http.StatusOK {
		t.Fatalf("%s: status %d, want 200", what, st)
	}
	return c
}

// awaitRefused calls with token until the server refuses it (401) and
// returns when; past limit after since the test fails.
func (s *e2eServer) awaitRefused(t *testing.T, what, token string, since time.Time, limit time.Duration) time.Time {
	t.Helper()
	for {
		st, _ := s.call(t, token)
		took := time.Since(since)
		switch {
		case st == http.StatusUnauthorized:
			return time.Now()
		case st != http.StatusOK:
			t.Fatalf("%s: status %d, want 200 then 401", what, st)
		case took > limit:
			t.Fatalf("%s: still accepted %s after the revocation", what, took)
		}
		time.Sleep(time.Millisecond)
	}
}

// awaitPush returns the first revocation event the server heard whose
// list (JTIs or Nodes) names v.
func (s *e2eServer) awaitPush(t *testing.T, what string, list func(verify.Revocation) []string, v string) verify.Revocation {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case r := <-s.revoked:
			if slices.Contains(list(r), v) {
				return r
			}
		case <-deadline:
			t.Fatalf("%s: no revocation event naming %s reached the resource server", what, v)
		}
	}
}

func jtis(r verify.Revocation) []string  { return r.JTIs }
func nodes(r verify.Revocation) []string { return r.Nodes }

// pushLimit bounds the push latency this test tolerates on a loaded
// machine; the target is 50 ms at p99 (BENCHMARKS.md).
const pushLimit = 2 * time.Second

// TestVerifierAgainstBroker: agent C calls a resource server through the
// chain A → B → C and the server sees the act chain; revoking the
// lineage of B's grant makes the next call fail within the push latency,
// while A's own token still works; killing C refuses C's own token; after
// a key rotation a new token verifies (JWKS refetched) and an old one
// still does; a token for another audience is refused.
func TestVerifierAgainstBroker(t *testing.T) {
	e := newOAuthEnv(t)
	a := e.register(t, "a", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	b := e.register(t, "b", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	c := e.register(t, "c", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	ab := a.mustDelegate(t, b.id, "", time.Hour, 1, "tools-read")
	bc := b.mustDelegate(t, c.id, ab.GetId(), 30*time.Minute, 0, "tools-read")
	rs := e.resourceServer(t)

	chained := e.mustExchange(t, c.id, brokertest.OAuthToolsAudience, "tools.call", bc.GetId())
	got := rs.mustAccept(t, "C through A → B → C", chained.AccessToken)
	if want := []string{b.id.String(), a.id.String()}; got.Sub != c.id.String() || got.Depth != 2 || strings.Join(got.Actors, " ") != strings.Join(want, " ") {
		t.Fatalf("the server saw %+v, want sub %s acting for %v (depth 2)", got, c.id, want)
	}
	ownA := e.mustExchange(t, a.id, brokertest.OAuthToolsAudience, "", "").AccessToken
	rs.mustAccept(t, "A on its own authority", ownA)

	revoked := time.Now()
	e.revokeLineage(t, ab.GetId(), "e2e: B's lineage")
	refused := rs.awaitRefused(t, "C's token after B's lineage is revoked", chained.AccessToken, revoked, pushLimit)
	ev := rs.awaitPush(t, "lineage revocation", nodes, "grant:"+bc.GetId())
	life, took := time.Duration(chained.ExpiresIn)*time.Second, refused.Sub(ev.Time)
	t.Logf("lineage revoked: event heard %s and next call refused %s after the broker's commit (%s after the RevokeLineage call); the token had %s to live",
		ev.Received.Sub(ev.Time), took, refused.Sub(revoked), life)
	if took > life/100 {
		t.Errorf("refused %s after the revocation, not well before the token's lifetime %s", took, life)
	}
	rs.mustAccept(t, "A's own token after B's lineage is revoked", ownA)

	e.killAndRefuse(t, rs, c.id)
	e.rotateAndVerify(t, rs, a.id, ownA)

	other := e.mustExchange(t, a.id, brokertest.OAuthAdminAudience, "", "").AccessToken
	if st, _ := rs.call(t, other); st != http.StatusUnauthorized {
		t.Errorf("a token for %s: status %d at the server of %s, want 401", brokertest.OAuthAdminAudience, st, brokertest.OAuthToolsAudience)
	}
}

// killAndRefuse: C's own token works until C is killed, then the server
// refuses it within the push latency.
func (e *oauthEnv) killAndRefuse(t *testing.T, rs *e2eServer, c spiffeid.ID) {
	t.Helper()
	own := e.mustExchange(t, c, brokertest.OAuthToolsAudience, "", "").AccessToken
	rs.mustAccept(t, "C on its own authority", own)
	killed := time.Now()
	e.kill(t, &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: c.String()}, Reason: "e2e: kill C"})
	refused := rs.awaitRefused(t, "C's token after C is killed", own, killed, pushLimit)
	ev := rs.awaitPush(t, "kill", jtis, tokenPart(t, own, 1).JTI)
	t.Logf("agent killed: event heard %s and next call refused %s after the broker's commit",
		ev.Received.Sub(ev.Time), refused.Sub(ev.Time))
}

// rotateAndVerify: after a rotation, a new token names the new key, which
// the verifier fetches; a token signed before still verifies.
func (e *oauthEnv) rotateAndVerify(t *testing.T, rs *e2eServer, a spiffeid.ID, old string) {
	t.Helper()
	e.b.RotateSigningKey(t)
	time.Sleep(60 * time.Millisecond) // past the verifier's RefetchInterval
	fresh := e.mustExchange(t, a, brokertest.OAuthToolsAudience, "", "").AccessToken
	if k := tokenPart(t, old, 0).Kid; tokenPart(t, fresh, 0).Kid == k {
		t.Fatalf("the token after the rotation names the same key %s", k)
	}
	rs.mustAccept(t, "a token of the new key", fresh)
	rs.mustAccept(t, "a token of the previous key", old)
}

// tokenPart reads the kid of a token's header (part 0) or the jti of its
// claims (part 1), without verifying it.
func tokenPart(t *testing.T, token string, part int) (p struct{ Kid, JTI string }) {
	t.Helper()
	seg := strings.Split(token, ".")
	raw, err := base64.RawURLEncoding.DecodeString(seg[min(part, len(seg)-1)])
	if err == nil {
		err = json.Unmarshal(raw, &p)
	}
	if err != nil || p.Kid == "" && p.JTI == "" {
		t.Fatalf("part %d of the token has no kid or jti: %v", part, err)
	}
	return p
}

// A resource server that resumes (Last-Event-ID) is reset first, with the
// broker's time in the data, which the verifier reads as the moment up to
// which tokens may have been revoked unheard.
func TestVerifierResetTime(t *testing.T) {
	e := newOAuthEnv(t)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, e.b.OAuthURL()+"/oauth2/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Last-Event-ID", "x.42")
	before := time.Now()
	resp, err := e.b.HTTPClient(t, e.rs).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var lines [2]string
	sc := bufio.NewScanner(resp.Body)
	for i := range lines {
		if !sc.Scan() {
			t.Fatalf("the stream ended: %v", sc.Err())
		}
		lines[i] = sc.Text()
	}
	var d struct {
		Time time.Time `json:"time"`
	}
	data, ok := strings.CutPrefix(lines[1], "data: ")
	if lines[0] != "event: reset" || !ok || json.Unmarshal([]byte(data), &d) != nil || d.Time.Before(before) || d.Time.After(time.Now()) {
		t.Fatalf("the stream begins %q, want event: reset with data {\"time\": the broker's clock now}", lines)
	}
}
