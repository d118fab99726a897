package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/revoke"
)

// feed carries revoke.Changes between the replicas sharing a store in
// etcd, and keeps them for the revocation watches that resume: each is put
// under <prefix>feed/<replica>/<time>-<n>, and every replica watches the
// range from the revision it started at, in order, applying the others'
// changes and delivering every entry's revocation events, its own too, to
// its watchers at the entry's revision (revoke.Feed). The watch resumes
// from the last revision it saw, so a change made while it reconnected
// still arrives; one compacted away makes the replica drop every anchor
// and end every watch, the safe reading of "something was missed".
//
// Entries older than store.etcd.resume_window are trimmed, by whichever
// replica gets there first, and <prefix>feed-trimmed keeps the newest
// revision trimmed: a watch resumes, on any replica, from a cursor no
// older than that (Since). A change is sent after its revocation
// committed: a replica that dies in between leaves the others' caches and
// watchers uninformed, never the store (every replica refuses what was
// revoked on its next call).
type feed struct {
	cli                      *clientv3.Client
	prefix, trimmed, replica string
	window, timeout          time.Duration
	maxOps                   int
	log                      *slog.Logger
	apply                    func(c revoke.Change, pos int64, own bool) // set once the revoker exists
	epoch                    string                                     // the cluster's
	start                    int64                                      // the revision the watch starts after
	seq                      atomic.Uint64                              // tells apart the keys of one instant
}

type feedMsg struct {
	Replica string        `json:"replica"`
	Change  revoke.Change `json:"change"`
}

func newFeed(ctx context.Context, cli *clientv3.Client, e *config.EtcdConfig, log *slog.Logger) (*feed, error) {
	f := &feed{cli: cli, prefix: e.Prefix + "feed/", trimmed: e.Prefix + "feed-trimmed", replica: e.Replica,
		window: e.ResumeWindow, timeout: e.Timeout, maxOps: e.MaxTxnOps, log: log}
	r, err := cli.Get(ctx, f.trimmed)
	if err != nil {
		return nil, fmt.Errorf("store.etcd: the change feed: %w", err)
	}
	f.epoch, f.start = fmt.Sprintf("e%x", r.Header.ClusterId), r.Header.Revision
	return f, nil
}

// Start is the epoch of the feed's positions, its cluster's ID, and the
// revision its watch starts after.
func (f *feed) Start() (string, int64) { return f.epoch, f.start }

// Publish puts c in the feed, for every replica, and returns its revision.
func (f *feed) Publish(c revoke.Change) (int64, error) {
	b, err := json.Marshal(feedMsg{Replica: f.replica, Change: c})
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	key := f.prefix + f.replica + "/" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.FormatUint(f.seq.Add(1), 36)
	r, err := f.cli.Put(ctx, key, string(b))
	if err != nil {
		f.log.Warn("putting a change in the feed failed; the other replicas enforce it from the store, but only the watchers here hear of it",
			slog.String(edge.LogError, err.Error()))
		return 0, err
	}
	return r.Header.Revision, nil
}

// Since returns agent's revocation events in the feed after revision
// after, and the revision read; revoke.ErrGap if entries after it were
// trimmed, or it is ahead of the cluster.
func (f *feed) Since(ctx context.Context, agent string, after int64) ([]revoke.Event, int64, error) {
	changes, upto, err := f.changesAfter(ctx, after)
	var events []revoke.Event
	for _, c := range changes {
		if ev := c.Event(agent); ev != nil {
			events = append(events, revoke.Event{Pos: c.pos, Msg: ev})
		}
	}
	return events, upto, err
}

// SinceAll is Since for every agent's events.
func (f *feed) SinceAll(ctx context.Context, after int64) ([]revoke.AgentEvent, int64, error) {
	changes, upto, err := f.changesAfter(ctx, after)
	var events []revoke.AgentEvent
	for _, c := range changes {
		for _, agent := range slices.Sorted(maps.Keys(c.Events)) {
			if ev := c.Event(agent); ev != nil {
				events = append(events, revoke.AgentEvent{Agent: agent, Event: revoke.Event{Pos: c.pos, Msg: ev}})
			}
		}
	}
	return events, upto, err
}

// posChange is a change of the feed at its revision.
type posChange struct {
	revoke.Change
	pos int64
}

