package edge

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"buf.build/go/protovalidate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/authz"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// request is one method's request type, received the way the broker
// receives it.
type request struct {
	protoreflect.MessageType
	stream bool // a streaming method: received through the stream interceptor
}

// requests returns the request of every method the broker serves, by full
// name.
func requests(tb testing.TB) []request {
	var out []request
	for _, fd := range []protoreflect.FileDescriptor{brokerv1.File_atf_broker_v1_broker_proto, adminv1.File_atf_admin_v1_admin_proto} {
		for i := range fd.Services().Len() {
			methods := fd.Services().Get(i).Methods()
			for j := range methods.Len() {
				md := methods.Get(j)
				mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
				if err != nil {
					tb.Fatal(err)
				}
				r := request{mt, md.IsStreamingClient() || md.IsStreamingServer()}
				if !slices.Contains(out, r) {
					out = append(out, r)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b request) int {
		return strings.Compare(string(a.Descriptor().FullName()), string(b.Descriptor().FullName()))
	})
	return out
}

// rawStream is a server stream whose one request is raw, unmarshalled by
// the broker's codec as grpc-go's stream does.
type rawStream struct {
	grpc.ServerStream // only RecvMsg is called
	raw               []byte
}

func (r rawStream) RecvMsg(m any) error {
	return requestCodec{encoding.GetCodecV2(protoenc.Name)}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(r.raw)}, m)
}

// receive decodes and validates raw into m as the broker does: a unary
// request through decodeRequest and the unary interceptor's validate, a
// stream's through the stream interceptor's wrappedStream under the
// registrar's decodingStream.
func (s *Edge) receive(r request, raw []byte, m proto.Message) error {
	if r.stream {
		return s.Status(context.Background(), decodingStream{&wrappedStream{ServerStream: rawStream{raw: raw}, validate: s.validate}}.RecvMsg(m))
	}
	if err := decodeRequest(rawStream{raw: raw}.RecvMsg, m); err != nil {
		return err
	}
	return s.Status(context.Background(), s.validate(m))
}

// roleNames returns the values of every string field named role or roles
// in m, at any depth.
func roleNames(m protoreflect.Message) []string {
	var out []string
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			out = append(out, roleNames(v.Message())...)
		case fd.Kind() != protoreflect.StringKind || fd.Name() != "role" && fd.Name() != "roles":
		case fd.IsList():
			for i := range v.List().Len() {
				out = append(out, v.List().Get(i).String())
			}
		default:
			out = append(out, v.String())
		}
		return true
	})
	return out
}

