package store

import (
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"
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
	fn   func(*bolt.Tx) error
	done chan error
}

// group runs fn in a write transaction shared with whatever other writes
// arrived while the previous commit was being made durable: a lone write
// commits at once (no batching delay), and concurrent writes share one
// fsync. fn may run more than once (alone, if another write in its group
// failed), so it must be idempotent, as for bbolt's Batch.
func (s *Store) group(fn func(*bolt.Tx) error) error {
	r := &commitReq{fn: fn, done: make(chan error, 1)}
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
		err := s.db.Update(func(tx *bolt.Tx) error {
			for _, r := range batch {
				if err := r.fn(tx); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil || len(batch) == 1 {
			for _, r := range batch {
				r.done <- err
			}
			continue
		}
		// One write failed and rolled back the group: run each alone, so
		// only the failing one sees its error.
		for _, r := range batch {
			r.done <- s.db.Update(r.fn)
		}
	}
}
