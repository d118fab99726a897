package monitor

import (
	"hash/maphash"
	"sync"
	"time"
)

// nShards is how many shards a table has: enough that calls for different
// names seldom wait for one another on a many-core host.
const nShards = 256

// table maps names (of agents, of lineages) to state. It is split into
// shards by the name's hash so that no lock is common to all names.
type table[T any] struct {
	seed   maphash.Seed
	shards [nShards]shard[T]
}

type shard[T any] struct {
	mu sync.Mutex
	m  map[string]*T
	_  [48]byte // keeps shards on separate cache lines
}

func (t *table[T]) init() {
	t.seed = maphash.MakeSeed()
	for i := range t.shards {
		t.shards[i].m = make(map[string]*T)
	}
}

// shard returns the shard that holds name.
func (t *table[T]) shard(name string) *shard[T] {
	return &t.shards[maphash.String(t.seed, name)%nShards]
}

// recent holds the times of an agent's last few events of one kind, to tell
// whether enough of them fell within a span.
type recent struct {
	times []time.Time
	next  int // index of the oldest once times is full
}

// add notes an event at t and reports whether the last n events, this one
// included, were no more than d apart.
func (r *recent) add(t time.Time, n int, d time.Duration) bool {
	if len(r.times) < n {
		r.times = append(r.times, t)
		return len(r.times) == n && t.Sub(r.times[0]) <= d
	}
	r.times[r.next] = t
	r.next = (r.next + 1) % n
	return t.Sub(r.times[r.next]) <= d
}

// last returns the time of the latest event; r must not be empty.
func (r *recent) last() time.Time {
	return r.times[(r.next+len(r.times)-1)%len(r.times)]
}

// reset forgets every event.
func (r *recent) reset() {
	r.times, r.next = r.times[:0], 0
}
