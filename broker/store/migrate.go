package store

// Moving a store from a bbolt file into etcd, for several replicas
// (docs/operations.md, "Migrating from bbolt to etcd").

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/agentictrust/atf/broker/store/kv"
)

// keyMigrating is in the meta bucket of a store in etcd while
// MigrateToEtcd fills it: OpenEtcd refuses such a store, so that no atfd
// ever serves part of a copy.
var keyMigrating = []byte("migrating")

// afterCopy, set only by tests, runs between the copy and its comparison,
// to damage the copy.
var afterCopy func()

// migrating is the value of keyMigrating.
type migrating struct {
	From  string    `json:"from"`
	Began time.Time `json:"began"`
}

// Migration is what MigrateToEtcd copies, and where to.
type Migration struct {
	// Path is the bbolt file. No atfd may hold it: bbolt's lock refuses
	// the copy while one runs (ErrLocked), and keeps one from starting on
	// the file while the copy runs.
	Path string
	// AuditDir is the audit.dir of the atfd that ran on Path, where the
	// audit trail went once committed; default Path + ".audit", as atfd's.
	AuditDir string
	// Client and Etcd are the destination, as for OpenEtcd (Replica is not
	// used). Nothing may be under the prefix yet.
	Client *clientv3.Client
	Etcd   EtcdOptions
	// DryRun checks the file, its audit trail and the destination, and
	// writes nothing.
	DryRun bool
	// CountLive says which live-credential limits the replicas enforce
	// (limits.max_live_* not -1): the credentials still live in the file
	// are counted under those in the copy (SeedLive), so that the limits
	// hold for them on etcd too.
	CountLive LiveKinds
}

// LiveKinds says which of the live-credential counts are kept.
type LiveKinds struct{ Agent, Lineage, Role bool }

// MigrationReport is what MigrateToEtcd found in the file and copied.
type MigrationReport struct {
	// Buckets are the store's buckets, their keys and sequences.
	Buckets []BucketReport `json:"buckets"`
	// AuditRecords is the length of the audit trail, verified in the file
	// and its segments and, after the copy, in etcd; FromSegments of them
	// came from the segment files of AuditDir; AuditHead is the hash of
	// the last.
	AuditRecords uint64 `json:"audit_records"`
	FromSegments uint64 `json:"from_segments"`
	AuditHead    string `json:"audit_head"`
	// Crashed says that the file's last run did not stop cleanly: the
	// first replica to start on the copy recovers it (BeginRun).
	Crashed bool `json:"crashed"`
	// Keys is how many keys the copy holds in etcd; 0 for a dry run.
	Keys int64 `json:"keys"`
	// LiveCounted is how many unexpired credentials of the file were
	// counted against the live-credential limits in the copy.
	LiveCounted int `json:"live_counted"`
}

// BucketReport is one bucket of a MigrationReport.
type BucketReport struct {
	Name     string `json:"name"`
	Keys     int    `json:"keys"`
	Sequence uint64 `json:"sequence,omitempty"`
}

