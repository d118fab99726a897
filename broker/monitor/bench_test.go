package monitor_test

import (
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/breaker"
	"github.com/agentictrust/atf/broker/monitor"
)

const benchAgents = 10000

// formedMonitor returns a Monitor holding benchAgents formed baselines of
// agents that request "read" 6 times a minute around the clock, and their
// names.
func formedMonitor(b *testing.B) (*monitor.Monitor, []string) {
	// Enough that hours of benchmarking do not make any hour unusual.
	const perHour = 1e6
	m := newMonitor(b, monitor.Config{})
	names := make([]string, benchAgents)
	bs := make([]monitor.Baseline, benchAgents)
	for i := range bs {
		names[i] = "spiffe://example.org/agent/" + strconv.Itoa(i)
		bs[i] = monitor.Baseline{
			Agent: names[i], Since: t0.AddDate(0, 0, -8), Last: t0, Formed: true,
			Events: 24 * perHour, Requests: 24 * perHour, Roles: map[string]int{"read": 24 * perHour},
			RateMean: 6, RateVar: 4, Minutes: 4 * perHour,
		}
		for h := range bs[i].Hours {
			bs[i].Hours[h] = perHour
		}
	}
	if err := m.Restore(bs); err != nil {
		b.Fatal(err)
	}
	return m, names
}

// BenchmarkObserve observes requests of 10,000 agents with formed baselines,
// round robin, the simulated time moving 1ms a request (so 6 requests a
// minute for each agent, as its baseline expects). It fails if any anomaly
// is raised: it measures the common path.
func BenchmarkObserve(b *testing.B) {
	const batch = 64
	m, names := formedMonitor(b)
	// clock counts requests across sub-benchmarks, so that time never goes
	// back; goroutines take batches of it so as not to contend on it.
	var clock, anomalies atomic.Int64
	observe := func(more func() bool) {
		var i, end, found int64
		for more() {
			if i == end {
				end = clock.Add(batch)
				i = end - batch
			}
			ev := monitor.Event{Agent: names[i%benchAgents], Role: "read", InManifest: true, Kind: monitor.Request, Time: t0.Add(time.Duration(i) * time.Millisecond)}
			found += int64(len(m.Observe(ev)))
			i++
		}
		anomalies.Add(found)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		observe(b.Loop)
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) { observe(pb.Next) })
	})
	if got := anomalies.Load(); got != 0 {
		b.Fatalf("%d anomalies raised", got)
	}
}

// BenchmarkBreakerAllow asks Allow for 10,000 agents, round robin, every
// tenth of them with an open breaker.
func BenchmarkBreakerAllow(b *testing.B) {
	br := newBreakers(b, breaker.Config{}, func() time.Time { return t0 })
	names := make([]string, benchAgents)
	for i := range names {
		names[i] = "spiffe://example.org/agent/" + strconv.Itoa(i)
		if i%10 == 0 {
			br.Trip(names[i])
		}
	}
	allow := func(more func() bool) {
		for i := rand.IntN(benchAgents); more(); i = (i + 1) % benchAgents {
			br.Allow(names[i])
		}
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		allow(b.Loop)
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) { allow(pb.Next) })
	})
}
