package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
)

// admin backup writes a store file that opens, verifies and holds the
// registered agents; it never replaces a file unless told to, and only
// admins may take one.
func TestAdminBackup(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agents := []string{f.ID(t, "backup-a").String(), f.ID(t, "backup-b").String()}
	for _, id := range agents {
		if out, code := run(t, b, f.Admin, "agent", "register", id, "--owner", "o@example.org", "--purpose", "backup test", "--role", "reports-read"); code != 0 {
			t.Fatalf("register: exit %d\n%s", code, out)
		}
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "atf-backup.db")

	out, code := run(t, b, f.Admin, "admin", "backup", file)
	m := regexp.MustCompile(`Size:\s+(\d+) bytes \([\d.]+ MiB\)\nAudit head:\s+record (\d+)\n`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("admin backup: exit %d\n%s", code, out)
	}
	fi, err := os.Stat(file)
	if err != nil || strconv.FormatInt(fi.Size(), 10) != m[1] || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the backup file: %v, %v; want %s bytes, mode 0600", fi, err, m[1])
	}
	if _, err := os.Stat(file + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("%s.tmp is left behind: %v", file, err)
	}
	original, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	// Opening the backup writes to it: open a copy, and keep the file for
	// the cases below.
	opened := filepath.Join(t.TempDir(), "atf.db")
	if err := os.WriteFile(opened, original, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(opened, store.Options{})
	if err != nil {
		t.Fatalf("opening the backup: %v", err)
	}
	n, err := s.VerifyAudit()
	if err != nil || strconv.FormatUint(n, 10) != m[2] {
		t.Errorf("the backup's audit trail: %d records, %v; atfctl printed head %s", n, err, m[2])
	}
	for _, id := range agents {
		if _, err := s.GetAgent(id); err != nil {
			t.Errorf("the backup lacks %s: %v", id, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name    string
		setup   func(t *testing.T)
		args    []string
		code    int
		want    string
		changed bool // whether file is replaced
	}{
		{"exists", nil, []string{"admin", "backup", file}, 6, "exists; pass --force", false},
		{"interrupted before", func(t *testing.T) { writeFile(t, dir, filepath.Base(file)+".tmp", "half a backup") },
			[]string{"admin", "backup", file, "--force"}, 0, "Backup:", true},
		{"another writing", func(t *testing.T) { writeFile(t, dir, "other.db.tmp", "half a backup") },
			[]string{"admin", "backup", filepath.Join(dir, "other.db")}, 6, "other.db.tmp exists", false},
		{"json", nil, []string{"admin", "backup", file, "--force", "-o", "json"}, 0, `"audit_head_seq"`, true},
		{"no file name", nil, []string{"admin", "backup"}, 2, "takes 1 argument", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup(t)
			}
			if err := os.WriteFile(file, []byte("keep me"), 0o644); err != nil {
				t.Fatal(err)
			}
			out, code := run(t, b, f.Admin, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, want %d with %q; output:\n%s", code, tt.code, tt.want, out)
			}
			got, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if replaced := !bytes.Equal(got, []byte("keep me")); replaced != tt.changed {
				t.Errorf("%s replaced: %v, want %v", file, replaced, tt.changed)
			}
			if tt.name == "json" {
				var r struct {
					Size string `json:"size"`
				}
				if err := json.Unmarshal([]byte(out), &r); err != nil || r.Size != strconv.Itoa(len(got)) {
					t.Errorf("-o json: size %q, %v; the file has %d bytes\n%s", r.Size, err, len(got), out)
				}
			}
		})
	}

	// Not an admin: exit 3, and no file made.
	refused := filepath.Join(dir, "refused.db")
	out, code = run(t, b, f.ID(t, "backup-a"), "admin", "backup", refused)
	if code != 3 || !strings.Contains(out, "not a broker admin") {
		t.Fatalf("admin backup as an agent: exit %d, want 3\n%s", code, out)
	}
	for _, p := range []string{refused, refused + ".tmp"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("a refused backup left %s: %v", p, err)
		}
	}
}
