package store

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/agentictrust/atf/broker/store/kv"
)

// The audit trail leaves the store once it is safely in segment files
// (Options.AuditDir): JSON lines, one store.AuditRecord per line, exactly
// as the store held it, in files named by the Seq of their first record.
// The store keeps a checkpoint (the last shipped record's Seq, Hash and
// time, and the SHA-256 of every sealed segment), so the chain runs on
// across the boundary and VerifyAudit proves it end to end: an edited,
// missing, reordered or cut segment breaks it.

// keyAuditCheckpoint holds the auditCheckpoint in the meta bucket.
var keyAuditCheckpoint = []byte("audit_checkpoint")

const (
	// shipBatch is how many records one ShipAudit moves at most.
	shipBatch = 10_000
	// defaultSegmentSize is when a segment is sealed and the next begun.
	defaultSegmentSize = 64 << 20
	// maxAuditLine is the longest segment line read back.
	maxAuditLine                 = 1 << 20
	segmentPrefix, segmentSuffix = "audit-", ".jsonl"
)

// auditCheckpoint says how much of the trail lives in segments.
type auditCheckpoint struct {
	// Seq, Hash and Time are those of the last record shipped.
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time"`
	// Sealed are the segments no longer written to, oldest first.
	Sealed []SealedSegment `json:"sealed,omitempty"`
}

// SealedSegment is a segment file that is complete: its records and the
// SHA-256 of its bytes.
type SealedSegment struct {
	Name   string `json:"name"`
	First  uint64 `json:"first"`
	Last   uint64 `json:"last"`
	SHA256 string `json:"sha256"`
}

// segmentName is the file name of the segment whose first record is first.
func segmentName(first uint64) string {
	return fmt.Sprintf("%s%020d%s", segmentPrefix, first, segmentSuffix)
}

// segmentFiles lists the segment files in dir, oldest first, with the Seq
// of their first record.
func segmentFiles(dir string) ([]string, []uint64, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("store: audit segments: %w", err)
	}
	var names []string
	var firsts []uint64
	for _, e := range entries {
		num, ok := strings.CutPrefix(e.Name(), segmentPrefix)
		num, ok2 := strings.CutSuffix(num, segmentSuffix)
		first, err := strconv.ParseUint(num, 10, 64)
		if !ok || !ok2 || err != nil || e.IsDir() {
			continue
		}
		names, firsts = append(names, e.Name()), append(firsts, first)
	}
	return names, firsts, nil // ReadDir sorts by name: by first Seq
}

// checkpoint reads the audit checkpoint in tx (the zero one if none).
func checkpoint(tx kv.Tx) (auditCheckpoint, error) {
	var cp auditCheckpoint
	if v := tx.Bucket(bucketMeta).Get(keyAuditCheckpoint); v != nil {
		if err := json.Unmarshal(v, &cp); err != nil {
			return cp, fmt.Errorf("store: decode the audit checkpoint: %w", err)
		}
	}
	return cp, nil
}

func putCheckpoint(tx kv.Tx, cp auditCheckpoint) error {
	v, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketMeta).Put(keyAuditCheckpoint, v)
}

// eachSegmentRecord calls fn with every record in the segments of dir with
// after < Seq <= upto, in order, and its line (valid only during fn), until
// fn returns false or an error.
func eachSegmentRecord(dir string, after, upto uint64, fn func(r AuditRecord, line []byte) (bool, error)) error {
	names, firsts, err := segmentFiles(dir)
	if err != nil {
		return err
	}
	for i, name := range names {
		if firsts[i] > upto {
			return nil
		}
		if i+1 < len(names) && firsts[i+1] <= after+1 {
			continue // wholly at or before after
		}
		more, err := eachLine(filepath.Join(dir, name), after, upto, fn)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// eachLine is eachSegmentRecord for one file.
func eachLine(path string, after, upto uint64, fn func(AuditRecord, []byte) (bool, error)) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("store: audit segment: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxAuditLine)
	for sc.Scan() {
		var r AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return false, fmt.Errorf("store: audit segment %s: a line is not a record: %w", filepath.Base(path), err)
		}
		if r.Seq <= after {
			continue
		}
		if r.Seq > upto {
			return false, nil
		}
		if more, err := fn(r, sc.Bytes()); err != nil || !more {
			return false, err
		}
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("store: audit segment %s: %w", filepath.Base(path), err)
	}
	return true, nil
}

// eachAudit calls fn with every record with Seq > after, from the segments
// and then from the store, in order, until fn returns false or an error.
// Shipping waits meanwhile, so no record is missed or seen twice.
func (s *Store) eachAudit(after uint64, fn func(AuditRecord) (bool, error)) error {
	s.auditMu.RLock()
	defer s.auditMu.RUnlock()
	var cp auditCheckpoint
	if err := s.view(func(tx kv.Tx) (err error) { cp, err = checkpoint(tx); return err }); err != nil {
		return err
	}
	stopped := false
	if after < cp.Seq && s.auditDir != "" {
		err := eachSegmentRecord(s.auditDir, after, cp.Seq, func(r AuditRecord, _ []byte) (bool, error) {
			more, err := fn(r)
			stopped = !more
			return more, err
		})
		if err != nil || stopped {
			return err
		}
	}
	return s.view(func(tx kv.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(seqKey(max(after, cp.Seq) + 1)); k != nil; k, v = c.Next() {
			var r AuditRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("store: audit record %d is unreadable: %w", binary.BigEndian.Uint64(k), err)
			}
			if more, err := fn(r); err != nil || !more {
				return err
			}
		}
		return nil
	})
}

