package store

import (
	"errors"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/agentictrust/atf/broker/store/kv"
)

// ErrNotBolt is returned for what only a store in a bbolt file can do (a
// copy of the file: Backup) by a store in etcd, whose copies are etcd's
// own snapshots (docs/operations.md).
var ErrNotBolt = errors.New("store: only a store in a bbolt file can do this; a store in etcd is backed up with etcd's snapshots")

// EtcdOptions are the settings of a store kept in etcd.
type EtcdOptions struct {
	// Prefix is the key prefix the store's keys live under, so that one
	// cluster can hold several stores (and other data). Required.
	Prefix string
	// MaxTxnOps is the cluster's --max-txn-ops; default 128, etcd's.
	MaxTxnOps int
	// Timeout bounds one transaction, retries on conflict included; a
	// store cut off from etcd fails its calls after it. Default 5 s.
	Timeout time.Duration
	// Replica names this replica among those sharing the store: its run
	// marker, and what it made, so that its crash recovery (BeginRun)
	// revokes its own anchors and credentials only. Empty: the only
	// replica, whose crash recovery revokes everything, as with a file.
	Replica string
}

// OpenEtcd opens the store kept in etcd under eo.Prefix, through cli,
// which the caller keeps and closes after the store. Every replica of
// atfd opens the same prefix. The store's records, rules and audit chain
// are the same as in a bbolt file; what differs: every write goes through
// the group committer (a group is one etcd transaction, within etcd's
// limits), an issuance is answered after its commit, the audit trail stays in etcd
// (Options.AuditDir is not used), and Backup is etcd's snapshot's job.
func OpenEtcd(cli *clientv3.Client, eo EtcdOptions, opts Options) (*Store, error) {
	if eo.Prefix == "" {
		return nil, errors.New("store: etcd needs a key prefix for the store")
	}
	if eo.Timeout <= 0 {
		eo.Timeout = 5 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c := &core{etcd: kv.NewEtcd(cli, eo.Prefix, eo.MaxTxnOps), timeout: eo.Timeout, replica: eo.Replica, now: opts.Now, onAudit: opts.OnAudit,
		onLost: opts.OnLost, reqs: make(chan *commitReq, maxGroup), quit: make(chan struct{}), stopped: make(chan struct{})}
	s := &Store{core: c}
	err := s.updateEtcd(func(tx kv.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyMigrating); v != nil {
			return unfinishedMigration(eo.Prefix, v)
		}
		return fillIndexes(tx)
	})
	if err == nil {
		err = s.loadTails()
	}
	if err != nil {
		return nil, fmt.Errorf("store: init etcd %s: %w", eo.Prefix, err)
	}
	go s.committer()
	return s, nil
}

// auditChunk bounds the audit records AppendAudit writes in one etcd
// transaction (each is a write and its chain's tail a read).
const auditChunk = 50

// errMember aborts a group's etcd transaction when one of its writes
// failed.
var errMember = errors.New("store: a write of the group failed")

// commitGroupEtcd is commitGroup in etcd: the group's writes in one etcd
// transaction, so that a burst shares one Raft round and the writes of one
// replica do not conflict with each other (a replica's writes reach etcd
// one group at a time, like bbolt's single writer; replicas' groups race
// optimistically). A failing write is answered alone and the rest run
// again; a group too large for one etcd transaction runs write by write.
// Early writes are answered after the commit: there is no fsync of ours
// to save.
func (s *Store) commitGroupEtcd(batch []*commitReq) []*commitReq {
	failed, failErr := -1, error(nil)
	err := s.updateEtcd(func(tx kv.Tx) error {
		failed = -1 // update may run this more than once
		if s.commitFault != nil {
			if err := s.commitFault(); err != nil {
				return err
			}
		}
		for i, r := range batch {
			if err := r.fn(tx); err != nil {
				failed, failErr = i, err
				return errMember
			}
		}
		return nil
	})
	switch {
	case errors.Is(err, errMember):
		s.rollbacks.Add(1)
		batch[failed].done <- failErr
		return slices.Delete(batch, failed, failed+1)
	case errors.Is(err, kv.ErrTooLarge) && len(batch) > 1:
		for _, r := range batch {
			r.done <- s.updateEtcd(r.fn)
		}
		return nil
	}
	s.commits.Add(1)
	for _, r := range batch {
		r.done <- err
	}
	return nil
}

// closeDB releases the bbolt file, if the store has one.
func (s *Store) closeDB() error {
	if s.db == nil {
		return nil
	}
	return s.db.Close()
}
