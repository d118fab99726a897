package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Defaults of Push.
const (
	// DefaultMaxSilence is two of the issuer's 15-second pings and a margin.
	DefaultMaxSilence       = 40 * time.Second
	DefaultMaxTokenLifetime = time.Hour
)

// Push configures revocation by the issuer's event stream
// (GET <issuer>/oauth2/events, docs/oauth-verifier.md).
type Push struct {
	// EventsURL is the stream; default Issuer + "/oauth2/events". The
	// Config's Client must authenticate with this server's X.509-SVID.
	EventsURL string
	// MaxSilence is how long the stream may be silent (no event, no ping)
	// or down before it is presumed to have missed a revocation: every
	// token is then suspect and the stream is reconnected. Default
	// DefaultMaxSilence.
	MaxSilence time.Duration
	// MaxTokenLifetime is the longest lifetime of the issuer's tokens
	// (atfd: the longest level TTL). A revocation is remembered this long
	// after it arrives; a token issued before a reset is suspect this long.
	// Default DefaultMaxTokenLifetime.
	MaxTokenLifetime time.Duration
	// IntrospectionURL, when set, is asked (RFC 7662) about suspect tokens
	// instead of refusing them. The Config's Client authenticates.
	IntrospectionURL string
	// OnRevoked, when set, is called with every revocation event, after it
	// is applied; it must not block.
	OnRevoked func(Revocation)
}

func (p *Push) validate() error {
	if p.MaxSilence < 0 || p.MaxTokenLifetime < 0 {
		return errors.New("verify: Push.MaxSilence and Push.MaxTokenLifetime must not be negative")
	}
	if p.IntrospectionURL != "" {
		if u, err := url.Parse(p.IntrospectionURL); err != nil || u.Scheme != "https" {
			return fmt.Errorf("verify: Push.IntrospectionURL %q must be an https URL", p.IntrospectionURL)
		}
	}
	return nil
}

// Revocation is one revocation event as applied.
type Revocation struct {
	JTIs, Nodes, Agents []string
	Reason              string
	// Time is when the issuer revoked (its clock); Received is when the
	// event was applied here (this server's). Received minus Time is the
	// push latency, clock skew included.
	Time, Received time.Time
}

// revocations is what the stream has said.
type revocations struct {
	push   Push
	client *http.Client
	now    func() time.Time
	leeway time.Duration
	log    *slog.Logger

	mu   sync.RWMutex
	jtis map[string]time.Time // jti → when to forget it
	// agents and nodes map to when they were revoked (issuer's clock): a
	// token issued after is from a later decision.
	agents, nodes map[string]revokedAt
	// Tokens issued at or before suspectUpTo are suspect until
	// suspectUntil: what was revoked before the stream was heard is unknown.
	suspectUpTo, suspectUntil time.Time
	// cleared holds the tokens introspection found active since the last
	// reset (jti → exp): the stream has told every revocation since.
	cleared   map[string]time.Time
	resets    uint64    // counts resets, so that a clearance outdated by one is dropped
	lastHeard time.Time // zero: never connected
	cursor    string    // Last-Event-ID
}

type revokedAt struct{ at, forget time.Time }

func newRevocations(cfg Config, p Push, leeway time.Duration) *revocations {
	if cfg.Logger == nil { // New sets it; a test of this file may not
		cfg.Logger = slog.Default()
	}
	if p.EventsURL == "" {
		p.EventsURL = cfg.Issuer + "/oauth2/events"
	}
	if p.MaxSilence == 0 {
		p.MaxSilence = DefaultMaxSilence
	}
	if p.MaxTokenLifetime == 0 {
		p.MaxTokenLifetime = DefaultMaxTokenLifetime
	}
	return &revocations{push: p, client: cfg.Client, now: cfg.Now, leeway: leeway, log: cfg.Logger, jtis: map[string]time.Time{},
		agents: map[string]revokedAt{}, nodes: map[string]revokedAt{}, cleared: map[string]time.Time{}}
}

// verdict is what the stream says of a token.
type verdict int

const (
	unrevoked     verdict = iota
	revoked               // revoked by an event
	suspectSilent         // the stream is silent or down now
	suspectReset          // issued before a reset or the first subscription
)

