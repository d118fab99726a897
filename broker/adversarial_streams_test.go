package broker_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// openHealthWatch opens a health Watch on conn and waits for its first
// status, so the stream is surely open on the server.
func openHealthWatch(ctx context.Context, conn *grpc.ClientConn) error {
	w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	return err
}

// A client without a certificate cannot open more streams on one
// connection than limits.max_streams_per_connection: the next one waits
// for a free slot (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS) instead of
// costing the broker memory, while another connection is served.
func TestAdversarialStreamsPerConnection(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	const limit = 8
	cfg.Limits.MaxStreamsPerConnection = limit
	b := f.Start(t, cfg)
	conn := dialNoClientCert(t, b)
	for i := range limit {
		if err := openHealthWatch(t.Context(), conn); err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	err := openHealthWatch(ctx, conn)
	brokertest.WantCode(t, err, codes.DeadlineExceeded)
	if err := openHealthWatch(t.Context(), dialNoClientCert(t, b)); err != nil {
		t.Fatalf("a watch on another connection: %v", err)
	}
}

// An agent cannot hold more authenticated streams open than
// limits.max_streams across its connections: the next one is refused
// with ResourceExhausted, unary calls still go through, and a closed
// stream frees its slot.
func TestAdversarialStreamsBounded(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	const limit = 8
	cfg.Limits.MaxStreams = limit
	b := f.Start(t, cfg)
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_SENIOR, "reports-read")
	open := func(ctx context.Context, bc brokerv1.BrokerServiceClient) error {
		w, err := bc.WatchRevocations(ctx, &brokerv1.WatchRevocationsRequest{})
		if err == nil {
			_, err = w.Header()
		}
		if err == nil {
			err = ctx.Err()
		}
		return err
	}
	conns := []brokerv1.BrokerServiceClient{b.Dial(t, agent).Broker, b.Dial(t, agent).Broker}
	var cancels []context.CancelFunc
	for i := range limit {
		ctx, cancel := context.WithCancel(t.Context())
		cancels = append(cancels, cancel)
		if err := open(ctx, conns[i%2]); err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
	}
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	w, err := conns[0].WatchRevocations(ctx, &brokerv1.WatchRevocationsRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	brokertest.WantCode(t, err, codes.ResourceExhausted, "too many open streams", "limits.max_streams")
	if _, err := conns[1].FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
		t.Fatalf("a unary call with the streams full: %v", err)
	}
	cancels[0]()
	devtest.WaitFor(t, 10*time.Second, "a closed stream's slot to be free", func() bool {
		ctx, cancel := context.WithCancel(t.Context())
		cancels = append(cancels, cancel)
		if err := open(ctx, conns[0]); err != nil {
			cancel()
			return false
		}
		return true
	})
}

// One IP address cannot hold more connections open than
// limits.max_connections_per_ip: the next one is closed before its TLS
// handshake, and a closed connection frees its place.
func TestAdversarialConnectionsPerIP(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	const limit = 4
	cfg.Limits.MaxConnectionsPerIP = limit
	b := f.Start(t, cfg)
	check := func(conn *grpc.ClientConn) error {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	var conns []*grpc.ClientConn
	for i := range limit {
		conns = append(conns, dialNoClientCert(t, b))
		if err := check(conns[i]); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	brokertest.WantCode(t, check(dialNoClientCert(t, b)), codes.Unavailable)
	conns[0].Close()
	devtest.WaitFor(t, 10*time.Second, "a closed connection's place to be free", func() bool {
		return check(dialNoClientCert(t, b)) == nil
	})
}

// An admin's event stream ends, Unauthenticated, when the X.509-SVID it
// was opened with expires, though the connection stays up.
func TestAdversarialStreamEndsWithSVID(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	const ttl = 5 * time.Second
	short, err := f.Stack.MintX509(t.Context(), f.Admin, ttl)
	if err != nil {
		t.Fatal(err)
	}
	expires := leafExpiry(t, short)
	s, err := b.DialFiles(t, short).Admin.WatchEvents(t.Context(), &adminv1.WatchEventsRequest{})
	if err == nil {
		_, err = s.Header()
	}
	if err != nil {
		t.Fatalf("WatchEvents with a fresh SVID: %v", err)
	}
	events := follow(s)
	r, ok := within(events, time.Until(expires)+streamWait)
	if !ok {
		t.Fatalf("the event stream was still open %s after the admin's SVID expired", streamWait)
	}
	if time.Now().Before(expires) {
		t.Errorf("the stream ended at %s, before the SVID expired at %s", time.Now(), expires)
	}
	brokertest.WantCode(t, r.err, codes.Unauthenticated, "expired")
}

// A killed or deregistered agent hears the revocation of what it held on
// its revocation stream, then the stream ends, PermissionDenied, saying
// why; it cannot open a new one.
func TestAdversarialStoppedAgentStreamEnds(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	admin := b.Dial(t, f.Admin)
	for _, tt := range []struct {
		name string
		stop func(id string) error
		want string
	}{
		{"kill", func(id string) error {
			_, err := admin.Response.Kill(t.Context(), &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: id}, Reason: "streams test"})
			return err
		}, "kill switch"},
		{"deregister", func(id string) error {
			_, err := admin.Admin.DeregisterAgent(t.Context(), &adminv1.DeregisterAgentRequest{SpiffeId: id, Reason: "streams test"})
			return err
		}, "deregistered"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			agent := f.ID(t, "agent")
			b.Register(t, agent, brokerv1.Level_LEVEL_SENIOR, "reports-read")
			bc := b.Dial(t, agent).Broker
			if _, err := bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
				t.Fatal(err)
			}
			w, err := bc.WatchRevocations(t.Context(), &brokerv1.WatchRevocationsRequest{})
			if err == nil {
				_, err = w.Header()
			}
			if err != nil {
				t.Fatal(err)
			}
			events := follow(w)
			if err := tt.stop(agent.String()); err != nil {
				t.Fatal(err)
			}
			r, ok := within(events, streamWait)
			if !ok || r.err != nil || len(r.msg.GetAccessors()) != 1 || r.msg.GetReason() != "streams test" {
				t.Fatalf("first message after the stop = %v, %v (in time: %v); want the revocation of its credential", r.msg, r.err, ok)
			}
			r, ok = within(events, streamWait)
			if !ok {
				t.Fatalf("the revocation stream was still open %s after the agent was stopped", streamWait)
			}
			brokertest.WantCode(t, r.err, codes.PermissionDenied, agent.String(), tt.want)

			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			w, err = bc.WatchRevocations(ctx, &brokerv1.WatchRevocationsRequest{})
			if err == nil {
				_, err = w.Recv()
			}
			brokertest.WantCode(t, err, codes.PermissionDenied, tt.want)
		})
	}
}
