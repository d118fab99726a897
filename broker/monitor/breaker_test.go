package monitor_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/breaker"
	"github.com/agentictrust/atf/broker/monitor"
)

// clock is a fake clock that moves only when told.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newBreakers(t testing.TB, c breaker.Config, now func() time.Time) *monitor.Breakers {
	t.Helper()
	b, err := monitor.NewBreakers(c, now)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// op is one call on agent a's breaker, after the clock has moved by wait.
// The state machine itself is tested in package breaker; these scripts
// check what Breakers adds: a breaker per agent, created on the first
// failure or trip and dropped once it holds nothing.
type op struct {
	wait time.Duration
	call string // allow, fail, succeed, trip, reset or state
	// What allow and state return; at is retryAt or the open-until time
	// as an offset from t0, 0 for the zero time.
	ok    bool
	state breaker.State
	at    time.Duration
	// What fail and succeed return.
	tripped bool
}

// opened is three failures at t0, which open a breaker until t0+30s with
// the config of TestBreakersScript.
var opened = []op{{call: "fail"}, {call: "fail"}, {call: "fail", tripped: true}}

func TestBreakersScript(t *testing.T) {
	tests := []struct {
		name string
		ops  []op
	}{{
		name: "opens after failures within the window",
		ops: append([]op{{call: "succeed"}, {call: "allow", ok: true}, {call: "state"}}, append(opened,
			op{wait: 10 * time.Second, call: "allow", state: breaker.Open, at: 30 * time.Second},
			op{call: "state", state: breaker.Open, at: 30 * time.Second},
		)...),
	}, {
		name: "old failures are forgotten",
		ops: []op{
			{call: "fail"}, {call: "fail"},
			{wait: 61 * time.Second, call: "succeed"},
			{call: "fail"}, {call: "fail"}, {call: "state"},
			{call: "fail", tripped: true},
		},
	}, {
		name: "probes in half-open close it",
		ops: append(opened,
			op{wait: 30 * time.Second, call: "allow", ok: true, state: breaker.HalfOpen},
			op{call: "succeed"},
			op{call: "allow", ok: true, state: breaker.HalfOpen},
			op{call: "succeed"},
			op{call: "state"},
			op{call: "fail"}, op{call: "fail"},
			op{call: "fail", tripped: true},
		),
	}, {
		name: "a failure in half-open reopens it",
		ops: append(opened,
			op{wait: 30 * time.Second, call: "allow", ok: true, state: breaker.HalfOpen},
			op{wait: time.Second, call: "fail", tripped: true},
			op{call: "allow", state: breaker.Open, at: 61 * time.Second},
			op{call: "fail"},
		),
	}, {
		name: "trip and reset",
		ops: []op{
			{call: "trip"},
			{call: "allow", state: breaker.Open, at: 30 * time.Second},
			{wait: 10 * time.Second, call: "trip"},
			{call: "state", state: breaker.Open, at: 40 * time.Second},
			{call: "reset"},
			{call: "state"},
			{call: "allow", ok: true},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &clock{now: t0}
			b := newBreakers(t, breaker.Config{Failures: 3, Window: time.Minute, OpenFor: 30 * time.Second, Probes: 2}, clk.Now)
			for i, o := range tt.ops {
				clk.advance(o.wait)
				var wantAt time.Time
				if o.at != 0 {
					wantAt = t0.Add(o.at)
				}
				switch o.call {
				case "allow":
					if ok, state, at := b.Allow("a"); ok != o.ok || state != o.state || !at.Equal(wantAt) {
						t.Fatalf("op %d: Allow = %v, %v, %v; want %v, %v, %v", i, ok, state, at, o.ok, o.state, wantAt)
					}
				case "state":
					if state, at := b.State("a"); state != o.state || !at.Equal(wantAt) {
						t.Fatalf("op %d: State = %v, %v; want %v, %v", i, state, at, o.state, wantAt)
					}
				case "fail", "succeed":
					if tripped := b.Record("a", o.call == "fail"); tripped != o.tripped {
						t.Fatalf("op %d: Record(%s) = %v, want %v", i, o.call, tripped, o.tripped)
					}
				case "trip":
					b.Trip("a")
				case "reset":
					b.Reset("a")
				default:
					t.Fatalf("op %d: unknown call %q", i, o.call)
				}
			}
			// Other agents are untouched.
			if ok, state, _ := b.Allow("b"); !ok || state != breaker.Closed {
				t.Errorf("Allow(b) = %v, %v; want true, closed", ok, state)
			}
		})
	}
}

// A zero config takes breaker.DefaultConfig.
func TestBreakersDefaults(t *testing.T) {
	clk := &clock{now: t0}
	b := newBreakers(t, breaker.Config{}, clk.Now)
	def := breaker.DefaultConfig()
	for i := range def.Failures {
		if tripped := b.Record("a", true); tripped != (i == def.Failures-1) {
			t.Fatalf("failure %d: tripped = %v", i+1, tripped)
		}
	}
	if state, until := b.State("a"); state != breaker.Open || !until.Equal(t0.Add(def.OpenFor)) {
		t.Fatalf("State = %v, %v; want open until %v", state, until, t0.Add(def.OpenFor))
	}
}

func TestNewBreakersInvalidConfig(t *testing.T) {
	c := breaker.Config{OpenFor: -time.Second, Probes: -2}
	want := "breaker: OpenFor is -1s; want 0 or more\nbreaker: Probes is -2; want 0 or more"
	if b, err := monitor.NewBreakers(c, nil); err == nil || err.Error() != want {
		t.Errorf("NewBreakers(%+v) = %v, %v; want error %q", c, b, err, want)
	}
}

// TestBreakersConcurrent records failures for shared agents from many
// goroutines. With the clock frozen, each agent's breaker opens once and
// stays open, so exactly one Record per agent reports it tripped.
func TestBreakersConcurrent(t *testing.T) {
	const (
		workers = 32
		agents  = 64
		rounds  = 50
	)
	clk := &clock{now: t0}
	b := newBreakers(t, breaker.Config{}, clk.Now)
	var trips atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				agent := fmt.Sprintf("agent-%d", (w+i)%agents)
				b.Allow(agent)
				if b.Record(agent, true) {
					trips.Add(1)
				}
				b.State(agent)
				other := fmt.Sprintf("other-%d", i%8)
				b.Trip(other)
				b.Record(other, false)
				b.Reset(other)
			}
		})
	}
	wg.Wait()
	if got := trips.Load(); got != agents {
		t.Errorf("%d Records tripped a breaker, want one for each of %d agents", got, agents)
	}
	for i := range agents {
		if ok, state, _ := b.Allow(fmt.Sprintf("agent-%d", i)); ok || state != breaker.Open {
			t.Errorf("Allow(agent-%d) = %v, %v; want false, open", i, ok, state)
		}
	}
}
