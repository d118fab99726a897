// Package kv is the storage engine under package store: ordered buckets of
// keys and values, read and written in serializable transactions. The
// store's records, indexes and audit trail are written against these
// interfaces only, so that the same code runs on bbolt (one process, one
// file; Bolt) and, for several replicas, on etcd (docs/operations.md).
//
// The interfaces are the part of bbolt's API the store uses, with bbolt's
// meaning: a Tx sees one consistent snapshot plus its own writes; a
// Bucket's keys are ordered bytewise; values returned by Get and by a
// Cursor are valid only until the transaction ends and must not be
// modified; Put and Delete are only allowed in a writable Tx.
package kv

import "context"

// Tx is a transaction: one consistent snapshot of every bucket, plus this
// transaction's own writes.
type Tx interface {
	// Bucket returns the bucket called name. Every bucket the store uses is
	// created when the store opens, so a missing one is a programming
	// error: Bucket panics rather than returning nil.
	Bucket(name []byte) Bucket
	// Writable reports whether Put and Delete are allowed.
	Writable() bool
	// OnCommit calls fn once the transaction has committed.
	OnCommit(fn func())
}

// Bucket is an ordered map from keys to values.
type Bucket interface {
	// Get returns the value of key, or nil if it has none.
	Get(key []byte) []byte
	// Put sets key to value.
	Put(key, value []byte) error
	// Delete removes key; deleting a missing key is not an error.
	Delete(key []byte) error
	// Cursor iterates over the bucket's keys in order.
	Cursor() Cursor
	// ForEach calls fn for every key in order until fn fails.
	ForEach(fn func(k, v []byte) error) error
	// NextSequence returns a number greater than any it returned before
	// for this bucket.
	NextSequence() (uint64, error)
	// Sequence is the bucket's last NextSequence (0: none yet), and
	// SetSequence sets it: for a copy of the bucket, whose next numbers
	// must not repeat the original's.
	Sequence() uint64
	SetSequence(n uint64) error
}

// Cursor walks a bucket's keys in order. Each method returns the key and
// value it moved to, or nil, nil past either end.
type Cursor interface {
	First() (key, value []byte)
	Last() (key, value []byte)
	// Seek moves to key, or to the first key after it.
	Seek(seek []byte) (key, value []byte)
	Next() (key, value []byte)
	Prev() (key, value []byte)
}

// Engine runs transactions: Bolt's for one process and one file, Etcd's for
// several replicas.
type Engine interface {
	// View runs fn in a read-only transaction.
	View(ctx context.Context, fn func(Tx) error) error
	// Update runs fn in a read-write transaction and commits it if fn
	// succeeds; fn may run more than once.
	Update(ctx context.Context, fn func(Tx) error) error
}

// Key names a key of a bucket, for Prefetch; or, with Edge set, the first
// keys of the bucket as a Cursor's First (Edge First, Key nil) or Last
// (Edge Last, Key nil) reads them, or (Edge From) a full page of keys from
// Key on, for a walk from Key to the end.
type Key struct {
	Bucket, Key []byte
	Edge        Edge
}

// Edge says which end of a bucket a prefetch reads.
type Edge int

// The ends of a bucket: none (a Key), its first keys, its last keys, its
// first keys from Key on.
const (
	NoEdge Edge = iota
	First
	Last
	From
)

// Prefetch reads keys into tx ahead of its Gets, in one round trip: on
// etcd, where every Get a transaction makes is a request to the cluster,
// a transaction that knows the keys it will read saves a request for each
// but one. The values and the revisions read join the transaction's read
// set as a Get's would. bbolt reads from memory-mapped pages: nothing to
// save, nothing done.
func Prefetch(tx Tx, keys ...Key) {
	if t, ok := tx.(*etcdTx); ok {
		t.prefetch(keys)
	}
}
