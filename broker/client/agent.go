package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// ErrClosed is returned by an Agent's calls once it is closed.
var ErrClosed = errors.New("client: agent is closed")

// ApprovalError is returned by Agent.Credential when a credential needs a
// human's approval that it did not get: the request is still pending (the
// agent was told not to wait), or it was denied, expired or cancelled.
type ApprovalError struct {
	// Approval is the request as the broker last reported it.
	Approval *brokerv1.Approval
}

func (e *ApprovalError) Error() string {
	ap := e.Approval
	st := strings.ToLower(strings.TrimPrefix(ap.GetStatus().String(), "APPROVAL_STATUS_"))
	msg := fmt.Sprintf("client: approval %s for role %s is %s", ap.GetId(), ap.GetRole(), st)
	if r := ap.GetReason(); r != "" {
		msg += ": " + r
	}
	return msg
}

// Backoff bounds for retrying a failed refresh or a broken revocation watch.
const (
	minBackoff = time.Second
	maxBackoff = time.Minute
)

// Log field names.
const (
	logRole     = "role"
	logAccessor = "accessor"
	logApproval = "approval_id"
	logError    = "error"
	logRetryIn  = "retry_in"
	logAttempt  = "attempt"
	logReason   = "reason"
)

// ChangeKind says what happened to a role's cached credential.
type ChangeKind int

const (
	// Refreshed: a successor replaced the credential before it expired.
	Refreshed ChangeKind = iota + 1
	// Revoked: the broker revoked the credential.
	Revoked
	// Expired: the credential expired without a successor (refreshing it
	// failed until then, or needed a human's approval).
	Expired
	// Reset: the credential was dropped because the revocation watch broke
	// and could not resume; it may have been revoked meanwhile, or may
	// still be valid.
	Reset
)

func (k ChangeKind) String() string {
	switch k {
	case Refreshed:
		return "refreshed"
	case Revoked:
		return "revoked"
	case Expired:
		return "expired"
	case Reset:
		return "reset"
	}
	return fmt.Sprintf("ChangeKind(%d)", int(k))
}

// Change is something that happened to a role's cached credential.
type Change struct {
	Role string
	Kind ChangeKind
	// Credential is the successor, for Refreshed; nil otherwise.
	Credential *brokerv1.Credential
	// Accessor is the accessor of the credential that changed.
	Accessor string
	// Reason is the broker's reason, for Revoked.
	Reason string
}

// Option tunes New.
type Option func(*options)

type options struct {
	refreshBefore float64
	ttl           time.Duration
	waitApproval  bool
	logger        *slog.Logger
	onChange      func(Change)
}

// WithRefreshBefore refreshes a credential when this share of its lifetime
// remains (jittered by ±10% so that agents started together do not refresh
// together); default 0.3. It must be between 0 and 1.
func WithRefreshBefore(fraction float64) Option {
	return func(o *options) { o.refreshBefore = fraction }
}

// WithTTL asks the broker for credentials that live d; default (0) is the
// longest the broker grants for the role and the agent's level.
func WithTTL(d time.Duration) Option { return func(o *options) { o.ttl = d } }

// WithApprovalWait says whether Credential waits for a human to decide a
// credential that needs approval, and then redeems it (default), or returns
// an *ApprovalError with the pending request at once.
func WithApprovalWait(wait bool) Option { return func(o *options) { o.waitApproval = wait } }

// WithLogger sets the logger; default discards. Tokens are never logged.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithOnChange calls fn for every change to a cached credential, in order,
// from one goroutine and never with the agent's lock held, so fn may call
// the agent. Processes that copied a credential elsewhere (an environment, a
// file) use it to follow refreshes and revocations.
func WithOnChange(fn func(Change)) Option { return func(o *options) { o.onChange = fn } }

