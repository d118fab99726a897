package kv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultMaxTxnOps is etcd's default limit on the operations (and on the
// comparisons) of one transaction (its --max-txn-ops).
const DefaultMaxTxnOps = 128

// ErrTooLarge is returned by Etcd.Update for a transaction that needs more
// operations or comparisons than the cluster allows in one transaction,
// or more bytes than it takes in one request.
var ErrTooLarge = errors.New("kv: transaction too large for etcd")

// ErrConflict is returned by Etcd.Update when its transaction kept losing
// to concurrent writers until ctx ended.
var ErrConflict = errors.New("kv: transaction kept conflicting with concurrent writes")

// ErrEtcd wraps every failure of etcd itself (unreachable, no leader, a
// timeout): a read or a commit the cluster did not answer.
var ErrEtcd = errors.New("kv: etcd did not answer")

// pageSize is how many keys a cursor fetches from etcd at once; its
// first fetch after First, Last or Seek takes firstPage, since many walks
// stop after a key or two (the audit trail's tail, the first expired
// reservation).
const (
	pageSize  = 64
	firstPage = 4
)

// etcdCounts counts, for the whole process, the etcd transactions that
// conflicted and ran again and the prefetches (EtcdCounts): etcd's own
// counters cannot tell a prefetch, a transaction of reads, from a
// transaction whose comparisons failed.
var etcdCounts struct {
	conflicts, prefetches, gets, recent, behind, stale, descending atomic.Int64
}

// EtcdStats count what this process's etcd transactions did: how many
// conflicted and ran again, how many prefetch requests they made, and how
// many single reads (a Get, or a cursor's page) besides; how many read a
// recent snapshot (served by a member without the leader's confirmation),
// how many asked a member that had not applied what the engine had seen
// (and read through the leader), and how many found their recent snapshot
// stale and ran again through the leader (counted among the conflicts
// too); and how many descending pages (Last, Prev) they read, each of
// which etcd serves by reading the whole span below it (it sorts a
// descending range in full, then truncates it): none on a hot path.
type EtcdStats struct{ Conflicts, Prefetches, Gets, Recent, Behind, Stale, Descending int64 }

// EtcdCounts returns this process's EtcdStats so far.
func EtcdCounts() EtcdStats {
	return EtcdStats{Conflicts: etcdCounts.conflicts.Load(), Prefetches: etcdCounts.prefetches.Load(), Gets: etcdCounts.gets.Load(),
		Recent: etcdCounts.recent.Load(), Behind: etcdCounts.behind.Load(), Stale: etcdCounts.stale.Load(),
		Descending: etcdCounts.descending.Load()}
}

// Etcd is the etcd engine: every bucket is a range of keys under a prefix
// of an etcd cluster, and a transaction is optimistic. It reads one
// snapshot (the revision of its first read), buffers its writes, and
// commits them in one etcd transaction that succeeds only if nothing it
// read has changed since that revision: every key it read still has the
// modification revision it read, and no key of a range its cursors walked
// was written after it. Otherwise Update runs fn again on a new snapshot,
// so fn must be safe to run more than once (as for the store's group
// commit). A key deleted from a walked range, not read by Get, is the one
// change a commit does not notice (from the snapshot on, which for a
// recent one below can be a few milliseconds older than the latest
// state); the store never relies on such an absence: what it changes, it
// reads by Get, whose comparison a deletion fails.
//
// Because the commit checks every read, an Update's first run reads a
// recent snapshot: the state of whichever member answers, without the
// leader's confirmation that a linearizable read waits for (a round trip
// to the leader, most of etcd's CPU under load), provided that member has
// applied every revision this engine has read or committed (its own
// writes are never missed). A run that writes nothing, or whose fn fails,
// has no commit to check its reads: they are checked by a transaction of
// comparisons alone before its outcome counts. A recent snapshot found
// stale runs again at once, on the leader's latest state.
//
// A cursor's Last and Prev read a descending page, which etcd serves by
// reading every key of the span below it (it sorts a descending range in
// full before it truncates it to the page): the store reads none on a
// hot path (EtcdStats.Descending counts them).
type Etcd struct {
	cli    *clientv3.Client
	prefix string
	maxOps int
	// seen is the newest revision this engine has read or committed.
	seen atomic.Int64
}