// check refuses c if it was revoked, and when its status is unknown either
// introspects it or refuses it.
//
// A token introspected after a reset, while the stream is up, is clear from
// then on: any later revocation comes by the stream. While the stream is
// silent, every request is introspected.
func (r *revocations) check(ctx context.Context, c *Claims, token string) error {
	v, resets := r.status(c)
	switch {
	case v == unrevoked:
		return nil
	case v == revoked:
		return fmt.Errorf("%w: revoked", ErrInvalidToken)
	case r.push.IntrospectionURL == "":
		return fmt.Errorf("%w: the revocation stream has not been heard since before this token was issued", ErrRevocationUnknown)
	}
	active, err := r.introspectHTTP(ctx, token)
	switch {
	case err != nil:
		// The cause (the issuer's address, a dial error) is for the log,
		// not for the caller, who gets Refuse's 503.
		r.log.Warn("verify: introspection failed", slog.Any("error", err))
		return fmt.Errorf("%w: introspection did not answer", ErrRevocationUnknown)
	case !active:
		return fmt.Errorf("%w: not active (introspection)", ErrInvalidToken)
	}
	if v == suspectReset {
		r.clear(c, resets)
	}
	return nil
}

// clear records that c was found active after the reset numbered resets.
func (r *revocations) clear(c *Claims, resets uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.resets != resets {
		return
	}
	if len(r.cleared) >= maxSeen {
		r.pruneLocked(r.now())
	}
	if len(r.cleared) < maxSeen {
		r.cleared[c.JTI] = c.Expiry
	}
}

// status says what the stream says of c, and the number of resets so far.
func (r *revocations) status(c *Claims) (verdict, uint64) {
	now := r.now()
	r.mu.RLock()
	defer r.mu.RUnlock()
	if _, ok := r.jtis[c.JTI]; ok {
		return revoked, r.resets
	}
	if a, ok := r.agents[c.Subject]; ok && !c.IssuedAt.After(a.at) {
		return revoked, r.resets
	}
	for _, n := range c.Lineage {
		if a, ok := r.nodes[n]; ok && !c.IssuedAt.After(a.at) {
			return revoked, r.resets
		}
	}
	if r.lastHeard.IsZero() || now.Sub(r.lastHeard) > r.push.MaxSilence {
		return suspectSilent, r.resets
	}
	if _, ok := r.cleared[c.JTI]; !ok && now.Before(r.suspectUntil) && !c.IssuedAt.After(r.suspectUpTo) {
		return suspectReset, r.resets
	}
	return unrevoked, r.resets
}

// apply records a revocation event.
func (r *revocations) apply(ev Revocation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	forget := r.forgetAt(ev.Time, ev.Received)
	for _, j := range ev.JTIs {
		r.jtis[j] = forget
	}
	for _, a := range ev.Agents {
		r.agents[a] = revokedAt{at: ev.Time, forget: forget}
	}
	for _, n := range ev.Nodes {
		r.nodes[n] = revokedAt{at: ev.Time, forget: forget}
	}
	r.pruneLocked(ev.Received)
}

// reset makes every token issued up to upTo (the issuer's clock) suspect.
func (r *revocations) reset(upTo, received time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if upTo.After(r.suspectUpTo) {
		r.suspectUpTo = upTo
	}
	if until := r.forgetAt(upTo, received); until.After(r.suspectUntil) {
		r.suspectUntil = until
	}
	r.resets++
	clear(r.cleared)
}

// forgetAt is when every token issued up to at (the issuer's clock) has
// expired here: at plus MaxTokenLifetime plus the leeway the exp check
// allows, and no earlier than that from received (this server's clock).
// Counting from received alone would forget too soon on a server whose
// clock lags the issuer's (docs/oauth-verifier.md, "Revocation: the push stream").
func (r *revocations) forgetAt(at, received time.Time) time.Time {
	if received.After(at) {
		at = received
	}
	return at.Add(r.push.MaxTokenLifetime + r.leeway)
}

// heard records that the stream spoke, and the event id to resume from.
func (r *revocations) heard(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastHeard = r.now()
	if id != "" {
		r.cursor = id
	}
}

func (r *revocations) lastID() string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cursor
}

// pruneLocked forgets revocations of tokens that have all expired, and
// clearances of expired tokens.
func (r *revocations) pruneLocked(now time.Time) {
	for _, m := range []map[string]time.Time{r.jtis, r.cleared} {
		for j, forget := range m {
			if now.After(forget) {
				delete(m, j)
			}
		}
	}
	for _, m := range []map[string]revokedAt{r.agents, r.nodes} {
		for k, a := range m {
			if now.After(a.forget) {
				delete(m, k)
			}
		}
	}
}

// introspectHTTP asks the issuer whether token is active (RFC 7662).
func (r *revocations) introspectHTTP(ctx context.Context, token string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	form := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.push.IntrospectionURL, strings.NewReader(form.Encode()))
	if err != nil {
		return false, errors.New("bad introspection URL")
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		// The URL is ours; the error names no token.
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("status %s", resp.Status)
	}
	var body struct {
		Active bool `json:"active"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&body); err != nil {
		return false, errors.New("answer is not JSON")
	}
	// The token's signature, audience and times were checked here already;
	// the issuer only says whether it still stands.
	return body.Active, nil
}
