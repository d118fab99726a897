package oauthapi

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/agentictrust/atf/broker/accesstoken"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/store"
)

// introspection is RFC 7662 §2.2's answer: active, and for an active
// token its claims.
type introspection struct {
	Active bool `json:"active"`
	*accesstoken.Claims
	TokenType string `json:"token_type,omitempty"`
}

// introspect tells a resource server whether a token is active: signed
// by this broker with a published key, unexpired, its record in the
// store live (not revoked itself, nor with its lineage, its agent or a
// demotion), its agent registered and not stopped, and no global kill.
func (s *Server) introspect(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.resourceServer(w, r, "oauth2/introspect")
	if !ok || !s.form(w, r) {
		return
	}
	c, err := s.live(r.PostForm.Get("token"))
	if err != nil {
		edge.Logger(ctx).Info("introspection: inactive", slog.String(edge.LogReason, err.Error()))
		writeJSON(w, http.StatusOK, introspection{})
		return
	}
	writeJSON(w, http.StatusOK, introspection{Active: true, Claims: &c, TokenType: "Bearer"})
}

// Why a token is not active (logged, never told).
var (
	errExpired  = errors.New("expired")
	errRevoked  = errors.New("revoked")
	errStopped  = errors.New("agent not active (killed, deregistered or suspended)")
	errKillAll  = errors.New("global kill switch")
	errUnknown  = errors.New("no record of it")
	errNotToken = errors.New("not a token of this broker")
)

// live is token's claims if it is active, or why not.
func (s *Server) live(token string) (accesstoken.Claims, error) {
	c, err := s.cfg.Tokens.Verify(token)
	if err != nil {
		return c, errNotToken
	}
	if !s.cfg.Now().Before(timeOf(c.Expiry)) || s.cfg.Now().Before(timeOf(c.NotBefore)) {
		return c, errExpired
	}
	if s.cfg.Revoker.GlobalKill() != nil {
		return c, errKillAll
	}
	cred, err := s.cfg.Store.Credential(c.Subject, c.ID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return c, errUnknown
	case err != nil:
		return c, err
	case !cred.RevokedAt.IsZero():
		return c, errRevoked
	}
	a, err := s.cfg.Store.GetAgent(c.Subject)
	if err != nil || !a.Usable() {
		return c, errStopped
	}
	return c, nil
}

// revoke is RFC 7009 revocation by the token's holder: its own SVID must
// be the token's subject. As the RFC asks, a token that is not one, or
// not live, is answered like a revoked one: 200.
func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	id, ok := s.mtls(w, r)
	if !ok {
		return
	}
	ctx := edge.Begin(r.Context(), s.cfg.Log, id, "oauth2/revoke")
	if !s.form(w, r) {
		return
	}
	c, err := s.cfg.Tokens.Verify(r.PostForm.Get("token"))
	if err != nil {
		writeJSON(w, http.StatusOK, struct{}{})
		return
	}
	if c.Subject != id.ID.String() {
		s.fail(ctx, w, http.StatusForbidden, "unauthorized_client", "only the token's holder ("+c.Subject+") may revoke it", c.DecisionID)
		return
	}
	if _, err := s.cfg.Revoker.Credentials(ctx, c.Subject, c.Subject, "revoked by its holder (RFC 7009)", func(cr store.Credential) bool {
		return cr.Accessor == c.ID
	}); err != nil {
		s.refused(ctx, w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}
