package monitor

import (
	"hash/maphash"
	"sync"
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
