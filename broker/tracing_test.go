package broker_test

import (
	"context"
	"encoding/hex"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// collector is an OTLP/gRPC trace receiver on loopback: what a real
// OpenTelemetry collector is to atfd.
type collector struct {
	coltracepb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (c *collector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			c.spans = append(c.spans, ss.GetSpans()...)
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (c *collector) named(name string) []*tracepb.Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*tracepb.Span
	for _, s := range c.spans {
		if s.GetName() == name {
			out = append(out, s)
		}
	}
	return out
}

func attrs(s *tracepb.Span) map[string]string {
	m := map[string]string{}
	for _, kv := range s.GetAttributes() {
		m[kv.GetKey()] = anyString(kv.GetValue())
	}
	return m
}

func anyString(v *commonpb.AnyValue) string {
	if s, ok := v.GetValue().(*commonpb.AnyValue_StringValue); ok {
		return s.StringValue
	}
	return v.String()
}

// With tracing on, every decision is a span exported over OTLP/gRPC, with
// the agent, role, outcome and reason, continuing the caller's trace; an
// issuance has child spans for Vault and the store; no token is in a span.
func TestTracing(t *testing.T) {
	col := &collector{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, col)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Tracing = config.TracingConfig{Endpoint: lis.Addr().String(), Insecure: true}
	b := f.Start(t, cfg)
	agent := f.ID(t, "traced")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read", "reports-write")
	bc := b.Dial(t, agent).Broker

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	ctx := metadata.AppendToOutgoingContext(t.Context(), "traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	r, err := bc.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read"})
	if err != nil {
		t.Fatal(err)
	}
	token := r.GetCredential().GetToken()
	if _, err := bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-write"}); err == nil {
		t.Fatal("an intern got a write credential")
	}

	devtest.WaitFor(t, 15*time.Second, "two decision spans at the collector", func() bool { return len(col.named("atf.decision")) >= 2 })
	byDecision := map[string]*tracepb.Span{}
	for _, s := range col.named("atf.decision") {
		a := attrs(s)
		if a["atf.agent"] != agent.String() {
			t.Errorf("decision span for %q, want %s", a["atf.agent"], agent)
		}
		byDecision[a["atf.decision"]] = s
	}
	allow, deny := byDecision["allow"], byDecision["deny"]
	if allow == nil || deny == nil {
		t.Fatalf("want an allow and a deny span, got %v", byDecision)
	}
	if a := attrs(allow); a["atf.role"] != "reports-read" || a["atf.reason"] != "allowed" || a["atf.decision_id"] != r.GetCredential().GetDecisionId() || a["atf.request_id"] == "" {
		t.Errorf("allow span attributes %v", a)
	}
	if a := attrs(deny); a["atf.role"] != "reports-write" || a["atf.reason"] != "class_not_allowed" {
		t.Errorf("deny span attributes %v", a)
	}
	// The span's status is the code the caller gets.
	if st := deny.GetStatus(); st.GetCode() != tracepb.Status_STATUS_CODE_ERROR || st.GetMessage() != "PermissionDenied" {
		t.Errorf("deny span status %v, want an error saying PermissionDenied", st)
	}
	if got := hex.EncodeToString(allow.GetTraceId()); got != traceID {
		t.Errorf("the decision span is in trace %s, not the caller's %s", got, traceID)
	}
	devtest.WaitFor(t, 15*time.Second, "the issuance's child spans", func() bool {
		return len(col.named("atf.vault.issue")) >= 1 && len(col.named("atf.store.record")) >= 1
	})
	for _, name := range []string{"atf.vault.issue", "atf.store.record"} {
		child := col.named(name)[0]
		if string(child.GetParentSpanId()) != string(allow.GetSpanId()) {
			t.Errorf("%s is not a child of the decision span", name)
		}
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	for _, s := range col.spans {
		for k, v := range attrs(s) {
			if strings.Contains(v, token) {
				t.Errorf("span %s attribute %s holds the token", s.GetName(), k)
			}
		}
	}
}
