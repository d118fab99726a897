package broker_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// The OAuth token exchange (docs/oauth.md) against real SPIRE SVIDs and
// the real Vault transit engine of the shared dev stack. Tokens are
// checked with go-jose, a library independent of the broker.

var toolRoles = []string{"tools-read", "tools-admin"}

// oauthEnv is a broker with the OAuth endpoints on, a kill switch, and a
// resource server allowed to introspect and watch.
type oauthEnv struct {
	*killEnv
	rs spiffeid.ID
}

// withRoles has newOAuthEnv write roles as the roles file.
type withRoles string

func newOAuthEnv(t *testing.T, roles ...withRoles) *oauthEnv {
	t.Helper()
	f := brokertest.Setup(t)
	cfg := f.OAuthConfig(t, t.TempDir(), f.ID(t, "resource-server"))
	for _, r := range roles {
		if err := os.WriteFile(cfg.RolesFile, []byte(r), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return startOAuthEnv(t, f, cfg)
}

// startOAuthEnv starts a broker on cfg (with the OAuth endpoints on, and
// one resource server), with an operator of its own.
func startOAuthEnv(t *testing.T, f *brokertest.Fixture, cfg config.Config) *oauthEnv {
	t.Helper()
	op := f.ID(t, "operator")
	cfg.SecurityOperators = []string{op.String()}
	d := &delegEnv{f: f, cfg: cfg}
	d.b = f.Start(t, cfg)
	d.admin = d.b.Dial(t, f.Admin).Admin
	e := &oauthEnv{killEnv: &killEnv{delegEnv: d, operator: op}, rs: spiffeid.RequireFromString(cfg.OAuth.ResourceServers[0])}
	e.dial(t)
	return e
}

// oauthReply is a token endpoint's answer, success or error.
type oauthReply struct {
	status      int
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	IssuedType  string `json:"issued_token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope"`
	Error       string `json:"error"`
	Description string `json:"error_description"`
	DecisionID  string `json:"atf_decision_id"`
	ApprovalID  string `json:"atf_approval_id"`
}

// post posts form to the broker's path as id (the zero ID: no client
// certificate) and decodes the JSON answer into out.
func (e *oauthEnv) post(t testing.TB, id spiffeid.ID, path string, form url.Values, out any) int {
	t.Helper()
	resp, err := e.b.HTTPClient(t, id).PostForm(e.b.OAuthURL()+path, form)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("POST %s: decoding the answer: %v", path, err)
	}
	return resp.StatusCode
}

// exchange asks for a token for resource as id.
func (e *oauthEnv) exchange(t testing.TB, id spiffeid.ID, resource, scope, grant string) oauthReply {
	t.Helper()
	form := url.Values{"resource": {resource}}
	if scope != "" {
		form.Set("scope", scope)
	}
	if grant != "" {
		form.Set("grant_id", grant)
	}
	return e.exchangeForm(t, id, form)
}

// exchangeForm posts a token exchange of form's parameters as id.
func (e *oauthEnv) exchangeForm(t testing.TB, id spiffeid.ID, form url.Values) oauthReply {
	t.Helper()
	form.Set("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")
	var r oauthReply
	r.status = e.post(t, id, "/oauth2/token", form, &r)
	return r
}

func (e *oauthEnv) mustExchange(t testing.TB, id spiffeid.ID, resource, scope, grant string) oauthReply {
	t.Helper()
	r := e.exchange(t, id, resource, scope, grant)
	if r.status != http.StatusOK || r.AccessToken == "" {
		t.Fatalf("token exchange for %s as %s: %d %s: %s", resource, id, r.status, r.Error, r.Description)
	}
	return r
}

// jwks fetches the key set, without a client certificate, and checks
// that verifiers may cache it.
func (e *oauthEnv) jwks(t *testing.T) jose.JSONWebKeySet {
	t.Helper()
	resp, err := e.b.HTTPClient(t, spiffeid.ID{}).Get(e.b.OAuthURL() + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if cc := resp.Header.Get("Cache-Control"); cc != "public, max-age=300" {
		t.Errorf("JWKS Cache-Control = %q, want public, max-age=300", cc)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	return set
}

// verify checks token's signature with go-jose against set, ES256 only,
// and returns its kid and claims.
func verifyToken(t *testing.T, set jose.JSONWebKeySet, token string) (kid string, claims map[string]any, err error) {
	t.Helper()
	jws, err := jose.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return "", nil, err
	}
	h := jws.Signatures[0].Header
	if typ := h.ExtraHeaders[jose.HeaderType]; typ != "at+jwt" {
		t.Errorf("typ = %v, want at+jwt", typ)
	}
	keys := set.Key(h.KeyID)
	if len(keys) != 1 {
		return h.KeyID, nil, errNoKey
	}
	if keys[0].Algorithm != "ES256" || keys[0].Use != "sig" {
		t.Errorf("JWK %s: alg %q use %q, want ES256 sig", h.KeyID, keys[0].Algorithm, keys[0].Use)
	}
	payload, err := jws.Verify(keys[0].Key)
	if err != nil {
		return h.KeyID, nil, err
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	return h.KeyID, claims, nil
}

type errString string

func (e errString) Error() string { return string(e) }

const errNoKey = errString("the JWKS has no key of this kid")

var hexJTI = regexp.MustCompile(`^[0-9a-f]{32}$`)

// A token through the chain A → B → C, verified with go-jose: every
// claim, the act nesting against the chain, the lineage; and an own
// authority token without act.
func TestOAuthTokenClaims(t *testing.T) {
	e := newOAuthEnv(t)
	a := e.register(t, "a", brokerv1.Level_LEVEL_PRINCIPAL, toolRoles...)
	b := e.register(t, "b", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	c := e.register(t, "c", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	ab := a.mustDelegate(t, b.id, "", time.Hour, 2, toolRoles...)
	bc := b.mustDelegate(t, c.id, ab.GetId(), 3*time.Minute, 1, "tools-read")

	before := time.Now().Truncate(time.Second)
	r := e.mustExchange(t, c.id, brokertest.OAuthToolsAudience, "tools.call", bc.GetId())
	if r.TokenType != "Bearer" || r.IssuedType != "urn:ietf:params:oauth:token-type:access_token" || r.Scope != "tools.call" {
		t.Errorf("answer: token_type %q issued_token_type %q scope %q", r.TokenType, r.IssuedType, r.Scope)
	}
	kid, cl, err := verifyToken(t, e.jwks(t), r.AccessToken)
	if err != nil {
		t.Fatalf("go-jose does not verify the token: %v", err)
	}
	if !strings.HasPrefix(kid, "atf-oauth-") {
		t.Errorf("kid = %q, want atf-oauth-<version>", kid)
	}
	iat, exp := int64(cl["iat"].(float64)), int64(cl["exp"].(float64))
	for name, want := range map[string]any{
		"iss": brokertest.OAuthIssuer, "sub": c.id.String(), "client_id": c.id.String(), "aud": brokertest.OAuthToolsAudience,
		"scope": "tools.call", "atf_level": "senior", "nbf": float64(iat),
	} {
		if cl[name] != want {
			t.Errorf("claim %s = %v, want %v", name, cl[name], want)
		}
	}
	if iat < before.Unix() || iat > time.Now().Unix() {
		t.Errorf("iat %d is not the time of issue", iat)
	}
	// The grant B → C ends in 3 minutes: so does the token, not in the
	// role's 10.
	if grantEnd := bc.GetExpiresAt().AsTime().Unix(); exp > grantEnd || exp < grantEnd-5 {
		t.Errorf("exp %d, want the grant's expiry %d", exp, grantEnd)
	}
	if jti, _ := cl["jti"].(string); !hexJTI.MatchString(jti) {
		t.Errorf("jti %q is not 128 bits of hex", jti)
	}
	if d, _ := cl["atf_decision_id"].(string); d == "" {
		t.Error("no atf_decision_id")
	}
	wantAct := map[string]any{"sub": b.id.String(), "act": map[string]any{"sub": a.id.String()}}
	if got, _ := json.Marshal(cl["act"]); string(got) != mustJSON(t, wantAct) {
		t.Errorf("act = %s, want %s", got, mustJSON(t, wantAct))
	}
	if got, want := mustJSON(t, cl["atf_lineage"]), mustJSON(t, []string{"agent:" + a.id.String(), "grant:" + ab.GetId(), "grant:" + bc.GetId()}); got != want {
		t.Errorf("atf_lineage = %s, want %s", got, want)
	}

	own := e.mustExchange(t, a.id, brokertest.OAuthToolsAudience, "", "")
	_, cl, err = verifyToken(t, e.jwks(t), own.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cl["act"]; ok {
		t.Errorf("an own-authority token has act %v", cl["act"])
	}
	if cl["scope"] != "tools.call tools.list" && cl["scope"] != "tools.list tools.call" || cl["atf_level"] != "principal" {
		t.Errorf("own token: scope %v level %v, want every scope of the role, principal", cl["scope"], cl["atf_level"])
	}
	if own.Scope != cl["scope"] {
		t.Errorf("own token: the answer's scope %q is not the token's %v", own.Scope, cl["scope"])
	}
	if got := mustJSON(t, cl["atf_lineage"]); got != mustJSON(t, []string{"agent:" + a.id.String()}) {
		t.Errorf("own token's atf_lineage = %s", got)
	}
	e.wantAudited(t, cl["atf_decision_id"].(string))
}

// wantAudited fails t unless the audit trail records the issuance of
// decision.
func (e *oauthEnv) wantAudited(t *testing.T, decision string) {
	t.Helper()
	r, err := e.admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Decision: "allow", Kind: "credential_issued"})
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range r.GetRecords() {
		if d := rec.GetDetail(); d["decision_id"] == decision {
			if d["kind"] != "jwt" || d["audience"] != brokertest.OAuthToolsAudience || d["policies"] != "tools.list,tools.call" {
				t.Errorf("audit record of decision %s: kind %q audience %q policies (scopes) %q", decision, d["kind"], d["audience"], d["policies"])
			}
			return
		}
	}
	t.Errorf("no audit record of decision %s", decision)
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Every refusal of the token endpoint, as RFC 6749 errors with the
// decision's id where the broker decided.
func TestOAuthRefusals(t *testing.T) {
	e := newOAuthEnv(t)
	intern := e.register(t, "intern", brokerv1.Level_LEVEL_INTERN, toolRoles...)
	a := e.register(t, "a", brokerv1.Level_LEVEL_PRINCIPAL, toolRoles...)
	b := e.register(t, "b", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	victim := e.register(t, "victim", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	revoked := a.mustDelegate(t, b.id, "", time.Hour, 0, "tools-read")
	e.revokeLineage(t, revoked.GetId(), "test")
	narrow := a.mustDelegate(t, b.id, "", time.Hour, 0, "tools-read")
	short := a.mustDelegate(t, b.id, "", time.Second, 0, "tools-read")
	time.Sleep(time.Until(short.GetExpiresAt().AsTime()))
	e.kill(t, &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: victim.id.String()}, Reason: "test"})
	stranger := e.f.ID(t, "stranger")

	for _, tt := range []struct {
		name             string
		as               spiffeid.ID
		resource, scope  string
		grant            string
		status           int
		code             string
		decided          bool
		descriptionParts []string
	}{
		{"unknown resource", a.id, "https://mcp.example/nothing", "", "", 400, "invalid_target", false, []string{"not a resource of this broker"}},
		{"scope wider than the resource", a.id, brokertest.OAuthToolsAudience, "tools.call tools.admin", "", 400, "invalid_scope", false, []string{`"tools.admin"`}},
		{"Intern asking for a write resource", intern.id, brokertest.OAuthAdminAudience, "", "", 403, "access_denied", true, nil},
		{"killed agent", victim.id, brokertest.OAuthToolsAudience, "", "", 403, "access_denied", true, []string{"kill"}},
		{"revoked grant", b.id, brokertest.OAuthToolsAudience, "", revoked.GetId(), 400, "invalid_grant", true, []string{"revoked"}},
		{"expired grant", b.id, brokertest.OAuthToolsAudience, "", short.GetId(), 400, "invalid_grant", true, nil},
		{"resource the grant does not give", b.id, brokertest.OAuthAdminAudience, "", narrow.GetId(), 403, "access_denied", true, []string{"tools-admin"}},
		{"unregistered caller", stranger, brokertest.OAuthToolsAudience, "", "", 403, "unauthorized_client", true, nil},
		{"no client certificate", spiffeid.ID{}, brokertest.OAuthToolsAudience, "", "", 401, "invalid_client", false, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := e.exchange(t, tt.as, tt.resource, tt.scope, tt.grant)
			if r.status != tt.status || r.Error != tt.code || r.AccessToken != "" {
				t.Fatalf("got %d %s (%s), want %d %s", r.status, r.Error, r.Description, tt.status, tt.code)
			}
			if tt.decided != (r.DecisionID != "") {
				t.Errorf("atf_decision_id = %q; decided by the pipeline: %v", r.DecisionID, tt.decided)
			}
			for _, p := range tt.descriptionParts {
				if !strings.Contains(r.Description, p) {
					t.Errorf("error_description %q does not say %q", r.Description, p)
				}
			}
		})
	}
	var r oauthReply
	if st := e.post(t, a.id, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, &r); st != 400 || r.Error != "unsupported_grant_type" {
		t.Errorf("grant_type client_credentials: %d %s", st, r.Error)
	}
	if st := e.post(t, a.id, "/oauth2/introspect", url.Values{"token": {"x"}}, &r); st != 403 || r.Error != "unauthorized_client" {
		t.Errorf("introspection by an agent not in oauth.resource_servers: %d %s", st, r.Error)
	}
	if st := e.post(t, spiffeid.ID{}, "/oauth2/introspect", url.Values{"token": {"x"}}, &r); st != http.StatusUnauthorized || r.Error != "invalid_client" {
		t.Errorf("introspection without a client certificate: %d %s", st, r.Error)
	}
}

// Bad forms at the token endpoint are refused, each with an error a
// person can act on, and nothing is issued.
func TestOAuthBadForms(t *testing.T) {
	e := newOAuthEnv(t)
	a := e.register(t, "a", brokerv1.Level_LEVEL_PRINCIPAL, toolRoles...)
	b := e.register(t, "b", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	c := e.register(t, "c", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	toB := a.mustDelegate(t, b.id, "", time.Hour, 0, "tools-read")
	tools, admin := brokertest.OAuthToolsAudience, brokertest.OAuthAdminAudience
	for _, tt := range []struct {
		name   string
		as     spiffeid.ID
		form   url.Values
		status int
		code   string
		part   string
	}{
		{"no resource", a.id, url.Values{}, 400, "invalid_request", "resource"},
		{"resource and audience differ", a.id, url.Values{"resource": {tools}, "audience": {admin}}, 400, "invalid_target", "different resources"},
		{"parameter given twice", a.id, url.Values{"resource": {tools, admin}}, 400, "invalid_request", "more than once"},
		{"another token type", a.id, url.Values{"resource": {tools}, "requested_token_type": {"urn:ietf:params:oauth:token-type:jwt"}}, 400, "invalid_request", "requested_token_type"},
		{"atf_ttl not a duration", a.id, url.Values{"resource": {tools}, "atf_ttl": {"5 minutes"}}, 400, "invalid_request", "atf_ttl"},
		{"atf_ttl below a second", a.id, url.Values{"resource": {tools}, "atf_ttl": {"-5m"}}, 400, "invalid_request", "ttl"},
		{"grant_id not an id", b.id, url.Values{"resource": {tools}, "grant_id": {"../x"}}, 400, "invalid_request", "grant_id"},
		{"approval_id not an id", a.id, url.Values{"resource": {tools}, "approval_id": {"x"}}, 400, "invalid_request", "approval_id"},
		{"grant given to another agent", c.id, url.Values{"resource": {tools}, "grant_id": {toB.GetId()}}, 400, "invalid_grant", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := e.exchangeForm(t, tt.as, tt.form)
			if r.status != tt.status || r.Error != tt.code || r.AccessToken != "" || !strings.Contains(r.Description, tt.part) {
				t.Errorf("got %d %s %q (token given: %v), want %d %s saying %q", r.status, r.Error, r.Description, r.AccessToken != "", tt.status, tt.code, tt.part)
			}
		})
	}
}

// introspect asks as the resource server whether token is active.
func (e *oauthEnv) introspect(t *testing.T, token string) map[string]any {
	t.Helper()
	var out map[string]any
	if st := e.post(t, e.rs, "/oauth2/introspect", url.Values{"token": {token}}, &out); st != http.StatusOK {
		t.Fatalf("introspection: %d %v", st, out)
	}
	return out
}

func (e *oauthEnv) wantActive(t *testing.T, token string, active bool) {
	t.Helper()
	got := e.introspect(t, token)
	if got["active"] != active {
		t.Fatalf("introspection: active %v, want %v (%v)", got["active"], active, got)
	}
}

// sse is a resource server's subscription to the revocation events.
// sse is a subscription to the events: the revoked events' data, the
// kind of the first event (reset or revoked), the last id heard, and
// how to hang up.
type sse struct {
	events chan map[string]any
	first  chan string
	id     *atomic.Value // string
	close  context.CancelFunc
}

func (e *oauthEnv) subscribe(t testing.TB) sse {
	t.Helper()
	return e.subscribeWith(t, e.b.HTTPClient(t, e.rs), "HTTP/2.0", "")
}

// subscribeWith subscribes with hc, which must speak proto, resuming
// after lastID if it is set.
func (e *oauthEnv) subscribeWith(t testing.TB, hc *http.Client, proto, lastID string) sse {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.b.OAuthURL()+"/oauth2/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" || resp.Proto != proto {
		t.Fatalf("events: %d %s %s, want 200 text/event-stream over %s", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Proto, proto)
	}
	s := sse{events: make(chan map[string]any, 64), first: make(chan string, 1), id: &atomic.Value{}, close: cancel}
	s.id.Store("")
	sc := bufio.NewScanner(resp.Body)
	go func() {
		defer resp.Body.Close()
		kind := ""
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				kind = strings.TrimPrefix(line, "event: ")
				if kind != "ping" {
					select {
					case s.first <- kind:
					default:
					}
				}
			case strings.HasPrefix(line, "id: "):
				s.id.Store(strings.TrimPrefix(line, "id: "))
			case strings.HasPrefix(line, "data: ") && kind == "revoked":
				var ev map[string]any
				if json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev) == nil {
					s.events <- ev
				}
			}
		}
	}()
	return s
}

// lastID is the id of the last event heard.
func (s sse) lastID() string { return s.id.Load().(string) }

// await waits for an event naming jti and returns it.
func (s sse) await(t testing.TB, jti string) map[string]any {
	t.Helper()
	return s.awaitIn(t, "jtis", jti)
}

// awaitNode waits for an event naming the lineage node and returns it.
func (s sse) awaitNode(t testing.TB, node string) map[string]any {
	t.Helper()
	return s.awaitIn(t, "nodes", node)
}

// awaitIn waits for an event whose list key holds v.
func (s sse) awaitIn(t testing.TB, key, v string) map[string]any {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-s.events:
			if list, _ := ev[key].([]any); slices.Contains(list, any(v)) {
				return ev
			}
		case <-deadline:
			t.Fatalf("no revocation event's %s named %s", key, v)
		}
	}
}

