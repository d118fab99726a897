package store_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
)

// agentIDs lists every agent in s, deregistered or not.
func agentIDs(t *testing.T, s *store.Store) []string {
	t.Helper()
	var ids []string
	after := ""
	for {
		page, next, err := s.ListAgents(after, 1000, true)
		if err != nil {
			t.Fatalf("ListAgents: %v", err)
		}
		for _, a := range page {
			ids = append(ids, a.ID)
		}
		if next == "" {
			return ids
		}
		after = next
	}
}

// agentID is the i-th agent of fill.
func agentID(i int) string { return fmt.Sprintf("spiffe://atf.test/agent/%06d", i) }

// register registers agents from..from+n-1, each followed by an audit
// record.
func register(s *store.Store, from, n int) error {
	for i := from; i < from+n; i++ {
		if _, err := s.RegisterAgent(agent(agentID(i)), "alice"); err != nil {
			return err
		}
		if err := s.AppendAudit(store.AuditRecord{Kind: "test", Actor: "alice", Subject: agentID(i)}); err != nil {
			return err
		}
	}
	return nil
}

// fill is register for the test's goroutine; it returns the agents' IDs.
func fill(t testing.TB, s *store.Store, from, n int) []string {
	t.Helper()
	if err := register(s, from, n); err != nil {
		t.Fatalf("register: %v", err)
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = agentID(from + i)
	}
	return ids
}

// writeBackup backs s up to a new file in dir and returns its path. If
// wrap is set, the copy is written through wrap(file), called in the
// backup's transaction.
func writeBackup(t *testing.T, s *store.Store, dir string, wrap func(io.Writer) io.Writer) (string, store.BackupInfo) {
	t.Helper()
	path := filepath.Join(dir, "backup.db")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	var info store.BackupInfo
	n, err := s.BackupTo(func(i store.BackupInfo) (io.Writer, error) {
		info = i
		if wrap != nil {
			return wrap(f), nil
		}
		return f, nil
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("BackupTo: %v", err)
	}
	if n != info.Size {
		t.Errorf("BackupTo wrote %d bytes, announced %d", n, info.Size)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != n {
		t.Errorf("the backup file is %v bytes (%v), want %d", fi.Size(), err, n)
	}
	return path, info
}

// gated holds its first write until gate closes.
type gated struct {
	io.Writer
	gate <-chan struct{}
}

func (g gated) Write(p []byte) (int, error) {
	select {
	case <-g.gate:
		return g.Writer.Write(p)
	case <-time.After(10 * time.Second):
		return 0, errors.New("no write committed while the backup was being written")
	}
}

// Writes go on while a backup is written, and it does not see them: it is
// a store that opens, whose audit trail verifies up to the announced head,
// and that holds the agents registered before it started, a gap-free run.
func TestBackupOnline(t *testing.T) {
	boltOnly(t)
	s := openAt(t, filepath.Join(t.TempDir(), "atf.db"), store.Options{})
	before := fill(t, s, 0, 50)

	// The writer counts its registrations once the backup has begun, and
	// the backup writes its first byte only after five.
	var begun atomic.Bool
	stop, fiveMore, writerErr := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		after := 0
		for i := 50; ; i++ {
			select {
			case <-stop:
				writerErr <- nil
				return
			default:
			}
			counted := begun.Load()
			if err := register(s, i, 1); err != nil {
				writerErr <- err
				return
			}
			if counted {
				if after++; after == 5 {
					close(fiveMore)
				}
			}
		}
	}()
	path, info := writeBackup(t, s, t.TempDir(), func(w io.Writer) io.Writer {
		begun.Store(true)
		return gated{Writer: w, gate: fiveMore}
	})
	close(stop)
	if err := <-writerErr; err != nil {
		t.Fatalf("writing during the backup: %v", err)
	}

	b := openAt(t, path, store.Options{})
	n := mustVerifyAudit(t, b)
	if n != info.AuditHead || n < uint64(len(before)) {
		t.Errorf("the backup's audit trail has %d records; announced head %d, want at least %d", n, info.AuditHead, len(before))
	}
	head, err := b.AuditHead()
	if err != nil || head.Seq != info.AuditHead {
		t.Errorf("AuditHead of the backup = %d, %v; want %d", head.Seq, err, info.AuditHead)
	}
	got := agentIDs(t, b)
	// fill registers in ID order, one at a time, each before its audit
	// record: the copy holds a prefix of them, at most one ahead of the
	// audit trail.
	for i, id := range got {
		if id != agentID(i) {
			t.Fatalf("the backup's agent %d is %s, want %s: not a gap-free run", i, id, agentID(i))
		}
	}
	if len(got) < len(before) || uint64(len(got)) > n+1 {
		t.Errorf("the backup holds %d agents and %d audit records; want at least %d agents and no more than one ahead", len(got), n, len(before))
	}
	if all := agentIDs(t, s); len(all) < len(got)+5 {
		t.Errorf("the original has %d agents, the backup %d: want five or more registered during the backup", len(all), len(got))
	}
}

func ExampleStore_Backup() {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	s, done := openExample(&now)
	defer done()
	if _, err := s.RegisterAgent(store.Agent{ID: "spiffe://example.org/agent/reconciler", Level: authz.Junior}, "alice"); err != nil {
		panic(err)
	}

	// Back up while the store serves, then open the copy as a store.
	dir, err := os.MkdirTemp("", "atf-backup")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "backup.db")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		panic(err)
	}
	if _, err := s.Backup(f); err != nil {
		panic(err)
	}
	if err := f.Close(); err != nil {
		panic(err)
	}
	copied, err := store.Open(path, store.Options{})
	if err != nil {
		panic(err)
	}
	defer copied.Close()
	a, err := copied.GetAgent("spiffe://example.org/agent/reconciler")
	if err != nil {
		panic(err)
	}
	fmt.Println(a.ID, a.Level, a.UpdatedBy)
	// Output: spiffe://example.org/agent/reconciler junior alice
}

