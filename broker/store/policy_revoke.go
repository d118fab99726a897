package store

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/agentictrust/atf/broker/store/kv"
	"github.com/agentictrust/atf/delegation"
)

// PolicyJudge says what a new policy version still allows: a policy change
// revokes the rest (CommitPolicy, ReviewPolicy). It runs inside the change's
// transaction, so it reads the store only through the Reader it is given,
// and it must not block: the store's writes wait for it.
type PolicyJudge interface {
	// KeepGrant says whether live grant g may stay: its delegator may
	// still hold every role it passed on.
	KeepGrant(g delegation.Grant, r Reader) (bool, error)
	// KeepCredential says whether live credential c may stay: the broker
	// would still issue it.
	KeepCredential(c Credential, r Reader) (bool, error)
}

// Reader reads the store inside the transaction of a PolicyJudge.
type Reader struct{ tx kv.Tx }

// Agent is one agent's record.
func (r Reader) Agent(id string) (Agent, error) { return getAgent(r.tx, id) }

// Chain is the grants from the root delegator down to grant id, root
// first (see Store.Chain).
func (r Reader) Chain(id string) ([]delegation.Grant, error) { return chainOf(r.tx, id) }

// revokeDisallowed revokes in tx, at now, what judge no longer allows: the
// lineage of every live grant it drops (the grant, those below it and their
// credentials, through their nodes' anchors), then every live credential
// it drops, through its anchor as a demotion does (RevokeCredentials: a
// batch credential goes with its role node's anchor, and so do its
// siblings under it). The revocation comes back settled.
func (s *Store) revokeDisallowed(tx kv.Tx, judge PolicyJudge, actor, reason string, now time.Time) (Revocation, error) {
	rev := Revocation{Credentials: map[string][]string{}}
	r := Reader{tx}
	grants, err := liveGrants(tx, now)
	if err != nil {
		return rev, err
	}
	var drop []delegation.Grant
	for _, g := range grants {
		keep, err := judge.KeepGrant(g, r)
		if err != nil {
			return rev, fmt.Errorf("judge grant %s: %w", g.ID, err)
		}
		if !keep {
			drop = append(drop, g)
		}
	}
	for _, g := range drop {
		if cur, err := getGrant(tx, g.ID); err != nil || !cur.RevokedAt.IsZero() {
			continue // revoked with a grant above it
		}
		one, err := s.revokeLineage(tx, Root{GrantID: g.ID}, actor, reason, now)
		if err != nil {
			return rev, err
		}
		rev.merge(one)
	}
	// Read after the lineages' revocation: what died with them is not live.
	live, err := liveCredentials(tx, now)
	if err != nil {
		return rev, err
	}
	if err := s.revokeDropped(tx, judge, live, actor, reason, now, &rev); err != nil {
		return rev, err
	}
	return rev, settle(tx, &rev, nil)
}

// revokeDropped revokes the credentials of live that judge drops, and
// those that go with their anchors, as RevokeCredentials does.
func (s *Store) revokeDropped(tx kv.Tx, judge PolicyJudge, live []Credential, actor, reason string, now time.Time, rev *Revocation) error {
	r := Reader{tx}
	revokedAnchors := map[string]bool{}
	gone := map[string]bool{}
	for _, cr := range live {
		keep, err := judge.KeepCredential(cr, r)
		if err != nil {
			return fmt.Errorf("judge credential of %s: %w", cr.AgentID, err)
		}
		if keep {
			continue
		}
		gone[cr.Accessor] = true
		if err := queueCredential(tx, cr, revokedAnchors, now, rev); err != nil {
			return err
		}
	}
	for _, cr := range live {
		if !gone[cr.Accessor] && !revokedAnchors[cr.Anchor] {
			continue
		}
		if err := s.revokeCredential(tx, cr, actor, reason, now, rev); err != nil {
			return err
		}
	}
	return nil
}

// liveGrants are the grants neither revoked nor expired at now.
func liveGrants(tx kv.Tx, now time.Time) ([]delegation.Grant, error) {
	var out []delegation.Grant
	err := tx.Bucket(bucketGrants).ForEach(func(k, v []byte) error {
		var g delegation.Grant
		if err := json.Unmarshal(v, &g); err != nil {
			return fmt.Errorf("store: decode grant %s: %w", k, err)
		}
		if g.RevokedAt.IsZero() && g.ExpiresAt.After(now) {
			out = append(out, g)
		}
		return nil
	})
	return out, err
}

// liveCredentials are the credentials neither revoked (themselves or with
// their anchors) nor expired at now. (Collected before any write: bbolt
// cursors must not see writes mid-iteration.)
func liveCredentials(tx kv.Tx, now time.Time) ([]Credential, error) {
	var out []Credential
	seen := map[string]time.Time{}
	err := tx.Bucket(bucketCredentials).ForEach(func(_, v []byte) error {
		cr, err := readCredential(tx, v, seen)
		if err != nil {
			return err
		}
		if cr.RevokedAt.IsZero() && cr.ExpiresAt.After(now) {
			out = append(out, cr)
		}
		return nil
	})
	return out, err
}
