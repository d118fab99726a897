package oauthapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"buf.build/go/protovalidate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/edge"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Token exchange parameters (RFC 8693 §2.1, §3).
const (
	GrantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	TokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
	TokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
)

// tokenResponse is RFC 8693 §2.2.1's answer.
type tokenResponse struct {
	AccessToken     string `json:"access_token"`
	IssuedTokenType string `json:"issued_token_type"`
	TokenType       string `json:"token_type"`
	ExpiresIn       int64  `json:"expires_in"`
	Scope           string `json:"scope,omitempty"`
}

// token is the token exchange: the client authenticated by its SVID, the
// resource it names resolved to its role, and the request run through
// the broker's pipeline.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if !s.form(w, r) {
		return
	}
	f := r.PostForm
	if gt := f.Get("grant_type"); gt != GrantTypeTokenExchange {
		s.fail(r.Context(), w, http.StatusBadRequest, "unsupported_grant_type", "grant_type must be "+GrantTypeTokenExchange, "")
		return
	}
	id, err := s.client(r)
	if err != nil {
		s.fail(r.Context(), w, http.StatusUnauthorized, "invalid_client", err.Error(), "")
		return
	}
	ctx := edge.Begin(r.Context(), s.cfg.Log, id, "oauth2/token")
	role, scopes, code, msg := s.target(f.Get("resource"), f.Get("audience"), f.Get("scope"), f.Get("requested_token_type"))
	if code != "" {
		s.fail(ctx, w, http.StatusBadRequest, code, msg, "")
		return
	}
	req := &brokerv1.FetchCredentialRequest{Role: role.Name, GrantId: f.Get("grant_id"), ApprovalId: f.Get("approval_id"), Purpose: f.Get("atf_purpose")}
	if ttl := f.Get("atf_ttl"); ttl != "" {
		d, err := time.ParseDuration(ttl)
		if err != nil {
			s.fail(ctx, w, http.StatusBadRequest, "invalid_request", "atf_ttl must be a duration such as 5m", "")
			return
		}
		req.Ttl = durationpb.New(d)
	}
	if err := protovalidate.Validate(req); err != nil {
		s.fail(ctx, w, http.StatusBadRequest, "invalid_request", err.Error(), "")
		return
	}
	resp, err := s.cfg.Exchanger.Exchange(ctx, req, scopes)
	if err != nil {
		s.refused(ctx, w, err)
		return
	}
	if ap := resp.GetApproval(); ap != nil {
		edge.Logger(ctx).Info("access token awaits approval", slog.String("approval_id", ap.GetId()))
		writeJSON(w, http.StatusBadRequest, oauthError{Error: "authorization_pending", DecisionID: ap.GetDecisionId(), ApprovalID: ap.GetId(),
			Description: fmt.Sprintf("role %s needs a human's approval (%s); once approved, ask again with approval_id=%s", role.Name, ap.GetId(), ap.GetId())})
		return
	}
	// The token's scopes are its policies (docs/oauth.md): those asked
	// for, or all the role's, as the token was signed with them.
	c := resp.GetCredential()
	writeJSON(w, http.StatusOK, tokenResponse{AccessToken: c.GetToken(), IssuedTokenType: TokenTypeAccessToken, TokenType: "Bearer",
		ExpiresIn: int64(time.Until(c.GetExpiresAt().AsTime()).Round(time.Second) / time.Second), Scope: strings.Join(c.GetPolicies(), " ")})
}

// client is the caller: by its X.509-SVID, or by the JWT-SVID it gives as
// subject_token (audience: the issuer). Given both, they must name the
// same workload.
func (s *Server) client(r *http.Request) (attest.Identity, error) {
	id, tlsOK, err := s.peer(r)
	if err != nil {
		return id, err
	}
	st, stt := r.PostForm.Get("subject_token"), r.PostForm.Get("subject_token_type")
	if st == "" {
		if !tlsOK {
			return id, errors.New("authenticate with your X.509-SVID (mutual TLS) or give your JWT-SVID as subject_token")
		}
		return id, nil
	}
	if stt != TokenTypeJWT {
		return id, errors.New("subject_token_type must be " + TokenTypeJWT + " (a JWT-SVID)")
	}
	if s.cfg.JWT == nil {
		return id, errors.New("this broker accepts no JWT-SVID as subject_token")
	}
	jid, err := s.cfg.JWT.VerifyJWT(st)
	if err != nil {
		return jid, fmt.Errorf("subject_token: %w (its audience must be %s)", err, s.cfg.Issuer)
	}
	if tlsOK && jid.ID != id.ID {
		return jid, fmt.Errorf("subject_token names %s, the client certificate %s", jid.ID, id.ID)
	}
	return jid, nil
}

