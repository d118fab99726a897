package edge

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/vault"
	"github.com/agentictrust/atf/delegation"
)

// statusNow is the edge's clock in these tests.
var statusNow = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

// noVerifier satisfies Config; Status verifies nothing.
type noVerifier struct{}

func (noVerifier) VerifyX509([]*x509.Certificate) (attest.Identity, error) {
	return attest.Identity{}, attest.ErrUnauthenticated
}

func (noVerifier) VerifyJWT(string) (attest.Identity, error) {
	return attest.Identity{}, attest.ErrUnauthenticated
}

func newStatusEdge(t *testing.T) *Edge {
	t.Helper()
	e, err := New(Config{Verifier: noVerifier{}, Now: func() time.Time { return statusNow }})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// statusCase is one domain error and the status its caller gets.
type statusCase struct {
	name    string // a bare sentinel's row is named for it: "store.ErrNotFound"
	err     error
	code    codes.Code
	msg     string
	details []proto.Message
	level   slog.Level // of the "refused" log line
}

// kindCases is the code and log level of every fault kind.
var kindCases = []struct {
	kind  fault.Kind
	code  codes.Code
	level slog.Level
}{
	{fault.Internal, codes.Internal, slog.LevelError},
	{fault.Invalid, codes.InvalidArgument, slog.LevelInfo},
	{fault.NotFound, codes.NotFound, slog.LevelInfo},
	{fault.Exists, codes.AlreadyExists, slog.LevelInfo},
	{fault.Denied, codes.PermissionDenied, slog.LevelInfo},
	{fault.Unauthenticated, codes.Unauthenticated, slog.LevelInfo},
	{fault.Precondition, codes.FailedPrecondition, slog.LevelInfo},
	{fault.Aborted, codes.Aborted, slog.LevelInfo},
	{fault.Exhausted, codes.ResourceExhausted, slog.LevelInfo},
	{fault.Unavailable, codes.Unavailable, slog.LevelError},
}

// statusCases is every domain error a handler may return, and what Status
// makes of it.
func statusCases() []statusCase {
	var cases []statusCase
	for _, k := range kindCases {
		msg := func(m string) string {
			if k.kind == fault.Internal {
				return msgInternal
			}
			return m
		}
		cases = append(cases,
			statusCase{"fault.New(" + k.kind.String() + ")", fault.New(k.kind, "%s: %w", k.kind, errors.New("cause")),
				k.code, msg(k.kind.String() + ": cause"), nil, k.level},
			statusCase{"fault.Wrap(" + k.kind.String() + ")", fault.Wrap(k.kind, errors.New("the cause says what to do")),
				k.code, msg("the cause says what to do"), nil, k.level},
			// The wrapping text is for the log; the caller gets the fault's.
			statusCase{"wrapped fault.New(" + k.kind.String() + ")", fmt.Errorf("op: %w", fault.New(k.kind, "refused")),
				k.code, msg("refused"), nil, k.level},
		)
	}

	sentinel := func(err error, code codes.Code) statusCase {
		return statusCase{"", err, code, err.Error(), nil, slog.LevelInfo}
	}
	named := func(name string, c statusCase) statusCase { c.name = name; return c }
	limitMsg := "rate limit of 60 per minute reached"
	quota := func(limit, msg string) *errdetails.QuotaFailure {
		return &errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: limit, Description: msg}}}
	}
	retry := func(d time.Duration) *errdetails.RetryInfo {
		return &errdetails.RetryInfo{RetryDelay: durationpb.New(d)}
	}

	return append(cases, []statusCase{
		{"fault with no message", &fault.Error{Kind: fault.NotFound, Err: store.ErrNotFound},
			codes.NotFound, "store: not found", nil, slog.LevelInfo},
		{"fault with neither message nor cause", &fault.Error{Kind: fault.Aborted},
			codes.Aborted, "aborted", nil, slog.LevelInfo},
		{"fault wrapping a sentinel", fault.New(fault.Denied, "agent a may not: %w", store.ErrNotFound),
			codes.PermissionDenied, "agent a may not: store: not found", nil, slog.LevelInfo},
		{"ErrShuttingDown", ErrShuttingDown,
			codes.Unavailable, "atfd is shutting down; reconnect", nil, slog.LevelError},

		{"fault.Limited", fault.Limited("rate", 1500*time.Millisecond, "rate limit of %d per minute reached", 60),
			codes.ResourceExhausted, limitMsg + "; retry in 1.5s", []proto.Message{quota("rate", limitMsg), retry(1500 * time.Millisecond)}, slog.LevelInfo},
		{"wrapped fault.Limited", fmt.Errorf("fetch: %w", fault.Limited("live_per_agent", 1234567890, "%d live credentials", 5)),
			codes.ResourceExhausted, "5 live credentials; retry in 1.235s", []proto.Message{quota("live_per_agent", "5 live credentials"), retry(1234567890)}, slog.LevelInfo},
		{"fault.Limited without retry", fault.Limited("fan_out", 0, "too many grants"),
			codes.ResourceExhausted, "too many grants", []proto.Message{quota("fan_out", "too many grants")}, slog.LevelInfo},
		{"Exhausted with retry and no limit", &fault.Error{Kind: fault.Exhausted, Msg: "busy", Retry: time.Second},
			codes.ResourceExhausted, "busy", []proto.Message{retry(time.Second)}, slog.LevelInfo},

		named("attest.ErrUnauthenticated", sentinel(attest.ErrUnauthenticated, codes.Unauthenticated)),
		named("wrapped attest.ErrUnauthenticated", sentinel(fmt.Errorf("%w: no SVID presented", attest.ErrUnauthenticated), codes.Unauthenticated)),

		named("store.ErrNotFound", sentinel(store.ErrNotFound, codes.NotFound)),
		// A store refusal's own words, without the operations it passed.
		{"wrapped store.Refusal", fmt.Errorf("decide approval: %w", fmt.Errorf("store: decide approval: %w",
			&store.Refusal{Kind: store.ErrConflict, Msg: "approval a1 is denied, not pending"})),
			codes.FailedPrecondition, "approval a1 is denied, not pending", nil, slog.LevelInfo},
		named("store.ErrExists", sentinel(store.ErrExists, codes.AlreadyExists)),
		named("store.ErrConflict", sentinel(store.ErrConflict, codes.FailedPrecondition)),
		named("store.ErrDeregistered", sentinel(store.ErrDeregistered, codes.FailedPrecondition)),
		named("store.ErrInvalid", sentinel(store.ErrInvalid, codes.InvalidArgument)),
		named("store.ErrNotBolt", sentinel(store.ErrNotBolt, codes.FailedPrecondition)),
		named("store.ErrRevoked", sentinel(store.ErrRevoked, codes.PermissionDenied)),
		named("store.ErrKilled", sentinel(store.ErrKilled, codes.PermissionDenied)),
		named("store.ErrLimit", sentinel(store.ErrLimit, codes.ResourceExhausted)),
		named("wrapped store.ErrNotFound", sentinel(fmt.Errorf("agent spiffe://td/a: %w", store.ErrNotFound), codes.NotFound)),

		{"store.ErrFull", store.ErrFull, codes.ResourceExhausted, msgFull, nil, slog.LevelError},
		{"wrapped store.ErrFull", fmt.Errorf("record credential: %w", store.ErrFull), codes.ResourceExhausted, msgFull, nil, slog.LevelError},
		{"fault wrapping store.ErrFull", fault.Wrap(fault.Invalid, store.ErrFull), codes.ResourceExhausted, msgFull, nil, slog.LevelError},
		{"syscall.ENOSPC", syscall.ENOSPC, codes.ResourceExhausted, msgFull, nil, slog.LevelError},
		{"ENOSPC from a write", &os.PathError{Op: "write", Path: "/var/lib/atf/atf.db", Err: syscall.ENOSPC},
			codes.ResourceExhausted, msgFull, nil, slog.LevelError},
		// Not in sentinelCodes (see TestSentinelCodesComplete).
		{"store.ErrClosed", store.ErrClosed, codes.Unavailable, msgClosing, nil, slog.LevelInfo},
		{"store.ErrUnavailable", store.ErrUnavailable, codes.Unavailable, msgStoreUnavailable, nil, slog.LevelError},
		{"store.ErrBusy", fmt.Errorf("record: %w", fmt.Errorf("%w: %w", store.ErrBusy, context.DeadlineExceeded)), codes.Unavailable, msgStoreBusy, nil, slog.LevelWarn},
		{"store.ErrUnavailable wrapping a deadline", fmt.Errorf("look up caller: %w", fmt.Errorf("%w: %w", store.ErrUnavailable, context.DeadlineExceeded)),
			codes.Unavailable, msgStoreUnavailable, nil, slog.LevelError},
		{"store.ErrLocked", store.ErrLocked, codes.Internal, msgInternal, nil, slog.LevelError},

		named("delegation.ErrUnknownDelegatee", sentinel(delegation.ErrUnknownDelegatee, codes.NotFound)),
		named("delegation.ErrFanOut", sentinel(delegation.ErrFanOut, codes.ResourceExhausted)),
		named("delegation.ErrNoRoles", sentinel(delegation.ErrNoRoles, codes.InvalidArgument)),
		named("delegation.ErrInvalidTTL", sentinel(delegation.ErrInvalidTTL, codes.InvalidArgument)),
		named("delegation.ErrTTLAboveMax", sentinel(delegation.ErrTTLAboveMax, codes.InvalidArgument)),
		named("delegation.ErrOutlivesChain", sentinel(delegation.ErrOutlivesChain, codes.InvalidArgument)),
		named("delegation.ErrMaxDepth", sentinel(delegation.ErrMaxDepth, codes.InvalidArgument)),
		named("delegation.ErrDelegateeInactive", sentinel(delegation.ErrDelegateeInactive, codes.PermissionDenied)),
		named("delegation.ErrSelfDelegation", sentinel(delegation.ErrSelfDelegation, codes.PermissionDenied)),
		named("delegation.ErrCycle", sentinel(delegation.ErrCycle, codes.PermissionDenied)),
		named("delegation.ErrAgentInactive", sentinel(delegation.ErrAgentInactive, codes.PermissionDenied)),
		named("delegation.ErrAncestorInactive", sentinel(delegation.ErrAncestorInactive, codes.PermissionDenied)),
		named("delegation.ErrAncestorLevel", sentinel(delegation.ErrAncestorLevel, codes.PermissionDenied)),
		named("delegation.ErrGrantRevoked", sentinel(delegation.ErrGrantRevoked, codes.PermissionDenied)),
		named("delegation.ErrGrantExpired", sentinel(delegation.ErrGrantExpired, codes.PermissionDenied)),
		named("delegation.ErrLevelMayNotDelegate", sentinel(delegation.ErrLevelMayNotDelegate, codes.PermissionDenied)),
		named("delegation.ErrScope", sentinel(delegation.ErrScope, codes.PermissionDenied)),
		named("delegation.ErrDepthExhausted", sentinel(delegation.ErrDepthExhausted, codes.PermissionDenied)),
		named("wrapped delegation.ErrGrantExpired", sentinel(fmt.Errorf("%w: grant g1 expired at 2026-12-07T11:00:00Z; ask for a new one", delegation.ErrGrantExpired), codes.PermissionDenied)),
		{"delegation.ErrMalformedChain", delegation.ErrMalformedChain, codes.Internal, msgInternal, nil, slog.LevelError},

		{"vault.ErrUnavailable", vault.ErrUnavailable, codes.Unavailable, msgVaultUnavailable, nil, slog.LevelError},
		{"wrapped vault.ErrUnavailable", fmt.Errorf("%w: create token: 503 from https://vault:8200", vault.ErrUnavailable),
			codes.Unavailable, msgVaultUnavailable, nil, slog.LevelError},
		{"vault.ErrRejected", vault.ErrRejected, codes.FailedPrecondition, msgVaultRejected, nil, slog.LevelError},
		{"wrapped vault.ErrRejected", fmt.Errorf("%w: create token: 403 permission denied", vault.ErrRejected),
			codes.FailedPrecondition, msgVaultRejected, nil, slog.LevelError},
		{"vault.BreakerOpenError", &vault.BreakerOpenError{RetryAt: statusNow.Add(7500 * time.Millisecond)},
			codes.Unavailable, "Vault circuit breaker open; retrying at 2026-12-07T12:00:07Z (in 7.5s); nothing was issued",
			[]proto.Message{retry(7500 * time.Millisecond)}, slog.LevelWarn},
		{"wrapped vault.BreakerOpenError", fault.Wrap(fault.Denied, fmt.Errorf("issue: %w", &vault.BreakerOpenError{RetryAt: statusNow.Add(time.Minute)})),
			codes.Unavailable, "Vault circuit breaker open; retrying at 2026-12-07T12:01:00Z (in 1m0s); nothing was issued",
			[]proto.Message{retry(time.Minute)}, slog.LevelWarn},
		{"vault.BreakerOpenError past its time", &vault.BreakerOpenError{RetryAt: statusNow.Add(-time.Second)},
			codes.Unavailable, "Vault circuit breaker open; retrying at 2026-12-07T11:59:59Z (in 0s); nothing was issued",
			[]proto.Message{retry(0)}, slog.LevelWarn},

		{"context.Canceled", context.Canceled, codes.Canceled, msgCanceled, nil, slog.LevelInfo},
		{"context.DeadlineExceeded", context.DeadlineExceeded, codes.DeadlineExceeded, msgDeadline, nil, slog.LevelInfo},
		// Vault's unavailability wins over the deadline it wraps.
		{"vault.ErrUnavailable wrapping the deadline", fmt.Errorf("%w: create token: %w", vault.ErrUnavailable, context.DeadlineExceeded),
			codes.Unavailable, msgVaultUnavailable, nil, slog.LevelError},

		// A status passes through unchanged, unlogged (level unused).
		{"status", status.Error(codes.NotFound, "no such approval"), codes.NotFound, "no such approval", nil, 0},
		{"wrapped status", fmt.Errorf("op: %w", status.Error(codes.Aborted, "try again")),
			codes.Aborted, "try again", nil, 0},

		{"plain error", errors.New("bolt: page 7 already freed"), codes.Internal, msgInternal, nil, slog.LevelError},
		{"nil", nil, codes.OK, "", nil, 0},
	}...)
}

