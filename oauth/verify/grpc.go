package verify

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// MethodScopes returns the scopes a gRPC method (its full name,
// "/pkg.Service/Method") requires; nil requires none.
type MethodScopes func(fullMethod string) []string

// UnaryServerInterceptor admits a unary call only with a bearer token in
// its "authorization" metadata that Verify accepts with scopes(method),
// and passes the claims to the handler in its context. Refusals are
// Unauthenticated, PermissionDenied (insufficient scope) or Unavailable
// (revocation status unknown).
func (v *Verifier) UnaryServerInterceptor(scopes MethodScopes) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := v.authorize(ctx, info.FullMethod, scopes)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streams: the token
// is checked once, when the stream opens.
func (v *Verifier) StreamServerInterceptor(scopes MethodScopes) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := v.authorize(ss.Context(), info.FullMethod, scopes)
		if err != nil {
			return err
		}
		return handler(srv, &claimsStream{ServerStream: ss, ctx: ctx})
	}
}

type claimsStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *claimsStream) Context() context.Context { return s.ctx }

// authorize verifies the call's token and returns ctx with its claims, or
// a status error.
func (v *Verifier) authorize(ctx context.Context, method string, scopes MethodScopes) (context.Context, error) {
	var token string
	ok := false
	if md, found := metadata.FromIncomingContext(ctx); found {
		if vals := md.Get("authorization"); len(vals) == 1 {
			token, ok = bearer(vals[0])
		}
	}
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "verify: one bearer token is required in the authorization metadata")
	}
	var required []string
	if scopes != nil {
		required = scopes(method)
	}
	c, err := v.Verify(ctx, token, required...)
	switch {
	case errors.Is(err, ErrInsufficientScope):
		return nil, status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, ErrRevocationUnknown):
		return nil, status.Error(codes.Unavailable, err.Error())
	case err != nil:
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	return WithClaims(ctx, c), nil
}