// NewEtcd returns the engine for the buckets under prefix on cli's
// cluster; maxOps is the cluster's --max-txn-ops (0: DefaultMaxTxnOps).
func NewEtcd(cli *clientv3.Client, prefix string, maxOps int) *Etcd {
	if maxOps <= 0 {
		maxOps = DefaultMaxTxnOps
	}
	return &Etcd{cli: cli, prefix: prefix, maxOps: maxOps}
}

// View runs fn in a read-only transaction on one snapshot: the cluster's
// latest committed state when fn first reads (a linearizable read).
func (e *Etcd) View(ctx context.Context, fn func(Tx) error) error {
	t := e.begin(ctx, false)
	err := fn(t)
	if t.err != nil {
		return t.err
	}
	return err
}

// ViewRecent is View on a recent snapshot (see Etcd): at least as new as
// every revision this engine has read or committed, perhaps older than
// the cluster's latest. recent reports whether it was (false: the answer
// came through the leader, the latest). For reads whose use is checked
// again at a later commit, or confirmed before it counts.
func (e *Etcd) ViewRecent(ctx context.Context, fn func(Tx) error) (recent bool, err error) {
	t := e.begin(ctx, false)
	t.recent = true
	err = fn(t)
	if t.err != nil {
		return false, t.err
	}
	return t.unconfirmed, err
}

// Update runs fn in a read-write transaction and commits it, running fn
// again on a fresh snapshot whenever a concurrent write changed what it
// read, until it commits, fails, or ctx ends. OnCommit functions run
// after the commit, once. The first run reads a recent snapshot (see
// Etcd).
func (e *Etcd) Update(ctx context.Context, fn func(Tx) error) error {
	backoff := time.Millisecond
	for run := 0; ; run++ {
		t := e.begin(ctx, true)
		t.recent = run == 0
		ok, err := t.run(fn)
		if err != nil || ok {
			return err
		}
		etcdCounts.conflicts.Add(1)
		if t.unconfirmed {
			// Only stale: again at once, on the latest state.
			etcdCounts.stale.Add(1)
			continue
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrConflict, ctx.Err())
		case <-time.After(backoff/2 + rand.N(backoff)):
		}
		backoff = min(2*backoff, 50*time.Millisecond)
	}
}

// run runs fn once and commits it: false if what it read changed (a
// conflict), and fn's error only if what it read was still the latest.
func (t *etcdTx) run(fn func(Tx) error) (bool, error) {
	err := fn(t)
	if t.err != nil {
		return false, t.err
	}
	if err != nil {
		// A failure decided on a stale snapshot is no failure yet.
		if ok, cerr := t.confirm(); cerr != nil || !ok {
			return false, cerr
		}
		return false, err
	}
	ok, err := t.commit()
	if err != nil || !ok {
		return false, err
	}
	for _, f := range t.onCommit {
		f()
	}
	return true, nil
}

// ErrNotEmpty is returned by Claim when the prefix holds keys already.
var ErrNotEmpty = errors.New("kv: the etcd prefix is not empty")

// Keys returns how many keys are under the engine's prefix, in its
// buckets or not.
func (e *Etcd) Keys(ctx context.Context) (int64, error) {
	resp, err := e.cli.Get(ctx, e.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("kv: etcd: %w", err)
	}
	return resp.Count, nil
}

// Claim puts key in bucket if nothing at all is under the prefix, in one
// etcd transaction, for the first write of a copy into the prefix; it
// fails with ErrNotEmpty otherwise.
func (e *Etcd) Claim(ctx context.Context, bucket, key, value []byte) error {
	full := e.prefix + string(bucket) + "\x00" + string(key)
	resp, err := e.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(e.prefix).WithPrefix(), "=", 0)).
		Then(clientv3.OpPut(full, string(value))).Commit()
	if err != nil {
		return fmt.Errorf("kv: etcd: %w", err)
	}
	if !resp.Succeeded {
		return ErrNotEmpty
	}
	return nil
}

