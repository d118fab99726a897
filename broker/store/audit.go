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

	bolt "go.etcd.io/bbolt"
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

// AppendAudit appends records to the audit trail in one transaction.
func (s *Store) AppendAudit(recs ...AuditRecord) error {
	// Denials come in bursts: they share commits like issuances do.
	return s.group(func(tx *bolt.Tx) error {
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

// Audit returns up to limit records with Seq > after, in order.
func (s *Store) Audit(after uint64, limit int) ([]AuditRecord, error) {
	var out []AuditRecord
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			var r AuditRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("store: decode audit record %d: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// VerifyAudit checks the whole chain and returns the number of records. It
// fails at the first record that was edited, inserted or removed.
func (s *Store) VerifyAudit() (uint64, error) {
	var n uint64
	err := s.view(func(tx *bolt.Tx) error {
		prev := ""
		return tx.Bucket(bucketAudit).ForEach(func(k, v []byte) error {
			var r AuditRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("store: audit record %d is unreadable: %w", binary.BigEndian.Uint64(k), err)
			}
			n++
			if r.Seq != n || binary.BigEndian.Uint64(k) != n {
				return fmt.Errorf("store: audit record %d: expected sequence number %d (a record was removed or inserted)", r.Seq, n)
			}
			if r.Prev != prev {
				return fmt.Errorf("store: audit record %d does not follow record %d", r.Seq, n-1)
			}
			if r.Hash != r.ComputeHash() {
				return fmt.Errorf("store: audit record %d was altered", r.Seq)
			}
			prev = r.Hash
			return nil
		})
	})
	return n, err
}

// appendAudit appends r in tx, filling Seq, Prev and Hash. Once tx
// commits, Options.OnAudit is called.
func (s *Store) appendAudit(tx *bolt.Tx, r AuditRecord) error {
	if s.requestID != "" && r.Detail["request_id"] == "" {
		d := maps.Clone(r.Detail)
		if d == nil {
			d = map[string]string{}
		}
		d["request_id"] = s.requestID
		r.Detail = d
	}
	if s.onAudit != nil {
		tx.OnCommit(s.onAudit)
	}
	b := tx.Bucket(bucketAudit)
	// Records are only ever appended in key order: fill pages instead of
	// splitting them in half (bbolt's default), which halves the file.
	b.FillPercent = 0.95
	r.Prev = ""
	if k, v := b.Cursor().Last(); k != nil {
		var last AuditRecord
		if err := json.Unmarshal(v, &last); err != nil {
			return fmt.Errorf("store: decode last audit record: %w", err)
		}
		r.Prev = last.Hash
		r.Seq = last.Seq + 1
		// Records are in time order too (queries rely on it): a record
		// stamped before its commit by a slower writer takes its
		// predecessor's time.
		if r.Time.Before(last.Time) {
			r.Time = last.Time
		}
	} else {
		r.Seq = 1
	}
	r.Time = r.Time.UTC()
	r.Hash = r.ComputeHash()
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: encode audit record: %w", err)
	}
	return b.Put(seqKey(r.Seq), v)
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
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		scanned := 0
		for k, v := c.Seek(seqKey(after + 1)); k != nil; k, v = c.Next() {
			if len(out) == limit || scanned == maxAuditScan {
				next = binary.BigEndian.Uint64(k) - 1
				return nil
			}
			scanned++
			var r AuditRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("store: decode audit record %d: %w", binary.BigEndian.Uint64(k), err)
			}
			if !f.Until.IsZero() && !r.Time.Before(f.Until) {
				return nil // records are in time order
			}
			if f.match(r) {
				out = append(out, r)
			}
		}
		return nil
	})
	return out, next, err
}

// AuditHead returns the newest record (the zero record for an empty trail).
func (s *Store) AuditHead() (AuditRecord, error) {
	var r AuditRecord
	err := s.view(func(tx *bolt.Tx) error {
		if _, v := tx.Bucket(bucketAudit).Cursor().Last(); v != nil {
			return json.Unmarshal(v, &r)
		}
		return nil
	})
	return r, err
}
