package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/agentictrust/atf/broker/store/kv"
	"github.com/agentictrust/atf/delegation"
)

// What Prune keeps: at most pruneChunk deletions per transaction, so that a
// large prune never holds the writer long, and historyKeep changes per
// agent (the audit trail has every one).
const (
	pruneChunk  = 5000
	historyKeep = 32
)

// Pruned counts what one Prune removed.
type Pruned struct {
	Credentials, Anchors, Grants, Approvals, History, Sessions int
}

// Total is the number of records removed.
func (p Pruned) Total() int {
	return p.Credentials + p.Anchors + p.Grants + p.Approvals + p.History + p.Sessions
}

// Prune removes what history no longer needs in the store, with one
// store_pruned audit record saying how much: credential records, anchors
// and grants expired before cutoff (nothing of them can be live, and the
// audit trail keeps their issuance and revocation), approvals that expired
// before it, all but the newest historyKeep changes of each agent, and
// the console's ended sessions that expired before it.
// Anchors still queued for revocation in Vault are kept.
func (s *Store) Prune(cutoff time.Time, actor string) (Pruned, error) {
	var p Pruned
	var err error
	steps := []struct {
		n    *int
		scan func(kv.Tx, []byte) ([][]byte, []byte, error)
		drop func(kv.Tx, []byte) error
	}{
		{&p.Credentials, expiredIn(bucketCredentials, cutoff, credentialExpiry), dropCredential},
		{&p.Anchors, expiredIn(bucketAnchors, cutoff, anchorExpiry), dropAnchor},
		{&p.Grants, expiredIn(bucketGrants, cutoff, grantExpiry), dropGrant},
		{&p.Approvals, expiredIn(bucketApprovals, cutoff, approvalExpiry), dropApproval},
		{&p.History, oldHistory, dropKey(bucketHistory)},
		{&p.Sessions, expiredIn(bucketEndedSessions, cutoff, sessionExpiry), dropKey(bucketEndedSessions)},
	}
	for _, st := range steps {
		if *st.n, err = s.pruneBucket(st.scan, st.drop); err != nil {
			return p, err
		}
	}
	if p.Total() == 0 {
		return p, nil
	}
	return p, s.AppendAudit(AuditRecord{Kind: "store_pruned", Actor: actor, Subject: "store", Detail: map[string]string{
		"cutoff": cutoff.UTC().Format(time.RFC3339), "credentials": strconv.Itoa(p.Credentials), "anchors": strconv.Itoa(p.Anchors),
		"grants": strconv.Itoa(p.Grants), "approvals": strconv.Itoa(p.Approvals), "history": strconv.Itoa(p.History),
		"ended_sessions": strconv.Itoa(p.Sessions),
	}})
}

