package breaker_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/breaker"
)

var t0 = time.Date(2026, time.March, 2, 0, 0, 0, 0, time.UTC)

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

// op is one call on a breaker, after the clock has moved by wait.
type op struct {
	wait time.Duration
	call string // allow, fail, succeed, abandon, trip, reset, state or idle
	// What allow and state return, and the state reset returns; at is
	// retryAt or the open-until time as an offset from t0, 0 for the zero
	// time.
	ok    bool
	state breaker.State
	at    time.Duration
	// What fail and succeed return.
	from, to breaker.State
}

// opened is three failures at t0, which open a breaker until t0+30s with
// the config of TestScript.
var opened = []op{{call: "fail"}, {call: "fail"}, {call: "fail", to: breaker.Open}}

func TestScript(t *testing.T) {
	tests := []struct {
		name string
		ops  []op
	}{{
		name: "opens after failures within the window",
		ops: append([]op{{call: "allow", ok: true}, {call: "state"}, {call: "idle", ok: true}}, append(opened,
			op{wait: 10 * time.Second, call: "allow", state: breaker.Open, at: 30 * time.Second},
			op{call: "state", state: breaker.Open, at: 30 * time.Second},
		)...),
	}, {
		name: "failures spread wider than the window",
		ops: []op{
			{call: "fail"}, {wait: 40 * time.Second, call: "fail"}, {wait: 30 * time.Second, call: "fail"}, // 70s from first to third
			{call: "allow", ok: true},
			{wait: 20 * time.Second, call: "fail", to: breaker.Open}, // 50s from second to fourth
			{call: "allow", state: breaker.Open, at: 120 * time.Second},
		},
	}, {
		name: "successes do not excuse failures",
		ops:  []op{{call: "fail"}, {call: "succeed"}, {call: "fail"}, {call: "succeed"}, {call: "fail", to: breaker.Open}},
	}, {
		name: "old failures are forgotten",
		ops: []op{
			{call: "fail"}, {call: "fail"}, {call: "idle"},
			{wait: 60 * time.Second, call: "idle"},
			{wait: time.Second, call: "idle", ok: true},
			{call: "succeed"},
			{call: "fail"}, {call: "fail"}, {call: "state"},
			{call: "fail", to: breaker.Open},
		},
	}, {
		name: "probes in half-open close it",
		ops: append(opened,
			op{wait: 30 * time.Second, call: "state", state: breaker.HalfOpen},
			op{call: "allow", ok: true, state: breaker.HalfOpen},
			op{call: "allow", state: breaker.HalfOpen, at: 60 * time.Second}, // one probe at a time
			op{wait: time.Second, call: "succeed", from: breaker.HalfOpen, to: breaker.HalfOpen},
			op{call: "allow", ok: true, state: breaker.HalfOpen},
			op{call: "succeed", from: breaker.HalfOpen},
			op{call: "state"},
			op{call: "idle", ok: true},
			op{call: "allow", ok: true},
			op{call: "fail"}, // failures before it opened do not count again
		),
	}, {
		name: "a failure in half-open reopens it",
		ops: append(opened,
			op{wait: 30 * time.Second, call: "allow", ok: true, state: breaker.HalfOpen},
			op{wait: time.Second, call: "fail", from: breaker.HalfOpen, to: breaker.Open},
			op{call: "allow", state: breaker.Open, at: 61 * time.Second},
			op{wait: 30 * time.Second, call: "allow", ok: true, state: breaker.HalfOpen},
		),
	}, {
		name: "a lost probe is replaced",
		ops: append(opened,
			op{wait: 30 * time.Second, call: "allow", ok: true, state: breaker.HalfOpen},
			op{wait: 29 * time.Second, call: "allow", state: breaker.HalfOpen, at: 60 * time.Second},
			op{wait: time.Second, call: "allow", ok: true, state: breaker.HalfOpen},
		),
	}, {
		name: "an abandoned probe is replaced at once",
		ops: append(opened,
			op{wait: 30 * time.Second, call: "allow", ok: true, state: breaker.HalfOpen},
			op{call: "abandon"},
			op{call: "allow", ok: true, state: breaker.HalfOpen},
			op{call: "allow", state: breaker.HalfOpen, at: 60 * time.Second},
		),
	}, {
		name: "outcomes recorded while open are ignored",
		ops: append(opened,
			op{call: "fail", from: breaker.Open, to: breaker.Open}, op{call: "succeed", from: breaker.Open, to: breaker.Open},
			op{call: "abandon"},
			op{wait: 29 * time.Second, call: "state", state: breaker.Open, at: 30 * time.Second},
			op{call: "idle"},
		),
	}, {
		name: "trip and reset",
		ops: []op{
			{call: "trip"},
			{call: "allow", state: breaker.Open, at: 30 * time.Second},
			{wait: 10 * time.Second, call: "trip"},
			{call: "state", state: breaker.Open, at: 40 * time.Second},
			{call: "reset", state: breaker.Open},
			{call: "state"},
			{call: "allow", ok: true},
			{call: "reset"},
		},
	}, {
		name: "trip in half-open",
		ops: append(opened,
			op{wait: 30 * time.Second, call: "allow", ok: true, state: breaker.HalfOpen},
			op{call: "trip"},
			op{call: "allow", state: breaker.Open, at: 60 * time.Second},
			op{call: "succeed", from: breaker.Open, to: breaker.Open},
			op{call: "state", state: breaker.Open, at: 60 * time.Second},
		),
	}, {
		name: "reset in half-open, and of failures",
		ops: append(opened,
			op{wait: 30 * time.Second, call: "allow", ok: true, state: breaker.HalfOpen},
			op{call: "reset", state: breaker.HalfOpen},
			op{call: "fail"}, op{call: "fail"},
			op{call: "reset"},
			op{call: "fail"}, op{call: "fail"}, op{call: "state"},
		),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &clock{now: t0}
			b := breaker.New(breaker.Config{Failures: 3, Window: time.Minute, OpenFor: 30 * time.Second, Probes: 2}, clk.Now)
			for i, o := range tt.ops {
				clk.advance(o.wait)
				var wantAt time.Time
				if o.at != 0 {
					wantAt = t0.Add(o.at)
				}
				switch o.call {
				case "allow":
					if ok, state, at := b.Allow(); ok != o.ok || state != o.state || !at.Equal(wantAt) {
						t.Fatalf("op %d: Allow = %v, %v, %v; want %v, %v, %v", i, ok, state, at, o.ok, o.state, wantAt)
					}
				case "state":
					if state, at := b.State(); state != o.state || !at.Equal(wantAt) {
						t.Fatalf("op %d: State = %v, %v; want %v, %v", i, state, at, o.state, wantAt)
					}
				case "fail", "succeed":
					if from, to := b.Record(o.call == "fail"); from != o.from || to != o.to {
						t.Fatalf("op %d: Record(%s) = %v, %v; want %v, %v", i, o.call, from, to, o.from, o.to)
					}
				case "abandon":
					b.Abandon()
				case "trip":
					b.Trip()
				case "reset":
					if was := b.Reset(); was != o.state {
						t.Fatalf("op %d: Reset = %v, want %v", i, was, o.state)
					}
				case "idle":
					if idle := b.Idle(); idle != o.ok {
						t.Fatalf("op %d: Idle = %v, want %v", i, idle, o.ok)
					}
				default:
					t.Fatalf("op %d: unknown call %q", i, o.call)
				}
			}
		})
	}
}

