// Package oauthapi is the broker's OAuth 2.0 authorization server
// (docs/oauth.md): the RFC 8693 token exchange that issues access tokens
// for roles of kind jwt through the same decision as any credential, the
// key set and RFC 8414 metadata, RFC 7662 introspection and RFC 7009
// revocation, and the revocation events resource servers subscribe to.
//
// It serves HTTPS with the broker's X.509-SVID and authenticates callers
// by theirs (mutual TLS, RFC 8705 tls_client_auth), verified like the
// gRPC edge's, or, at the token endpoint, by a JWT-SVID given as
// subject_token.
package oauthapi

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/broker/accesstoken"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/store"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Exchanger runs a credential request through the broker's pipeline
// (agentapi.Service.Exchange).
type Exchanger interface {
	Exchange(ctx context.Context, req *brokerv1.FetchCredentialRequest, scopes []string) (*brokerv1.FetchCredentialResponse, error)
}

// Tokens verifies access tokens and publishes their keys
// (accesstoken.Tokens).
type Tokens interface {
	Verify(token string) (accesstoken.Claims, error)
	JWKS() []byte
}

// Store reads what introspection judges a token by (store.Store).
type Store interface {
	GetAgent(id string) (store.Agent, error)
	Credential(agentID, accessor string) (store.Credential, error)
}

// Revoker revokes a holder's token and tells of revocations
// (revoke.Revoker, through the composition root).
type Revoker interface {
	GlobalKill() *store.Kill
	Credentials(ctx context.Context, agent, actor, reason string, revoke func(store.Credential) bool) (*brokerv1.RevocationSummary, error)
	// Events watches every agent's revocations, after resumeAfter (an
	// event's cursor) if it can resume from there (resumed); the channel
	// closes if the watcher falls behind.
	Events(ctx context.Context, resumeAfter string) (events <-chan Event, resumed bool, cancel func())
}

// Event is a revocation as resource servers hear it: a token is revoked
// if its jti is in JTIs, its sub in Agents, or a node of its atf_lineage
// in Nodes.
type Event struct {
	JTIs   []string  `json:"jtis"`
	Nodes  []string  `json:"nodes"`
	Agents []string  `json:"agents"`
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
	// Cursor is the event's position (the SSE id).
	Cursor string `json:"-"`
	// Mark: no event, but the position every event sent runs to.
	Mark bool `json:"-"`
}

// Config is what the server needs.
type Config struct {
	Issuer string
	// Roles are the broker's roles; those of kind jwt are the resources.
	Roles map[string]config.Role
	// X509 verifies callers' X.509-SVIDs; JWT verifies JWT-SVIDs given as
	// subject_token, whose audience must be the issuer (nil: refused).
	X509 *attest.Verifier
	JWT  *attest.Verifier
	// ResourceServers may introspect and watch revocation events.
	ResourceServers map[spiffeid.ID]bool
	Exchanger       Exchanger
	Tokens          Tokens
	Store           Store
	Revoker         Revoker
	Log             *slog.Logger
	Now             func() time.Time
	// Closing ends the event streams when the broker stops.
	Closing <-chan struct{}
	// Ping is the interval of the event stream's keep-alive; default 15 s.
	Ping time.Duration
}

// Server serves the OAuth endpoints.
type Server struct {
	cfg       Config
	resources map[string]config.Role // by audience
	mux       *http.ServeMux
}

// Paths of the endpoints.
const (
	PathToken      = "/oauth2/token"
	PathIntrospect = "/oauth2/introspect"
	PathRevoke     = "/oauth2/revoke"
	PathEvents     = "/oauth2/events"
	PathJWKS       = "/.well-known/jwks.json"
	PathMetadata   = "/.well-known/oauth-authorization-server"
)

