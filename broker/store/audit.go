package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"github.com/agentictrust/atf/broker/store/kv"
)

// AuditRecord is one entry of the tamper-evident audit trail. Records are
// numbered and hash-chained: each Hash covers the record and the previous
// record's Hash, so editing, inserting or deleting a record breaks the chain
// from there on (VerifyAudit). What the chain alone cannot show is the
// newest records cut off, or the whole tail rewritten with fresh hashes: for
// that, keep the latest Seq and Hash somewhere the store's writer cannot
// change (a log shipper, a notary).
type AuditRecord struct {
	Seq     uint64            `json:"seq"`
	Time    time.Time         `json:"time"`
	Kind    string            `json:"kind"`
	Actor   string            `json:"actor"`
	Subject string            `json:"subject"`
	Detail  map[string]string `json:"detail,omitempty"`
	Prev    string            `json:"prev"`
	Hash    string            `json:"hash"`
}

// AppendAudit appends records to the audit trail in one transaction (in
// etcd, in transactions of at most auditChunk records, each a contiguous
// run of the chain: these records change nothing else).
func (s *Store) AppendAudit(recs ...AuditRecord) error {
	if s.db == nil && len(recs) > auditChunk {
		for len(recs) > 0 {
			n := min(auditChunk, len(recs))
			if err := s.AppendAudit(recs[:n]...); err != nil {
				return err
			}
			recs = recs[n:]
		}
		return nil
	}
	// Denials come in bursts: they share commits like issuances do.
	return s.group(func(tx kv.Tx) error {
		if err := s.room(tx); err != nil {
			return err
		}
		for _, r := range recs {
			if r.Time.IsZero() {
				r.Time = s.now().UTC()
			}
			if err := s.appendAudit(tx, r); err != nil {
				return err
			}
		}
		return nil
	})
}

// AppendSummary appends r, the summary of a change already committed with
// audit records of its own (a revocation's counts and what Vault
// confirmed), and returns once r is in the chain, before its commit's
// fsync (groupEarly): a crash then loses the summary, never the change.
// If the commit fails, lost is called. On etcd it returns after the
// commit, as every write does.
func (s *Store) AppendSummary(r AuditRecord, lost func()) error {
	return s.groupEarly(func(tx kv.Tx) error {
		if err := s.room(tx); err != nil {
			return err
		}
		if r.Time.IsZero() {
			r.Time = s.now().UTC()
		}
		return s.appendAudit(tx, r)
	}, lost)
}

// Audit returns up to limit records with Seq > after, in order, from the
// segments (Options.AuditDir) and the store.
func (s *Store) Audit(after uint64, limit int) ([]AuditRecord, error) {
	var out []AuditRecord
	if limit <= 0 {
		return nil, nil
	}
	err := s.eachAudit(after, func(r AuditRecord) (bool, error) {
		out = append(out, r)
		return len(out) < limit, nil
	})
	return out, err
}

// VerifyAudit checks the whole chain, across the sealed segments (each as
// sealed), the open one and the store, and returns the number of records.
// It fails at the first record that was edited, inserted or removed. A
// store opened without its AuditDir (a backup's copy, say) verifies the
// records it holds, from its checkpoint on.
func (s *Store) VerifyAudit() (uint64, error) {
	var cp auditCheckpoint
	if err := s.view(func(tx kv.Tx) (err error) { cp, err = checkpoint(tx); return err }); err != nil {
		return 0, err
	}
	var n uint64
	prev := ""
	if s.auditDir == "" {
		n, prev = cp.Seq, cp.Hash
	} else if err := verifySegments(s.auditDir, cp); err != nil {
		return 0, err
	}
	err := s.eachAudit(n, func(r AuditRecord) (bool, error) {
		n++
		if r.Seq != n {
			return false, fmt.Errorf("store: audit record %d: expected sequence number %d (a record was removed or inserted)", r.Seq, n)
		}
		if r.Prev != prev {
			return false, fmt.Errorf("store: audit record %d does not follow record %d", r.Seq, n-1)
		}
		if r.Hash != r.ComputeHash() {
			return false, fmt.Errorf("store: audit record %d was altered", r.Seq)
		}
		prev = r.Hash
		return true, nil
	})
	if err == nil {
		err = s.checkTip(n, prev)
	}
	return n, err
}

// checkTip checks that the chain read ends where the checkpoint says the
// shipped part ends, at least: a segment cut short and nothing after it
// in the store would otherwise verify.
func (s *Store) checkTip(n uint64, hash string) error {
	return s.view(func(tx kv.Tx) error {
		cp, err := checkpoint(tx)
		if err != nil {
			return err
		}
		if n < cp.Seq {
			return fmt.Errorf("store: the audit trail ends at record %d, but %d records were shipped to segments: the segments were cut short", n, cp.Seq)
		}
		if n == cp.Seq && hash != cp.Hash {
			return fmt.Errorf("store: audit record %d is not the one shipped", n)
		}
		return nil
	})
}

