package revoke

import (
	"sync"

	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// hub fans revocation events out to the agents watching them.
type hub struct {
	mu   sync.Mutex
	subs map[string]map[chan *brokerv1.WatchRevocationsResponse]bool
}

// subscribe registers a watcher for agent; cancel removes it.
func (h *hub) subscribe(agent string) (<-chan *brokerv1.WatchRevocationsResponse, func()) {
	ch := make(chan *brokerv1.WatchRevocationsResponse, 64)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[string]map[chan *brokerv1.WatchRevocationsResponse]bool{}
	}
	if h.subs[agent] == nil {
		h.subs[agent] = map[chan *brokerv1.WatchRevocationsResponse]bool{}
	}
	h.subs[agent][ch] = true
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.subs[agent][ch] {
			delete(h.subs[agent], ch)
			close(ch)
		}
	}
}

// publish sends ev to agent's watchers. A watcher too slow to keep up is
// cut off (its stream ends), so it reconnects and refetches rather than
// missing an event silently.
func (h *hub) publish(agent string, ev *brokerv1.WatchRevocationsResponse) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs[agent] {
		select {
		case ch <- ev:
		default:
			delete(h.subs[agent], ch)
			close(ch)
		}
	}
}
