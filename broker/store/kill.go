package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/agentictrust/atf/broker/store/kv"
	"github.com/agentictrust/atf/delegation"
)

// keyGlobalKill holds the global kill switch in the meta bucket.
var keyGlobalKill = []byte("global_kill")

// usable refuses an agent that is deregistered or held by the kill switch,
// its own or the global one.
func usable(tx kv.Tx, a Agent) error {
	switch {
	case a.Status != Active:
		return refuse(ErrDeregistered, "%s", a.ID)
	case a.Kill != nil:
		return refuse(ErrKilled, "agent %s", a.ID)
	}
	if tx.Bucket(bucketMeta).Get(keyGlobalKill) != nil {
		return refuse(ErrKilled, "every agent (global switch)")
	}
	return nil
}

// KillAgent stops an agent: in one transaction it is marked killed (so
// nothing more is issued to it or under it, whatever is in flight), its
// lineage is revoked as RevokeLineage does, and, with lineage, every agent
// that holds a grant below it is killed too. It returns the revocation and
// the agents killed.
func (s *Store) KillAgent(id, actor, reason string, lineage bool) (Revocation, []string, error) {
	var rev Revocation
	var killed []string
	err := s.update(func(tx kv.Tx) error {
		rev, killed = Revocation{Credentials: map[string][]string{}}, nil
		now := s.now().UTC()
		queue := []string{id}
		seen := map[string]bool{id: true}
		for len(queue) > 0 {
			cur := queue[0]
			queue = queue[1:]
			a, err := getAgent(tx, cur)
			if err != nil {
				return err
			}
			if a.Status == Active && a.Kill == nil {
				before := a
				a.Kill = &Kill{At: now, By: actor, Reason: reason}
				if cur != id {
					a.Kill.Lineage = id
				}
				a.UpdatedAt, a.UpdatedBy, a.Revision = now, actor, a.Revision+1
				if err := s.putAgent(tx, before, a, AgentChange{Action: ActionKill, Reason: reason}); err != nil {
					return err
				}
				killed = append(killed, cur)
			}
			r, err := s.revokeLineage(tx, Root{AgentID: cur}, actor, reason, now)
			if err != nil {
				return err
			}
			rev.merge(r)
			if !lineage {
				continue
			}
			// The lineage below: everyone holding a grant from cur or
			// below it (revoked just now or earlier).
			grants, err := delegation.LineageOfAgent(cur,
				func(id string) ([]delegation.Grant, error) { return given(tx, id) },
				func(id string) ([]delegation.Grant, error) { return childrenOf(tx, id) })
			if err != nil {
				return err
			}
			for _, g := range grants {
				if !seen[g.Delegatee] {
					seen[g.Delegatee] = true
					queue = append(queue, g.Delegatee)
				}
			}
		}
		return nil
	})
	if err != nil {
		return Revocation{}, nil, fmt.Errorf("store: kill agent: %w", err)
	}
	return rev, killed, s.settled(&rev, nil)
}

// ReleaseAgent lifts the kill switch from an agent. Its revoked grants and
// credentials stay revoked.
func (s *Store) ReleaseAgent(id, actor, reason string) (Agent, error) {
	var a Agent
	err := s.update(func(tx kv.Tx) error {
		var err error
		if a, err = getAgent(tx, id); err != nil {
			return err
		}
		if a.Kill == nil {
			return refuse(ErrConflict, "agent %s is not stopped by the kill switch", id)
		}
		before := a
		a.Kill = nil
		a.UpdatedAt, a.UpdatedBy, a.Revision = s.now().UTC(), actor, a.Revision+1
		return s.putAgent(tx, before, a, AgentChange{Action: ActionRelease, Reason: reason})
	})
	if err != nil {
		return Agent{}, fmt.Errorf("store: release agent: %w", err)
	}
	return a, nil
}

// killAllChunk is how many agents' lineages one transaction of KillAll
// revokes at first: one transaction for a whole fleet would pass etcd's
// limits on a transaction's operations and size, and the switch with it.
// A chunk still too large (agents with many credentials) is halved, down
// to one agent.
const killAllChunk = 16

