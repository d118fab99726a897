package broker

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/agentictrust/atf/broker/edge"
)

// metrics are the broker's Prometheus metrics, served on their own
// listener (metrics_addr) so that scraping never shares the gRPC port's
// mutual TLS.
type metrics struct {
	reg       *prometheus.Registry
	decisions *prometheus.CounterVec
	issuance  prometheus.Histogram
	anomalies *prometheus.CounterVec
	trips     prometheus.Counter
	up        *prometheus.GaugeVec
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atf_decisions_total", Help: "Credential decisions by outcome (allow, deny, pending, limited) and reason.",
		}, []string{"outcome", "reason"}),
		issuance: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "atf_issuance_seconds", Help: "Time to issue a credential, from request to answer.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		anomalies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atf_anomalies_total", Help: "Behaviour anomalies by rule and severity.",
		}, []string{"rule", "severity"}),
		trips: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "atf_breaker_trips_total", Help: "Times an agent's circuit breaker opened.",
		}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "atf_dependency_up", Help: "1 if the dependency (vault, workload_api) answered the last health probe.",
		}, []string{"dependency"}),
	}
	m.reg.MustRegister(m.decisions, m.issuance, m.anomalies, m.trips, m.up,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "atf_live_credentials", Help: "Credentials issued and neither revoked nor expired."},
			func() float64 { return float64(s.live.total()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "atf_revocation_queue_depth", Help: "Vault revocations queued, not yet confirmed."},
			func() float64 {
				q, err := s.store.PendingRevocations()
				if err != nil {
					return -1
				}
				return float64(len(q))
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "atf_policy_version", Help: "Version of the segmentation policy in force (0: none)."},
			func() float64 {
				if p := s.policy.Load(); p != nil {
					return float64(p.Version())
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "atf_vault_breaker_open", Help: "1 while the circuit breaker in front of Vault fails issuance fast."},
			func() float64 { return boolGauge(s.issuer.Stats().BreakerOpen) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "atf_vault_breaker_trips_total", Help: "Times the circuit breaker in front of Vault opened."},
			func() float64 { return float64(s.issuer.Stats().BreakerTrips) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "atf_vault_late_tokens_revoked_total", Help: "Tokens Vault created after the broker stopped waiting for its answer, which the broker then revoked."},
			func() float64 { return float64(s.issuer.Stats().LateTokensRevoked) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "atf_global_kill", Help: "1 while the global kill switch holds every agent."},
			func() float64 {
				if s.globalKill.Load() != nil {
					return 1
				}
				return 0
			}),
	)
	return m
}

// serveMetrics serves /metrics on addr until ctx ends.
func (s *Server) serveMetrics(ctx context.Context, lis net.Listener) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("metrics listener failed", slog.String(edge.LogError, err.Error()))
	}
}

// probeHealth reports the broker NOT_SERVING while Vault or the Workload
// API does not answer (nothing can be issued, or SVIDs and bundles go
// stale), and SERVING again when both do. It probes every interval until
// ctx ends.
func (s *Server) probeHealth(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	serving := true
	for {
		// Each probe has its own deadline: a Vault that hangs must not make
		// the Workload API look down, nor the other way round.
		var verr, werr error
		var probes sync.WaitGroup
		for _, p := range []struct {
			healthy func(context.Context) error
			err     *error
		}{{s.issuer.Healthy, &verr}, {s.source.Healthy, &werr}} {
			probes.Go(func() {
				pctx, cancel := context.WithTimeout(ctx, min(interval, 2*time.Second))
				defer cancel()
				*p.err = p.healthy(pctx)
			})
		}
		probes.Wait()
		if ctx.Err() != nil {
			return
		}
		s.metrics.up.WithLabelValues("vault").Set(boolGauge(verr == nil))
		s.metrics.up.WithLabelValues("workload_api").Set(boolGauge(werr == nil))
		ok := verr == nil && werr == nil
		if ok != serving {
			serving = ok
			st := healthpb.HealthCheckResponse_SERVING
			if !ok {
				st = healthpb.HealthCheckResponse_NOT_SERVING
				s.log.Error("not serving: a dependency does not answer", slog.Any("vault", errText(verr)), slog.Any("workload_api", errText(werr)))
			} else {
				s.log.Info("serving again: Vault and the Workload API answer")
			}
			for _, svc := range healthServices {
				s.health.SetServingStatus(svc, st)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// healthServices are the names the health service reports on: the whole
// broker ("") and its agent-facing service.
var healthServices = []string{"", "atf.broker.v1.BrokerService"}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}