// Introspection flips to inactive at the commit of a lineage revocation,
// a kill and the holder's own revocation, and the resource server's event
// stream names the token's jti and lineage.
func TestOAuthRevocation(t *testing.T) {
	e := newOAuthEnv(t)
	a := e.register(t, "a", brokerv1.Level_LEVEL_PRINCIPAL, toolRoles...)
	b := e.register(t, "b", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	c := e.register(t, "c", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	ab := a.mustDelegate(t, b.id, "", time.Hour, 2, toolRoles...)
	bc := b.mustDelegate(t, c.id, ab.GetId(), 30*time.Minute, 1, "tools-read")
	events := e.subscribe(t)
	h1 := e.b.HTTPClient(t, e.rs).Transport.(*http.Transport).Clone()
	h1.ForceAttemptHTTP2, h1.TLSClientConfig.NextProtos = false, []string{"http/1.1"}
	events1 := e.subscribeWith(t, &http.Client{Transport: h1}, "HTTP/1.1", "")

	tok := e.mustExchange(t, c.id, brokertest.OAuthToolsAudience, "", bc.GetId()).AccessToken
	got := e.introspect(t, tok)
	if got["active"] != true || got["sub"] != c.id.String() || got["aud"] != brokertest.OAuthToolsAudience || got["act"] == nil {
		t.Fatalf("introspection of a live token: %v", got)
	}
	jti := got["jti"].(string)
	e.revokeLineage(t, ab.GetId(), "lineage test")
	e.wantActive(t, tok, false)
	ev := events.await(t, jti)
	events1.await(t, jti)
	if nodes, _ := ev["nodes"].([]any); !slices.Contains(nodes, any("grant:"+bc.GetId())) {
		t.Errorf("event %v does not name the node grant:%s", ev, bc.GetId())
	}

	own := e.mustExchange(t, a.id, brokertest.OAuthToolsAudience, "", "").AccessToken
	e.wantActive(t, own, true)
	e.kill(t, &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: a.id.String()}, Reason: "kill test"})
	e.wantActive(t, own, false)
	events.await(t, e.introspectJTI(t, own))

	held := e.mustExchange(t, b.id, brokertest.OAuthToolsAudience, "", "").AccessToken
	var r oauthReply
	if st := e.post(t, c.id, "/oauth2/revoke", url.Values{"token": {held}}, &r); st != 403 || r.Error != "unauthorized_client" {
		t.Errorf("revocation by another agent: %d %s", st, r.Error)
	}
	if st := e.post(t, spiffeid.ID{}, "/oauth2/revoke", url.Values{"token": {held}}, &r); st != http.StatusUnauthorized || r.Error != "invalid_client" {
		t.Errorf("revocation without a client certificate: %d %s", st, r.Error)
	}
	e.wantActive(t, held, true)
	var empty map[string]any
	if st := e.post(t, b.id, "/oauth2/revoke", url.Values{"token": {held}}, &empty); st != http.StatusOK {
		t.Fatalf("revocation by the holder: %d %v", st, empty)
	}
	e.wantActive(t, held, false)
	e.wantActive(t, "not.a.token", false)
}

