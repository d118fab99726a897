// Package metrics holds atfd's Prometheus metrics and serves them on
// their own listener (metrics_addr), so that scraping never shares the
// gRPC port's mutual TLS.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/store/kv"
	"github.com/agentictrust/atf/broker/vault"
)

// Metrics are the broker's Prometheus metrics.
type Metrics struct {
	reg *prometheus.Registry
	// Decisions counts credential decisions by outcome and reason;
	// Issuance times issuances; Anomalies counts anomalies by rule and
	// severity; Trips counts agents' breakers opening; Up is 1 per
	// dependency that answered its last health probe.
	Decisions *prometheus.CounterVec
	Issuance  prometheus.Histogram
	Anomalies *prometheus.CounterVec
	Trips     prometheus.Counter
	Up        *prometheus.GaugeVec
	// Suppressed counts refusals counted in an aggregated audit record
	// instead of one of their own, by record kind and reason;
	// CallsLimited the agent API calls refused by limits.call_rate, by
	// method (docs/security.md).
	Suppressed   *prometheus.CounterVec
	CallsLimited *prometheus.CounterVec
}

// State is what the gauges read from the running broker.
type State struct {
	LiveCredentials    func() int
	PendingRevocations func() (int, error)
	PolicyVersion      func() uint64
	Vault              func() vault.Stats
	GlobalKill         func() bool
	// LeadingQueue says this replica drains the revocation queue (always,
	// alone on a bbolt file).
	LeadingQueue func() bool
	// Replicas is the number of replicas sharing the store (1 on bbolt).
	Replicas func() int
	// Etcd, for a store in etcd (nil on bbolt), is what this process's
	// store transactions asked of etcd (kv.EtcdCounts).
	Etcd func() kv.EtcdStats
}

// New returns the metrics, their gauges reading s.
func New(s State) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atf_decisions_total", Help: "Credential decisions by outcome (allow, deny, pending, limited) and reason.",
		}, []string{"outcome", "reason"}),
		Issuance: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "atf_issuance_seconds", Help: "Time to issue a credential, from request to answer.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		Anomalies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atf_anomalies_total", Help: "Behaviour anomalies by rule and severity.",
		}, []string{"rule", "severity"}),
		Trips: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "atf_breaker_trips_total", Help: "Times an agent's circuit breaker opened.",
		}),
		Up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "atf_dependency_up", Help: "1 if the dependency (vault, workload_api) answered the last health probe.",
		}, []string{"dependency"}),
		Suppressed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atf_refusals_suppressed_total", Help: "Refusals counted in an aggregated audit record instead of one of their own, by kind and reason.",
		}, []string{"kind", "reason"}),
		CallsLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atf_calls_limited_total", Help: "Agent API calls refused by limits.call_rate, by method.",
		}, []string{"method"}),
	}
	m.reg.MustRegister(m.Decisions, m.Issuance, m.Anomalies, m.Trips, m.Up, m.Suppressed, m.CallsLimited,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "atf_live_credentials", Help: "Credentials issued and neither revoked nor expired."},
			func() float64 { return float64(s.LiveCredentials()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "atf_revocation_queue_depth", Help: "Vault revocations queued, not yet confirmed."},
			func() float64 {
				n, err := s.PendingRevocations()
				if err != nil {
					return -1
				}
				return float64(n)
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "atf_replicas", Help: "Replicas sharing the store, as this one counts them (1 on a bbolt file)."},
			func() float64 { return float64(s.Replicas()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "atf_revocation_queue_leader", Help: "1 while this replica drains the revocation queue (one replica at a time on etcd)."},
			func() float64 { return BoolGauge(s.LeadingQueue()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "atf_policy_version", Help: "Version of the segmentation policy in force (0: none)."},
			func() float64 {
				return float64(s.PolicyVersion())
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "atf_vault_breaker_open", Help: "1 while the circuit breaker in front of Vault fails issuance fast."},
			func() float64 { return BoolGauge(s.Vault().BreakerOpen) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "atf_vault_breaker_trips_total", Help: "Times the circuit breaker in front of Vault opened."},
			func() float64 { return float64(s.Vault().BreakerTrips) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "atf_vault_late_tokens_revoked_total", Help: "Tokens Vault created after the broker stopped waiting for its answer, which the broker then revoked."},
			func() float64 { return float64(s.Vault().LateTokensRevoked) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "atf_global_kill", Help: "1 while the global kill switch holds every agent."},
			func() float64 {
				return BoolGauge(s.GlobalKill())
			}),
	)
	if s.Etcd != nil {
		m.reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "atf_store_etcd_conflicts_total",
				Help: "Store transactions in etcd that conflicted with a concurrent writer (another request or replica) and ran again."},
				func() float64 { return float64(s.Etcd().Conflicts) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "atf_store_etcd_prefetches_total",
				Help: "Prefetch requests of store transactions to etcd: the keys a transaction names, and the ends of buckets it walks, in one request."},
				func() float64 { return float64(s.Etcd().Prefetches) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "atf_store_etcd_single_reads_total",
				Help: "Single read requests of store transactions to etcd (a key, or a page of a bucket), besides the prefetches."},
				func() float64 { return float64(s.Etcd().Gets) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "atf_store_etcd_recent_reads_total",
				Help: "Store transactions in etcd whose first read was served by a member without the leader's confirmation (a recent snapshot, checked at commit)."},
				func() float64 { return float64(s.Etcd().Recent) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "atf_store_etcd_stale_snapshots_total",
				Help: "Store transactions in etcd whose recent snapshot was found older than the latest state at commit, and which ran again on it (counted among the conflicts too)."},
				func() float64 { return float64(s.Etcd().Stale) }),
		)
	}
	return m
}

// ReadyPath is where Serve answers ready's readiness check.
const ReadyPath = "/readyz"

// Serve serves /metrics, and ready on ReadyPath, on lis until ctx ends.
func (m *Metrics) Serve(ctx context.Context, lis net.Listener, ready http.Handler, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.Handle("GET "+ReadyPath, ready)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("metrics listener failed", slog.String(edge.LogError, err.Error()))
	}
}

// BoolGauge is a gauge value of b.
func BoolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
