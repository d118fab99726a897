package breaker

import "time"

// Burst holds the times of the last few events of one kind, to tell
// whether the last n of them fell within a span: the test that opens a
// Breaker, for callers that watch other events the same way. The zero value
// holds no event. It is not safe for concurrent use.
type Burst struct {
	times []time.Time
	next  int // index of the oldest once times is full
}

// Add notes an event at t and reports whether the last n events, this one
// included, were no more than d apart. n must not change between calls.
func (r *Burst) Add(t time.Time, n int, d time.Duration) bool {
	if len(r.times) < n {
		r.times = append(r.times, t)
		return len(r.times) == n && t.Sub(r.times[0]) <= d
	}
	r.times[r.next] = t
	r.next = (r.next + 1) % n
	return t.Sub(r.times[r.next]) <= d
}

func (r *Burst) empty() bool { return len(r.times) == 0 }

// last returns the time of the latest event; r must not be empty.
func (r *Burst) last() time.Time {
	return r.times[(r.next+len(r.times)-1)%len(r.times)]
}

// reset forgets every event.
func (r *Burst) reset() {
	r.times, r.next = r.times[:0], 0
}