// A deregistered agent's token, then every token under the global kill
// switch, is inactive, and the token endpoint issues none while the
// switch is on.
func TestOAuthIntrospectionDeregisterGlobalKill(t *testing.T) {
	e := newOAuthEnv(t)
	a := e.register(t, "a", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	gone := e.register(t, "gone", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	tok := e.mustExchange(t, a.id, brokertest.OAuthToolsAudience, "", "").AccessToken
	goneTok := e.mustExchange(t, gone.id, brokertest.OAuthToolsAudience, "", "").AccessToken
	if _, err := e.admin.DeregisterAgent(t.Context(), &adminv1.DeregisterAgentRequest{SpiffeId: gone.id.String(), Reason: "retired"}); err != nil {
		t.Fatal(err)
	}
	e.wantActive(t, goneTok, false)
	e.wantActive(t, tok, true)

	e.kill(t, &adminv1.KillRequest{Target: &adminv1.KillRequest_All{All: true}, Reason: "global kill test"})
	e.wantActive(t, tok, false)
	if r := e.exchange(t, a.id, brokertest.OAuthToolsAudience, "", ""); r.status != http.StatusForbidden || r.Error != "access_denied" || r.AccessToken != "" {
		t.Errorf("token exchange under the global kill switch: %d %s %q", r.status, r.Error, r.Description)
	}
}

// introspectJTI is the jti of a token, read without judging it.
func (e *oauthEnv) introspectJTI(t *testing.T, token string) string {
	t.Helper()
	_, cl, err := verifyToken(t, e.jwks(t), token)
	if err != nil {
		t.Fatal(err)
	}
	return cl["jti"].(string)
}

// Rotation: a token signed before verifies (go-jose, JWKS; introspection)
// until its key version is trimmed from the set, one token lifetime after
// its successor appeared; new tokens name the new key. The resource's
// tokens live 3 s here, so that the trim comes within the test.
func TestOAuthKeyRotation(t *testing.T) {
	short := strings.NewReplacer("tools.call]\n    max_ttl: 10m", "tools.call]\n    max_ttl: 3s", "tools.admin]\n    max_ttl: 5m", "tools.admin]\n    max_ttl: 3s")
	e := newOAuthEnv(t, withRoles(short.Replace(brokertest.Roles+brokertest.OAuthRoles)))
	a := e.register(t, "a", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	old := e.mustExchange(t, a.id, brokertest.OAuthToolsAudience, "", "").AccessToken
	oldKid, _, err := verifyToken(t, e.jwks(t), old)
	if err != nil {
		t.Fatal(err)
	}

	e.b.RotateSigningKey(t)
	rotated := time.Now()
	fresh := e.mustExchange(t, a.id, brokertest.OAuthToolsAudience, "", "").AccessToken
	set := e.jwks(t)
	newKid, _, err := verifyToken(t, set, fresh)
	if err != nil || newKid == oldKid {
		t.Fatalf("after rotation: kid %s (before %s), %v", newKid, oldKid, err)
	}
	if _, _, err := verifyToken(t, set, old); err != nil {
		t.Errorf("a token signed before the rotation no longer verifies: %v", err)
	}
	e.wantActive(t, old, true)

	// One token lifetime after the rotation, the old version goes; the
	// next rotation keeps the one before it, which signed fresh.
	time.Sleep(time.Until(rotated.Add(3*time.Second + 100*time.Millisecond)))
	e.b.RotateSigningKey(t)
	set = e.jwks(t)
	if _, _, err := verifyToken(t, set, old); err != errNoKey {
		t.Errorf("a token of a trimmed key version: %v, want %v", err, errNoKey)
	}
	if _, _, err := verifyToken(t, set, fresh); err != nil {
		t.Errorf("the previous version was trimmed too early: %v", err)
	}
	e.wantActive(t, old, false)
}

// The metadata names every endpoint under the issuer.
func TestOAuthMetadata(t *testing.T) {
	e := newOAuthEnv(t)
	resp, err := e.b.HTTPClient(t, spiffeid.ID{}).Get(e.b.OAuthURL() + "/.well-known/oauth-authorization-server")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var md map[string]any
	if err := json.Unmarshal(raw, &md); err != nil {
		t.Fatal(err)
	}
	iss := brokertest.OAuthIssuer
	for k, want := range map[string]string{"issuer": iss, "token_endpoint": iss + "/oauth2/token", "jwks_uri": iss + "/.well-known/jwks.json",
		"introspection_endpoint": iss + "/oauth2/introspect", "revocation_endpoint": iss + "/oauth2/revoke",
		"atf_revocation_events_endpoint": iss + "/oauth2/events"} {
		if md[k] != want {
			t.Errorf("%s = %v, want %s", k, md[k], want)
		}
	}
	if got := mustJSON(t, md["grant_types_supported"]); got != `["urn:ietf:params:oauth:grant-type:token-exchange"]` {
		t.Errorf("grant_types_supported = %s", got)
	}
	if got := mustJSON(t, md["scopes_supported"]); got != `["tools.admin","tools.call","tools.list"]` {
		t.Errorf("scopes_supported = %s, want every resource's scopes, sorted", got)
	}
}

// With two replicas on one etcd, a token issued on one is active at the
// other's introspection, and a revocation committed on one reaches the
// event stream of the other (through the change feed) and flips its
// introspection.
func TestOAuthHAReplicas(t *testing.T) {
	f := brokertest.Setup(t)
	prefix := "/oauth-" + rand.Text() + "/"
	rs := f.ID(t, "resource-server")
	one := startOAuthEnv(t, f, brokertest.WithOAuth(t, f.EtcdConfig(t, t.TempDir(), prefix, "one"), rs))
	two := startOAuthEnv(t, f, brokertest.WithOAuth(t, f.EtcdConfig(t, t.TempDir(), prefix, "two"), rs))
	a := one.register(t, "a", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	b := one.register(t, "b", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	ab := a.mustDelegate(t, b.id, "", time.Hour, 0, "tools-read")
	events := two.subscribe(t)

	tok := one.mustExchange(t, b.id, brokertest.OAuthToolsAudience, "tools.list", ab.GetId()).AccessToken
	got := two.introspect(t, tok)
	if got["active"] != true {
		t.Fatalf("the other replica's introspection of a live token: %v", got)
	}
	start := time.Now()
	one.revokeLineage(t, ab.GetId(), "ha test")
	ev := events.await(t, got["jti"].(string))
	t.Logf("revocation on one → event on two: %s", time.Since(start))
	if nodes, _ := ev["nodes"].([]any); !slices.Contains(nodes, any("grant:"+ab.GetId())) {
		t.Errorf("event %v does not name grant:%s", ev, ab.GetId())
	}
	two.wantActive(t, tok, false)
}

// A JWT-SVID whose audience is the issuer authenticates the client as
// subject_token, without a client certificate; one for another audience,
// or naming another workload than the certificate, does not.
func TestOAuthJWTSVIDSubjectToken(t *testing.T) {
	e := newOAuthEnv(t)
	a := e.register(t, "a", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	b := e.register(t, "b", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	mint := func(id spiffeid.ID, aud string) string {
		jwt, err := e.f.Stack.MintJWT(t.Context(), id, aud, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return jwt
	}
	form := func(jwt, typ string) url.Values {
		return url.Values{"resource": {brokertest.OAuthToolsAudience}, "subject_token": {jwt}, "subject_token_type": {typ}}
	}
	const jwtType = "urn:ietf:params:oauth:token-type:jwt"
	r := e.exchangeForm(t, spiffeid.ID{}, form(mint(a.id, brokertest.OAuthIssuer), jwtType))
	if r.status != http.StatusOK {
		t.Fatalf("JWT-SVID as subject_token: %d %s %s", r.status, r.Error, r.Description)
	}
	if _, cl, err := verifyToken(t, e.jwks(t), r.AccessToken); err != nil || cl["sub"] != a.id.String() {
		t.Fatalf("token of a JWT-SVID client: sub %v, %v", cl["sub"], err)
	}
	for _, tt := range []struct {
		name string
		as   spiffeid.ID
		form url.Values
		part string
	}{
		{"another audience", spiffeid.ID{}, form(mint(a.id, "vault"), jwtType), "audience"},
		{"another workload than the certificate", b.id, form(mint(a.id, brokertest.OAuthIssuer), jwtType), "names " + a.id.String()},
		{"not said to be a JWT", spiffeid.ID{}, form(mint(a.id, brokertest.OAuthIssuer), "urn:ietf:params:oauth:token-type:access_token"), "subject_token_type"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := e.exchangeForm(t, tt.as, tt.form)
			if r.status != http.StatusUnauthorized || r.Error != "invalid_client" || !strings.Contains(r.Description, tt.part) {
				t.Errorf("got %d %s %q, want 401 invalid_client saying %q", r.status, r.Error, r.Description, tt.part)
			}
		})
	}
}

// A Junior's write resource waits for a human's approval, then is issued
// on it; a demotion that takes a write away, and a policy change that
// takes a resource away, make their tokens inactive.
func TestOAuthApprovalDemotionPolicy(t *testing.T) {
	f := brokertest.Setup(t)
	approver := f.ID(t, "approver")
	cfg := f.OAuthConfig(t, t.TempDir(), f.ID(t, "resource-server"))
	cfg.Approvals.Approvers = []string{approver.String()}
	e := startOAuthEnv(t, f, cfg)
	junior := e.register(t, "junior", brokerv1.Level_LEVEL_JUNIOR, toolRoles...)
	r := e.exchange(t, junior.id, brokertest.OAuthAdminAudience, "tools.admin", "")
	if r.status != http.StatusBadRequest || r.Error != "authorization_pending" || r.ApprovalID == "" || r.DecisionID == "" {
		t.Fatalf("a Junior's write: %d %s %q (approval %q)", r.status, r.Error, r.Description, r.ApprovalID)
	}
	// The approver sees the scopes the token would carry.
	listed, err := e.b.Dial(t, approver).Approvals.ListApprovals(t.Context(), &adminv1.ListApprovalsRequest{})
	if err != nil || len(listed.GetApprovals()) != 1 || !slices.Equal(listed.GetApprovals()[0].GetScopes(), []string{"tools.admin"}) {
		t.Fatalf("the pending approval as listed: %v, %v; want its scopes", listed.GetApprovals(), err)
	}
	if _, err := e.b.Dial(t, approver).Approvals.DecideApproval(t.Context(), &adminv1.DecideApprovalRequest{ApprovalId: r.ApprovalID,
		Verdict: adminv1.Verdict_VERDICT_APPROVE, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	if r := e.exchangeForm(t, junior.id, url.Values{"resource": {brokertest.OAuthAdminAudience}, "approval_id": {r.ApprovalID}}); r.status != http.StatusOK {
		t.Fatalf("redeeming the approval: %d %s %s", r.status, r.Error, r.Description)
	}
	// Asked for no scope, the approval names every scope the role has, and
	// holds the redemption to them.
	if r := e.exchange(t, junior.id, brokertest.OAuthAdminAudience, "", ""); r.Error != "authorization_pending" {
		t.Fatalf("a Junior's second write: %d %s %q", r.status, r.Error, r.Description)
	}
	listed, err = e.b.Dial(t, approver).Approvals.ListApprovals(t.Context(), &adminv1.ListApprovalsRequest{})
	if err != nil || len(listed.GetApprovals()) != 1 || !slices.Equal(listed.GetApprovals()[0].GetScopes(), []string{"tools.admin"}) {
		t.Fatalf("the pending approval asked without a scope: %v, %v; want the role's scopes", listed.GetApprovals(), err)
	}

	senior := e.register(t, "senior", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	write := e.mustExchange(t, senior.id, brokertest.OAuthAdminAudience, "", "").AccessToken
	read := e.mustExchange(t, senior.id, brokertest.OAuthToolsAudience, "", "").AccessToken
	if _, err := e.b.Dial(t, f.Admin).Maturity.Demote(t.Context(), &adminv1.DemoteRequest{SpiffeId: senior.id.String(), Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	e.wantActive(t, write, false)
	e.wantActive(t, read, true)

	deny := brokertest.OpenPolicy(f.Stack.TrustDomain) + "p, " + senior.id.String() + ", tools-read, read, intern, deny\n"
	set, err := e.admin.SetPolicy(t.Context(), &adminv1.SetPolicyRequest{Policy: deny, Comment: "no tools for senior"})
	if err != nil || set.GetSummary().GetCredentialsRevoked() != 1 {
		t.Fatalf("SetPolicy: %v, %v; want one credential revoked", set.GetSummary(), err)
	}
	e.wantActive(t, read, false)
}

// Vault failing to sign: 503 temporarily_unavailable with the decision's
// id, nothing issued or recorded; a Vault refusing to sign (the key gone):
// 400 invalid_request. Both are audited as credential_failed.
func TestOAuthVaultFaults(t *testing.T) {
	f := brokertest.Setup(t)
	proxy := brokertest.NewFaultProxy(t, strings.TrimPrefix(f.Stack.VaultAddr, "http://"))
	cfg := f.OAuthConfig(t, t.TempDir(), f.ID(t, "resource-server"))
	cfg.Vault.Address = proxy.URL()
	cfg.Vault.Breaker.Failures = 1000
	e := startOAuthEnv(t, f, cfg)
	a := e.register(t, "a", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	e.mustExchange(t, a.id, brokertest.OAuthToolsAudience, "", "")

	proxy.Fail(http.StatusServiceUnavailable)
	r := e.exchange(t, a.id, brokertest.OAuthToolsAudience, "", "")
	proxy.Fail(0)
	if r.status != http.StatusServiceUnavailable || r.Error != "temporarily_unavailable" || r.DecisionID == "" ||
		!strings.Contains(r.Description, "Vault did not sign the access token") {
		t.Fatalf("Vault unavailable: %d %s %q (decision %q)", r.status, r.Error, r.Description, r.DecisionID)
	}
	proxy.Fail(http.StatusForbidden)
	r = e.exchange(t, a.id, brokertest.OAuthToolsAudience, "", "")
	proxy.Fail(0)
	if r.status != http.StatusBadRequest || r.Error != "invalid_request" || !strings.Contains(r.Description, "Vault refused to sign") {
		t.Fatalf("Vault refusing: %d %s %q", r.status, r.Error, r.Description)
	}
	recs, err := e.admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "credential_failed", Agent: a.id.String()})
	if err != nil || len(recs.GetRecords()) != 2 {
		t.Fatalf("credential_failed records: %v, %v; want 2", recs.GetRecords(), err)
	}
	creds, err := e.admin.GetLineage(t.Context(), &adminv1.GetLineageRequest{Root: &adminv1.GetLineageRequest_AgentId{AgentId: a.id.String()}})
	if err != nil || len(creds.GetCredentials()) != 1 {
		t.Fatalf("live credentials of the agent: %v, %v; want the one issued before the faults", creds.GetCredentials(), err)
	}
}

// A roles file with a jwt role and the OAuth endpoints off: atfd refuses
// to start, saying what to do.
func TestOAuthRolesNeedTheEndpoints(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.OAuthConfig(t, t.TempDir())
	cfg.OAuth = config.OAuthConfig{}
	_, err := f.TryStart(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "is of kind jwt (OAuth access tokens) and oauth.listen_addr is not set") {
		t.Fatalf("start with a jwt role and no OAuth endpoints: %v", err)
	}
}

// A grant narrows an access-token role to some of its scopes: a token
// under it carries only those (all of them when none is asked for), a
// wider scope is invalid_scope naming the grant, a grant below it may
// narrow further but never widen, and a Vault role or a scope the role
// does not have cannot be narrowed at all.
func TestOAuthGrantScopes(t *testing.T) {
	e := newOAuthEnv(t)
	a := e.register(t, "a", brokerv1.Level_LEVEL_PRINCIPAL, toolRoles...)
	b := e.register(t, "b", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	c := e.register(t, "c", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	delegate := func(from delegAgent, to spiffeid.ID, parent string, maxDepth int32, scopes ...*brokerv1.RoleScopes) (*brokerv1.Grant, error) {
		ttl := time.Hour
		if parent != "" {
			ttl = 30 * time.Minute
		}
		r, err := from.bc.Delegate(t.Context(), &brokerv1.DelegateRequest{Delegatee: to.String(), Roles: []string{"tools-read"},
			Ttl: durationpb.New(ttl), MaxDepth: maxDepth, ParentGrantId: parent, Scopes: scopes})
		return r.GetGrant(), err
	}
	listOnly := &brokerv1.RoleScopes{Role: "tools-read", Scopes: []string{"tools.list"}}
	g1, err := delegate(a, b.id, "", 1, listOnly)
	if err != nil {
		t.Fatal(err)
	}
	if got := g1.GetScopes(); len(got) != 1 || got[0].GetRole() != "tools-read" || !slices.Equal(got[0].GetScopes(), []string{"tools.list"}) {
		t.Fatalf("the grant's scopes = %v", got)
	}
	created, err := e.admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "grant_created", Agent: a.id.String()})
	if err != nil || len(created.GetRecords()) == 0 || created.GetRecords()[0].GetDetail()["scopes"] != "tools-read=tools.list" {
		t.Fatalf("the grant's audit record = %v, %v; want its scopes", created.GetRecords(), err)
	}

	set := e.jwks(t)
	r := e.mustExchange(t, b.id, brokertest.OAuthToolsAudience, "", g1.GetId())
	if _, claims, err := verifyToken(t, set, r.AccessToken); err != nil || claims["scope"] != "tools.list" || r.Scope != "tools.list" {
		t.Fatalf("a token under the narrowing grant, no scope asked: scope %v (answer %q), %v; want tools.list", claims["scope"], r.Scope, err)
	}
	r = e.exchange(t, b.id, brokertest.OAuthToolsAudience, "tools.call", g1.GetId())
	if r.status != 400 || r.Error != "invalid_scope" || r.DecisionID == "" || !strings.Contains(r.Description, `scope "tools.call" of role "tools-read" is wider than the grants of the chain under grant `+g1.GetId()) {
		t.Fatalf("a scope wider than the grant: %d %s (%s)", r.status, r.Error, r.Description)
	}
	// On its own authority B has every scope of the role.
	if r = e.mustExchange(t, b.id, brokertest.OAuthToolsAudience, "tools.call", ""); r.Scope != "tools.call" {
		t.Fatalf("B's own token for tools.call: scope %q", r.Scope)
	}

	// Below g1, B may not widen, and a grant that names no scope keeps g1's.
	if _, err := delegate(b, c.id, g1.GetId(), 0, &brokerv1.RoleScopes{Role: "tools-read", Scopes: []string{"tools.list", "tools.call"}}); status.Code(err) != codes.PermissionDenied ||
		!strings.Contains(err.Error(), `may pass on only the scopes ["tools.list"] of role "tools-read"`) {
		t.Fatalf("widening below the grant: %v", err)
	}
	g2, err := delegate(b, c.id, g1.GetId(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if r = e.exchange(t, c.id, brokertest.OAuthToolsAudience, "tools.call", g2.GetId()); r.Error != "invalid_scope" {
		t.Fatalf("C under a grant below the narrowing one, asking tools.call: %d %s (%s)", r.status, r.Error, r.Description)
	}
	if r = e.mustExchange(t, c.id, brokertest.OAuthToolsAudience, "tools.list", g2.GetId()); r.Scope != "tools.list" {
		t.Fatalf("C's token for tools.list: scope %q", r.Scope)
	}

	for name, rs := range map[string]*brokerv1.RoleScopes{
		"a scope the role does not have": {Role: "tools-read", Scopes: []string{"tools.admin"}},
		"a Vault role":                   {Role: "reports-read", Scopes: []string{"read"}},
		"no role of the broker":          {Role: "nothing", Scopes: []string{"x"}},
	} {
		if _, err := delegate(a, b.id, "", 0, rs); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

// A resource server that loses its event stream and reconnects with the
// last id it heard (Last-Event-ID) hears the revocations it missed,
// without a reset: on one broker, and on another replica of the same
// etcd store than the one it was following.
func TestOAuthEventsResume(t *testing.T) {
	t.Run("bbolt", func(t *testing.T) {
		e := newOAuthEnv(t)
		resumeEvents(t, e, e)
	})
	t.Run("etcd-another-replica", func(t *testing.T) {
		f := brokertest.Setup(t)
		prefix := "/oauth-resume-" + rand.Text() + "/"
		rs := f.ID(t, "resource-server")
		one := startOAuthEnv(t, f, brokertest.WithOAuth(t, f.EtcdConfig(t, t.TempDir(), prefix, "one"), rs))
		two := startOAuthEnv(t, f, brokertest.WithOAuth(t, f.EtcdConfig(t, t.TempDir(), prefix, "two"), rs))
		resumeEvents(t, one, two)
	})
}

// resumeEvents follows one's events, hangs up, revokes meanwhile, and
// resumes on two.
func resumeEvents(t *testing.T, one, two *oauthEnv) {
	a := one.register(t, "a", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	b := one.register(t, "b", brokerv1.Level_LEVEL_SENIOR, toolRoles...)
	var grants []*brokerv1.Grant
	for range 3 {
		grants = append(grants, a.mustDelegate(t, b.id, "", time.Hour, 0, "tools-read"))
	}
	// A stream that hears nothing revoked still gets an id at once, and
	// resumes from it.
	quiet := one.subscribe(t)
	deadline := time.Now().Add(10 * time.Second)
	for quiet.lastID() == "" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if quiet.lastID() == "" {
		t.Fatal("a quiet event stream gave no id to resume from")
	}
	quiet.close()
	first := one.subscribeWith(t, one.b.HTTPClient(t, one.rs), "HTTP/2.0", quiet.lastID())
	one.revokeLineage(t, grants[0].GetId(), "before the hang-up")
	first.awaitNode(t, "grant:"+grants[0].GetId())
	if kind := <-first.first; kind != "revoked" {
		t.Fatalf("the stream resumed from a quiet one's id begins with %q, want no reset", kind)
	}
	id := first.lastID()
	if id == "" {
		t.Fatal("the revoked event came without an id to resume from")
	}
	first.close()
	for _, g := range grants[1:] {
		one.revokeLineage(t, g.GetId(), "while the resource server was away")
	}
	again := two.subscribeWith(t, two.b.HTTPClient(t, two.rs), "HTTP/2.0", id)
	select {
	case kind := <-again.first:
		if kind != "revoked" {
			t.Fatalf("the resumed stream begins with %q, want the revocations missed (not a reset)", kind)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the resumed stream sent nothing")
	}
	for _, g := range grants[1:] {
		again.awaitNode(t, "grant:"+g.GetId())
	}
	// An id from before the resume window, or of another cluster, is
	// answered with a reset (TestVerifierResetTime).
}
