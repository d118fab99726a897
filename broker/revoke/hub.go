package revoke

import (
	"sync"

	"github.com/agentictrust/atf/broker/fault"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// errBehind ends the watch of an agent too slow to keep up.
var errBehind = fault.New(fault.Exhausted, "revocation watcher fell behind; reconnect and refetch credentials")

// hub fans revocation events out to the agents watching them.
type hub struct {
	mu sync.Mutex
	// subs holds, by agent, each watcher's channel and why it was closed.
	subs map[string]map[chan *brokerv1.WatchRevocationsResponse]*error
}

// subscribe registers a watcher for agent. When events closes, ended says
// why; cancel removes the watcher.
func (h *hub) subscribe(agent string) (events <-chan *brokerv1.WatchRevocationsResponse, ended func() error, cancel func()) {
	ch := make(chan *brokerv1.WatchRevocationsResponse, 64)
	why := new(error)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[string]map[chan *brokerv1.WatchRevocationsResponse]*error{}
	}
	if h.subs[agent] == nil {
		h.subs[agent] = map[chan *brokerv1.WatchRevocationsResponse]*error{}
	}
	h.subs[agent][ch] = why
	h.mu.Unlock()
	ended = func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		return *why
	}
	return ch, ended, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.subs[agent][ch] != nil {
			h.close(agent, ch, nil)
		}
	}
}

// close removes a watcher of agent and closes its channel, after the
// events already in it, for why. Called with mu held.
func (h *hub) close(agent string, ch chan *brokerv1.WatchRevocationsResponse, why error) {
	*h.subs[agent][ch] = why
	delete(h.subs[agent], ch)
	if len(h.subs[agent]) == 0 {
		delete(h.subs, agent)
	}
	close(ch)
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
			h.close(agent, ch, errBehind)
		}
	}
}

// end ends the watches of agent for why (every agent's, if agent is ""),
// once they have received the events already published.
func (h *hub) end(agent string, why error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for a, subs := range h.subs {
		if agent != "" && a != agent {
			continue
		}
		for ch := range subs {
			h.close(a, ch, why)
		}
	}
}
