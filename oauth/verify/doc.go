// Package verify checks the OAuth 2.0 access tokens that atfd issues
// (docs/oauth-verifier.md), for resource servers: net/http middleware and
// gRPC interceptors that admit a request only with a token meant for this
// server, and hand the handler who holds it and through which delegation
// chain.
//
// # Basics
//
// A token is an RFC 9068 JWT: header typ at+jwt, alg ES256, a kid naming
// one of the issuer's keys. The Verifier fetches the issuer's JWK Set over
// HTTPS (atfd serves it with its X.509-SVID, so the http.Client must trust
// the SPIFFE bundle), caches it as long as its Cache-Control says, within
// bounds, and refetches on an unknown kid at most once per
// Config.RefetchInterval. A token is admitted when its signature verifies
// with that key, iss is the issuer, aud is this server and nothing else,
// exp, nbf and iat hold within the leeway, and the route's scopes are
// granted. The verified Claims are in the request's context (ClaimsFrom),
// with the RFC 8693 act chain as Actors, immediate actor first.
//
// With Config.Push set, Subscribe follows the issuer's revocation events
// (Server-Sent Events) and the Verifier refuses a token whose jti, holder
// or any lineage node was revoked, from the moment the event arrives.
//
// # Caveats
//
// Only ES256 over P-256 is accepted; every other alg, none included, is
// refused before any key is looked up, so a public key can never be used as
// an HMAC secret.
//
// An audience array is accepted only when it holds exactly this server: a
// token good at several servers could be replayed from one to another,
// which is what RFC 8707 resource indicators are for.
//
// With push revocation, the Verifier cannot know what was revoked while it
// was not listening: before its first subscription, after an event: reset,
// and while the stream has been silent longer than Push.MaxSilence. In the
// first two cases every token issued up to that moment is suspect; in the
// third, every token. A suspect token is checked by introspection when
// Push.IntrospectionURL is set (once per token after a reset, on every
// request while the stream is silent), and refused otherwise
// (ErrRevocationUnknown, HTTP 503, gRPC Unavailable): the default fails
// closed.
package verify
