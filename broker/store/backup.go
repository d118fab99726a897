package store

// Backups, and the refusal of a damaged file that makes them matter.

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/agentictrust/atf/broker/store/kv"
)

// BackupInfo is what a backup holds, known before its first byte is written.
type BackupInfo struct {
	// Size is the length of the copy in bytes.
	Size int64
	// AuditHead is the Seq of the newest audit record in the copy; 0 if
	// there is none.
	AuditHead uint64
}

// Backup writes a consistent copy of the store file to w and returns the
// number of bytes written. The copy is taken in one read transaction:
// writes go on meanwhile and none is half in it. The copy is a store file
// that Open accepts.
func (s *Store) Backup(w io.Writer) (int64, error) {
	return s.BackupTo(func(BackupInfo) (io.Writer, error) { return w, nil })
}

// BackupTo is Backup for a caller that must announce the copy before it
// starts: begin is called in the transaction with what the copy holds, and
// returns where to write it.
//
// The transaction lasts until the last byte is written. Writes go on
// meanwhile, unless one needs a larger memory map than Open made
// (initialMmapSize): that one waits for the transaction to end.
func (s *Store) BackupTo(begin func(BackupInfo) (io.Writer, error)) (int64, error) {
	var n int64
	err := s.viewBolt(func(tx *bolt.Tx) error {
		info := BackupInfo{Size: tx.Size()}
		last, err := s.lastAudit(kv.Bolt(tx))
		if err != nil {
			return err
		}
		info.AuditHead = last.Seq
		w, err := begin(info)
		if err != nil {
			return err
		}
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("store: backup: %w", err)
	}
	return n, nil
}

// DamagedError is Open's refusal of a file that bbolt cannot read or that
// fails its consistency check. Test for it with errors.As.
type DamagedError struct {
	Path string
	// Reason is what is wrong, in bbolt's words.
	Reason string
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("store: %s is damaged (%s); atfd will not start on it. Restore the latest backup "+
		"(atfctl admin backup makes one) to %s, or move the file away to start empty", e.Path, e.Reason, e.Path)
}

// initialMmapSize is the memory map the store starts with: address space,
// not memory. bbolt cannot remap while a read transaction is open, so a
// write that outgrows the map waits for every reader; with this one, a
// backup to a slow reader holds up no write until the file passes 1 GiB.
const initialMmapSize = 1 << 30

// openDB opens the bbolt file at path for writing, refusing it if it is
// damaged. bbolt trusts the pages it reads: on a damaged one it panics, or
// reads outside the file, a fault that kills the process unless the
// goroutine asked for a panic instead (debug.SetPanicOnFault). So the file
// is checked in steps, each safe because of the one before:
//
//  1. read-only: the file is as long as its meta page says, and its pages
//     form a tree within it (checkTree), so that
//  2. reading its freelist cannot fault; then, read-only again, with the
//     freelist loaded, every key and value is read on this goroutine, and
//  3. tx.Check, on a goroutine of bbolt's, reads nothing that step 2 has
//     not: every page is used or free, once, and keys are in order.
//
// Steps 2 and 3 run on a mapping of their own, closed before the store's
// is made, so the pages they read do not stay in atfd's resident memory:
// a restart costs what the live state costs, not the whole file. Only
// after a crash tore a meta page do they run on the store's own mapping,
// after its first commit has rewritten that page (tx.Check stops at it).
func openDB(path string, timeout time.Duration, maxSize int64) (*bolt.DB, error) {
	fi, err := os.Stat(path)
	metaBad := false
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("store: %w", err)
	case fi.Size() > 0: // bbolt initialises an empty file
		if err := checkLength(path, fi.Size(), timeout); err != nil {
			return nil, err
		}
		if metaBad, err = checkReadOnly(path, timeout); err != nil {
			return nil, err
		}
	}
	db, err := boltOpen(path, bolt.Options{Timeout: timeout, InitialMmapSize: initialMmapSize, MaxSize: int(maxSize)})
	if err != nil {
		return nil, err
	}
	if metaBad {
		if err := checkPages(path, db); err != nil {
			db.Close()
			return nil, err
		}
	}
	return db, nil
}

// checkLength is openDB's first step, for a file of size bytes.
func checkLength(path string, size int64, timeout time.Duration) error {
	db, err := boltOpen(path, bolt.Options{Timeout: timeout, ReadOnly: true})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		if tx.Size() > size {
			return &DamagedError{Path: path, Reason: fmt.Sprintf("it is %d bytes long but its pages reach byte %d: it was cut short", size, tx.Size())}
		}
		return checkTree(path, tx, db.Info().PageSize)
	})
}