func TestStatus(t *testing.T) {
	e := newStatusEdge(t)
	for _, tc := range statusCases() {
		t.Run(tc.name, func(t *testing.T) {
			log := &logRecorder{}
			got := e.Status(withLogger(t.Context(), slog.New(log)), tc.err)

			st := status.Convert(got)
			if st.Code() != tc.code || st.Message() != tc.msg {
				t.Errorf("Status(%q) = %s %q, want %s %q", tc.err, st.Code(), st.Message(), tc.code, tc.msg)
			}
			details := st.Details()
			if len(details) != len(tc.details) {
				t.Fatalf("details = %v, want %v", details, tc.details)
			}
			for i, d := range details {
				if m, ok := d.(proto.Message); !ok || !proto.Equal(m, tc.details[i]) {
					t.Errorf("detail %d = %v, want %v", i, d, tc.details[i])
				}
			}

			if _, ok := status.FromError(tc.err); ok {
				if _, wrapped := tc.err.(interface{ Unwrap() error }); (!wrapped && got != tc.err) || len(log.records) != 0 {
					t.Errorf("a status (or nil) must pass through unchanged and unlogged: got %v, %d log records", got, len(log.records))
				}
				return
			}
			if len(log.records) != 1 {
				t.Fatalf("%d log records, want 1", len(log.records))
			}
			r := log.records[0]
			attrs := map[string]string{}
			r.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
			if r.Level != tc.level || attrs[LogError] != tc.err.Error() || attrs[LogCode] != tc.code.String() {
				t.Errorf("logged %s %v, want %s with %s=%q %s=%s", r.Level, attrs, tc.level, LogError, tc.err, LogCode, tc.code)
			}
		})
	}
}

