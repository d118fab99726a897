package revoke

import (
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

// Feed carries Changes to the other replicas (broker's etcd feed).
type Feed interface {
	Publish(Change)
}

// share sends c to the other replicas, if there are any.
func (r *Revoker) share(c Change) {
	if r.cfg.Feed != nil {
		r.cfg.Feed.Publish(c)
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

// Apply brings this replica up to date with a Change another made: its
// anchors, its watchers, its approvals' waiters. The policy is the
// caller's (the composition root reloads it).
func (r *Revoker) Apply(c Change) {
	if c.DropAll {
		r.anchors.DropAll()
	}
	r.anchors.Drop(c.Drop...)
	if c.Approvals {
		r.cfg.Approvals.Fire()
	}
	for agent, raw := range c.Events {
		ev := &brokerv1.WatchRevocationsResponse{}
		if protojson.Unmarshal([]byte(raw), ev) == nil {
			r.hub.publish(agent, ev)
		}
	}
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