// MigrateToEtcd copies the store in the bbolt file m.Path into etcd under
// m.Etcd.Prefix, then compares every key and value (and every bucket's
// sequence) of the copy with the file and verifies the copy's audit chain.
// It refuses a file an atfd holds (ErrLocked), a damaged one
// (*DamagedError), one whose audit trail does not verify, and a prefix
// that holds anything (ErrExists): it never merges two stores.
//
// The copy is the file's store, less what only a file has: the audit
// records moved to segment files are put back in the store's trail (in
// etcd the whole trail stays in the store), and the checkpoint that said
// where they went is left out. The run marker is copied as it is: if the
// file's atfd crashed, the first replica to start on the copy revokes
// what that atfd made (BeginRun).
//
// Until the comparison passes, the copy carries a marker that makes
// OpenEtcd refuse it; a copy that fails stays so, to be deleted.
func MigrateToEtcd(ctx context.Context, m Migration) (MigrationReport, error) {
	if m.Etcd.Prefix == "" {
		return MigrationReport{}, errors.New("store: migrate: etcd needs a key prefix for the store")
	}
	if m.Etcd.Timeout <= 0 {
		m.Etcd.Timeout = 5 * time.Second
	}
	if m.AuditDir == "" {
		m.AuditDir = m.Path + ".audit"
	}
	src, err := openSource(m.Path, m.AuditDir)
	if err != nil {
		return MigrationReport{}, err
	}
	defer src.db.Close()
	rep, err := src.survey()
	if err != nil {
		return rep, err
	}
	dst := kv.NewEtcd(m.Client, m.Etcd.Prefix, m.Etcd.MaxTxnOps)
	if err := empty(ctx, dst, m.Etcd.Prefix); err != nil || m.DryRun {
		return rep, err
	}
	marker, err := json.Marshal(migrating{From: m.Path, Began: time.Now().UTC()})
	if err != nil {
		return rep, err
	}
	if err := dst.Claim(ctx, bucketMeta, keyMigrating, marker); errors.Is(err, kv.ErrNotEmpty) {
		return rep, refuse(ErrExists, "something wrote under %s as the migration began: is another migration, or an atfd, using it?", m.Etcd.Prefix)
	} else if err != nil {
		return rep, fmt.Errorf("store: migrate: %w", err)
	}
	if rep.Keys, err = src.copyTo(ctx, dst, m.Etcd); err != nil {
		return rep, unfinished(m.Etcd.Prefix, err)
	}
	if afterCopy != nil {
		afterCopy()
	}
	if err := src.compare(ctx, dst, rep); err != nil {
		return rep, unfinished(m.Etcd.Prefix, err)
	}
	if rep.LiveCounted, err = seedLive(ctx, dst, m.CountLive, time.Now(), m.Etcd.Timeout); err != nil {
		return rep, unfinished(m.Etcd.Prefix, err)
	}
	ctx, cancel := context.WithTimeout(ctx, m.Etcd.Timeout)
	defer cancel()
	err = dst.Update(ctx, func(tx kv.Tx) error { return tx.Bucket(bucketMeta).Delete(keyMigrating) })
	if err != nil {
		return rep, unfinished(m.Etcd.Prefix, err)
	}
	return rep, nil
}

// empty refuses a destination prefix that holds anything.
func empty(ctx context.Context, dst *kv.Etcd, prefix string) error {
	n, err := dst.Keys(ctx)
	switch {
	case err != nil:
		return fmt.Errorf("store: migrate: %w", err)
	case n > 0:
		return refuse(ErrExists, "etcd holds %d keys under %s already: migrate into an empty prefix (store.etcd.prefix), "+
			"or delete what is there (etcdctl del --prefix %s) if none of it is to be kept", n, prefix, prefix)
	}
	return nil
}

// unfinished is the error of a copy that failed after it began.
func unfinished(prefix string, err error) error {
	return fmt.Errorf("store: migrate: %w; the copy under %s is unfinished and atfd will not open it: delete it "+
		"(etcdctl del --prefix %s) and migrate again", err, prefix, prefix)
}

// unfinishedMigration is OpenEtcd's refusal of a store that a migration
// has not finished filling; v is its keyMigrating.
func unfinishedMigration(prefix string, v []byte) error {
	var mg migrating
	_ = json.Unmarshal(v, &mg) // the message names what it can
	return fmt.Errorf("store: etcd prefix %s holds a migration from %q, begun at %s, that did not finish: atfd will not serve "+
		"part of a store. Delete it (etcdctl del --prefix %s) and run atfctl admin migrate again", prefix, mg.From,
		mg.Began.Format(time.RFC3339), prefix)
}

// source is the bbolt file being migrated, open read-only.
type source struct {
	path string
	db   *bolt.DB
	// s reads the file's audit trail, segments included.
	s  *Store
	cp auditCheckpoint
}

