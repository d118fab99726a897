package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/monitor"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// observe feeds one event to the behaviour monitor and carries out the
// configured action for each anomaly it raises. It reports whether an
// action stopped the agent (breaker, demotion, kill), in which case the
// request that caused it is refused too.
func (s *Server) observe(ctx context.Context, ev monitor.Event) (stopped *monitor.Anomaly) {
	if ev.Time.IsZero() {
		ev.Time = s.now()
	}
	for _, an := range s.monitor.Observe(ev) {
		if s.onAnomaly(ctx, an) && stopped == nil {
			stopped = &an
		}
	}
	return stopped
}

// onAnomaly records, notifies and acts on an anomaly.
func (s *Server) onAnomaly(ctx context.Context, an monitor.Anomaly) (stopped bool) {
	action := s.cfg.Monitor.Actions[an.Severity.String()]
	s.metrics.anomalies.WithLabelValues(an.Rule, an.Severity.String()).Inc()
	log := edge.Logger(ctx).With(slog.String(edge.LogAgent, an.Agent), slog.String("rule", an.Rule), slog.String("severity", an.Severity.String()), slog.String("action", action))
	log.Warn("anomaly", slog.String("detail", an.Detail))
	if err := s.db(ctx).AppendAudit(store.AuditRecord{Kind: "anomaly", Actor: "atfd", Subject: an.Agent, Detail: map[string]string{
		"agent": an.Agent, "lineage": an.Lineage, "rule": an.Rule, "severity": an.Severity.String(),
		"score": strconv.FormatFloat(an.Score, 'f', 2, 64), "message": an.Detail, "action": action, "request_id": edge.RequestID(ctx),
	}}); err != nil {
		log.Error("writing the anomaly audit record failed", slog.String(edge.LogError, err.Error()))
	}
	s.notify(ctx, "anomaly", an.Agent, "", fmt.Sprintf("%s anomaly on %s (%s): %s; action: %s", an.Severity, an.Agent, an.Rule, an.Detail, action),
		map[string]string{"rule": an.Rule, "severity": an.Severity.String(), "action": action})
	reason := fmt.Sprintf("%s anomaly %s: %s", an.Severity, an.Rule, an.Detail)
	switch action {
	case "breaker":
		s.breakers.Trip(an.Agent)
		return true
	case "demote":
		if _, _, err := s.demote(ctx, an.Agent, "atfd", reason, s.maturity.DemotionSteps); err != nil {
			log.Warn("automatic demotion did not happen", slog.String(edge.LogError, err.Error()))
		}
		return true
	case "kill":
		start := time.Now()
		rev, killed, err := s.db(ctx).KillAgent(an.Agent, "atfd", reason, false)
		if err != nil {
			log.Error("automatic kill failed", slog.String(edge.LogError, err.Error()))
			return true
		}
		for _, k := range killed {
			s.anchors.drop(store.AgentNode(k))
		}
		s.approvals.fire()
		s.finishRevocation(ctx, store.Root{AgentID: an.Agent}, "atfd", reason, rev, start, time.Since(start), true)
		return true
	}
	return false
}

// observeOutcome feeds an outcome report to the monitor and the breaker.
func (s *Server) observeOutcome(ctx context.Context, agent, role string, success bool) {
	kind := monitor.Failure
	if success {
		kind = monitor.Success
	}
	s.observe(ctx, monitor.Event{Agent: agent, Role: role, InManifest: true, Kind: kind})
	s.recordBreaker(ctx, agent, !success)
}

// recordBreaker counts a success or failure on the agent's breaker; a trip
// is audited, notified and, if configured, demotes.
func (s *Server) recordBreaker(ctx context.Context, agent string, failure bool) {
	if !s.breakers.Record(agent, failure) {
		return
	}
	s.metrics.trips.Inc()
	_, until := s.breakers.State(agent)
	reason := fmt.Sprintf("circuit breaker opened until %s after repeated failures or denials", until.Format(time.RFC3339))
	if err := s.db(ctx).AppendAudit(store.AuditRecord{Kind: "breaker_open", Actor: "atfd", Subject: agent, Detail: map[string]string{
		"agent": agent, "until": until.Format(time.RFC3339), "request_id": edge.RequestID(ctx),
	}}); err != nil {
		edge.Logger(ctx).Error("writing the breaker audit record failed", slog.String(edge.LogError, err.Error()))
	}
	s.notify(ctx, "breaker_open", agent, "", agent+": "+reason, nil)
	if s.maturity.DemoteOnBreakerTrip {
		if _, _, err := s.demote(ctx, agent, "atfd", reason, s.maturity.DemotionSteps); err != nil {
			edge.Logger(ctx).Warn("automatic demotion did not happen", slog.String(edge.LogError, err.Error()))
		}
	}
}

// breakerOpen is the refusal while the agent's breaker is open.
func (s *Server) breakerOpen(agent string) *fault.Error {
	ok, st, retryAt := s.breakers.Allow(agent)
	if ok {
		return nil
	}
	return fault.Limited("circuit_breaker", max(retryAt.Sub(s.now()), time.Second), "circuit breaker %s for %s after repeated failures or denials", st, agent)
}

func (s *Server) breakerToProto(agent string) *adminv1.Breaker {
	st, until := s.breakers.State(agent)
	b := &adminv1.Breaker{State: st.String()}
	if !until.IsZero() {
		b.OpenUntil = timestamppb.New(until)
	}
	return b
}

func (s *Server) baselineToProto(agent string) *adminv1.Baseline {
	b, ok := s.monitor.Baseline(agent)
	if !ok {
		return nil
	}
	out := &adminv1.Baseline{Formed: b.Formed, Events: int64(b.Events), Since: timestamppb.New(b.Since), RatePerMinute: b.RateMean,
		Roles: map[string]int64{}, DenialRatio: b.DenialRatio(), Delegations: int64(b.Delegations)}
	for r, n := range b.Roles {
		out.Roles[r] = int64(n)
	}
	for _, n := range b.Hours {
		out.Hours = append(out.Hours, int64(n))
	}
	return out
}

// loadBaselines restores the monitor's baselines saved by saveBaselines.
func (s *Server) loadBaselines() error {
	raw, err := s.store.Baselines()
	if err != nil || len(raw) == 0 {
		return err
	}
	var bs []monitor.Baseline
	if err := json.Unmarshal(raw, &bs); err != nil {
		s.log.Warn("saved behaviour baselines are unreadable; they form again", slog.String(edge.LogError, err.Error()))
		return nil
	}
	if err := s.monitor.Restore(bs); err != nil {
		s.log.Warn("saved behaviour baselines were refused; they form again", slog.String(edge.LogError, err.Error()))
	}
	return nil
}

// saveBaselines keeps the monitor's baselines in the store.
func (s *Server) saveBaselines() {
	raw, err := json.Marshal(s.monitor.Snapshot())
	if err == nil {
		err = s.store.SaveBaselines(raw)
	}
	if err != nil {
		s.log.Error("saving behaviour baselines failed", slog.String(edge.LogError, err.Error()))
	}
}

// baselineSaveEvery is how often baselines are saved while serving.
const baselineSaveEvery = 5 * time.Minute
