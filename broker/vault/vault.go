// Package vault issues and revokes the broker's Vault credentials.
//
// Every credential is a child of an anchor the broker holds (docs/design.md
// §3), carrying exactly the policies the broker decided on, non-renewable,
// with the agent, role, level and decision id in its metadata. Anchors,
// and with them their credentials, carry their agent's own Vault entity,
// never the broker's, and a token Vault widens through its entity's
// identity policies is revoked and refused (docs/security.md, "Vault
// identity"). A credential is of one of two kinds (docs/design.md §6): a
// batch token (Batch, the default), which Vault does not store and checks
// against its parent anchor at each use, so that revoking the anchor kills
// any number of them at once; or a service token (Service) created through
// the credential token role, which has an accessor of its own, can be
// revoked alone and can carry a use count.
// The broker's own Vault token (from a static token for development, or an
// AppRole or JWT-SVID login) is renewed in the background, re-obtained when
// it cannot be renewed, and never leaves this package.
//
// Errors never carry a token. A Vault that cannot be reached, times out or
// answers 5xx yields ErrUnavailable, so callers fail closed with a retryable
// status; a refusal (4xx) yields ErrRejected.
//
// Faults: a token Vault creates after the broker stopped waiting for it is
// revoked when Vault's late answer arrives, since nobody will record it.
// After repeated unavailability a circuit breaker fails issuance fast
// (BreakerOpenError) instead of stacking calls on a Vault that does not
// answer, and lets one call through now and then to see whether it does
// again. Revocations bypass the breaker.
package vault

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/agentictrust/atf/broker/breaker"
)

// revokeTimeout bounds one revocation call (the caller's context may end it
// sooner).
const revokeTimeout = 2 * time.Minute

// Errors returned by the issuer; test with errors.Is.
var (
	ErrUnavailable = errors.New("vault: unavailable")
	ErrRejected    = errors.New("vault: request rejected")
)

// Config configures an Issuer.
type Config struct {
	// Address of the Vault server, e.g. https://vault.internal:8200.
	Address string
	// CACertFile verifies Vault's TLS certificate; empty uses the system roots.
	CACertFile string
	// CredentialRole is the token role credentials are created through;
	// default "atf-credential".
	CredentialRole string
	// AnchorRole is the token role anchors are created through; default
	// "atf-anchor". Anchors carry only the policy of the same name.
	AnchorRole string
	// Timeout bounds each Vault call; default 5 s.
	Timeout time.Duration
	// Login obtains the broker's own token. Nil means Token is used as is.
	Login vaultapi.AuthMethod
	// Token is the broker's token when Login is nil (development).
	Token string
	// Logger receives renewal and breaker events; default discards.
	Logger *slog.Logger
	// Breaker tunes the circuit breaker in front of issuance. Fields that
	// are zero take the values of DefaultBreakerConfig, and ProbeTimeout
	// defaults to Timeout. Probes does not apply: Vault's first answer
	// closes the breaker, and forgets the failures before it.
	Breaker breaker.Config
	// Now is the breaker's clock; default time.Now.
	Now func() time.Time
}

// Issuer talks to Vault for the broker. It is safe for concurrent use.
type Issuer struct {
	client *vaultapi.Client
	// slow has the same token and a longer timeout: for revocations, and
	// for creations, whose answer is awaited after the caller has given up.
	slow    *vaultapi.Client
	cfg     Config
	breaker *breaker.Breaker
	trips   atomic.Uint64 // times the breaker opened
	cancel  context.CancelFunc
	done    chan struct{}
	// generation counts logins: anchors made under an earlier login hang on
	// a token that is no longer renewed, so they must not be used again.
	generation atomic.Uint64
	// entity is the Vault entity of the broker's own token ("" if it has
	// none, e.g. a token made by root): no anchor or credential may carry
	// it.
	entity atomic.Pointer[string]
	// late counts creations the caller gave up on, until their answer is
	// in and any token in it revoked (each end signals lateEnded);
	// lateRevoked counts those tokens.
	late        atomic.Int64
	lateEnded   chan struct{}
	lateRevoked atomic.Uint64
}

