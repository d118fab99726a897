package broker_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"

	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// backupRecords returns the store_backup audit records.
func backupRecords(t *testing.T, admin adminv1.AdminServiceClient) []*adminv1.AuditRecord {
	t.Helper()
	r, err := admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "store_backup"})
	if err != nil {
		t.Fatalf("QueryAudit: %v", err)
	}
	return r.GetRecords()
}

// An admin's backup is a store file that opens, whose audit trail verifies
// up to the head the first message announced, and that holds the agents;
// it is audited. Others may not take one.
func TestBackup(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	ids := []spiffeid.ID{f.ID(t, "backup-a"), f.ID(t, "backup-b")}
	for _, id := range ids {
		b.Register(t, id, brokerv1.Level_LEVEL_INTERN, "reports-read")
	}
	admin := b.Dial(t, f.Admin).Admin

	stream, err := admin.Backup(t.Context(), &adminv1.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "backup.db")
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	var first *adminv1.BackupResponse
	var n, messages int64
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if first == nil {
			first = r
		} else if r.GetSize() != 0 || r.GetAuditHeadSeq() != 0 {
			t.Errorf("message %d carries size %d and head %d; only the first should", messages, r.GetSize(), r.GetAuditHeadSeq())
		}
		if len(r.GetChunk()) > 256<<10 {
			t.Errorf("a chunk of %d bytes, want at most 256 KiB", len(r.GetChunk()))
		}
		if _, err := out.Write(r.GetChunk()); err != nil {
			t.Fatal(err)
		}
		n += int64(len(r.GetChunk()))
		messages++
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if first == nil || n != first.GetSize() || first.GetAuditHeadSeq() == 0 {
		t.Fatalf("received %d bytes in %d messages; the first announced %d bytes and audit head %d", n, messages, first.GetSize(), first.GetAuditHeadSeq())
	}

	s, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatalf("opening the backup: %v", err)
	}
	defer s.Close()
	if records, err := s.VerifyAudit(); err != nil || records != first.GetAuditHeadSeq() {
		t.Errorf("the backup's audit trail: %d records, %v; want %d verified", records, err, first.GetAuditHeadSeq())
	}
	for _, id := range ids {
		if _, err := s.GetAgent(id.String()); err != nil {
			t.Errorf("the backup lacks %s: %v", id, err)
		}
	}

	recs := backupRecords(t, admin)
	if len(recs) != 1 {
		t.Fatalf("%d store_backup audit records, want 1", len(recs))
	}
	d := recs[0].GetDetail()
	if recs[0].GetActor() != f.Admin.String() || d["size"] != strconv.FormatInt(n, 10) || d["sent"] != d["size"] ||
		d["complete"] != "true" || d["audit_head_seq"] != strconv.FormatUint(first.GetAuditHeadSeq(), 10) {
		t.Errorf("audit record: actor %s, detail %v", recs[0].GetActor(), d)
	}

	// A refused stream fails at its first Recv.
	agent := b.Dial(t, ids[0]).Admin
	stream, err = agent.Backup(t.Context(), &adminv1.BackupRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	brokertest.WantCode(t, err, codes.PermissionDenied, "not a broker admin")
}

// A caller that goes away mid-backup ends the copy and its read
// transaction: the broker keeps taking writes, stops promptly, and the
// audit trail says the backup was not complete.
func TestBackupCancelled(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	// 64 MiB of ballast: more than gRPC's flow-control windows and the
	// socket buffers hold, so the stream is mid-way when the caller leaves.
	db, err := bolt.Open(cfg.StorePath, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		ballast, err := tx.CreateBucket([]byte("test_ballast"))
		if err != nil {
			return err
		}
		for i := range 64 {
			if err := ballast.Put([]byte{byte(i)}, make([]byte, 1<<20)); err != nil {
				return err
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
	b := f.Start(t, cfg)
	admin := b.Dial(t, f.Admin).Admin

	ctx, cancel := context.WithCancel(t.Context())
	stream, err := admin.Backup(ctx, &adminv1.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	cancel()

	var rec *adminv1.AuditRecord
	devtest.WaitFor(t, 10*time.Second, "the abandoned backup's audit record", func() bool {
		if recs := backupRecords(t, admin); len(recs) > 0 {
			rec = recs[0]
		}
		return rec != nil
	})
	d := rec.GetDetail()
	sent, _ := strconv.ParseInt(d["sent"], 10, 64)
	if d["complete"] != "false" || d["size"] != strconv.FormatInt(first.GetSize(), 10) || sent >= first.GetSize() {
		t.Errorf("audit record detail %v; want an incomplete backup of %d bytes", d, first.GetSize())
	}
	b.Register(t, f.ID(t, "after-backup"), brokerv1.Level_LEVEL_INTERN, "reports-read")
	stopped := make(chan struct{})
	go func() {
		b.Stop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the broker does not stop: the abandoned backup holds its transaction")
	}
}
