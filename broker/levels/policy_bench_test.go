package levels_test

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/levels"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/delegation"
	"github.com/agentictrust/atf/deploy/policy"
)

// BenchmarkPolicyChange10kAgents measures the store side of a policy
// change over 10,000 agents (a real bbolt file, the shipped model, the
// real decision): each agent holds two live credentials of one role, every
// tenth gave a grant its neighbour holds a credential under, and the new
// version denies the role to half of the agents. The commit judges every
// live grant and credential and revokes what the new version forbids in
// one transaction; the dry run does the same and rolls back. (Vault's side
// follows from the durable queue: docs/operations.md.)
func BenchmarkPolicyChange10kAgents(b *testing.B) {
	const agents = 10_000
	st, lv := policyBenchStore(b, agents)
	open := "g, spiffe://td/*, group:all\np, group:all, *, *, intern, allow\n"
	deny := open + "g, spiffe://td/b/*, group:b\np, group:b, reports-read, read, intern, deny\n"
	p, err := authz.NewPolicy(0, policy.Model, deny)
	if err != nil {
		b.Fatal(err)
	}
	var dry, commit time.Duration
	var rev store.Revocation
	for b.Loop() {
		start := time.Now()
		r, err := st.ReviewPolicy(lv.PolicyJudge(p))
		if err != nil {
			b.Fatal(err)
		}
		dry = time.Since(start)
		start = time.Now()
		_, rev, err = st.CommitPolicy(store.PolicyVersion{Author: "bench", Comment: "deny b", Model: policy.Model, Policy: deny}, 0, lv.PolicyJudge(p))
		if err != nil {
			b.Fatal(err)
		}
		commit = time.Since(start)
		if r.CredentialCount() != rev.CredentialCount() || len(r.Grants) != len(rev.Grants) {
			b.Fatalf("dry run counted %d grants, %d credentials; the commit revoked %d, %d", len(r.Grants), r.CredentialCount(), len(rev.Grants), rev.CredentialCount())
		}
	}
	// Half the agents' own two, and the delegated credentials under the
	// half of the grants whose delegator is denied.
	if want := agents + agents/20; rev.CredentialCount() != want || len(rev.Grants) != agents/20 {
		b.Fatalf("revoked %d grants, %d credentials; want %d, %d", len(rev.Grants), rev.CredentialCount(), agents/20, want)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(dry.Milliseconds()), "dry-run-ms")
	b.ReportMetric(float64(commit.Milliseconds()), "commit-ms")
	b.ReportMetric(float64(rev.CredentialCount()), "credentials-revoked")
	b.ReportMetric(float64(len(rev.Queued)), "vault-queued")
}

// policyBenchStore is a store with n agents (a/i for even i, b/i for
// odd), two live reports-read credentials each under their role anchor,
// and a grant from every tenth agent (or the next, every other time) to
// the one after, with one credential under it; and Levels to judge them.
func policyBenchStore(b *testing.B, n int) (*store.Store, *levels.Levels) {
	b.Helper()
	st, err := store.Open(filepath.Join(b.TempDir(), "atf.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	id := func(i int) string { return fmt.Sprintf("spiffe://td/%c/%d", "ab"[i%2], i) }
	now := time.Now()
	parallel(b, n, func(i int) error {
		_, err := st.RegisterAgent(store.Agent{ID: id(i), Owner: "o", Level: authz.Senior, Roles: []string{"reports-read"}}, "bench")
		return err
	})
	parallel(b, n/10, func(k int) error {
		i := 10 * k // every other grant's delegator is a b
		return st.PutGrant(delegation.Grant{ID: fmt.Sprintf("g%d", i), Delegator: id(i + k%2), Delegatee: id(i + 2), Roles: []string{"reports-read"},
			Depth: 1, MaxDepth: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, 100)
	})
	parallel(b, n, func(i int) error {
		node := store.RoleNode(store.AgentNode(id(i)), "reports-read")
		if err := st.AddAnchor(store.Anchor{Accessor: "an-" + id(i), Node: node, CreatedAt: now, ExpiresAt: now.Add(4 * time.Hour)}); err != nil {
			return err
		}
		for c := range 2 {
			if err := st.RecordCredential(store.Credential{Accessor: fmt.Sprintf("b.%d.%d", i, c), Kind: store.KindBatch, AgentID: id(i), Role: "reports-read",
				Level: authz.Senior, Anchor: "an-" + id(i), IssuedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
				return err
			}
		}
		if i%10 != 0 {
			return nil
		}
		g := fmt.Sprintf("g%d", i)
		if err := st.AddAnchor(store.Anchor{Accessor: "an-" + g, Node: store.RoleNode(store.GrantNode(g), "reports-read"), CreatedAt: now, ExpiresAt: now.Add(4 * time.Hour)}); err != nil {
			return err
		}
		return st.RecordCredential(store.Credential{Accessor: "b." + g, Kind: store.KindBatch, AgentID: id(i + 2), Role: "reports-read", Level: authz.Senior,
			GrantID: g, Anchor: "an-" + g, IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	})
	gate, err := authz.NewGate(authz.DefaultLimits())
	if err != nil {
		b.Fatal(err)
	}
	roles, err := config.LoadRoles("../../deploy/dev/demo/roles.yaml")
	if err != nil {
		b.Fatal(err)
	}
	return st, levels.New(levels.Config{Store: st, Gate: gate, Roles: roles, Rules: delegation.DefaultRules(), Now: time.Now})
}

// parallel runs f(0..n-1) on 16 goroutines, so that the store groups
// their commits.
func parallel(b *testing.B, n int, f func(int) error) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < n; i += 16 {
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}
