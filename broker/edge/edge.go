package edge

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"buf.build/go/protovalidate"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/broker/fault"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// MaxRequestBytes bounds every request message; the largest legitimate
// one is a few kilobytes.
const MaxRequestBytes = 64 << 10

// MaxHeaderBytes bounds a request's header list (HTTP/2 counting: names,
// values and 32 bytes per field): room for a bearer token of
// attest.MaxJWTSize and the usual headers. grpc-go's default, 16 MiB,
// would let any client make the broker decode megabytes before the
// token's length is checked; over the limit, the framer drops the stream
// or the connection without keeping the headers.
const MaxHeaderBytes = attest.MaxJWTSize + 8<<10

// requestIDHeader lets a caller correlate its request with the broker's
// logs and audit trail (as client_request_id); the broker's own id of the
// request comes back in the answer's header of the same name.
const requestIDHeader = "x-request-id"

// Verifier checks SVIDs; *attest.Verifier is one.
type Verifier interface {
	VerifyX509(chain []*x509.Certificate) (attest.Identity, error)
	VerifyJWT(token string) (attest.Identity, error)
}

// Config is what the edge needs.
type Config struct {
	Verifier Verifier
	// Admins may call AdminService and MaturityService; SecurityOperators
	// (and admins) ResponseService; Approvers ApprovalService. Any
	// authenticated caller may call BrokerService.
	Admins, SecurityOperators, Approvers map[spiffeid.ID]bool
	// People verifies people's ID tokens from `atfctl login`; nil refuses
	// them. A person may call what their console roles allow
	// (peopleRules); ReauthAfter bounds the age of their authentication
	// for a dangerous act (console.reauth_after).
	People      People
	ReauthAfter time.Duration
	Log         *slog.Logger
	Now         func() time.Time
	// MaxPublicStreams bounds the streams open at once on the methods that
	// need no SVID (health Watch, reflection); default 64. Past it, new
	// ones are refused (ResourceExhausted): a client without a certificate
	// cannot pile up streams.
	MaxPublicStreams int
	// MaxStreams bounds the authenticated streams open at once (default
	// 4096): past it, new ones are refused (ResourceExhausted) and unary
	// calls still go through. MaxStreamsPerConnection bounds the calls
	// open at once on one connection (default 128): HTTP/2 clients wait
	// for a free one.
	MaxStreams, MaxStreamsPerConnection int
}

// Edge is the gRPC edge of one broker.
type Edge struct {
	cfg       Config
	validator protovalidate.Validator
	rules     []accessRule
	// public holds a slot per open stream on a method that needs no SVID,
	// streams one per authenticated stream.
	public, streams chan struct{}
}

// accessRule says who may call a service's methods.
type accessRule struct {
	prefix  string
	allowed func(spiffeid.ID) bool
	refusal string // how the refusal ends: "%s is not ..."
	logMsg  string
}

// New returns the edge for cfg.
func New(cfg Config) (*Edge, error) {
	if cfg.Verifier == nil {
		return nil, errors.New("edge: a verifier is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxPublicStreams <= 0 {
		cfg.MaxPublicStreams = 64
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = 4096
	}
	if cfg.MaxStreamsPerConnection <= 0 {
		cfg.MaxStreamsPerConnection = 128
	}
	v, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("edge: validator: %w", err)
	}
	admin := func(id spiffeid.ID) bool { return cfg.Admins[id] }
	e := &Edge{cfg: cfg, validator: v, public: make(chan struct{}, cfg.MaxPublicStreams), streams: make(chan struct{}, cfg.MaxStreams), rules: []accessRule{
		{serviceOf(adminv1.AdminService_ServiceDesc), admin,
			"is not a broker admin; admins are listed in atfd's configuration (admins)", "admin call refused: caller is not an admin"},
		{serviceOf(adminv1.MaturityService_ServiceDesc), admin,
			"is not a broker admin; admins are listed in atfd's configuration (admins)", "admin call refused: caller is not an admin"},
		{serviceOf(adminv1.ResponseService_ServiceDesc), func(id spiffeid.ID) bool { return cfg.Admins[id] || cfg.SecurityOperators[id] },
			"is neither a broker admin nor a security operator (atfd's configuration: admins, security_operators)",
			"incident response call refused: caller is neither an admin nor a security operator"},
		{serviceOf(adminv1.ApprovalService_ServiceDesc), func(id spiffeid.ID) bool { return cfg.Approvers[id] },
			"is not an approver; approvers are listed in atfd's configuration (approvals.approvers)", "approval call refused: caller is not an approver"},
	}}
	return e, nil
}

func serviceOf(d grpc.ServiceDesc) string { return "/" + d.ServiceName + "/" }

