package broker

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/edge"
)

// membersTTL is the life, in seconds, of a replica's membership key once
// it stops renewing it: a replica that dies is counted that much longer.
const membersTTL = 10

// members counts the replicas sharing a store in etcd, so that what each
// keeps in memory (the agents' rate buckets) is split between them: each
// holds a key under <prefix>members/ with a lease of membersTTL seconds,
// and onCount hears the number of keys whenever it changes. A replica that
// died is counted until its lease ends, which only lowers the others'
// shares meanwhile.
type members struct {
	cli     *clientv3.Client
	prefix  string
	key     string
	log     *slog.Logger
	onCount func(int)
	// n is the last count.
	n atomic.Int32
	// lease and rev are those of the last join.
	lease clientv3.LeaseID
	rev   int64
}

// joinMembers registers this replica and tells onCount how many there are
// before it returns; run keeps both up to date.
func joinMembers(ctx context.Context, cli *clientv3.Client, e *config.EtcdConfig, log *slog.Logger, onCount func(int)) (*members, error) {
	m := &members{cli: cli, prefix: e.Prefix + "members/", key: e.Prefix + "members/" + e.Replica, log: log, onCount: onCount}
	var err error
	if m.lease, m.rev, err = m.join(ctx); err != nil {
		return nil, fmt.Errorf("store.etcd: registering the replica: %w", err)
	}
	return m, nil
}

// join puts the membership key under a new lease and counts the members.
func (m *members) join(ctx context.Context) (clientv3.LeaseID, int64, error) {
	g, err := m.cli.Grant(ctx, membersTTL)
	if err != nil {
		return 0, 0, err
	}
	if _, err := m.cli.Put(ctx, m.key, time.Now().UTC().Format(time.RFC3339), clientv3.WithLease(g.ID)); err != nil {
		return 0, 0, err
	}
	rev, err := m.count(ctx)
	return g.ID, rev, err
}

// count tells onCount the number of members and returns the revision it
// read at.
func (m *members) count(ctx context.Context) (int64, error) {
	r, err := m.cli.Get(ctx, m.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	m.n.Store(int32(r.Count))
	m.onCount(int(r.Count))
	return r.Header.Revision, nil
}

// run keeps the membership alive and the count current until ctx ends,
// joining again if the lease is lost (etcd unreachable longer than
// membersTTL); then it leaves, so the others' shares grow at once.
func (m *members) run(ctx context.Context) {
	lease, rev := m.lease, m.rev
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		if lease != 0 {
			_, _ = m.cli.Revoke(rctx, lease)
		}
	}()
	for ctx.Err() == nil {
		if lease != 0 {
			m.watch(ctx, lease, rev)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		var err error
		if lease, rev, err = m.join(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("registering this replica among the store's replicas failed; retrying", slog.String(edge.LogError, err.Error()))
			lease = 0
		}
	}
}

// watch renews lease and recounts at every change of the members, until
// the lease is lost or ctx ends.
func (m *members) watch(ctx context.Context, lease clientv3.LeaseID, rev int64) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	alive, err := m.cli.KeepAlive(wctx, lease)
	if err != nil {
		return
	}
	changes := m.cli.Watch(clientv3.WithRequireLeader(wctx), m.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		select {
		case _, ok := <-alive:
			if !ok {
				return // the lease is lost: join again
			}
		case wr, ok := <-changes:
			if !ok || wr.Err() != nil {
				return
			}
			if _, err := m.count(wctx); err != nil {
				return
			}
		}
	}
}
