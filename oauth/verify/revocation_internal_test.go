package verify

import (
	"errors"
	"testing"
	"time"
)

// On a server whose clock lags the issuer's, a revocation and a reset are
// remembered until every token they concern has expired by this server's
// exp check, not MaxTokenLifetime after they arrived by this server's clock
// (docs/oauth-verifier.md, "Revocation: the push stream").
func TestRevocationOutlivesTokensOnALaggingClock(t *testing.T) {
	const lifetime, leeway, lag = time.Hour, 30 * time.Second, 20 * time.Second
	issuerNow := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	local := issuerNow.Add(-lag)
	r := newRevocations(Config{Issuer: "https://issuer.example"},
		Push{MaxTokenLifetime: lifetime, MaxSilence: 100 * lifetime}, leeway)
	r.now = func() time.Time { return local }
	r.heard("1")
	tok := &Claims{JTI: "j1", Subject: "spiffe://td/a", IssuedAt: issuerNow, Expiry: issuerNow.Add(lifetime)}
	r.apply(Revocation{JTIs: []string{"j1"}, Time: issuerNow, Received: local})
	r.reset(issuerNow, local)
	// A later reset naming an older time does not cut the suspicion short.
	r.reset(issuerNow.Add(-lifetime), local)

	// The last instant this server's exp check still admits the token.
	local = tok.Expiry.Add(leeway - time.Second)
	r.heard("2")
	r.apply(Revocation{Received: local}) // another event: forgets what has expired
	if v, _ := r.status(tok); v != revoked {
		t.Errorf("a token revoked %s ago, still within exp plus leeway here: verdict %d, want revoked", lifetime, v)
	}
	other := &Claims{JTI: "j2", Subject: "spiffe://td/b", IssuedAt: issuerNow, Expiry: tok.Expiry}
	if v, _ := r.status(other); v != suspectReset {
		t.Errorf("a token issued at the reset, still within exp plus leeway here: verdict %d, want suspect", v)
	}
	if err := r.check(t.Context(), other, "token"); !errors.Is(err, ErrRevocationUnknown) {
		t.Errorf("check of a suspect token without introspection: %v, want ErrRevocationUnknown", err)
	}
}