// errAfter fails once n bytes have been written to it.
type errAfter struct{ n int }

var errDiskFull = errors.New("disk full")

func (w *errAfter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		return w.n, errDiskFull
	}
	w.n -= len(p)
	return len(p), nil
}

// A backup that cannot be written fails with the writer's error, and ends
// its transaction: the store takes writes and closes.
func TestBackupWriteFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atf.db")
	s, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fill(t, s, 0, 20)
	errBegin := errors.New("no room")
	for _, tt := range []struct {
		name  string
		begin func(store.BackupInfo) (io.Writer, error)
		want  error
	}{
		{"begin fails", func(store.BackupInfo) (io.Writer, error) { return nil, errBegin }, errBegin},
		{"write fails at the meta page", func(store.BackupInfo) (io.Writer, error) { return &errAfter{n: 10}, nil }, nil},
		{"write fails mid-copy", func(i store.BackupInfo) (io.Writer, error) { return &errAfter{n: int(i.Size / 2)}, nil }, errDiskFull},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n, err := s.BackupTo(tt.begin)
			if err == nil || !strings.HasPrefix(err.Error(), "store: backup: ") || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("BackupTo = %d, %v; want a store: backup: error wrapping %v", n, err, tt.want)
			}
		})
	}
	fill(t, s, 20, 1)
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs: a failed backup left its transaction open")
	}
}

// damage is a way a store file gets damaged. do gets the length of the
// file's pages: bbolt grows a file ahead of them.
type damage struct {
	name string
	do   func(t *testing.T, path string, pages int64)
}

func truncate(to func(pages int64) int64) func(*testing.T, string, int64) {
	return func(t *testing.T, path string, pages int64) {
		if err := os.Truncate(path, to(pages)); err != nil {
			t.Fatal(err)
		}
	}
}

func overwrite(at func(pages int64) int64, with func(n int) []byte, n int) func(*testing.T, string, int64) {
	return func(t *testing.T, path string, pages int64) {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(with(n), at(pages)); err != nil {
			t.Fatal(err)
		}
	}
}

