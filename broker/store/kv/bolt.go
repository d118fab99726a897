package kv

import (
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Bolt is the bbolt engine's Tx: a bbolt transaction seen through Tx. It
// adds no copy and no allocation to a bucket or cursor call.
func Bolt(tx *bolt.Tx) Tx { return boltTx{tx} }

// BoltTx returns the bbolt transaction under tx, if tx is one of Bolt's,
// for what only bbolt has (its file's size, a consistent copy of it).
func BoltTx(tx Tx) (*bolt.Tx, bool) {
	b, ok := tx.(boltTx)
	return b.tx, ok
}

type boltTx struct{ tx *bolt.Tx }

func (t boltTx) Bucket(name []byte) Bucket {
	b := t.tx.Bucket(name)
	if b == nil {
		panic(fmt.Sprintf("kv: no bucket %q", name))
	}
	return boltBucket{b}
}

func (t boltTx) Writable() bool { return t.tx.Writable() }

func (t boltTx) OnCommit(fn func()) { t.tx.OnCommit(fn) }

// AppendOnly tells the engine that b's keys are only ever appended in
// order, so that bbolt fills its pages instead of splitting them in half
// (its default, which would double the size of such a bucket).
func AppendOnly(b Bucket) {
	if bb, ok := b.(boltBucket); ok {
		bb.FillPercent = 0.95
	}
}

type boltBucket struct{ *bolt.Bucket }

func (b boltBucket) Cursor() Cursor { return b.Bucket.Cursor() }

// BoltEngine is the bbolt engine: one file, one writer at a time.
type BoltEngine struct{ DB *bolt.DB }

// View runs fn in a bbolt read transaction.
func (e BoltEngine) View(_ context.Context, fn func(Tx) error) error {
	return e.DB.View(func(tx *bolt.Tx) error { return fn(Bolt(tx)) })
}

// Update runs fn in a bbolt write transaction, committed before it returns.
func (e BoltEngine) Update(_ context.Context, fn func(Tx) error) error {
	return e.DB.Update(func(tx *bolt.Tx) error { return fn(Bolt(tx)) })
}