// TestKindCodesComplete checks that every fault.Kind declared in
// broker/fault has a code, and a row in statusCases.
func TestKindCodesComplete(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join("..", "fault", "fault.go"), nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	var kinds int
	for _, d := range f.Decls {
		if gd, ok := d.(*ast.GenDecl); ok && gd.Tok == token.CONST {
			if typ, ok := gd.Specs[0].(*ast.ValueSpec).Type.(*ast.Ident); ok && typ.Name == "Kind" {
				kinds = len(gd.Specs) // one iota block, from 0
			}
		}
	}
	if kinds == 0 {
		t.Fatal("found no Kind constants in fault.go")
	}
	if len(kindCodes) != kinds {
		t.Errorf("kindCodes has %d entries; fault declares %d kinds", len(kindCodes), kinds)
	}
	rows := map[string]bool{}
	for _, c := range statusCases() {
		rows[c.name] = true
	}
	for k := range fault.Kind(kinds) {
		// A missing entry would be codes.OK, and Status would return nil.
		if code, ok := kindCodes[k]; !ok || code == codes.OK {
			t.Errorf("kindCodes[%s] = %s, %t; every kind needs a code other than OK", k, code, ok)
		}
		if !rows["fault.New("+k.String()+")"] {
			t.Errorf("no row for fault kind %s in statusCases (kindCases)", k)
		}
	}
}

