package store

import (
	"encoding/binary"
	"sync/atomic"

	"github.com/agentictrust/atf/broker/store/kv"
)

// A tail finds the newest entry of a bucket whose keys are sequence
// numbers appended in order (the audit trail, the policy versions), which
// every audited write and every issuance read. etcd serves a descending
// read (a cursor's Last) by reading every key of the range below it,
// sorting them and truncating to the page, whatever the limit, and the
// audit trail there only grows; an ascending read stops at its limit. So
// the newest entry is found by walking forward from a sequence number at
// or before it: the newest this process has seen committed (the hint,
// whose page a transaction prefetches), or, if that is far behind (other
// replicas appended meanwhile), a key of the meta bucket that each
// append moves (the pointer, prefetched too). A start that lags (a binary
// from before the pointer appended without moving it) costs a longer
// walk, never a wrong answer; the span walked is in the transaction's
// read set, so an append racing the walk makes its commit conflict.
type tail struct {
	bucket, pointer []byte
	hint            *atomic.Uint64
}

// auditTail is the audit trail's tail; policyTail the policy versions'.
func (s *Store) auditTail() tail  { return tail{bucketAudit, keyAuditTail, &s.auditHint} }
func (s *Store) policyTail() tail { return tail{bucketPolicies, keyPolicyCurrent, &s.policyHint} }

// The tails the store keeps.
var (
	keyAuditTail     = []byte("audit_tail")
	keyPolicyCurrent = []byte("policy_current")
)

// farBehind is how many entries a walk goes through before it looks up
// the pointer: half the page a prefetch reads from the hint.
const farBehind = 32

// at is what a walk reads first, for a prefetch (kv.Prefetch): the
// pointer, and the page from the hint.
func (t tail) at() []kv.Key {
	return []kv.Key{{Bucket: bucketMeta, Key: t.pointer}, {Bucket: t.bucket, Key: seqKey(t.hint.Load()), Edge: kv.From}}
}

// newest returns the bucket's newest key as a number and its value (0 and
// nil for an empty bucket), as tx sees it.
func (t tail) newest(tx kv.Tx) (uint64, []byte) {
	c := tx.Bucket(t.bucket).Cursor()
	k, v := c.Seek(seqKey(t.hint.Load()))
	if k == nil {
		// Nothing at or after the hint: an empty bucket, or one whose
		// records were all moved out (bbolt's audit segments).
		k, v = c.Last()
	}
	walked := 0
	for nk, nv := c.Next(); nk != nil; nk, nv = c.Next() {
		k, v = nk, nv
		if walked++; walked == farBehind {
			// Others appended while this process did not: on from the
			// pointer, if it is further on.
			if p := tx.Bucket(bucketMeta).Get(t.pointer); len(p) == 8 && binary.BigEndian.Uint64(p) > binary.BigEndian.Uint64(k) {
				if pk, pv := c.Seek(p); pk != nil {
					k, v = pk, pv
				}
			}
		}
	}
	if k == nil {
		return 0, nil
	}
	seq := binary.BigEndian.Uint64(k)
	tx.OnCommit(func() { t.raise(seq) })
	return seq, v
}

// appended notes that tx wrote entry seq, the newest: the pointer now,
// the hint once tx commits.
func (t tail) appended(tx kv.Tx, seq uint64) error {
	tx.OnCommit(func() { t.raise(seq) })
	return tx.Bucket(bucketMeta).Put(t.pointer, seqKey(seq))
}

// load starts the hint from the pointer; a store written before it has
// its newest key read once.
func (t tail) load(tx kv.Tx) error {
	if v := tx.Bucket(bucketMeta).Get(t.pointer); len(v) == 8 {
		t.raise(binary.BigEndian.Uint64(v))
	} else if k, _ := tx.Bucket(t.bucket).Cursor().Last(); len(k) == 8 {
		t.raise(binary.BigEndian.Uint64(k))
	}
	return nil
}

// raise moves the hint up to seq.
func (t tail) raise(seq uint64) {
	for {
		cur := t.hint.Load()
		if seq <= cur || t.hint.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// loadTails starts the hints of the store's tails; without it, a walk
// starts from the first entry.
func (s *Store) loadTails() error {
	return s.view(func(tx kv.Tx) error {
		if err := s.auditTail().load(tx); err != nil {
			return err
		}
		return s.policyTail().load(tx)
	})
}
