package broker_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/breaker"

	"github.com/agentictrust/atf/broker/monitor"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

const (
	// issuanceSamples is how many sequential FetchCredential calls one
	// iteration times.
	issuanceSamples = 200
	// monitorAgents is how many agents, each with a formed baseline, the
	// monitor holds; monitorSamples how many requests, spread over them in
	// turn, one iteration times as a whole.
	monitorAgents  = 10_000
	monitorSamples = 200_000
	// monitorStep is the time between two requests of the monitored
	// traffic: each agent asks every monitorAgents steps, ten seconds.
	monitorStep = time.Millisecond
	// monitorShareTarget is the share of an issuance the monitoring may add.
	monitorShareTarget = 0.05
)

// BenchmarkMonitorOverhead compares what behaviour monitoring and the
// circuit breaker cost per credential request with the latency of the
// request they ride on, in the same run: (a) the p50 of FetchCredential,
// end to end against the real Vault, and (b) the mean cost, over agents of
// a monitor holding monitorAgents formed baselines, of what FetchCredential
// asks of them for a request that is issued: Breakers.Allow, Monitor.Observe
// of the request and of the issuance, Breakers.Record. monitor-share is
// (b)/(a); the target is monitorShareTarget. Reported, never failed on.
func BenchmarkMonitorOverhead(b *testing.B) {
	f, bk := startBroker(b)
	agent := f.ID(b, "issuer")
	bk.Register(b, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	conn := bk.Dial(b, agent)
	req := &brokerv1.FetchCredentialRequest{Role: "reports-read"}
	fetch := func() {
		if _, err := conn.Broker.FetchCredential(b.Context(), req); err != nil {
			b.Fatal(err)
		}
	}
	for range 20 { // TLS session, anchor, connection pool
		fetch()
	}
	m, breakers, agents, at := formedMonitor(b)

	var lat []time.Duration
	var spent time.Duration
	requests, raised := 0, 0
	for b.Loop() {
		for range issuanceSamples {
			start := time.Now()
			fetch()
			lat = append(lat, time.Since(start))
		}
		start := time.Now()
		for i := range monitorSamples {
			a := agents[i%len(agents)]
			at = at.Add(monitorStep)
			if ok, _, _ := breakers.Allow(a); !ok {
				b.Fatalf("breaker of %s open", a)
			}
			raised += len(m.Observe(monitor.Event{Agent: a, Role: "reports-read", InManifest: true, Kind: monitor.Request, Time: at}))
			raised += len(m.Observe(monitor.Event{Agent: a, Role: "reports-read", InManifest: true, Kind: monitor.Issued, Time: at}))
			breakers.Record(a, false)
		}
		spent += time.Since(start)
		requests += monitorSamples
	}
	if raised > 0 {
		b.Fatalf("ordinary traffic raised %d anomalies; the monitored path is not the usual one", raised)
	}
	slices.Sort(lat)
	p50 := float64(percentile(lat, 0.50))
	perRequest := float64(spent) / float64(requests)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(perRequest, "monitor-ns")
	b.ReportMetric(p50, "issuance-p50-ns")
	b.ReportMetric(perRequest/p50, "monitor-share")
	if share := perRequest / p50; share > monitorShareTarget {
		b.Logf("monitor-share %.4f is above the target %.2f", share, monitorShareTarget)
	}
}

// formedMonitor returns a monitor whose monitorAgents agents have formed
// their baselines on the traffic the benchmark then continues, breakers for
// them (on the real clock, as the broker's), the agents, and the time of the
// last event.
func formedMonitor(b *testing.B) (*monitor.Monitor, *monitor.Breakers, []string, time.Time) {
	b.Helper()
	const requestsToForm = 100
	m, err := monitor.New(monitor.Config{BaselineOps: 2 * requestsToForm})
	if err != nil {
		b.Fatal(err)
	}
	breakers, err := monitor.NewBreakers(breaker.DefaultConfig(), nil)
	if err != nil {
		b.Fatal(err)
	}
	agents := make([]string, monitorAgents)
	for i := range agents {
		agents[i] = fmt.Sprintf("spiffe://bench.test/agents/a%05d", i)
	}
	at := time.Date(2025, 1, 6, 9, 0, 0, 0, time.UTC)
	for i := range requestsToForm * monitorAgents {
		a := agents[i%monitorAgents]
		at = at.Add(monitorStep)
		m.Observe(monitor.Event{Agent: a, Role: "reports-read", InManifest: true, Kind: monitor.Request, Time: at})
		m.Observe(monitor.Event{Agent: a, Role: "reports-read", InManifest: true, Kind: monitor.Issued, Time: at})
	}
	for _, a := range agents {
		if bl, _ := m.Baseline(a); !bl.Formed {
			b.Fatalf("baseline of %s not formed after %d events", a, bl.Events)
		}
	}
	return m, breakers, agents, at
}
