package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"buf.build/go/protovalidate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/vault"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// Log field names.
const (
	logMethod     = "method"
	logCaller     = "caller"
	logAuthMethod = "auth_method"
	logCode       = "code"
	logDuration   = "duration"
	logRequestID  = "request_id"
	logError      = "error"
	logSPIFFEID   = "spiffe_id"
	logVaultAddr  = "vault_addr"
	logAgent      = "agent"
	logRole       = "role"
	logLevel      = "level"
	logDecisionID = "decision_id"
	logReason     = "reason"
	logAccessor   = "accessor"
	logTTL        = "ttl"
	logCount      = "count"
)

// requestIDHeader lets a caller correlate its request with the broker's
// logs; the broker makes one up when it is absent.
const requestIDHeader = "x-request-id"

type ctxKey int

const (
	identityKey ctxKey = iota
	loggerKey
	requestIDKey
)

// identity returns the caller verified by the interceptor.
func identity(ctx context.Context) attest.Identity {
	id, _ := ctx.Value(identityKey).(attest.Identity)
	return id
}

// logger returns the request-scoped logger.
func (s *Server) logger(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey).(*slog.Logger); ok {
		return l
	}
	return s.log
}

// unauthenticated methods: health probes and reflection reveal nothing an
// agent could use.
func public(method string) bool {
	return strings.HasPrefix(method, "/grpc.health.v1.Health/") || strings.HasPrefix(method, "/grpc.reflection.")
}

var (
	adminPrefix    = "/" + adminv1.AdminService_ServiceDesc.ServiceName + "/"
	approverPrefix = "/" + adminv1.ApprovalService_ServiceDesc.ServiceName + "/"
	responsePrefix = "/" + adminv1.ResponseService_ServiceDesc.ServiceName + "/"
	maturityPrefix = "/" + adminv1.MaturityService_ServiceDesc.ServiceName + "/"
)

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	if public(info.FullMethod) {
		return handler(ctx, req)
	}
	start := time.Now()
	ctx, log := s.begin(ctx, info.FullMethod)
	defer func() {
		log.Info("request", slog.String(logCode, status.Code(err).String()), slog.Duration(logDuration, time.Since(start)))
	}()
	if ctx, err = s.authorize(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	if err := s.validate(req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if public(info.FullMethod) {
		return handler(srv, ss)
	}
	ctx, _ := s.begin(ss.Context(), info.FullMethod)
	ctx, err := s.authorize(ctx, info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx, validate: s.validate})
}

type wrappedStream struct {
	grpc.ServerStream
	ctx      context.Context
	validate func(any) error
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

// RecvMsg validates a stream's request as the unary interceptor does. It
// receives the request through decodeRequest: one that did not unmarshal
// is left for decodeRequest to refuse.
func (w *wrappedStream) RecvMsg(m any) error {
	if err := w.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if u, ok := m.(*undecoded); ok {
		if u.err != nil {
			return nil
		}
		m = u.msg
	}
	return w.validate(m)
}

// validate refuses a request that breaks its message's protovalidate
// rules, with InvalidArgument.
func (s *Server) validate(req any) error {
	if m, ok := req.(proto.Message); ok {
		if err := s.validator.Validate(m); err != nil {
			return invalidRequest(err)
		}
	}
	return nil
}

// begin attaches a request id and a logger carrying it to ctx.
func (s *Server) begin(ctx context.Context, method string) (context.Context, *slog.Logger) {
	rid := ""
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(requestIDHeader); len(v) == 1 && requestIDPattern.MatchString(v[0]) {
			rid = v[0]
		}
	}
	if rid == "" {
		rid = newID()
	}
	log := s.log.With(slog.String(logRequestID, rid), slog.String(logMethod, method))
	return context.WithValue(context.WithValue(ctx, loggerKey, log), requestIDKey, rid), log
}

// requestIDPattern keeps caller-chosen request ids to plain tokens, since
// they reach logs and the audit trail.
var requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// requestID is the request's id ("" outside a call).
func requestID(ctx context.Context) string {
	rid, _ := ctx.Value(requestIDKey).(string)
	return rid
}