// Agent fetches, caches and refreshes an agent's credentials, and drops any
// the broker revokes.
//
// A credential is fetched on the first Credential call for its role, then
// served from the cache and replaced in the background before it expires.
// The agent watches the broker's revocations: a revoked credential is
// dropped at once and the next call fetches anew. If the watch breaks (a
// replica stopped), the agent reconnects with backoff, to another replica
// if its Config names several, and resumes the watch where it broke: what
// was revoked meanwhile arrives then. Only if the broker cannot resume it
// (it restarted, or the watch was down longer than its resume window)
// does the agent drop every cached credential, since it may have missed
// revocations; until then it keeps serving what it holds.
//
// A credential that needed a human's approval is not refreshed, since its
// successor would need another approval nobody asked for; it is served
// until it expires. Lifetimes are measured on the agent's clock from when a
// credential arrives, so clock skew with the broker does not matter.
type Agent struct {
	conn   *Conn
	opts   options
	log    *slog.Logger
	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	creds  map[string]*entry // by role
	calls  map[string]*call  // fetches in flight, by role
	// refreshing holds the roles with a refresher running.
	refreshing map[string]bool
	// epoch counts revocation events and watch reconnections, so that a
	// fetch that overlapped one is not cached: its credential may be among
	// those revoked.
	epoch uint64
	// changes waits for delivery to opts.onChange; changed is signalled when
	// one is queued.
	changes []Change
	changed chan struct{}
	// cursor is where the revocation watch stands (its last message's),
	// for it to resume there; only the watch's goroutine uses it.
	cursor string
}

// entry is a cached credential.
type entry struct {
	cred      *brokerv1.Credential
	approved  bool
	refreshAt time.Time
	expires   time.Time
	// gone is closed when the entry is dropped or replaced.
	gone chan struct{}
}

// call is one fetch shared by every caller asking for the role meanwhile.
type call struct {
	done    chan struct{}
	cancel  context.CancelFunc
	waiters int
	epoch   uint64
	cred    *brokerv1.Credential
	err     error
}

// New connects to the broker as cfg says (as Dial does), starts watching
// the agent's revocations and returns once the watch is in place.
func New(ctx context.Context, cfg Config, opts ...Option) (*Agent, error) {
	o := options{refreshBefore: 0.3, waitApproval: true, logger: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	if o.refreshBefore <= 0 || o.refreshBefore >= 1 {
		return nil, fmt.Errorf("client: refresh fraction %v is not between 0 and 1", o.refreshBefore)
	}
	if o.ttl < 0 {
		return nil, fmt.Errorf("client: negative TTL %s", o.ttl)
	}
	conn, err := Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancel(context.Background())
	a := &Agent{
		conn: conn, opts: o, log: o.logger, ctx: actx, cancel: cancel,
		creds: map[string]*entry{}, calls: map[string]*call{}, refreshing: map[string]bool{},
		changed: make(chan struct{}, 1),
	}
	// The watch lives as long as the agent, but New gives up on it with ctx.
	stop := context.AfterFunc(ctx, cancel)
	w, first, err := a.openWatch(actx)
	if !stop() || err != nil {
		cancel()
		conn.Close()
		if err == nil {
			w.cancel()
			err = ctx.Err()
		}
		return nil, err
	}
	a.heard(first)
	a.wg.Add(1)
	go a.watch(w)
	if o.onChange != nil {
		a.wg.Add(1)
		go a.deliver()
	}
	return a, nil
}

// Credential returns a live credential for role: the cached one, or a new
// one from the broker. Concurrent callers for the same role share one
// fetch. Errors from the broker are its gRPC status, as is. If the role
// needs a human's approval, Credential waits for the decision (unless
// WithApprovalWait(false)); a request not approved is an *ApprovalError.
func (a *Agent) Credential(ctx context.Context, role string) (*brokerv1.Credential, error) {
	a.mu.Lock()
	e := a.creds[role]
	a.mu.Unlock()
	if e != nil && time.Now().Before(e.expires) {
		return proto.CloneOf(e.cred), nil
	}
	cred, err := a.fetch(ctx, role)
	if err != nil {
		return nil, err
	}
	return proto.CloneOf(cred), nil
}

// Close stops the refreshers and the watch and closes the connection.
// Credentials already handed out stay valid until they expire.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	a.wg.Wait()
	return a.conn.Close()
}

