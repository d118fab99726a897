package store

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/agentictrust/atf/broker/store/kv"
)

// keyRunning is present in the meta bucket while an atfd uses the store
// (with its replica's name after it, in etcd: runKey).
var keyRunning = []byte("running")

// runKey is this store's run marker: one per replica in etcd, so that a
// replica's crash is its own.
func (s *Store) runKey() []byte {
	if s.replica == "" {
		return keyRunning
	}
	return []byte(string(keyRunning) + "/" + s.replica)
}

// mine reports whether what replica made is this store's to recover
// after a crash: everything in a bbolt file, a replica's own in etcd.
func (s *Store) mine(replica string) bool { return s.replica == "" || replica == s.replica }

// single reports whether replica is that of a single atfd on a bbolt file:
// what it made carries no replica's name.
func single(replica string) bool { return replica == "" }

// BeginRun marks the store in use and reports whether the previous run
// ended without EndRun: a crash, a SIGKILL, a power cut. After such an end
// the broker cannot know which tokens Vault issued just before it that were
// never recorded, so BeginRun revokes, in the same transaction, every live
// anchor and every live credential: each credential the broker creates is a
// child of an anchor recorded before it is used, so revoking the anchors in
// Vault kills any unrecorded credential too. Agents fetch anew (the client
// package does so on its own when its revocation watch reconnects).
//
// In etcd, a replica recovers its own run, and also the run of a single
// atfd whose bbolt file was migrated after that atfd crashed (its marker
// has no replica's name, MigrateToEtcd copies it): whichever replica
// begins first revokes what that atfd made, and removes its marker.
//
// The anchors and credentials are queued for revocation in Vault (the
// revoker drains the queue) and one audit record per run recovered says
// what was revoked.
func (s *Store) BeginRun(actor string) (crashed bool, rev Revocation, err error) {
	err = s.update(func(tx kv.Tx) error {
		meta := tx.Bucket(bucketMeta)
		now := s.now().UTC()
		crashed, rev = false, Revocation{Credentials: map[string][]string{}}
		if meta.Get(s.runKey()) != nil {
			own, err := s.revokeAllLive(tx, actor, now, s.mine, "the previous run ended without a clean stop")
			if err != nil {
				return err
			}
			crashed = true
			rev.add(own)
		}
		if s.replica != "" && meta.Get(keyRunning) != nil {
			migrated, err := s.revokeAllLive(tx, actor, now, single, "the run of the single atfd whose bbolt file this store was migrated from ended without a clean stop")
			if err != nil {
				return err
			}
			crashed = true
			rev.add(migrated)
			if err := meta.Delete(keyRunning); err != nil {
				return err
			}
		}
		return meta.Put(s.runKey(), []byte(now.Format(time.RFC3339Nano)))
	})
	if err != nil {
		return false, Revocation{}, fmt.Errorf("store: begin run: %w", err)
	}
	return crashed, rev, nil
}

// EndRun marks a clean end: every issuance of the run was recorded or
// refused. Call it only when no call is in flight.
func (s *Store) EndRun() error {
	return s.update(func(tx kv.Tx) error { return tx.Bucket(bucketMeta).Delete(s.runKey()) })
}

// revokeAllLive revokes every live anchor (parents first) and credential
// made by a replica whose is true of, and audits it with why.
func (s *Store) revokeAllLive(tx kv.Tx, actor string, now time.Time, whose func(replica string) bool, why string) (Revocation, error) {
	rev := Revocation{Credentials: map[string][]string{}}
	var anchors []Anchor
	err := tx.Bucket(bucketAnchors).ForEach(func(_, v []byte) error {
		var a Anchor
		if err := json.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("store: decode anchor: %w", err)
		}
		if a.RevokedAt.IsZero() && a.ExpiresAt.After(now) && whose(a.Replica) {
			anchors = append(anchors, a)
		}
		return nil
	})
	if err != nil {
		return rev, err
	}
	// A child anchor is created after its parent.
	slices.SortFunc(anchors, func(a, b Anchor) int { return a.CreatedAt.Compare(b.CreatedAt) })
	queued := map[string]bool{}
	for _, a := range anchors {
		if err := revokeAnchor(tx, a, now, queued, &rev); err != nil {
			return rev, err
		}
	}
	creds := tx.Bucket(bucketCredentials)
	var live []Credential
	seen := map[string]time.Time{}
	err = creds.ForEach(func(_, v []byte) error {
		var c Credential
		if err := json.Unmarshal(v, &c); err != nil {
			return fmt.Errorf("store: decode credential: %w", err)
		}
		// Live until now: not revoked, alone or with an anchor before.
		if c.RevokedAt.IsZero() && c.ExpiresAt.After(now) && whose(c.Replica) && (queued[c.Anchor] || anchorRevokedAt(tx, c.Anchor, seen).IsZero()) {
			live = append(live, c)
		}
		return nil
	})
	if err != nil {
		return rev, err
	}
	for _, c := range live { // written after the scan: cursors must not see writes
		rev.Credentials[c.AgentID] = append(rev.Credentials[c.AgentID], c.Accessor)
		if queued[c.Anchor] {
			continue // revoked with its anchor, in the store (readCredential) and in Vault
		}
		c.RevokedAt = now
		v, err := json.Marshal(c)
		if err != nil {
			return rev, err
		}
		if err := creds.Put(credentialKey(c.AgentID, c.Accessor), v); err != nil {
			return rev, err
		}
		if !c.inVault() {
			continue // a batch token's anchor expired: so did it, in Vault; an access token has none
		}
		if err := enqueue(tx, c.Accessor, queueItem{Kind: "credential", Order: 1 << 20, Queued: now}); err != nil {
			return rev, err
		}
		rev.Queued = append(rev.Queued, c.Accessor)
	}
	return rev, s.appendAudit(tx, AuditRecord{Time: now, Kind: "crash_recovery", Actor: actor, Subject: "store", Detail: map[string]string{
		"reason":      why + "; tokens Vault issued just before it may be unrecorded",
		"anchors":     strconv.Itoa(len(anchors)),
		"credentials": strconv.Itoa(rev.CredentialCount()),
	}})
}
