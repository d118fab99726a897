package audit_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/store"
)

// streamedLines streams ten records of a real store to a file and returns
// its lines, with their newlines.
func streamedLines(t *testing.T) [][]byte {
	t.Helper()
	st := openStore(t)
	appendRecords(t, st, 10)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openFile(t, st, path, nil)
	run(t, s)()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(b, []byte("\n"))
	if len(lines) != 11 || len(lines[10]) != 0 {
		t.Fatalf("the file has %d lines, want 10", len(lines)-1)
	}
	return lines[:10]
}

// edit changes the purpose in a line's record; rehash fixes its Hash too.
func edit(t *testing.T, line []byte, rehash bool) []byte {
	t.Helper()
	var r store.AuditRecord
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatal(err)
	}
	r.Detail = map[string]string{"purpose": "something else"}
	if rehash {
		r.Hash = r.ComputeHash()
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestVerifyLines(t *testing.T) {
	lines := streamedLines(t)
	join := func(ls ...[]byte) []byte { return bytes.Join(ls, nil) }
	tests := []struct {
		name   string
		change func() []byte
		n      uint64
		last   uint64
		err    string
	}{
		{"whole", func() []byte { return join(lines...) }, 10, 10, ""},
		{"from the middle", func() []byte { return join(lines[4:]...) }, 6, 10, ""},
		// The chain cannot show this; comparing last with the store's head can.
		{"tail cut off", func() []byte { return join(lines[:8]...) }, 8, 8, ""},
		{"empty", func() []byte { return nil }, 0, 0, ""},
		{"detail edited", func() []byte {
			return join(join(lines[:6]...), edit(t, lines[6], false), join(lines[7:]...))
		}, 6, 6, "audit: line 7 (record 7) was altered"},
		{"detail edited and rehashed", func() []byte {
			return join(join(lines[:6]...), edit(t, lines[6], true), join(lines[7:]...))
		}, 7, 7, "audit: line 8 (record 8) does not follow record 7 (a record was removed or inserted)"},
		{"line removed", func() []byte {
			return join(join(lines[:4]...), join(lines[5:]...))
		}, 4, 4, "audit: line 5 (record 6) does not follow record 4 (a record was removed or inserted)"},
		{"lines swapped", func() []byte {
			return join(join(lines[:2]...), lines[3], lines[2], join(lines[4:]...))
		}, 2, 2, "audit: line 3 (record 4) does not follow record 2 (a record was removed or inserted)"},
		{"line repeated", func() []byte {
			return join(join(lines[:5]...), lines[4], join(lines[5:]...))
		}, 5, 5, "audit: line 6 (record 5) does not follow record 5 (a record was removed or inserted)"},
		{"not JSON", func() []byte {
			return join(join(lines[:5]...), []byte("{oops\n"), join(lines[5:]...))
		}, 5, 5, "audit: line 6 (after record 5) is not valid JSON: invalid character 'o' looking for beginning of object key string"},
		{"first line not JSON", func() []byte { return join([]byte("\n"), join(lines...)) },
			0, 0, "audit: line 1 is not valid JSON: unexpected end of JSON input"},
		{"line too long", func() []byte {
			return join(join(lines...), []byte(strings.Repeat("x", 1<<20)+"\n"))
		}, 10, 10, "audit: line 11: bufio.Scanner: token too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, last, err := audit.VerifyLines(bytes.NewReader(tt.change()))
			if got := errString(err); got != tt.err {
				t.Errorf("VerifyLines error = %q, want %q", got, tt.err)
			}
			if n != tt.n || last.Seq != tt.last {
				t.Errorf("VerifyLines = %d records up to %d, want %d up to %d", n, last.Seq, tt.n, tt.last)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