// findPage returns the offset of the first page of type typ with at least
// two elements in the file at path.
func findPage(t *testing.T, path, typ string) int64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	found := -1
	err = db.View(func(tx *bolt.Tx) error {
		for id := 2; found < 0; id++ {
			p, err := tx.Page(id)
			if err != nil || p == nil {
				return fmt.Errorf("no %s page: %v", typ, err)
			}
			if p.Type == typ && p.Count > 1 {
				found = id
			}
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	return int64(found * os.Getpagesize())
}

// A page is a 16-byte header, then its elements, in the machine's byte
// order: on a branch page pos, ksize (uint32) and pgid (uint64); on a leaf
// page flags, pos, ksize and vsize (uint32). pos counts from the element.
const pageHeader = 16

// pointBranch points the first element of a branch page at page pgid,
// which bbolt reads without a bounds check: past the end of the file but
// inside bbolt's memory map, that is a SIGBUS; past the map, a SIGSEGV.
func pointBranch(pgid func(fileSize int64) uint64) func(*testing.T, string, int64) {
	return func(t *testing.T, path string, _ int64) {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		at := findPage(t, path, "branch") + pageHeader + 8
		to := binary.NativeEndian.AppendUint64(nil, pgid(fi.Size()))
		overwrite(func(int64) int64 { return at }, func(int) []byte { return to }, 8)(t, path, 0)
	}
}

// disorderKeys makes the first key of a leaf page sort after the second:
// every page still reads, only tx.Check sees it.
func disorderKeys(t *testing.T, path string, _ int64) {
	page := findPage(t, path, "leaf")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	elem := make([]byte, 16)
	if _, err := f.ReadAt(elem, page+pageHeader); err != nil {
		t.Fatal(err)
	}
	pos := int64(binary.NativeEndian.Uint32(elem[4:8]))
	if _, err := f.WriteAt([]byte{0xff}, page+pageHeader+pos); err != nil {
		t.Fatal(err)
	}
}

func garbage(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{'a', 't', 'f'})
	_, _ = r.Read(b)
	return b
}

func zeros(n int) []byte { return make([]byte, n) }

// Open refuses a damaged file, saying how to recover, and never panics; the
// file is left as it was and unlocked, and a backup restored in its place
// opens. Damage bbolt is built to survive is not refused.
func TestOpenDamaged(t *testing.T) {
	boltOnly(t)
	dir := t.TempDir()
	orig := filepath.Join(dir, "atf.db")
	s, err := store.Open(orig, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ids := fill(t, s, 0, 300)
	backup, info := writeBackup(t, s, dir, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	pages, pageSize := info.Size, os.Getpagesize()
	if pages < 64*int64(pageSize) || int64(len(raw))/2 < pages {
		t.Fatalf("the fixture store has %d bytes of pages in %d: want enough to damage in the middle, and bbolt's room to grow", pages, len(raw))
	}

	for _, tt := range []struct {
		damage
		refused string // the reason, in part; "" if Open must accept it
	}{
		{damage{"cut to half its pages", truncate(func(pages int64) int64 { return pages / 2 })}, "it was cut short"},
		{damage{"cut to half, losing only room to grow", func(t *testing.T, path string, _ int64) {
			truncate(func(int64) int64 { return int64(len(raw)) / 2 })(t, path, 0)
		}}, ""},
		{damage{"cut to two pages", truncate(func(int64) int64 { return int64(2 * pageSize) })}, "it was cut short"},
		{damage{"cut to one page", truncate(func(int64) int64 { return int64(pageSize) })}, "file size too small"},
		{damage{"garbage in the middle", overwrite(func(pages int64) int64 { return pages/2 - 32<<10 }, garbage, 64<<10)}, "says it is page"},
		{damage{"a branch pointing past the end", pointBranch(func(size int64) uint64 { return uint64(size)/uint64(pageSize) + 16 })}, "a page points outside the file"},
		{damage{"a branch pointing past the map", pointBranch(func(int64) uint64 { return 1 << 30 })}, "a page points outside the file"}, // 4 TiB on
		{damage{"keys out of order", disorderKeys}, "on leaf page"},
		{damage{"meta pages zeroed", overwrite(func(int64) int64 { return 0 }, zeros, 2*pageSize)}, "invalid database"},
		{damage{"not a store", func(t *testing.T, path string, _ int64) {
			if err := os.WriteFile(path, []byte("listen_addr: 127.0.0.1:8443\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}}, "invalid database"},
		{damage{"first meta page zeroed", overwrite(func(int64) int64 { return 0 }, zeros, pageSize)}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "atf.db")
			if err := os.WriteFile(path, raw, 0o600); err != nil {
				t.Fatal(err)
			}
			tt.do(t, path, pages)
			damaged, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			s, err := store.Open(path, store.Options{})
			if tt.refused == "" {
				if err != nil {
					t.Fatalf("Open: %v; want the file accepted", err)
				}
				defer s.Close()
				mustVerifyAudit(t, s)
				if got := agentIDs(t, s); !slices.Equal(got, ids) {
					t.Errorf("the store holds %d agents, want %d", len(got), len(ids))
				}
				return
			}
			var de *store.DamagedError
			if !errors.As(err, &de) {
				if s != nil {
					s.Close()
				}
				t.Fatalf("Open = %v; want a *store.DamagedError", err)
			}
			want := fmt.Sprintf("store: %s is damaged (%s); atfd will not start on it. Restore the latest backup "+
				"(atfctl admin backup makes one) to %s, or move the file away to start empty", path, de.Reason, path)
			if de.Path != path || err.Error() != want || !strings.Contains(de.Reason, tt.refused) {
				t.Errorf("Open error:\n %s\nwant:\n %s\nwith a reason saying %q", err, want, tt.refused)
			}
			if after, err := os.ReadFile(path); err != nil || !bytes.Equal(after, damaged) {
				t.Errorf("Open changed the damaged file (%v)", err)
			}
			// Recovery as the error says: the backup, restored in place.
			restored, err := os.ReadFile(backup)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, restored, 0o600); err != nil {
				t.Fatal(err)
			}
			s = openAt(t, path, store.Options{LockTimeout: 100 * time.Millisecond})
			mustVerifyAudit(t, s)
			if got := agentIDs(t, s); !slices.Equal(got, ids) {
				t.Errorf("the restored store holds %d agents, want %d", len(got), len(ids))
			}
		})
	}
}

// An empty file is what a crash between create and initialise leaves:
// bbolt initialises it.
func TestOpenEmptyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atf.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openAt(t, path, store.Options{})
	mustRegister(t, s, "spiffe://atf.test/a", "alice")
}

// BenchmarkOpen measures Open on a store of 10,000 agents, with its
// checks, against the bare bbolt open and bucket set-up Open did before,
// and tx.Check alone.
func BenchmarkOpen(b *testing.B) {
	path := filepath.Join(b.TempDir(), "atf.db")
	s, err := store.Open(path, store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	// Writers in parallel, as the broker has them: their audit records share commits.
	const agents, writers = 10_000, 50
	errs := make(chan error, writers)
	for w := range writers {
		go func() { errs <- register(s, w*agents/writers, agents/writers) }()
	}
	for range writers {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%d agents, %d audit records: %.1f MB", agents, agents, float64(fi.Size())/1e6)

	b.Run("bolt", func(b *testing.B) {
		for b.Loop() {
			db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
			if err != nil {
				b.Fatal(err)
			}
			if err := db.Update(func(tx *bolt.Tx) error {
				_, err := tx.CreateBucketIfNotExists([]byte("agents"))
				return err
			}); err != nil {
				b.Fatal(err)
			}
			db.Close()
		}
	})
	b.Run("bolt+check", func(b *testing.B) {
		db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		for b.Loop() {
			if err := db.View(func(tx *bolt.Tx) error {
				for err := range tx.Check() {
					return err // the store is whole: never
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("store", func(b *testing.B) {
		for b.Loop() {
			s, err := store.Open(path, store.Options{})
			if err != nil {
				b.Fatal(err)
			}
			s.Close()
		}
	})
}