// openSource opens the file at path read-only, after the checks Open
// makes, and refuses what cannot be copied faithfully.
func openSource(path, auditDir string) (*source, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, refuse(ErrNotFound, "no store file at %s", path)
	case err != nil:
		return nil, fmt.Errorf("store: migrate: %w", err)
	case fi.Size() == 0:
		return nil, refuse(ErrInvalid, "%s is empty: not a store", path)
	}
	if err := checkLength(path, fi.Size(), time.Second); err != nil {
		return nil, migrateOpenError(err)
	}
	metaBad, err := checkReadOnly(path, time.Second)
	if err != nil {
		return nil, migrateOpenError(err)
	}
	if metaBad {
		return nil, refuse(ErrInvalid, "the last commit to %s was torn by a crash: start atfd on it once (it repairs the file and "+
			"recovers the run), stop it, then migrate", path)
	}
	db, err := boltOpen(path, bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, migrateOpenError(err)
	}
	if err := tornSegment(path, auditDir); err != nil {
		db.Close()
		return nil, err
	}
	src := &source{path: path, db: db, s: &Store{core: &core{db: db, auditDir: auditDir, now: time.Now}}}
	err = db.View(func(tx *bolt.Tx) (err error) {
		if err := knownBuckets(path, tx); err != nil {
			return err
		}
		src.cp, err = checkpoint(kv.Bolt(tx))
		return err
	})
	if err == nil {
		err = src.s.loadTails()
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return src, nil
}

// migrateOpenError says, of a file another process holds, what to do.
func migrateOpenError(err error) error {
	if errors.Is(err, ErrLocked) {
		return fmt.Errorf("%w: stop it first; a migration copies a store that no atfd is using", err)
	}
	return err
}

// tornSegment refuses a newest audit segment of dir whose last line a
// crash tore: atfd cuts it off when it next opens the store at path.
func tornSegment(path, dir string) error {
	names, _, err := segmentFiles(dir)
	if err != nil || len(names) == 0 {
		return err
	}
	f, err := os.Open(filepath.Join(dir, names[len(names)-1]))
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	if keep, _, err := LastLine(f, fi.Size()); err != nil || keep < fi.Size() {
		return refuse(ErrInvalid, "the audit segment %s ends in a line torn by a crash: start atfd on %s once (it cuts the line off), "+
			"stop it, then migrate", f.Name(), path)
	}
	return nil
}

// knownBuckets refuses a file with a bucket the store does not have: one
// written by another version of atfd.
func knownBuckets(path string, tx *bolt.Tx) error {
	return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
		for _, b := range allBuckets {
			if bytes.Equal(b, name) {
				return nil
			}
		}
		return refuse(ErrInvalid, "%s holds a bucket %q that this version does not know: migrate with the atfctl of the "+
			"atfd version that last ran on it", path, name)
	})
}

// survey verifies the file's audit trail and counts what is to be copied.
func (src *source) survey() (MigrationReport, error) {
	var rep MigrationReport
	n, err := src.s.VerifyAudit()
	if err != nil {
		return rep, fmt.Errorf("store: migrate: the audit trail of %s, with its segments in %s, does not verify, so it cannot be "+
			"copied as it is: %w", src.path, src.s.auditDir, err)
	}
	head, err := src.s.AuditHead()
	if err != nil {
		return rep, err
	}
	rep.AuditRecords, rep.FromSegments, rep.AuditHead = n, src.cp.Seq, head.Hash
	err = src.db.View(func(tx *bolt.Tx) error {
		rep.Crashed = tx.Bucket(bucketMeta) != nil && tx.Bucket(bucketMeta).Get(keyRunning) != nil
		for _, name := range allBuckets {
			b := BucketReport{Name: string(name), Sequence: sequence(tx, name)}
			if err := src.each(tx, name, func(_, _ []byte) error { b.Keys++; return nil }); err != nil {
				return err
			}
			rep.Buckets = append(rep.Buckets, b)
		}
		return nil
	})
	return rep, err
}