// ServerOptions are the options a gRPC server needs to serve through the
// edge: TLS from tlsConfig, size limits, the decoding codec and the
// interceptors.
func (e *Edge) ServerOptions(tlsConfig credentials.TransportCredentials) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(tlsConfig),
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.MaxHeaderListSize(MaxHeaderBytes),
		grpc.MaxConcurrentStreams(uint32(e.cfg.MaxStreamsPerConnection)),
		grpc.ForceServerCodecV2(requestCodec{encoding.GetCodecV2(protoenc.Name)}),
		grpc.ChainUnaryInterceptor(e.unary),
		grpc.ChainStreamInterceptor(e.stream),
	}
}

// public methods need no SVID: health probes and reflection reveal nothing
// an agent could use.
func public(method string) bool {
	return strings.HasPrefix(method, "/grpc.health.v1.Health/") || strings.HasPrefix(method, "/grpc.reflection.")
}

func (e *Edge) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	if public(info.FullMethod) {
		return handler(ctx, req)
	}
	start := time.Now()
	ctx, log := e.begin(ctx, info.FullMethod)
	defer func() {
		log.Info("request", slog.String(LogCode, status.Code(err).String()), slog.Duration(LogDuration, time.Since(start)))
	}()
	if ctx, err = e.authorize(ctx, info.FullMethod); err != nil {
		return nil, e.Status(ctx, err)
	}
	if err := e.validate(req); err != nil {
		return nil, e.Status(ctx, err)
	}
	if err := e.fresh(ctx, info.FullMethod, req); err != nil {
		return nil, e.Status(ctx, err)
	}
	resp, err = handler(ctx, req)
	return resp, e.Status(ctx, err)
}

func (e *Edge) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if public(info.FullMethod) {
		select {
		case e.public <- struct{}{}:
			defer func() { <-e.public }()
		default:
			return status.Errorf(codes.ResourceExhausted, "too many open health and reflection streams (%d); use the health Check", cap(e.public))
		}
		return handler(srv, ss)
	}
	ctx, _ := e.begin(ss.Context(), info.FullMethod)
	ctx, err := e.authorize(ctx, info.FullMethod)
	if err == nil {
		err = e.fresh(ctx, info.FullMethod, nil)
	}
	if err != nil {
		return e.Status(ctx, err)
	}
	select {
	case e.streams <- struct{}{}:
		defer func() { <-e.streams }()
	default:
		return e.Status(ctx, fault.New(fault.Exhausted, "too many open streams (%d, limits.max_streams in atfd's configuration); "+
			"close one or retry later", cap(e.streams)))
	}
	w := &wrappedStream{ServerStream: ss, validate: e.validate, recheck: func(ctx context.Context) error { return e.recheck(ctx, info.FullMethod) }}
	w.ctx, w.cancel = context.WithCancelCause(ctx)
	defer w.cancel(nil)
	// A stream lives no longer than the SVID it was opened with.
	exp := Identity(ctx).ExpiresAt
	expiry := time.AfterFunc(exp.Sub(e.cfg.Now()), func() {
		w.end(fmt.Errorf("%w: the SVID this stream was opened with expired at %s; open it again with a fresh one",
			attest.ErrUnauthenticated, exp.UTC().Format(time.RFC3339)))
	})
	defer expiry.Stop()
	err = handler(srv, w)
	if ended := w.ended(); ended != nil {
		err = ended
	}
	return e.Status(ctx, err)
}

// wrappedStream is an authenticated stream: it carries the call's
// context, validates what it receives, and checks the caller again before
// each message it sends, ending the stream once the caller may no longer
// hold it.
type wrappedStream struct {
	grpc.ServerStream
	ctx      context.Context
	cancel   context.CancelCauseFunc
	validate func(any) error
	recheck  func(context.Context) error

	mu     sync.Mutex
	endErr error // why the edge ended the stream
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

// end ends the stream: its context is cancelled and the call ends with err.
func (w *wrappedStream) end(err error) {
	w.mu.Lock()
	if w.endErr == nil {
		w.endErr = err
	}
	w.mu.Unlock()
	w.cancel(err)
}

// ended is why the edge ended the stream (nil: it did not).
func (w *wrappedStream) ended() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.endErr
}

// SendMsg sends m if the caller still authenticates and may still call
// the method: an SVID expired or no longer trusted ends the stream.
func (w *wrappedStream) SendMsg(m any) error {
	if err := w.recheck(w.ctx); err != nil {
		w.end(err)
		return err
	}
	return w.ServerStream.SendMsg(m)
}

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
// rules, saying which.
func (e *Edge) validate(req any) error {
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	err := e.validator.Validate(m)
	var ve *protovalidate.ValidationError
	switch {
	case err == nil:
		return nil
	case !errors.As(err, &ve):
		return fault.New(fault.Invalid, "invalid request: %v", err)
	}
	parts := make([]string, 0, len(ve.Violations))
	for _, v := range ve.Violations {
		parts = append(parts, v.String())
	}
	return fault.New(fault.Invalid, "invalid request: %s", strings.Join(parts, "; "))
}

