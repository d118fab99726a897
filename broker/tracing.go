package broker

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
	"google.golang.org/grpc/status"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Span and attribute names.
const (
	spanDecision     = "atf.decision"
	spanVaultIssue   = "atf.vault.issue"
	spanStoreRecord  = "atf.store.record"
	attrAgent        = "atf.agent"
	attrRole         = "atf.role"
	attrDecision     = "atf.decision"
	attrReason       = "atf.reason"
	attrDecisionID   = "atf.decision_id"
	attrRequestID    = "atf.request_id"
	attrPolicyVer    = "atf.policy_version"
	tracerName       = "github.com/agentictrust/atf/broker"
	tracingBatchTime = time.Second
)

// tracing is the broker's tracer and how to flush it at Close.
type tracing struct {
	tracer   trace.Tracer
	shutdown func(context.Context) error
	// serverOption instruments the gRPC server, continuing callers' traces;
	// nil when tracing is off.
	serverOption grpc.ServerOption
}

// newTracing sets up OTLP/gRPC export as cfg says, or a tracer that does
// nothing. Spans carry ids and names, never tokens.
func newTracing(cfg config.TracingConfig) (*tracing, error) {
	if cfg.Endpoint == "" {
		return &tracing{tracer: noop.NewTracerProvider().Tracer(tracerName), shutdown: func(context.Context) error { return nil }}, nil
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(cfg.Endpoint)}
	if cfg.Insecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	// The exporter connects lazily: a collector that is down loses spans,
	// never requests.
	exp, err := otlptracegrpc.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("broker: tracing: %w", err)
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
	return &tracing{
		tracer:       tp.Tracer(tracerName),
		shutdown:     tp.Shutdown,
		serverOption: grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(prop))),
	}, nil
}

// endSpan ends span with err's gRPC code as its status.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(otelcodes.Error, status.Code(err).String())
	}
	span.End()
}

// traceDecision ends a decision's span with its outcome.
func traceDecision(span trace.Span, resp *brokerv1.FetchCredentialResponse, why map[string]string, err error) {
	decision, reason := why["decision"], why["reason"]
	switch {
	case resp.GetCredential() != nil:
		decision, reason = "allow", string(authz.Allowed)
	case resp.GetApproval() != nil:
		decision = "pending"
	case decision == "":
		decision = "error"
	}
	span.SetAttributes(attribute.String(attrDecision, decision), attribute.String(attrReason, reason), attribute.String(attrPolicyVer, why["policy_version"]))
	endSpan(span, err)
}
