package broker

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/agentictrust/atf/broker/metrics"
)

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
		var verr, werr, serr error
		var probes sync.WaitGroup
		for _, p := range []struct {
			healthy func(context.Context) error
			err     *error
		}{{s.vault.Healthy, &verr}, {s.source.Healthy, &werr}, {s.storeHealthy, &serr}} {
			probes.Go(func() {
				// At least a second, even when probing more often: a busy
				// host must not read as a dependency down.
				pctx, cancel := context.WithTimeout(ctx, min(max(interval, time.Second), 2*time.Second))
				defer cancel()
				*p.err = p.healthy(pctx)
			})
		}
		probes.Wait()
		if ctx.Err() != nil {
			return
		}
		s.metrics.Up.WithLabelValues("vault").Set(metrics.BoolGauge(verr == nil))
		s.metrics.Up.WithLabelValues("workload_api").Set(metrics.BoolGauge(werr == nil))
		if s.etcd != nil {
			s.metrics.Up.WithLabelValues("store").Set(metrics.BoolGauge(serr == nil))
		}
		ok := verr == nil && werr == nil && serr == nil
		if ok != serving {
			serving = ok
			st := healthpb.HealthCheckResponse_SERVING
			if !ok {
				st = healthpb.HealthCheckResponse_NOT_SERVING
				s.log.Error("not serving: a dependency does not answer", slog.Any("vault", errText(verr)), slog.Any("workload_api", errText(werr)),
					slog.Any("store", errText(serr)))
			} else {
				s.log.Info("serving again: Vault, the Workload API and the store answer")
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

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// readyHandler answers the metrics listener's readiness check (GET
// metrics.ReadyPath) with the gRPC health service's answer for the whole
// broker: 200 while it is SERVING, 503 otherwise, the status in the body.
// The same answer as grpc.health.v1 in plain HTTP, for the kubelet, whose
// gRPC probe cannot reach the TLS-only gRPC port (docs/operations.md,
// Kubernetes).
func readyHandler(h healthpb.HealthServer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := healthpb.HealthCheckResponse_NOT_SERVING
		if resp, err := h.Check(r.Context(), &healthpb.HealthCheckRequest{}); err == nil {
			st = resp.GetStatus()
		}
		code := http.StatusOK
		if st != healthpb.HealthCheckResponse_SERVING {
			code = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		fmt.Fprintln(w, st)
	})
}

// storeHealthy checks that a store in etcd answers a linearizable read:
// a replica cut off from the cluster's quorum fails it (and every call
// that reads the store fails within store.etcd.timeout, so nothing is
// issued), and reports NOT_SERVING until it answers again. A bbolt file is
// always there.
func (s *Server) storeHealthy(ctx context.Context) error {
	if s.etcd == nil {
		return nil
	}
	if _, err := s.etcd.Get(ctx, s.cfg.Store.Etcd.Prefix+"health"); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	return nil
}
