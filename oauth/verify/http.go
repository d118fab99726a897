package verify

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
)

type claimsKey struct{}

// ClaimsFrom returns the verified claims the middleware or an interceptor
// put in ctx.
func ClaimsFrom(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(*Claims)
	return c, ok
}

// WithClaims returns ctx carrying c, as the middleware passes it on.
func WithClaims(ctx context.Context, c *Claims) context.Context {
	return context.WithValue(ctx, claimsKey{}, c)
}

// retryAfter is the Retry-After, in seconds, of a 503 for an unknown
// revocation status: the stream reconnects within a few seconds.
const retryAfter = 5

// Middleware returns net/http middleware that admits a request only with a
// bearer token (RFC 6750 §2.1) that Verify accepts with the given scopes,
// and passes the claims to next in the request's context. Refusals are RFC
// 6750 §3 responses: 401 with error="invalid_token", 403 with
// error="insufficient_scope", or 503 when the token's revocation status is
// unknown.
func (v *Verifier) Middleware(scopes ...string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			token, ok := bearer(r.Header.Get("Authorization"))
			if !ok {
				// RFC 6750 §3.1: no error code when no credentials came.
				w.Header().Set("WWW-Authenticate", challenge(scopes))
				http.Error(w, "a bearer token is required", http.StatusUnauthorized)
				return
			}
			c, err := v.Verify(r.Context(), token, scopes...)
			if err != nil {
				Refuse(w, err, scopes...)
				return
			}
			next.ServeHTTP(w, r.WithContext(WithClaims(r.Context(), c)))
		})
	}
}

// bearer extracts the token of an Authorization header.
func bearer(h string) (string, bool) {
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// Refuse writes the RFC 6750 response for a verification error: 403
// insufficient_scope, 503 with Retry-After for an unknown revocation
// status, else 401 invalid_token; scopes are the ones the resource
// requires.
func Refuse(w http.ResponseWriter, err error, scopes ...string) {
	code, status := "invalid_token", http.StatusUnauthorized
	switch {
	case errors.Is(err, ErrInsufficientScope):
		code, status = "insufficient_scope", http.StatusForbidden
	case errors.Is(err, ErrRevocationUnknown):
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("WWW-Authenticate", challenge(scopes, `error="`+code+`"`, `error_description="`+quoted(err.Error())+`"`))
	http.Error(w, err.Error(), status)
}

// challenge is a Bearer WWW-Authenticate value with params, and the
// route's scopes.
func challenge(scopes []string, params ...string) string {
	if len(scopes) > 0 {
		params = append(params, `scope="`+quoted(strings.Join(scopes, " "))+`"`)
	}
	if len(params) == 0 {
		return "Bearer"
	}
	return "Bearer " + strings.Join(params, ", ")
}

// quoted makes s safe inside a quoted-string: RFC 6750 §3 allows
// %x20-21 / %x23-5B / %x5D-7E in error_description.
func quoted(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return '\''
		}
		return r
	}, s)
}
