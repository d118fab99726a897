package adminapi

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"google.golang.org/grpc"

	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// backupChunk is the size of a Backup message's chunk: well under gRPC's
// 4 MiB message limit, large enough that framing costs nothing.
const backupChunk = 256 << 10

// Log field names of Backup.
const (
	logSize      = "size"
	logSent      = "sent"
	logAuditHead = "audit_head_seq"
)

// errBackupAbandoned ends the copy when the stream stops taking it.
var errBackupAbandoned = errors.New("broker: the backup stream ended")

func (s *Service) Backup(_ *adminv1.BackupRequest, stream grpc.ServerStreamingServer[adminv1.BackupResponse]) error {
	ctx := stream.Context()
	// The copy is written into a pipe by the store's read transaction, on
	// its own goroutine, and read from it here in chunks.
	pr, pw := io.Pipe()
	started := make(chan store.BackupInfo, 1)
	copied := make(chan error, 1)
	go func() {
		_, err := s.cfg.Store.BackupTo(func(info store.BackupInfo) (io.Writer, error) {
			started <- info
			return pw, nil
		})
		pw.CloseWithError(err) // nil: the reader sees EOF
		copied <- err
	}()

	var info store.BackupInfo
	select {
	case info = <-started:
	case err := <-copied:
		return fmt.Errorf("back up the store: %w", err)
	}
	sent, sendErr := sendBackup(stream, pr, info)
	// If sending stopped early, this fails the copy's next write, which
	// ends its transaction; wait for that before returning.
	pr.CloseWithError(errBackupAbandoned)
	copyErr := <-copied

	complete := sendErr == nil && copyErr == nil
	if err := s.db(ctx).AppendAudit(store.AuditRecord{Kind: "store_backup", Actor: edge.Caller(ctx), Subject: "store", Detail: map[string]string{
		"size":           strconv.FormatInt(info.Size, 10),
		"sent":           strconv.FormatInt(sent, 10),
		"audit_head_seq": strconv.FormatUint(info.AuditHead, 10),
		"complete":       strconv.FormatBool(complete),
	}}); err != nil {
		edge.Logger(ctx).Error("writing the backup audit record failed", slog.String(edge.LogError, err.Error()))
	}
	log := edge.Logger(ctx).With(slog.Int64(logSize, info.Size), slog.Int64(logSent, sent), slog.Uint64(logAuditHead, info.AuditHead))
	switch {
	case sendErr != nil:
		// The stream broke or the caller went away: nothing to tell it.
		log.Warn("store backup abandoned", slog.String(edge.LogError, sendErr.Error()))
		return sendErr
	case copyErr != nil:
		return fmt.Errorf("back up the store: %w", copyErr)
	}
	log.Info("store backed up")
	return nil
}

// sendBackup streams what r holds as Backup messages, the first carrying
// info, and returns the number of bytes sent and the stream's error. It
// stops at r's end or error, which is the copy's to report.
func sendBackup(stream grpc.ServerStreamingServer[adminv1.BackupResponse], r io.Reader, info store.BackupInfo) (int64, error) {
	buf := make([]byte, backupChunk)
	var sent int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			msg := &adminv1.BackupResponse{Chunk: buf[:n]}
			if sent == 0 {
				msg.Size, msg.AuditHeadSeq = info.Size, info.AuditHead
			}
			// Send has marshalled the message when it returns: buf is
			// free for the next chunk.
			if err := stream.Send(msg); err != nil {
				return sent, err
			}
			sent += int64(n)
		}
		if err != nil {
			return sent, nil
		}
	}
}
