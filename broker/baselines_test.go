package broker_test

import (
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// An agent's behaviour baseline survives a restart, kept under a key of
// its own; a save writes only the baselines that changed (on etcd, where
// a key's modification revision shows whether it was written).
func TestBaselinesSurviveARestart(t *testing.T) {
	f := brokertest.Setup(t)
	prefix := "/baselines-" + rand.Text() + "/"
	cfg := f.EtcdConfig(t, t.TempDir(), prefix, "a")
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
	cli, err := f.Etcd(t).Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	// saved is each saved baseline's modification revision, by agent.
	saved := func() map[string]int64 {
		r, err := cli.Get(t.Context(), prefix+"baselines\x00", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		revs := map[string]int64{}
		for _, kv := range r.Kvs {
			revs[strings.TrimPrefix(string(kv.Key), prefix+"baselines\x00")] = kv.ModRevision
		}
		return revs
	}
	first := saved()
	if first[agent.id.String()] == 0 || first[quiet.id.String()] == 0 {
		t.Fatalf("saved baselines %v, want both agents' under keys of their own", first)
	}

	e.start(t)
	e.redial(t, &agent)
	if !formed() {
		t.Fatal("the baseline did not survive the restart")
	}
	agent.mustFetch(t, "reports-read", "")
	e.b.Stop()
	second := saved()
	if second[agent.id.String()] == first[agent.id.String()] {
		t.Error("the active agent's baseline was not saved again")
	}
	if second[quiet.id.String()] != first[quiet.id.String()] {
		t.Errorf("the quiet agent's unchanged baseline was written again (revision %d, then %d)", first[quiet.id.String()], second[quiet.id.String()])
	}
}
