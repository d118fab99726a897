// Package tracing sets up OpenTelemetry for atfd: a span for every call
// (continuing the caller's trace) and for every credential decision, with
// its Vault issuance and store record as children. Spans carry ids and
// names, never tokens.
package tracing

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/agentictrust/atf/broker/config"
)

// Span and attribute names.
const (
	SpanDecision     = "atf.decision"
	SpanVaultIssue   = "atf.vault.issue"
	SpanStoreRecord  = "atf.store.record"
	SpanVaultDynamic = "atf.vault.dynamic"
	AttrAgent        = "atf.agent"
	AttrRole         = "atf.role"
	AttrDecision     = "atf.decision"
	AttrReason       = "atf.reason"
	AttrDecisionID   = "atf.decision_id"
	AttrRequestID    = "atf.request_id"
	AttrPolicyVer    = "atf.policy_version"
	TracerName       = "github.com/agentictrust/atf/broker"
	tracingBatchTime = time.Second
)

// Tracing is the broker's tracer and how to flush it at Close.
type Tracing struct {
	Tracer   trace.Tracer
	Shutdown func(context.Context) error
	// ServerOption instruments the gRPC server, continuing callers' traces;
	// nil when tracing is off.
	ServerOption grpc.ServerOption
}

// New sets up OTLP/gRPC export as cfg says, or a tracer that does
// nothing. Spans carry ids and names, never tokens.
func New(cfg config.TracingConfig) (*Tracing, error) {
	if cfg.Endpoint == "" {
		return &Tracing{Tracer: noop.NewTracerProvider().Tracer(TracerName), Shutdown: func(context.Context) error { return nil }}, nil
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(cfg.Endpoint)}
	if cfg.Insecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	// The exporter connects lazily: a collector that is down loses spans,
	// never requests.
	exp, err := otlptracegrpc.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	ratio := 1.0
	if cfg.SampleRatio != nil {
		ratio = *cfg.SampleRatio
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(tracingBatchTime)),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName("atfd"))),
	)
	prop := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	return &Tracing{
		Tracer:       tp.Tracer(TracerName),
		Shutdown:     tp.Shutdown,
		ServerOption: grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(prop))),
	}, nil
}

// EndSpan ends span with the gRPC code its operation is answered with
// (edge.Code) as its status.
func EndSpan(span trace.Span, code codes.Code) {
	if code != codes.OK {
		span.SetStatus(otelcodes.Error, code.String())
	}
	span.End()
}

// EndDecision ends a decision's span with its outcome: decision (allow,
// deny, limited, pending, error), reason and the policy version.
func EndDecision(span trace.Span, decision, reason, policyVersion string, code codes.Code) {
	span.SetAttributes(attribute.String(AttrDecision, decision), attribute.String(AttrReason, reason), attribute.String(AttrPolicyVer, policyVersion))
	EndSpan(span, code)
}
