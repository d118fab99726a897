package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/vault"
	"github.com/agentictrust/atf/delegation"
)

// kindCodes is the code of each fault kind.
var kindCodes = map[fault.Kind]codes.Code{
	fault.Internal:        codes.Internal,
	fault.Invalid:         codes.InvalidArgument,
	fault.NotFound:        codes.NotFound,
	fault.Exists:          codes.AlreadyExists,
	fault.Denied:          codes.PermissionDenied,
	fault.Unauthenticated: codes.Unauthenticated,
	fault.Precondition:    codes.FailedPrecondition,
	fault.Aborted:         codes.Aborted,
	fault.Exhausted:       codes.ResourceExhausted,
	fault.Unavailable:     codes.Unavailable,
}

// sentinelCodes is the code of each sentinel error of the packages the
// broker calls, first match wins. A caller can act on each, so its text
// is the status message.
var sentinelCodes = []struct {
	err  error
	code codes.Code
}{
	{attest.ErrUnauthenticated, codes.Unauthenticated},

	{store.ErrNotFound, codes.NotFound},
	{store.ErrExists, codes.AlreadyExists},
	{store.ErrConflict, codes.FailedPrecondition},
	{store.ErrDeregistered, codes.FailedPrecondition},
	{store.ErrInvalid, codes.InvalidArgument},
	{store.ErrRevoked, codes.PermissionDenied},
	{store.ErrKilled, codes.PermissionDenied},
	{store.ErrLimit, codes.ResourceExhausted},
	{store.ErrNotBolt, codes.FailedPrecondition},

	{delegation.ErrUnknownDelegatee, codes.NotFound},
	{delegation.ErrFanOut, codes.ResourceExhausted},
	{delegation.ErrNoRoles, codes.InvalidArgument},
	{delegation.ErrInvalidTTL, codes.InvalidArgument},
	{delegation.ErrTTLAboveMax, codes.InvalidArgument},
	{delegation.ErrOutlivesChain, codes.InvalidArgument},
	{delegation.ErrMaxDepth, codes.InvalidArgument},
	{delegation.ErrDelegateeInactive, codes.PermissionDenied},
	{delegation.ErrSelfDelegation, codes.PermissionDenied},
	{delegation.ErrCycle, codes.PermissionDenied},
	{delegation.ErrAgentInactive, codes.PermissionDenied},
	{delegation.ErrAncestorInactive, codes.PermissionDenied},
	{delegation.ErrAncestorLevel, codes.PermissionDenied},
	{delegation.ErrGrantRevoked, codes.PermissionDenied},
	{delegation.ErrGrantExpired, codes.PermissionDenied},
	{delegation.ErrLevelMayNotDelegate, codes.PermissionDenied},
	{delegation.ErrScope, codes.PermissionDenied},
	{delegation.ErrDepthExhausted, codes.PermissionDenied},
}

// Fixed messages for faults whose detail is for the log only.
const (
	msgInternal         = "internal error (see atfd's log)"
	msgFull             = "the broker's store is full: nothing new is issued until space is made (store_max_size, or the disk); revocations still work"
	msgVaultUnavailable = "Vault is unavailable; nothing was issued; retry later"
	msgVaultRejected    = "Vault refused the request; the broker's Vault setup needs attention (see atfd's log)"
	msgClosing          = "atfd is shutting down; reconnect"
	msgStoreUnavailable = "this replica cannot reach its store (etcd) in time; nothing was done; retry, or use another replica"
	msgStoreBusy        = "the store (etcd) stayed busy with other replicas' concurrent writes until the store's timeout; nothing was done; retry"
	msgCanceled         = "the request was cancelled"
	msgDeadline         = "the request's deadline passed before the broker answered"
)

// Status turns a handler's error into the gRPC status the caller gets. It
// is the broker's only mapping from errors to codes: a status passes
// through, a fault.Error gets its kind's code, a sentinel error of attest,
// store, delegation or vault the code of the table above, and anything
// else is Internal, its detail logged and not returned. Refusals the
// caller can act on are logged at info, faults of the broker or Vault at
// error.
func (e *Edge) Status(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	// A status (a stream's send error, say) is already an answer: the
	// innermost one passes, without the text wrapped around it.
	var gs interface{ GRPCStatus() *status.Status }
	if errors.As(err, &gs) {
		if e, ok := gs.(error); ok && e == err {
			return err
		}
	}
	return Answer(ctx, err, e.cfg.Now()).Err()
}

