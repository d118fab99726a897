package vault

import (
	"sync"
	"time"
)

// Breaker defaults.
const (
	defaultBreakerFailures = 5
	defaultBreakerWindow   = time.Minute
	defaultBreakerOpenFor  = 10 * time.Second
)

// BreakerConfig configures the circuit breaker in front of Vault for
// issuance (credentials and anchors). Revocations never wait on it: they
// must reach Vault as soon as it answers, and the broker queues them
// durably anyway.
type BreakerConfig struct {
	// Failures unavailability failures in a row (no call answered in
	// between), all within Window, open the breaker; defaults 5 and 1 min.
	Failures int
	Window   time.Duration
	// OpenFor is how long issuance then fails fast, without calling Vault,
	// before one call goes through as a probe: Vault's answer closes the
	// breaker, another failure opens it again. Default 10 s.
	OpenFor time.Duration
}

// BreakerOpenError is returned, wrapping ErrUnavailable, while the breaker
// fails issuance fast. Test with errors.As.
type BreakerOpenError struct {
	// RetryAt is when the breaker next lets a call through.
	RetryAt time.Time
}

func (e *BreakerOpenError) Error() string {
	return "vault: unavailable: circuit breaker open after repeated failures; retrying at " + e.RetryAt.UTC().Format(time.RFC3339)
}

func (e *BreakerOpenError) Unwrap() error { return ErrUnavailable }

// outcome is how a call admitted by the breaker ended.
type outcome int

const (
	answered  outcome = iota // Vault answered, whatever it said
	failed                   // Vault could not be reached, timed out or answered 5xx
	abandoned                // the caller gave up first: says nothing about Vault
)

// breaker is closed (calls go through), open (calls fail fast until
// retryAt) or half-open (open, with one probe in flight).
type breaker struct {
	cfg BreakerConfig
	now func() time.Time
	// probeFor is how long a probe may take (the Vault timeout): callers
	// refused meanwhile are told to retry once it has had its time.
	probeFor time.Duration

	mu          sync.Mutex
	streak      int
	streakStart time.Time
	open        bool
	retryAt     time.Time
	probing     bool
	trips       uint64
}

// WithDefaults fills what c leaves zero with the defaults.
func (c BreakerConfig) WithDefaults() BreakerConfig {
	if c.Failures <= 0 {
		c.Failures = defaultBreakerFailures
	}
	if c.Window <= 0 {
		c.Window = defaultBreakerWindow
	}
	if c.OpenFor <= 0 {
		c.OpenFor = defaultBreakerOpenFor
	}
	return c
}

func newBreaker(cfg BreakerConfig, now func() time.Time, probeFor time.Duration) *breaker {
	return &breaker{cfg: cfg.WithDefaults(), now: now, probeFor: probeFor}
}

// admit lets a call through, or returns a *BreakerOpenError. probe is true
// for the one call that tests a Vault the breaker had given up on.
func (b *breaker) admit() (probe bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		return false, nil
	}
	now := b.now()
	if b.probing || now.Before(b.retryAt) {
		return false, &BreakerOpenError{RetryAt: b.retryAt}
	}
	b.probing = true
	b.retryAt = now.Add(b.probeFor)
	return true, nil
}

// transition is what record did to the breaker.
type transition int

const (
	unchanged transition = iota
	opened
	reopened // a probe failed
	closed
)

// record counts how an admitted call ended.
func (b *breaker) record(probe bool, o outcome) transition {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if probe {
		b.probing = false
	}
	switch o {
	case answered:
		b.streak = 0
		if b.open {
			b.open = false
			return closed
		}
	case failed:
		if b.streak == 0 || now.Sub(b.streakStart) > b.cfg.Window {
			b.streak, b.streakStart = 0, now
		}
		b.streak++
		switch {
		case probe:
			b.open, b.retryAt = true, now.Add(b.cfg.OpenFor)
			return reopened
		case !b.open && b.streak >= b.cfg.Failures:
			b.open, b.retryAt = true, now.Add(b.cfg.OpenFor)
			b.trips++
			return opened
		}
	case abandoned:
		if probe {
			b.retryAt = now // the next call probes instead
		}
	}
	return unchanged
}

// state is whether the breaker fails issuance fast, and how often it opened.
func (b *breaker) state() (open bool, trips uint64, retryAt time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open, b.trips, b.retryAt
}
