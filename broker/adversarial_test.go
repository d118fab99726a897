package broker_test

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/attest/attesttest"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// A killed or deregistered agent gets nothing: not on the connection it
// opened before the ban, not on a new one offering the TLS sessions it
// cached (the broker issues none, so there is nothing to resume), not with
// a JWT-SVID. Its SVID still authenticates it; its standing is what
// refuses it.
func TestAdversarialBannedAgent(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	admin := b.Dial(t, f.Admin)
	fetch := &brokerv1.FetchCredentialRequest{Role: "reports-read"}
	for _, tt := range []struct {
		name   string
		ban    func(spiffeid.ID) error
		want   string
		status brokerv1.AgentStatus
	}{
		{"kill", func(id spiffeid.ID) error {
			_, err := admin.Response.Kill(t.Context(), &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: id.String()}, Reason: "adversarial test"})
			return err
		}, "stopped by the kill switch", brokerv1.AgentStatus_AGENT_STATUS_KILLED},
		{"deregister", func(id spiffeid.ID) error {
			_, err := admin.Admin.DeregisterAgent(t.Context(), &adminv1.DeregisterAgentRequest{SpiffeId: id.String(), Reason: "adversarial test"})
			return err
		}, "deregistered", brokerv1.AgentStatus_AGENT_STATUS_DEREGISTERED},
	} {
		t.Run(tt.name, func(t *testing.T) {
			agent, delegatee := f.ID(t, "agent"), f.ID(t, "delegatee")
			b.Register(t, agent, brokerv1.Level_LEVEL_SENIOR, "reports-read")
			b.Register(t, delegatee, brokerv1.Level_LEVEL_SENIOR, "reports-read")
			cert := spireCert(t, f, agent)
			cache := &countingCache{ClientSessionCache: tls.NewLRUClientSessionCache(4)}
			withCache := func(c *tls.Config) { c.ClientSessionCache = cache }
			open := brokerv1.NewBrokerServiceClient(dialTLS(t, b, cert, withCache))
			if _, err := open.FetchCredential(t.Context(), fetch); err != nil {
				t.Fatal(err)
			}
			if err := tt.ban(agent); err != nil {
				t.Fatal(err)
			}

			// The connection opened before the ban.
			_, err := open.FetchCredential(t.Context(), fetch)
			brokertest.WantCode(t, err, codes.PermissionDenied, tt.want)
			_, err = open.Delegate(t.Context(), &brokerv1.DelegateRequest{Delegatee: delegatee.String(), Roles: []string{"reports-read"}, Ttl: durationpb.New(time.Minute)})
			brokertest.WantCode(t, err, codes.PermissionDenied, "holds no authority")
			_, err = open.ReportOutcome(t.Context(), &brokerv1.ReportOutcomeRequest{Outcome: brokerv1.Outcome_OUTCOME_SUCCESS})
			brokertest.WantCode(t, err, codes.PermissionDenied, "not an active registered agent")
			who, err := open.WhoAmI(t.Context(), &brokerv1.WhoAmIRequest{})
			if err != nil || who.GetStatus() != tt.status {
				t.Fatalf("WhoAmI = %v, %v; want status %s", who, err, tt.status)
			}

			// New connections with the client's session cache: full
			// handshakes, the same refusal.
			for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
				c := brokerv1.NewBrokerServiceClient(dialTLS(t, b, cert, func(c *tls.Config) { withCache(c); c.MaxVersion = version }))
				var p peer.Peer
				_, err := c.FetchCredential(t.Context(), fetch, grpc.Peer(&p))
				brokertest.WantCode(t, err, codes.PermissionDenied, tt.want)
				if st := tlsState(p); st.DidResume || st.Version != version {
					t.Errorf("%s: DidResume = %v, version %s", tls.VersionName(version), st.DidResume, tls.VersionName(st.Version))
				}
			}
			if cache.stored != 0 {
				t.Errorf("the broker offered %d TLS sessions for resumption", cache.stored)
			}

			// A JWT-SVID, on a connection without a client certificate.
			jwt, err := f.Stack.MintJWT(t.Context(), agent, f.Stack.BrokerID.String(), time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+jwt)
			_, err = brokerv1.NewBrokerServiceClient(dialTLS(t, b, nil, nil)).FetchCredential(ctx, fetch)
			brokertest.WantCode(t, err, codes.PermissionDenied, tt.want)
		})
	}
}

