// Package limits holds the broker's in-memory limits on agents: a token
// bucket per agent sized by its level (ATF S-3), and the count of live
// credentials per agent, lineage and role (S-4, S-5), with reservations for
// issuances in flight so that concurrent requests cannot overshoot.
package limits

import (
	"container/heap"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/store"
)

// Rate is a token bucket per agent, sized by its level (ATF S-3).
type Rate struct {
	byLevel map[authz.Level]config.RateLimit
	now     func() time.Time
	// limit names the limit in refusals; what says what it counts;
	// setting is appended to the burst, naming the configuration.
	limit, what, setting string

	mu      sync.Mutex
	buckets map[string]*bucket
	// shares is how many replicas the rate is split between (Share).
	shares int
}

type bucket struct {
	level authz.Level
	lim   *rate.Limiter
}

// NewRate returns the rate limits of cfg (checked by config.Validate).
func NewRate(cfg map[string]config.RateLimit, now func() time.Time) *Rate {
	return newRate(cfg, now, "rate", "credential requests", "")
}

// NewCallRate returns the rate limits of cfg (limits.call_rate) on the
// agent API's other calls.
func NewCallRate(cfg map[string]config.RateLimit, now func() time.Time) *Rate {
	return newRate(cfg, now, "call_rate", "calls to the agent API besides credential requests", ", limits.call_rate")
}

func newRate(cfg map[string]config.RateLimit, now func() time.Time, limit, what, setting string) *Rate {
	r := &Rate{byLevel: map[authz.Level]config.RateLimit{}, now: now, buckets: map[string]*bucket{}, limit: limit, what: what, setting: setting, shares: 1}
	for name, rl := range cfg {
		l, _ := authz.ParseLevel(name) // checked by Validate
		r.byLevel[l] = rl
	}
	return r
}

// maxBuckets bounds the limiter's memory; when reached, full (idle)
// buckets are dropped, which forgets nothing that matters.
const maxBuckets = 100_000

// Allow takes one request from agent's bucket. Unregistered callers share
// the Intern rate, per SPIFFE ID.
func (r *Rate) Allow(agent string, level authz.Level) *fault.Error {
	if !level.Valid() {
		level = authz.Intern
	}
	rl, ok := r.byLevel[level]
	if !ok {
		return nil
	}
	now := r.now()
	r.mu.Lock()
	b := r.buckets[agent]
	if b == nil || b.level != level {
		if len(r.buckets) >= maxBuckets {
			r.pruneLocked(now)
		}
		b = &bucket{level: level, lim: rate.NewLimiter(r.shareOf(rl))}
		r.buckets[agent] = b
	}
	res := b.lim.ReserveN(now, 1)
	delay := res.DelayFrom(now)
	if delay > 0 {
		res.CancelAt(now)
	}
	r.mu.Unlock()
	if delay == 0 {
		return nil
	}
	return fault.Limited(r.limit, delay, "rate limit: %s agents may make %g %s per second (burst %d%s)", level, rl.PerSecond, r.what, rl.Burst, r.setting)
}

// Share splits every agent's rate between n replicas that each keep
// their own buckets (etcd): each allows 1/n of the rate, and of the burst
// (at least one), so that together they never allow more than the
// configured rate (docs/operations.md).
func (r *Rate) Share(n int) {
	n = max(n, 1)
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if n == r.shares {
		return
	}
	r.shares = n
	for _, b := range r.buckets {
		lim, burst := r.shareOf(r.byLevel[b.level])
		b.lim.SetLimitAt(now, lim)
		b.lim.SetBurstAt(now, burst)
	}
}

// shareOf is this replica's share of rl. Called with mu held.
func (r *Rate) shareOf(rl config.RateLimit) (rate.Limit, int) {
	return rate.Limit(rl.PerSecond / float64(r.shares)), max(rl.Burst/r.shares, 1)
}

func (r *Rate) pruneLocked(now time.Time) {
	for id, b := range r.buckets {
		if b.lim.TokensAt(now) >= float64(b.lim.Burst()) {
			delete(r.buckets, id)
		}
	}
}

// Live counts live credentials per agent, lineage and role, for the
// transaction and blast-radius limits (ATF S-4, S-5). Counts include
// reservations for issuances in flight, so concurrent requests cannot
// overshoot a limit. It is rebuilt from the store at start.
type Live struct {
	maxAgent, maxLineage, maxRole int // -1: no limit
	now                           func() time.Time

	mu       sync.Mutex
	agent    map[string]int
	lineage  map[string]int
	role     map[string]int
	byAcc    map[string]*Reservation
	byExpiry expiryHeap
}

// Reservation is one counted credential (or reservation, until commit).
type Reservation struct {
	// id is the reservation in the store (Shared only).
	id                   string
	accessor             string
	agent, lineage, role string
	expires              time.Time
	index                int // in the heap
}

// NewLive returns empty live-credential counts with the limits of cfg.
func NewLive(cfg config.LimitsConfig, now func() time.Time) *Live {
	return &Live{
		maxAgent: cfg.MaxLivePerAgent, maxLineage: cfg.MaxLivePerLineage, maxRole: cfg.MaxLivePerRole, now: now,
		agent: map[string]int{}, lineage: map[string]int{}, role: map[string]int{}, byAcc: map[string]*Reservation{},
	}
}

