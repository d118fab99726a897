package broker_test

import (
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// An agent's behaviour baseline survives a restart, kept under a key of
// its own; a save writes only the baselines that changed.
func TestBaselinesSurviveARestart(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Monitor = config.MonitorConfig{BaselineWindow: 365 * 24 * time.Hour, BaselineOps: 5, Actions: map[string]string{"low": "alert", "medium": "alert", "high": "alert", "critical": "alert"}}
	e := newDelegEnv(t, f, cfg)
	agent := e.register(t, "agent", brokerv1.Level_LEVEL_INTERN, "reports-read")
	quiet := e.register(t, "quiet", brokerv1.Level_LEVEL_INTERN, "reports-read")
	for range 6 {
		agent.mustFetch(t, "reports-read", "")
	}
	quiet.mustFetch(t, "reports-read", "")
	formed := func() bool {
		m, err := e.b.Dial(t, f.Admin).Maturity.GetMaturity(t.Context(), &adminv1.GetMaturityRequest{SpiffeId: agent.id.String()})
		if err != nil {
			t.Fatal(err)
		}
		return m.GetBaseline().GetFormed()
	}
	if !formed() {
		t.Fatal("the baseline did not form")
	}
	e.b.Stop()
	saved := func() map[string][]byte {
		s, err := store.Open(cfg.StorePath, store.Options{AuditDir: cfg.StorePath + ".audit"})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		byAgent, legacy, err := s.Baselines()
		if err != nil || legacy != nil {
			t.Fatalf("Baselines = %d, legacy %d bytes, %v", len(byAgent), len(legacy), err)
		}
		return byAgent
	}
	first := saved()
	if first[agent.id.String()] == nil || first[quiet.id.String()] == nil {
		t.Fatalf("saved baselines of %d agents, want both agents' under keys of their own", len(first))
	}

	e.start(t)
	e.redial(t, &agent)
	if !formed() {
		t.Fatal("the baseline did not survive the restart")
	}
	agent.mustFetch(t, "reports-read", "")
	e.b.Stop()
	second := saved()
	if string(second[agent.id.String()]) == string(first[agent.id.String()]) {
		t.Error("the active agent's baseline was not saved again")
	}
	if string(second[quiet.id.String()]) != string(first[quiet.id.String()]) {
		t.Error("the quiet agent's unchanged baseline changed")
	}
}
