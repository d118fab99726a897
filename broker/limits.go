package broker

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

// rateLimiter is a token bucket per agent, sized by its level (ATF S-3).
type rateLimiter struct {
	byLevel map[authz.Level]config.RateLimit
	now     func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	level authz.Level
	lim   *rate.Limiter
}

func newRateLimiter(cfg map[string]config.RateLimit, now func() time.Time) *rateLimiter {
	r := &rateLimiter{byLevel: map[authz.Level]config.RateLimit{}, now: now, buckets: map[string]*bucket{}}
	for name, rl := range cfg {
		l, _ := authz.ParseLevel(name) // checked by Validate
		r.byLevel[l] = rl
	}
	return r
}

// maxBuckets bounds the limiter's memory; when reached, full (idle)
// buckets are dropped, which forgets nothing that matters.
const maxBuckets = 100_000

// allow takes one request from agent's bucket. Unregistered callers share
// the Intern rate, per SPIFFE ID.
func (r *rateLimiter) allow(agent string, level authz.Level) *fault.Error {
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
		b = &bucket{level: level, lim: rate.NewLimiter(rate.Limit(rl.PerSecond), rl.Burst)}
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
	return fault.Limited("rate", delay, "rate limit: %s agents may make %g credential requests per second (burst %d)", level, rl.PerSecond, rl.Burst)
}

func (r *rateLimiter) pruneLocked(now time.Time) {
	for id, b := range r.buckets {
		if b.lim.TokensAt(now) >= float64(b.lim.Burst()) {
			delete(r.buckets, id)
		}
	}
}

// liveSet counts live credentials per agent, lineage and role, for the
// transaction and blast-radius limits (ATF S-4, S-5). Counts include
// reservations for issuances in flight, so concurrent requests cannot
// overshoot a limit. It is rebuilt from the store at start.
type liveSet struct {
	maxAgent, maxLineage, maxRole int // -1: no limit
	now                           func() time.Time

	mu       sync.Mutex
	agent    map[string]int
	lineage  map[string]int
	role     map[string]int
	byAcc    map[string]*liveCred
	byExpiry expiryHeap
}

// liveCred is one counted credential (or reservation, until commit).
type liveCred struct {
	accessor             string
	agent, lineage, role string
	expires              time.Time
	index                int // in the heap
}

func newLiveSet(cfg config.LimitsConfig, now func() time.Time) *liveSet {
	return &liveSet{
		maxAgent: cfg.MaxLivePerAgent, maxLineage: cfg.MaxLivePerLineage, maxRole: cfg.MaxLivePerRole, now: now,
		agent: map[string]int{}, lineage: map[string]int{}, role: map[string]int{}, byAcc: map[string]*liveCred{},
	}
}

// load counts the store's live credentials.
func (l *liveSet) load(creds []store.Credential) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range creds {
		lc := &liveCred{accessor: c.Accessor, agent: c.AgentID, lineage: lineageRoot(c.AgentID, c.Chain), role: c.Role, expires: c.ExpiresAt}
		l.addLocked(lc)
		l.byAcc[c.Accessor] = lc
		heap.Push(&l.byExpiry, lc)
	}
}

// lineageRoot is the agent whose authority a credential ultimately rests on.
func lineageRoot(agent string, chain []string) string {
	if len(chain) > 0 {
		return chain[0]
	}
	return agent
}

// reserve counts one more credential for agent in lineage and role, or says
// which limit it would break. The caller must commit or cancel.
func (l *liveSet) reserve(agent, lineage, role string) (*liveCred, *fault.Error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expireLocked()
	lc := &liveCred{agent: agent, lineage: lineage, role: role, index: -1}
	for _, c := range []struct {
		name, what string
		n, max     int
		match      func(*liveCred) bool
	}{
		{"live_per_agent", "agent " + agent, l.agent[agent], l.maxAgent, func(x *liveCred) bool { return x.agent == agent }},
		{"live_per_lineage", "the lineage of " + lineage, l.lineage[lineage], l.maxLineage, func(x *liveCred) bool { return x.lineage == lineage }},
		{"live_per_role", "role " + role, l.role[role], l.maxRole, func(x *liveCred) bool { return x.role == role }},
	} {
		if c.max >= 0 && c.n >= c.max {
			return nil, fault.Limited(c.name, l.nextExpiryLocked(c.match), "limit %s: %s already holds %d live credentials, the most allowed", c.name, c.what, c.n)
		}
	}
	l.addLocked(lc)
	return lc, nil
}

// commit records the issued credential behind a reservation.
func (l *liveSet) commit(lc *liveCred, accessor string, expires time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lc.accessor, lc.expires = accessor, expires
	l.byAcc[accessor] = lc
	heap.Push(&l.byExpiry, lc)
}

// total is the number of live credentials counted.
func (l *liveSet) total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.byAcc)
}

// cancel gives a reservation back.
func (l *liveSet) cancel(lc *liveCred) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addLockedN(lc, -1)
}

// remove forgets revoked credentials.
func (l *liveSet) remove(accessors ...string) {
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

func (l *liveSet) addLocked(lc *liveCred) { l.addLockedN(lc, 1) }

func (l *liveSet) addLockedN(lc *liveCred, n int) {
	for _, m := range []struct {
		counts map[string]int
		key    string
	}{{l.agent, lc.agent}, {l.lineage, lc.lineage}, {l.role, lc.role}} {
		if m.counts[m.key] += n; m.counts[m.key] <= 0 {
			delete(m.counts, m.key)
		}
	}
}

func (l *liveSet) expireLocked() {
	now := l.now()
	for len(l.byExpiry) > 0 && !l.byExpiry[0].expires.After(now) {
		lc := heap.Pop(&l.byExpiry).(*liveCred)
		delete(l.byAcc, lc.accessor)
		l.addLockedN(lc, -1)
	}
}

// nextExpiryLocked is how long until the first credential matching match
// expires (a minute if only reservations match).
func (l *liveSet) nextExpiryLocked(match func(*liveCred) bool) time.Duration {
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
type expiryHeap []*liveCred

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *expiryHeap) Push(x any) {
	lc := x.(*liveCred)
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
