package monitor

import (
	"time"

	"github.com/agentictrust/atf/broker/breaker"
)

// Breakers holds a circuit breaker per agent (see package breaker for how
// one behaves). It is safe for concurrent use.
type Breakers struct {
	cfg breaker.Config
	now func() time.Time
	// Only agents whose breaker is not idle (see breaker.Breaker.Idle) have
	// an entry.
	agents table[breaker.Breaker]
}

// NewBreakers returns Breakers that hold every agent's closed. A zero field
// of c takes the value of breaker.DefaultConfig; a nil now means time.Now.
func NewBreakers(c breaker.Config, now func() time.Time) (*Breakers, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	b := &Breakers{cfg: c, now: now}
	b.agents.init()
	return b, nil
}

// Allow says whether agent may proceed now and, if it may not, until when it
// will be refused.
func (b *Breakers) Allow(agent string) (ok bool, state breaker.State, retryAt time.Time) {
	s := b.agents.shard(agent)
	s.mu.Lock()
	defer s.mu.Unlock()
	br := s.m[agent]
	if br == nil {
		return true, breaker.Closed, time.Time{}
	}
	return br.Allow()
}

// Record records the outcome of one of agent's requests and reports whether
// this outcome opened its breaker.
func (b *Breakers) Record(agent string, failure bool) (tripped bool) {
	s := b.agents.shard(agent)
	s.mu.Lock()
	defer s.mu.Unlock()
	br := s.m[agent]
	if br == nil {
		if !failure {
			return false
		}
		br = breaker.New(b.cfg, b.now)
		s.m[agent] = br
	}
	from, to := br.Record(failure)
	if br.Idle() {
		delete(s.m, agent)
	}
	return from != breaker.Open && to == breaker.Open
}

// State returns agent's breaker state and, when open, until when.
func (b *Breakers) State(agent string) (breaker.State, time.Time) {
	s := b.agents.shard(agent)
	s.mu.Lock()
	defer s.mu.Unlock()
	br := s.m[agent]
	if br == nil {
		return breaker.Closed, time.Time{}
	}
	return br.State()
}

// Trip opens agent's breaker for OpenFor, whatever its state.
func (b *Breakers) Trip(agent string) {
	s := b.agents.shard(agent)
	s.mu.Lock()
	defer s.mu.Unlock()
	br := s.m[agent]
	if br == nil {
		br = breaker.New(b.cfg, b.now)
		s.m[agent] = br
	}
	br.Trip()
}

// Reset closes agent's breaker and forgets its failures.
func (b *Breakers) Reset(agent string) {
	s := b.agents.shard(agent)
	s.mu.Lock()
	delete(s.m, agent)
	s.mu.Unlock()
}
