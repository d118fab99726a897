package edge

import (
	"context"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

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
// protobuf's limit) is InvalidArgument. It runs before the interceptors,
// so it answers with a status itself.
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

// Registrar returns a registrar for s whose services receive their
// requests through decodeRequest.
func Registrar(s *grpc.Server) grpc.ServiceRegistrar { return decodingRegistrar{s} }

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