// authorize authenticates the caller from its SVID and, for AdminService,
// checks that it is an admin. It returns ctx carrying the identity and a
// logger naming the caller.
func (s *Server) authorize(ctx context.Context, method string) (context.Context, error) {
	log := s.logger(ctx)
	id, err := s.authenticate(ctx)
	if err != nil {
		log.Warn("unauthenticated call", slog.String(logError, err.Error()))
		return ctx, status.Error(codes.Unauthenticated, strings.TrimPrefix(err.Error(), "attest: "))
	}
	log = log.With(slog.String(logCaller, id.ID.String()), slog.String(logAuthMethod, id.Method.String()))
	ctx = context.WithValue(context.WithValue(ctx, identityKey, id), loggerKey, log)
	if (strings.HasPrefix(method, adminPrefix) || strings.HasPrefix(method, maturityPrefix)) && !s.admins[id.ID] {
		log.Warn("admin call refused: caller is not an admin")
		return ctx, status.Errorf(codes.PermissionDenied, "%s is not a broker admin; admins are listed in atfd's configuration (admins)", id.ID)
	}
	if strings.HasPrefix(method, responsePrefix) && !s.admins[id.ID] && !s.operators[id.ID] {
		log.Warn("incident response call refused: caller is neither an admin nor a security operator")
		return ctx, status.Errorf(codes.PermissionDenied, "%s is neither a broker admin nor a security operator (atfd's configuration: admins, security_operators)", id.ID)
	}
	if strings.HasPrefix(method, approverPrefix) && !s.approvers[id.ID] {
		log.Warn("approval call refused: caller is not an approver")
		return ctx, status.Errorf(codes.PermissionDenied, "%s is not an approver; approvers are listed in atfd's configuration (approvals.approvers)", id.ID)
	}
	return ctx, nil
}

// authenticate verifies the caller's X.509-SVID (from mutual TLS) or
// JWT-SVID (from the authorization header). If both are presented they must
// name the same workload.
func (s *Server) authenticate(ctx context.Context) (attest.Identity, error) {
	var x509ID *attest.Identity
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			id, err := s.verifier.VerifyX509(ti.State.PeerCertificates)
			if err != nil {
				return attest.Identity{}, err
			}
			x509ID = &id
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	switch {
	case len(auth) > 1:
		return attest.Identity{}, fmt.Errorf("%w: more than one authorization header", attest.ErrUnauthenticated)
	case len(auth) == 0 && x509ID != nil:
		return *x509ID, nil
	case len(auth) == 0:
		return attest.Identity{}, fmt.Errorf("%w: no SVID presented: connect with an X.509-SVID (mutual TLS) or send a JWT-SVID as \"authorization: Bearer <token>\"", attest.ErrUnauthenticated)
	}
	token, ok := strings.CutPrefix(auth[0], "Bearer ")
	if !ok {
		return attest.Identity{}, fmt.Errorf("%w: authorization header must be \"Bearer <JWT-SVID>\"", attest.ErrUnauthenticated)
	}
	id, err := s.verifier.VerifyJWT(token)
	if err != nil {
		return attest.Identity{}, err
	}
	if x509ID != nil && x509ID.ID != id.ID {
		return attest.Identity{}, fmt.Errorf("%w: X.509-SVID names %s but JWT-SVID names %s", attest.ErrUnauthenticated, x509ID.ID, id.ID)
	}
	return id, nil
}

// invalidRequest turns validation violations into one readable message.
func invalidRequest(err error) error {
	var ve *protovalidate.ValidationError
	if !errors.As(err, &ve) {
		return status.Errorf(codes.InvalidArgument, "invalid request: %v", err)
	}
	parts := make([]string, 0, len(ve.Violations))
	for _, v := range ve.Violations {
		parts = append(parts, v.String())
	}
	return status.Errorf(codes.InvalidArgument, "invalid request: %s", strings.Join(parts, "; "))
}

// requestCodec is grpc-go's proto codec, except that a request that does
// not unmarshal is left for decodeRequest to refuse: grpc-go would answer
// Internal, blaming the broker for the caller's bytes.
type requestCodec struct{ encoding.CodecV2 }

// undecoded carries a request through requestCodec with its unmarshal
// error.
type undecoded struct {
	msg proto.Message
	err error
}

func (c requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if u, ok := v.(*undecoded); ok {
		u.err = c.CodecV2.Unmarshal(data, u.msg)
		return nil
	}
	return c.CodecV2.Unmarshal(data, v)
}

// decodeRequest receives a request into m with recv. One that does not
// unmarshal (bad wire format, invalid UTF-8 in a string, nesting past
// protobuf's limit) is InvalidArgument.
func decodeRequest(recv func(any) error, m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return recv(m)
	}
	u := &undecoded{msg: pm}
	if err := recv(u); err != nil {
		return err
	}
	if u.err != nil {
		return status.Errorf(codes.InvalidArgument, "invalid request: not a valid %s message: %v", pm.ProtoReflect().Descriptor().FullName(), u.err)
	}
	return nil
}