// X.509-SVIDs signed by a CA the broker trusts (a test trust domain, as a
// federated one would be configured) but that are no SVIDs are refused on
// the first call, Unauthenticated, with the reason. So is an SVID of a CA
// that a rotation took out of the bundle, offering a cached TLS session.
func TestAdversarialX509Forgeries(t *testing.T) {
	f := brokertest.Setup(t)
	adv := attesttest.New(t, "adv.test")
	b := advBroker(t, f, adv)
	agent := spiffeid.RequireFromPath(adv.TD, "/agents/a")
	whoAmI := func(t *testing.T, cert tls.Certificate, edit func(*tls.Config)) (*brokerv1.WhoAmIResponse, tls.ConnectionState, error) {
		var p peer.Peer
		who, err := brokerv1.NewBrokerServiceClient(dialTLS(t, b, &cert, edit)).WhoAmI(t.Context(), &brokerv1.WhoAmIRequest{}, grpc.Peer(&p))
		return who, tlsState(p), err
	}
	// The test CA is trusted: its well-formed SVID works.
	if who, _, err := whoAmI(t, adv.X509(t, agent).TLS(), nil); err != nil || who.GetSpiffeId() != agent.String() {
		t.Fatalf("WhoAmI with a well-formed SVID = %v, %v", who, err)
	}
	for _, fg := range adv.X509Forgeries(t, agent, f.ID(t, "victim")) {
		t.Run(fg.Name, func(t *testing.T) {
			_, _, err := whoAmI(t, fg.SVID.TLS(), nil)
			brokertest.WantCode(t, err, codes.Unauthenticated, fg.WantErr)
		})
	}

	t.Run("CA rotated out of the bundle", func(t *testing.T) {
		old := adv.X509(t, agent).TLS()
		cache := &countingCache{ClientSessionCache: tls.NewLRUClientSessionCache(4)}
		withCache := func(c *tls.Config) { c.ClientSessionCache = cache }
		if _, _, err := whoAmI(t, old, withCache); err != nil {
			t.Fatal(err)
		}
		// Bundle files are read at start: the rotation is a restart with
		// the new CA's bundle.
		b.Stop()
		next := attesttest.New(t, adv.TD.Name())
		b = advBroker(t, f, next)
		_, st, err := whoAmI(t, old, withCache)
		brokertest.WantCode(t, err, codes.Unauthenticated, "could not verify leaf certificate", "certificate signed by unknown authority")
		if st.DidResume || cache.stored != 0 {
			t.Errorf("DidResume = %v, %d sessions offered", st.DidResume, cache.stored)
		}
		if _, _, err := whoAmI(t, next.X509(t, agent).TLS(), nil); err != nil {
			t.Errorf("SVID of the new CA: %v", err)
		}
	})
}

// Forged JWT-SVIDs, several signed with a key of the broker's bundle, are
// refused Unauthenticated with the reason. Tokens over the header limit
// are TestAdversarialOversizedHeaders'.
func TestAdversarialJWTForgeries(t *testing.T) {
	f := brokertest.Setup(t)
	adv := attesttest.New(t, "adv.test")
	b := advBroker(t, f, adv)
	bc := brokerv1.NewBrokerServiceClient(dialTLS(t, b, nil, nil))
	agent := spiffeid.RequireFromPath(adv.TD, "/agents/a")
	audience := f.Stack.BrokerID.String()
	call := func(token string) (*brokerv1.WhoAmIResponse, error) {
		return bc.WhoAmI(metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+token), &brokerv1.WhoAmIRequest{})
	}
	if who, err := call(adv.JWT(t, agent, audience, time.Minute)); err != nil || who.GetSpiffeId() != agent.String() ||
		who.GetAuthMethod() != brokerv1.AuthMethod_AUTH_METHOD_JWT_SVID {
		t.Fatalf("WhoAmI with a well-formed JWT-SVID = %v, %v", who, err)
	}
	for _, fg := range adv.JWTForgeries(t, agent, audience) {
		if len(fg.Token) > 64<<10 {
			continue
		}
		t.Run(fg.Name, func(t *testing.T) {
			_, err := call(fg.Token)
			brokertest.WantCode(t, err, codes.Unauthenticated, fg.WantErr)
		})
	}
}