// New logs in to Vault and starts renewing the broker's token.
func New(ctx context.Context, cfg Config) (*Issuer, error) {
	if cfg.Address == "" {
		return nil, errors.New("vault: address is required")
	}
	if cfg.Login == nil && cfg.Token == "" {
		return nil, errors.New("vault: a login method or a token is required")
	}
	if cfg.CredentialRole == "" {
		cfg.CredentialRole = "atf-credential"
	}
	if cfg.AnchorRole == "" {
		cfg.AnchorRole = "atf-anchor"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := cfg.Breaker.Validate(); err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	cfg.Breaker = cfg.Breaker.WithDefaults(DefaultBreakerConfig())
	if cfg.Breaker.ProbeTimeout <= 0 {
		// Callers refused while the probe is out retry once it has had its time.
		cfg.Breaker.ProbeTimeout = cfg.Timeout
	}
	vc := ClientConfig(cfg.Address)
	vc.Timeout = cfg.Timeout
	// Fail fast: an agent waiting on a retrying broker is worse than an
	// Unavailable it can retry itself.
	vc.MaxRetries = 0
	if cfg.CACertFile != "" {
		if err := vc.ConfigureTLS(&vaultapi.TLSConfig{CACert: cfg.CACertFile}); err != nil {
			return nil, fmt.Errorf("vault: TLS: %w", err)
		}
	}
	if vc.Error != nil {
		return nil, fmt.Errorf("vault: config: %w", vc.Error)
	}
	client, err := vaultapi.NewClient(vc)
	if err != nil {
		return nil, fmt.Errorf("vault: client: %w", err)
	}
	// Never pick up VAULT_TOKEN or a token helper implicitly.
	client.ClearToken()
	// Vault revokes a token's whole subtree before it answers: an anchor
	// over thousands of tokens takes seconds, longer than suits issuance, so
	// revocations go through a client of their own with a longer timeout.
	// Creations use it too, bounding the caller's wait themselves.
	slow, err := client.Clone()
	if err != nil {
		return nil, fmt.Errorf("vault: client: %w", err)
	}
	slow.SetClientTimeout(max(cfg.Timeout, revokeTimeout))
	is := &Issuer{client: client, slow: slow, cfg: cfg, done: make(chan struct{}), lateEnded: make(chan struct{}, 1),
		breaker: breaker.New(cfg.Breaker, cfg.Now)}
	secret, err := is.login(ctx)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	is.cancel = cancel
	go is.keepAlive(rctx, secret)
	return is, nil
}

// IdleConns is how many idle connections to Vault a client of
// ClientConfig keeps (each holds two goroutines until it has been idle for
// 90 s). Vault's default pooled transport keeps GOMAXPROCS+1: under load
// every call beyond them opened a connection of its own (and, to a Vault
// served over TLS, ran a handshake), then closed it. 32 covers a load of
// 32 issuances at once, BenchmarkIssuance's.
const IdleConns = 32

// ClientConfig is Vault's default client configuration for addr, keeping
// IdleConns idle connections.
func ClientConfig(addr string) *vaultapi.Config {
	vc := vaultapi.DefaultConfig()
	vc.Address = addr
	if t, ok := vc.HttpClient.Transport.(*http.Transport); ok {
		t.MaxIdleConns = IdleConns
		t.MaxIdleConnsPerHost = IdleConns
	}
	return vc
}

// Close stops the renewal loop and gives creations still awaiting a late
// answer up to the Vault timeout to finish (and their tokens to be
// revoked). It does not revoke the broker's token: credentials issued under
// it must outlive a broker restart.
func (is *Issuer) Close() {
	is.cancel()
	<-is.done
	// The kept connections (and their goroutines) end with the issuer.
	defer is.client.CloneConfig().HttpClient.CloseIdleConnections()
	grace := time.NewTimer(is.cfg.Timeout)
	defer grace.Stop()
	for is.late.Load() > 0 {
		select {
		case <-is.lateEnded:
		case <-grace.C:
			is.cfg.Logger.Warn("stopping with Vault token creations still unanswered; a token Vault creates for one now lives until it expires",
				slog.Int64("unanswered", is.late.Load()))
			return
		}
	}
}

// setToken makes token, of Vault entity entity, the broker's own, for
// issuing and revoking; anchors made under the previous one are not used
// again.
func (is *Issuer) setToken(token, entity string) {
	is.client.SetToken(token)
	is.slow.SetToken(token)
	is.entity.Store(&entity)
	is.generation.Add(1)
}

// brokerEntity is the Vault entity of the broker's own token, "" if none.
func (is *Issuer) brokerEntity() string {
	if e := is.entity.Load(); e != nil {
		return *e
	}
	return ""
}

// login obtains a token and returns its self-lookup as a renewable secret,
// or nil if the token does not expire.
func (is *Issuer) login(ctx context.Context) (*vaultapi.Secret, error) {
	if is.cfg.Login != nil {
		s, err := is.cfg.Login.Login(ctx, is.client)
		if err != nil {
			return nil, classify("login", err)
		}
		if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
			return nil, fmt.Errorf("%w: login returned no token", ErrRejected)
		}
		is.setToken(s.Auth.ClientToken, s.Auth.EntityID)
		if !s.Auth.Renewable || s.Auth.LeaseDuration == 0 {
			return nil, nil
		}
		return s, nil
	}
	is.setToken(is.cfg.Token, "")
	self, err := is.client.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return nil, classify("look up own token", err)
	}
	if entity, _ := self.Data["entity_id"].(string); entity != "" {
		is.entity.Store(&entity)
	}
	ttl, _ := self.TokenTTL()
	renewable, _ := self.TokenIsRenewable()
	if !renewable || ttl == 0 {
		return nil, nil
	}
	return &vaultapi.Secret{Auth: &vaultapi.SecretAuth{
		ClientToken: is.cfg.Token, Renewable: true, LeaseDuration: int(ttl.Seconds()),
	}}, nil
}