// requestIDPattern keeps caller-chosen request ids to plain tokens, since
// they reach logs and the audit trail.
var requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// begin attaches a request id and a logger carrying it to ctx.
// The request id is always the broker's own; the caller's x-request-id,
// if it is a plain token, is kept apart (ClientRequestID), so that no
// caller chooses the id its request is logged and audited by. The answer's
// headers carry the broker's id as x-request-id.
func (e *Edge) begin(ctx context.Context, method string) (context.Context, *slog.Logger) {
	rid, cid := NewID(), ""
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(requestIDHeader); len(v) == 1 && requestIDPattern.MatchString(v[0]) {
			cid = v[0]
		}
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs(requestIDHeader, rid)) // outside a gRPC call (tests) there is no header
	log := e.cfg.Log.With(slog.String(LogRequestID, rid), slog.String(LogMethod, method))
	if cid != "" {
		log = log.With(slog.String(LogClientRequestID, cid))
	}
	ctx = context.WithValue(context.WithValue(ctx, loggerKey, log), requestIDKey, rid)
	return context.WithValue(ctx, clientRequestIDKey, cid), log
}

// authorize authenticates the caller from its SVID and applies its
// service's access rule. It returns ctx carrying the identity and a logger
// naming the caller.
func (e *Edge) authorize(ctx context.Context, method string) (context.Context, error) {
	log := Logger(ctx)
	id, err := e.authenticate(ctx)
	if err != nil {
		log.Warn("unauthenticated call", slog.String(LogError, err.Error()))
		return ctx, err
	}
	log = log.With(slog.String(LogCaller, id.Principal()), slog.String(LogAuthMethod, id.Method.String()))
	ctx = context.WithValue(context.WithValue(ctx, identityKey, id), loggerKey, log)
	if err := e.refused(method, id, log); err != nil {
		return ctx, err
	}
	return ctx, nil
}

// refused is why id may not call method (nil: it may), logged to log:
// a person by their console roles, a workload by its service's access
// rule.
func (e *Edge) refused(method string, id attest.Identity, log *slog.Logger) error {
	if id.Human != nil {
		err := personRefused(method, id.Human)
		if err != nil {
			log.Warn("call refused to a person: role", slog.Any("roles", id.Human.Roles))
		}
		return err
	}
	for _, r := range e.rules {
		if strings.HasPrefix(method, r.prefix) && !r.allowed(id.ID) {
			log.Warn(r.logMsg)
			return fault.New(fault.Denied, "%s %s", id.ID, r.refusal)
		}
	}
	return nil
}

// recheck authenticates a stream's caller again, as on a new call, and
// applies its access rule.
func (e *Edge) recheck(ctx context.Context, method string) error {
	id, err := e.authenticate(ctx)
	if err != nil {
		return err
	}
	return e.refused(method, id, Logger(ctx))
}

// authenticate verifies the caller's X.509-SVID (from mutual TLS) or
// JWT-SVID (from the authorization header). If both are presented they must
// name the same workload.
func (e *Edge) authenticate(ctx context.Context) (attest.Identity, error) {
	var x509ID *attest.Identity
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			id, err := e.cfg.Verifier.VerifyX509(ti.State.PeerCertificates)
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
	if e.cfg.People != nil && e.cfg.People.Issued(token) {
		// A person's ID token (atfctl login) stands alone: a workload's
		// certificate beside it would make the call two callers'.
		if x509ID != nil {
			return attest.Identity{}, fmt.Errorf("%w: a person's sign-in (atfctl login) comes without an X.509-SVID, and this call presents %s's",
				attest.ErrUnauthenticated, x509ID.ID)
		}
		return e.cfg.People.Verify(ctx, token)
	}
	id, err := e.cfg.Verifier.VerifyJWT(token)
	if err != nil {
		return attest.Identity{}, err
	}
	if x509ID != nil && x509ID.ID != id.ID {
		return attest.Identity{}, fmt.Errorf("%w: X.509-SVID names %s but JWT-SVID names %s", attest.ErrUnauthenticated, x509ID.ID, id.ID)
	}
	if x509ID != nil && x509ID.ExpiresAt.Before(id.ExpiresAt) {
		id.ExpiresAt = x509ID.ExpiresAt // the call stands on both
	}
	return id, nil
}
