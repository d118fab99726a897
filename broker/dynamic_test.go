package broker_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/agentictrust/atf/broker"
	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// dropDeadline bounds the wait for Vault to drop a database user: it
// revokes the leases of a revoked token in the background.
const dropDeadline = 30 * time.Second

// A role with a dynamic secret: the agent gets a PostgreSQL user with its
// token, through the Go client, and logs in with it. Revoking the agent's
// lineage, or killing the agent, drops the user: logging in fails. The
// secret is in no log line, audit record (store or sink) or store file.
func TestDynamicSecretDiesWithLineage(t *testing.T) {
	f := brokertest.Setup(t)
	dir := t.TempDir()
	cfg, pg := f.DatabaseConfig(t, dir)
	cfg.Audit.File = filepath.Join(dir, "audit.jsonl")
	var logs syncBuffer
	b := f.StartWith(t, cfg, broker.WithLogger(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	admin := b.Dial(t, f.Admin)

	revoked, killed := f.ID(t, "revoked"), f.ID(t, "killed")
	var secrets []string
	for _, tc := range []struct {
		agent spiffeid.ID
		end   func(t *testing.T)
	}{
		{revoked, func(t *testing.T) {
			if _, err := admin.Admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{
				Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: revoked.String()}, Reason: "test"}); err != nil {
				t.Fatal(err)
			}
		}},
		{killed, func(t *testing.T) {
			if _, err := admin.Response.Kill(t.Context(), &adminv1.KillRequest{
				Target: &adminv1.KillRequest_AgentId{AgentId: killed.String()}, Reason: "test"}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		b.Register(t, tc.agent, brokerv1.Level_LEVEL_INTERN, "orders-db")
		before := time.Now()
		c := fetchWithClient(t, b, tc.agent, "orders-db")
		user, password := c.GetSecret()["username"], c.GetSecret()["password"]
		secrets = append(secrets, user, password)
		if user == "" || password == "" || !strings.HasPrefix(c.GetLeaseId(), dev.DatabaseCredsPath+"/") {
			t.Fatalf("credential without a database user or its lease: secret fields %d, lease %q", len(c.GetSecret()), c.GetLeaseId())
		}
		if end := c.GetLeaseExpiresAt().AsTime(); end.After(c.GetExpiresAt().AsTime()) || end.Before(before) {
			t.Errorf("lease ends %s, credential %s: want the lease to end first", end, c.GetExpiresAt().AsTime())
		}
		if err := pg.Login(t.Context(), user, password); err != nil {
			t.Fatalf("the issued user cannot log in: %v", err)
		}
		tc.end(t)
		waitLoginRefused(t, pg, user, password)
		if !f.Dead(t, c.GetToken()) {
			t.Error("the credential's token is still live in Vault")
		}
		if _, err := f.Stack.VaultClient().Logical().WriteWithContext(t.Context(), "sys/leases/lookup", map[string]any{"lease_id": c.GetLeaseId()}); err == nil {
			t.Error("Vault still knows the lease")
		}
	}

	// The lease id is recorded (it names the lease, like an accessor);
	// the secret is nowhere.
	issued, err := admin.Admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "credential_issued", Agent: revoked.String(), PageSize: 10})
	if err != nil || len(issued.GetRecords()) != 1 || !strings.HasPrefix(issued.GetRecords()[0].GetDetail()["lease_id"], dev.DatabaseCredsPath+"/") {
		t.Fatalf("credential_issued records: %v, %v; want one with the lease id", issued.GetRecords(), err)
	}
	all, err := admin.Admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	auditJSON, err := protojson.Marshal(all)
	if err != nil {
		t.Fatal(err)
	}
	b.Stop()
	storeFile, err := os.ReadFile(cfg.StorePath)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := os.ReadFile(cfg.Audit.File)
	if err != nil {
		t.Fatal(err)
	}
	for where, text := range map[string][]byte{"audit trail": auditJSON, "audit sink": sink, "store file": storeFile, "log": logs.Bytes()} {
		if len(text) == 0 {
			t.Errorf("%s is empty: nothing to check", where)
		}
		for _, s := range secrets {
			if bytes.Contains(text, []byte(s)) {
				t.Errorf("the %s holds a secret of a dynamic credential", where)
			}
		}
	}
}

// fetchWithClient fetches a credential for role as agent through the Go
// client's Agent, as an agent program would.
func fetchWithClient(t *testing.T, b *brokertest.Broker, agent spiffeid.ID, role string) *brokerv1.Credential {
	t.Helper()
	svid := b.F.SVID(t, agent)
	a, err := client.New(t.Context(), client.Config{Addr: b.Addr, BrokerID: b.F.Stack.BrokerID.String(),
		SVIDFile: svid.CertPath, SVIDKeyFile: svid.KeyPath, BundleFile: svid.BundlePath})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	c, err := a.Credential(t.Context(), role)
	if err != nil {
		t.Fatalf("credential for %s: %v", role, err)
	}
	return c
}

// waitLoginRefused waits until PostgreSQL refuses user: Vault drops it
// once it has revoked the lease, in the background.
func waitLoginRefused(t *testing.T, pg *dev.Postgres, user, password string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), dropDeadline)
	defer cancel()
	for {
		err := pg.Login(ctx, user, password)
		if err != nil && strings.Contains(err.Error(), "password authentication failed") {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the database user can still log in %s after the revocation (last attempt: %v)", dropDeadline, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// A dynamic secret Vault refuses to give (the role's policy does not allow
// its path) or cannot give (the database is down): the caller is told so,
// with the role and path, nothing is recorded as issued, and the token made
// for the read is revoked.
func TestDynamicSecretFailureUndoesIssuance(t *testing.T) {
	s := devtest.Start(t) // the database is stopped below: a stack of its own
	f := brokertest.SetupStack(t, s, 0)
	cfg, _ := f.DatabaseConfig(t, t.TempDir())
	b := f.Start(t, cfg)
	agent := f.ID(t, "reader")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "orders-db", "orders-db-unallowed")
	conn := b.Dial(t, agent)

	for _, tc := range []struct {
		name, role string
		before     func(t *testing.T)
		code       codes.Code
		says       string
	}{
		{"refused", "orders-db-unallowed", func(*testing.T) {}, codes.FailedPrecondition,
			"Vault refused the dynamic secret of role orders-db-unallowed (" + dev.DatabaseCredsPath + "); nothing was issued"},
		{"database down", "orders-db", func(t *testing.T) {
			if err := s.Stop("postgres"); err != nil {
				t.Fatal(err)
			}
		}, codes.Unavailable, "Vault could not give the dynamic secret of role orders-db (" + dev.DatabaseCredsPath + "); nothing was issued"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.before(t)
			_, err := conn.Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: tc.role})
			brokertest.WantCode(t, err, tc.code, tc.says)
			// The read's token is gone from Vault: it was a service token of
			// the agent's, and none is live.
			live, err := s.LiveCredentials(t.Context(), agent.String())
			if err != nil || len(live) != 0 {
				t.Fatalf("live service tokens of the agent in Vault: %v, %v; want none", live, err)
			}
			failed, err := b.Dial(t, f.Admin).Admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "credential_failed", Agent: agent.String(), Role: tc.role, PageSize: 10})
			if err != nil || len(failed.GetRecords()) != 1 || !strings.HasPrefix(failed.GetRecords()[0].GetDetail()["reason"], "dynamic_secret_") {
				t.Fatalf("credential_failed records: %v, %v; want one with a dynamic_secret_ reason", failed.GetRecords(), err)
			}
		})
	}
	b.Stop()
	st, err := store.Open(cfg.StorePath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if creds, err := st.Credentials(agent.String()); err != nil || len(creds) != 0 {
		t.Fatalf("recorded credentials %v, %v; want none", creds, err)
	}
}

// syncBuffer is a bytes.Buffer for a logger shared by goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes is a copy of what was written.
func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}