// keepAlive renews the broker's token until it cannot, then logs in again,
// with jittered backoff while Vault is unreachable.
func (is *Issuer) keepAlive(ctx context.Context, secret *vaultapi.Secret) {
	defer close(is.done)
	backoff := time.Second
	for {
		if secret == nil {
			// A token that does not expire needs no renewal.
			<-ctx.Done()
			return
		}
		err := is.watch(ctx, secret)
		if ctx.Err() != nil {
			return
		}
		is.cfg.Logger.Warn("vault token renewal ended; logging in again", slog.String("error", err.Error()))
		for {
			secret, err = is.login(ctx)
			if err == nil {
				backoff = time.Second
				break
			}
			if ctx.Err() != nil {
				return
			}
			wait := backoff/2 + rand.N(backoff)
			is.cfg.Logger.Error("vault login failed", slog.String("error", err.Error()), slog.Duration("retry_in", wait))
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			backoff = min(2*backoff, time.Minute)
		}
	}
}

func (is *Issuer) watch(ctx context.Context, secret *vaultapi.Secret) error {
	w, err := is.client.NewLifetimeWatcher(&vaultapi.LifetimeWatcherInput{Secret: secret})
	if err != nil {
		return err
	}
	go w.Start()
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-w.DoneCh():
			if err == nil {
				err = errors.New("token reached its maximum TTL")
			}
			return err
		case <-w.RenewCh():
			is.cfg.Logger.Debug("renewed vault token")
		}
	}
}

// Kind is a credential's kind of Vault token.
type Kind string

// The kinds of credential.
const (
	// Batch is a non-orphan batch child of its anchor, created with a
	// subset of the anchor's own policies: no accessor, no use count, not
	// revocable alone; dead the moment its anchor is.
	Batch Kind = "batch"
	// Service is a service child created through the credential role:
	// an accessor, revocable alone, may carry a use count.
	Service Kind = "service"
)