// A probe may take ProbeTimeout, not OpenFor, before another is let in.
func TestProbeTimeout(t *testing.T) {
	clk := &clock{now: t0}
	b := breaker.New(breaker.Config{OpenFor: 30 * time.Second, ProbeTimeout: 5 * time.Second}, clk.Now)
	b.Trip()
	clk.advance(30 * time.Second)
	if ok, state, _ := b.Allow(); !ok || state != breaker.HalfOpen {
		t.Fatalf("Allow after OpenFor = %v, %v; want a probe", ok, state)
	}
	if ok, _, at := b.Allow(); ok || !at.Equal(t0.Add(35*time.Second)) {
		t.Fatalf("Allow with the probe out = %v, %v; want refused until %v", ok, at, t0.Add(35*time.Second))
	}
	clk.advance(5 * time.Second)
	if ok, _, _ := b.Allow(); !ok {
		t.Fatal("the lost probe was not replaced after ProbeTimeout")
	}
}

func TestDefaults(t *testing.T) {
	clk := &clock{now: t0}
	b := breaker.New(breaker.Config{}, clk.Now)
	def := breaker.DefaultConfig()
	for i := range def.Failures {
		if _, to := b.Record(true); (to == breaker.Open) != (i == def.Failures-1) {
			t.Fatalf("failure %d: state %v", i+1, to)
		}
	}
	if state, until := b.State(); state != breaker.Open || !until.Equal(t0.Add(def.OpenFor)) {
		t.Fatalf("State = %v, %v; want open until %v", state, until, t0.Add(def.OpenFor))
	}
	// The probe may take OpenFor.
	clk.advance(def.OpenFor)
	b.Allow()
	if _, _, at := b.Allow(); !at.Equal(t0.Add(2 * def.OpenFor)) {
		t.Errorf("Allow with the probe out: retry at %v, want %v", at, t0.Add(2*def.OpenFor))
	}
}

