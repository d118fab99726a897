package kv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/broker/store/kv"
	"github.com/agentictrust/atf/deploy/dev"
)

var (
	bucketA = []byte("a")
	bucketB = []byte("b")
)

// engines are the two engines every test runs on: bbolt on a real file,
// and etcd on a real three-member cluster on loopback (one cluster for the
// package, a prefix per test).
func engines(t *testing.T) map[string]kv.Engine {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "kv.db"), 0o600,
		// A writer that grows the map waits for open readers: TestSnapshot
		// writes while a View is open.
		&bolt.Options{InitialMmapSize: 1 << 24})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketA, bucketB} {
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return map[string]kv.Engine{"bolt": kv.BoltEngine{DB: db}, "etcd": etcdEngine(t, 0)}
}

var cluster struct {
	once sync.Once
	s    *dev.Stack
	e    *dev.Etcd
	err  error
}

// etcdEngine is an etcd engine under a prefix of the test's own on the
// package's cluster, started by the first test that asks.
func etcdEngine(t *testing.T, maxOps int) *kv.Etcd {
	t.Helper()
	return etcdEngineAt(t, "/test/"+t.Name()+"/", maxOps)
}

// etcdEngineAt is an etcd engine under prefix, with a client of its own:
// another replica on the same store.
func etcdEngineAt(t *testing.T, prefix string, maxOps int) *kv.Etcd {
	t.Helper()
	cluster.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cluster.s, cluster.e, cluster.err = dev.StartEtcdAlone(ctx, dev.Options{Logger: slog.New(slog.DiscardHandler)}, 3)
	})
	if cluster.err != nil {
		t.Fatal(cluster.err)
	}
	cli, err := cluster.e.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return kv.NewEtcd(cli, prefix, maxOps)
}