// appendAudit appends r in tx, filling Seq, Prev and Hash. Once tx
// commits, Options.OnAudit is called.
func (s *Store) appendAudit(tx kv.Tx, r AuditRecord) error {
	r.Detail = s.withRequestIDs(r.Detail)
	if s.onAudit != nil {
		tx.OnCommit(s.onAudit)
	}
	b := tx.Bucket(bucketAudit)
	kv.AppendOnly(b)
	last, err := s.lastAudit(tx)
	if err != nil {
		return err
	}
	r.Prev, r.Seq = last.Hash, last.Seq+1
	// Records are in time order too (queries rely on it): a record stamped
	// before its commit by a slower writer takes its predecessor's time.
	if r.Time.Before(last.Time) {
		r.Time = last.Time
	}
	r.Time = r.Time.UTC()
	r.Hash = r.ComputeHash()
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: encode audit record: %w", err)
	}
	if err := b.Put(seqKey(r.Seq), v); err != nil {
		return err
	}
	return s.auditTail().appended(tx, r.Seq)
}

// withRequestIDs is d with the handle's request (ForRequest) where d says
// nothing of it.
func (s *Store) withRequestIDs(d map[string]string) map[string]string {
	add := map[string]string{}
	for k, v := range map[string]string{"request_id": s.req.ID, "client_request_id": s.req.ClientID, "actor_name": s.req.ActorName} {
		if v != "" && d[k] == "" {
			add[k] = v
		}
	}
	if len(add) == 0 {
		return d
	}
	out := maps.Clone(d)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, add)
	return out
}

// ComputeHash is SHA-256 over the record's JSON without its Hash: what Hash
// must be for an unaltered record. Anyone holding a copy of the trail (the
// JSON-lines stream, say) can check the chain with it.
func (r AuditRecord) ComputeHash() string {
	r.Hash = ""
	v, _ := json.Marshal(r) // a struct of strings, times and a string map always encodes
	// JSON writes invalid UTF-8 as \ufffd, which reads back as U+FFFD and
	// encodes as itself: hash the record as it reads back, or it never
	// verifies.
	if bytes.Contains(v, []byte(`\ufffd`)) {
		var back AuditRecord
		_ = json.Unmarshal(v, &back)
		v, _ = json.Marshal(back)
	}
	sum := sha256.Sum256(v)
	return hex.EncodeToString(sum[:])
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// AuditFilter selects audit records; zero fields match anything.
type AuditFilter struct {
	// Agent matches the actor or the record's "agent" detail.
	Agent    string
	Role     string
	Decision string
	Kind     string
	Since    time.Time
	Until    time.Time
}

func (f AuditFilter) match(r AuditRecord) bool {
	return (f.Agent == "" || r.Actor == f.Agent || r.Detail["agent"] == f.Agent) &&
		(f.Role == "" || r.Detail["role"] == f.Role) &&
		(f.Decision == "" || r.Detail["decision"] == f.Decision) &&
		(f.Kind == "" || r.Kind == f.Kind) &&
		(f.Since.IsZero() || !r.Time.Before(f.Since)) &&
		(f.Until.IsZero() || r.Time.Before(f.Until))
}

// maxAuditScan bounds the records one query reads, so a selective filter
// over a long trail answers in bounded time; the caller continues from the
// returned position.
const maxAuditScan = 100_000

// QueryAudit returns up to limit records with Seq > after that match f, in
// order, and the Seq to continue after (0 when the trail is exhausted).
func (s *Store) QueryAudit(f AuditFilter, after uint64, limit int) ([]AuditRecord, uint64, error) {
	var out []AuditRecord
	var next uint64
	scanned := 0
	err := s.eachAudit(after, func(r AuditRecord) (bool, error) {
		if len(out) == limit || scanned == maxAuditScan {
			next = r.Seq - 1
			return false, nil
		}
		scanned++
		if !f.Until.IsZero() && !r.Time.Before(f.Until) {
			return false, nil // records are in time order
		}
		if f.match(r) {
			out = append(out, r)
		}
		return true, nil
	})
	return out, next, err
}

// AuditHead returns the newest record (the zero record for an empty trail).
func (s *Store) AuditHead() (AuditRecord, error) {
	var last AuditRecord
	var shipped bool
	err := s.view(func(tx kv.Tx) error {
		if _, v := s.auditTail().newest(tx); v != nil {
			return json.Unmarshal(v, &last)
		}
		cp, err := checkpoint(tx)
		last.Seq, shipped = cp.Seq, cp.Seq > 0
		return err
	})
	if err != nil || !shipped {
		return last, err
	}
	recs, err := s.Audit(last.Seq-1, 1)
	if err != nil || len(recs) == 0 {
		return AuditRecord{}, err
	}
	return recs[0], nil
}

// lastAudit is the Seq, Hash and Time of the newest record in tx, or, if
// the store holds none, of the last one shipped: the chain goes on from
// it.
func (s *Store) lastAudit(tx kv.Tx) (AuditRecord, error) {
	var last AuditRecord
	if _, v := s.auditTail().newest(tx); v != nil {
		// Only what the next record links to: every write pays this.
		var head struct {
			Seq  uint64    `json:"seq"`
			Time time.Time `json:"time"`
			Hash string    `json:"hash"`
		}
		if err := json.Unmarshal(v, &head); err != nil {
			return last, fmt.Errorf("store: decode last audit record: %w", err)
		}
		last.Seq, last.Time, last.Hash = head.Seq, head.Time, head.Hash
		return last, nil
	}
	cp, err := checkpoint(tx)
	last.Seq, last.Hash, last.Time = cp.Seq, cp.Hash, cp.Time
	return last, err
}