// Answer is the status Status answers err with at now, logged, for the
// gRPC edge and those that are not gRPC's (the console's pages, package
// console): a status passes as it is.
func Answer(ctx context.Context, err error, now time.Time) *status.Status {
	var gs interface{ GRPCStatus() *status.Status }
	if errors.As(err, &gs) {
		return gs.GRPCStatus()
	}
	st, level := statusOf(err, now)
	Logger(ctx).Log(ctx, level, "refused", slog.String(LogError, err.Error()), slog.String(LogCode, st.Code().String()))
	return st
}

// Code is the gRPC code Status answers err with (OK for nil), for what
// records an outcome before the edge answers: a trace span, say.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var gs interface{ GRPCStatus() *status.Status }
	if errors.As(err, &gs) {
		return gs.GRPCStatus().Code()
	}
	st, _ := statusOf(err, time.Now())
	return st.Code()
}

// statusOf is err's status at now and the level its refusal is logged at.
func statusOf(err error, now time.Time) (*status.Status, slog.Level) {
	var (
		f    *fault.Error
		open *vault.BreakerOpenError
	)
	switch {
	case errors.As(err, &open):
		retry := max(open.RetryAt.Sub(now), 0)
		st := status.New(codes.Unavailable, fmt.Sprintf("Vault circuit breaker open; retrying at %s (in %s); nothing was issued",
			open.RetryAt.UTC().Format(time.RFC3339), retry.Round(time.Millisecond)))
		return withDetails(st, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry)}), slog.LevelWarn
	case errors.Is(err, store.ErrFull), errors.Is(err, syscall.ENOSPC):
		return status.New(codes.ResourceExhausted, msgFull), slog.LevelError
	case errors.As(err, &f):
		return faultStatus(f)
	case errors.Is(err, vault.ErrUnavailable):
		return status.New(codes.Unavailable, msgVaultUnavailable), slog.LevelError
	case errors.Is(err, vault.ErrRejected):
		return status.New(codes.FailedPrecondition, msgVaultRejected), slog.LevelError
	case errors.Is(err, store.ErrClosed):
		return status.New(codes.Unavailable, msgClosing), slog.LevelInfo
	case errors.Is(err, store.ErrUnavailable):
		return status.New(codes.Unavailable, msgStoreUnavailable), slog.LevelError
	case errors.Is(err, store.ErrBusy):
		return status.New(codes.Unavailable, msgStoreBusy), slog.LevelWarn
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, msgCanceled), slog.LevelInfo
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, msgDeadline), slog.LevelInfo
	}
	for _, s := range sentinelCodes {
		if errors.Is(err, s.err) {
			msg := err.Error()
			// The store says what is wrong in words of its own, without the
			// operations it passed through.
			if r := (*store.Refusal)(nil); errors.As(err, &r) {
				msg = r.Msg
			}
			return status.New(s.code, msg), slog.LevelInfo
		}
	}
	return status.New(codes.Internal, msgInternal), slog.LevelError
}

// faultStatus is a fault's status: an Exhausted one says which limit and
// when to retry, as QuotaFailure and RetryInfo, so clients can back off
// exactly.
func faultStatus(f *fault.Error) (*status.Status, slog.Level) {
	code, known := kindCodes[f.Kind]
	if !known || f.Kind == fault.Internal {
		return status.New(codes.Internal, msgInternal), slog.LevelError
	}
	msg := f.Error()
	if f.Retry > 0 && f.Limit != "" {
		msg = fmt.Sprintf("%s; retry in %s", msg, f.Retry.Round(time.Millisecond))
	}
	st := status.New(code, msg)
	var details []protoMessage
	if f.Limit != "" {
		details = append(details, &errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: f.Limit, Description: f.Msg}}})
	}
	if f.Retry > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(f.Retry)})
	}
	level := slog.LevelInfo
	if f.Kind == fault.Unavailable {
		level = slog.LevelError
	}
	return withDetails(st, details...), level
}

type protoMessage = protoadapt.MessageV1

// withDetails is st with details attached, or st if they do not encode.
func withDetails(st *status.Status, details ...protoMessage) *status.Status {
	if len(details) == 0 {
		return st
	}
	if d, err := st.WithDetails(details...); err == nil {
		return d
	}
	return st
}