// A bearer token of megabytes is refused before the broker holds it:
// atfd's header limit stops it in the HTTP/2 framer. grpc-go clients
// honour the limit the server advertises and refuse to send; a client that
// sends anyway has its stream or connection dropped, and the broker
// allocates a fraction of the token doing so.
func TestAdversarialOversizedHeaders(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	tokens := []struct {
		name, token string
	}{
		{"4 MiB", strings.Repeat("A", 4<<20)},
		{"a million dots", strings.Repeat(".", 1_000_000)},
	}

	t.Run("grpc-go client", func(t *testing.T) {
		conn := dialTLS(t, b, nil, nil)
		// A first call, so that the client has the server's settings.
		if _, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
		bc := brokerv1.NewBrokerServiceClient(conn)
		call := func(token string) error {
			_, err := bc.WhoAmI(metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+token), &brokerv1.WhoAmIRequest{})
			return err
		}
		// Over MaxJWTSize but under the header limit: the broker answers.
		brokertest.WantCode(t, call(strings.Repeat("A", 12<<10)), codes.Unauthenticated, "bearer token longer than 8192 bytes")
		for _, tt := range tokens {
			brokertest.WantCode(t, call(tt.token), codes.Internal, "header list size to send violates the maximum size")
		}
	})

	// What the process allocates while the broker refuses, background
	// work and the bare client included, must stay under 2 MiB, half the
	// larger token. Reading a header list whole costs several times its
	// size (21 MB for the 4 MiB token, 3.3 MB for the million dots, with
	// grpc-go's default limit).
	for _, tt := range tokens {
		t.Run("raw HTTP/2 "+tt.name, func(t *testing.T) {
			h := dialH2(t, b)
			if h.maxHeaderList == 0 || h.maxHeaderList > 64<<10 {
				t.Fatalf("the broker advertises a header list limit of %d bytes", h.maxHeaderList)
			}
			block := hpackBlock(
				":method", "POST", ":scheme", "https", ":path", brokerv1.BrokerService_WhoAmI_FullMethodName,
				":authority", "atfd", "content-type", "application/grpc", "te", "trailers",
				"authorization", "Bearer "+tt.token)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			refusal := h.send(block)
			runtime.ReadMemStats(&after)
			allocated := after.TotalAlloc - before.TotalAlloc
			t.Logf("refusal: %q; %d bytes allocated", refusal, allocated)
			if refusal == "" {
				t.Error("the broker answered the request: it read the whole header list")
			}
			if allocated > 2<<20 {
				t.Errorf("%d bytes allocated for a %d-byte header list", allocated, len(block))
			}
		})
	}
	// The broker still serves.
	if _, err := healthpb.NewHealthClient(dialTLS(t, b, nil, nil)).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
}