func (e *Etcd) begin(ctx context.Context, writable bool) *etcdTx {
	return &etcdTx{e: e, ctx: ctx, writable: writable, reads: map[string]int64{},
		cache: map[string][]byte{}, writes: map[string]*write{}}
}

// etcdTx is one transaction of the etcd engine.
type etcdTx struct {
	e        *Etcd
	ctx      context.Context
	writable bool
	// rev is the snapshot every read sees; 0 until the first read.
	rev int64
	// recent says the first read may fix a recent snapshot (see Etcd);
	// unconfirmed that it did, without the leader's confirmation.
	recent, unconfirmed bool
	// err is the first failed read: the transaction fails with it, and
	// reads after it return nothing.
	err error
	// reads holds the modification revision of every key read (0: absent),
	// cache its value; ranges the spans cursors walked, [from, to).
	reads  map[string]int64
	cache  map[string][]byte
	ranges [][2]string
	// pages holds the first pages prefetched for cursors (Edge), by the
	// span they read.
	pages map[pageSpan]*pageRead
	// writes are the buffered writes by full key (value nil: a delete), and
	// written their keys by bucket, sorted, for cursors.
	writes   map[string]*write
	written  map[string][]string
	onCommit []func()
}

// write is a buffered write: a value (never nil, as bbolt keeps an empty
// value as empty) or a delete.
type write struct {
	value   []byte
	deleted bool
}

func (t *etcdTx) Writable() bool     { return t.writable }
func (t *etcdTx) OnCommit(fn func()) { t.onCommit = append(t.onCommit, fn) }

func (t *etcdTx) Bucket(name []byte) Bucket {
	return &etcdBucket{t: t, name: string(name), lo: t.e.prefix + string(name) + "\x00", hi: t.e.prefix + string(name) + "\x01"}
}

// fail records the first read error.
func (t *etcdTx) fail(err error) {
	if t.err == nil {
		t.err = fmt.Errorf("%w: %w", ErrEtcd, err)
	}
}

// get fetches opts' keys at the snapshot, fixing the snapshot on the first
// read.
func (t *etcdTx) get(key string, opts ...clientv3.OpOption) *clientv3.GetResponse {
	if t.err != nil {
		return nil
	}
	etcdCounts.gets.Add(1)
	var resp *clientv3.GetResponse
	var err error
	if t.rev != 0 {
		// The snapshot's revision is committed history: any member that
		// has applied it answers the same, without the leader's
		// confirmation a linearizable read costs (most of etcd's CPU
		// under load). A member not there yet says so, and the read goes
		// through the leader.
		opts = append(opts, clientv3.WithRev(t.rev))
		resp, err = t.e.cli.Get(t.ctx, key, append(opts, clientv3.WithSerializable())...)
		if errors.Is(err, rpctypes.ErrFutureRev) {
			resp, err = t.e.cli.Get(t.ctx, key, opts...)
		}
	} else {
		resp, err = firstRead(t, func(more ...clientv3.OpOption) (*clientv3.GetResponse, error) {
			return t.e.cli.Get(t.ctx, key, append(opts, more...)...)
		}, func(r *clientv3.GetResponse) int64 { return r.Header.Revision })
	}
	if err != nil {
		t.fail(err)
		return nil
	}
	t.fix(resp.Header.Revision)
	return resp
}

// firstRead makes the read that fixes t's snapshot: on a recent snapshot
// if t may read one and the member that answers has applied every
// revision the engine has seen, through the leader otherwise.
func firstRead[R any](t *etcdTx, read func(...clientv3.OpOption) (R, error), rev func(R) int64) (R, error) {
	if t.recent {
		resp, err := read(clientv3.WithSerializable())
		if err == nil && rev(resp) >= t.e.seen.Load() {
			t.unconfirmed = true
			etcdCounts.recent.Add(1)
			return resp, nil
		}
		etcdCounts.behind.Add(1)
	}
	return read()
}

// fix fixes the snapshot at rev if none is fixed yet.
func (t *etcdTx) fix(rev int64) {
	if t.rev == 0 {
		t.rev = rev
		t.e.saw(rev)
	}
}

