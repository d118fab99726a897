// Package watch is the broker's behaviour watch (ATF B-3, B-4, R-1): it
// feeds every request, issuance, denial and outcome to the behaviour
// monitor and each agent's circuit breaker, and carries out the action
// configured for each anomaly (alert, breaker, demote, kill), auditing and
// notifying it. Baselines are saved in the store and restored at start.
package watch

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/levels"
	"github.com/agentictrust/atf/broker/maturity"
	"github.com/agentictrust/atf/broker/metrics"
	"github.com/agentictrust/atf/broker/monitor"
	"github.com/agentictrust/atf/broker/revoke"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// Notifier tells people what happened.
type Notifier interface {
	Notify(ctx context.Context, kind, agent, role, summary string, detail map[string]string)
}

// Config is what a Watch needs.
type Config struct {
	Store    *store.Store
	Monitor  *monitor.Monitor
	Breakers *monitor.Breakers
	Levels   *levels.Levels
	Revoker  *revoke.Revoker
	Metrics  *metrics.Metrics
	Notifier Notifier
	Maturity maturity.Config
	// Actions maps an anomaly severity to alert, breaker, demote or kill.
	Actions map[string]string
	Log     *slog.Logger
	Now     func() time.Time
}

// Watch watches agents' behaviour.
type Watch struct {
	cfg Config
	// saved is a hash of each agent's baseline as last saved or loaded,
	// so that a save writes only the baselines that changed.
	savedMu sync.Mutex
	seed    maphash.Seed
	saved   map[string]uint64
}

// New returns a Watch whose monitor has the baselines saved in the store.
func New(cfg Config) (*Watch, error) {
	w := &Watch{cfg: cfg, seed: maphash.MakeSeed(), saved: map[string]uint64{}}
	return w, w.loadBaselines()
}

func (w *Watch) db(ctx context.Context) *store.Store {
	return w.cfg.Store.ForRequest(edge.RequestIDs(ctx))
}

// Observe feeds one event to the behaviour monitor and carries out the
// configured action for each anomaly it raises. It reports whether an
// action stopped the agent (breaker, demotion, kill), in which case the
// request that caused it is refused too.
func (w *Watch) Observe(ctx context.Context, ev monitor.Event) (stopped *monitor.Anomaly) {
	if ev.Time.IsZero() {
		ev.Time = w.cfg.Now()
	}
	for _, an := range w.cfg.Monitor.Observe(ev) {
		if w.onAnomaly(ctx, an) && stopped == nil {
			stopped = &an
		}
	}
	return stopped
}

// onAnomaly records, notifies and acts on an anomaly.
func (w *Watch) onAnomaly(ctx context.Context, an monitor.Anomaly) (stopped bool) {
	action := w.cfg.Actions[an.Severity.String()]
	w.cfg.Metrics.Anomalies.WithLabelValues(an.Rule, an.Severity.String()).Inc()
	log := edge.Logger(ctx).With(slog.String(edge.LogAgent, an.Agent), slog.String("rule", an.Rule), slog.String("severity", an.Severity.String()), slog.String("action", action))
	log.Warn("anomaly", slog.String("detail", an.Detail))
	if err := w.db(ctx).AppendAudit(store.AuditRecord{Kind: "anomaly", Actor: "atfd", Subject: an.Agent, Detail: map[string]string{
		"agent": an.Agent, "lineage": an.Lineage, "rule": an.Rule, "severity": an.Severity.String(),
		"score": strconv.FormatFloat(an.Score, 'f', 2, 64), "message": an.Detail, "action": action, "request_id": edge.RequestID(ctx),
	}}); err != nil {
		log.Error("writing the anomaly audit record failed", slog.String(edge.LogError, err.Error()))
	}
	w.cfg.Notifier.Notify(ctx, "anomaly", an.Agent, "", fmt.Sprintf("%s anomaly on %s (%s): %s; action: %s", an.Severity, an.Agent, an.Rule, an.Detail, action),
		map[string]string{"rule": an.Rule, "severity": an.Severity.String(), "action": action})
	reason := fmt.Sprintf("%s anomaly %s: %s", an.Severity, an.Rule, an.Detail)
	switch action {
	case "breaker":
		w.cfg.Breakers.Trip(an.Agent)
		return true
	case "demote":
		if _, _, err := w.cfg.Levels.Demote(ctx, an.Agent, "atfd", reason, w.cfg.Maturity.DemotionSteps); err != nil {
			log.Warn("automatic demotion did not happen", slog.String(edge.LogError, err.Error()))
		}
		return true
	case "kill":
		if _, _, err := w.cfg.Revoker.Kill(ctx, an.Agent, "atfd", reason, false, true); err != nil {
			log.Error("automatic kill failed", slog.String(edge.LogError, err.Error()))
		}
		return true
	}
	return false
}

// Outcome feeds an outcome report to the monitor and, if it is a failure,
// to the breaker. A reported success is a claim, not a request the broker
// saw succeed: it never counts as a half-open breaker's probe, which only
// a real request is (docs/security.md).
func (w *Watch) Outcome(ctx context.Context, agent, role string, success bool) {
	kind := monitor.Failure
	if success {
		kind = monitor.Success
	}
	w.Observe(ctx, monitor.Event{Agent: agent, Role: role, InManifest: true, Kind: kind})
	if !success {
		w.Breaker(ctx, agent, true)
	}
}