// sequence is the file's sequence of the bucket name (0 if it has none).
func sequence(tx *bolt.Tx, name []byte) uint64 {
	if b := tx.Bucket(name); b != nil {
		return b.Sequence()
	}
	return 0
}

// each calls fn with every key and value the copy holds in the bucket
// name, in order: the file's, but for the audit checkpoint, and in the
// audit bucket first the records the segments hold. k and v are valid
// until tx ends.
func (src *source) each(tx *bolt.Tx, name []byte, fn func(k, v []byte) error) error {
	if bytes.Equal(name, bucketAudit) && src.cp.Seq > 0 {
		err := eachSegmentRecord(src.s.auditDir, 0, src.cp.Seq, func(r AuditRecord, line []byte) (bool, error) {
			return true, fn(seqKey(r.Seq), bytes.Clone(line))
		})
		if err != nil {
			return err
		}
	}
	b := tx.Bucket(name)
	if b == nil {
		return nil // a store from before the bucket existed
	}
	return b.ForEach(func(k, v []byte) error {
		switch {
		case v == nil:
			return refuse(ErrInvalid, "%s: bucket %s holds a bucket %q, which no version of the store writes", src.path, name, k)
		case bytes.Equal(name, bucketMeta) && bytes.Equal(k, keyAuditCheckpoint):
			return nil // the whole trail is in the copy
		}
		return fn(k, v)
	})
}

// migrateBatchBytes bounds the keys and values of one etcd transaction of
// the copy, well under etcd's default request limit (1.5 MiB).
const migrateBatchBytes = 512 << 10

// batch gathers the writes of one etcd transaction of the copy.
type batch struct {
	dst     *kv.Etcd
	timeout time.Duration
	maxOps  int
	ops     []func(kv.Tx) error
	size    int
	written int64
}

// add adds op, which writes size bytes, committing the batch first if op
// would not fit in it.
func (b *batch) add(ctx context.Context, size int, op func(kv.Tx) error) error {
	if len(b.ops) > 0 && (len(b.ops) == b.maxOps || b.size+size > migrateBatchBytes) {
		if err := b.commit(ctx); err != nil {
			return err
		}
	}
	b.ops, b.size = append(b.ops, op), b.size+size
	return nil
}

