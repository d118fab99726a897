package vault

import (
	"log/slog"
	"time"

	"github.com/agentictrust/atf/broker/breaker"
)

// DefaultBreakerConfig returns the defaults of the circuit breaker in front
// of Vault for issuance (credentials and anchors): 5 unavailability
// failures in a row within a minute open it for 10 s. The result is the
// caller's to modify.
//
// Revocations never wait on the breaker: they must reach Vault as soon as it
// answers, and the broker queues them durably anyway.
func DefaultBreakerConfig() breaker.Config {
	return breaker.Config{Failures: 5, Window: time.Minute, OpenFor: 10 * time.Second}
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

// admit lets a call through the breaker, or returns a *BreakerOpenError.
// probe is true for the one call that tests a Vault the breaker had given
// up on.
func (is *Issuer) admit() (probe bool, err error) {
	ok, state, retryAt := is.breaker.Allow()
	if !ok {
		return false, &BreakerOpenError{RetryAt: retryAt}
	}
	return state == breaker.HalfOpen, nil
}

// answered records that Vault answered a call, whatever it said: Vault
// works, so the breaker closes and forgets the failures before.
func (is *Issuer) answered() {
	if is.breaker.Reset() != breaker.Closed {
		is.cfg.Logger.Info("vault circuit breaker closed: Vault answers again")
	}
}

// failed records that Vault could not be reached, timed out or answered
// 5xx, with err saying which.
func (is *Issuer) failed(err error) {
	from, to := is.breaker.Record(true)
	if to != breaker.Open || from == breaker.Open {
		return
	}
	_, retryAt := is.breaker.State()
	if from == breaker.HalfOpen {
		is.cfg.Logger.Warn("vault circuit breaker probe failed; staying open", slog.Time("retry_at", retryAt), slog.String("error", err.Error()))
		return
	}
	is.trips.Add(1)
	is.cfg.Logger.Error("vault circuit breaker opened: issuance fails fast until a probe gets an answer",
		slog.Int("failures", is.cfg.Breaker.Failures), slog.Time("retry_at", retryAt), slog.String("error", err.Error()))
}

// abandoned records that the caller gave up on a call first, which says
// nothing about Vault: if the call was the probe, the next one probes
// instead.
func (is *Issuer) abandoned(probe bool) {
	if probe {
		is.breaker.Abandon()
	}
}

// Answering reports whether Vault's breaker is closed: Vault answered
// lately, and a call now is expected to reach it (not refused fast, not a
// probe).
func (is *Issuer) Answering() bool {
	state, _ := is.breaker.State()
	return state == breaker.Closed
}
