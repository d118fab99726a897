package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
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
// never recorded, so BeginRun revokes every live anchor and every live
// credential of that run before it returns: each credential the broker
// creates is a child of an anchor recorded before it is used, so revoking
// the anchors in Vault kills any unrecorded credential too. Agents fetch
// anew (the client package does so on its own when its revocation watch
// reconnects).
//
// In etcd, a replica recovers its own run, and also the run of a single
// atfd whose bbolt file was migrated after that atfd crashed (its marker
// has no replica's name, MigrateToEtcd copies it): whichever replica
// begins first revokes what that atfd made, and removes its marker.
//
// The anchors and credentials are queued for revocation in Vault (the
// revoker drains the queue) and one audit record per run recovered says
// what was revoked. The revocation runs recoverChunk records per
// transaction (etcd's limits; a store keeps expired records for
// store_retention, so a run may have made hundreds of thousands); the
// crashed run's marker stays until the last one commits, so a crash
// during the recovery is recovered again at the next start.
func (s *Store) BeginRun(actor string) (crashed bool, rev Revocation, err error) {
	var own, migrated bool
	err = s.view(func(tx kv.Tx) error {
		meta := tx.Bucket(bucketMeta)
		own = meta.Get(s.runKey()) != nil
		migrated = s.replica != "" && meta.Get(keyRunning) != nil
		return nil
	})
	rev = Revocation{Credentials: map[string][]string{}}
	for _, run := range []struct {
		crashed bool
		whose   func(replica string) bool
		marker  []byte // removed with the recovery's audit record ("" keeps it)
		why     string
	}{
		{own, s.mine, nil, "the previous run ended without a clean stop"},
		{migrated, single, keyRunning, "the run of the single atfd whose bbolt file this store was migrated from ended without a clean stop"},
	} {
		if err != nil || !run.crashed {
			continue
		}
		var r Revocation
		if r, err = s.recoverRun(actor, run.whose, run.marker, run.why); err == nil {
			crashed = true
			rev.merge(r)
		}
	}
	if err == nil {
		err = s.update(func(tx kv.Tx) error {
			return tx.Bucket(bucketMeta).Put(s.runKey(), []byte(s.now().UTC().Format(time.RFC3339Nano)))
		})
	}
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

// recoverChunk is how many anchors, or credentials, one transaction of
// crash recovery revokes.
const recoverChunk = 64

// recoverRun revokes every live anchor (parents first) and credential
// made by a replica whose is true of, recoverChunk per transaction, then
// audits it with why (and removes marker, if set, in that transaction).
// Each transaction reads again what it revokes: a record revoked since the
// scan (by another replica recovering the same migrated run) is skipped.
func (s *Store) recoverRun(actor string, whose func(replica string) bool, marker []byte, why string) (Revocation, error) {
	now := s.now().UTC()
	anchors, creds, err := s.liveOfRun(now, whose)
	if err != nil {
		return Revocation{}, err
	}
	rev := Revocation{Credentials: map[string][]string{}}
	queued := map[string]bool{} // anchors this recovery revoked
	for chunk := range slices.Chunk(anchors, recoverChunk) {
		var part Revocation
		var partQueued map[string]bool
		err := s.update(func(tx kv.Tx) error {
			part, partQueued = Revocation{Credentials: map[string][]string{}, orderBase: len(rev.Queued)}, map[string]bool{}
			for _, acc := range chunk {
				an, err := getAnchor(tx, acc)
				if err != nil {
					return err
				}
				if err := revokeAnchor(tx, an, now, partQueued, &part); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return rev, err
		}
		rev.merge(part)
		maps.Copy(queued, partQueued)
	}
	nAnchors := len(rev.Queued)
	for chunk := range slices.Chunk(creds, recoverChunk) {
		var part Revocation
		err := s.update(func(tx kv.Tx) error {
			part = Revocation{Credentials: map[string][]string{}}
			seen := map[string]time.Time{}
			for _, key := range chunk {
				if err := recoverCredential(tx, key, now, whose, queued, seen, &part); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return rev, err
		}
		rev.merge(part)
	}
	return rev, s.update(func(tx kv.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if marker != nil {
			if meta.Get(marker) == nil && len(rev.Queued) == 0 && rev.CredentialCount() == 0 {
				return nil // another replica recovered this run first
			}
			if err := meta.Delete(marker); err != nil {
				return err
			}
		}
		return s.appendAudit(tx, AuditRecord{Time: now, Kind: "crash_recovery", Actor: actor, Subject: "store", Detail: map[string]string{
			"reason":      why + "; tokens Vault issued just before it may be unrecorded",
			"anchors":     strconv.Itoa(nAnchors),
			"credentials": strconv.Itoa(rev.CredentialCount()),
		}})
	})
}

// liveOfRun lists the live anchors (by creation: a child anchor is made
// after its parent) and the keys of the credential records made by a
// replica whose is true of, a page of keys per read (scanPages).
func (s *Store) liveOfRun(now time.Time, whose func(replica string) bool) (anchors []string, creds [][]byte, err error) {
	var live []Anchor
	err = s.scanPages(bucketAnchors, func(_, v []byte) error {
		var a Anchor
		if err := json.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("store: decode anchor: %w", err)
		}
		if a.RevokedAt.IsZero() && a.ExpiresAt.After(now) && whose(a.Replica) {
			live = append(live, a)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	slices.SortFunc(live, func(a, b Anchor) int { return a.CreatedAt.Compare(b.CreatedAt) })
	for _, a := range live {
		anchors = append(anchors, a.Accessor)
	}
	err = s.scanPages(bucketCredentials, func(k, v []byte) error {
		var c Credential
		if err := json.Unmarshal(v, &c); err != nil {
			return fmt.Errorf("store: decode credential: %w", err)
		}
		if c.RevokedAt.IsZero() && c.ExpiresAt.After(now) && whose(c.Replica) {
			creds = append(creds, bytes.Clone(k))
		}
		return nil
	})
	return anchors, creds, err
}

// scanPage is how many keys one read of scanPages walks.
const scanPage = 256

// scanPages calls fn with every key and value of bucket, scanPage keys per
// read transaction: one read of a whole large bucket would have to finish
// within one etcd timeout (store.etcd.timeout). Records written meanwhile
// may or may not be seen; fn must copy what it keeps.
func (s *Store) scanPages(bucket []byte, fn func(k, v []byte) error) error {
	var from []byte
	for {
		var next []byte
		err := s.view(func(tx kv.Tx) error {
			c := tx.Bucket(bucket).Cursor()
			k, v := c.First()
			if from != nil {
				k, v = c.Seek(from)
			}
			for n := 0; k != nil; k, v = c.Next() {
				if n == scanPage {
					next = bytes.Clone(k)
					return nil
				}
				if err := fn(k, v); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil || next == nil {
			return err
		}
		from = next
	}
}

// recoverCredential revokes the credential at key if it is still live: one
// under an anchor this recovery revoked (queued) is revoked with it, in
// the store (readCredential) and in Vault; one alone, or under an anchor
// that was live, is marked and queued on its own.
func recoverCredential(tx kv.Tx, key []byte, now time.Time, whose func(string) bool, queued map[string]bool, seen map[string]time.Time, rev *Revocation) error {
	creds := tx.Bucket(bucketCredentials)
	v := creds.Get(key)
	if v == nil {
		return nil // pruned since the scan
	}
	var c Credential
	if err := json.Unmarshal(v, &c); err != nil {
		return fmt.Errorf("store: decode credential: %w", err)
	}
	// Live until now: not revoked, alone or with an anchor before.
	if !c.RevokedAt.IsZero() || !c.ExpiresAt.After(now) || !whose(c.Replica) || !(queued[c.Anchor] || anchorRevokedAt(tx, c.Anchor, seen).IsZero()) {
		return nil
	}
	rev.Credentials[c.AgentID] = append(rev.Credentials[c.AgentID], c.Accessor)
	if queued[c.Anchor] {
		return nil // revoked with its anchor, in the store (readCredential) and in Vault
	}
	c.RevokedAt = now
	v, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if err := creds.Put(key, v); err != nil {
		return err
	}
	if !c.inVault() {
		return nil // a batch token's anchor expired: so did it, in Vault; an access token has none
	}
	if err := enqueue(tx, c.Accessor, queueItem{Kind: "credential", Order: 1 << 20, Queued: now}); err != nil {
		return err
	}
	rev.Queued = append(rev.Queued, c.Accessor)
	return nil
}
