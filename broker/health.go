package broker

import (
	"context"
	"log/slog"
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
		var verr, werr error
		var probes sync.WaitGroup
		for _, p := range []struct {
			healthy func(context.Context) error
			err     *error
		}{{s.vault.Healthy, &verr}, {s.source.Healthy, &werr}} {
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
		s.metrics.Up.WithLabelValues("vault").Set(metrics.BoolGauge(verr == nil))
		s.metrics.Up.WithLabelValues("workload_api").Set(metrics.BoolGauge(werr == nil))
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

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}