// ShipAudit moves up to shipBatch records from the store to the segment
// files of Options.AuditDir and returns how many it moved (0 without an
// AuditDir). The records are written and fsynced before the store lets
// go of them, in one transaction with the new checkpoint: a crash in
// between leaves them in both, and the next ShipAudit (or Open) finishes.
func (s *Store) ShipAudit() (int, error) {
	if s.auditDir == "" {
		return 0, nil
	}
	s.shipMu.Lock()
	defer s.shipMu.Unlock()
	var cp auditCheckpoint
	var recs []AuditRecord
	var lines []byte
	err := s.view(func(tx kv.Tx) (err error) {
		if cp, err = checkpoint(tx); err != nil {
			return err
		}
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(seqKey(cp.Seq + 1)); k != nil && len(recs) < shipBatch; k, v = c.Next() {
			var r AuditRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("store: decode audit record: %w", err)
			}
			recs = append(recs, r)
			// Written already by a ShipAudit whose trim failed: not again.
			if r.Seq > s.segments.last {
				lines = append(append(lines, v...), '\n')
			}
		}
		return nil
	})
	if err != nil || len(recs) == 0 {
		return 0, err
	}
	last := recs[len(recs)-1]
	if len(lines) > 0 {
		if err := s.segments.append(s.auditDir, last.Seq-uint64(bytes.Count(lines, []byte{'\n'}))+1, last.Seq, lines); err != nil {
			return 0, err
		}
	}
	if err := s.segments.sealIfFull(s.segmentSize); err != nil {
		return 0, err
	}
	cp.Seq, cp.Hash, cp.Time = last.Seq, last.Hash, last.Time
	cp.Sealed = append(cp.Sealed, s.segments.unsaved...)
	if err := s.trimAudit(cp); err != nil {
		return 0, err
	}
	s.segments.unsaved = nil
	return len(recs), nil
}

// trimAudit deletes the records up to cp.Seq from the store and commits cp.
func (s *Store) trimAudit(cp auditCheckpoint) error {
	s.auditMu.Lock()
	defer s.auditMu.Unlock()
	return s.update(func(tx kv.Tx) error {
		if s.commitFault != nil {
			if err := s.commitFault(); err != nil {
				return err
			}
		}
		b := tx.Bucket(bucketAudit)
		c := b.Cursor()
		for k, _ := c.First(); k != nil && bytes.Compare(k, seqKey(cp.Seq)) <= 0; k, _ = c.First() {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return putCheckpoint(tx, cp)
	})
}

// segmentWriter appends to the open segment. ShipAudit's alone.
type segmentWriter struct {
	f     *os.File
	first uint64
	size  int64
	// last is the Seq of the last record written to a segment, and
	// unsaved the segments sealed since the last checkpoint committed: a
	// ShipAudit whose trim failed leaves both for the next one.
	last    uint64
	unsaved []SealedSegment
}

// append writes lines (records first to last) to the open segment, or to
// a new one, and makes them durable.
func (w *segmentWriter) append(dir string, first, last uint64, lines []byte) error {
	if w.f == nil {
		if err := w.open(dir, first); err != nil {
			return err
		}
	}
	n, err := w.f.Write(lines)
	w.size += int64(n)
	if err == nil {
		err = w.f.Sync()
	}
	if err != nil {
		// A short write leaves a torn line: cut back to what was whole.
		_ = w.f.Truncate(w.size - int64(n))
		w.size -= int64(n)
		return fmt.Errorf("store: write audit segment: %w", err)
	}
	w.last = last
	return nil
}

// open opens the newest segment of dir to append to, or begins one at
// first, cutting off a line torn by a crash.
func (w *segmentWriter) open(dir string, first uint64) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("store: audit segments: %w", err)
	}
	name := segmentName(first)
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("store: audit segment: %w", err)
	}
	if err := syncDir(dir); err != nil {
		f.Close()
		return err
	}
	w.f, w.first, w.size = f, first, 0
	return nil
}

// sealIfFull closes the open segment once it reached size and adds it,
// with its digest, to unsaved.
func (w *segmentWriter) sealIfFull(size int64) error {
	if w.f == nil || w.size < size {
		return nil
	}
	sum, err := fileSHA256(w.f.Name())
	if err != nil {
		return err
	}
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("store: audit segment: %w", err)
	}
	w.unsaved = append(w.unsaved, SealedSegment{Name: filepath.Base(w.f.Name()), First: w.first, Last: w.last, SHA256: sum})
	w.f = nil
	return nil
}