// Requests no proto library would build: over the size limit, invalid
// UTF-8 in a string, truncated, nested past protobuf's recursion limit,
// declaring a length of 2 GiB. Each is refused with a code naming the
// caller's mistake and nothing is allocated for lengths the bytes only
// claim.
func TestAdversarialMalformedMessages(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	conn := b.Dial(t, agent)
	field := func(m proto.Message, name protoreflect.Name) protowire.Number {
		return m.ProtoReflect().Descriptor().Fields().ByName(name).Number()
	}
	fetchRole := field(&brokerv1.FetchCredentialRequest{}, "role")
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), s)
	}
	var nested []byte
	for range 20_000 {
		nested = protowire.AppendTag(nested, 99, protowire.StartGroupType)
	}
	unary := func(method string, raw []byte) error {
		var out []byte
		return conn.Invoke(t.Context(), method, raw, &out, grpc.ForceCodecV2(rawCodec{}))
	}

	t.Run("over the size limit", func(t *testing.T) {
		_, err := conn.Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read", Purpose: strings.Repeat("p", 100<<10)})
		brokertest.WantCode(t, err, codes.ResourceExhausted, "received message larger than max")
	})
	for _, tt := range []struct {
		name  string
		raw   []byte
		parts []string
	}{
		{"invalid UTF-8", str(fetchRole, "reports-\xff"), []string{"invalid request", "atf.broker.v1.FetchCredentialRequest", "invalid UTF-8"}},
		{"truncated", str(fetchRole, "reports-read")[:5], []string{"invalid request", "cannot parse invalid wire-format data"}},
		{"length of 2 GiB", append(protowire.AppendVarint(protowire.AppendTag(nil, fetchRole, protowire.BytesType), 1<<31), 'x'), []string{"invalid request"}},
		{"nested 20,000 groups deep", nested, []string{"invalid request"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			brokertest.WantCode(t, unary(brokerv1.BrokerService_FetchCredential_FullMethodName, tt.raw), codes.InvalidArgument, tt.parts...)
		})
	}
	t.Run("invalid UTF-8 opening a stream", func(t *testing.T) {
		s, err := conn.NewStream(t.Context(), &grpc.StreamDesc{ServerStreams: true}, brokerv1.BrokerService_WaitApproval_FullMethodName, grpc.ForceCodecV2(rawCodec{}))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SendMsg(str(field(&brokerv1.WaitApprovalRequest{}, "approval_id"), "\xc0\xaf")); err != nil {
			t.Fatal(err)
		}
		if err := s.CloseSend(); err != nil {
			t.Fatal(err)
		}
		var out []byte
		brokertest.WantCode(t, s.RecvMsg(&out), codes.InvalidArgument, "invalid request", "invalid UTF-8")
	})
	// A well-formed request still goes through the raw path.
	if err := unary(brokerv1.BrokerService_FetchCredential_FullMethodName, str(fetchRole, "reports-read")); err != nil {
		t.Fatalf("well-formed raw request: %v", err)
	}
}

// No request type can nest: a request is as deep as its schema, so only
// unknown fields (above) can nest, and protobuf bounds those.
func TestAdversarialNoRecursiveRequests(t *testing.T) {
	for _, file := range []protoreflect.FileDescriptor{brokerv1.File_atf_broker_v1_broker_proto, adminv1.File_atf_admin_v1_admin_proto} {
		for i := range file.Services().Len() {
			svc := file.Services().Get(i)
			for j := range svc.Methods().Len() {
				m := svc.Methods().Get(j)
				if path := recursion(m.Input(), nil); path != nil {
					t.Errorf("%s: request type nests itself: %v", m.FullName(), path)
				}
			}
		}
	}
}

// recursion returns a path of message types from md back to one on path,
// or nil.
func recursion(md protoreflect.MessageDescriptor, path []protoreflect.FullName) []protoreflect.FullName {
	for _, p := range path {
		if p == md.FullName() {
			return append(path, md.FullName())
		}
	}
	path = append(path, md.FullName())
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.IsMap() {
			fd = fd.MapValue()
		}
		if sub := fd.Message(); sub != nil {
			if p := recursion(sub, path); p != nil {
				return p
			}
		}
	}
	return nil
}

// Page sizes beyond the documented range are InvalidArgument; the
// largest allowed one works.
func TestAdversarialPageSizes(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Approvals.Approvers = []string{f.Admin.String()}
	b := f.Start(t, cfg)
	admin := b.Dial(t, f.Admin)
	for _, tt := range []struct {
		name string
		list func(int32) error
	}{
		{"ListAgents", func(n int32) error {
			_, err := admin.Admin.ListAgents(t.Context(), &adminv1.ListAgentsRequest{PageSize: n})
			return err
		}},
		{"ListPolicies", func(n int32) error {
			_, err := admin.Admin.ListPolicies(t.Context(), &adminv1.ListPoliciesRequest{PageSize: n})
			return err
		}},
		{"QueryAudit", func(n int32) error {
			_, err := admin.Admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{PageSize: n})
			return err
		}},
		{"ListApprovals", func(n int32) error {
			_, err := admin.Approvals.ListApprovals(t.Context(), &adminv1.ListApprovalsRequest{PageSize: n})
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, n := range []int32{math.MaxInt32, 1001, -1, math.MinInt32} {
				brokertest.WantCode(t, tt.list(n), codes.InvalidArgument, "page_size")
			}
			for _, n := range []int32{0, 1000} {
				if err := tt.list(n); err != nil {
					t.Errorf("page_size %d: %v", n, err)
				}
			}
		})
	}
}

