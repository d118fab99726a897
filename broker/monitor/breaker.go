package monitor

import (
	"errors"
	"strconv"
	"time"
)

// BreakerConfig tunes Breakers. A zero field takes its default (see
// DefaultBreakerConfig).
type BreakerConfig struct {
	Failures int           // failures (or denials; the caller decides) that open a breaker ...
	Window   time.Duration // ... when they fall within Window
	OpenFor  time.Duration // how long an open breaker refuses before it half-opens
	Probes   int           // successes in half-open that close it
}

// DefaultBreakerConfig returns the defaults. The result is the caller's to
// modify.
func DefaultBreakerConfig() BreakerConfig {
	return BreakerConfig{Failures: 5, Window: time.Minute, OpenFor: 30 * time.Second, Probes: 2}
}

// withDefaults returns c with its zero fields set to their defaults, or an
// error naming every field out of range.
func (c BreakerConfig) withDefaults() (BreakerConfig, error) {
	d := DefaultBreakerConfig()
	return c, errors.Join(
		orDefault("Failures", &c.Failures, d.Failures),
		orDefault("Window", &c.Window, d.Window),
		orDefault("OpenFor", &c.OpenFor, d.OpenFor),
		orDefault("Probes", &c.Probes, d.Probes),
	)
}

// BreakerState is where a breaker stands.
type BreakerState int

const (
	Closed   BreakerState = iota // the agent may proceed
	Open                         // the agent is refused
	HalfOpen                     // the agent may proceed one request at a time
)

var breakerStateNames = [...]string{"closed", "open", "half-open"}

func (s BreakerState) String() string {
	if s < Closed || s > HalfOpen {
		return "BreakerState(" + strconv.Itoa(int(s)) + ")"
	}
	return breakerStateNames[s]
}

// Breakers holds a circuit breaker per agent. It is safe for concurrent use.
//
// A breaker opens when Failures failures are recorded within Window, or when
// tripped. After OpenFor it half-opens: it lets one request (a probe) in at a
// time, closes once Probes of them succeed, and opens again as soon as one
// fails. A probe whose outcome is not recorded within OpenFor is taken as lost,
// and another is let in.
type Breakers struct {
	cfg BreakerConfig
	now func() time.Time
	// Only agents whose breaker is not closed, or closed with recent
	// failures, have an entry.
	agents table[breaker]
}

type breaker struct {
	state    BreakerState
	until    time.Time // when Open: when it half-opens
	failures recent    // when Closed
	probeAt  time.Time // when HalfOpen: when the probe in flight was let in, or zero
	probes   int       // when HalfOpen: probes that succeeded
}

// NewBreakers returns Breakers that hold every agent's closed. A nil now means
// time.Now.
func NewBreakers(c BreakerConfig, now func() time.Time) (*Breakers, error) {
	c, err := c.withDefaults()
	if err != nil {
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
func (b *Breakers) Allow(agent string) (ok bool, state BreakerState, retryAt time.Time) {
	now := b.now()
	s := b.agents.shard(agent)
	s.mu.Lock()
	defer s.mu.Unlock()
	br := s.m[agent]
	if br == nil {
		return true, Closed, time.Time{}
	}
	br.advance(now)
	switch br.state {
	case Open:
		return false, Open, br.until
	case HalfOpen:
		if lost := br.probeAt.Add(b.cfg.OpenFor); !br.probeAt.IsZero() && now.Before(lost) {
			return false, HalfOpen, lost
		}
		br.probeAt = now
	}
	return true, br.state, time.Time{}
}

// Record records the outcome of one of agent's requests and reports whether
// this outcome opened its breaker.
func (b *Breakers) Record(agent string, failure bool) (tripped bool) {
	now := b.now()
	s := b.agents.shard(agent)
	s.mu.Lock()
	defer s.mu.Unlock()
	br := s.m[agent]
	if br == nil {
		if !failure {
			return false
		}
		br = &breaker{}
		s.m[agent] = br
	}
	br.advance(now)
	switch br.state {
	case Closed:
		if failure {
			if br.failures.add(now, b.cfg.Failures, b.cfg.Window) {
				br.open(now.Add(b.cfg.OpenFor))
				return true
			}
		} else if now.Sub(br.failures.last()) > b.cfg.Window {
			delete(s.m, agent) // no failure left to count
		}
	case HalfOpen:
		br.probeAt = time.Time{}
		if failure {
			br.open(now.Add(b.cfg.OpenFor))
			return true
		}
		if br.probes++; br.probes >= b.cfg.Probes {
			delete(s.m, agent)
		}
	}
	return false
}

// State returns agent's breaker state and, when open, until when.
func (b *Breakers) State(agent string) (BreakerState, time.Time) {
	now := b.now()
	s := b.agents.shard(agent)
	s.mu.Lock()
	defer s.mu.Unlock()
	br := s.m[agent]
	if br == nil {
		return Closed, time.Time{}
	}
	br.advance(now)
	if br.state != Open {
		return br.state, time.Time{}
	}
	return Open, br.until
}

// Trip opens agent's breaker for OpenFor, whatever its state.
func (b *Breakers) Trip(agent string) {
	now := b.now()
	s := b.agents.shard(agent)
	s.mu.Lock()
	defer s.mu.Unlock()
	br := s.m[agent]
	if br == nil {
		br = &breaker{}
		s.m[agent] = br
	}
	br.open(now.Add(b.cfg.OpenFor))
}

// Reset closes agent's breaker and forgets its failures.
func (b *Breakers) Reset(agent string) {
	s := b.agents.shard(agent)
	s.mu.Lock()
	delete(s.m, agent)
	s.mu.Unlock()
}

// open opens br until the given time.
func (br *breaker) open(until time.Time) {
	br.state, br.until = Open, until
	br.failures.reset()
	br.probeAt, br.probes = time.Time{}, 0
}

// advance half-opens br if it is open and its time is up.
func (br *breaker) advance(now time.Time) {
	if br.state == Open && !now.Before(br.until) {
		br.state = HalfOpen
	}
}