// decodingRegistrar registers services whose handlers receive their
// requests through decodeRequest.
type decodingRegistrar struct{ *grpc.Server }

func (r decodingRegistrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	d := *desc
	d.Methods = slices.Clone(desc.Methods)
	for i, m := range desc.Methods {
		d.Methods[i].Handler = func(srv any, ctx context.Context, dec func(any) error, in grpc.UnaryServerInterceptor) (any, error) {
			return m.Handler(srv, ctx, func(v any) error { return decodeRequest(dec, v) }, in)
		}
	}
	d.Streams = slices.Clone(desc.Streams)
	for i, st := range desc.Streams {
		d.Streams[i].Handler = func(srv any, ss grpc.ServerStream) error { return st.Handler(srv, decodingStream{ss}) }
	}
	r.Server.RegisterService(&d, impl)
}

type decodingStream struct{ grpc.ServerStream }

func (s decodingStream) RecvMsg(m any) error { return decodeRequest(s.ServerStream.RecvMsg, m) }

// statusOf maps an internal error to a gRPC status, logging what the
// caller does not need to see. Refusals the caller can act on are logged at
// info; faults of the broker or Vault at error.
func (s *Server) statusOf(ctx context.Context, op string, err error) error {
	code, msg, level := codes.Internal, err.Error(), slog.LevelInfo
	var open *vault.BreakerOpenError
	switch {
	case errors.Is(err, store.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, store.ErrExists):
		code = codes.AlreadyExists
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrDeregistered):
		code = codes.FailedPrecondition
	case errors.Is(err, store.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, store.ErrRevoked), errors.Is(err, store.ErrKilled):
		code = codes.PermissionDenied
	case errors.Is(err, store.ErrLimit):
		code = codes.ResourceExhausted
	case errors.Is(err, store.ErrFull), errors.Is(err, syscall.ENOSPC):
		code, msg, level = codes.ResourceExhausted, "the broker's store is full: nothing new is issued until space is made (store_max_size, or the disk); revocations still work", slog.LevelError
	case errors.As(err, &open):
		// The breaker logged its opening; each refusal is routine.
		retry := max(open.RetryAt.Sub(s.now()), 0)
		s.logger(ctx).Warn(op+" refused: Vault circuit breaker open", slog.Time("retry_at", open.RetryAt))
		st := status.New(codes.Unavailable, fmt.Sprintf("Vault circuit breaker open; retrying at %s (in %s); nothing was issued",
			open.RetryAt.UTC().Format(time.RFC3339), retry.Round(time.Millisecond)))
		if d, derr := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)}); derr == nil {
			st = d
		}
		return st.Err()
	case errors.Is(err, vault.ErrUnavailable):
		code, msg, level = codes.Unavailable, "Vault is unavailable; nothing was issued; retry later", slog.LevelError
	case errors.Is(err, vault.ErrRejected):
		code, msg, level = codes.FailedPrecondition, "Vault refused the request; the broker's Vault setup needs attention (see atfd's log)", slog.LevelError
	default:
		msg, level = "internal error (see atfd's log)", slog.LevelError
	}
	s.logger(ctx).Log(ctx, level, op+" failed", slog.String(logError, err.Error()), slog.String(logCode, code.String()))
	if msg == err.Error() {
		msg = plainMessage(err)
	}
	return status.Error(code, msg)
}

// plainMessage is what is wrong, without the store's wrapping of it:
// "store: decide approval: store: revision conflict: approval X is
// denied, not pending" becomes "approval X is denied, not pending".
func plainMessage(err error) string {
	msg := err.Error()
	for _, sentinel := range []error{store.ErrConflict, store.ErrNotFound, store.ErrExists} {
		if errors.Is(err, sentinel) {
			if i := strings.LastIndex(msg, sentinel.Error()+": "); i >= 0 {
				return msg[i+len(sentinel.Error())+2:]
			}
		}
	}
	return strings.TrimPrefix(msg, "store: ")
}

// newID returns a random 128-bit identifier.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// readSecret reads a secret from a file or, if no file is named, from an
// environment variable.
func readSecret(file, env string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("broker: vault token: %w", err)
		}
		if v := strings.TrimSpace(string(b)); v != "" {
			return v, nil
		}
		return "", fmt.Errorf("broker: vault token file %s is empty", file)
	}
	if v := os.Getenv(env); v != "" {
		return v, nil
	}
	return "", fmt.Errorf("broker: vault token: environment variable %s is empty", env)
}

// db is the store handle for a request: its audit records carry the
// request id.
func (s *Server) db(ctx context.Context) *store.Store {
	return s.store.ForRequest(requestID(ctx))
}
