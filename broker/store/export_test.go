package store

import (
	"sync"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/broker/store/kv"
)

// FailCommits makes every group commit and audit trim of s fail with err (nil: commit
// again), as a full disk or an I/O error would: a fault the tests cannot
// cause for real.
func FailCommits(s *Store, err error) {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if err == nil {
		s.commitFault = nil
		return
	}
	s.commitFault = func() error { return err }
}

// Committed is how many transactions the group committer committed and
// rolled back.
func Committed(s *Store) (commits, rollbacks uint64) {
	return s.commits.Load(), s.rollbacks.Load()
}

// HoldWriter holds bbolt's writer lock until release is called, so that
// writes queue up for the group committer meanwhile.
func HoldWriter(s *Store) (release func()) {
	held, done := make(chan struct{}), make(chan struct{})
	go s.db.Update(func(*bolt.Tx) error { close(held); <-done; return nil })
	<-held
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }
}

// AfterMigrationCopy makes MigrateToEtcd call f between its copy and the
// comparison (nil: no more), for a test to damage the copy as a bug or
// another writer could.
func AfterMigrationCopy(f func()) { afterCopy = f }

// PutLegacyBaselines writes every agent's baselines in one value, as a
// store did before they had a key each.
func PutLegacyBaselines(s *Store, v []byte) error {
	return s.update(func(tx kv.Tx) error { return tx.Bucket(bucketMeta).Put(keyBaselines, v) })
}