// advBroker starts a broker with advConfig.
func advBroker(t *testing.T, f *brokertest.Fixture, adv *attesttest.Authority) *brokertest.Broker {
	t.Helper()
	return f.Start(t, advConfig(t, f, adv, t.TempDir()))
}

// advConfig is the fixture's broker configuration (files in dir) trusting,
// besides the dev stack's trust domain, adv's: from bundle files, as a
// federated trust domain would be.
func advConfig(t *testing.T, f *brokertest.Fixture, adv *attesttest.Authority, dir string) config.Config {
	t.Helper()
	cfg := f.Config(t, dir)
	cfg.TrustDomains = append(cfg.TrustDomains, adv.TD.Name())
	cfg.SPIFFE.BundleFiles = map[string]string{
		f.Stack.TrustDomain.Name(): f.Stack.SPIFFEBundlePath,
		adv.TD.Name():              adv.WriteBundle(t, dir),
	}
	return cfg
}

// dialTLS connects to b presenting cert (none if nil) and verifying the
// broker's SVID; edit, if set, adjusts the TLS configuration.
func dialTLS(t *testing.T, b *brokertest.Broker, cert *tls.Certificate, edit func(*tls.Config)) *grpc.ClientConn {
	t.Helper()
	tc := clientTLS(t, b)
	if cert != nil {
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	if edit != nil {
		edit(tc)
	}
	conn, err := grpc.NewClient(b.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// clientTLS is a client TLS configuration that verifies b's SVID.
func clientTLS(t *testing.T, b *brokertest.Broker) *tls.Config {
	t.Helper()
	bundle, err := x509bundle.Load(b.F.Stack.TrustDomain, b.F.Stack.BundlePath)
	if err != nil {
		t.Fatal(err)
	}
	return tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(b.F.Stack.BrokerID))
}

// spireCert is a SPIRE-minted X.509-SVID for id as a TLS certificate.
func spireCert(t *testing.T, f *brokertest.Fixture, id spiffeid.ID) *tls.Certificate {
	t.Helper()
	files := f.SVID(t, id)
	sv, err := x509svid.Load(files.CertPath, files.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Certificate{PrivateKey: sv.PrivateKey, Leaf: sv.Certificates[0]}
	for _, cert := range sv.Certificates {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return &c
}

// tlsState is the TLS state of a call's connection.
func tlsState(p peer.Peer) tls.ConnectionState {
	ti, _ := p.AuthInfo.(credentials.TLSInfo)
	return ti.State
}

// countingCache counts the sessions a server offered for resumption.
type countingCache struct {
	tls.ClientSessionCache
	stored int
}

func (c *countingCache) Put(key string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.stored++
	}
	c.ClientSessionCache.Put(key, cs)
}

// rawCodec sends and receives messages as the bytes given.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// h2Conn is a bare HTTP/2 client connection: it sends what grpc-go would
// refuse to.
type h2Conn struct {
	c *tls.Conn
	// maxHeaderList is the server's SETTINGS_MAX_HEADER_LIST_SIZE (0: none).
	maxHeaderList uint32
}

// HTTP/2 frame types and flags (RFC 9113, section 6).
const (
	h2Headers      = 0x1
	h2RSTStream    = 0x3
	h2Settings     = 0x4
	h2GoAway       = 0x7
	h2Continuation = 0x9

	h2EndStream  = 0x1
	h2Ack        = 0x1
	h2EndHeaders = 0x4

	h2SettingMaxHeaderListSize = 0x6
	h2MaxFrame                 = 16 << 10
)

// dialH2 connects to b without a client certificate and exchanges
// settings.
func dialH2(t *testing.T, b *brokertest.Broker) *h2Conn {
	t.Helper()
	tc := clientTLS(t, b)
	tc.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", b.Addr, tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// A broker that stops answering fails the test instead of hanging it.
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	h := &h2Conn{c: c}
	if _, err := io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := h.write(h2Settings, 0, 0, nil); err != nil {
		t.Fatal(err)
	}
	for {
		typ, flags, _, payload, err := h.read()
		if err != nil {
			t.Fatal(err)
		}
		if typ != h2Settings || flags&h2Ack != 0 {
			continue
		}
		for s := payload; len(s) >= 6; s = s[6:] {
			if binary.BigEndian.Uint16(s) == h2SettingMaxHeaderListSize {
				h.maxHeaderList = binary.BigEndian.Uint32(s[2:])
			}
		}
		if err := h.write(h2Settings, h2Ack, 0, nil); err != nil {
			t.Fatal(err)
		}
		return h
	}
}

// send sends block as the header list of a request on stream 1 and
// returns how the server refused it ("" if it answered).
func (h *h2Conn) send(block []byte) string {
	written := make(chan struct{})
	go func() {
		defer close(written)
		typ, flags := byte(h2Headers), byte(h2EndStream)
		for len(block) > 0 {
			n := min(len(block), h2MaxFrame)
			if n == len(block) {
				flags |= h2EndHeaders
			}
			if h.write(typ, flags, 1, block[:n]) != nil {
				return // the server hung up
			}
			block, typ, flags = block[n:], h2Continuation, 0
		}
	}()
	defer func() {
		h.c.Close()
		<-written
	}()
	for {
		typ, _, stream, payload, err := h.read()
		switch {
		case err != nil:
			return "connection closed: " + err.Error()
		case typ == h2RSTStream && stream == 1:
			return "stream reset, error code " + errCode(payload)
		case typ == h2GoAway:
			return "connection closed with GOAWAY, error code " + errCode(payload[4:])
		case typ == h2Headers && stream == 1:
			return ""
		}
	}
}

func errCode(b []byte) string {
	if len(b) < 4 {
		return "?"
	}
	return map[uint32]string{0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x6: "FRAME_SIZE_ERROR", 0x9: "COMPRESSION_ERROR"}[binary.BigEndian.Uint32(b)]
}

func (h *h2Conn) write(typ, flags byte, stream uint32, payload []byte) error {
	var hdr [9]byte
	hdr[0], hdr[1], hdr[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	hdr[3], hdr[4] = typ, flags
	binary.BigEndian.PutUint32(hdr[5:], stream)
	if _, err := h.c.Write(hdr[:]); err != nil {
		return err
	}
	_, err := h.c.Write(payload)
	return err
}

func (h *h2Conn) read() (typ, flags byte, stream uint32, payload []byte, err error) {
	var hdr [9]byte
	if _, err := io.ReadFull(h.c, hdr[:]); err != nil {
		return 0, 0, 0, nil, err
	}
	payload = make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
	if _, err := io.ReadFull(h.c, payload); err != nil {
		return 0, 0, 0, nil, err
	}
	if hdr[3] == h2GoAway && len(payload) < 8 {
		return 0, 0, 0, nil, errors.New("short GOAWAY frame")
	}
	return hdr[3], hdr[4], binary.BigEndian.Uint32(hdr[5:]) & (1<<31 - 1), payload, nil
}

// hpackBlock encodes name/value pairs as HPACK literals, without indexing
// or Huffman coding (RFC 7541, section 6.2.2).
func hpackBlock(kv ...string) []byte {
	var b []byte
	for i := 0; i < len(kv); i += 2 {
		b = append(b, 0)
		for _, s := range kv[i : i+2] {
			b = append(hpackInt(b, uint64(len(s))), s...)
		}
	}
	return b
}

// hpackInt encodes v with a 7-bit prefix (RFC 7541, section 5.1).
func hpackInt(b []byte, v uint64) []byte {
	const prefix = 1<<7 - 1
	if v < prefix {
		return append(b, byte(v))
	}
	b, v = append(b, prefix), v-prefix
	for ; v >= 128; v /= 128 {
		b = append(b, byte(v%128)|0x80)
	}
	return append(b, byte(v))
}