// Request describes a credential to create.
type Request struct {
	// Kind is the token's kind; "" means Service. A Batch credential needs
	// a Parent that holds its policies, and no NumUses.
	Kind     Kind
	Policies []string
	TTL      time.Duration
	// NumUses limits the token's uses; 0 means unlimited.
	NumUses int
	// Metadata is stored on the token (agent, role, level, decision id).
	Metadata map[string]string
	// DisplayName shows in Vault's audit log; Vault prefixes it "token-".
	DisplayName string
	// Parent is the anchor the credential is created under; nil means the
	// broker's own token.
	Parent *Anchor
}

// Credential is a created token. Token must go only to the agent.
type Credential struct {
	Token string
	// Accessor is the token's accessor; "" for a batch token, which has
	// none.
	Accessor  string
	Policies  []string
	IssuedAt  time.Time
	ExpiresAt time.Time
	// Lease is the dynamic secret read with the token, for a role that
	// names one (zero otherwise).
	Lease Lease
}

// Lease is a dynamic secret and its Vault lease.
type Lease struct {
	// ID is the lease's id: like an accessor, it names the lease without
	// giving its secret, and may be recorded.
	ID string
	// Data is the secret (for a database, username and password). It must
	// go only to the agent: never to a log, an error, the store or audit.
	Data map[string]string
	// ExpiresAt is when the lease ends at the latest.
	ExpiresAt time.Time
}

// Issue creates a credential: a service token through the credential
// role, or a batch token under req.Parent. It checks that Vault granted
// exactly the requested policies and lifetime and revokes the token
// otherwise (a batch token, which cannot be revoked alone, by revoking its
// anchor).
func (is *Issuer) Issue(ctx context.Context, req Request) (Credential, error) {
	if len(req.Policies) == 0 || req.TTL <= 0 {
		return Credential{}, fmt.Errorf("%w: a credential needs policies and a positive TTL", ErrRejected)
	}
	// An anchor's policy on a credential would let it make tokens: never,
	// whatever a roles file says.
	if slices.Contains(req.Policies, is.cfg.AnchorRole) {
		return Credential{}, fmt.Errorf("%w: a credential may not carry the anchor policy %q", ErrRejected, is.cfg.AnchorRole)
	}
	batch := req.Kind == Batch
	if batch && (req.Parent == nil || req.NumUses > 0) {
		return Credential{}, fmt.Errorf("%w: a batch credential needs an anchor and no use count", ErrRejected)
	}
	renewable := false
	issuedAt := time.Now()
	secs := strconv.FormatInt(int64(req.TTL/time.Second), 10) + "s"
	tr := &vaultapi.TokenCreateRequest{
		Policies:        req.Policies,
		TTL:             secs,
		NumUses:         req.NumUses,
		Metadata:        req.Metadata,
		DisplayName:     req.DisplayName,
		NoDefaultPolicy: true,
		Renewable:       &renewable,
		Type:            string(Service),
	}
	role, onLate := is.cfg.CredentialRole, late(lateToken)
	if batch {
		// Plain auth/token/create by the anchor: a child with a subset of
		// the anchor's policies. A late batch token cannot be revoked
		// alone: its anchor goes.
		tr.Type, role = string(Batch), ""
		onLate = lateAnchor(req.Parent.Accessor)
	} else {
		tr.ExplicitMaxTTL = secs
	}
	s, err := is.create(ctx, "create token", is.clientFor(req.Parent), role, tr, onLate)
	if err != nil {
		return Credential{}, err
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" || (!batch && s.Auth.Accessor == "") {
		return Credential{}, fmt.Errorf("%w: create token: Vault returned no token", ErrRejected)
	}
	c := Credential{
		Token:     s.Auth.ClientToken,
		Accessor:  s.Auth.Accessor,
		Policies:  slices.Sorted(slices.Values(s.Auth.TokenPolicies)),
		IssuedAt:  issuedAt,
		ExpiresAt: issuedAt.Add(time.Duration(s.Auth.LeaseDuration) * time.Second),
	}
	if err := is.checkIssued(ctx, req, s.Auth, c); err != nil {
		return Credential{}, err
	}
	return c, nil
}

