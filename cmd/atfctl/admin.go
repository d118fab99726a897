package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

func newAdmin(g *globals) *cobra.Command {
	admin := &cobra.Command{Use: "admin", Short: "Look after the broker itself: its backup (admins), its move to etcd (offline)"}
	admin.AddCommand(adminBackup(g), adminMigrate(g))
	return admin
}

func adminBackup(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "backup FILE [--force]",
		Short: "Copy the broker's store to FILE while it serves",
		Long: `The copy is consistent: atfd takes it in one read transaction and keeps serving
meanwhile. It is written to FILE.tmp (mode 0600), synced to disk and renamed to
FILE, so FILE is either the whole copy or absent.

To restore it: stop atfd, put the file at atfd's store_path, start atfd.`,
		Example: "  atfctl admin backup /var/backups/atf/atf-$(date +%F).db\n  atfctl admin backup atf.db --force",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[0]
			if _, err := os.Lstat(file); err == nil && !force {
				return exitError{code: 6, msg: fmt.Sprintf("%s exists; pass --force to replace it", file)}
			}
			c, err := g.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			stream, err := c.Admin.Backup(cmd.Context(), &adminv1.BackupRequest{})
			if err != nil {
				return err
			}
			// A refused stream fails at its first Recv, before any file
			// is made.
			first, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				err = errors.New("the broker ended the backup before sending anything")
			}
			if err != nil {
				return err
			}
			n, err := receiveBackup(file, force, first, stream, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), &adminv1.BackupResponse{Size: n, AuditHeadSeq: first.GetAuditHeadSeq()}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "Backup:\t%s\n", file)
				fmt.Fprintf(w, "Size:\t%d bytes (%s)\n", n, mib(n))
				fmt.Fprintf(w, "Audit head:\trecord %d\n", first.GetAuditHeadSeq())
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "replace FILE if it exists (and a FILE.tmp left by an interrupted backup)")
	return cmd
}

// progressStep is how much a backup grows between progress lines; smaller
// backups get none.
const progressStep = 64 << 20

// receiveBackup writes the backup stream, whose first message is first,
// to file through file.tmp, and returns its size.
func receiveBackup(file string, force bool, first *adminv1.BackupResponse, stream grpc.ServerStreamingClient[adminv1.BackupResponse], progress io.Writer) (_ int64, err error) {
	tmp := file + ".tmp"
	flag := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flag = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(tmp, flag, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return 0, exitError{code: 6, msg: fmt.Sprintf("%s exists: another backup is being written to it, or one was interrupted; remove it, or pass --force", tmp)}
	}
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// A FILE.tmp that --force reuses keeps its mode: the copy holds the
	// registry and credential accessors, for the owner's eyes only.
	if err := f.Chmod(0o600); err != nil {
		return 0, err
	}
	size := first.GetSize()
	var n int64
	for r := first; ; {
		w, err := f.Write(r.GetChunk())
		if err != nil {
			return 0, err
		}
		if size >= progressStep && (n+int64(w))/progressStep > n/progressStep {
			fmt.Fprintf(progress, "%s of %s\n", mib(n+int64(w)), mib(size))
		}
		n += int64(w)
		if r, err = stream.Recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return 0, err
		}
	}
	if n != size {
		return 0, fmt.Errorf("the broker sent %d bytes of the %d it announced", n, size)
	}
	return n, publish(f, file)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
