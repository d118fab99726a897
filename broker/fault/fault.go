// Package fault is the broker's vocabulary of refusals: a typed error that
// says what kind of refusal it is (invalid request, not found, denied, ...),
// with a message a person can act on. Handlers return these, or the
// sentinel errors of the packages they call, as plain errors; the gRPC
// edge (package edge) turns every one of them into a status, in one place.
//
// fault imports nothing of the broker's, so every package may use it.
package fault

import (
	"errors"
	"fmt"
	"time"
)

// Kind is what sort of refusal an Error is.
type Kind uint8

// The kinds of refusal. Each becomes one gRPC code at the edge.
const (
	// Internal: the broker failed; the caller learns nothing more.
	Internal Kind = iota
	// Invalid: the request is malformed or names something impossible.
	Invalid
	// NotFound: the request names something that does not exist.
	NotFound
	// Exists: the request would create something that exists already.
	Exists
	// Denied: the caller may not do this.
	Denied
	// Unauthenticated: the caller did not prove who it is.
	Unauthenticated
	// Precondition: not now, in the current state; acting on it (a
	// promotion, an approval) may change that.
	Precondition
	// Aborted: a concurrent change won; retrying may succeed.
	Aborted
	// Exhausted: a limit was reached; Retry says when to try again.
	Exhausted
	// Unavailable: a dependency (Vault, the Workload API, the store) is
	// down; nothing happened; retry later.
	Unavailable
)

var kindNames = [...]string{"internal", "invalid", "not_found", "exists", "denied", "unauthenticated", "precondition", "aborted", "exhausted", "unavailable"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Error is a refusal of a Kind with a message for the caller.
type Error struct {
	Kind Kind
	// Msg is what the caller is told; it never holds a secret.
	Msg string
	// Limit names the limit an Exhausted error hit (e.g. rate,
	// live_per_agent), and Retry says when retrying may succeed; both
	// optional.
	Limit string
	Retry time.Duration
	// Err is the cause, for errors.Is/As and the log; not shown to the
	// caller unless Msg is empty.
	Err error
}

func (e *Error) Error() string {
	switch {
	case e.Msg != "":
		return e.Msg
	case e.Err != nil:
		return e.Err.Error()
	}
	return e.Kind.String()
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an Error of kind k with a formatted message. A %w verb makes
// the wrapped error its cause.
func New(k Kind, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &Error{Kind: k, Msg: err.Error(), Err: errors.Unwrap(err)}
}

// Wrap returns err as a refusal of kind k, its message err's own.
func Wrap(k Kind, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: k, Msg: err.Error(), Err: err}
}

// Limited is an Exhausted error for limit, retryable after retry.
func Limited(limit string, retry time.Duration, format string, args ...any) *Error {
	return &Error{Kind: Exhausted, Limit: limit, Retry: retry, Msg: fmt.Sprintf(format, args...)}
}

// KindOf is err's kind, and whether err holds an *Error at all.
func KindOf(err error) (Kind, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind, true
	}
	return Internal, false
}