// fetch gets a new credential for role, joining the fetch in flight if
// there is one. The fetch runs on the agent's context and is cancelled
// when its last caller gives up.
func (a *Agent) fetch(ctx context.Context, role string) (*brokerv1.Credential, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, ErrClosed
	}
	c := a.calls[role]
	if c == nil {
		cctx, cancel := context.WithCancel(a.ctx)
		c = &call{done: make(chan struct{}), cancel: cancel, epoch: a.epoch}
		a.calls[role] = c
		a.wg.Add(1)
		go a.run(cctx, role, c)
	}
	c.waiters++
	a.mu.Unlock()
	select {
	case <-c.done:
		return c.cred, c.err
	case <-ctx.Done():
		a.mu.Lock()
		if c.waiters--; c.waiters == 0 {
			c.cancel()
			if a.calls[role] == c {
				delete(a.calls, role) // the next caller starts afresh
			}
		}
		a.mu.Unlock()
		return nil, ctx.Err()
	}
}

// run does c's fetch and caches its credential unless a revocation
// overlapped it or the agent closed.
func (a *Agent) run(ctx context.Context, role string, c *call) {
	defer a.wg.Done()
	defer c.cancel()
	cred, approved, err := a.request(ctx, role)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil && a.closed {
		err = ErrClosed
	}
	if a.calls[role] == c {
		delete(a.calls, role)
	}
	if err == nil && c.epoch == a.epoch && !a.closed {
		a.keep(role, cred, approved)
	}
	c.cred, c.err = cred, err
	close(c.done)
}

// request asks the broker for a credential for role, waiting for and
// redeeming an approval if one is needed and the agent waits for them;
// approved says whether one was.
func (a *Agent) request(ctx context.Context, role string) (cred *brokerv1.Credential, approved bool, err error) {
	req := &brokerv1.FetchCredentialRequest{Role: role}
	if a.opts.ttl > 0 {
		req.Ttl = durationpb.New(a.opts.ttl)
	}
	r, err := a.conn.Broker.FetchCredential(ctx, req)
	if err != nil {
		return nil, false, err
	}
	if r.GetCredential() != nil {
		return r.GetCredential(), false, nil
	}
	ap := r.GetApproval()
	if ap == nil {
		return nil, false, errors.New("client: the broker answered with neither a credential nor an approval request")
	}
	if !a.opts.waitApproval {
		return nil, false, &ApprovalError{Approval: ap}
	}
	if err := a.awaitApproval(ctx, ap); err != nil {
		return nil, false, err
	}
	req.ApprovalId = ap.GetId()
	if r, err = a.conn.Broker.FetchCredential(ctx, req); err != nil {
		return nil, true, err
	}
	if r.GetCredential() == nil {
		return nil, true, fmt.Errorf("client: redeeming approval %s gave no credential", ap.GetId())
	}
	return r.GetCredential(), true, nil
}

// awaitApproval follows the request until it is approved, or returns why
// it will not be.
func (a *Agent) awaitApproval(ctx context.Context, ap *brokerv1.Approval) error {
	a.log.InfoContext(ctx, "credential waits for approval", slog.String(logRole, ap.GetRole()), slog.String(logApproval, ap.GetId()))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := a.conn.Broker.WaitApproval(ctx, &brokerv1.WaitApprovalRequest{ApprovalId: ap.GetId()})
	if err != nil {
		return err
	}
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return &ApprovalError{Approval: ap} // ended undecided
		}
		if err != nil {
			return err
		}
		ap = m.GetApproval()
		switch ap.GetStatus() {
		case brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING:
		case brokerv1.ApprovalStatus_APPROVAL_STATUS_APPROVED:
			return nil
		default:
			return &ApprovalError{Approval: ap}
		}
	}
}

// keep caches cred for role and makes sure a refresher runs for it.
// Called with a.mu held.
func (a *Agent) keep(role string, cred *brokerv1.Credential, approved bool) {
	now := time.Now()
	life := cred.GetExpiresAt().AsTime().Sub(cred.GetIssuedAt().AsTime())
	e := &entry{
		cred:     cred,
		approved: approved,
		// Refresh when roughly refreshBefore of the lifetime remains.
		refreshAt: now.Add(life - jitter(time.Duration(a.opts.refreshBefore*float64(life)))),
		expires:   now.Add(life),
		gone:      make(chan struct{}),
	}
	if old := a.creds[role]; old != nil {
		close(old.gone)
		a.notify(Change{Role: role, Kind: Refreshed, Credential: proto.CloneOf(cred), Accessor: old.cred.GetAccessor()})
	}
	a.creds[role] = e
	if !a.refreshing[role] {
		a.refreshing[role] = true
		a.wg.Add(1)
		go a.refresh(role)
	}
}