// Breaker counts a success or failure on the agent's breaker; a trip
// is audited, notified and, if configured, demotes.
func (w *Watch) Breaker(ctx context.Context, agent string, failure bool) {
	if !w.cfg.Breakers.Record(agent, failure) {
		return
	}
	w.cfg.Metrics.Trips.Inc()
	_, until := w.cfg.Breakers.State(agent)
	reason := fmt.Sprintf("circuit breaker opened until %s after repeated failures or denials", until.Format(time.RFC3339))
	if err := w.db(ctx).AppendAudit(store.AuditRecord{Kind: "breaker_open", Actor: "atfd", Subject: agent, Detail: map[string]string{
		"agent": agent, "until": until.Format(time.RFC3339), "request_id": edge.RequestID(ctx),
	}}); err != nil {
		edge.Logger(ctx).Error("writing the breaker audit record failed", slog.String(edge.LogError, err.Error()))
	}
	w.cfg.Notifier.Notify(ctx, "breaker_open", agent, "", agent+": "+reason, nil)
	if w.cfg.Maturity.DemoteOnBreakerTrip {
		if _, _, err := w.cfg.Levels.Demote(ctx, agent, "atfd", reason, w.cfg.Maturity.DemotionSteps); err != nil {
			edge.Logger(ctx).Warn("automatic demotion did not happen", slog.String(edge.LogError, err.Error()))
		}
	}
}

// BreakerOpen is the refusal while the agent's breaker is open.
func (w *Watch) BreakerOpen(agent string) *fault.Error {
	ok, st, retryAt := w.cfg.Breakers.Allow(agent)
	if ok {
		return nil
	}
	return fault.Limited("circuit_breaker", max(retryAt.Sub(w.cfg.Now()), time.Second), "circuit breaker %s for %s after repeated failures or denials", st, agent)
}

func (w *Watch) BreakerProto(agent string) *adminv1.Breaker {
	st, until := w.cfg.Breakers.State(agent)
	b := &adminv1.Breaker{State: st.String()}
	if !until.IsZero() {
		b.OpenUntil = timestamppb.New(until)
	}
	return b
}

func (w *Watch) BaselineProto(agent string) *adminv1.Baseline {
	b, ok := w.cfg.Monitor.Baseline(agent)
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

// loadBaselines restores the monitor's baselines saved by SaveBaselines
// (and those of a store that kept them all in one value).
func (w *Watch) loadBaselines() error {
	byAgent, legacy, err := w.cfg.Store.Baselines()
	if err != nil {
		return err
	}
	var bs []monitor.Baseline
	if legacy != nil && json.Unmarshal(legacy, &bs) != nil {
		w.cfg.Log.Warn("saved behaviour baselines are unreadable; they form again")
		bs = nil
	}
	bs = slices.DeleteFunc(bs, func(b monitor.Baseline) bool { return byAgent[b.Agent] != nil })
	for agent, raw := range byAgent {
		var b monitor.Baseline
		if err := json.Unmarshal(raw, &b); err != nil || b.Agent != agent {
			w.cfg.Log.Warn("a saved behaviour baseline is unreadable; it forms again", slog.String(edge.LogAgent, agent))
			continue
		}
		bs = append(bs, b)
		w.saved[agent] = maphash.Bytes(w.seed, raw)
	}
	if err := w.cfg.Monitor.Restore(bs); err != nil {
		w.cfg.Log.Warn("saved behaviour baselines were refused; they form again", slog.String(edge.LogError, err.Error()))
		clear(w.saved)
	}
	return nil
}

// SaveBaselines keeps in the store the monitor's baselines that changed
// since they were last saved or loaded.
func (w *Watch) SaveBaselines() {
	w.savedMu.Lock()
	defer w.savedMu.Unlock()
	changed := map[string][]byte{}
	for _, b := range w.cfg.Monitor.Snapshot() {
		raw, err := json.Marshal(b)
		if err != nil {
			w.cfg.Log.Error("saving behaviour baselines failed", slog.String(edge.LogError, err.Error()))
			return
		}
		if w.saved[b.Agent] != maphash.Bytes(w.seed, raw) {
			changed[b.Agent] = raw
		}
	}
	if err := w.cfg.Store.SaveBaselines(changed); err != nil {
		w.cfg.Log.Error("saving behaviour baselines failed", slog.String(edge.LogError, err.Error()))
		return
	}
	for agent, raw := range changed {
		w.saved[agent] = maphash.Bytes(w.seed, raw)
	}
}

// BaselineSaveEvery is how often baselines are saved while serving.
const BaselineSaveEvery = 5 * time.Minute

// BaselineFormed says whether agent's behaviour baseline has formed.
func (w *Watch) BaselineFormed(agent string) bool {
	b, ok := w.cfg.Monitor.Baseline(agent)
	return ok && b.Formed
}