func (w *segmentWriter) close() {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("store: audit segment: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("store: audit segment: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: audit segments: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("store: audit segments: %w", err)
	}
	return nil
}

// verifySegments checks that the sealed segments of cp are as sealed.
func verifySegments(dir string, cp auditCheckpoint) error {
	names, _, err := segmentFiles(dir)
	if err != nil {
		return err
	}
	for _, seg := range cp.Sealed {
		if !slices.Contains(names, seg.Name) {
			return fmt.Errorf("store: audit segment %s (records %d to %d) is missing", seg.Name, seg.First, seg.Last)
		}
		sum, err := fileSHA256(filepath.Join(dir, seg.Name))
		if err != nil {
			return err
		}
		if sum != seg.SHA256 {
			return fmt.Errorf("store: audit segment %s (records %d to %d) was altered since it was sealed", seg.Name, seg.First, seg.Last)
		}
	}
	return nil
}

// recoverSegments makes the segments of Options.AuditDir and the store
// agree after a crash, at Open: a line torn mid-write is cut off, records
// written to a segment but still in the store leave the store, and the
// newest segment, unless sealed, is reopened for appending.
func (s *Store) recoverSegments() error {
	names, firsts, err := segmentFiles(s.auditDir)
	if err != nil || len(names) == 0 {
		return err
	}
	path := filepath.Join(s.auditDir, names[len(names)-1])
	last, size, err := cutTornTail(path)
	if err != nil {
		return err
	}
	var cp auditCheckpoint
	var inStore AuditRecord
	err = s.view(func(tx kv.Tx) (err error) {
		if cp, err = checkpoint(tx); err != nil {
			return err
		}
		if v := tx.Bucket(bucketAudit).Get(seqKey(last.Seq)); v != nil {
			return json.Unmarshal(v, &inStore)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if last.Seq > cp.Seq {
		if inStore.Hash != last.Hash {
			return fmt.Errorf("store: audit segment %s goes on past the store's audit trail (record %d): the store is older than its segments "+
				"(restored from a backup?); move the segments after record %d out of %s", names[len(names)-1], last.Seq, cp.Seq, s.auditDir)
		}
		cp.Seq, cp.Hash, cp.Time = last.Seq, last.Hash, last.Time
		if err := s.trimAudit(cp); err != nil {
			return err
		}
	}
	s.segments.last = last.Seq
	if slices.ContainsFunc(cp.Sealed, func(seg SealedSegment) bool { return seg.Name == names[len(names)-1] }) {
		return nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("store: audit segment: %w", err)
	}
	s.segments.f, s.segments.first, s.segments.size = f, firsts[len(firsts)-1], size
	return nil
}

// cutTornTail cuts off an incomplete last line of the segment at path and
// returns its last record (zero if none) and its size after. It reads only
// the end of the file.
func cutTornTail(path string) (AuditRecord, int64, error) {
	var last AuditRecord
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return last, 0, fmt.Errorf("store: audit segment: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return last, 0, fmt.Errorf("store: audit segment: %w", err)
	}
	keep, line, err := LastLine(f, fi.Size())
	if err != nil {
		return last, 0, fmt.Errorf("store: audit segment: %w", err)
	}
	if keep < fi.Size() {
		if err := f.Truncate(keep); err != nil {
			return last, 0, fmt.Errorf("store: audit segment: cut off a torn line: %w", err)
		}
	}
	if line != nil {
		if err := json.Unmarshal(line, &last); err != nil {
			return last, 0, fmt.Errorf("store: audit segment %s: the last line is not a record: %w", filepath.Base(path), err)
		}
	}
	return last, keep, nil
}

// LastLine returns how much of f (size bytes) ends in a newline, and the
// last line within that, without its newline (nil if there is none). It
// reads only the end of the file, and refuses a last line longer than
// 1 MiB. For the JSON-lines files of the audit trail: segments, and the
// audit package's copies. Its errors carry no package prefix.
func LastLine(f *os.File, size int64) (keep int64, line []byte, err error) {
	const chunk, most = 64 << 10, 2*maxAuditLine + 2 // a torn line and a whole one, with their newlines
	for n := min(size, chunk); ; n = min(2*n, size, most) {
		buf := make([]byte, n)
		if _, err := f.ReadAt(buf, size-n); err != nil {
			return 0, nil, err
		}
		if end := bytes.LastIndexByte(buf, '\n'); end >= 0 {
			start := bytes.LastIndexByte(buf[:end], '\n') + 1
			if start > 0 || n == size {
				return size - n + int64(end) + 1, buf[start:end], nil
			}
		} else if n == size {
			return 0, nil, nil // no complete line at all
		}
		if n == most {
			return 0, nil, fmt.Errorf("%s: the last line is longer than %d bytes", f.Name(), maxAuditLine)
		}
	}
}
