package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/broker/failpoint"
	"github.com/agentictrust/atf/broker/store/kv"
)

// ErrClosed is returned for writes after Close.
var ErrClosed = errors.New("store: closed")

// maxGroup bounds how many writes share one commit; lingerUnderLoad is how
// long a group waits for company while writes are arriving concurrently.
const (
	maxGroup        = 256
	lingerUnderLoad = time.Millisecond
)

// commitReq is one write waiting for the group committer.
type commitReq struct {
	fn   func(kv.Tx) error
	done chan error
	// lost, if set, makes the write answer as soon as fn has run in the
	// group's transaction, before the commit is made durable; lost is
	// called if that commit then fails (see groupEarly).
	lost func()
}

// group runs fn in a write transaction shared with whatever other writes
// arrived while the previous commit was being made durable: a lone write
// commits at once (no batching delay), and concurrent writes share one
// fsync. fn may run more than once (alone, if another write in its group
// failed), so it must be idempotent, as for bbolt's Batch.
func (s *Store) group(fn func(kv.Tx) error) error {
	return s.enqueueWrite(&commitReq{fn: fn, done: make(chan error, 1)})
}

// groupEarly is group for a write whose loss a crash or a failed commit
// cannot make dangerous: it returns fn's outcome once fn has run in the
// group's transaction, without waiting for the commit and its fsync. The
// transaction holds bbolt's writer lock until it commits, so no other
// write can see the state before it. If the commit fails, lost is called
// (on its own goroutine); a crash before it leaves the write unrecorded,
// which the caller must make safe otherwise (RecordCredential: the run's
// anchors are revoked at the next start, BeginRun).
func (s *Store) groupEarly(fn func(kv.Tx) error, lost func()) error {
	return s.enqueueWrite(&commitReq{fn: fn, done: make(chan error, 1), lost: lost})
}

func (s *Store) enqueueWrite(r *commitReq) error {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	s.reqs <- r
	s.closeMu.RUnlock()
	return <-r.done
}

// committer serves group until Close.
func (s *Store) committer() {
	defer close(s.stopped)
	lastGroup := 0
	for {
		var first *commitReq
		select {
		case first = <-s.reqs:
		case <-s.quit:
			return
		}
		batch := []*commitReq{first}
		// Under load (the last group shared its commit) linger briefly so
		// the next group is larger: fewer fsyncs, more throughput. A lone
		// writer never waits.
		var linger <-chan time.Time
		if lastGroup > 1 {
			linger = time.After(lingerUnderLoad)
		}
	drain:
		for len(batch) < maxGroup {
			if linger == nil {
				select {
				case r := <-s.reqs:
					batch = append(batch, r)
				default:
					break drain
				}
				continue
			}
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			case <-linger:
				break drain
			}
		}
		lastGroup = len(batch)
		// A write that fails rolls the group back: it alone hears its
		// error and the others run again, together, without it. A bad
		// request costs the others one rollback, not a commit each.
		for len(batch) > 0 {
			batch = s.commitGroup(batch)
		}
	}
}

// commitGroup runs batch in one transaction and answers each write. If a
// write fails, nothing is committed: that write is answered with its error
// and the rest, unanswered, are returned to be run again. Early writes
// (groupEarly) are answered before the commit.
func (s *Store) commitGroup(batch []*commitReq) []*commitReq {
	if s.db == nil {
		return s.commitGroupEtcd(batch)
	}
	tx, err := s.db.Begin(true)
	if err != nil {
		for _, r := range batch {
			r.done <- err
		}
		return nil
	}
	for i, r := range batch {
		if err := r.fn(kv.Bolt(tx)); err != nil {
			_ = tx.Rollback()
			s.rollbacks.Add(1)
			r.done <- err
			return slices.Delete(batch, i, i+1)
		}
	}
	var early chan struct{}
	for _, r := range batch {
		if r.lost == nil {
			continue
		}
		if early == nil {
			early = make(chan struct{})
			s.earlyMu.Lock()
			s.early = early
			s.earlyMu.Unlock()
		}
		r.done <- nil
	}
	if early != nil {
		failpoint.Delayed(failpoint.RecordBeforeCommit)
	}
	if s.commitFault != nil {
		if err = s.commitFault(); err != nil {
			_ = tx.Rollback()
		}
	}
	if err == nil {
		err = tx.Commit()
		s.commits.Add(1)
	}
	if early != nil {
		s.earlyMu.Lock()
		s.early = nil
		s.earlyMu.Unlock()
		close(early)
	}
	for _, r := range batch {
		switch {
		case r.lost == nil:
			r.done <- err
		case err != nil:
			go r.lost()
		}
	}
	return nil
}

// view runs fn in a read transaction that sees every write answered so
// far: if an early-answered write (groupEarly) is being committed, it waits
// for that commit first.
//
// Reads of what no early write touches use read instead: the early writes
// are RecordCredential (a credential, its indexes and its audit record),
// CompleteRevocation (a queue entry removed) and AppendSummary (an audit
// record), so an agent, a grant, the kill switch, an approval or the
// file's room read before their commit are already what they will be
// after it.
// Waiting there would put the previous issuance's fsync back on the next
// one's path.
func (s *Store) view(fn func(kv.Tx) error) error {
	s.earlyMu.Lock()
	early := s.early
	s.earlyMu.Unlock()
	if early != nil {
		<-early
	}
	if s.db == nil {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		return unavailable(s.etcd.View(ctx, fn))
	}
	return s.db.View(func(tx *bolt.Tx) error { return fn(kv.Bolt(tx)) })
}

// viewBolt is view for what needs bbolt's own transaction (a consistent
// copy of the file, its size).
func (s *Store) viewBolt(fn func(*bolt.Tx) error) error {
	if s.db == nil {
		return ErrNotBolt
	}
	return s.view(func(tx kv.Tx) error {
		btx, _ := kv.BoltTx(tx)
		return fn(btx)
	})
}

// unavailable marks err as ErrUnavailable if etcd did not answer within
// the store's timeout, or ErrBusy if the transaction kept conflicting
// with other writes until then.
func unavailable(err error) error {
	switch {
	case errors.Is(err, kv.ErrConflict):
		return fmt.Errorf("%w: %w", ErrBusy, err)
	case errors.Is(err, kv.ErrEtcd):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// update runs fn in a write transaction committed (and made durable)
// before update returns: on a bbolt file one of its own, for writes that
// must not share a group's commit.
//
// On etcd it goes through the group committer: a transaction of
// its own would race this replica's groups optimistically, and a large
// one (a lineage revocation reads every credential of the lineage) kept
// losing to a steady stream of issuances until it timed out. In a group,
// it is ordered with this replica's other writes, and conflicts only
// with other replicas'.
func (s *Store) update(fn func(kv.Tx) error) error {
	if s.db == nil {
		return s.group(fn)
	}
	return s.db.Update(func(tx *bolt.Tx) error { return fn(kv.Bolt(tx)) })
}

// updateEtcd runs fn in an etcd transaction of its own, for the
// committer's groups and what runs before the committer.
func (s *Store) updateEtcd(fn func(kv.Tx) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	return unavailable(s.etcd.Update(ctx, fn))
}

// read runs fn in a read transaction without waiting for an early-answered
// write's commit; fn must read nothing such a write changes (see view):
// agents, grants, approvals, the kill switch.
func (s *Store) read(fn func(kv.Tx) error) error {
	if s.db == nil {
		return s.view(fn) // etcd: no early writes
	}
	return s.db.View(func(tx *bolt.Tx) error { return fn(kv.Bolt(tx)) })
}
