package monitor_test

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/maturity"
	"github.com/agentictrust/atf/broker/monitor"
)

// t0 is midnight UTC on the first simulated day.
var t0 = time.Date(2026, time.March, 2, 0, 0, 0, 0, time.UTC)

// at returns the time of day clock on simulated day d.
func at(d int, clock time.Duration) time.Time {
	return t0.AddDate(0, 0, d).Add(clock)
}

func newMonitor(t testing.TB, c monitor.Config) *monitor.Monitor {
	t.Helper()
	m, err := monitor.New(c)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func request(agent string, when time.Time, role string) monitor.Event {
	return monitor.Event{Agent: agent, Role: role, InManifest: true, Kind: monitor.Request, Time: when}
}

func outside(ev monitor.Event) monitor.Event {
	ev.InManifest = false
	return ev
}

func denied(agent string, when time.Time) monitor.Event {
	return monitor.Event{Agent: agent, Role: "read", InManifest: true, Kind: monitor.Denied, Time: when}
}

// historyDays is how many days of workdays make a formed baseline in these
// tests: 1,056 requests, more than 7 days.
const historyDays = 11

// workdays returns days of steady traffic from t0 for agent: a request every
// 5 minutes from 09:00 to 17:00 UTC, for "read" and "write" in turn, each
// issued but for every 40th, which is denied, and every 100th followed by a
// delegation. Every minute with requests has exactly one.
func workdays(agent, lineage string, days int) []monitor.Event {
	var evs []monitor.Event
	n := 0
	for d := range days {
		for clock := 9 * time.Hour; clock < 17*time.Hour; clock += 5 * time.Minute {
			n++
			ev := request(agent, at(d, clock), []string{"read", "write"}[n%2])
			ev.Lineage = lineage
			evs = append(evs, ev)
			ev.Kind = monitor.Issued
			if n%40 == 0 {
				ev.Kind = monitor.Denied
			}
			ev.Time = ev.Time.Add(time.Second)
			evs = append(evs, ev)
			if n%100 == 0 {
				ev.Kind = monitor.Delegated
				evs = append(evs, ev)
			}
		}
	}
	return evs
}

// observeQuietly observes evs and fails if any raises an anomaly.
func observeQuietly(t testing.TB, m *monitor.Monitor, evs []monitor.Event) {
	t.Helper()
	for _, ev := range evs {
		if found := m.Observe(ev); len(found) > 0 {
			t.Fatalf("Observe(%+v) = %+v, want none", ev, found)
		}
	}
}

// brief names found anomalies by rule and severity.
func brief(found []monitor.Anomaly) []string {
	var s []string
	for _, a := range found {
		s = append(s, a.Rule+"/"+a.Severity.String())
	}
	return s
}

type step struct {
	ev   monitor.Event
	want []string // rule/severity
}

// burst returns n requests by agent for role, 2s apart from start, wanting
// what want says for the i-th, nothing for the others.
func burst(agent string, start time.Time, n int, role string, want map[int][]string) []step {
	var steps []step
	for i := range n {
		steps = append(steps, step{ev: request(agent, start.Add(time.Duration(i)*2*time.Second), role), want: want[i]})
	}
	return steps
}

// denials returns n denials of agent, every apart from start, wanting what
// want says for the i-th, nothing for the others.
func denials(agent string, start time.Time, n int, every time.Duration, want map[int][]string) []step {
	var steps []step
	for i := range n {
		steps = append(steps, step{ev: denied(agent, start.Add(time.Duration(i)*every)), want: want[i]})
	}
	return steps
}

func TestObserveRules(t *testing.T) {
	day := at(historyDays, 0) // the day after the history
	tests := []struct {
		name    string
		cfg     monitor.Config
		history bool // "a" has a formed baseline first
		steps   []step
	}{{
		name:  "outside manifest before the baseline",
		steps: []step{{ev: outside(request("a", day, "admin")), want: []string{"outside_manifest/high"}}},
	}, {
		name:    "outside manifest and new role",
		history: true,
		steps:   []step{{ev: outside(request("a", day.Add(10*time.Hour), "admin")), want: []string{"outside_manifest/high", "new_role/medium"}}},
	}, {
		name:    "known role outside manifest",
		history: true,
		steps:   []step{{ev: outside(request("a", day.Add(10*time.Hour), "read")), want: []string{"outside_manifest/high"}}},
	}, {
		name:    "burst for a new role",
		history: true,
		steps: append(burst("a", day.Add(10*time.Hour), 12, "deploy", map[int][]string{
			0: {"new_role/medium"},
			4: {"rate_spike/medium"}, // 5 requests in a minute: z 4
			8: {"rate_spike/high"},   // 9 requests: z 8
		}), step{ev: request("a", day.Add(10*time.Hour+time.Minute), "deploy")}),
	}, {
		name:  "no baseline rules before the baseline",
		steps: burst("a", day.Add(3*time.Hour), 12, "deploy", nil),
	}, {
		name:    "usual traffic",
		history: true,
		steps: []step{
			{ev: request("a", day.Add(9*time.Hour), "read")},
			{ev: request("a", day.Add(12*time.Hour+30*time.Second), "write")},
			{ev: denied("a", day.Add(12*time.Hour+31*time.Second))},
		},
	}, {
		name: "denial burst before the baseline",
		steps: denials("a", day, 7, 10*time.Second, map[int][]string{
			4: {"denial_burst/high"},
		}),
	}, {
		name: "denial burst raised again once cleared",
		steps: append(denials("a", day, 6, 10*time.Second, map[int][]string{4: {"denial_burst/high"}}),
			denials("a", day.Add(5*time.Minute), 5, 10*time.Second, map[int][]string{4: {"denial_burst/high"}})...),
	}, {
		name:  "denials too far apart",
		steps: denials("a", day, 20, 20*time.Second, nil),
	}, {
		name:    "unusual hour",
		history: true,
		steps: []step{
			{ev: request("a", day.Add(3*time.Hour), "read"), want: []string{"unusual_hour/low"}},
			{ev: request("a", day.Add(3*time.Hour+20*time.Minute), "read")}, // same hour: raised already
			{ev: request("a", day.Add(4*time.Hour+10*time.Minute), "read"), want: []string{"unusual_hour/low"}},
			{ev: request("a", day.Add(10*time.Hour), "read")},
		},
	}, {
		name: "unusual hour once the baseline spans a day",
		cfg:  monitor.Config{BaselineOps: 10},
		steps: append(burst("a", day.Add(10*time.Hour), 10, "read", nil), // formed
			step{ev: request("a", day.Add(15*time.Hour), "read")},
			step{ev: request("a", day.Add(27*time.Hour), "read")},
			step{ev: request("a", day.Add(35*time.Hour), "read"), want: []string{"unusual_hour/low"}},
		),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMonitor(t, tt.cfg) // zero: the defaults
			if tt.history {
				observeQuietly(t, m, workdays("a", "", historyDays))
			}
			for i, s := range tt.steps {
				if got := brief(m.Observe(s.ev)); !slices.Equal(got, s.want) {
					t.Errorf("step %d: Observe(%v at %v) raised %q, want %q", i, s.ev.Kind, s.ev.Time, got, s.want)
				}
			}
		})
	}
}