// changesAfter reads the feed's changes after revision after, and the
// revision read; revoke.ErrGap if entries after it were trimmed, or it
// is ahead of the cluster.
func (f *feed) changesAfter(ctx context.Context, after int64) ([]posChange, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	r, err := f.cli.Txn(ctx).Then(clientv3.OpGet(f.trimmed), clientv3.OpGet(f.prefix, clientv3.WithPrefix(),
		clientv3.WithMinModRev(after+1), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortAscend))).Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("store.etcd: reading the change feed: %w", err)
	}
	trimmed, _ := trimMark(r)
	if after < trimmed || after > r.Header.Revision {
		return nil, 0, revoke.ErrGap
	}
	var changes []posChange
	for _, kv := range r.Responses[1].GetResponseRange().Kvs {
		var m feedMsg
		if json.Unmarshal(kv.Value, &m) == nil {
			changes = append(changes, posChange{Change: m.Change, pos: kv.ModRevision})
		}
	}
	return changes, r.Header.Revision, nil
}

// run applies the feed's entries, and trims it, until ctx ends.
func (f *feed) run(ctx context.Context) {
	var trim sync.WaitGroup
	defer trim.Wait()
	trim.Go(func() { f.trimEvery(ctx) })
	last := f.start
	for ctx.Err() == nil {
		last = f.watch(ctx, last)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// watch applies the entries after revision last until the watch breaks,
// and returns the last revision seen.
func (f *feed) watch(ctx context.Context, last int64) int64 {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range f.cli.Watch(wctx, f.prefix, clientv3.WithPrefix(), clientv3.WithRev(last+1)) {
		if wr.CompactRevision != 0 {
			f.log.Warn("the change feed was compacted past what this replica saw: dropping every anchor and ending every watch")
			f.apply(revoke.Change{DropAll: true, Approvals: true, Policy: true, EndAll: true}, 0, false)
			return wr.CompactRevision - 1
		}
		if err := wr.Err(); err != nil {
			f.log.Warn("the change feed's watch broke; resuming", slog.String(edge.LogError, err.Error()))
			return last
		}
		for _, ev := range wr.Events {
			last = ev.Kv.ModRevision
			var m feedMsg
			if ev.Type != clientv3.EventTypePut || json.Unmarshal(ev.Kv.Value, &m) != nil {
				continue
			}
			f.apply(m.Change, ev.Kv.ModRevision, m.Replica == f.replica)
		}
	}
	return last
}

// trimEvery trims the feed every tenth of the resume window (at most a
// minute apart) until ctx ends.
func (f *feed) trimEvery(ctx context.Context) {
	every(ctx, min(f.window/10, time.Minute), func() {
		if err := f.trim(ctx); err != nil && ctx.Err() == nil {
			f.log.Warn("trimming the change feed failed; trying again later", slog.String(edge.LogError, err.Error()))
		}
	})
}

// trim deletes the entries older than the resume window, whoever put them,
// and raises the trimmed mark to the newest revision deleted, in one
// transaction. Replicas trimming at once: one wins, the others find the
// mark moved and try again later.
func (f *feed) trim(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	r, err := f.cli.Txn(ctx).Then(clientv3.OpGet(f.trimmed), clientv3.OpGet(f.prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortAscend), clientv3.WithLimit(int64(f.maxOps-1)))).Commit()
	if err != nil {
		return err
	}
	mark, markRev := trimMark(r)
	cutoff := time.Now().Add(-f.window)
	var ops []clientv3.Op
	for _, kv := range r.Responses[1].GetResponseRange().Kvs {
		if at, ok := entryTime(string(kv.Key)); !ok || at.Before(cutoff) {
			ops = append(ops, clientv3.OpDelete(string(kv.Key)))
			mark = max(mark, kv.ModRevision)
		}
	}
	if len(ops) == 0 {
		return nil
	}
	ops = append(ops, clientv3.OpPut(f.trimmed, strconv.FormatInt(mark, 10)))
	_, err = f.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(f.trimmed), "=", markRev)).Then(ops...).Commit()
	return err
}

// trimMark is the trimmed mark's revision and the key's own, from the
// first answer of r.
func trimMark(r *clientv3.TxnResponse) (mark, modRev int64) {
	kvs := r.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return 0, 0
	}
	mark, _ = strconv.ParseInt(string(kvs[0].Value), 10, 64)
	return mark, kvs[0].ModRevision
}

// entryTime is when the entry at key was put, by its replica's clock.
func entryTime(key string) (time.Time, bool) {
	name := key[strings.LastIndexByte(key, '/')+1:]
	name, _, _ = strings.Cut(name, "-")
	ns, err := strconv.ParseInt(name, 36, 64)
	return time.Unix(0, ns), err == nil
}

// applyChange brings this replica up to date with the change at revision
// pos of the feed (own: made here, only its events are new).
func (s *Server) applyChange(c revoke.Change, pos int64, own bool) {
	s.revoker.Apply(c, pos, own)
	if c.Policy && !own {
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