// checkReadOnly is openDB's steps 2 and 3 on a read-only mapping of the
// file at path. It skips them, reporting metaBad, if a meta page is not
// one (a commit torn by a crash): they run after the first commit then.
func checkReadOnly(path string, timeout time.Duration) (metaBad bool, err error) {
	var db *bolt.DB
	err = guard(path, func() (err error) {
		if db, err = boltOpen(path, bolt.Options{Timeout: timeout, ReadOnly: true, PreLoadFreelist: true}); err != nil {
			return err
		}
		return db.View(func(tx *bolt.Tx) (err error) {
			if metaBad, err = badMeta(tx); err != nil || metaBad {
				return err
			}
			runtime.KeepAlive(readAll(tx)) // the reads are the point
			return nil
		})
	})
	if db == nil || err != nil || metaBad {
		if db != nil {
			db.Close()
		}
		return metaBad, err
	}
	defer db.Close()
	if err := db.View(consistent); err != nil {
		return false, &DamagedError{Path: path, Reason: err.Error()}
	}
	return false, nil
}

// checkPages reads every page of db, then runs bbolt's consistency check.
func checkPages(path string, db *bolt.DB) error {
	err := guard(path, func() error {
		return db.View(func(tx *bolt.Tx) error {
			runtime.KeepAlive(readAll(tx)) // the reads are the point
			return nil
		})
	})
	if err != nil {
		return err
	}
	if err := rewriteMeta(db); err != nil {
		return fmt.Errorf("store: open %s: %w", path, err)
	}
	if err := db.View(consistent); err != nil {
		return &DamagedError{Path: path, Reason: err.Error()}
	}
	return nil
}

// readAll reads the last byte of every key and value in tx, so that every
// page, and every key or value that runs on to further pages, is touched.
func readAll(tx *bolt.Tx) byte {
	var sum byte
	var walk func(*bolt.Bucket)
	walk = func(b *bolt.Bucket) {
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			sum ^= k[len(k)-1] // bbolt keys are never empty
			if v == nil {
				if child := b.Bucket(k); child != nil {
					walk(child)
				}
			} else if len(v) > 0 {
				sum ^= v[len(v)-1]
			}
		}
	}
	_ = tx.ForEach(func(_ []byte, b *bolt.Bucket) error {
		walk(b)
		return nil
	})
	return sum
}

// rewriteMeta commits once if one of the two meta pages is not one. bbolt
// keeps two so that a commit torn by a crash costs nothing: it opened on
// the other, and its next commit rewrites the bad one. tx.Check stops at
// such a page, so that commit comes first.
func rewriteMeta(db *bolt.DB) error {
	var bad bool
	err := db.View(func(tx *bolt.Tx) (err error) {
		bad, err = badMeta(tx)
		return err
	})
	if err != nil || !bad {
		return err
	}
	return db.Update(func(*bolt.Tx) error { return nil })
}

// badMeta reports whether one of tx's two meta pages is not one.
func badMeta(tx *bolt.Tx) (bool, error) {
	for id := range 2 {
		p, err := tx.Page(id)
		if err != nil {
			return false, err
		}
		if p == nil || p.Type != "meta" {
			return true, nil
		}
	}
	return false, nil
}

// consistent runs bbolt's consistency check and returns its first finding.
func consistent(tx *bolt.Tx) error {
	var first error
	more := 0
	for err := range tx.Check() { // drained to the end, or its goroutine leaks
		if first == nil {
			first = err
		} else {
			more++
		}
	}
	if more > 0 {
		return fmt.Errorf("%w; and %d more", first, more)
	}
	return first
}

// boltOpen is bolt.Open under guard. If bbolt panics, the file is closed,
// which releases its lock; its memory map stays until the process ends, as
// only bbolt could unmap it.
func boltOpen(path string, o bolt.Options) (*bolt.DB, error) {
	var f *os.File
	o.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		var err error
		f, err = os.OpenFile(name, flag, perm)
		return f, err
	}
	var db *bolt.DB
	err := guard(path, func() error {
		var err error
		db, err = bolt.Open(path, 0o600, &o)
		return err
	})
	var damaged *DamagedError
	switch {
	case err == nil:
		return db, nil
	case errors.As(err, &damaged):
		if f != nil {
			f.Close()
		}
		return nil, err
	case errors.Is(err, berrors.ErrTimeout):
		return nil, refuse(ErrLocked, "%s (is another atfd running on it?)", path)
	case errors.As(err, new(*fs.PathError)), errors.As(err, new(syscall.Errno)):
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	// bbolt's other errors are about what it read: no valid meta page, a
	// file too short to hold them, another format version. (Opening,
	// locking and mapping the file fail with the system's errors, above.)
	return nil, &DamagedError{Path: path, Reason: err.Error()}
}

// guard runs f, turning a panic or a fault on the memory map into a
// DamagedError for path.
func guard(path string, f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		reason := fmt.Sprint(r)
		if _, fault := r.(interface{ Addr() uintptr }); fault {
			reason = "a page points outside the file"
		}
		err = &DamagedError{Path: path, Reason: reason}
	}()
	return f()
}