// Load counts the store's live credentials.
func (l *Live) Load(creds []store.Credential) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range creds {
		lc := &Reservation{accessor: c.Accessor, agent: c.AgentID, lineage: c.LineageRoot(), role: c.Role, expires: c.ExpiresAt}
		l.addLocked(lc)
		l.byAcc[c.Accessor] = lc
		heap.Push(&l.byExpiry, lc)
	}
}

// Counter counts live credentials for the limits on them: Live in one
// process, Shared across the replicas sharing a store. Reserve counts one
// more credential for agent in lineage and role until expires, or says
// which limit it would break (a *fault.Error with its Limit set) or that
// it could not count (any other error); the caller must then Commit the
// issued credential or Cancel. Remove forgets revoked credentials.
// InRecord, instead of Reserve, gives the reservation for the credential's
// record to make in its own transaction (store.Credential's Reserve), or
// nil if it is counted here (Reserve).
type Counter interface {
	Reserve(agent, lineage, role string, expires time.Time) (*Reservation, error)
	InRecord(agent, lineage, role string, expires time.Time) *store.LiveReserve
	Commit(lc *Reservation, accessor string, expires time.Time)
	Cancel(lc *Reservation)
	Remove(agent string, accessors ...string)
	Total() int
}

// Reserve counts one more credential for agent in lineage and role, or says
// which limit it would break. The caller must commit or cancel.
func (l *Live) Reserve(agent, lineage, role string, _ time.Time) (*Reservation, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expireLocked()
	lc := &Reservation{agent: agent, lineage: lineage, role: role, index: -1}
	for _, c := range []struct {
		name, what string
		n, max     int
		match      func(*Reservation) bool
	}{
		{"live_per_agent", "agent " + agent, l.agent[agent], l.maxAgent, func(x *Reservation) bool { return x.agent == agent }},
		{"live_per_lineage", "the lineage of " + lineage, l.lineage[lineage], l.maxLineage, func(x *Reservation) bool { return x.lineage == lineage }},
		{"live_per_role", "role " + role, l.role[role], l.maxRole, func(x *Reservation) bool { return x.role == role }},
	} {
		if c.max >= 0 && c.n >= c.max {
			return nil, fault.Limited(c.name, l.nextExpiryLocked(c.match), "limit %s: %s already holds %d live credentials, the most allowed", c.name, c.what, c.n)
		}
	}
	l.addLocked(lc)
	return lc, nil
}

// InRecord is nil: Live counts in memory (Reserve).
func (l *Live) InRecord(string, string, string, time.Time) *store.LiveReserve { return nil }

// StoreID is the reservation's id in the store (store.Credential's
// LiveReservation), "" if it is counted in memory.
func (lc *Reservation) StoreID() string {
	if lc == nil {
		return ""
	}
	return lc.id
}

// Commit records the issued credential behind a reservation.
func (l *Live) Commit(lc *Reservation, accessor string, expires time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lc.accessor, lc.expires = accessor, expires
	l.byAcc[accessor] = lc
	heap.Push(&l.byExpiry, lc)
}

// Total is the number of live credentials counted.
func (l *Live) Total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.byAcc)
}

// Cancel gives a reservation back.
func (l *Live) Cancel(lc *Reservation) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addLockedN(lc, -1)
}

// Remove forgets revoked credentials.
func (l *Live) Remove(_ string, accessors ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, acc := range accessors {
		if lc, ok := l.byAcc[acc]; ok {
			heap.Remove(&l.byExpiry, lc.index)
			delete(l.byAcc, acc)
			l.addLockedN(lc, -1)
		}
	}
}

func (l *Live) addLocked(lc *Reservation) { l.addLockedN(lc, 1) }

func (l *Live) addLockedN(lc *Reservation, n int) {
	for _, m := range []struct {
		counts map[string]int
		key    string
	}{{l.agent, lc.agent}, {l.lineage, lc.lineage}, {l.role, lc.role}} {
		if m.counts[m.key] += n; m.counts[m.key] <= 0 {
			delete(m.counts, m.key)
		}
	}
}

func (l *Live) expireLocked() {
	now := l.now()
	for len(l.byExpiry) > 0 && !l.byExpiry[0].expires.After(now) {
		lc := heap.Pop(&l.byExpiry).(*Reservation)
		delete(l.byAcc, lc.accessor)
		l.addLockedN(lc, -1)
	}
}

// nextExpiryLocked is how long until the first credential matching match
// expires (a minute if only reservations match).
func (l *Live) nextExpiryLocked(match func(*Reservation) bool) time.Duration {
	var first time.Time
	for _, lc := range l.byExpiry {
		if match(lc) && (first.IsZero() || lc.expires.Before(first)) {
			first = lc.expires
		}
	}
	if first.IsZero() {
		return time.Minute
	}
	return max(first.Sub(l.now()), time.Second)
}

// expiryHeap orders live credentials by expiry.
type expiryHeap []*Reservation

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *expiryHeap) Push(x any) {
	lc := x.(*Reservation)
	lc.index = len(*h)
	*h = append(*h, lc)
}
func (h *expiryHeap) Pop() any {
	old := *h
	lc := old[len(old)-1]
	*h = old[:len(old)-1]
	lc.index = -1
	return lc
}
