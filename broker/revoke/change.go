package revoke

import (
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/agentictrust/atf/broker/fault"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Change is what one replica's revocation means for the others, when
// several share a store (etcd): the anchors they must forget, what the
// agents watching on them must hear, whose watches end, and whether the
// approvals or the policy in force changed. The store already refuses
// everything revoked on every replica; a Change only brings the caches
// and the watches of the others up to date (docs/operations.md).
type Change struct {
	// Drop are lineage nodes whose anchors are gone; DropAll: every one.
	Drop    []string `json:"drop,omitempty"`
	DropAll bool     `json:"drop_all,omitempty"`
	// Events are the revocation events by agent, as protojson.
	Events map[string]string `json:"events,omitempty"`
	// Stopped are agents whose watches end if they may no longer get
	// anything (killed, deregistered; every agent under the global kill
	// switch).
	Stopped []string `json:"stopped,omitempty"`
	// Approvals says approval requests were cancelled; Policy that a new
	// policy version is in force.
	Approvals bool `json:"approvals,omitempty"`
	Policy    bool `json:"policy,omitempty"`
	// EndAll ends every watch, for a replica that may have missed changes:
	// its agents reconnect and fetch anew.
	EndAll bool `json:"end_all,omitempty"`
	// Queued says revocations were left in the durable queue for Vault:
	// the replica that leads the queue drains it now.
	Queued bool `json:"queued,omitempty"`
}

// Feed carries Changes between the replicas, and keeps them for the
// watches that resume (broker's etcd feed): every replica, this one too,
// delivers the events of each entry to its watchers (Apply) in the order
// of the entries, so that an entry's position is its events' on every
// replica.
type Feed interface {
	// Start is the epoch of the feed's positions (its cluster) and the
	// position its watch starts after.
	Start() (epoch string, pos int64)
	// Publish puts c in the feed and returns its position.
	Publish(c Change) (int64, error)
	Journal
}

// feedWait bounds how long a revocation waits for this replica's watch of
// the feed to deliver its events; past it, they are sent here at once.
const feedWait = 5 * time.Second

// share sends c to the other replicas, if there are any.
func (r *Revoker) share(c Change) {
	if r.cfg.Feed != nil {
		_, _ = r.cfg.Feed.Publish(c) // Publish logs a failure
	}
}

// announce tells the watchers of events, and the other replicas of c with
// them. With a feed, the watchers here hear them as the others do, from
// the feed, in the order of its entries; if the feed does not confirm
// them in time, they hear them at once, outside the journal, and those
// elsewhere only if it did take them.
func (r *Revoker) announce(c Change, events map[string]*brokerv1.WatchRevocationsResponse) {
	if r.cfg.Feed == nil {
		r.hub.publish(events)
		return
	}
	c.withEvents(events)
	pos, err := r.cfg.Feed.Publish(c)
	if err != nil {
		r.hub.publishHere(events)
		return
	}
	if len(events) > 0 && !r.hub.await(pos, feedWait) {
		r.cfg.Log.Warn("this replica's watch of the change feed did not deliver a revocation in time; the watchers here hear it at once")
		r.hub.publishHere(events)
	}
}

// withEvents adds the events to c.
func (c *Change) withEvents(events map[string]*brokerv1.WatchRevocationsResponse) {
	for agent, ev := range events {
		b, err := protojson.Marshal(ev)
		if err != nil {
			continue // a message of ours always marshals
		}
		if c.Events == nil {
			c.Events = map[string]string{}
		}
		c.Events[agent] = string(b)
	}
}

// Event is agent's revocation event in c, if there is one.
func (c Change) Event(agent string) *brokerv1.WatchRevocationsResponse {
	raw, ok := c.Events[agent]
	if !ok {
		return nil
	}
	ev := &brokerv1.WatchRevocationsResponse{}
	if protojson.Unmarshal([]byte(raw), ev) != nil {
		return nil
	}
	return ev
}

// Apply brings this replica up to date with the Change at position pos
// of the feed: its watchers hear its events; and unless this replica made
// it (own), its anchors, watches and approvals' waiters follow it. The
// policy is the caller's (the composition root reloads it).
func (r *Revoker) Apply(c Change, pos int64, own bool) {
	events := map[string]*brokerv1.WatchRevocationsResponse{}
	for agent := range c.Events {
		if ev := c.Event(agent); ev != nil {
			events[agent] = ev
		}
	}
	if own {
		r.hub.publishAt(pos, events)
		return
	}
	if c.DropAll {
		r.anchors.DropAll()
	}
	r.anchors.Drop(c.Drop...)
	if c.Approvals {
		r.cfg.Approvals.Fire()
	}
	r.hub.publishAt(pos, events)
	if len(c.Stopped) > 0 {
		r.endStopped(c.Stopped)
	}
	if c.EndAll {
		r.hub.end("", errMissed)
	}
	if c.Queued {
		r.queue.wake()
	}
}

// errMissed ends the watches of a replica that may have missed
// revocations made on another.
var errMissed = fault.New(fault.Unavailable, "this replica may have missed revocations made on another; reconnect and refetch credentials")