// drop forgets role's credential if it is still e (any if e is nil), and
// tells onChange why. Called with a.mu held.
func (a *Agent) drop(role string, e *entry, why Change) {
	if cur := a.creds[role]; cur != nil && (e == nil || cur == e) {
		close(cur.gone)
		delete(a.creds, role)
		why.Role, why.Accessor = role, cur.cred.GetAccessor()
		a.notify(why)
	}
}

// notify queues c for onChange. Called with a.mu held.
func (a *Agent) notify(c Change) {
	if a.opts.onChange == nil {
		return
	}
	a.changes = append(a.changes, c)
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

// deliver hands queued changes to onChange until the agent closes.
func (a *Agent) deliver() {
	defer a.wg.Done()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-a.changed:
		}
		a.mu.Lock()
		batch := a.changes
		a.changes = nil
		a.mu.Unlock()
		for _, c := range batch {
			a.opts.onChange(c)
		}
	}
}

// refresh keeps role's cached credential fresh until it is dropped or the
// agent closes.
func (a *Agent) refresh(role string) {
	defer a.wg.Done()
	for {
		a.mu.Lock()
		e := a.creds[role]
		if e == nil || a.closed {
			delete(a.refreshing, role)
			a.mu.Unlock()
			return
		}
		a.mu.Unlock()
		if e.approved {
			a.hold(role, e)
			continue
		}
		if a.sleep(time.Until(e.refreshAt), e.gone) {
			a.renew(role, e)
		}
	}
}

// renew fetches a successor to e, retrying with backoff until e expires.
func (a *Agent) renew(role string, e *entry) {
	// Waiting past e's expiry is pointless: the next caller fetches anyway.
	ctx, cancel := context.WithDeadline(a.ctx, e.expires)
	defer cancel()
	for attempt := 0; ; attempt++ {
		_, err := a.fetch(ctx, role)
		var ae *ApprovalError
		switch {
		case err == nil, a.ctx.Err() != nil:
			return
		case errors.As(err, &ae):
			// Asking again would only pile up requests for a human.
			a.log.Warn("refreshing a credential needs approval; keeping the current one until it expires",
				slog.String(logRole, role), slog.String(logApproval, ae.Approval.GetId()))
			a.hold(role, e)
			return
		}
		delay := min(backoff(attempt), time.Until(e.expires))
		a.log.Warn("refreshing a credential failed", slog.String(logRole, role), slog.String(logError, err.Error()), slog.Duration(logRetryIn, delay))
		if !a.sleep(delay, e.gone) {
			return
		}
		if !time.Now().Before(e.expires) {
			a.mu.Lock()
			a.drop(role, e, Change{Kind: Expired})
			a.mu.Unlock()
			return
		}
	}
}

// hold keeps e until it expires, then drops it.
func (a *Agent) hold(role string, e *entry) {
	if a.sleep(time.Until(e.expires), e.gone) {
		a.mu.Lock()
		a.drop(role, e, Change{Kind: Expired})
		a.mu.Unlock()
	}
}

// sleep waits d and reports whether it did: not if gone was closed (the
// entry waited on was dropped or replaced), or the agent closed, first.
func (a *Agent) sleep(d time.Duration, gone <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-gone:
	case <-a.ctx.Done():
	}
	return false
}

// WatchHeader is the header atfd's answer to a watch carries once the
// watch is in place (broker/edge.WatchHeader).
const WatchHeader = "atf-watch"

// markWait bounds the wait for a watch's first message, a mark the
// broker sends as soon as the watch is in place.
const markWait = 10 * time.Second

// watchStream is an open revocation watch; cancel ends it.
type watchStream struct {
	brokerv1.BrokerService_WatchRevocationsClient
	cancel context.CancelFunc
}