// commit writes the batch in one etcd transaction.
func (b *batch) commit(ctx context.Context) error {
	if len(b.ops) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	err := b.dst.Update(ctx, func(tx kv.Tx) error {
		for _, op := range b.ops {
			if err := op(tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	b.written += int64(len(b.ops))
	b.ops, b.size = b.ops[:0], 0
	return nil
}

// copyTo writes every key, value and sequence of the copy to dst, in
// transactions of at most eo.MaxTxnOps writes, and returns how many.
func (src *source) copyTo(ctx context.Context, dst *kv.Etcd, eo EtcdOptions) (int64, error) {
	b := &batch{dst: dst, timeout: eo.Timeout, maxOps: eo.MaxTxnOps}
	if b.maxOps <= 0 {
		b.maxOps = kv.DefaultMaxTxnOps
	}
	err := src.db.View(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			err := src.each(tx, name, func(k, v []byte) error {
				return b.add(ctx, len(k)+len(v), func(t kv.Tx) error { return t.Bucket(name).Put(k, v) })
			})
			if err != nil {
				return err
			}
			if n := sequence(tx, name); n > 0 {
				if err := b.add(ctx, 0, func(t kv.Tx) error { return t.Bucket(name).SetSequence(n) }); err != nil {
					return err
				}
			}
		}
		return b.commit(ctx)
	})
	return b.written, err
}

// maxDiffs is how many differences a failed comparison lists.
const maxDiffs = 10

// diffs are the differences a comparison found.
type diffs struct {
	first []string
	n     int
}

func (d *diffs) add(format string, args ...any) {
	d.n++
	if len(d.first) < maxDiffs {
		d.first = append(d.first, fmt.Sprintf(format, args...))
	}
}

func (d *diffs) err() error {
	if d.n == 0 {
		return nil
	}
	more := ""
	if d.n > len(d.first) {
		more = fmt.Sprintf("\n  and %d more", d.n-len(d.first))
	}
	return fmt.Errorf("the copy in etcd differs from the file in %d places:\n  %s%s", d.n, strings.Join(d.first, "\n  "), more)
}

// verifyTimeout bounds the reading of the whole copy's audit trail, which
// VerifyAudit does in one transaction.
const verifyTimeout = time.Hour

// compare reads the copy back and compares it with the file: every key
// and value of every bucket, every sequence, nothing else under the
// prefix (but the marker); then verifies its audit chain.
func (src *source) compare(ctx context.Context, dst *kv.Etcd, rep MigrationReport) error {
	var d diffs
	err := src.db.View(func(stx *bolt.Tx) error {
		return dst.View(ctx, func(dtx kv.Tx) error {
			for _, name := range allBuckets {
				if err := src.compareBucket(stx, dtx, name, &d); err != nil {
					return err
				}
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	want := int64(1) // the marker
	for _, b := range rep.Buckets {
		want += int64(b.Keys)
		if b.Sequence > 0 {
			want++
		}
	}
	if n, err := dst.Keys(ctx); err != nil {
		return err
	} else if n != want {
		d.add("etcd holds %d keys under the prefix, the copy %d: keys outside the store's buckets", n, want)
	}
	if err := d.err(); err != nil {
		return err
	}
	copied := &Store{core: &core{etcd: dst, timeout: verifyTimeout, now: time.Now}}
	if err := copied.loadTails(); err != nil {
		return fmt.Errorf("the copy in etcd: %w", err)
	}
	n, err := copied.VerifyAudit()
	switch {
	case err != nil:
		return fmt.Errorf("the audit trail in etcd does not verify: %w", err)
	case n != rep.AuditRecords:
		return fmt.Errorf("the audit trail in etcd has %d records, the file's %d", n, rep.AuditRecords)
	}
	return nil
}

// compareBucket compares the bucket name of the file (stx) and of the copy
// (dtx), adding what differs to d.
func (src *source) compareBucket(stx *bolt.Tx, dtx kv.Tx, name []byte, d *diffs) error {
	b := dtx.Bucket(name)
	c := b.Cursor()
	// skip passes the marker, which only the copy has.
	skip := func(k, v []byte) ([]byte, []byte) {
		if bytes.Equal(name, bucketMeta) && bytes.Equal(k, keyMigrating) {
			return c.Next()
		}
		return k, v
	}
	dk, dv := skip(c.First())
	err := src.each(stx, name, func(k, v []byte) error {
		for ; dk != nil && bytes.Compare(dk, k) < 0; dk, dv = skip(c.Next()) {
			d.add("%s: key %q is in etcd, not in the file", name, dk)
		}
		switch {
		case dk == nil || !bytes.Equal(dk, k):
			d.add("%s: key %q is missing from etcd", name, k)
			return nil
		case !bytes.Equal(dv, v):
			d.add("%s: the value of key %q differs (%d bytes in the file, %d in etcd)", name, k, len(v), len(dv))
		}
		dk, dv = skip(c.Next())
		return nil
	})
	if err != nil {
		return err
	}
	for ; dk != nil; dk, _ = skip(c.Next()) {
		d.add("%s: key %q is in etcd, not in the file", name, dk)
	}
	if want, got := sequence(stx, name), b.Sequence(); want != got {
		d.add("%s: sequence %d in the file, %d in etcd", name, want, got)
	}
	return nil
}
