package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/agentictrust/atf/broker/store/kv"
)

// PolicyVersion is one stored version of the segmentation policy. Versions
// are never changed or removed: a rollback stores an earlier version's text
// again as the newest version, so the newest version is always the current
// one and the history shows every change.
type PolicyVersion struct {
	Version        uint64    `json:"version"`
	CreatedAt      time.Time `json:"created_at"`
	Author         string    `json:"author"`
	Comment        string    `json:"comment"`
	Model          string    `json:"model"`
	Policy         string    `json:"policy"`
	Digest         string    `json:"digest"`
	Lines          int       `json:"lines"`
	RolledBackFrom uint64    `json:"rolled_back_from,omitempty"`
}

// PutPolicy stores pv as the newest version and returns it with its number.
// If expected is not 0 and the current version is not expected, it fails
// with ErrConflict: someone else changed the policy meanwhile. The change
// is audited in the same transaction. It revokes nothing: CommitPolicy
// does, for a version put in force over live credentials.
func (s *Store) PutPolicy(pv PolicyVersion, expected uint64) (PolicyVersion, error) {
	pv, _, err := s.CommitPolicy(pv, expected, nil)
	return pv, err
}

// CommitPolicy is PutPolicy that also revokes, in the same transaction,
// every live grant and credential judge says the new version no longer
// allows (nil: none), as a lineage revocation does: through their anchors,
// queued for Vault (docs/security.md, "A policy change"). The change's
// audit record counts what it revoked. The caller finishes the returned
// Revocation (Vault, watchers) and puts the version in force; a credential
// decided under an older version and recorded after this commit is refused
// (Credential.PolicyVersion), so nothing the new version forbids outlives
// it. The Revocation is settled: its Credentials list every credential.
func (s *Store) CommitPolicy(pv PolicyVersion, expected uint64, judge PolicyJudge) (PolicyVersion, Revocation, error) {
	var rev Revocation
	err := s.update(func(tx kv.Tx) error {
		if err := s.room(tx); err != nil {
			return err
		}
		cur := s.currentPolicy(tx)
		if expected != 0 && cur != expected {
			return refuse(ErrConflict, "the policy is at version %d, not %d; review the change and retry", cur, expected)
		}
		pv.Version = cur + 1
		pv.CreatedAt = s.now().UTC()
		detail := map[string]string{"version": strconv.FormatUint(pv.Version, 10), "digest": pv.Digest,
			"comment": pv.Comment, "lines": strconv.Itoa(pv.Lines), "previous": strconv.FormatUint(cur, 10)}
		if judge != nil {
			var err error
			reason := fmt.Sprintf("policy version %d no longer allows it", pv.Version)
			if rev, err = s.revokeDisallowed(tx, judge, pv.Author, reason, pv.CreatedAt); err != nil {
				return err
			}
			detail["grants_revoked"], detail["credentials_revoked"] = strconv.Itoa(len(rev.Grants)), strconv.Itoa(rev.CredentialCount())
		}
		v, err := json.Marshal(pv)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketPolicies).Put(seqKey(pv.Version), v); err != nil {
			return err
		}
		if err := s.policyTail().appended(tx, pv.Version); err != nil {
			return err
		}
		kind := "policy_updated"
		if pv.RolledBackFrom != 0 {
			kind = "policy_rolled_back"
			detail["restored"] = strconv.FormatUint(pv.RolledBackFrom, 10)
		}
		return s.appendAudit(tx, AuditRecord{Time: pv.CreatedAt, Kind: kind, Actor: pv.Author, Subject: "policy", Detail: detail})
	})
	if err != nil {
		return PolicyVersion{}, Revocation{}, fmt.Errorf("store: put policy: %w", err)
	}
	return pv, rev, nil
}

// ReviewPolicy is what CommitPolicy with judge would revoke now, without
// revoking it: the same transaction, rolled back (a dry run).
func (s *Store) ReviewPolicy(judge PolicyJudge) (Revocation, error) {
	var rev Revocation
	err := s.update(func(tx kv.Tx) error {
		var err error
		if rev, err = s.revokeDisallowed(tx, judge, "", "dry run", s.now().UTC()); err != nil {
			return err
		}
		return errDryRun
	})
	if !errors.Is(err, errDryRun) {
		return Revocation{}, fmt.Errorf("store: review policy: %w", err)
	}
	return rev, nil
}

// errDryRun rolls back ReviewPolicy's transaction.
var errDryRun = errors.New("store: dry run")

// currentPolicy is the number of the newest stored version (0: none).
func (s *Store) currentPolicy(tx kv.Tx) uint64 {
	n, _ := s.policyTail().newest(tx)
	return n
}

// Policy returns one version, or the current one if version is 0. With no
// policy stored it fails with ErrNotFound.
func (s *Store) Policy(version uint64) (PolicyVersion, error) {
	var pv PolicyVersion
	err := s.view(func(tx kv.Tx) error {
		var v []byte
		if version == 0 {
			_, v = s.policyTail().newest(tx)
		} else {
			v = tx.Bucket(bucketPolicies).Get(seqKey(version))
		}
		if v == nil {
			if version == 0 {
				return refuse(ErrNotFound, "no policy has been set")
			}
			return refuse(ErrNotFound, "policy version %d", version)
		}
		return json.Unmarshal(v, &pv)
	})
	return pv, err
}

// Policies returns up to limit versions below before (0: from the newest),
// newest first, without their text. Versions are numbered 1, 2, ... with
// none removed, so they are read by number (in etcd, in one request).
func (s *Store) Policies(before uint64, limit int) ([]PolicyVersion, error) {
	var out []PolicyVersion
	err := s.view(func(tx kv.Tx) error {
		top := s.currentPolicy(tx)
		if before != 0 {
			top = min(top, before-1)
		}
		var keys []kv.Key
		for n := top; n > 0 && len(keys) < limit; n-- {
			keys = append(keys, kv.Key{Bucket: bucketPolicies, Key: seqKey(n)})
		}
		kv.Prefetch(tx, keys...)
		for _, k := range keys {
			v := tx.Bucket(bucketPolicies).Get(k.Key)
			if v == nil {
				continue
			}
			var pv PolicyVersion
			if err := json.Unmarshal(v, &pv); err != nil {
				return fmt.Errorf("store: decode policy version %d: %w", binary.BigEndian.Uint64(k.Key), err)
			}
			pv.Model, pv.Policy = "", ""
			out = append(out, pv)
		}
		return nil
	})
	return out, err
}