// target resolves the resource asked for (resource, or audience: the
// same here) to its role, and checks the scopes asked for against the
// role's. A non-empty code is the refusal.
func (s *Server) target(resource, audience, scope, tokenType string) (role config.Role, scopes []string, code, msg string) {
	if tokenType != "" && tokenType != TokenTypeAccessToken {
		return role, nil, "invalid_request", "requested_token_type must be " + TokenTypeAccessToken
	}
	switch {
	case resource == "" && audience == "":
		return role, nil, "invalid_request", "name the resource the token is for: resource (RFC 8707) or audience"
	case resource != "" && audience != "" && resource != audience:
		return role, nil, "invalid_target", "resource and audience name different resources; a token is for one"
	case resource == "":
		resource = audience
	}
	role, ok := s.resources[resource]
	if !ok {
		return role, nil, "invalid_target", fmt.Sprintf("%q is not a resource of this broker (a role of kind jwt in its roles file)", resource)
	}
	scopes = strings.Fields(scope)
	if sc, foreign := role.ForeignScope(scopes); foreign {
		return role, nil, "invalid_scope", fmt.Sprintf("scope %q is not one of resource %s's: %s", sc, resource, strings.Join(role.Scopes, " "))
	}
	slices.Sort(scopes)
	return role, slices.Compact(scopes), "", ""
}

// refused answers a refusal of the pipeline as an RFC 6749 error.
func (s *Server) refused(ctx context.Context, w http.ResponseWriter, err error) {
	decision := ""
	var ref *decide.Refusal
	if errors.As(err, &ref) {
		decision = ref.Reasons.DecisionID
		switch ref.Reasons.Reason {
		case string(authz.NotRegistered):
			s.fail(ctx, w, http.StatusForbidden, "unauthorized_client", err.Error(), decision)
			return
		case string(decide.ReasonGrant), string(decide.ReasonRevoked):
			s.fail(ctx, w, http.StatusBadRequest, "invalid_grant", err.Error(), decision)
			return
		case string(decide.ReasonScope):
			s.fail(ctx, w, http.StatusBadRequest, "invalid_scope", err.Error(), decision)
			return
		}
	}
	// The gRPC edge's answer (its code, its words, when to retry), as
	// an RFC 6749 error: a store or Vault that does not answer is
	// temporarily_unavailable here as it is Unavailable there.
	st := edge.Answer(ctx, err, s.cfg.Now())
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			w.Header().Set("Retry-After", fmt.Sprint(int(ri.GetRetryDelay().AsDuration().Seconds())+1))
		}
	}
	oe, ok := errorCodes[st.Code()]
	if !ok {
		oe = errorCode{http.StatusInternalServerError, "server_error"}
	}
	s.fail(ctx, w, oe.status, oe.code, st.Message(), decision)
}

// errorCode is an RFC 6749 error code and its HTTP status.
type errorCode struct {
	status int
	code   string
}

// errorCodes are the RFC 6749 errors of the gRPC codes of refusals.
var errorCodes = map[codes.Code]errorCode{
	codes.InvalidArgument:    {http.StatusBadRequest, "invalid_request"},
	codes.FailedPrecondition: {http.StatusBadRequest, "invalid_request"},
	codes.AlreadyExists:      {http.StatusBadRequest, "invalid_request"},
	codes.NotFound:           {http.StatusBadRequest, "invalid_grant"},
	codes.PermissionDenied:   {http.StatusForbidden, "access_denied"},
	codes.Unauthenticated:    {http.StatusUnauthorized, "invalid_client"},
	codes.ResourceExhausted:  {http.StatusTooManyRequests, "temporarily_unavailable"},
	codes.Aborted:            {http.StatusServiceUnavailable, "temporarily_unavailable"},
	codes.Unavailable:        {http.StatusServiceUnavailable, "temporarily_unavailable"},
	codes.DeadlineExceeded:   {http.StatusServiceUnavailable, "temporarily_unavailable"},
	codes.Canceled:           {http.StatusServiceUnavailable, "temporarily_unavailable"},
}