// checkIssued fails closed on a credential wider or longer-lived than
// decided, and revokes it (a batch token, which cannot be revoked alone,
// by revoking its anchor). Its token policies must be exactly the
// requested ones; its identity policies, those Vault adds from its entity
// and the entity's groups at each use, none beyond them; its entity its
// anchor's (its agent's), never the broker's own (docs/security.md, "Vault
// identity"). Vault's answer to the creation names them all: the check
// costs no call.
func (is *Issuer) checkIssued(ctx context.Context, req Request, auth *vaultapi.SecretAuth, c Credential) error {
	want := slices.Sorted(slices.Values(req.Policies))
	wider := outside(auth.IdentityPolicies, want)
	entity := ""
	switch {
	case req.Parent != nil && auth.EntityID != req.Parent.EntityID:
		entity = fmt.Sprintf("entity %q, not its anchor's %q", auth.EntityID, req.Parent.EntityID)
	case auth.EntityID != "" && auth.EntityID == is.brokerEntity():
		entity = "the broker's own entity " + auth.EntityID
	}
	if slices.Equal(c.Policies, want) && len(wider) == 0 && entity == "" && !auth.Renewable && time.Duration(auth.LeaseDuration)*time.Second <= req.TTL {
		return nil
	}
	// Fail closed: a token wider or longer-lived than decided never leaves.
	victim := c.Accessor
	if req.Kind == Batch {
		victim = req.Parent.Accessor
	}
	rerr := is.Revoke(context.WithoutCancel(ctx), victim)
	switch {
	case len(wider) > 0:
		return &IdentityError{Token: "credential", Entity: auth.EntityID, Policies: wider, RevokeErr: rerr}
	case entity != "":
		return fmt.Errorf("%w: Vault gave the credential %s; token revoked (revoke error: %v)", ErrRejected, entity, rerr)
	}
	return fmt.Errorf("%w: Vault issued policies %q (renewable=%t, ttl=%ds), not the requested %q; token revoked (revoke error: %v)",
		ErrRejected, c.Policies, auth.Renewable, auth.LeaseDuration, want, rerr)
}

// IdentityError is a token Vault gave policies beyond the decided ones
// through its identity: policies of its entity, or of the entity's
// identity groups (docs/security.md, "Vault identity"). The token was
// revoked (unless RevokeErr says otherwise). It is ErrRejected.
type IdentityError struct {
	// Token is what was refused: "credential" or "anchor".
	Token string
	// Entity is the token's Vault entity.
	Entity string
	// Policies are its identity policies beyond the decided ones.
	Policies []string
	// RevokeErr is the revocation's error; nil if the token was revoked.
	RevokeErr error
}

func (e *IdentityError) Error() string {
	return fmt.Sprintf("%v: Vault gives the %s's entity %s identity policies %q beyond the decided ones (policies of the entity or of identity groups it is in); token revoked (revoke error: %v)",
		ErrRejected, e.Token, e.Entity, e.Policies, e.RevokeErr)
}

// Unwrap makes an IdentityError ErrRejected.
func (e *IdentityError) Unwrap() error { return ErrRejected }

