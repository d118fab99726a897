package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/etcdclient"
	"github.com/agentictrust/atf/broker/store"
)

func adminMigrate(g *globals) *cobra.Command {
	var from, auditDir, to string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "migrate --from-bbolt FILE --to-etcd-config ATFD.YAML [--audit-dir DIR] [--dry-run]",
		Short: "Copy a stopped atfd's bbolt store into etcd, for several replicas, and verify the copy",
		Long: `Offline: atfctl reads the store file and writes to etcd itself, and talks to no
atfd (the connection flags are not used). Stop atfd first: the file's lock refuses
the copy while an atfd holds it, and keeps one from starting on it meanwhile.

The destination is the store.etcd section of ATFD.YAML, the configuration the
replicas will run with (endpoints, ca_file, cert_file, key_file, prefix,
max_txn_ops, timeout). Its prefix must hold no key: a migration never merges
into an existing store.

Everything in the file is copied, with each bucket's sequence, and the audit
records atfd moved to segment files (--audit-dir, default FILE.audit, atfd's
audit.dir default) are put back into the trail, which stays whole in etcd. Then
every key, value and sequence of the copy is compared with the file, and the
copy's audit chain verified; until that passes, atfd refuses to open the copy.
If the file's last run did not stop cleanly, the first replica to start revokes
every live credential and anchor that atfd made, as atfd would have on restart.

--dry-run checks the file, its audit trail and the destination, and writes
nothing.`,
		Example: "  atfctl admin migrate --from-bbolt /var/lib/atf/atf.db --to-etcd-config /etc/atf/atfd-etcd.yaml --dry-run\n" +
			"  atfctl admin migrate --from-bbolt /var/lib/atf/atf.db --to-etcd-config /etc/atf/atfd-etcd.yaml",
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return usageError{errors.New("--from-bbolt and --to-etcd-config are required")}
			}
			if err := g.checkOutput(); err != nil {
				return err
			}
			cfg, err := etcdDestination(to)
			if err != nil {
				return err
			}
			e, lim := cfg.Store.Etcd, cfg.Limits
			cli, err := etcdclient.New(e)
			if err != nil {
				return err
			}
			defer cli.Close()
			rep, err := store.MigrateToEtcd(cmd.Context(), store.Migration{Path: from, AuditDir: auditDir, Client: cli, DryRun: dryRun,
				Etcd:      store.EtcdOptions{Prefix: e.Prefix, MaxTxnOps: e.MaxTxnOps, Timeout: e.Timeout},
				CountLive: store.LiveKinds{Agent: lim.MaxLivePerAgent >= 0, Lineage: lim.MaxLivePerLineage >= 0, Role: lim.MaxLivePerRole >= 0}})
			if err != nil {
				return migrateError(err)
			}
			return printMigration(cmd.OutOrStdout(), g, rep, from, e.Prefix, dryRun)
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from-bbolt", "", "the store file of the stopped atfd, its store_path (required)")
	f.StringVar(&auditDir, "audit-dir", "", "its audit.dir, where its audit segments are (default FILE.audit)")
	f.StringVar(&to, "to-etcd-config", "", "the atfd configuration with store.etcd that the replicas will run with (required)")
	f.BoolVar(&dryRun, "dry-run", false, "check the file, its audit trail and the destination; write nothing")
	return cmd
}

// etcdDestination is the store.etcd section of the atfd configuration at
// path, validated as atfd validates it.
func etcdDestination(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		return nil, exitError{code: 6, msg: err.Error()}
	}
	if cfg.Store.Etcd == nil {
		return nil, exitError{code: 6, msg: fmt.Sprintf("%s has no store.etcd: give the configuration the replicas will run with on etcd", path)}
	}
	return &cfg, nil
}

// migrateError gives a refusal a person can act on (a file an atfd holds,
// a damaged one, a destination that is not empty) exit code 6.
func migrateError(err error) error {
	var refusal *store.Refusal
	var damaged *store.DamagedError
	if errors.As(err, &refusal) || errors.As(err, &damaged) {
		return exitError{code: 6, msg: err.Error()}
	}
	return err
}

// printMigration prints what was copied, or would be.
func printMigration(out io.Writer, g *globals, rep store.MigrationReport, from, prefix string, dryRun bool) error {
	if g.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "BUCKET\tKEYS\tSEQUENCE")
	for _, b := range rep.Buckets {
		fmt.Fprintf(w, "%s\t%d\t%d\n", b.Name, b.Keys, b.Sequence)
	}
	fmt.Fprintf(w, "\nAudit trail:\t%d records (%d from segment files), verified; head %s\n", rep.AuditRecords, rep.FromSegments, rep.AuditHead)
	if rep.Crashed {
		fmt.Fprintln(w, "Last run:\tdid not stop cleanly: the first replica to start revokes every live credential and anchor it made")
	}
	if dryRun {
		fmt.Fprintf(w, "Dry run:\tnothing written; etcd holds nothing under %s\n", prefix)
	} else {
		fmt.Fprintf(w, "Migrated:\t%s into etcd under %s, %d keys, compared key by key with the file: identical\n", from, prefix, rep.Keys)
		fmt.Fprintf(w, "Live credentials:\t%d not yet expired, counted against limits.max_live_* on etcd\n", rep.LiveCounted)
	}
	return w.Flush()
}