func TestWithDefaults(t *testing.T) {
	d := breaker.Config{Failures: 1, Window: 2, OpenFor: 3, Probes: 4, ProbeTimeout: 5}
	tests := []struct {
		c, want breaker.Config
	}{
		{breaker.Config{}, d},
		{breaker.Config{Failures: 9, OpenFor: -1}, breaker.Config{Failures: 9, Window: 2, OpenFor: 3, Probes: 4, ProbeTimeout: 5}},
		{breaker.Config{Failures: 9, Window: 9, OpenFor: 9, Probes: 9, ProbeTimeout: 9}, breaker.Config{Failures: 9, Window: 9, OpenFor: 9, Probes: 9, ProbeTimeout: 9}},
	}
	for _, tt := range tests {
		if got := tt.c.WithDefaults(d); got != tt.want {
			t.Errorf("%+v.WithDefaults(%+v) = %+v, want %+v", tt.c, d, got, tt.want)
		}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		c    breaker.Config
		want string
	}{
		{breaker.Config{}, ""},
		{breaker.DefaultConfig(), ""},
		{breaker.Config{Failures: -1}, "breaker: Failures is -1; want 0 or more"},
		{breaker.Config{Window: -time.Minute, ProbeTimeout: -time.Second}, "breaker: Window is -1m0s; want 0 or more\nbreaker: ProbeTimeout is -1s; want 0 or more"},
		{breaker.Config{OpenFor: -time.Second, Probes: -2}, "breaker: OpenFor is -1s; want 0 or more\nbreaker: Probes is -2; want 0 or more"},
	}
	for _, tt := range tests {
		err := tt.c.Validate()
		if got := errString(err); got != tt.want {
			t.Errorf("%+v.Validate() = %q, want %q", tt.c, got, tt.want)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestStateString(t *testing.T) {
	for s, want := range map[breaker.State]string{
		breaker.Closed: "closed", breaker.Open: "open", breaker.HalfOpen: "half-open", 5: "State(5)",
	} {
		if got := s.String(); got != want {
			t.Errorf("State(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}

// TestConcurrent records failures and asks for probes from many goroutines.
// With the clock frozen the breaker opens once and stays open; once the
// clock moves past OpenFor, exactly one caller gets the probe.
func TestConcurrent(t *testing.T) {
	const workers = 32
	clk := &clock{now: t0}
	b := breaker.New(breaker.Config{}, clk.Now)
	var opens, probes atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			b.Allow()
			if from, to := b.Record(true); from == breaker.Closed && to == breaker.Open {
				opens.Add(1)
			}
			b.State()
			b.Idle()
		})
	}
	wg.Wait()
	clk.advance(breaker.DefaultConfig().OpenFor)
	for range workers {
		wg.Go(func() {
			if ok, _, _ := b.Allow(); ok {
				probes.Add(1)
			}
		})
	}
	wg.Wait()
	if opens.Load() != 1 || probes.Load() != 1 {
		t.Errorf("%d Records opened the breaker and %d callers got the probe; want 1 and 1", opens.Load(), probes.Load())
	}
}