// TestMain stops the package's etcd cluster, if a test started one.
func TestMain(m *testing.M) {
	code := m.Run()
	if cluster.s != nil {
		if err := cluster.s.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	os.Exit(code)
}

func put(t *testing.T, e kv.Engine, bucket []byte, kvs ...string) {
	t.Helper()
	err := e.Update(t.Context(), func(tx kv.Tx) error {
		b := tx.Bucket(bucket)
		for i := 0; i < len(kvs); i += 2 {
			if err := b.Put([]byte(kvs[i]), []byte(kvs[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, e kv.Engine, bucket []byte, key string) string {
	t.Helper()
	var v []byte
	if err := e.View(t.Context(), func(tx kv.Tx) error {
		v = bytes.Clone(tx.Bucket(bucket).Get([]byte(key)))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return string(v)
}

// Gets, puts and deletes, with a transaction's own writes visible to it,
// buckets apart, and a failed transaction leaving nothing behind.
func TestBasics(t *testing.T) {
	for name, e := range engines(t) {
		t.Run(name, func(t *testing.T) {
			put(t, e, bucketA, "k1", "v1", "k2", "v2")
			put(t, e, bucketB, "k1", "other")
			boom := errors.New("boom")
			err := e.Update(t.Context(), func(tx kv.Tx) error {
				b := tx.Bucket(bucketA)
				if err := b.Put([]byte("k1"), []byte("changed")); err != nil {
					return err
				}
				if err := b.Delete([]byte("k2")); err != nil {
					return err
				}
				if got := string(b.Get([]byte("k1"))); got != "changed" {
					t.Errorf("own write: got %q", got)
				}
				if got := b.Get([]byte("k2")); got != nil {
					t.Errorf("own delete: got %q", got)
				}
				return boom
			})
			if !errors.Is(err, boom) {
				t.Fatalf("Update = %v, want fn's error", err)
			}
			if got := get(t, e, bucketA, "k1"); got != "v1" {
				t.Errorf("after a failed Update k1 = %q, want v1", got)
			}
			if got := get(t, e, bucketA, "k2"); got != "v2" {
				t.Errorf("after a failed Update k2 = %q, want v2", got)
			}
			if got := get(t, e, bucketB, "k1"); got != "other" {
				t.Errorf("bucket b k1 = %q", got)
			}
			if got := get(t, e, bucketA, "missing"); got != "" {
				t.Errorf("missing key = %q", got)
			}
			// An empty value (the store's index keys) is there, not absent.
			if err := e.Update(t.Context(), func(tx kv.Tx) error { return tx.Bucket(bucketB).Put([]byte("idx"), nil) }); err != nil {
				t.Fatal(err)
			}
			_ = e.View(t.Context(), func(tx kv.Tx) error {
				if tx.Bucket(bucketB).Get([]byte("idx")) == nil {
					t.Error("a key put with an empty value reads as absent")
				}
				if k, v := tx.Bucket(bucketB).Cursor().Seek([]byte("idx")); string(k) != "idx" || v == nil {
					t.Errorf("Seek(idx) = %q, %v; want the key with an empty, non-nil value", k, v)
				}
				return nil
			})
		})
	}
}

// Cursors walk the keys in order both ways, across etcd's pages, seeing
// the transaction's own writes and deletes merged in.
func TestCursor(t *testing.T) {
	for name, e := range engines(t) {
		t.Run(name, func(t *testing.T) {
			var kvs []string
			for i := 0; i < 200; i += 2 { // even keys: k000, k002, ...
				kvs = append(kvs, fmt.Sprintf("k%03d", i), strconv.Itoa(i))
			}
			put(t, e, bucketA, kvs...)
			put(t, e, bucketB, "a", "x", "z", "x")
			err := e.Update(t.Context(), func(tx kv.Tx) error {
				b := tx.Bucket(bucketA)
				// Own writes: odd keys 1 and 199, a change of k100, deletes of
				// k000 and k198.
				for _, k := range []string{"k001", "k199", "k100"} {
					if err := b.Put([]byte(k), []byte("own")); err != nil {
						return err
					}
				}
				for _, k := range []string{"k000", "k198"} {
					if err := b.Delete([]byte(k)); err != nil {
						return err
					}
				}
				var want []string
				for i := 0; i < 200; i++ {
					if (i%2 == 0 && i != 0 && i != 198) || i == 1 || i == 199 {
						want = append(want, fmt.Sprintf("k%03d", i))
					}
				}
				checkWalk(t, b, want)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// checkWalk walks b forwards, backwards, and from Seeks, against want.
func checkWalk(t *testing.T, b kv.Bucket, want []string) {
	t.Helper()
	var fwd, back []string
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		fwd = append(fwd, string(k))
		if string(k) == "k100" && string(v) != "own" {
			t.Errorf("k100 = %q, want the transaction's own value", v)
		}
	}
	for k, _ := c.Last(); k != nil; k, _ = c.Prev() {
		back = append([]string{string(k)}, back...)
	}
	if fmt.Sprint(fwd) != fmt.Sprint(want) {
		t.Errorf("forward walk:\n got %v\nwant %v", fwd, want)
	}
	if fmt.Sprint(back) != fmt.Sprint(want) {
		t.Errorf("backward walk:\n got %v\nwant %v", back, want)
	}
	var each []string
	if err := b.ForEach(func(k, _ []byte) error { each = append(each, string(k)); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(each) != fmt.Sprint(want) {
		t.Errorf("ForEach:\n got %v\nwant %v", each, want)
	}
	for _, s := range []struct{ seek, want string }{{"k000", "k001"}, {"k101", "k102"}, {"k100", "k100"}, {"k198", "k199"}, {"k2", ""}, {"", "k001"}} {
		if k, _ := c.Seek([]byte(s.seek)); string(k) != s.want {
			t.Errorf("Seek(%q) = %q, want %q", s.seek, k, s.want)
		}
	}
	if k, _ := c.Seek([]byte("k150")); string(k) != "k150" {
		t.Fatalf("Seek(k150) = %q", k)
	}
	if k, _ := c.Prev(); string(k) != "k148" {
		t.Errorf("Prev after Seek(k150) = %q, want k148", k)
	}
	if k, _ := c.Next(); string(k) != "k150" {
		t.Errorf("Next after that = %q, want k150", k)
	}
}

// Read-modify-write transactions from several goroutines lose no update:
// a counter incremented 4 × 25 times ends at 100, and sequences never
// repeat.
func TestSerializable(t *testing.T) {
	for name, e := range engines(t) {
		t.Run(name, func(t *testing.T) {
			var wg sync.WaitGroup
			seqs := make(chan uint64, 100)
			for range 4 {
				wg.Go(func() {
					for range 25 {
						err := e.Update(t.Context(), func(tx kv.Tx) error {
							b := tx.Bucket(bucketA)
							n, _ := strconv.Atoi(string(b.Get([]byte("counter"))))
							seq, err := tx.Bucket(bucketB).NextSequence()
							if err != nil {
								return err
							}
							tx.OnCommit(func() { seqs <- seq })
							return b.Put([]byte("counter"), []byte(strconv.Itoa(n+1)))
						})
						if err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			close(seqs)
			if got := get(t, e, bucketA, "counter"); got != "100" {
				t.Errorf("counter = %s, want 100", got)
			}
			seen := map[uint64]bool{}
			for s := range seqs {
				if seen[s] || s == 0 || s > 100 {
					t.Errorf("sequence %d repeated or out of 1..100", s)
				}
				seen[s] = true
			}
			if len(seen) != 100 {
				t.Errorf("%d sequences committed, want 100 (OnCommit once per commit)", len(seen))
			}
		})
	}
}

// A limit checked by walking a bucket holds under concurrent inserts: each
// transaction counts the keys with a cursor and adds one only below 10, so
// 40 concurrent attempts leave exactly 10 keys.
func TestRangeConflict(t *testing.T) {
	for name, e := range engines(t) {
		t.Run(name, func(t *testing.T) {
			var wg sync.WaitGroup
			for i := range 40 {
				wg.Go(func() {
					err := e.Update(t.Context(), func(tx kv.Tx) error {
						n := 0
						_ = tx.Bucket(bucketA).ForEach(func(_, _ []byte) error { n++; return nil })
						if n >= 10 {
							return nil
						}
						return tx.Bucket(bucketA).Put(fmt.Appendf(nil, "slot-%02d", i), []byte("taken"))
					})
					if err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			n := 0
			_ = e.View(t.Context(), func(tx kv.Tx) error {
				return tx.Bucket(bucketA).ForEach(func(_, _ []byte) error { n++; return nil })
			})
			if n != 10 {
				t.Errorf("%d keys after 40 concurrent bounded inserts, want 10", n)
			}
		})
	}
}

// A View sees one snapshot: a write committed while it runs is not seen.
func TestSnapshot(t *testing.T) {
	for name, e := range engines(t) {
		t.Run(name, func(t *testing.T) {
			put(t, e, bucketA, "x", "before")
			started, written := make(chan struct{}), make(chan struct{})
			done := make(chan error, 1)
			go func() {
				done <- e.View(t.Context(), func(tx kv.Tx) error {
					b := tx.Bucket(bucketA)
					if got := string(b.Get([]byte("y"))); got != "" {
						return fmt.Errorf("y = %q before the write", got)
					}
					close(started)
					<-written
					if got := string(b.Get([]byte("x"))); got != "before" {
						return fmt.Errorf("x = %q inside the snapshot, want before", got)
					}
					return nil
				})
			}()
			<-started
			put(t, e, bucketA, "x", "after")
			close(written)
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
	}
}

// etcd's limit on a transaction's size is reported, not worked around by
// committing part of it.
func TestEtcdTooLarge(t *testing.T) {
	e := etcdEngine(t, 4)
	err := e.Update(t.Context(), func(tx kv.Tx) error {
		for i := range 5 {
			if err := tx.Bucket(bucketA).Put(fmt.Appendf(nil, "k%d", i), []byte("v")); err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, kv.ErrTooLarge) {
		t.Fatalf("Update of 5 writes with a limit of 4 = %v, want ErrTooLarge", err)
	}
	if got := get(t, e, bucketA, "k0"); got != "" {
		t.Errorf("k0 = %q after a refused transaction, want nothing written", got)
	}
}

// A read that fails (here: the caller's context already ended) fails the
// transaction: nothing is committed on the strength of a read that saw
// nothing.
func TestEtcdReadFailureFailsClosed(t *testing.T) {
	e := etcdEngine(t, 0)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := e.Update(ctx, func(tx kv.Tx) error {
		b := tx.Bucket(bucketA)
		if b.Get([]byte("guard")) == nil {
			return b.Put([]byte("written"), []byte("on a failed read"))
		}
		return nil
	})
	if err == nil {
		t.Fatal("Update with failing reads succeeded")
	}
	if got := get(t, e, bucketA, "written"); got != "" {
		t.Errorf("written = %q, want nothing", got)
	}
}

// With one member of three down, transactions go on through the others,
// and the member catches up when it is back.
func TestEtcdMemberDown(t *testing.T) {
	e := etcdEngine(t, 0)
	put(t, e, bucketA, "before", "1")
	if err := cluster.s.Stop(cluster.e.MemberName(0)); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		err := e.Update(ctx, func(tx kv.Tx) error {
			b := tx.Bucket(bucketA)
			n, _ := strconv.Atoi(string(b.Get([]byte("n"))))
			return b.Put([]byte("n"), []byte(strconv.Itoa(n+1)))
		})
		cancel()
		if err != nil {
			t.Fatalf("update %d with a member down: %v", i, err)
		}
	}
	if err := cluster.s.RestartEtcdMember(t.Context(), cluster.e, 0); err != nil {
		t.Fatal(err)
	}
	if got := get(t, e, bucketA, "n"); got != "20" {
		t.Errorf("n = %q, want 20", got)
	}
}

// The etcd engine's cursors agree with bbolt's on random keys (with NULs
// and shared prefixes, as the store's two-part keys have), random own
// writes, and random walks.
func TestCursorDifferential(t *testing.T) {
	es := engines(t)
	bo, et := es["bolt"], es["etcd"]
	rnd := rand.New(rand.NewPCG(1, 2))
	key := func() []byte {
		parts := []string{"a", "ab", "b", "b\x00x", "b\x00y", "c\x00", "c\x00\x00", "d"}
		return []byte(parts[rnd.IntN(len(parts))] + strconv.Itoa(rnd.IntN(30)))
	}
	var kvs []string
	for range 150 {
		kvs = append(kvs, string(key()), "v")
	}
	put(t, bo, bucketA, kvs...)
	put(t, et, bucketA, kvs...)
	type step struct {
		op  string
		arg []byte
	}
	for round := range 60 {
		var steps []step
		for range 40 {
			ops := []string{"put", "del", "first", "last", "seek", "next", "next", "next", "prev", "prev"}
			steps = append(steps, step{ops[rnd.IntN(len(ops))], key()})
		}
		run := func(e kv.Engine) []string {
			var out []string
			_ = e.Update(t.Context(), func(tx kv.Tx) error {
				b := tx.Bucket(bucketA)
				c := b.Cursor()
				// Walking on past either end (or before any move) is left
				// undefined: the store never does it.
				lost := true
				for _, s := range steps {
					if lost && (s.op == "next" || s.op == "prev") {
						continue
					}
					var k []byte
					switch s.op {
					case "put":
						_ = b.Put(s.arg, []byte("own"))
						c, lost = b.Cursor(), true // bbolt: a cursor is invalid after a write
						continue
					case "del":
						_ = b.Delete(s.arg)
						c, lost = b.Cursor(), true
						continue
					case "first":
						k, _ = c.First()
					case "last":
						k, _ = c.Last()
					case "seek":
						k, _ = c.Seek(s.arg)
					case "next":
						k, _ = c.Next()
					case "prev":
						k, _ = c.Prev()
					}
					lost = k == nil
					out = append(out, s.op+":"+string(k))
				}
				return errors.New("roll back")
			})
			return out
		}
		got, want := run(et), run(bo)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			for i := range min(len(got), len(want)) {
				if got[i] != want[i] {
					t.Fatalf("round %d: step %d differs: etcd %q, bbolt %q", round, i, got[i], want[i])
				}
			}
		}
	}
}

// A bucket's sequence goes on from where SetSequence put it, in either
// engine, and is read back by Sequence: a copy of a bucket numbers on
// without repeating the original.
func TestSequence(t *testing.T) {
	for name, e := range engines(t) {
		t.Run(name, func(t *testing.T) {
			next := func() uint64 {
				var n uint64
				if err := e.Update(t.Context(), func(tx kv.Tx) (err error) { n, err = tx.Bucket(bucketA).NextSequence(); return err }); err != nil {
					t.Fatal(err)
				}
				return n
			}
			if a, b := next(), next(); a != 1 || b != 2 {
				t.Fatalf("NextSequence = %d, %d; want 1, 2", a, b)
			}
			if err := e.Update(t.Context(), func(tx kv.Tx) error { return tx.Bucket(bucketA).SetSequence(41) }); err != nil {
				t.Fatal(err)
			}
			var a, b uint64
			_ = e.View(t.Context(), func(tx kv.Tx) error {
				a, b = tx.Bucket(bucketA).Sequence(), tx.Bucket(bucketB).Sequence()
				return nil
			})
			if a != 41 || b != 0 {
				t.Errorf("Sequence = %d (bucket a), %d (bucket b); want 41, 0", a, b)
			}
			if n := next(); n != 42 {
				t.Errorf("NextSequence after SetSequence(41) = %d, want 42", n)
			}
		})
	}
}

// Claim writes into an empty prefix only, in one transaction: a second
// claim, or one on a prefix holding anything, is refused and writes
// nothing.
func TestEtcdClaim(t *testing.T) {
	e := etcdEngine(t, 0)
	if n, err := e.Keys(t.Context()); err != nil || n != 0 {
		t.Fatalf("Keys of a fresh prefix = %d, %v", n, err)
	}
	if err := e.Claim(t.Context(), bucketA, []byte("mine"), []byte("1")); err != nil {
		t.Fatalf("Claim of an empty prefix: %v", err)
	}
	if got := get(t, e, bucketA, "mine"); got != "1" {
		t.Errorf("claimed key = %q, want 1", got)
	}
	if err := e.Claim(t.Context(), bucketB, []byte("theirs"), []byte("2")); !errors.Is(err, kv.ErrNotEmpty) {
		t.Errorf("Claim of a prefix holding a key = %v, want ErrNotEmpty", err)
	}
	if got := get(t, e, bucketB, "theirs"); got != "" {
		t.Errorf("a refused Claim wrote %q", got)
	}
	if n, err := e.Keys(t.Context()); err != nil || n != 1 {
		t.Errorf("Keys = %d, %v; want 1", n, err)
	}
}

// A transaction larger than etcd takes in one request (its
// --max-request-bytes, 1.5 MiB by default) fails as ErrTooLarge, as one
// with too many operations does, not as an etcd that did not answer: the
// store's group committer then runs the group's writes one by one.
func TestEtcdRequestTooLarge(t *testing.T) {
	e := etcdEngine(t, 0)
	err := e.Update(t.Context(), func(tx kv.Tx) error {
		b := tx.Bucket(bucketA)
		if err := b.Put([]byte("x"), bytes.Repeat([]byte("a"), 900<<10)); err != nil {
			return err
		}
		return b.Put([]byte("y"), bytes.Repeat([]byte("a"), 900<<10))
	})
	if !errors.Is(err, kv.ErrTooLarge) || errors.Is(err, kv.ErrEtcd) {
		t.Fatalf("Update of 1.8 MiB = %v, want ErrTooLarge (and not ErrEtcd)", err)
	}
	if got := get(t, e, bucketA, "x"); got != "" {
		t.Errorf("the refused transaction wrote %d bytes", len(got))
	}
	// Over the client's own limit (2 MiB), which refuses to send it.
	err = e.Update(t.Context(), func(tx kv.Tx) error {
		return tx.Bucket(bucketA).Put([]byte("z"), bytes.Repeat([]byte("a"), 2<<20))
	})
	if !errors.Is(err, kv.ErrTooLarge) || errors.Is(err, kv.ErrEtcd) {
		t.Fatalf("Update of 2 MiB = %v, want ErrTooLarge (and not ErrEtcd)", err)
	}
}

// Prefetch reads keys as the transaction's Gets would: its own writes win,
// absent keys read as nil, the values are the snapshot's (fixed by an
// earlier read, or by the prefetch itself), and what it read joins the
// read set, so concurrent writers to those keys still conflict.
func TestPrefetch(t *testing.T) {
	for name, e := range engines(t) {
		t.Run(name, func(t *testing.T) {
			put(t, e, bucketA, "a", "1", "b", "2")
			put(t, e, bucketB, "x", "in B")
			keys := func(names ...string) []kv.Key {
				var out []kv.Key
				for _, n := range names {
					out = append(out, kv.Key{Bucket: bucketA, Key: []byte(n)})
				}
				return out
			}
			err := e.Update(t.Context(), func(tx kv.Tx) error {
				if err := tx.Bucket(bucketA).Put([]byte("c"), []byte("mine")); err != nil {
					return err
				}
				kv.Prefetch(tx, append(keys("a", "b", "c", "missing", "a"), kv.Key{Bucket: bucketB, Key: []byte("x")})...)
				want := map[string]string{"a": "1", "b": "2", "c": "mine", "missing": ""}
				for k, w := range want {
					if got := tx.Bucket(bucketA).Get([]byte(k)); string(got) != w || (w == "" && got != nil) {
						return fmt.Errorf("%s = %q after Prefetch, want %q", k, got, w)
					}
				}
				if got := string(tx.Bucket(bucketB).Get([]byte("x"))); got != "in B" {
					return fmt.Errorf("x of bucket B = %q, want in B", got)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}

			// The snapshot an earlier Get fixed.
			started, written := make(chan struct{}), make(chan struct{})
			done := make(chan error, 1)
			go func() {
				done <- e.View(t.Context(), func(tx kv.Tx) error {
					_ = tx.Bucket(bucketA).Get([]byte("c"))
					close(started)
					<-written
					kv.Prefetch(tx, keys("a", "b")...)
					if a, b := string(tx.Bucket(bucketA).Get([]byte("a"))), string(tx.Bucket(bucketA).Get([]byte("b"))); a != "1" || b != "2" {
						return fmt.Errorf("a, b = %q, %q inside the snapshot, want 1, 2", a, b)
					}
					return nil
				})
			}()
			<-started
			put(t, e, bucketA, "a", "changed", "b", "changed")
			close(written)
			if err := <-done; err != nil {
				t.Error(err)
			}

			// A prefetch that is the transaction's first read fixes its
			// snapshot: a write after it is not seen by the Gets that follow
			// (Gets made only then would see it).
			started, written = make(chan struct{}), make(chan struct{})
			go func() {
				done <- e.View(t.Context(), func(tx kv.Tx) error {
					kv.Prefetch(tx, keys("a", "b")...)
					close(started)
					<-written
					if a := string(tx.Bucket(bucketA).Get([]byte("a"))); a != "changed" {
						return fmt.Errorf("a = %q after a later write, want the prefetched %q", a, "changed")
					}
					return nil
				})
			}()
			<-started
			put(t, e, bucketA, "a", "changed again")
			close(written)
			if err := <-done; err != nil {
				t.Error(err)
			}

			// Read sets: a counter read through Prefetch counts every
			// increment, and of 20 claims of an absent key one wins.
			var wg sync.WaitGroup
			var claims atomic.Int32
			for i := range 20 {
				wg.Go(func() {
					err := e.Update(t.Context(), func(tx kv.Tx) error {
						kv.Prefetch(tx, keys("counter", "claim", "b")...)
						b := tx.Bucket(bucketA)
						n, _ := strconv.Atoi(string(b.Get([]byte("counter"))))
						if b.Get([]byte("claim")) == nil {
							if err := b.Put([]byte("claim"), []byte(strconv.Itoa(i))); err != nil {
								return err
							}
							tx.OnCommit(func() { claims.Add(1) })
						}
						return b.Put([]byte("counter"), []byte(strconv.Itoa(n+1)))
					})
					if err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			if got := get(t, e, bucketA, "counter"); got != "20" || claims.Load() != 1 {
				t.Errorf("counter = %s, claims won %d; want 20 and 1", got, claims.Load())
			}
		})
	}
}

// A prefetched end of a bucket (Edge First or Last) reads as the cursor's
// First or Last would: the snapshot's keys merged with the transaction's
// own writes, past the prefetched page when the cursor walks on; its span
// joins the read set, so a concurrent write into it still conflicts; and
// on etcd the cursor then asks nothing more of the cluster.
func TestPrefetchEdges(t *testing.T) {
	for name, e := range engines(t) {
		t.Run(name, func(t *testing.T) {
			put(t, e, bucketA, "k1", "1", "k2", "2", "k3", "3", "k4", "4", "k5", "5", "k6", "6")
			edges := []kv.Key{{Bucket: bucketA, Edge: kv.First}, {Bucket: bucketA, Edge: kv.Last}, {Bucket: bucketB, Edge: kv.Last},
				{Bucket: bucketA, Key: []byte("k4"), Edge: kv.From}}
			err := e.Update(t.Context(), func(tx kv.Tx) error {
				b := tx.Bucket(bucketA)
				if err := b.Delete([]byte("k1")); err != nil {
					return err
				}
				if err := b.Put([]byte("k9"), []byte("mine")); err != nil {
					return err
				}
				kv.Prefetch(tx, edges...)
				before := kv.EtcdCounts().Gets
				if k, v := b.Cursor().Last(); string(k) != "k9" || string(v) != "mine" {
					return fmt.Errorf("Last = %s=%s, want the transaction's own k9=mine", k, v)
				}
				if k, v := b.Cursor().First(); string(k) != "k2" || string(v) != "2" {
					return fmt.Errorf("First = %s=%s, want k2=2 (k1 deleted here)", k, v)
				}
				if k, _ := tx.Bucket(bucketB).Cursor().Last(); k != nil {
					return fmt.Errorf("Last of an empty bucket = %s", k)
				}
				c := b.Cursor()
				if k, v := c.Seek([]byte("k4")); string(k) != "k4" || string(v) != "4" {
					return fmt.Errorf("Seek(k4) = %s=%s, want k4=4", k, v)
				}
				if k, _ := c.Next(); string(k) != "k5" {
					return fmt.Errorf("Next after k4 = %s, want k5 (of the page prefetched from k4)", k)
				}
				if after := kv.EtcdCounts().Gets; after != before {
					return fmt.Errorf("%d reads after the prefetch, want none", after-before)
				}
				// Walking on past the prefetched page reads the next.
				c = b.Cursor()
				var walked []string
				for k, _ := c.First(); k != nil; k, _ = c.Next() {
					walked = append(walked, string(k))
				}
				if want := []string{"k2", "k3", "k4", "k5", "k6", "k9"}; !slices.Equal(walked, want) {
					return fmt.Errorf("walked %v, want %v", walked, want)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}

			// A write into a prefetched span after the snapshot: the
			// transaction that read it runs again, and sees it. (A bbolt
			// writer holds the only write lock: nothing to race.)
			if _, ok := e.(*kv.Etcd); !ok {
				return
			}
			var runs atomic.Int32
			written := false
			err = e.Update(t.Context(), func(tx kv.Tx) error {
				runs.Add(1)
				kv.Prefetch(tx, edges...)
				if !written {
					written = true
					put(t, e, bucketA, "k99", "theirs")
				}
				k, _ := tx.Bucket(bucketA).Cursor().Last()
				return tx.Bucket(bucketB).Put([]byte("last-seen"), k)
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := get(t, e, bucketB, "last-seen"); got != "k99" {
				t.Errorf("last seen %q after %d runs, want k99 (the concurrent write)", got, runs.Load())
			}
		})
	}
}

// An Update's first run reads a recent snapshot (any member's state, at
// least what the engine has seen) and counts only once what it read is
// confirmed the latest: a run that fails, or writes nothing, after another
// writer changed what it read runs again on the latest state, as a run
// that writes does through its commit. An engine reads its own writes.
func TestEtcdRecent(t *testing.T) {
	prefix := "/test/" + t.Name() + "/"
	other := etcdEngineAt(t, prefix, 0)
	put(t, other, bucketA, "k", "1")
	refusal := errors.New("refused")
	for _, writes := range []bool{false, true} {
		t.Run(fmt.Sprintf("writes=%v", writes), func(t *testing.T) {
			// A fresh engine has seen nothing: its first read is recent.
			e := etcdEngineAt(t, prefix, 0)
			before := kv.EtcdCounts()
			var runs []string
			err := e.Update(t.Context(), func(tx kv.Tx) error {
				v := string(tx.Bucket(bucketA).Get([]byte("k")))
				runs = append(runs, v)
				if len(runs) == 1 {
					// Another replica's write lands after this run read.
					put(t, other, bucketA, "k", v+"+")
				}
				if writes {
					return tx.Bucket(bucketB).Put([]byte("seen"), []byte(v))
				}
				return fmt.Errorf("%w on %s", refusal, v)
			})
			after := kv.EtcdCounts()
			if len(runs) != 2 || runs[1] != runs[0]+"+" {
				t.Fatalf("runs read %q, want a second run on the other's write", runs)
			}
			if after.Recent-before.Recent < 1 || after.Stale-before.Stale < 1 {
				t.Errorf("counts %+v then %+v: want a recent snapshot found stale", before, after)
			}
			if writes {
				if err != nil || get(t, e, bucketB, "seen") != runs[1] {
					t.Errorf("Update = %v, seen %q: want committed on the latest", err, get(t, e, bucketB, "seen"))
				}
			} else if !errors.Is(err, refusal) || err.Error() != "refused on "+runs[1] {
				t.Errorf("Update = %v, want the refusal decided on the latest (%s)", err, runs[1])
			}
		})
	}
	t.Run("own writes", func(t *testing.T) {
		e := etcdEngine(t, 0)
		for i := range 50 {
			put(t, e, bucketA, "mine", strconv.Itoa(i))
			var v []byte
			if _, err := e.ViewRecent(t.Context(), func(tx kv.Tx) error {
				v = bytes.Clone(tx.Bucket(bucketA).Get([]byte("mine")))
				return nil
			}); err != nil || string(v) != strconv.Itoa(i) {
				t.Fatalf("ViewRecent after writing %d read %q (%v): an engine reads its own writes", i, v, err)
			}
		}
	})
}
