// Package breaker owns the broker's circuit breaker: the state machine that
// stops calls to something that keeps failing, and lets a few through now
// and then to see whether it works again.
//
// # Basics
//
// A Breaker is closed, open or half-open. Closed, it lets every call
// through and counts failures: Config.Failures of them within
// Config.Window open it. Open, it refuses every call until Config.OpenFor
// has passed, and then half-opens. Half-open, it lets one call (a probe)
// through at a time: Config.Probes successful probes close it, and a failed
// one opens it again. Trip opens it whatever its state; Reset closes it and
// forgets its failures.
//
// The caller asks Allow before a call and reports the call's outcome with
// Record, or with Abandon if the probe it was let through ended with
// nothing to say about the service. A Breaker is safe for concurrent use.
// Its clock is the one given to New.
//
// The Vault issuer keeps one Breaker in front of Vault; the behaviour
// monitor keeps one per agent.
//
// # Caveats
//
// A Breaker is in memory: it starts closed after a restart.
//
// Outcomes recorded while it is open are ignored: they come from calls let
// through before it opened. A probe whose outcome is neither recorded nor
// abandoned within Config.ProbeTimeout is taken as lost, and another is let
// through.
package breaker

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// Config tunes a Breaker. A zero field takes its default (see DefaultConfig
// and WithDefaults). The yaml tags name the fields in the broker's
// configuration file.
type Config struct {
	Failures int           `yaml:"failures"` // failures that open the breaker ...
	Window   time.Duration `yaml:"window"`   // ... when they fall within Window
	OpenFor  time.Duration `yaml:"open_for"` // how long it refuses before it half-opens
	Probes   int           `yaml:"probes"`   // successful probes that close it
	// ProbeTimeout is how long a probe may go without an outcome before it
	// is taken as lost; zero means OpenFor.
	ProbeTimeout time.Duration `yaml:"probe_timeout"`
}

// DefaultConfig returns the defaults: 5 failures within a minute open the
// breaker for 30 s, and 2 successful probes close it. The result is the
// caller's to modify.
func DefaultConfig() Config {
	return Config{Failures: 5, Window: time.Minute, OpenFor: 30 * time.Second, Probes: 2}
}

// WithDefaults returns c with each field that is not positive taken from
// d, for callers whose defaults are not DefaultConfig's.
func (c Config) WithDefaults(d Config) Config {
	orDefault(&c.Failures, d.Failures)
	orDefault(&c.Window, d.Window)
	orDefault(&c.OpenFor, d.OpenFor)
	orDefault(&c.Probes, d.Probes)
	orDefault(&c.ProbeTimeout, d.ProbeTimeout)
	return c
}

func orDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// Validate returns an error naming every field of c out of range: fields
// are 0 (the default) or more.
func (c Config) Validate() error {
	return errors.Join(
		nonNegative("Failures", c.Failures),
		nonNegative("Window", c.Window),
		nonNegative("OpenFor", c.OpenFor),
		nonNegative("Probes", c.Probes),
		nonNegative("ProbeTimeout", c.ProbeTimeout),
	)
}

func nonNegative[T int | time.Duration](name string, v T) error {
	if v < 0 {
		return fmt.Errorf("breaker: %s is %v; want 0 or more", name, v)
	}
	return nil
}

// State is where a breaker stands.
type State int

const (
	Closed   State = iota // calls go through
	Open                  // calls are refused
	HalfOpen              // calls go through one at a time, as probes
)

var stateNames = [...]string{"closed", "open", "half-open"}

func (s State) String() string {
	if s < Closed || s > HalfOpen {
		return "State(" + strconv.Itoa(int(s)) + ")"
	}
	return stateNames[s]
}

// Breaker is one circuit breaker. It is safe for concurrent use.
type Breaker struct {
	cfg Config
	now func() time.Time

	mu       sync.Mutex
	state    State
	until    time.Time // when Open: when it half-opens
	failures Burst     // when Closed
	probeAt  time.Time // when HalfOpen: when the probe in flight was let through, or zero
	probes   int       // when HalfOpen: probes that succeeded
}

// New returns a closed breaker. Fields of c that are not positive take the
// values of DefaultConfig: check c with Validate first to refuse negative
// ones. A nil now means time.Now.
func New(c Config, now func() time.Time) *Breaker {
	c = c.WithDefaults(DefaultConfig())
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = c.OpenFor
	}
	if now == nil {
		now = time.Now
	}
	return &Breaker{cfg: c, now: now}
}

// Allow says whether a call may go through now and, if it may not, until
// when calls will be refused. A call let through while the breaker is
// half-open is its probe: the caller must Record its outcome, or Abandon
// it.
func (b *Breaker) Allow() (ok bool, state State, retryAt time.Time) {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(now)
	switch b.state {
	case Open:
		return false, Open, b.until
	case HalfOpen:
		if lost := b.probeAt.Add(b.cfg.ProbeTimeout); !b.probeAt.IsZero() && now.Before(lost) {
			return false, HalfOpen, lost
		}
		b.probeAt = now
	}
	return true, b.state, time.Time{}
}

// Record records the outcome of a call let through, and returns the state
// before and after it: from Closed or HalfOpen to Open means this failure
// opened the breaker, from HalfOpen to Closed that this success closed it.
func (b *Breaker) Record(failure bool) (from, to State) {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(now)
	from = b.state
	switch b.state {
	case Closed:
		if failure && b.failures.Add(now, b.cfg.Failures, b.cfg.Window) {
			b.open(now.Add(b.cfg.OpenFor))
		}
	case HalfOpen:
		b.probeAt = time.Time{}
		if failure {
			b.open(now.Add(b.cfg.OpenFor))
		} else if b.probes++; b.probes >= b.cfg.Probes {
			b.close()
		}
	}
	return from, b.state
}

// Abandon says that the probe let through ended with nothing to say about
// the service (its caller gave up): the next call probes instead.
func (b *Breaker) Abandon() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == HalfOpen {
		b.probeAt = time.Time{}
	}
}

// State returns the breaker's state and, when open, until when.
func (b *Breaker) State() (State, time.Time) {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(now)
	if b.state != Open {
		return b.state, time.Time{}
	}
	return Open, b.until
}

// Trip opens the breaker for OpenFor, whatever its state.
func (b *Breaker) Trip() {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.open(now.Add(b.cfg.OpenFor))
}

// Reset closes the breaker and forgets its failures. It returns the state
// it was in.
func (b *Breaker) Reset() (was State) {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(now)
	was = b.state
	b.close()
	return was
}

// Idle reports whether the breaker is closed with no failure left within
// Window: a new breaker would behave the same, so a caller holding many may
// drop it.
func (b *Breaker) Idle() bool {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state == Closed && (b.failures.empty() || now.Sub(b.failures.last()) > b.cfg.Window)
}

// open opens b until the given time.
func (b *Breaker) open(until time.Time) {
	b.state, b.until = Open, until
	b.failures.reset()
	b.probeAt, b.probes = time.Time{}, 0
}

// close closes b, with no failure counted.
func (b *Breaker) close() {
	b.state, b.until = Closed, time.Time{}
	b.failures.reset()
	b.probeAt, b.probes = time.Time{}, 0
}

// advance half-opens b if it is open and its time is up.
func (b *Breaker) advance(now time.Time) {
	if b.state == Open && !now.Before(b.until) {
		b.state = HalfOpen
	}
}