// statusExceptions are the sentinels of attest, store, delegation and vault
// that are not in sentinelCodes, and why.
var statusExceptions = map[string]string{
	"store.ErrFull":                "a case of its own: ResourceExhausted with a fixed message",
	"vault.ErrUnavailable":         "a case of its own: Unavailable with a fixed message",
	"vault.ErrRejected":            "a case of its own: FailedPrecondition with a fixed message",
	"store.ErrLocked":              "returned only by Open, before atfd serves: Internal",
	"store.ErrClosed":              "a case of its own: Unavailable, atfd is stopping",
	"store.ErrUnavailable":         "a case of its own: Unavailable, the store in etcd did not answer (before DeadlineExceeded, which it wraps)",
	"store.ErrBusy":                "a case of its own: Unavailable, a transaction in etcd kept conflicting (before DeadlineExceeded, which it wraps)",
	"delegation.ErrMalformedChain": "the stored chain does not link up, the broker's fault: Internal",
}

// TestSentinelCodesComplete checks, from the sources, that every exported
// Err variable of the packages Status knows has a row in statusCases and
// is in sentinelCodes unless statusExceptions says why not; a new
// sentinel fails it until it is mapped.
func TestSentinelCodesComplete(t *testing.T) {
	rows := map[string]error{}
	for _, c := range statusCases() {
		rows[c.name] = c.err
	}
	mapped := map[error]bool{}
	for _, s := range sentinelCodes {
		mapped[s.err] = true
	}
	found := 0
	for pkg, dir := range map[string]string{
		"attest":     filepath.Join("..", "..", "attest"),
		"delegation": filepath.Join("..", "..", "delegation"),
		"store":      filepath.Join("..", "store"),
		"vault":      filepath.Join("..", "vault"),
	} {
		for _, name := range sentinelNames(t, pkg, dir) {
			err, ok := rows[name]
			if !ok {
				t.Errorf("%s has no row in statusCases", name)
				continue
			}
			_, exception := statusExceptions[name]
			switch {
			case exception && mapped[err]:
				t.Errorf("%s is in sentinelCodes; remove it from statusExceptions", name)
			case !exception && !mapped[err]:
				t.Errorf("%s is not in sentinelCodes", name)
			case mapped[err]:
				found++
			}
		}
	}
	if found != len(sentinelCodes) {
		t.Errorf("%d of sentinelCodes' %d entries are Err variables of attest, delegation, store or vault", found, len(sentinelCodes))
	}
}