// New returns the server.
func New(cfg Config) *Server {
	if cfg.Ping <= 0 {
		cfg.Ping = 15 * time.Second
	}
	s := &Server{cfg: cfg, resources: map[string]config.Role{}, mux: http.NewServeMux()}
	for _, r := range cfg.Roles {
		if r.Kind == config.KindJWT {
			s.resources[r.Audience] = r
		}
	}
	s.mux.HandleFunc("POST "+PathToken, s.token)
	s.mux.HandleFunc("POST "+PathIntrospect, s.introspect)
	s.mux.HandleFunc("POST "+PathRevoke, s.revoke)
	s.mux.HandleFunc("GET "+PathEvents, s.events)
	s.mux.HandleFunc("GET "+PathJWKS, s.jwks)
	s.mux.HandleFunc("GET "+PathMetadata, s.metadata)
	return s
}

// ServeHTTP serves the endpoints.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// maxForm bounds a request body, a form of a few tokens, and formTimeout
// how long it may take to arrive.
const (
	maxForm     = 64 << 10
	formTimeout = 30 * time.Second
)

// peer is the caller's identity from its X.509-SVID, if it presented one.
func (s *Server) peer(r *http.Request) (attest.Identity, bool, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return attest.Identity{}, false, nil
	}
	id, err := s.cfg.X509.VerifyX509(r.TLS.PeerCertificates)
	return id, true, err
}

// mtls authenticates the caller by its X.509-SVID, which it must
// present; on refusal it has answered.
func (s *Server) mtls(w http.ResponseWriter, r *http.Request) (attest.Identity, bool) {
	id, ok, err := s.peer(r)
	switch {
	case !ok:
		s.fail(r.Context(), w, http.StatusUnauthorized, "invalid_client", "present your X.509-SVID (mutual TLS)", "")
		return id, false
	case err != nil:
		s.fail(r.Context(), w, http.StatusUnauthorized, "invalid_client", err.Error(), "")
		return id, false
	}
	return id, true
}

// resourceServer authenticates a resource server by its X.509-SVID; on
// refusal it has answered.
func (s *Server) resourceServer(w http.ResponseWriter, r *http.Request, method string) (context.Context, bool) {
	id, ok := s.mtls(w, r)
	switch {
	case !ok:
		return nil, false
	case !s.cfg.ResourceServers[id.ID]:
		s.fail(r.Context(), w, http.StatusForbidden, "unauthorized_client", id.ID.String()+" is not in oauth.resource_servers", "")
		return nil, false
	}
	return edge.Begin(r.Context(), s.cfg.Log, id, method), true
}

// oauthError is an RFC 6749 §5.2 error, with the broker's decision id.
type oauthError struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
	DecisionID  string `json:"atf_decision_id,omitempty"`
	ApprovalID  string `json:"atf_approval_id,omitempty"`
}

// fail answers an error.
func (s *Server) fail(ctx context.Context, w http.ResponseWriter, status int, code, desc, decision string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `TLS realm="atfd"`)
	}
	edge.Logger(ctx).Info("oauth request refused", slog.String("error", code), slog.String(edge.LogDecisionID, decision))
	writeJSON(w, status, oauthError{Error: code, Description: desc, DecisionID: decision})
}

// writeJSON answers v, never to be cached: tokens and verdicts.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	if w.Header().Get("Cache-Control") == "" {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Pragma", "no-cache")
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // a client gone mid-answer has nothing to hear
}

// form parses a POST form, bounded; on error it has answered.
func (s *Server) form(w http.ResponseWriter, r *http.Request) bool {
	// A form is small: one that is slow to arrive is cut off.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(formTimeout))
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		s.fail(r.Context(), w, http.StatusBadRequest, "invalid_request", "the body must be a form (application/x-www-form-urlencoded) of at most 64 KiB", "")
		return false
	}
	for k, v := range r.PostForm {
		if len(v) > 1 {
			s.fail(r.Context(), w, http.StatusBadRequest, "invalid_request", "parameter "+k+" is given more than once", "")
			return false
		}
	}
	return true
}
