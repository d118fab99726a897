package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/revoke"
)

// feed carries revoke.Changes between the replicas sharing a store in
// etcd: each is put under <prefix>feed/<replica>/ with the replica's lease
// (so the keys go a minute after it does), and every replica watches the
// range from the revision it started at, applying the others' changes.
// The watch resumes from the last revision it saw, so a change made while
// it reconnected still arrives; one compacted away makes the replica drop
// every anchor and end every watch, the safe reading of "something was
// missed". A change is sent after its revocation committed: a replica that
// dies in between leaves the others' caches and watchers uninformed, never
// the store (every replica refuses what was revoked on its next call).
type feed struct {
	cli             *clientv3.Client
	prefix, replica string
	log             *slog.Logger
	lease           clientv3.LeaseID
	apply           func(revoke.Change) // set once the revoker exists
	start           int64               // the revision the watch starts after
}

// feedTTL is the life of the feed's keys after their replica is gone.
const feedTTL = 60

type feedMsg struct {
	Replica string        `json:"replica"`
	Change  revoke.Change `json:"change"`
}

func newFeed(ctx context.Context, cli *clientv3.Client, e *config.EtcdConfig, log *slog.Logger) (*feed, error) {
	f := &feed{cli: cli, prefix: e.Prefix + "feed/", replica: e.Replica, log: log}
	g, err := cli.Grant(ctx, feedTTL)
	if err != nil {
		return nil, fmt.Errorf("store.etcd: lease for the change feed: %w", err)
	}
	f.lease, f.start = g.ID, g.Revision
	return f, nil
}

// Publish puts c in the feed for the other replicas.
func (f *feed) Publish(c revoke.Change) {
	b, err := json.Marshal(feedMsg{Replica: f.replica, Change: c})
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	key := f.prefix + f.replica + "/" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := f.cli.Put(ctx, key, string(b), clientv3.WithLease(f.lease)); err != nil {
		f.log.Warn("telling the other replicas of a revocation failed; they enforce it from the store, but their watchers hear nothing of it",
			slog.String(edge.LogError, err.Error()))
	}
}

// run keeps the lease alive and applies the other replicas' changes until
// ctx ends.
func (f *feed) run(ctx context.Context) {
	if alive, err := f.cli.KeepAlive(ctx, f.lease); err != nil {
		f.log.Warn("keeping the change feed's lease alive failed", slog.String(edge.LogError, err.Error()))
	} else {
		go func() {
			for range alive { // the client needs its answers read
			}
		}()
	}
	last := f.start
	for ctx.Err() == nil {
		last = f.watch(ctx, last)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// watch applies changes after revision last until the watch breaks, and
// returns the last revision seen.
func (f *feed) watch(ctx context.Context, last int64) int64 {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range f.cli.Watch(wctx, f.prefix, clientv3.WithPrefix(), clientv3.WithRev(last+1)) {
		if wr.CompactRevision != 0 {
			f.log.Warn("the change feed was compacted past what this replica saw: dropping every anchor and ending every watch")
			f.apply(revoke.Change{DropAll: true, Approvals: true, Policy: true, EndAll: true})
			return wr.CompactRevision - 1
		}
		if err := wr.Err(); err != nil {
			f.log.Warn("the change feed's watch broke; resuming", slog.String(edge.LogError, err.Error()))
			return last
		}
		for _, ev := range wr.Events {
			last = ev.Kv.ModRevision
			var m feedMsg
			if ev.Type != clientv3.EventTypePut || json.Unmarshal(ev.Kv.Value, &m) != nil || m.Replica == f.replica {
				continue
			}
			f.apply(m.Change)
		}
	}
	return last
}

// applyChange brings this replica up to date with another's change.
func (s *Server) applyChange(c revoke.Change) {
	s.revoker.Apply(c)
	if c.Policy {
		if err := s.policy.Reload(); err != nil {
			s.log.Error("loading the policy another replica committed failed; the one in force stays, and credentials it decides are refused when recorded",
				slog.String(edge.LogError, err.Error()))
		}
	}
}

// leaderTTL is the life, in seconds, of the session a replica leads the
// revocation queue with: a leader that dies, or is cut off from etcd, is
// replaced within it.
const leaderTTL = 5

// leader elects, among the replicas sharing a store in etcd, the one that
// drains the durable revocation queue in the background (revoke.Config's
// Lead): an etcd election under <prefix>leader/revocations, held with a
// session lease of leaderTTL seconds. Every replica still revokes inline
// what it revoked itself; the leader retries what Vault did not confirm,
// and what a dead replica left.
type leader struct {
	cli          *clientv3.Client
	key, replica string
	log          *slog.Logger
	leading      atomic.Bool
	terms        atomic.Int64
}

func newLeader(cli *clientv3.Client, e *config.EtcdConfig, log *slog.Logger) *leader {
	return &leader{cli: cli, key: e.Prefix + "leader/revocations", replica: e.Replica, log: log}
}

// Lead campaigns for the leadership and runs run for every term this
// replica wins, until ctx ends; on a clean stop it resigns, so another
// replica takes over at once rather than after the lease.
func (l *leader) Lead(ctx context.Context, run func(context.Context)) {
	for ctx.Err() == nil {
		if err := l.term(ctx, run); err != nil && ctx.Err() == nil {
			l.log.Warn("campaigning to lead the revocation queue failed; retrying", slog.String(edge.LogError, err.Error()))
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// term waits to be elected, runs run until the session or ctx ends, and
// resigns.
func (l *leader) term(ctx context.Context, run func(context.Context)) error {
	sess, err := concurrency.NewSession(l.cli, concurrency.WithTTL(leaderTTL), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer sess.Close() // revokes the lease: a stopped leader's key goes now
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done(): // the lease expired or was revoked: the term is over
		case <-tctx.Done():
		}
		cancel()
	}()
	el := concurrency.NewElection(sess, l.key)
	if err := el.Campaign(tctx, l.replica); err != nil {
		return err
	}
	l.leading.Store(true)
	l.terms.Add(1)
	l.log.Info("leading the revocation queue", slog.String("replica", l.replica))
	run(tctx)
	l.leading.Store(false)
	l.log.Info("no longer leading the revocation queue", slog.String("replica", l.replica))
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer rcancel()
	if err := el.Resign(rctx); err != nil && ctx.Err() == nil {
		l.log.Warn("resigning the revocation queue's leadership failed; it passes on when the lease ends", slog.String(edge.LogError, err.Error()))
	}
	return nil
}
