// Package edge is the broker's gRPC edge: every call passes through it on
// the way in (size limits, decoding, authentication from the caller's SVID,
// the access rule of its service, request validation, a request id and a
// logger) and on the way out, where the handler's plain error becomes a
// gRPC status. That mapping (Status) is the only one in the broker.
//
// Handlers read the verified caller with Identity, the request's logger
// with Logger and its id with RequestID.
package edge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/store"
)

// Log field names used across the broker.
const (
	LogMethod     = "method"
	LogCaller     = "caller"
	LogAuthMethod = "auth_method"
	LogCode       = "code"
	LogDuration   = "duration"
	LogRequestID  = "request_id"
	// LogClientRequestID is the id the caller chose (x-request-id).
	LogClientRequestID = "client_request_id"
	LogError           = "error"
	LogSPIFFEID        = "spiffe_id"
	LogVaultAddr       = "vault_addr"
	LogAgent           = "agent"
	LogRole            = "role"
	LogLevel           = "level"
	LogDecisionID      = "decision_id"
	LogReason          = "reason"
	LogAccessor        = "accessor"
	LogLeaseID         = "lease_id"
	LogTTL             = "ttl"
	LogCount           = "count"
	LogPeer            = "peer"
)

type ctxKey int

const (
	identityKey ctxKey = iota
	loggerKey
	requestIDKey
	clientRequestIDKey
)

// Identity is the caller the edge verified (zero outside a call).
func Identity(ctx context.Context) attest.Identity {
	id, _ := ctx.Value(identityKey).(attest.Identity)
	return id
}

// Caller is the verified caller as the broker records it: a workload's
// SPIFFE ID, a person's issuer and subject (attest.Identity.Principal).
func Caller(ctx context.Context) string { return Identity(ctx).Principal() }

// Human is the person calling, nil for a workload.
func Human(ctx context.Context) *attest.Human { return Identity(ctx).Human }

// Owns says whether the caller is owner, an agent's accountable human as
// its record names them: by principal, or, for a person, by the email
// address their provider verified.
func Owns(ctx context.Context, owner string) bool {
	if owner == "" {
		return false
	}
	if owner == Caller(ctx) {
		return true
	}
	h := Human(ctx)
	return h != nil && h.Email != "" && strings.EqualFold(owner, h.Email)
}

// Logger is the request's logger, carrying its id, method and caller;
// outside a call, a logger that discards.
func Logger(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey).(*slog.Logger); ok {
		return l
	}
	return slog.New(slog.DiscardHandler)
}

// RequestID is the request's id, the broker's own ("" outside a call).
func RequestID(ctx context.Context) string {
	rid, _ := ctx.Value(requestIDKey).(string)
	return rid
}

// ClientRequestID is the id the caller chose for the request (its
// x-request-id header), "" if none: kept apart from RequestID, for the
// caller to correlate, never as the id the broker knows the request by.
func ClientRequestID(ctx context.Context) string {
	cid, _ := ctx.Value(clientRequestIDKey).(string)
	return cid
}

// RequestIDs are RequestID, ClientRequestID and a person's display name,
// as store.ForRequest takes them.
func RequestIDs(ctx context.Context) store.Request {
	r := store.Request{ID: RequestID(ctx), ClientID: ClientRequestID(ctx)}
	if h := Human(ctx); h != nil {
		r.ActorName = h.Name
	}
	return r
}

// Begin is what the edge does for a call that is not gRPC (the OAuth
// endpoints, package oauthapi), once the caller's SVID is verified: ctx
// then carries id as the caller, a new request id, and log with both.
func Begin(ctx context.Context, log *slog.Logger, id attest.Identity, method string) context.Context {
	rid := NewID()
	log = log.With(slog.String(LogRequestID, rid), slog.String(LogMethod, method), slog.String(LogCaller, id.Principal()),
		slog.String(LogAuthMethod, id.Method.String()))
	ctx = context.WithValue(context.WithValue(ctx, loggerKey, log), requestIDKey, rid)
	return context.WithValue(ctx, identityKey, id)
}

// withLogger returns ctx carrying log as its request logger.
func withLogger(ctx context.Context, log *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey, log)
}

// NewID returns a random 128-bit identifier, hex encoded.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// ErrShuttingDown ends streams when atfd stops, telling clients to
// reconnect (to this atfd once it is back, or another).
var ErrShuttingDown = fault.New(fault.Unavailable, "atfd is shutting down; reconnect")

// TrustChecker says whether an ID's trust domain may call the broker;
// *attest.Verifier is one.
type TrustChecker interface {
	CheckID(id spiffeid.ID) error
}

// SubjectID checks a SPIFFE ID the caller names as the subject of an act
// (register, change, stop an agent): strictly parsed, of a trusted trust
// domain, and not the caller's own (nobody grants or judges themselves).
func SubjectID(ctx context.Context, raw string, trust TrustChecker) (string, error) {
	id, err := attest.ParseID(raw)
	if err != nil {
		return "", fault.Wrap(fault.Invalid, err)
	}
	if err := trust.CheckID(id); err != nil {
		return "", fault.New(fault.Invalid, "%s can never authenticate here: its trust domain is not in trust_domains", id)
	}
	if id == Identity(ctx).ID {
		return "", fault.New(fault.Denied, "%s may not register or change its own agent record", id)
	}
	return id.String(), nil
}