// saw notes that rev has been read or committed.
func (e *Etcd) saw(rev int64) {
	for {
		cur := e.seen.Load()
		if rev <= cur || e.seen.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// read returns full's value as this transaction sees it.
func (t *etcdTx) read(full string) []byte {
	if w, ok := t.writes[full]; ok {
		return w.value // nil if deleted
	}
	if v, ok := t.cache[full]; ok {
		return v
	}
	resp := t.get(full)
	if resp == nil {
		return nil
	}
	var v []byte
	var mod int64
	if len(resp.Kvs) > 0 {
		// etcd gives an empty value as nil; a key that is there reads as
		// non-nil, as in bbolt.
		v, mod = append([]byte{}, resp.Kvs[0].Value...), resp.Kvs[0].ModRevision
	}
	t.reads[full], t.cache[full] = mod, v
	return v
}

// prefetch reads keys, those the transaction has not read or written,
// in one etcd transaction of Gets: a read that fixes the snapshot if none
// is fixed yet (firstRead: recent or linearizable), at the snapshot's
// revision otherwise.
func (t *etcdTx) prefetch(keys []Key) {
	if t.err != nil {
		return
	}
	var fulls []string
	var edges []pageSpan
	for _, k := range keys {
		if k.Edge != NoEdge {
			b := t.Bucket(k.Bucket).(*etcdBucket)
			sp := firstSpan(b, k.Edge == Last)
			if k.Edge == From {
				// A walk from a key to the end (a tail): a full page.
				sp = spanFrom(b, b.lo+string(k.Key), false, true, pageSize)
			}
			if t.pages[sp] == nil && !slices.Contains(edges, sp) {
				edges = append(edges, sp)
			}
			continue
		}
		full := t.e.prefix + string(k.Bucket) + "\x00" + string(k.Key)
		if _, ok := t.writes[full]; ok {
			continue
		}
		if _, ok := t.cache[full]; ok || slices.Contains(fulls, full) {
			continue
		}
		fulls = append(fulls, full)
	}
	if len(fulls)+len(edges) < 2 {
		return // one Get costs what it would later
	}
	if len(fulls)+len(edges) > t.e.maxOps {
		edges = edges[:min(len(edges), t.e.maxOps)]
		fulls = fulls[:min(len(fulls), t.e.maxOps-len(edges))] // the rest when read
	}
	for _, sp := range edges {
		if sp.desc {
			etcdCounts.descending.Add(1)
		}
	}
	gets := func(opts ...clientv3.OpOption) []clientv3.Op {
		ops := make([]clientv3.Op, 0, len(fulls)+len(edges))
		for _, full := range fulls {
			ops = append(ops, clientv3.OpGet(full, opts...))
		}
		for _, sp := range edges {
			ops = append(ops, clientv3.OpGet(sp.start, append(sp.opts(), opts...)...))
		}
		return ops
	}
	etcdCounts.prefetches.Add(1)
	var resp *clientv3.TxnResponse
	var err error
	if t.rev != 0 {
		// At the snapshot's revision, as get reads: served by any member
		// that has applied it, through the leader otherwise.
		resp, err = t.e.cli.Txn(t.ctx).Then(gets(clientv3.WithRev(t.rev), clientv3.WithSerializable())...).Commit()
		if errors.Is(err, rpctypes.ErrFutureRev) {
			resp, err = t.e.cli.Txn(t.ctx).Then(gets(clientv3.WithRev(t.rev))...).Commit()
		}
	} else {
		resp, err = firstRead(t, func(more ...clientv3.OpOption) (*clientv3.TxnResponse, error) {
			return t.e.cli.Txn(t.ctx).Then(gets(more...)...).Commit()
		}, func(r *clientv3.TxnResponse) int64 { return r.Header.Revision })
	}
	if err != nil {
		t.fail(err)
		return
	}
	t.prefetched(resp, fulls, edges)
}

// prefetched takes in a prefetch's answer: the values of fulls, then the
// pages of edges.
func (t *etcdTx) prefetched(resp *clientv3.TxnResponse, fulls []string, edges []pageSpan) {
	t.fix(resp.Header.Revision)
	for i, r := range resp.Responses {
		rr := r.GetResponseRange()
		if rr == nil {
			t.fail(fmt.Errorf("prefetch: no range in answer %d", i))
			return
		}
		if i >= len(fulls) {
			if t.pages == nil {
				t.pages = map[pageSpan]*pageRead{}
			}
			t.pages[edges[i-len(fulls)]] = &pageRead{kvs: rr.Kvs, more: rr.More}
			continue
		}
		var v []byte
		var mod int64
		if len(rr.Kvs) > 0 {
			v, mod = append([]byte{}, rr.Kvs[0].Value...), rr.Kvs[0].ModRevision
		}
		t.reads[fulls[i]], t.cache[fulls[i]] = mod, v
	}
}

// pageSpan is the span a cursor's page reads: [start, end), descending if
// desc, at most limit keys.
type pageSpan struct {
	start, end string
	desc       bool
	limit      int64
}

func (sp pageSpan) opts() []clientv3.OpOption {
	opts := []clientv3.OpOption{clientv3.WithLimit(sp.limit), clientv3.WithRange(sp.end)}
	if sp.desc {
		opts = append(opts, clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	}
	return opts
}

// firstSpan is the span of b's first page from either end: what a
// Cursor's First (or Last, if last) fetches.
func firstSpan(b *etcdBucket, last bool) pageSpan {
	if last {
		return spanFrom(b, b.hi, true, true, firstPage)
	}
	return spanFrom(b, b.lo, false, true, firstPage)
}

// spanFrom is the span of b a page of limit keys from `from` reads, in
// direction desc, `from` itself included if inclusive.
func spanFrom(b *etcdBucket, from string, desc, inclusive bool, limit int64) pageSpan {
	sp := pageSpan{desc: desc, limit: limit}
	if desc {
		sp.start, sp.end = b.lo, from
		if inclusive && from != b.hi {
			sp.end = from + "\x00"
		}
	} else {
		sp.start, sp.end = from, b.hi
		if !inclusive {
			sp.start = from + "\x00"
		}
	}
	return sp
}

// pageRead is a prefetched page: its keys, and whether the span has more.
type pageRead struct {
	kvs  []*mvccpb.KeyValue
	more bool
}

// put buffers a write of full in bucket: value, or a delete if deleted.
func (t *etcdTx) put(bucket, full string, value []byte, deleted bool) error {
	if !t.writable {
		return errors.New("kv: write in a read-only transaction")
	}
	if _, ok := t.writes[full]; !ok {
		if t.written == nil {
			t.written = map[string][]string{}
		}
		keys := t.written[bucket]
		i, _ := slices.BinarySearch(keys, full)
		t.written[bucket] = slices.Insert(keys, i, full)
	}
	if !deleted && value == nil {
		value = []byte{}
	}
	t.writes[full] = &write{value: value, deleted: deleted}
	return nil
}

// commit tries to commit the buffered writes; false means a conflict.
func (t *etcdTx) commit() (bool, error) {
	if len(t.writes) == 0 {
		return t.confirm()
	}
	cmps := t.compares()
	ops := make([]clientv3.Op, 0, len(t.writes))
	for k, w := range t.writes {
		if w.deleted {
			ops = append(ops, clientv3.OpDelete(k))
		} else {
			ops = append(ops, clientv3.OpPut(k, string(w.value)))
		}
	}
	if len(cmps) > t.e.maxOps || len(ops) > t.e.maxOps {
		return false, fmt.Errorf("%w: %d comparisons and %d writes, the cluster allows %d of each (etcd's --max-txn-ops)",
			ErrTooLarge, len(cmps), len(ops), t.e.maxOps)
	}
	resp, err := t.e.cli.Txn(t.ctx).If(cmps...).Then(ops...).Commit()
	switch {
	case errors.Is(err, rpctypes.ErrRequestTooLarge) || tooLargeToSend(err):
		// etcd's --max-request-bytes: too large, like too many ops, not
		// an etcd that did not answer (a group then runs write by write).
		return false, fmt.Errorf("%w: %w", ErrTooLarge, err)
	case err != nil:
		return false, fmt.Errorf("%w: commit: %w", ErrEtcd, err)
	}
	if resp.Succeeded {
		t.e.saw(resp.Header.Revision)
	}
	return resp.Succeeded, nil
}

// compares are the comparisons that hold if nothing t read has changed.
func (t *etcdTx) compares() []clientv3.Cmp {
	cmps := make([]clientv3.Cmp, 0, len(t.reads)+len(t.ranges))
	for k, mod := range t.reads {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", mod))
	}
	for _, r := range t.ranges {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(r[0]).WithRange(r[1]), "<", t.rev+1))
	}
	return cmps
}

// confirm checks that what t read on a recent snapshot is still the
// cluster's latest state, in a transaction of comparisons only (served
// like a linearizable read): false if it is not. A snapshot read through
// the leader needs no check.
func (t *etcdTx) confirm() (bool, error) {
	if !t.unconfirmed {
		return true, nil
	}
	cmps := t.compares()
	if len(cmps) > t.e.maxOps {
		return false, nil // more than one check can hold: run again, through the leader
	}
	resp, err := t.e.cli.Txn(t.ctx).If(cmps...).Commit()
	if err != nil {
		return false, fmt.Errorf("%w: confirm: %w", ErrEtcd, err)
	}
	return resp.Succeeded, nil
}

// tooLargeToSend reports whether err is the client's refusal to send a
// request over its message size limit (2 MiB), which it gives before
// etcd's own limit could: a ResourceExhausted from the client, not one of
// etcd's (no space, too many requests).
func tooLargeToSend(err error) bool {
	var fromEtcd rpctypes.EtcdError
	return status.Code(err) == codes.ResourceExhausted && !errors.As(err, &fromEtcd)
}

// etcdBucket is a bucket of the etcd engine: the keys in [lo, hi).
type etcdBucket struct {
	t      *etcdTx
	name   string
	lo, hi string
}

func (b *etcdBucket) Get(key []byte) []byte { return b.t.read(b.lo + string(key)) }
func (b *etcdBucket) Put(key, value []byte) error {
	return b.t.put(b.name, b.lo+string(key), slices.Clone(value), false)
}
func (b *etcdBucket) Delete(key []byte) error { return b.t.put(b.name, b.lo+string(key), nil, true) }
func (b *etcdBucket) Cursor() Cursor          { return &etcdCursor{b: b} }

func (b *etcdBucket) ForEach(fn func(k, v []byte) error) error {
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return b.t.err
}

// NextSequence increments the bucket's counter, a key outside its range.
func (b *etcdBucket) NextSequence() (uint64, error) {
	n := b.Sequence()
	if b.t.err != nil {
		return 0, b.t.err
	}
	return n + 1, b.SetSequence(n + 1)
}

// Sequence reads the bucket's counter; one that does not read as a number
// fails the transaction.
func (b *etcdBucket) Sequence() uint64 {
	var n uint64
	if v := b.t.read(b.seqKey()); v != nil {
		if _, err := fmt.Sscan(string(v), &n); err != nil {
			// The store's data, not etcd's answer: not an outage.
			if b.t.err == nil {
				b.t.err = fmt.Errorf("kv: bucket %s: bad sequence %q", b.name, v)
			}
			return 0
		}
	}
	return n
}

func (b *etcdBucket) SetSequence(n uint64) error {
	return b.t.put("", b.seqKey(), []byte(fmt.Sprint(n)), false)
}

// seqKey is where the bucket's counter is: just past its keys.
func (b *etcdBucket) seqKey() string { return b.hi + "seq" }

// etcdCursor walks a bucket: the snapshot's keys, fetched a page at a time
// in the direction of travel, merged with the transaction's own writes.
type etcdCursor struct {
	b   *etcdBucket
	cur string // full key the cursor is at; "" before the first move
	// page holds keys fetched beyond cur in direction desc; done says the
	// page reaches the end of the bucket.
	page []kvPair
	desc bool
	done bool
	// fetched counts the pages fetched since the cursor last moved to a
	// key of its choosing.
	fetched int
}

type kvPair struct{ k, v string }

func (c *etcdCursor) First() ([]byte, []byte) { return c.move(c.b.lo, false, true) }
func (c *etcdCursor) Last() ([]byte, []byte)  { return c.move(c.b.hi, true, true) }
func (c *etcdCursor) Seek(seek []byte) ([]byte, []byte) {
	return c.move(c.b.lo+string(seek), false, true)
}

func (c *etcdCursor) Next() ([]byte, []byte) {
	if c.cur == "" {
		return nil, nil
	}
	return c.move(c.cur, false, false)
}

func (c *etcdCursor) Prev() ([]byte, []byte) {
	if c.cur == "" {
		return nil, nil
	}
	return c.move(c.cur, true, false)
}

// move goes from `from` to the nearest key after it (before it if desc),
// or onto it if inclusive, and returns that key and value.
func (c *etcdCursor) move(from string, desc, inclusive bool) ([]byte, []byte) {
	if c.desc != desc || c.cur != from || inclusive {
		c.page, c.done, c.desc, c.fetched = nil, false, desc, 0
	}
	for {
		snap, okSnap := c.peek(from, desc, inclusive)
		own, okOwn := c.own(from, desc, inclusive)
		if !okSnap && !okOwn {
			c.cur = ""
			return nil, nil
		}
		// The nearer of the snapshot's next key and this transaction's
		// next written key; a key written here hides the snapshot's.
		key := own
		if okSnap && (!okOwn || (!desc && snap.k < own) || (desc && snap.k > own)) {
			key = snap.k
		}
		if okSnap && snap.k == key {
			c.page = c.page[1:]
		}
		from, inclusive = key, false
		if w, ok := c.b.t.writes[key]; ok {
			if w.deleted {
				continue // deleted in this transaction
			}
			c.cur = key
			return []byte(strings.TrimPrefix(key, c.b.lo)), w.value
		}
		c.cur = key
		return []byte(strings.TrimPrefix(key, c.b.lo)), []byte(snap.v)
	}
}

// peek returns the snapshot's first key beyond from, fetching a page when
// the one held is used up.
func (c *etcdCursor) peek(from string, desc, inclusive bool) (kvPair, bool) {
	if len(c.page) == 0 && !c.done {
		c.fetch(from, desc, inclusive)
	}
	if len(c.page) == 0 {
		return kvPair{}, false
	}
	return c.page[0], true
}

// fetch reads the next page beyond from and records the span it covered,
// so that a commit notices a key written into it since the snapshot.
func (c *etcdCursor) fetch(from string, desc, inclusive bool) {
	t := c.b.t
	limit := int64(pageSize)
	if c.fetched == 0 {
		limit = firstPage
	}
	c.fetched++
	sp := spanFrom(c.b, from, desc, inclusive, limit)
	page := t.pages[sp]
	if full := spanFrom(c.b, from, desc, inclusive, pageSize); page == nil && t.pages[full] != nil {
		sp, page = full, t.pages[full] // prefetched From
	}
	if page == nil {
		if desc {
			etcdCounts.descending.Add(1)
		}
		resp := t.get(sp.start, sp.opts()...)
		if resp == nil {
			c.done = true
			return
		}
		page = &pageRead{kvs: resp.Kvs, more: resp.More}
	}
	c.page = c.page[:0]
	for _, kv := range page.kvs {
		c.page = append(c.page, kvPair{string(kv.Key), string(kv.Value)}) // "" → []byte{}, not nil
	}
	c.done = !page.more
	// The span seen: up to the last key fetched, or to the end if none is
	// left.
	start, end := sp.start, sp.end
	switch {
	case c.done:
	case desc:
		start = c.page[len(c.page)-1].k
	default:
		end = c.page[len(c.page)-1].k + "\x00"
	}
	t.ranges = append(t.ranges, [2]string{start, end})
}

// own returns this transaction's first written key of the bucket beyond
// from.
func (c *etcdCursor) own(from string, desc, inclusive bool) (string, bool) {
	keys := c.b.t.written[c.b.name]
	i, found := slices.BinarySearch(keys, from)
	if desc {
		if found && inclusive {
			return keys[i], true
		}
		if i == 0 {
			return "", false
		}
		return keys[i-1], true
	}
	if found && !inclusive {
		i++
	}
	if i == len(keys) {
		return "", false
	}
	return keys[i], true
}