func TestAnomalyDetail(t *testing.T) {
	day := at(historyDays, 0)
	tests := []struct {
		name    string
		history bool
		events  []monitor.Event // the anomaly is raised by the last
		want    monitor.Anomaly
	}{{
		name:   "outside_manifest",
		events: []monitor.Event{{Agent: "a", Lineage: "root", Role: "admin", Kind: monitor.Request, Time: day}},
		want: monitor.Anomaly{Agent: "a", Lineage: "root", Rule: monitor.RuleOutsideManifest, Severity: maturity.High, Score: 1,
			Detail: `role "admin" is not in the agent's manifest`, Time: day},
	}, {
		name:    "new_role",
		history: true,
		events:  []monitor.Event{request("a", day.Add(10*time.Hour), "deploy")},
		want: monitor.Anomaly{Agent: "a", Lineage: "a", Rule: monitor.RuleNewRole, Severity: maturity.Medium, Score: 1,
			Detail: `first request for role "deploy"`, Time: day.Add(10 * time.Hour)},
	}, {
		name:    "rate_spike",
		history: true,
		events: []monitor.Event{
			request("a", day.Add(10*time.Hour), "read"), request("a", day.Add(10*time.Hour+1), "read"),
			request("a", day.Add(10*time.Hour+2), "read"), request("a", day.Add(10*time.Hour+3), "read"),
			request("a", day.Add(10*time.Hour+4), "read"),
		},
		want: monitor.Anomaly{Agent: "a", Lineage: "a", Rule: monitor.RuleRateSpike, Severity: maturity.Medium, Score: 4,
			Detail: "5 requests this minute against a usual 1.0±1.0 (z 4.0)", Time: day.Add(10*time.Hour + 4)},
	}, {
		name:   "denial_burst",
		events: []monitor.Event{denied("a", day), denied("a", day), denied("a", day), denied("a", day), denied("a", day.Add(time.Minute))},
		want: monitor.Anomaly{Agent: "a", Lineage: "a", Rule: monitor.RuleDenialBurst, Severity: maturity.High, Score: 5,
			Detail: "5 denials within 1m0s", Time: day.Add(time.Minute)},
	}, {
		name:    "unusual_hour",
		history: true,
		events:  []monitor.Event{request("a", day.Add(3*time.Hour+59*time.Minute), "read")},
		want: monitor.Anomaly{Agent: "a", Lineage: "a", Rule: monitor.RuleUnusualHour, Severity: maturity.Low, Score: 0,
			Detail: "request at 03 h UTC, an hour with 0.0% of 1056 requests", Time: day.Add(3*time.Hour + 59*time.Minute)},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMonitor(t, monitor.Config{})
			if tt.history {
				observeQuietly(t, m, workdays("a", "", historyDays))
			}
			last := len(tt.events) - 1
			observeQuietly(t, m, tt.events[:last])
			got := m.Observe(tt.events[last])
			if want := []monitor.Anomaly{tt.want}; !reflect.DeepEqual(got, want) {
				t.Errorf("Observe = %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestLineageCorrelation(t *testing.T) {
	m := newMonitor(t, monitor.Config{})
	for _, a := range []struct{ agent, lineage string }{{"r", ""}, {"r/1", "r"}, {"r/2", "r"}, {"x", ""}} {
		observeQuietly(t, m, workdays(a.agent, a.lineage, historyDays))
	}
	start := at(historyDays, 10*time.Hour)
	inR := func(agent string, after time.Duration, role string) monitor.Event {
		ev := request(agent, start.Add(after), role)
		ev.Lineage = "r"
		return ev
	}
	steps := []step{
		{ev: request("r", start, "deploy"), want: []string{"new_role/medium"}},
		{ev: request("x", start.Add(time.Minute), "deploy"), want: []string{"new_role/medium"}}, // another lineage
		{ev: inR("r/1", 2*time.Minute, "deploy"), want: []string{"new_role/high"}},              // r 2m before
		{ev: outside(inR("r/1", 3*time.Minute, "admin")), want: []string{"outside_manifest/critical", "new_role/high"}},
		{ev: request("r", start.Add(4*time.Minute), "deploy2"), want: []string{"new_role/high"}}, // r/1 1m before
		{ev: inR("r/2", 20*time.Minute, "deploy"), want: []string{"new_role/medium"}},            // r 16m before
	}
	for i, s := range steps {
		found := m.Observe(s.ev)
		if got := brief(found); !slices.Equal(got, s.want) {
			t.Errorf("step %d: %s raised %q, want %q", i, s.ev.Agent, got, s.want)
		}
		if i == 2 {
			want := `first request for role "deploy"; lineage_correlation: agent "r" of lineage "r" anomalous 2m0s apart`
			if len(found) != 1 || found[0].Detail != want || found[0].Lineage != "r" {
				t.Errorf("step 2: raised %+v, want Detail %q and Lineage r", found, want)
			}
		}
	}
}

// TestNoFalsePositives feeds a month of ordinary, jittered traffic from
// three agents of one lineage and wants no anomaly at all.
func TestNoFalsePositives(t *testing.T) {
	m := newMonitor(t, monitor.Config{})
	rng := rand.New(rand.NewPCG(1, 2))
	roles := []string{"read", "write", "list"}
	for _, agent := range []string{"root", "root/a", "root/b"} {
		for d := range 30 {
			when := at(d, 8*time.Hour)
			for {
				when = when.Add(20*time.Second + time.Duration(rng.Int64N(int64(20*time.Second)))) // 1 to 3 requests a minute
				if when.Hour() >= 18 {
					break
				}
				ev := monitor.Event{Agent: agent, Lineage: "root", Role: roles[rng.IntN(len(roles))], InManifest: true, Kind: monitor.Request, Time: when}
				observeQuietly(t, m, []monitor.Event{ev})
				ev.Time = when.Add(time.Duration(rng.IntN(500)) * time.Millisecond)
				ev.Kind = monitor.Issued
				if rng.IntN(100) < 3 {
					ev.Kind = monitor.Denied
				}
				observeQuietly(t, m, []monitor.Event{ev})
				if ev.Kind == monitor.Issued && rng.IntN(100) < 2 {
					ev.Kind = monitor.Delegated
					observeQuietly(t, m, []monitor.Event{ev})
				}
				ev.Kind = []monitor.Kind{monitor.Success, monitor.Failure}[rng.IntN(2)]
				observeQuietly(t, m, []monitor.Event{ev})
			}
		}
		b, ok := m.Baseline(agent)
		if !ok || !b.Formed || b.Requests < 30000 || b.Delegations == 0 || b.DenialRatio() == 0 || b.DenialRatio() > 0.05 {
			t.Errorf("Baseline(%q) = %+v, %v; want formed with a month of requests, delegations and a few denials", agent, b, ok)
		}
	}
}

func TestSnapshotRestore(t *testing.T) {
	m := newMonitor(t, monitor.Config{})
	observeQuietly(t, m, workdays("a", "", historyDays))
	observeQuietly(t, m, workdays("b", "a", 2))

	b, ok := m.Baseline("a")
	if !ok || !b.Formed || b.Requests != 1056 || b.Events != 1056*2+10 || b.Delegations != 10 ||
		b.DenialRatio() != 26.0/1056 || b.Roles["read"] != 528 || b.Hours[9] != 132 || b.RateMean != 1 || b.RateVar != 0 {
		t.Fatalf("Baseline(a) = %+v, %v", b, ok)
	}
	data, err := json.Marshal(m.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var bs []monitor.Baseline
	if err := json.Unmarshal(data, &bs); err != nil {
		t.Fatal(err)
	}
	restored := newMonitor(t, monitor.Config{})
	if err := restored.Restore(bs); err != nil {
		t.Fatal(err)
	}
	again, err := json.Marshal(restored.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(data) {
		t.Errorf("snapshot after restore:\n%s\nwant\n%s", again, data)
	}
	if got, _ := restored.Baseline("a"); !reflect.DeepEqual(got, b) {
		t.Errorf("restored Baseline(a) = %+v\nwant %+v", got, b)
	}
	// The restored monitor judges as the original does.
	next := burst("a", at(historyDays, 10*time.Hour), 5, "deploy", nil)
	for _, mon := range []*monitor.Monitor{m, restored} {
		var got []string
		for _, s := range next {
			got = append(got, brief(mon.Observe(s.ev))...)
		}
		if want := []string{"new_role/medium", "rate_spike/medium"}; !slices.Equal(got, want) {
			t.Errorf("after the history, a burst raised %q, want %q", got, want)
		}
	}
}

func TestRestoreInvalid(t *testing.T) {
	valid := monitor.Baseline{Agent: "ok"}
	tests := []struct {
		name string
		b    monitor.Baseline
		want string
	}{
		{"no agent", monitor.Baseline{}, `monitor: restore: baseline 1 (agent ""): no agent`},
		{"negative count", monitor.Baseline{Agent: "a", Hours: [24]int{3: -1}}, `monitor: restore: baseline 1 (agent "a"): negative count`},
		{"negative role count", monitor.Baseline{Agent: "a", Roles: map[string]int{"r": -2}}, `monitor: restore: baseline 1 (agent "a"): negative count`},
		{"rate not a number", monitor.Baseline{Agent: "a", RateMean: math.NaN()}, `monitor: restore: baseline 1 (agent "a"): rate NaN±0 out of range`},
		{"infinite variance", monitor.Baseline{Agent: "a", RateVar: math.Inf(1)}, `monitor: restore: baseline 1 (agent "a"): rate 0±+Inf out of range`},
		{"repeated agent", valid, `monitor: restore: baseline 1 (agent "ok"): agent repeated`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMonitor(t, monitor.Config{})
			err := m.Restore([]monitor.Baseline{valid, tt.b})
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Restore = %v, want %s", err, tt.want)
			}
			if _, ok := m.Baseline("ok"); ok {
				t.Error("Restore failed but restored a baseline")
			}
		})
	}
}

func TestForget(t *testing.T) {
	m := newMonitor(t, monitor.Config{})
	observeQuietly(t, m, workdays("a", "", historyDays))
	if found := m.Observe(request("a", at(historyDays, 10*time.Hour), "deploy")); len(found) != 1 {
		t.Fatalf("before Forget, a new role raised %+v, want new_role", found)
	}
	m.Forget("a")
	if b, ok := m.Baseline("a"); ok {
		t.Fatalf("after Forget, Baseline = %+v, true", b)
	}
	observeQuietly(t, m, []monitor.Event{request("a", at(historyDays, 10*time.Hour+time.Minute), "deploy2")})
	if snap := m.Snapshot(); len(snap) != 1 || snap[0].Formed || snap[0].Events != 1 {
		t.Errorf("Snapshot after Forget and one event = %+v, want one fresh baseline", snap)
	}
}

func TestNewInvalidConfig(t *testing.T) {
	tests := []struct {
		name string
		c    monitor.Config
		want string
	}{
		{"negative ops", monitor.Config{BaselineOps: -1}, "monitor: BaselineOps is -1; want 0 or more"},
		{"negative window", monitor.Config{DenialWindow: -time.Second}, "monitor: DenialWindow is -1s; want 0 or more"},
		{"z not a number", monitor.Config{RateZ: math.NaN()}, "monitor: RateZ is NaN; want 0 or more"},
		{"alpha above 1", monitor.Config{EWMAAlpha: 1.5}, "monitor: EWMAAlpha is 1.5; want 1 or less"},
		{"two at once", monitor.Config{DenialBurst: -5, CorrelationWindow: -time.Minute},
			"monitor: DenialBurst is -5; want 0 or more\nmonitor: CorrelationWindow is -1m0s; want 0 or more"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := monitor.New(tt.c)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("New = %v, %v; want error %q", m, err, tt.want)
			}
		})
	}
}

func TestAnomalyJSON(t *testing.T) {
	a := monitor.Anomaly{Agent: "a", Lineage: "a", Rule: monitor.RuleNewRole, Severity: maturity.Critical, Score: 1, Detail: "d", Time: t0}
	data, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"agent":"a","lineage":"a","rule":"new_role","severity":"critical","score":1,"detail":"d","time":"2026-03-02T00:00:00Z"}`
	if string(data) != want {
		t.Fatalf("json.Marshal = %s, want %s", data, want)
	}
	var back monitor.Anomaly
	if err := json.Unmarshal(data, &back); err != nil || back != a {
		t.Fatalf("json.Unmarshal = %+v, %v; want %+v", back, err, a)
	}
	if _, err := json.Marshal(monitor.Anomaly{}); err == nil {
		t.Error("json.Marshal of an anomaly without a severity succeeded")
	}
	err = json.Unmarshal([]byte(`{"severity":"dire"}`), &back)
	if want := `maturity: unknown severity "dire" (want low, medium, high or critical)`; err == nil || err.Error() != want {
		t.Errorf("json.Unmarshal of severity dire = %v, want %s", err, want)
	}
}

// TestObserveConcurrent observes from many goroutines at once, many agents
// shared between them, while others read and forget. With the time frozen,
// every agent's denials make one burst, so each raises denial_burst once.
func TestObserveConcurrent(t *testing.T) {
	const (
		workers = 32
		agents  = 64
		rounds  = 200
	)
	m := newMonitor(t, monitor.Config{})
	var bursts atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				agent := fmt.Sprintf("agent-%d", (w+i)%agents)
				lineage := fmt.Sprintf("root-%d", (w+i)%4)
				for _, kind := range []monitor.Kind{monitor.Request, monitor.Denied} {
					ev := monitor.Event{Agent: agent, Lineage: lineage, Role: "read", InManifest: true, Kind: kind, Time: t0}
					for _, a := range m.Observe(ev) {
						if a.Rule == monitor.RuleDenialBurst {
							bursts.Add(1)
						}
					}
				}
				gone := fmt.Sprintf("gone-%d", i%8)
				m.Observe(request(gone, t0, "read"))
				m.Forget(gone)
			}
		})
	}
	wg.Go(func() {
		for range rounds {
			m.Snapshot()
			m.Baseline("agent-1")
		}
	})
	wg.Wait()

	if got := bursts.Load(); got != agents {
		t.Errorf("denial_burst raised %d times, want once for each of %d agents", got, agents)
	}
	total := 0
	for i := range agents {
		b, _ := m.Baseline(fmt.Sprintf("agent-%d", i))
		total += b.Events
	}
	if want := workers * rounds * 2; total != want {
		t.Errorf("agents' baselines hold %d events, want %d", total, want)
	}
}

// TestRateLearning checks that one burst barely moves the learnt rate: its
// minute is capped at twice RateZ standard deviations above the mean.
func TestRateLearning(t *testing.T) {
	m := newMonitor(t, monitor.Config{})
	observeQuietly(t, m, workdays("a", "", historyDays))
	start := at(historyDays, 10*time.Hour)
	for _, s := range burst("a", start, 25, "read", nil) {
		m.Observe(s.ev)
	}
	observeQuietly(t, m, []monitor.Event{request("a", start.Add(time.Minute), "read")}) // closes the burst's minute
	b, _ := m.Baseline("a")
	// The burst counts as 1+2*4*1 = 9: the mean moves by 0.1*8, the
	// variance to 0.9*(8*0.8).
	if math.Abs(b.RateMean-1.8) > 1e-9 || math.Abs(b.RateVar-5.76) > 1e-9 {
		t.Errorf("after a burst of 25, rate = %v±%v, want 1.8±5.76", b.RateMean, b.RateVar)
	}
}

// TestTimeGoingBack checks that an event earlier than the agent's latest
// counts as happening at the latest time.
func TestTimeGoingBack(t *testing.T) {
	m := newMonitor(t, monitor.Config{})
	late := at(0, 10*time.Hour)
	observeQuietly(t, m, []monitor.Event{request("a", late, "read"), request("a", late.Add(-2*time.Hour), "read")})
	b, _ := m.Baseline("a")
	if !b.Since.Equal(late) || !b.Last.Equal(late) || b.Hours[10] != 2 || b.Hours[8] != 0 {
		t.Errorf("Baseline = %+v, want both requests at %v", b, late)
	}
}