// outside is what of got is not in allowed, sorted.
func outside(got, allowed []string) []string {
	var out []string
	for _, p := range got {
		if !slices.Contains(allowed, p) && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// EntityAlias is the name of the entity alias, on Vault's token auth
// mount, of agent's Vault entity: the entity its anchors carry, and with
// them all its credentials (docs/security.md, "Vault identity").
// It is "atf-agent-" and the first 32 hex digits of the SHA-256 of the
// agent's SPIFFE ID: Vault matches alias names regardless of case, which
// SPIFFE IDs do not, and the token role atf-anchor allows "atf-agent-*".
func EntityAlias(agent string) string {
	sum := sha256.Sum256([]byte(agent))
	return "atf-agent-" + hex.EncodeToString(sum[:16])
}

// ReadDynamic reads the dynamic secret at path with token, the token of a
// credential the broker just created, so that the lease is the
// credential's: Vault revokes it with the token, and with any anchor above
// it (docs/design.md §3.4). A secret without a lease is refused.
//
// The read runs to its end, bounded by the Vault timeout, even if ctx ends
// first: a lease Vault registered after the broker gave up, and after the
// token was revoked, would outlive it.
func (is *Issuer) ReadDynamic(ctx context.Context, token, path string) (Lease, error) {
	c, err := is.client.Clone()
	if err != nil {
		return Lease{}, fmt.Errorf("vault: %w", err)
	}
	c.SetToken(token)
	start := time.Now()
	s, err := c.Logical().ReadWithContext(context.WithoutCancel(ctx), path)
	switch {
	case err != nil:
		return Lease{}, classify("read dynamic secret "+path, err)
	case s == nil:
		return Lease{}, fmt.Errorf("%w: read dynamic secret %s: nothing there", ErrRejected, path)
	case s.LeaseID == "" || s.LeaseDuration <= 0:
		return Lease{}, fmt.Errorf("%w: read dynamic secret %s: Vault gave no lease: not a dynamic secret", ErrRejected, path)
	case len(s.Data) == 0:
		return Lease{}, fmt.Errorf("%w: read dynamic secret %s: Vault gave no data (lease %s)", ErrRejected, path, s.LeaseID)
	}
	l := Lease{ID: s.LeaseID, Data: make(map[string]string, len(s.Data)), ExpiresAt: start.Add(time.Duration(s.LeaseDuration) * time.Second)}
	for k, v := range s.Data {
		if str, ok := v.(string); ok {
			l.Data[k] = str
			continue
		}
		// Not every engine answers strings only; the agent gets JSON.
		b, err := json.Marshal(v)
		if err != nil {
			return Lease{}, fmt.Errorf("%w: read dynamic secret %s: field %q: %v", ErrRejected, path, k, err)
		}
		l.Data[k] = string(b)
	}
	return l, nil
}

// Anchor is a token the broker holds, never hands out, and creates
// credentials and child anchors under: revoking it in Vault revokes all of
// them (docs/design.md §3).
type Anchor struct {
	Accessor string
	// ExpiresAt is when the anchor dies: its own expiry or its parent's,
	// whichever comes first.
	ExpiresAt time.Time
	// Generation is the broker login it hangs under.
	Generation uint64
	// EntityID is its Vault entity: its owner's (EntityAlias), which every
	// token below it carries.
	EntityID string
	client   *vaultapi.Client // carries the anchor's token; slow's timeout
}

// Usable reports whether children lasting up to d can still be created
// under the anchor: it lives long enough and hangs under the current login.
func (is *Issuer) Usable(a *Anchor, d time.Duration) bool {
	return a != nil && a.Generation == is.generation.Load() && time.Until(a.ExpiresAt) > d
}

// CreateAnchor creates an anchor under parent (nil: the broker's own token)
// living ttl, with meta stored on the token, carrying the Vault entity of
// owner, the agent whose credentials it will hold (EntityAlias). Besides
// the anchor policy it holds policies, those of the batch credentials it
// will create (none for an anchor that only has anchors below it). An
// anchor wider than that, through its entity's identity policies, is
// revoked and refused (an *IdentityError).
func (is *Issuer) CreateAnchor(ctx context.Context, parent *Anchor, owner string, ttl time.Duration, meta map[string]string, policies ...string) (*Anchor, error) {
	if owner == "" {
		return nil, fmt.Errorf("%w: an anchor needs the agent it holds credentials of", ErrRejected)
	}
	gen := is.generation.Load()
	if parent != nil {
		gen = parent.Generation
	}
	created := time.Now()
	secs := strconv.FormatInt(int64(ttl/time.Second), 10) + "s"
	want := append([]string{is.cfg.AnchorRole}, policies...)
	s, err := is.create(ctx, "create anchor", is.clientFor(parent), is.cfg.AnchorRole, &vaultapi.TokenCreateRequest{
		Policies:       want,
		TTL:            secs,
		ExplicitMaxTTL: secs,
		Metadata:       meta,
		DisplayName:    "atf-anchor",
		Type:           "service",
		EntityAlias:    EntityAlias(owner),
	}, lateToken)
	if errors.Is(err, ErrRejected) && strings.Contains(err.Error(), "entity_alias") {
		return nil, fmt.Errorf("%w (the token role %s must allow the entity aliases atf-agent-*: run deploy/vault/setup.sh again)", err, is.cfg.AnchorRole)
	}
	if err != nil {
		return nil, err
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" || s.Auth.Accessor == "" {
		return nil, fmt.Errorf("%w: create anchor: Vault returned no token", ErrRejected)
	}
	if err := is.checkAnchor(ctx, s.Auth, append(want, "default")); err != nil {
		return nil, err
	}
	c, err := is.slow.Clone()
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	c.SetToken(s.Auth.ClientToken)
	a := &Anchor{
		Accessor:   s.Auth.Accessor,
		ExpiresAt:  created.Add(time.Duration(s.Auth.LeaseDuration) * time.Second),
		Generation: gen,
		EntityID:   s.Auth.EntityID,
		client:     c,
	}
	if parent != nil && parent.ExpiresAt.Before(a.ExpiresAt) {
		a.ExpiresAt = parent.ExpiresAt
	}
	return a, nil
}

// checkAnchor revokes and refuses an anchor that holds more than allowed
// (its own policies and default), through its token or its identity
// policies, or whose entity is not one of its own: none, or the broker's.
func (is *Issuer) checkAnchor(ctx context.Context, auth *vaultapi.SecretAuth, allowed []string) error {
	wider, identity := outside(auth.TokenPolicies, allowed), outside(auth.IdentityPolicies, allowed)
	var why string
	switch {
	case len(wider) > 0:
		why = fmt.Sprintf("token policies %q beyond %q", wider, allowed)
	case auth.EntityID == "":
		why = "no entity: Vault ignored its entity alias"
	case auth.EntityID == is.brokerEntity():
		why = "the broker's own entity " + auth.EntityID
	case len(identity) == 0:
		return nil
	}
	rerr := is.Revoke(context.WithoutCancel(ctx), auth.Accessor)
	if why == "" {
		return &IdentityError{Token: "anchor", Entity: auth.EntityID, Policies: identity, RevokeErr: rerr}
	}
	return fmt.Errorf("%w: Vault gave the anchor %s; anchor revoked (revoke error: %v)", ErrRejected, why, rerr)
}

func (is *Issuer) clientFor(parent *Anchor) *vaultapi.Client {
	if parent != nil {
		return parent.client
	}
	return is.slow
}

// late says what to revoke when Vault answers a creation nobody waits for
// any more: the accessor of the token in the answer, or "" for nothing.
type late func(s *vaultapi.Secret) string

// lateToken revokes the late token itself.
func lateToken(s *vaultapi.Secret) string {
	if s == nil || s.Auth == nil {
		return ""
	}
	return s.Auth.Accessor
}

// lateAnchor revokes the anchor of a late batch token, which has no
// accessor of its own: its siblings go with it, and are made anew under a
// new anchor.
func lateAnchor(anchor string) late {
	return func(s *vaultapi.Secret) string {
		if s == nil || s.Auth == nil {
			return ""
		}
		return anchor
	}
}

// create has Vault create a token through role ("": plain
// auth/token/create, a child of c's token), once the breaker admits the
// call, and waits for the answer up to the Vault timeout. The request
// itself runs on: a token Vault creates after the caller stopped waiting
// would be recorded nowhere, so what late says is revoked as soon as the
// late answer arrives.
func (is *Issuer) create(ctx context.Context, op string, c *vaultapi.Client, role string, req *vaultapi.TokenCreateRequest, late late) (*vaultapi.Secret, error) {
	if ctx.Err() != nil {
		// Nobody waits for the answer: do not ask.
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, op, context.Cause(ctx))
	}
	probe, err := is.admit()
	if err != nil {
		return nil, err
	}
	type answer struct {
		secret *vaultapi.Secret
		err    error
	}
	answers := make(chan answer, 1)
	go func() {
		var s *vaultapi.Secret
		var err error
		if role == "" {
			s, err = c.Auth().Token().CreateWithContext(context.WithoutCancel(ctx), req)
		} else {
			s, err = c.Auth().Token().CreateWithRoleWithContext(context.WithoutCancel(ctx), req, role)
		}
		answers <- answer{s, err}
	}()
	wait := time.NewTimer(is.cfg.Timeout)
	defer wait.Stop()
	select {
	case a := <-answers:
		if a.err != nil {
			err := classify(op, a.err)
			if errors.Is(err, ErrUnavailable) {
				is.failed(err)
			} else {
				is.answered()
			}
			return nil, err
		}
		is.answered()
		return a.secret, nil
	case <-wait.C:
		err = fmt.Errorf("%w: %s: Vault did not answer within %s", ErrUnavailable, op, is.cfg.Timeout)
		is.failed(err)
	case <-ctx.Done():
		err = fmt.Errorf("%w: %s: %w", ErrUnavailable, op, context.Cause(ctx))
		is.abandoned(probe)
	}
	is.late.Add(1)
	go func() {
		is.revokeLate(op, late((<-answers).secret))
		is.late.Add(-1)
		select {
		case is.lateEnded <- struct{}{}:
		default:
		}
	}()
	return nil, err
}

// revokeLate revokes accessor, for a token in an answer nobody waited for.
func (is *Issuer) revokeLate(op, accessor string) {
	if accessor == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), revokeTimeout)
	defer cancel()
	log := is.cfg.Logger.With(slog.String("op", op), slog.String("accessor", accessor))
	if err := is.Revoke(ctx, accessor); err != nil {
		log.Error("Vault created a token after the broker stopped waiting, and revoking it failed; it lives until it expires",
			slog.String("error", err.Error()))
		return
	}
	is.lateRevoked.Add(1)
	log.Warn("Vault created a token after the broker stopped waiting; revoked it")
}