// sentinelNames returns the exported Err variables declared in the Go
// files of dir, as pkg.ErrName.
func sentinelNames(t *testing.T, pkg, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files in %s: %v", dir, err)
	}
	var names []string
	fset := token.NewFileSet()
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.VAR {
				continue
			}
			for _, s := range gd.Specs {
				for _, n := range s.(*ast.ValueSpec).Names {
					if n.IsExported() && strings.HasPrefix(n.Name, "Err") {
						names = append(names, pkg+"."+n.Name)
					}
				}
			}
		}
	}
	return names
}

// TestStatusKeepsDetailInLog checks that what a plain error, an Internal
// fault or a fixed-message fault carries (here a Vault token) reaches
// neither the status message nor its details.
func TestStatusKeepsDetailInLog(t *testing.T) {
	const secret = "hvs.CAESIJx0Zk3nM2Vy5ZtX8pQ"
	e := newStatusEdge(t)
	for _, err := range []error{
		errors.New("vault login with " + secret + " failed"),
		fmt.Errorf("issue: %w", errors.New("token "+secret)),
		fault.New(fault.Internal, "renew %s: lease gone", secret),
		fault.Wrap(fault.Internal, errors.New("token "+secret)),
		fmt.Errorf("%w: revoke %s: 503", vault.ErrUnavailable, secret),
		fmt.Errorf("%w: lookup %s: 403", vault.ErrRejected, secret),
		fmt.Errorf("record %s: %w", secret, store.ErrFull),
		fmt.Errorf("%w: grant %s", delegation.ErrMalformedChain, secret),
	} {
		got := e.Status(t.Context(), err)
		b, merr := proto.Marshal(status.Convert(got).Proto())
		if merr != nil {
			t.Fatal(merr)
		}
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("Status(%q) = %v: the secret reached the caller", err, got)
		}
	}
}

// logRecorder is a slog.Handler that keeps what is logged.
type logRecorder struct{ records []slog.Record }

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.records = append(l.records, r.Clone())
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }
