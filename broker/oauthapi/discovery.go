package oauthapi

import (
	"net/http"
	"slices"
	"strconv"
	"time"
)

// keysMaxAge is how long a verifier may cache the key set: well under the
// overlap a retired key stays published, so a verifier always knows the
// key a fresh token names (docs/oauth.md, rotation).
const keysMaxAge = 5 * time.Minute

var cacheKeys = "public, max-age=" + strconv.Itoa(int(keysMaxAge/time.Second))

// jwks serves the key set.
func (s *Server) jwks(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", cacheKeys)
	_, _ = w.Write(s.cfg.Tokens.JWKS())
}

// metadata serves RFC 8414 authorization server metadata.
func (s *Server) metadata(w http.ResponseWriter, _ *http.Request) {
	iss := s.cfg.Issuer
	w.Header().Set("Cache-Control", cacheKeys)
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                        iss,
		"token_endpoint":                                iss + PathToken,
		"jwks_uri":                                      iss + PathJWKS,
		"introspection_endpoint":                        iss + PathIntrospect,
		"revocation_endpoint":                           iss + PathRevoke,
		"atf_revocation_events_endpoint":                iss + PathEvents,
		"grant_types_supported":                         []string{GrantTypeTokenExchange},
		"token_endpoint_auth_methods_supported":         []string{"tls_client_auth"},
		"introspection_endpoint_auth_methods_supported": []string{"tls_client_auth"},
		"revocation_endpoint_auth_methods_supported":    []string{"tls_client_auth"},
		"tls_client_certificate_bound_access_tokens":    false,
		"scopes_supported":                              s.scopes(),
		"response_types_supported":                      []string{},
	})
}

// scopes are every resource's scopes.
func (s *Server) scopes() []string {
	var out []string
	for _, r := range s.resources {
		out = append(out, r.Scopes...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func timeOf(unix int64) time.Time { return time.Unix(unix, 0) }