// Stats are the issuer's fault counters, for metrics.
type Stats struct {
	// BreakerOpen is true while issuance fails fast (or one probe is out).
	BreakerOpen bool
	// BreakerTrips counts the times the breaker opened.
	BreakerTrips uint64
	// LateTokensRevoked counts tokens Vault created after the broker
	// stopped waiting, which it then revoked.
	LateTokensRevoked uint64
}

// Stats returns the issuer's fault counters.
func (is *Issuer) Stats() Stats {
	state, _ := is.breaker.State()
	return Stats{BreakerOpen: state != breaker.Closed, BreakerTrips: is.trips.Load(), LateTokensRevoked: is.lateRevoked.Load()}
}

// Revoke revokes a token, and every token below it, by accessor.
// Revoking a token that no longer exists succeeds.
func (is *Issuer) Revoke(ctx context.Context, accessor string) error {
	// Vault answers an accessor that no longer exists with success (and a
	// warning), so retrying a revocation is always safe.
	if err := is.slow.Auth().Token().RevokeAccessorWithContext(ctx, accessor); err != nil {
		return classify("revoke token", err)
	}
	return nil
}

// Healthy reports whether Vault answers and the broker's token is valid.
func (is *Issuer) Healthy(ctx context.Context) error {
	if _, err := is.client.Auth().Token().LookupSelfWithContext(ctx); err != nil {
		return classify("look up own token", err)
	}
	return nil
}

// Address is the Vault address credentials are valid at.
func (is *Issuer) Address() string { return is.client.Address() }

// classify maps a Vault client error to ErrUnavailable or ErrRejected.
// Vault's messages name paths and reasons, never the token in use.
func classify(op string, err error) error {
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		if re.StatusCode >= 500 || re.StatusCode == http.StatusTooManyRequests {
			return fmt.Errorf("%w: %s: Vault answered %d: %v", ErrUnavailable, op, re.StatusCode, re.Errors)
		}
		return fmt.Errorf("%w: %s: Vault answered %d: %v", ErrRejected, op, re.StatusCode, re.Errors)
	}
	// Anything else is transport: refused, reset, timed out, cancelled.
	return fmt.Errorf("%w: %s: %v", ErrUnavailable, op, err)
}