// pruneBucket finds keys to drop with scan (up to pruneChunk at a time,
// from where the last scan stopped) and drops each in a transaction of its
// own chunk, until scan finds none.
func (s *Store) pruneBucket(scan func(kv.Tx, []byte) ([][]byte, []byte, error), drop func(kv.Tx, []byte) error) (int, error) {
	n := 0
	var from []byte
	for {
		var keys [][]byte
		var next []byte
		if err := s.view(func(tx kv.Tx) (err error) { keys, next, err = scan(tx, from); return err }); err != nil {
			return n, err
		}
		if len(keys) > 0 {
			err := s.update(func(tx kv.Tx) error {
				for _, k := range keys {
					if err := drop(tx, k); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return n, fmt.Errorf("store: prune: %w", err)
			}
			n += len(keys)
		}
		if next == nil {
			return n, nil
		}
		from = next
	}
}

// expiredIn scans bucket for values whose expiry (by expiry; ok false to
// keep it regardless) is before cutoff.
func expiredIn(bucket []byte, cutoff time.Time, expiry func(kv.Tx, []byte) (time.Time, bool)) func(kv.Tx, []byte) ([][]byte, []byte, error) {
	return func(tx kv.Tx, from []byte) ([][]byte, []byte, error) {
		var keys [][]byte
		c := tx.Bucket(bucket).Cursor()
		k, v := c.First()
		if from != nil {
			k, v = c.Seek(from)
		}
		for ; k != nil; k, v = c.Next() {
			if len(keys) == pruneChunk {
				return keys, bytes.Clone(k), nil
			}
			if at, ok := expiry(tx, v); ok && at.Before(cutoff) {
				keys = append(keys, bytes.Clone(k))
			}
		}
		return keys, nil, nil
	}
}

func credentialExpiry(_ kv.Tx, v []byte) (time.Time, bool) {
	var c Credential
	return c.ExpiresAt, json.Unmarshal(v, &c) == nil
}

// anchorExpiry keeps an anchor whose revocation Vault has not confirmed.
func anchorExpiry(tx kv.Tx, v []byte) (time.Time, bool) {
	var a Anchor
	if json.Unmarshal(v, &a) != nil || tx.Bucket(bucketRevocations).Get([]byte(a.Accessor)) != nil {
		return time.Time{}, false
	}
	return a.ExpiresAt, true
}

func grantExpiry(_ kv.Tx, v []byte) (time.Time, bool) {
	var g delegation.Grant
	return g.ExpiresAt, json.Unmarshal(v, &g) == nil
}

// approvalExpiry is when an approval stops mattering, whatever its
// status: past it a pending or approved one has expired (Approval.at).
func approvalExpiry(_ kv.Tx, v []byte) (time.Time, bool) {
	var a Approval
	return a.ExpiresAt, json.Unmarshal(v, &a) == nil
}

// oldHistory scans the history for all but each agent's newest
// historyKeep changes.
func oldHistory(tx kv.Tx, from []byte) ([][]byte, []byte, error) {
	var keys [][]byte
	c := tx.Bucket(bucketHistory).Cursor()
	k, _ := c.First()
	if from != nil {
		k, _ = c.Seek(from)
	}
	for k != nil {
		if len(keys) >= pruneChunk {
			return keys, bytes.Clone(k), nil
		}
		// One agent's changes: "<id>\x00<revision>", oldest first.
		prefix := k[:bytes.IndexByte(k, 0)+1]
		var agent [][]byte
		for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			agent = append(agent, bytes.Clone(k))
		}
		if len(agent) > historyKeep {
			keys = append(keys, agent[:len(agent)-historyKeep]...)
		}
	}
	return keys, nil, nil
}

func dropKey(bucket []byte) func(kv.Tx, []byte) error {
	return func(tx kv.Tx, k []byte) error { return tx.Bucket(bucket).Delete(k) }
}

func dropCredential(tx kv.Tx, k []byte) error {
	b := tx.Bucket(bucketCredentials)
	var c Credential
	if v := b.Get(k); v != nil && json.Unmarshal(v, &c) == nil {
		if err := tx.Bucket(bucketBare).Delete(pair(credentialNode(c), c.Accessor)); err != nil {
			return err
		}
		if c.GrantID != "" {
			if err := tx.Bucket(bucketGrantCreds).Delete(pair(c.GrantID, c.Accessor)); err != nil {
				return err
			}
		}
	}
	return b.Delete(k)
}

func dropAnchor(tx kv.Tx, k []byte) error {
	b := tx.Bucket(bucketAnchors)
	var a Anchor
	if v := b.Get(k); v != nil && json.Unmarshal(v, &a) == nil {
		if err := tx.Bucket(bucketNodeAnchors).Delete(pair(a.Node, a.Accessor)); err != nil {
			return err
		}
	}
	return b.Delete(k)
}

// dropGrant removes a grant and its index entries. Its children expired
// no later than it (attenuation), so they go in the same prune.
func dropGrant(tx kv.Tx, k []byte) error {
	g, err := getGrant(tx, string(k))
	if err != nil {
		return nil // already gone
	}
	if err := tx.Bucket(bucketGiven).Delete(pair(g.Delegator, g.ID)); err != nil {
		return err
	}
	if err := tx.Bucket(bucketReceived).Delete(pair(g.Delegatee, g.ID)); err != nil {
		return err
	}
	if g.ParentID != "" {
		if err := tx.Bucket(bucketChildren).Delete(pair(g.ParentID, g.ID)); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketGrants).Delete(k)
}

func dropApproval(tx kv.Tx, k []byte) error {
	if a, err := getApproval(tx, string(k)); err == nil {
		if err := tx.Bucket(bucketOpenApprovals).Delete(pair(a.AgentID, a.ID)); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketApprovals).Delete(k)
}
