package main

import (
	"crypto/rand"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// writeConfig writes cfg as atfd's YAML configuration in dir.
func writeConfig(t *testing.T, dir string, cfg config.Config) string {
	t.Helper()
	raw, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, "atfd.yaml", string(raw))
}

// admin migrate moves a stopped broker's bbolt store into etcd. While the
// broker runs its lock refuses the copy; a dry run writes nothing; the
// copy is compared and verified; a second one into the same prefix is
// refused. A broker started on the copy enforces what the file held: its
// agents fetch, a revoked grant stays revoked, a deregistered agent stays
// out, the credential issued before the move stays live (the broker had
// stopped cleanly), and the audit trail verifies whole.
func TestAdminMigrate(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	b := f.Start(t, cfg)
	giver, taker, gone := f.ID(t, "mig-giver"), f.ID(t, "mig-taker"), f.ID(t, "mig-gone")
	b.Register(t, giver, brokerv1.Level_LEVEL_SENIOR, "reports-read")
	b.Register(t, taker, brokerv1.Level_LEVEL_INTERN, "reports-read")
	b.Register(t, gone, brokerv1.Level_LEVEL_INTERN, "reports-read")
	own, err := b.Dial(t, giver).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
	if err != nil {
		t.Fatal(err)
	}
	delegate := func() string {
		g, err := b.Dial(t, giver).Broker.Delegate(t.Context(), &brokerv1.DelegateRequest{Delegatee: taker.String(), Roles: []string{"reports-read"}, Ttl: durationpb.New(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		return g.GetGrant().GetId()
	}
	kept, revoked := delegate(), delegate()
	admin := b.Dial(t, f.Admin).Admin
	if _, err := admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{Root: &adminv1.RevokeLineageRequest_GrantId{GrantId: revoked}, Reason: "migration test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.DeregisterAgent(t.Context(), &adminv1.DeregisterAgentRequest{SpiffeId: gone.String(), Reason: "migration test"}); err != nil {
		t.Fatal(err)
	}

	etcdCfg := f.EtcdConfig(t, t.TempDir(), "/migrate-"+rand.Text()+"/", "a")
	to := writeConfig(t, t.TempDir(), etcdCfg)
	migrate := []string{"admin", "migrate", "--from-bbolt", cfg.StorePath, "--to-etcd-config", to}
	if out, code := run(t, b, f.Admin, migrate...); code != 6 || !strings.Contains(out, "is another atfd running on it?): stop it first") {
		t.Fatalf("migrate while the broker runs: exit %d, want 6\n%s", code, out)
	}
	b.Stop()
	migrateRefusals(t, b, cfg, etcdCfg)

	out, code := run(t, b, f.Admin, append(migrate, "--dry-run", "-o", "json")...)
	var dry struct {
		Buckets []struct {
			Name string `json:"name"`
			Keys int    `json:"keys"`
		} `json:"buckets"`
		AuditRecords uint64 `json:"audit_records"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &dry) != nil || len(dry.Buckets) == 0 || dry.AuditRecords == 0 {
		t.Fatalf("migrate --dry-run -o json: exit %d\n%s", code, out)
	}
	if n := etcdKeys(t, f, etcdCfg.Store.Etcd.Prefix); n != 0 {
		t.Fatalf("a dry run wrote %d keys", n)
	}
	out, code = run(t, b, f.Admin, migrate...)
	if code != 0 || !regexp.MustCompile(`(?m)^agents\s+3\s+0$`).MatchString(out) ||
		!regexp.MustCompile(`Audit trail:\s+`+strconv.FormatUint(dry.AuditRecords, 10)+` records`).MatchString(out) || !strings.Contains(out, "identical") {
		t.Fatalf("migrate: exit %d\n%s", code, out)
	}
	if out, code := run(t, b, f.Admin, migrate...); code != 6 || !strings.Contains(out, "already") {
		t.Fatalf("a second migrate into the prefix: exit %d, want 6\n%s", code, out)
	}

	e := f.Start(t, etcdCfg)
	migratedEnforced(t, e, own, kept, revoked, dry.AuditRecords)
}

// migrateRefusals are the mistakes admin migrate refuses before it reads
// anything: a flag left out, a destination configuration not on etcd.
func migrateRefusals(t *testing.T, b *brokertest.Broker, bolt, onEtcd config.Config) {
	t.Helper()
	notEtcd := writeConfig(t, t.TempDir(), bolt)
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no destination", []string{"--from-bbolt", bolt.StorePath}, 2, "--from-bbolt and --to-etcd-config are required"},
		{"not on etcd", []string{"--from-bbolt", bolt.StorePath, "--to-etcd-config", notEtcd}, 6, "has no store.etcd"},
		{"no such config", []string{"--from-bbolt", bolt.StorePath, "--to-etcd-config", filepath.Join(t.TempDir(), "none.yaml")}, 6, "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(t, b, b.F.Admin, append([]string{"admin", "migrate"}, tt.args...)...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, want %d with %q\n%s", code, tt.code, tt.want, out)
			}
		})
	}
}

// migratedEnforced checks the broker e on the migrated store: what the
// file held is in force, and the trail verifies whole.
func migratedEnforced(t *testing.T, e *brokertest.Broker, own *brokerv1.FetchCredentialResponse, kept, revoked string, records uint64) {
	t.Helper()
	f := e.F
	giver, taker, gone := f.ID(t, "mig-giver"), f.ID(t, "mig-taker"), f.ID(t, "mig-gone")
	fetch := func(id spiffeid.ID, grant string) error {
		_, err := e.Dial(t, id).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read", GrantId: grant})
		return err
	}
	if err := fetch(giver, ""); err != nil {
		t.Errorf("a migrated agent's fetch: %v", err)
	}
	if err := fetch(taker, kept); err != nil {
		t.Errorf("a fetch under a migrated grant: %v", err)
	}
	if err := fetch(taker, revoked); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a fetch under a grant revoked before the move = %v, want PermissionDenied", err)
	}
	if err := fetch(gone, ""); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a fetch by an agent deregistered before the move = %v, want PermissionDenied", err)
	}
	if _, err := f.Lookup(t, own.GetCredential().GetToken()); err != nil {
		t.Errorf("the credential issued before the move (a clean stop) is not live in Vault: %v", err)
	}
	out, code := run(t, e, f.Admin, "audit", "verify")
	m := regexp.MustCompile(`Records:\s+(\d+)\n`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("audit verify on the migrated store: exit %d\n%s", code, out)
	}
	if n, _ := strconv.ParseUint(m[1], 10, 64); n <= records {
		t.Errorf("audit verify on etcd: %d records, want more than the %d migrated (the fetches since)", n, records)
	}
}

// etcdKeys counts the keys under prefix in the fixture's etcd cluster.
func etcdKeys(t *testing.T, f *brokertest.Fixture, prefix string) int64 {
	t.Helper()
	cli, err := f.Etcd(t).Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(t.Context(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}
