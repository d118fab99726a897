package fault_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/fault"
)

func TestKindString(t *testing.T) {
	for k, want := range map[fault.Kind]string{
		fault.Internal:        "internal",
		fault.Invalid:         "invalid",
		fault.NotFound:        "not_found",
		fault.Exists:          "exists",
		fault.Denied:          "denied",
		fault.Unauthenticated: "unauthenticated",
		fault.Precondition:    "precondition",
		fault.Aborted:         "aborted",
		fault.Exhausted:       "exhausted",
		fault.Unavailable:     "unavailable",
		fault.Unavailable + 1: "kind(10)",
		255:                   "kind(255)",
	} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", uint8(k), got, want)
		}
	}
}

func TestError(t *testing.T) {
	cause := errors.New("store: not found")
	for _, tc := range []struct {
		name string
		err  *fault.Error
		msg  string
	}{
		{"message", &fault.Error{Kind: fault.NotFound, Msg: "no agent a", Err: cause}, "no agent a"},
		{"cause only", &fault.Error{Kind: fault.NotFound, Err: cause}, "store: not found"},
		{"kind only", &fault.Error{Kind: fault.Aborted}, "aborted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.msg {
				t.Errorf("Error() = %q, want %q", got, tc.msg)
			}
			if got := tc.err.Unwrap(); got != tc.err.Err {
				t.Errorf("Unwrap() = %v, want %v", got, tc.err.Err)
			}
		})
	}
}

func TestNew(t *testing.T) {
	cause := errors.New("store: not found")
	for _, tc := range []struct {
		name  string
		err   error
		kind  fault.Kind
		msg   string
		cause error
	}{
		{"format", fault.New(fault.Invalid, "role %q is not canonical", "KV/x"), fault.Invalid, `role "KV/x" is not canonical`, nil},
		{"%w", fault.New(fault.NotFound, "agent %s: %w", "spiffe://td/a", cause), fault.NotFound, "agent spiffe://td/a: store: not found", cause},
		{"%v", fault.New(fault.NotFound, "agent: %v", cause), fault.NotFound, "agent: store: not found", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f *fault.Error
			if !errors.As(tc.err, &f) {
				t.Fatalf("New returned %T, want *fault.Error", tc.err)
			}
			if f.Kind != tc.kind || f.Msg != tc.msg || f.Error() != tc.msg || f.Err != tc.cause {
				t.Errorf("New = %+v, want kind %s, message %q, cause %v", f, tc.kind, tc.msg, tc.cause)
			}
			if tc.cause != nil && !errors.Is(tc.err, tc.cause) {
				t.Errorf("errors.Is(%v, %v) = false", tc.err, tc.cause)
			}
		})
	}
}

func TestWrap(t *testing.T) {
	if err := fault.Wrap(fault.Invalid, nil); err != nil {
		t.Errorf("Wrap(nil) = %v, want nil", err)
	}
	cause := fmt.Errorf("attest: %w", errors.New("trust domain mismatch"))
	err := fault.Wrap(fault.Invalid, cause)
	var f *fault.Error
	if !errors.As(err, &f) {
		t.Fatalf("Wrap returned %T, want *fault.Error", err)
	}
	if f.Kind != fault.Invalid || f.Msg != cause.Error() || f.Err != cause || errors.Unwrap(err) != cause {
		t.Errorf("Wrap = %+v, want kind invalid, message %q, cause %v", f, cause, cause)
	}
}

func TestLimited(t *testing.T) {
	f := fault.Limited("rate", 3*time.Second, "%d requests per minute", 60)
	want := fault.Error{Kind: fault.Exhausted, Msg: "60 requests per minute", Limit: "rate", Retry: 3 * time.Second}
	if *f != want {
		t.Errorf("Limited = %+v, want %+v", *f, want)
	}
	if f.Error() != "60 requests per minute" {
		t.Errorf("Error() = %q", f.Error())
	}
}

func TestKindOf(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		kind  fault.Kind
		fault bool
	}{
		{"fault", fault.New(fault.Denied, "no"), fault.Denied, true},
		{"wrapped fault", fmt.Errorf("op: %w", fault.New(fault.Precondition, "not yet")), fault.Precondition, true},
		{"limited", fault.Limited("rate", time.Second, "slow down"), fault.Exhausted, true},
		{"internal fault", fault.Wrap(fault.Internal, errors.New("boom")), fault.Internal, true},
		{"plain error", errors.New("boom"), fault.Internal, false},
		{"nil", nil, fault.Internal, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if kind, ok := fault.KindOf(tc.err); kind != tc.kind || ok != tc.fault {
				t.Errorf("KindOf(%v) = %s, %t, want %s, %t", tc.err, kind, ok, tc.kind, tc.fault)
			}
		})
	}
}