// openWatch opens the revocation watch, resuming after the cursor if the
// agent has one, and waits until the broker says it is in place: the
// header, then the first message, a mark that says whether it resumed.
func (a *Agent) openWatch(ctx context.Context) (w watchStream, first *brokerv1.WatchRevocationsResponse, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		if err != nil {
			cancel()
		}
	}()
	s, err := a.conn.Broker.WatchRevocations(ctx, &brokerv1.WatchRevocationsRequest{ResumeAfter: a.cursor, Marks: true})
	if err != nil {
		return watchStream{}, nil, err
	}
	md, err := s.Header()
	if err == nil && len(md.Get(WatchHeader)) == 0 {
		// Not in place: the stream ended, and Recv says why.
		if _, err = s.Recv(); err == nil || errors.Is(err, io.EOF) {
			err = errors.New("client: the revocation watch ended before it began")
		}
	}
	if err != nil {
		return watchStream{}, nil, err
	}
	late := time.AfterFunc(markWait, cancel)
	first, err = s.Recv()
	if !late.Stop() {
		err = fmt.Errorf("client: the broker sent no mark within %s of the revocation watch's start (is atfd older than this client?)", markWait)
	}
	if err != nil {
		return watchStream{}, nil, err
	}
	return watchStream{s, cancel}, first, nil
}

// watch follows the revocation watch; when it breaks, it reconnects
// (rewatch).
func (a *Agent) watch(w watchStream) {
	defer a.wg.Done()
	for {
		m, err := w.Recv()
		if err == nil {
			a.heard(m)
			continue
		}
		w.cancel()
		if a.ctx.Err() != nil {
			return
		}
		a.log.Warn("revocation watch broke; reconnecting", slog.String(logError, err.Error()))
		var ok bool
		if w, ok = a.rewatch(); !ok {
			return
		}
	}
}

// rewatch reopens the revocation watch with backoff, on whichever replica
// answers, resuming where it broke: the revocations made meanwhile arrive
// first. If the broker cannot resume it (a restart, a cursor past its
// resume window), it drops every cached credential, since revocations may
// have been missed; until then it keeps serving what it holds. ok is false
// once the agent closes.
func (a *Agent) rewatch() (w watchStream, ok bool) {
	for attempt := 0; ; attempt++ {
		if !a.sleep(backoff(attempt), nil) {
			return watchStream{}, false
		}
		w, first, err := a.openWatch(a.ctx)
		if err == nil {
			if a.cursor != "" && first.GetResumed() {
				a.log.Info("revocation watch resumed where it broke; what was revoked meanwhile follows")
			} else {
				a.reset()
			}
			a.heard(first)
			return w, true
		}
		if a.ctx.Err() != nil {
			return watchStream{}, false
		}
		a.log.Warn("reconnecting the revocation watch failed", slog.String(logError, err.Error()), slog.Int(logAttempt, attempt+1))
	}
}

// reset drops every cached credential, after a watch that could not
// resume.
func (a *Agent) reset() {
	a.mu.Lock()
	a.epoch++
	n := len(a.creds)
	for role := range a.creds {
		a.drop(role, nil, Change{Kind: Reset})
	}
	a.mu.Unlock()
	a.log.Info("revocation watch restored; dropped every cached credential, since revocations may have been missed", slog.Int("dropped", n))
}

// heard takes in a message of the watch: its cursor, and what it revokes
// (a mark revokes nothing).
func (a *Agent) heard(m *brokerv1.WatchRevocationsResponse) {
	if c := m.GetCursor(); c != "" {
		a.cursor = c
	}
	if len(m.GetAccessors()) > 0 || len(m.GetGrantIds()) > 0 {
		a.revoked(m)
	}
}

// revoked drops the cached credentials an event names.
func (a *Agent) revoked(m *brokerv1.WatchRevocationsResponse) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.epoch++
	for role, e := range a.creds {
		if acc := e.cred.GetAccessor(); slices.Contains(m.GetAccessors(), acc) {
			a.drop(role, e, Change{Kind: Revoked, Reason: m.GetReason()})
			a.log.Info("credential revoked; dropped", slog.String(logRole, role), slog.String(logAccessor, acc), slog.String(logReason, m.GetReason()))
		}
	}
}

// backoff is the jittered delay before retry attempt+1: exponential from
// minBackoff, at most maxBackoff.
func backoff(attempt int) time.Duration {
	d := maxBackoff
	if attempt < 6 { // minBackoff<<6 > maxBackoff; larger shifts overflow
		d = min(minBackoff<<attempt, maxBackoff)
	}
	return jitter(d)
}

// jitter spreads d by ±10%.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}
