package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"time"

	"github.com/agentictrust/atf/broker/store"
)

const (
	// batchSize is how many records the streamer reads and writes at once.
	batchSize = 1000
	// pollInterval is how often Run looks for new records unprompted, in
	// case a Notify was missed.
	pollInterval = time.Second
	// minBackoff and maxBackoff bound the wait before retrying a failure.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 30 * time.Second
	// maxLine is the longest line VerifyLines and OpenFile accept (as
	// store.LastLine).
	maxLine = 1 << 20
)

// Log field names.
const (
	logError = "error"
	logPath  = "path"
	logSeq   = "seq"
	logBytes = "bytes"
)

// Source is where the streamer reads records from; *store.Store satisfies it.
type Source interface {
	// Audit returns up to limit records with Seq > after, in order.
	Audit(after uint64, limit int) ([]store.AuditRecord, error)
}

// Streamer copies the audit trail from a Source to a writer as JSON lines:
// each line is exactly json.Marshal of one store.AuditRecord, in Seq order.
type Streamer struct {
	src  Source
	w    io.Writer
	file *os.File // set by OpenFile: synced after each batch, closed by Close
	log  *slog.Logger
	kick chan struct{}

	// Run's alone: the records read and encoded but not yet all written,
	// how much of them was written, and the Seq of the last of them.
	buf  []byte
	off  int
	read uint64

	written atomic.Uint64
}

// NewStreamer streams records with Seq > after to w as JSON lines. A nil log
// discards. If a write fails part way, the rest of the batch is written on
// the retry, from where the failed write stopped.
func NewStreamer(src Source, w io.Writer, after uint64, log *slog.Logger) *Streamer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Streamer{src: src, w: w, log: log, kick: make(chan struct{}, 1), read: after}
	s.written.Store(after)
	return s
}

// OpenFile opens the JSON-lines file at path (creating it, mode 0600, and
// only ever appending to it) and returns a streamer that resumes after the
// last complete record in it, so a restart neither loses nor duplicates
// records. A torn last line, left by a crash mid-write, is cut off first. If
// the file holds records the store does not (the store was restored from an
// older backup, say), it still resumes after the file's last record: it never
// rewrites the file. Close the streamer, after Run has returned, to close
// the file.
func OpenFile(src Source, path string, log *slog.Logger) (*Streamer, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	last, err := resume(f, log)
	if err != nil {
		f.Close()
		return nil, err
	}
	if last.Seq > 0 {
		// A store and a copy that disagree about the same record will not
		// verify across the point where the copy continues.
		if recs, err := src.Audit(last.Seq-1, 1); err == nil && len(recs) == 1 && recs[0].Seq == last.Seq && recs[0].Hash != last.Hash {
			log.Error("the audit file and the store hold different records under the same number; the file will not verify past it",
				slog.String(logPath, path), slog.Uint64(logSeq, last.Seq))
		}
	}
	s := NewStreamer(src, f, last.Seq, log)
	s.file = f
	return s, nil
}

// resume cuts off a torn last line of f and returns the last complete
// record (the zero record if there is none).
func resume(f *os.File, log *slog.Logger) (store.AuditRecord, error) {
	fi, err := f.Stat()
	if err != nil {
		return store.AuditRecord{}, fmt.Errorf("audit: %w", err)
	}
	keep, line, err := store.LastLine(f, fi.Size())
	if err != nil {
		return store.AuditRecord{}, fmt.Errorf("audit: %w", err)
	}
	if keep < fi.Size() {
		if err := f.Truncate(keep); err != nil {
			return store.AuditRecord{}, fmt.Errorf("audit: cut off the torn last line: %w", err)
		}
		if err := f.Sync(); err != nil {
			return store.AuditRecord{}, fmt.Errorf("audit: %w", err)
		}
		log.Warn("cut off the torn last line of the audit file", slog.String(logPath, f.Name()), slog.Int64(logBytes, fi.Size()-keep))
	}
	var last store.AuditRecord
	if line == nil {
		return last, nil
	}
	if err := json.Unmarshal(line, &last); err != nil || last.Seq == 0 {
		return last, fmt.Errorf("audit: %s: the last line is not an audit record", f.Name())
	}
	return last, nil
}

// Notify tells Run that there are new records. It never blocks.
func (s *Streamer) Notify() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Written returns the Seq of the last record written (and, for a file,
// synced). It is safe for concurrent use.
func (s *Streamer) Written() uint64 { return s.written.Load() }

// Run streams until ctx is done: whenever notified, and every second
// regardless, it writes every record after the last one written, in batches
// of up to 1000; a file is synced after each batch. A failure is logged
// (never a record's contents) and retried with jittered backoff. When ctx is
// done, Run writes what is left once more, then returns. Run must not be
// called twice at once.
func (s *Streamer) Run(ctx context.Context) {
	backoff := minBackoff
	for {
		wait, kick := pollInterval, s.kick
		if err := s.drain(); err != nil {
			s.log.Error("streaming the audit trail failed; retrying", slog.String(logError, err.Error()),
				slog.Uint64(logSeq, s.Written()))
			// While failing, keep to the backoff however often notified.
			wait, kick = backoff/2+rand.N(backoff), nil
			backoff = min(2*backoff, maxBackoff)
		} else {
			backoff = minBackoff
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if err := s.drain(); err != nil {
				s.log.Error("streaming the audit trail failed at shutdown", slog.String(logError, err.Error()),
					slog.Uint64(logSeq, s.Written()))
			}
			return
		case <-kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// drain writes every record the source has after the last one written.
func (s *Streamer) drain() error {
	for {
		if s.off == len(s.buf) {
			recs, err := s.src.Audit(s.read, batchSize)
			if err != nil {
				return fmt.Errorf("audit: read the records after %d: %w", s.read, err)
			}
			if len(recs) == 0 {
				return nil
			}
			s.buf, s.off = s.buf[:0], 0
			for _, r := range recs {
				line, _ := json.Marshal(r) // a struct of strings, times and a string map always encodes
				s.buf = append(append(s.buf, line...), '\n')
			}
			s.read = recs[len(recs)-1].Seq
		}
		n, err := s.w.Write(s.buf[s.off:])
		s.off += n
		if err == nil && s.off < len(s.buf) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return fmt.Errorf("audit: write the records up to %d: %w", s.read, err)
		}
		if s.file != nil {
			if err := s.file.Sync(); err != nil {
				return fmt.Errorf("audit: %w", err)
			}
		}
		s.written.Store(s.read)
	}
}

// Close closes the file of a streamer made by OpenFile; for one made by
// NewStreamer it does nothing. Call it after Run has returned.
func (s *Streamer) Close() error {
	if s.file == nil {
		return nil
	}
	if err := s.file.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}