// FuzzRequestValidation feeds raw bytes to every method's request type
// through the broker's own path (see receive). Nothing panics; bytes that
// do not unmarshal, and messages that break their rules, are
// InvalidArgument saying which; what is accepted, streams' requests too,
// obeys its rules, marshals deterministically and unmarshals to an equal
// message that is accepted again; every role name in it is either
// canonical and unchanged or refused by authz.CanonicalRole with an error,
// never rewritten.
func FuzzRequestValidation(f *testing.F) {
	types := requests(f)
	v, err := protovalidate.New()
	if err != nil {
		f.Fatal(err)
	}
	s := &Edge{validator: v, cfg: Config{Now: time.Now}}

	const id = "0123456789abcdef0123456789abcdef"
	examples := []proto.Message{
		&brokerv1.FetchCredentialRequest{Role: "reports-read", Ttl: durationpb.New(60e9), Purpose: "q3 report", GrantId: id},
		&brokerv1.FetchCredentialRequest{Role: "kv/a/../b"},
		&brokerv1.FetchCredentialRequest{Role: "KV/Reports", ApprovalId: "xyz"},
		&brokerv1.DelegateRequest{Delegatee: "spiffe://example.org/agents/b", Roles: []string{"reports-read", "kv/a"}, Ttl: durationpb.New(3600e9), MaxDepth: 1},
		&brokerv1.DelegateRequest{Delegatee: "spiffe://example.org/agents/b", Roles: []string{"a", "a"}},
		&brokerv1.RevokeGrantRequest{GrantId: id, Reason: "done"},
		&brokerv1.WaitApprovalRequest{ApprovalId: id},
		&brokerv1.WaitApprovalRequest{ApprovalId: "../" + id},
		&brokerv1.ReportOutcomeRequest{Outcome: brokerv1.Outcome_OUTCOME_SUCCESS, DecisionId: id, Role: "reports-read", Detail: "ok"},
		&brokerv1.ReportOutcomeRequest{Outcome: 99},
		&adminv1.RegisterAgentRequest{SpiffeId: "spiffe://example.org/agents/a", Owner: "alice", Purpose: "reports", Roles: []string{"reports-read"}, Level: brokerv1.Level_LEVEL_JUNIOR},
		&adminv1.UpdateAgentRequest{SpiffeId: "spiffe://example.org/agents/a", Roles: &adminv1.RoleList{Roles: []string{"kv/x", "p.sub"}}, Owner: proto.String("")},
		&adminv1.TestPolicyRequest{SpiffeId: "spiffe://example.org/agents/a", Role: "reports-read", Policy: "p, group:all, *, read, intern, allow"},
		&adminv1.SetPolicyRequest{Policy: "g, spiffe://td/*, group:all", Comment: "why"},
		&adminv1.QueryAuditRequest{Role: "reports-read", Decision: "deny", PageSize: 10},
		&adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: "spiffe://example.org/agents/a"}, Lineage: true, Reason: "incident"},
		&adminv1.KillRequest{Reason: "no target"},
		&adminv1.RevokeLineageRequest{Root: &adminv1.RevokeLineageRequest_GrantId{GrantId: id}, Reason: "r"},
		&adminv1.DecideApprovalRequest{ApprovalId: id, Verdict: adminv1.Verdict_VERDICT_APPROVE, Reason: "fine"},
		&adminv1.ListAgentsRequest{PageSize: 1001},
	}
	index := func(m proto.Message) uint8 {
		i := slices.IndexFunc(types, func(r request) bool { return r.MessageType == m.ProtoReflect().Type() })
		if i < 0 {
			f.Fatalf("%T is no method's request", m)
		}
		return uint8(i)
	}
	update := &adminv1.UpdateAgentRequest{Roles: &adminv1.RoleList{Roles: []string{"kv/x", "p.sub"}}}
	if got := roleNames(update.ProtoReflect()); !slices.Equal(got, update.Roles.Roles) {
		f.Fatalf("roleNames(%v) = %q", update, got)
	}
	for _, m := range examples {
		raw, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(index(m), raw)
	}
	for i := range types {
		f.Add(uint8(i), []byte(nil))
	}
	fetch := index(&brokerv1.FetchCredentialRequest{})
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), s)
	}
	f.Add(fetch, str(1, "reports-\xff"))
	f.Add(fetch, str(1, "reports-read")[:5])
	f.Add(fetch, append(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.BytesType), 1<<31), 'x'))
	f.Add(fetch, append(str(1, "a"), str(1, "b")...))
	f.Add(fetch, append(str(1, "reports-read"), str(99, "unknown")...))
	f.Add(fetch, protowire.AppendTag(nil, 99, protowire.StartGroupType))
	f.Add(index(&brokerv1.DelegateRequest{}), protowire.AppendVarint(protowire.AppendTag(nil, 4, protowire.VarintType), 1<<40))

	f.Fuzz(func(t *testing.T, which uint8, raw []byte) {
		r := types[int(which)%len(types)]
		name := string(r.Descriptor().FullName())
		m := r.New().Interface()
		err := s.receive(r, raw, m)
		undecodable := proto.Unmarshal(raw, r.New().Interface()) != nil
		if err != nil {
			st, _ := status.FromError(err)
			msg := st.Message()
			if st.Code() != codes.InvalidArgument || !strings.HasPrefix(msg, "invalid request: ") || len(msg) == len("invalid request: ") ||
				undecodable != strings.HasPrefix(msg, "invalid request: not a valid "+name+" message: ") {
				t.Fatalf("%s (unmarshals: %t): refused with %v", name, !undecodable, err)
			}
			if again := s.Status(context.Background(), s.validate(m)); !undecodable && (again == nil || again.Error() != err.Error()) {
				t.Fatalf("%s: refused with %v, then validated to %v", name, err, again)
			}
			return
		}
		if undecodable {
			t.Fatalf("%s: accepted %x, which does not unmarshal", name, raw)
		}
		if err := s.validate(m); err != nil {
			t.Fatalf("%s: accepted %v, which breaks its rules: %v", name, m, err)
		}

		enc, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatalf("%s: a valid request does not marshal: %v", name, err)
		}
		m2 := r.New().Interface()
		if err := s.receive(r, enc, m2); err != nil {
			t.Fatalf("%s: a valid request, marshalled, is refused: %v", name, err)
		}
		if !proto.Equal(m, m2) {
			t.Fatalf("%s: %v marshals and unmarshals to %v", name, m, m2)
		}
		if enc2, err := (proto.MarshalOptions{Deterministic: true}).Marshal(m2); err != nil || string(enc2) != string(enc) {
			t.Fatalf("%s: marshals to %x, then to %x (%v)", name, enc, enc2, err)
		}
		for _, role := range roleNames(m.ProtoReflect()) {
			if got, err := authz.CanonicalRole(role); err == nil && got != role || err != nil && got != "" {
				t.Fatalf("%s: role %q: CanonicalRole = %q, %v", name, role, got, err)
			}
		}
	})
}