// KillAll sets the global kill switch and revokes every agent's lineage:
// nothing is issued to anyone until ReleaseAll.
//
// The switch commits first, alone: from then on no transaction that makes
// an anchor or records a credential for any agent commits (usable reads
// it in each), so the lineages are then revoked killAllChunk agents per
// transaction, each with its Vault revocations queued. If one of those
// fails, the switch stays set and the error says so: KillAll again
// finishes the rest (a revoked lineage is revoked once).
func (s *Store) KillAll(actor, reason string) (Revocation, error) {
	now := s.now().UTC()
	err := s.update(func(tx kv.Tx) error {
		v, err := json.Marshal(Kill{At: now, By: actor, Reason: reason})
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketMeta).Put(keyGlobalKill, v); err != nil {
			return err
		}
		return s.appendAudit(tx, AuditRecord{Time: now, Kind: "global_kill", Actor: actor, Subject: "*", Detail: map[string]string{"reason": reason, "decision": "deny"}})
	})
	if err != nil {
		return Revocation{}, fmt.Errorf("store: kill all: %w", err)
	}
	rev := Revocation{Credentials: map[string][]string{}}
	var after []byte
	chunk := killAllChunk
	for {
		ids, err := s.agentsAfter(after, chunk)
		if err == nil && len(ids) == 0 {
			break
		}
		var part Revocation
		if err == nil {
			err = s.update(func(tx kv.Tx) error {
				part = Revocation{Credentials: map[string][]string{}}
				for _, id := range ids {
					r, err := s.revokeLineage(tx, Root{AgentID: id}, actor, reason, now)
					if err != nil {
						return err
					}
					part.merge(r)
				}
				return nil
			})
		}
		if errors.Is(err, kv.ErrTooLarge) && chunk > 1 {
			chunk /= 2
			continue
		}
		if err != nil {
			return rev, fmt.Errorf("store: kill all: the switch is set (nothing is issued), but revoking every lineage stopped; kill all again to finish: %w", err)
		}
		rev.merge(part)
		after = []byte(ids[len(ids)-1])
	}
	return rev, s.settled(&rev, nil)
}

// agentsAfter is up to n agent IDs after after (from the first if nil),
// in key order.
func (s *Store) agentsAfter(after []byte, n int) ([]string, error) {
	var ids []string
	err := s.view(func(tx kv.Tx) error {
		c := tx.Bucket(bucketAgents).Cursor()
		k, _ := c.Seek(after)
		if k != nil && after != nil && string(k) == string(after) {
			k, _ = c.Next()
		}
		for ; k != nil && len(ids) < n; k, _ = c.Next() {
			ids = append(ids, string(k))
		}
		return nil
	})
	return ids, err
}

// ReleaseAll lifts the global kill switch.
func (s *Store) ReleaseAll(actor, reason string) error {
	err := s.update(func(tx kv.Tx) error {
		b := tx.Bucket(bucketMeta)
		if b.Get(keyGlobalKill) == nil {
			return refuse(ErrConflict, "the global kill switch is not set")
		}
		if err := b.Delete(keyGlobalKill); err != nil {
			return err
		}
		return s.appendAudit(tx, AuditRecord{Time: s.now().UTC(), Kind: "global_release", Actor: actor, Subject: "*", Detail: map[string]string{"reason": reason}})
	})
	if err != nil {
		return fmt.Errorf("store: release all: %w", err)
	}
	return nil
}

// GlobalKill returns the global kill switch, or nil when it is not set.
func (s *Store) GlobalKill() (*Kill, error) {
	var k *Kill
	err := s.read(func(tx kv.Tx) error {
		v := tx.Bucket(bucketMeta).Get(keyGlobalKill)
		if v == nil {
			return nil
		}
		k = &Kill{}
		return json.Unmarshal(v, k)
	})
	return k, err
}

// Caller reads, in one snapshot, what a decision reads first: the agent
// record of id and the global kill switch (nil if off). For an
// unregistered caller err is ErrNotFound, and the switch is still read.
// In etcd that is one linearizable read where two calls were two.
func (s *Store) Caller(id string) (Agent, *Kill, error) {
	c := s.CallerLatest(id)
	return c.Agent, c.Kill, c.Err
}

// CallerLatest is Caller as a CallerRead: the latest state.
func (s *Store) CallerLatest(id string) CallerRead { return s.caller(id, s.read) }

// CallerRead is what CallerRecent read.
type CallerRead struct {
	Agent Agent
	Kill  *Kill
	// Err is ErrNotFound for an unregistered caller.
	Err error
	// Recent says the read may be older than the latest state (etcd):
	// what is decided on it must be checked again (RecordCredential
	// checks an issuance's at its commit) or confirmed with Caller.
	Recent bool
}

// Same reports whether c and o read the same state: the same agent
// record (by revision), the same kill switch.
func (c CallerRead) Same(o CallerRead) bool {
	switch {
	case errors.Is(c.Err, ErrNotFound) != errors.Is(o.Err, ErrNotFound), (c.Kill == nil) != (o.Kill == nil):
		return false
	case c.Kill != nil && (!c.Kill.At.Equal(o.Kill.At) || c.Kill.By != o.Kill.By || c.Kill.Reason != o.Kill.Reason || c.Kill.Lineage != o.Kill.Lineage):
		return false
	}
	return c.Agent.Revision == o.Agent.Revision
}

