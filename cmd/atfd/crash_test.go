package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/broker/failpoint"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// buildFailpointAtfd builds atfd with the failpoints tag (once per test
// binary) and registers it with SPIRE as the broker's workload.
func buildFailpointAtfd(t *testing.T, s *dev.Stack) string {
	t.Helper()
	fpOnce.Do(func() {
		dir, err := os.MkdirTemp("", "atf-failpoints-")
		if err != nil {
			fpErr = err
			return
		}
		fpBin = filepath.Join(dir, "atfd")
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		}
		if out, err := exec.Command(goTool, "build", "-tags", "failpoints", "-o", fpBin, ".").CombinedOutput(); err != nil {
			fpErr = fmt.Errorf("go build -tags failpoints: %v\n%s", err, out)
		}
	})
	if fpErr != nil {
		t.Fatal(fpErr)
	}
	if err := s.RegisterWorkloadTTL(t.Context(), s.BrokerID, time.Hour, "unix:path:"+fpBin); err != nil {
		t.Fatal(err)
	}
	return fpBin
}

var (
	fpOnce sync.Once
	fpBin  string
	fpErr  error
)

// atfd killed (SIGKILL) at each failpoint of issuance and revocation, then
// restarted: no credential of a revoked lineage is alive in Vault, no live
// credential in Vault is unknown to the broker, the audit chain verifies
// and the broker serves again.
func TestCrashSafety(t *testing.T) {
	s := devtest.Shared(t)
	bin := buildFailpointAtfd(t, s)
	for i, point := range []string{failpoint.AnchorAfterVault, failpoint.IssueAfterVault, failpoint.RecordBeforeCommit, failpoint.IssueAfterRecord,
		failpoint.RevokeAfterCommit, failpoint.RevokeMidLineage} {
		t.Run(point, func(t *testing.T) {
			ctx := t.Context()
			e := newAtfdEnv(t, s, bin)
			lead := spiffeid.RequireFromPath(s.TrustDomain, fmt.Sprintf("/crash/%d/lead", i))
			helper := spiffeid.RequireFromPath(s.TrustDomain, fmt.Sprintf("/crash/%d/helper", i))
			revoking := point == failpoint.RevokeAfterCommit || point == failpoint.RevokeMidLineage
			armed := point
			if revoking {
				armed = "" // armed at the restart below, after the lineage is built
			}
			// Placed at their levels in the store before atfd starts (through
			// the API a level above Intern takes sign-offs and a migration).
			st, err := store.Open(e.storePath, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range []struct {
				id    spiffeid.ID
				level authz.Level
			}{{lead, authz.Senior}, {helper, authz.Junior}} {
				if _, err := st.RegisterAgent(store.Agent{ID: a.id.String(), Owner: "o@example.org", Purpose: "crash test",
					Roles: []string{"reports-read"}, Level: a.level}, "test"); err != nil {
					t.Fatal(err)
				}
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			e.start("ATF_FAILPOINT=" + armed)
			admin := e.dial(testAdmin(s))
			leadC, helperC := e.dial(lead), e.dial(helper)
			fetch := func(c *client.Conn, grant string) (*brokerv1.Credential, error) {
				r, err := c.Broker.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read", GrantId: grant})
				return r.GetCredential(), err
			}

			var held []*brokerv1.Credential // credentials the agents received
			switch {
			case point == failpoint.RecordBeforeCommit:
				// The agent has its credential; the record of it dies with
				// the process: the restart must kill it in Vault.
				cred, err := fetch(leadC, "")
				if err != nil {
					t.Fatalf("the credential answered before its commit: %v", err)
				}
				held = append(held, cred)
				e.awaitKilled(point)
				e.start()
			case !revoking:
				if _, err := fetch(leadC, ""); err == nil {
					t.Fatal("the request that crashed atfd returned a credential")
				}
				e.awaitKilled(point)
				e.start()
			default:
				own, err := fetch(leadC, "")
				if err != nil {
					t.Fatal(err)
				}
				g, err := leadC.Broker.Delegate(ctx, &brokerv1.DelegateRequest{Delegatee: helper.String(), Roles: []string{"reports-read"}, Ttl: durationpb.New(time.Hour)})
				if err != nil {
					t.Fatal(err)
				}
				under, err := fetch(helperC, g.GetGrant().GetId())
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, own, under)
				// Restart with the failpoint armed (a clean stop first).
				e.proc.Process.Signal(syscall.SIGTERM)
				<-e.exited
				e.exited <- nil
				e.start("ATF_FAILPOINT=" + point)
				admin = e.dial(testAdmin(s))
				if _, err := admin.Admin.RevokeLineage(ctx, &adminv1.RevokeLineageRequest{Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: lead.String()}, Reason: "crash test"}); err == nil {
					t.Fatal("the revocation that crashed atfd answered")
				}
				e.awaitKilled(point)
				e.start()
			}
			admin = e.dial(testAdmin(s))

			// Revoked lineages are dead in Vault (the queue drains at start).
			for _, c := range held {
				devtest.WaitFor(t, 20*time.Second, "a revoked lineage's credential to die in Vault", func() bool {
					_, err := s.VaultClient().Auth().Token().LookupWithContext(ctx, c.GetToken())
					return err != nil && strings.Contains(err.Error(), "bad token")
				})
			}
			// No live credential in Vault is unknown to the broker: after a
			// crash, everything issued before it is revoked.
			// Batch credentials hang on anchors, which are in Vault's lists:
			// none of the crashed run's may live, but the one whose creation
			// the crash cut off before it was recorded (anchor-after-vault):
			// the lead's first, with nothing below it, its token gone with
			// the process. It expires on its own.
			var orphans []string
			if point == failpoint.AnchorAfterVault {
				orphans = []string{store.AgentNode(lead.String())}
			}
			devtest.WaitFor(t, 20*time.Second, "credentials and anchors from before the crash to die in Vault", func() bool {
				return len(liveTokensOf(t, s, lead.String(), helper.String())) == 0 &&
					slices.Equal(liveAnchorsOf(t, s, lead.String(), helper.String()), orphans)
			})
			v, err := admin.Admin.VerifyAudit(ctx, &adminv1.VerifyAuditRequest{})
			if err != nil || !v.GetOk() {
				t.Fatalf("audit chain after the crash: %v, %v", v, err)
			}
			recovery, err := admin.Admin.QueryAudit(ctx, &adminv1.QueryAuditRequest{Kind: "crash_recovery"})
			if err != nil || len(recovery.GetRecords()) != 1 {
				t.Fatalf("crash_recovery records: %v, %v", recovery, err)
			}

			// And it serves: the lead fetches anew (its own authority is
			// untouched unless its lineage was revoked); the revoked grant
			// is refused.
			leadC, helperC = e.dial(lead), e.dial(helper)
			cred, err := fetch(leadC, "")
			if err != nil {
				t.Fatalf("fetch after the restart: %v", err)
			}
			if _, err := s.VaultClient().Auth().Token().LookupWithContext(ctx, cred.GetToken()); err != nil {
				t.Fatalf("the new credential is not valid in Vault: %v", err)
			}
			if live := liveTokensOf(t, s, lead.String(), helper.String()); len(live) != 0 || !strings.HasPrefix(cred.GetAccessor(), "b.") {
				t.Fatalf("live service credentials in Vault %v, new credential %s; want none and a batch one", live, cred.GetAccessor())
			}
			want := slices.Sorted(slices.Values(append(orphans, store.AgentNode(lead.String()), store.RoleNode(store.AgentNode(lead.String()), "reports-read"))))
			if live := liveAnchorsOf(t, s, lead.String(), helper.String()); !slices.Equal(live, want) {
				t.Fatalf("live anchors in Vault %v, want only those of the new credential %v", live, want)
			}
			if revoking {
				if _, err := fetch(helperC, held[1].GetGrantId()); err == nil {
					t.Fatal("a grant of the revoked lineage still issues")
				}
			}
		})
	}
}
