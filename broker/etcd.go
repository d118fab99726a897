package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

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