// CallerRecent is Caller on a recent snapshot: in etcd, the state of the
// member that answers, at least as new as everything this replica has
// read or written, without the round trip to etcd's leader a
// linearizable read waits for (docs/scaling.md); in bbolt, Caller.
func (s *Store) CallerRecent(id string) CallerRead {
	if s.db != nil {
		return s.CallerLatest(id)
	}
	var recent bool
	c := s.caller(id, func(fn func(kv.Tx) error) error {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		var err error
		recent, err = s.etcd.ViewRecent(ctx, fn)
		return unavailable(err)
	})
	c.Recent = recent
	return c
}

// caller reads id's CallerRead through read.
func (s *Store) caller(id string, read func(func(kv.Tx) error) error) CallerRead {
	var a Agent
	var k *Kill
	var agentErr error
	err := read(func(tx kv.Tx) error {
		kv.Prefetch(tx, kv.Key{Bucket: bucketAgents, Key: []byte(id)}, kv.Key{Bucket: bucketMeta, Key: keyGlobalKill})
		a, agentErr = getAgent(tx, id)
		if agentErr != nil && !errors.Is(agentErr, ErrNotFound) {
			return agentErr
		}
		if v := tx.Bucket(bucketMeta).Get(keyGlobalKill); v != nil {
			k = &Kill{}
			return json.Unmarshal(v, k)
		}
		return nil
	})
	if err != nil {
		return CallerRead{Err: err}
	}
	return CallerRead{Agent: a, Kill: k, Err: agentErr}
}

// KilledAgents lists the agents the kill switch holds.
func (s *Store) KilledAgents() ([]Agent, error) {
	var out []Agent
	err := s.view(func(tx kv.Tx) error {
		return tx.Bucket(bucketAgents).ForEach(func(k, v []byte) error {
			var a Agent
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("store: decode agent %s: %w", k, err)
			}
			if a.Kill != nil {
				out = append(out, a)
			}
			return nil
		})
	})
	return out, err
}

// merge adds r to rev.
func (rev *Revocation) merge(r Revocation) {
	rev.Grants = append(rev.Grants, r.Grants...)
	for agent, accs := range r.Credentials {
		rev.Credentials[agent] = append(rev.Credentials[agent], accs...)
	}
	rev.Queued = append(rev.Queued, r.Queued...)
	rev.Approvals = append(rev.Approvals, r.Approvals...)
	rev.Nodes = append(rev.Nodes, r.Nodes...)
	rev.derived = append(rev.derived, r.derived...)
}

// keyBaselines held every agent's behaviour baseline in one value, before
// they had a key each (bucketBaselines); it is read once, and deleted by
// the next save.
var keyBaselines = []byte("baselines")

// bucketBaselines holds the behaviour monitor's baselines, one key per
// agent (opaque JSON): one value for all grew past what etcd takes in a
// request (docs/scaling.md).
var bucketBaselines = []byte("baselines")

// baselineChunk bounds the baselines written per transaction.
const baselineChunk = 500

// SaveBaselines keeps the behaviour monitor's baselines of the agents in
// byAgent (opaque JSON each), leaving the others' as they are, in
// transactions of up to baselineChunk.
func (s *Store) SaveBaselines(byAgent map[string][]byte) error {
	agents := slices.Sorted(maps.Keys(byAgent))
	// The first transaction runs even with nothing to save: it deletes
	// the legacy value.
	for i := 0; i == 0 || i < len(agents); i += baselineChunk {
		chunk, legacy := agents[i:min(i+baselineChunk, len(agents))], i == 0
		if err := s.update(func(tx kv.Tx) error {
			if err := s.room(tx); err != nil {
				return err
			}
			if legacy && tx.Bucket(bucketMeta).Get(keyBaselines) != nil {
				if err := tx.Bucket(bucketMeta).Delete(keyBaselines); err != nil {
					return err
				}
			}
			for _, a := range chunk {
				if err := tx.Bucket(bucketBaselines).Put([]byte(a), byAgent[a]); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// Baselines returns what SaveBaselines kept, by agent, and the value of
// every agent's baselines as a store written before they had a key each
// holds it (nil if none).
func (s *Store) Baselines() (byAgent map[string][]byte, legacy []byte, err error) {
	byAgent = map[string][]byte{}
	err = s.view(func(tx kv.Tx) error {
		legacy = append([]byte(nil), tx.Bucket(bucketMeta).Get(keyBaselines)...)
		return tx.Bucket(bucketBaselines).ForEach(func(k, v []byte) error {
			byAgent[string(k)] = append([]byte(nil), v...)
			return nil
		})
	})
	if len(legacy) == 0 {
		legacy = nil
	}
	return byAgent, legacy, err
}
