package audit

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"

	"github.com/agentictrust/atf/broker/store"
)

// VerifyLines checks a JSON-lines copy of the trail, such as a Streamer
// writes: that each record's Hash is its ComputeHash, and that each record
// follows the one before (its Prev is that one's Hash, its Seq the next).
// A copy may start anywhere: the first record's Prev is taken on trust.
// Lines may be up to 1 MiB long.
//
// It returns the number of records and the last of them, to compare with
// the live store's head: the chain cannot show a tail cut off. The first
// failure is an error naming the line and the record, like
// "audit: line 7 (record 42) was altered".
func VerifyLines(r io.Reader) (n uint64, last store.AuditRecord, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	line := 0
	for sc.Scan() {
		line++
		var rec store.AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			if n == 0 {
				return n, last, fmt.Errorf("audit: line %d is not valid JSON: %w", line, err)
			}
			return n, last, fmt.Errorf("audit: line %d (after record %d) is not valid JSON: %w", line, last.Seq, err)
		}
		if rec.Hash != rec.ComputeHash() {
			return n, last, fmt.Errorf("audit: line %d (record %d) was altered", line, rec.Seq)
		}
		if n > 0 && (rec.Seq != last.Seq+1 || rec.Prev != last.Hash) {
			return n, last, fmt.Errorf("audit: line %d (record %d) does not follow record %d (a record was removed or inserted)",
				line, rec.Seq, last.Seq)
		}
		n, last = n+1, rec
	}
	if err := sc.Err(); err != nil {
		return n, last, fmt.Errorf("audit: line %d: %w", line+1, err)
	}
	return n, last, nil
}
