package broker_test

// Benchmarks of docs/design.md §5's targets. Each measures the broker and the raw
// Vault operation it builds on, against the same real Vault (the shared dev
// stack) in the same run, and reports the broker's cost as ratios. They
// report and never fail on speed.
//
// Each iteration takes a fixed number of samples and times its phases
// itself, so `-benchtime 1x` (make bench) is enough; ns/op is suppressed
// where it would only be the length of an iteration.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker"
	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/tracing"
	"github.com/agentictrust/atf/broker/vault"
	"github.com/agentictrust/atf/delegation"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/policy"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

const (
	// benchConcurrency is the load of the throughput phases, and how many
	// calls at once build the token trees of the lineage benchmark.
	benchConcurrency = 32
	// latencySamples is how many sequential calls of each kind, broker and
	// raw, one issuance iteration times.
	latencySamples = 500
	// throughputOps is how many calls of each kind one throughput phase
	// makes; an issuance iteration runs two phases of each, alternating.
	throughputOps = 2000
	// decisionSamples is how many decisions one iteration times one by one.
	decisionSamples = 20000
	// decisionTarget is docs/design.md §5's bound on a decision's p50.
	decisionTarget = 20 * time.Microsecond
	// revocationSamples is how many tokens of a lineage are checked in Vault
	// after a revocation, besides its anchor.
	revocationSamples = 20
)

// BenchmarkIssuance compares FetchCredential, end to end over gRPC and
// mutual TLS, with what the broker asks Vault for, asked directly: a child
// token through the atf-credential role, under an anchor made through
// atf-anchor with a token of the broker's policy and the agent's Vault
// entity (the broker's anchors carry it, docs/security.md "Vault
// identity"), with the same policies, lifetime and metadata; and a batch
// child of a role anchor, as the broker makes a batch credential. The
// same two under anchors without an entity, which cost Vault less, are
// reported besides (plain-…). Sequential calls alternate between the
// kinds (p50, p99); throughput phases run each at benchConcurrency.
func BenchmarkIssuance(b *testing.B) {
	f, bk := startBroker(b)
	agent := f.ID(b, "issuer")
	bk.Register(b, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	conn := bk.Dial(b, agent)
	req := &brokerv1.FetchCredentialRequest{Role: "reports-read"}
	viaBroker := func(ctx context.Context, _ int) error {
		_, err := conn.Broker.FetchCredential(ctx, req)
		return err
	}
	direct, directBatch := rawIssuance(b, f, agent.String(), vault.EntityAlias(agent.String()))
	plain, plainBatch := rawIssuance(b, f, agent.String(), "")
	const raw, rawBatch, brk, rawPlain, rawPlainBatch = 0, 1, 2, 3, 4
	kinds := [5]func(context.Context, int) error{raw: direct, rawBatch: directBatch, brk: viaBroker, rawPlain: plain, rawPlainBatch: plainBatch}

	v := compareToRaw(b, kinds[:], latencySamples, throughputOps, 2)
	commit := storeCommitP50(b)
	v.report(b, raw, brk)
	b.ReportMetric(v.lp(brk, 0.50)/v.lp(raw, 0.50), "c32-p50-ratio")
	b.ReportMetric(v.lp(brk, 0.99)/v.lp(raw, 0.99), "c32-p99-ratio")
	b.ReportMetric(v.lp(brk, 0.50), "c32-p50-ns")
	b.ReportMetric(v.lp(raw, 0.50), "c32-raw-p50-ns")
	b.ReportMetric(v.lp(brk, 0.99), "c32-p99-ns")
	b.ReportMetric(v.lp(raw, 0.99), "c32-raw-p99-ns")
	for prefix, k := range map[string]int{"": rawBatch, "plain-": rawPlainBatch} {
		b.ReportMetric(v.p(k, 0.50), prefix+"batch-raw-p50-ns")
		b.ReportMetric(v.rate(k), prefix+"batch-raw-ops/s")
		b.ReportMetric(v.p(brk, 0.50)/v.p(k, 0.50), prefix+"p50-vs-batch")
		b.ReportMetric(v.rate(brk)/v.rate(k), prefix+"throughput-vs-batch")
	}
	b.ReportMetric(v.p(rawPlain, 0.50), "plain-raw-p50-ns")
	b.ReportMetric(v.rate(rawPlain), "plain-raw-ops/s")
	b.ReportMetric(v.p(brk, 0.50)/v.p(rawPlain, 0.50), "plain-p50-ratio")
	b.ReportMetric(v.rate(brk)/v.rate(rawPlain), "plain-throughput-ratio")
	b.ReportMetric(float64(commit), "commit-p50-ns")
	b.ReportMetric(float64(commit)/v.p(brk, 0.50), "commit-share")
}

// rawIssuance returns the raw baselines of an issuance for agent, under
// anchors with the Vault entity of alias entity ("": none): a service
// child of an anchor, and a batch child of a role anchor holding the
// role's policy, as the broker makes a batch credential.
func rawIssuance(b *testing.B, f *brokertest.Fixture, agent, entity string) (service, batch func(context.Context, int) error) {
	b.Helper()
	anchor, err := newRawAnchor(b.Context(), vaultClient(b, f, vaultToken(b, f)), entity)
	if err != nil {
		b.Fatal(err)
	}
	roleAnchor, err := newRawAnchor(b.Context(), anchor.client, entity, "demo-reports-read")
	if err != nil {
		b.Fatal(err)
	}
	return func(ctx context.Context, _ int) error {
			_, err := anchor.credential(ctx, agent)
			return err
		}, func(ctx context.Context, _ int) error {
			return roleAnchor.batchCredential(ctx, agent)
		}
}

// storeCommitP50 is the median time of RecordCredential (the credential,
// its audit record) called back to back on a fresh store file on the same
// disk: each answers before its own fsync but waits for the previous one's,
// which an issuance, a Vault call after the last, rarely does.
func storeCommitP50(b *testing.B) time.Duration {
	st, err := store.Open(filepath.Join(b.TempDir(), "commit.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	agent := "spiffe://atf.test/bench/commit"
	if _, err := st.RegisterAgent(store.Agent{ID: agent, Owner: "o@example.org", Purpose: "bench", Roles: []string{"r"}, Level: authz.Intern}, "bench"); err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, latencySamples)
	now := time.Now().UTC()
	for i := range latencySamples {
		start := time.Now()
		if err := st.RecordCredential(store.Credential{Accessor: fmt.Sprintf("acc-%d", i), AgentID: agent, Role: "r", Policies: []string{"p"},
			IssuedAt: now, ExpiresAt: now.Add(time.Hour), Why: map[string]string{"decision": "allow"}}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	return percentile(lat, 0.50)
}

// BenchmarkDecision times the in-process decision of a credential request
// under a chain of three grants: delegation.Effective, then authz's maturity
// gate. There is no Casbin segmentation yet, so the target's "10k policy
// lines" are not part of it. Each decision is timed on its own (time.Now
// costs a few tens of ns); ns/op is their mean.
func BenchmarkDecision(b *testing.B) {
	gate, err := authz.NewGate(authz.DefaultLimits())
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	manifest := []string{"payroll-read", "reports-read", "reports-write"}
	levels := []delegation.Level{delegation.Principal, delegation.Senior, delegation.Senior, delegation.Intern}
	agents := make([]delegation.Agent, len(levels))
	ancestors := map[string]delegation.Agent{}
	for i, l := range levels {
		agents[i] = delegation.Agent{ID: fmt.Sprintf("spiffe://atf.test/agents/bench/a%d", i), Level: l, Active: true, Roles: manifest}
		ancestors[agents[i].ID] = agents[i]
	}
	chain := make([]delegation.Grant, len(agents)-1)
	for i := range chain {
		parent := ""
		if i > 0 {
			parent = chain[i-1].ID
		}
		chain[i] = delegation.Grant{
			ID: fmt.Sprintf("%032x", i+1), ParentID: parent, Delegator: agents[i].ID, Delegatee: agents[i+1].ID,
			Roles: manifest[:2], ExpiresAt: now.Add(time.Hour), MaxDepth: len(chain) - 1 - i, Depth: i + 1, CreatedAt: now,
		}
	}
	delete(ancestors, agents[len(agents)-1].ID)
	role := authz.Role{Name: "reports-read", Class: authz.Read, Classification: authz.Internal, MaxTTL: 30 * time.Minute}
	for _, lines := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("lines=%d", lines), func(b *testing.B) {
			policy := benchPolicy(b, lines, agents)
			// As FetchCredential does: the holder's decision at the chain's
			// level, then every delegator's.
			decide := func() (authz.Decision, error) {
				auth, err := delegation.Effective(agents[len(agents)-1], chain, ancestors, now)
				if err != nil {
					return authz.Decision{}, err
				}
				a := &authz.Agent{ID: auth.Chain[len(auth.Chain)-1], Level: authz.Level(auth.Level), Active: true, Roles: auth.Roles}
				d := gate.Decide(policy, a, role, 0)
				for _, up := range auth.Chain[:len(auth.Chain)-1] {
					if d.Outcome != authz.Allow {
						break
					}
					d = gate.Decide(policy, &authz.Agent{ID: up, Level: a.Level, Active: true, Roles: a.Roles}, role, 0)
				}
				return d, nil
			}
			var lat []time.Duration
			for b.Loop() {
				for range decisionSamples {
					start := time.Now()
					d, err := decide()
					lat = append(lat, time.Since(start))
					if err != nil || d.Outcome != authz.Allow {
						b.Fatalf("decision = %+v, %v; want allowed", d, err)
					}
				}
			}
			var sum time.Duration
			for _, d := range lat {
				sum += d
			}
			slices.Sort(lat)
			b.ReportMetric(float64(sum)/float64(len(lat)), "ns/op")
			b.ReportMetric(float64(percentile(lat, 0.50)), "p50-ns")
			b.ReportMetric(float64(percentile(lat, 0.99)), "p99-ns")
			b.ReportMetric(float64(percentile(lat, 0.50))/float64(decisionTarget), "p50-vs-target")
		})
	}
}

// benchPolicy is a policy of n p lines in the shape a platform team writes:
// one line per agent on its team's prefix, teams as groups, and the bench
// agents in a group allowed the reports roles.
func benchPolicy(b *testing.B, n int, agents []delegation.Agent) *authz.Policy {
	var sb strings.Builder
	for _, a := range agents {
		fmt.Fprintf(&sb, "g, %s, group:bench\n", a.ID)
	}
	fmt.Fprintf(&sb, "p, group:bench, reports-read, read, intern, allow\n")
	for i := 1; i < n; i++ {
		fmt.Fprintf(&sb, "g, spiffe://atf.test/agents/fleet/a%d, group:team%d\n", i, i%50)
		fmt.Fprintf(&sb, "p, spiffe://atf.test/agents/fleet/a%d, kv/team%d/*, read, intern, allow\n", i, i%50)
	}
	p, err := authz.NewPolicy(1, policy.Model, sb.String())
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkIssuanceStages says where an issuance's time goes, from the
// broker's own spans (read through an in-memory recorder): the decision
// span (atf.decision) holds the Vault call (atf.vault.issue, the anchor
// included) and the store record with its audit record (atf.store.record);
// what the client waits beyond the decision span is the transport (gRPC,
// mutual TLS), the SVID check, validation and the answer. Each stage is
// reported as its p50 and its share of the client's p50.
func BenchmarkIssuanceStages(b *testing.B) {
	rec := tracetest.NewSpanRecorder()
	f, bk := startBroker(b, broker.WithTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))))
	issuanceStages(b, f, bk, rec)
}

// issuanceStages times an agent's issuances on bk, whose spans rec
// records, and reports each stage's p50 and share (BenchmarkIssuanceStages).
func issuanceStages(b *testing.B, f *brokertest.Fixture, bk *brokertest.Broker, rec *tracetest.SpanRecorder) {
	ctx := b.Context()
	agent := f.ID(b, "stages")
	bk.Register(b, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	conn := bk.Dial(b, agent)
	req := &brokerv1.FetchCredentialRequest{Role: "reports-read"}
	for range 20 { // TLS session, connection pools, the agent's anchors
		if _, err := conn.Broker.FetchCredential(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	var total, decision, vaultCall, record, exposed []time.Duration
	for b.Loop() {
		for range latencySamples {
			seen := len(rec.Ended())
			start := time.Now()
			if _, err := conn.Broker.FetchCredential(ctx, req); err != nil {
				b.Fatal(err)
			}
			total = append(total, time.Since(start))
			spans := map[string]sdktrace.ReadOnlySpan{}
			for _, sp := range rec.Ended()[seen:] {
				spans[sp.Name()] = sp
			}
			d, v, r := spans[tracing.SpanDecision], spans[tracing.SpanVaultIssue], spans[tracing.SpanStoreRecord]
			decision = append(decision, spanLength(d))
			vaultCall = append(vaultCall, spanLength(v))
			record = append(record, spanLength(r))
			// A batch credential's record is committed while Vault makes
			// the token: what the answer waits for is the union.
			exposed = append(exposed, spanLength(r)-spanOverlap(v, r))
		}
	}
	transport := make([]time.Duration, len(total))
	decide := make([]time.Duration, len(total))
	for i := range total {
		transport[i] = total[i] - decision[i]
		decide[i] = decision[i] - vaultCall[i] - exposed[i]
	}
	p50 := func(ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(percentile(ds, 0.50))
	}
	all := p50(total)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(all, "total-p50-ns")
	for _, st := range []struct {
		name string
		ds   []time.Duration
	}{{"transport", transport}, {"decide", decide}, {"vault", vaultCall}, {"record", record}, {"record-exposed", exposed}} {
		v := p50(st.ds)
		b.ReportMetric(v, st.name+"-p50-ns")
		b.ReportMetric(v/all, st.name+"-share")
	}
}

// spanLength is sp's length, 0 for a span that did not run.
func spanLength(sp sdktrace.ReadOnlySpan) time.Duration {
	if sp == nil {
		return 0
	}
	return sp.EndTime().Sub(sp.StartTime())
}

// spanOverlap is how long a and b ran at the same time.
func spanOverlap(a, b sdktrace.ReadOnlySpan) time.Duration {
	if a == nil || b == nil {
		return 0
	}
	start, end := a.StartTime(), a.EndTime()
	if b.StartTime().After(start) {
		start = b.StartTime()
	}
	if b.EndTime().Before(end) {
		end = b.EndTime()
	}
	return max(end.Sub(start), 0)
}

// BenchmarkLineageRevocation revokes, through AdminService.RevokeLineage,
// one grant under which N live (batch) credentials were issued, and times it until
// the call returns and until Vault confirms the tokens dead (the grant's
// anchor and revocationSamples of the credentials). Baselines on the same
// Vault: (a) revoke-tree of an equivalent tree made with the root client (an
// anchor through atf-anchor, N children through atf-credential) by revoking
// the anchor's accessor; (b) revoking N such tokens one by one by accessor.
// The ratios compare times until Vault confirms, each measured the same way.
// commit-ms is the broker's store commit, part of return-ms; vault-pending
// counts revocations the call could not confirm in Vault (left to the
// broker's retry queue).
func BenchmarkLineageRevocation(b *testing.B) {
	f, bk := startBroker(b)
	// A Senior delegates, so the credentials are batch tokens (the
	// default): a Principal on the chain would make every credential below
	// it use-limited, hence a service token (docs/design.md §4.1), which
	// Vault revokes as it does the baseline's tree.
	principal, helper := f.ID(b, "principal"), f.ID(b, "helper")
	bk.Register(b, principal, brokerv1.Level_LEVEL_SENIOR, "reports-read")
	bk.Register(b, helper, brokerv1.Level_LEVEL_INTERN, "reports-read")
	pconn, hconn, admin := bk.Dial(b, principal), bk.Dial(b, helper), bk.Dial(b, f.Admin)
	root := f.Stack.VaultClient()

	// At 100,000 the broker's row alone, to show it flat: Vault's own
	// baselines would take minutes to build and revoke.
	for _, n := range []int{10, 1000, 10000, 100000} {
		b.Run("credentials="+strconv.Itoa(n), func(b *testing.B) {
			ctx := b.Context()
			var ret, dead, commit, treeRet, treeDead, flatDead time.Duration
			var pending int32
			for b.Loop() {
				grant, anchor, creds := lineage(b, root, pconn, hconn, helper, n)
				brokerCheck := append(sample(creds), anchor)
				if n > 10000 {
					r, d, c, p := revokeLineageTimed(b, admin, root, grant, n, brokerCheck)
					ret, dead, commit, pending = ret+r, dead+d, commit+c, pending+p
					continue
				}
				tree, err := newRawTree(ctx, root, n)
				if err != nil {
					b.Fatal(err)
				}
				flat, err := newRawTree(ctx, root, n)
				if err != nil {
					b.Fatal(err)
				}
				treeCheck := append(sample(tree.children), tree.anchor.accessor)
				flatCheck := sample(flat.children)
				for _, check := range [][]string{brokerCheck, treeCheck, flatCheck} {
					if d, err := countDead(ctx, root, check); err != nil || d > 0 {
						b.Fatalf("before revoking: %d of %d sampled tokens dead (%v)", d, len(check), err)
					}
				}

				r, d, c, p := revokeLineageTimed(b, admin, root, grant, n, brokerCheck)
				ret, dead, commit, pending = ret+r, dead+d, commit+c, pending+p

				start := time.Now()
				if err := revokeAccessor(ctx, root, tree.anchor.accessor); err != nil {
					b.Fatal(err)
				}
				treeRet += time.Since(start)
				if err := awaitDead(ctx, root, treeCheck); err != nil {
					b.Fatal(err)
				}
				treeDead += time.Since(start)

				start = time.Now()
				for _, acc := range flat.children {
					if err := revokeAccessor(ctx, root, acc); err != nil {
						b.Fatal(err)
					}
				}
				if err := awaitDead(ctx, root, flatCheck); err != nil {
					b.Fatal(err)
				}
				flatDead += time.Since(start)
				if err := revokeAccessor(ctx, root, flat.anchor.accessor); err != nil {
					b.Fatal(err)
				}
			}
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(b.N) }
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(ms(ret), "return-ms")
			b.ReportMetric(ms(dead), "dead-ms")
			b.ReportMetric(ms(commit), "commit-ms")
			b.ReportMetric(float64(pending)/float64(b.N), "vault-pending")
			if n > 10000 {
				return
			}
			b.ReportMetric(ms(treeRet), "tree-return-ms")
			b.ReportMetric(ms(treeDead), "tree-dead-ms")
			b.ReportMetric(ms(flatDead), "one-by-one-ms")
			b.ReportMetric(float64(dead)/float64(treeDead), "vs-revoke-tree")
			b.ReportMetric(float64(dead)/float64(flatDead), "vs-one-by-one")
		})
	}
}

// revokeLineageTimed revokes the lineage of grant (n credentials) through
// the broker and returns how long it took to answer, until the sampled
// tokens in check were dead in Vault, the store's commit, and how many
// revocations Vault had not confirmed when it answered.
func revokeLineageTimed(b *testing.B, admin *client.Conn, root *vaultapi.Client, grant string, n int, check []string) (ret, dead, commit time.Duration, pending int32) {
	b.Helper()
	ctx := b.Context()
	start := time.Now()
	// Vault is watched from the start: the tokens may die before the
	// answer, which also tells the holders.
	deadAt := make(chan error, 1)
	go func() {
		err := awaitDead(ctx, root, check)
		dead = time.Since(start)
		deadAt <- err
	}()
	resp, err := admin.Admin.RevokeLineage(ctx, &adminv1.RevokeLineageRequest{Root: &adminv1.RevokeLineageRequest_GrantId{GrantId: grant}, Reason: "benchmark"})
	if err != nil {
		b.Fatal(err)
	}
	ret = time.Since(start)
	if s := resp.GetSummary(); s.GetCredentialsRevoked() != int32(n) || s.GetGrantsRevoked() != 1 {
		b.Errorf("summary = %v; want 1 grant and %d credentials revoked", s, n)
	}
	if err := <-deadAt; err != nil {
		b.Fatal(err)
	}
	return ret, dead, resp.GetSummary().GetCommitDuration().AsDuration(), resp.GetSummary().GetVaultPending()
}

// startBroker starts a broker with brokertest's configuration, set for
// load (benchConfig). The Vault token it logs in with is revoked, with
// everything made under it, when b ends, after the broker has stopped, so
// Vault is left as it was.
func startBroker(b *testing.B, opts ...broker.Option) (*brokertest.Fixture, *brokertest.Broker) {
	b.Helper()
	f := brokertest.Setup(b)
	return f, f.StartWith(b, benchConfig(b, f, f.Config(b, b.TempDir())), opts...)
}

// benchConfig is cfg, one of the fixture's, set for load; the Vault token
// it logs in with is revoked, with everything made under it, when b ends.
func benchConfig(b *testing.B, f *brokertest.Fixture, cfg config.Config) config.Config {
	b.Helper()
	// The set-up issues thousands of credentials in bursts: Vault queues
	// them, which is load, not an outage the breaker should act on.
	cfg.Vault.Timeout = 30 * time.Second
	cfg.Vault.Breaker.Failures = 1 << 20
	// Benchmarks dial an agent per sample, all from loopback, and keep the
	// connections until they end.
	cfg.Limits.MaxConnectionsPerIP = -1
	tok, err := os.ReadFile(cfg.Vault.Auth.TokenFile)
	if err != nil {
		b.Fatal(err)
	}
	revokeAtEnd(b, f, string(tok))
	return cfg
}

// vaultToken returns a new token with the broker's policy, revoked with
// everything made under it when b ends.
func vaultToken(b *testing.B, f *brokertest.Fixture) string {
	b.Helper()
	tok, err := f.Stack.BrokerVaultToken(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	revokeAtEnd(b, f, tok)
	return tok
}

// revokeAtEnd revokes the tree of token when b ends (cleanups run last
// registered first).
func revokeAtEnd(b *testing.B, f *brokertest.Fixture, token string) {
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := f.Stack.VaultClient().Auth().Token().RevokeTreeWithContext(ctx, token); err != nil {
			b.Errorf("revoking a benchmark's broker token: %v", err)
		}
	})
}

// vaultClient returns a Vault client using token, configured as the
// broker's issuer configures its own: same transport, no retries.
func vaultClient(b *testing.B, f *brokertest.Fixture, token string) *vaultapi.Client {
	b.Helper()
	// The broker's own client configuration: the same connection pool.
	cfg := vault.ClientConfig(f.Stack.VaultAddr)
	cfg.MaxRetries = 0
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		b.Fatal(err)
	}
	c.SetToken(token)
	c.ClearNamespace()
	return c
}

// lineage has the delegator grant reports-read to the delegatee, which then
// fetches n credentials under the grant, and returns the grant's ID, the
// accessor of its Vault anchor and the credentials' accessors.
func lineage(b *testing.B, root *vaultapi.Client, delegator, delegatee *client.Conn, delegateeID spiffeid.ID, n int) (grant, anchor string, creds []string) {
	b.Helper()
	ctx := b.Context()
	g, err := delegator.Broker.Delegate(ctx, &brokerv1.DelegateRequest{Delegatee: delegateeID.String(), Roles: []string{"reports-read"}})
	if err != nil {
		b.Fatalf("delegate: %v", err)
	}
	grant = g.GetGrant().GetId()
	req := &brokerv1.FetchCredentialRequest{Role: "reports-read", GrantId: grant}
	creds = make([]string, n)
	fetch := func(ctx context.Context, i int) error {
		r, err := delegatee.Broker.FetchCredential(ctx, req)
		creds[i] = vaultRef(r.GetCredential())
		return err
	}
	// The anchor is never handed out: it is the token that the first
	// credential under the grant brought into Vault besides the credential
	// and the agent anchor above it.
	before, err := accessors(ctx, root)
	if err != nil {
		b.Fatal(err)
	}
	if err := fetch(ctx, 0); err != nil {
		b.Fatalf("fetch under grant: %v", err)
	}
	after, err := accessors(ctx, root)
	if err != nil {
		b.Fatal(err)
	}
	for acc := range after {
		if before[acc] || acc == creds[0] {
			continue
		}
		s, err := root.Auth().Token().LookupAccessorWithContext(ctx, acc)
		if err != nil {
			b.Fatal(err)
		}
		if meta, _ := s.TokenMetadata(); meta["atf_node"] == "grant:"+grant {
			anchor = acc
		}
	}
	if anchor == "" {
		b.Fatalf("no Vault anchor for grant %s among the new tokens", grant)
	}
	if _, err := parallel(ctx, n-1, benchConcurrency, func(ctx context.Context, i int) error { return fetch(ctx, i+1) }); err != nil {
		b.Fatalf("fetch under grant: %v", err)
	}
	return grant, anchor, creds
}

// rawAnchor is a baseline anchor: a token made through atf-anchor as the
// broker makes its own (vault.Issuer.CreateAnchor), and a client using it.
type rawAnchor struct {
	accessor string
	client   *vaultapi.Client
}

func newRawAnchor(ctx context.Context, parent *vaultapi.Client, entity string, policies ...string) (rawAnchor, error) {
	s, err := parent.Auth().Token().CreateWithRoleWithContext(ctx, &vaultapi.TokenCreateRequest{
		EntityAlias:    entity,
		Policies:       append([]string{"atf-anchor"}, policies...),
		TTL:            "14400s",
		ExplicitMaxTTL: "14400s",
		Metadata:       map[string]string{"atf_node": "benchmark"},
		DisplayName:    "atf-anchor",
		Type:           "service",
	}, "atf-anchor")
	if err != nil {
		return rawAnchor{}, fmt.Errorf("create anchor: %w", err)
	}
	c, err := parent.Clone()
	if err != nil {
		return rawAnchor{}, err
	}
	c.SetToken(s.Auth.ClientToken)
	return rawAnchor{accessor: s.Auth.Accessor, client: c}, nil
}

// credential creates, under the anchor, the token the broker creates for
// an Intern's reports-read credential (vault.Issuer.Issue), and returns its
// accessor.
func (a rawAnchor) credential(ctx context.Context, agent string) (string, error) {
	renewable := false
	s, err := a.client.Auth().Token().CreateWithRoleWithContext(ctx, &vaultapi.TokenCreateRequest{
		Policies:       []string{"demo-reports-read"},
		TTL:            "1800s",
		ExplicitMaxTTL: "1800s",
		Metadata: map[string]string{
			"atf_agent":       agent,
			"atf_role":        "reports-read",
			"atf_level":       "intern",
			"atf_decision_id": "0123456789abcdef0123456789abcdef",
			"atf_grant_id":    "",
			"atf_chain":       agent,
		},
		DisplayName:     "atf-reports-read",
		NoDefaultPolicy: true,
		Renewable:       &renewable,
		Type:            "service",
	}, "atf-credential")
	if err != nil {
		return "", fmt.Errorf("create credential: %w", err)
	}
	return s.Auth.Accessor, nil
}

// batchCredential creates, under a role anchor holding demo-reports-read,
// the batch token the broker creates for an Intern's reports-read
// credential.
func (a rawAnchor) batchCredential(ctx context.Context, agent string) error {
	renewable := false
	_, err := a.client.Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{
		Policies: []string{"demo-reports-read"},
		TTL:      "1800s",
		Metadata: map[string]string{
			"atf_agent":       agent,
			"atf_role":        "reports-read",
			"atf_level":       "intern",
			"atf_decision_id": "0123456789abcdef0123456789abcdef",
			"atf_grant_id":    "",
			"atf_chain":       agent,
		},
		DisplayName:     "atf-reports-read",
		NoDefaultPolicy: true,
		Renewable:       &renewable,
		Type:            "batch",
	})
	if err != nil {
		return fmt.Errorf("create batch credential: %w", err)
	}
	return nil
}

// rawTree is a baseline lineage: an anchor and its children's accessors.
type rawTree struct {
	anchor   rawAnchor
	children []string
}

func newRawTree(ctx context.Context, parent *vaultapi.Client, n int) (rawTree, error) {
	a, err := newRawAnchor(ctx, parent, "")
	if err != nil {
		return rawTree{}, err
	}
	t := rawTree{anchor: a, children: make([]string, n)}
	_, err = parallel(ctx, n, benchConcurrency, func(ctx context.Context, i int) error {
		acc, err := a.credential(ctx, "spiffe://atf.test/agents/bench/raw")
		t.children[i] = acc
		return err
	})
	return t, err
}

// parallel calls op for i in [0, n) from conc goroutines and returns the
// wall time; the first error stops it.
func parallel(ctx context.Context, n, conc int, op func(ctx context.Context, i int) error) (time.Duration, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range min(n, conc) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				if err := op(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		return elapsed, context.Cause(ctx)
	}
	return elapsed, nil
}

// vsRaw is what compareToRaw measured of each kind of call.
type vsRaw struct {
	lat, loaded [][]time.Duration // sequential; at benchConcurrency
	ops         []int
	wall        []time.Duration
}

// compareToRaw times kinds of calls in one run, so that each is compared
// with the raw baseline under the same conditions: per b.Loop, samples
// sequential calls of each kind, alternating (drift in Vault, whose token
// count grows, touches all alike); then, if throughputOps > 0, rounds
// rounds of throughputOps calls of each kind at benchConcurrency (their
// latencies under load kept too). Connections, pools and anchors are
// warmed up first: as loaded as they will be.
func compareToRaw(b *testing.B, kinds []func(context.Context, int) error, samples, throughputOps, rounds int) vsRaw {
	ctx := b.Context()
	for _, op := range kinds {
		warm, conc := 5, 1
		if throughputOps > 0 {
			warm, conc = 4*benchConcurrency, benchConcurrency
		}
		if _, err := parallel(ctx, warm, conc, op); err != nil {
			b.Fatal(err)
		}
	}
	n := len(kinds)
	v := vsRaw{lat: make([][]time.Duration, n), loaded: make([][]time.Duration, n), ops: make([]int, n), wall: make([]time.Duration, n)}
	for b.Loop() {
		for range samples {
			for k, op := range kinds {
				start := time.Now()
				if err := op(ctx, 0); err != nil {
					b.Fatal(err)
				}
				v.lat[k] = append(v.lat[k], time.Since(start))
			}
		}
		for range rounds {
			if throughputOps == 0 {
				break
			}
			for k, op := range kinds {
				var mu sync.Mutex
				timed := func(ctx context.Context, i int) error {
					start := time.Now()
					err := op(ctx, i)
					d := time.Since(start)
					mu.Lock()
					v.loaded[k] = append(v.loaded[k], d)
					mu.Unlock()
					return err
				}
				d, err := parallel(ctx, throughputOps, benchConcurrency, timed)
				if err != nil {
					b.Fatal(err)
				}
				v.ops[k] += throughputOps
				v.wall[k] += d
			}
		}
	}
	for k := range kinds {
		slices.Sort(v.lat[k])
		slices.Sort(v.loaded[k])
	}
	return v
}

// p is kind k's sequential q-quantile latency, in ns; lp its latency
// under load; rate its calls per second under load.
func (v vsRaw) p(k int, q float64) float64  { return float64(percentile(v.lat[k], q)) }
func (v vsRaw) lp(k int, q float64) float64 { return float64(percentile(v.loaded[k], q)) }
func (v vsRaw) rate(k int) float64          { return float64(v.ops[k]) / v.wall[k].Seconds() }

// report reports kind brk against the raw kind: latencies and their
// ratios, and, if measured, throughput and its ratio.
func (v vsRaw) report(b *testing.B, raw, brk int) {
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(v.p(raw, 0.50), "raw-p50-ns")
	b.ReportMetric(v.p(raw, 0.99), "raw-p99-ns")
	b.ReportMetric(v.p(brk, 0.50), "p50-ns")
	b.ReportMetric(v.p(brk, 0.99), "p99-ns")
	b.ReportMetric(v.p(brk, 0.50)/v.p(raw, 0.50), "p50-ratio")
	b.ReportMetric(v.p(brk, 0.99)/v.p(raw, 0.99), "p99-ratio")
	if v.ops[raw] > 0 {
		b.ReportMetric(v.rate(raw), "raw-ops/s")
		b.ReportMetric(v.rate(brk), "ops/s")
		b.ReportMetric(v.rate(brk)/v.rate(raw), "throughput-ratio")
	}
}

// percentile returns the p-quantile of sorted, by the nearest-rank method.
func percentile(sorted []time.Duration, p float64) time.Duration {
	return sorted[max(int(math.Ceil(p*float64(len(sorted))))-1, 0)]
}

// percentileMS is percentile in milliseconds, for b.ReportMetric.
func percentileMS(sorted []time.Duration, p float64) float64 {
	return float64(percentile(sorted, p)) / float64(time.Millisecond)
}

// sample returns up to revocationSamples of accessors, evenly spread.
func sample(accessors []string) []string {
	k := min(len(accessors), revocationSamples)
	out := make([]string, k)
	for i := range out {
		out[i] = accessors[i*len(accessors)/k]
	}
	return out
}

// accessors lists every token accessor Vault holds.
func accessors(ctx context.Context, root *vaultapi.Client) (map[string]bool, error) {
	all, err := dev.Accessors(ctx, root)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(all))
	for _, acc := range all {
		out[acc] = true
	}
	return out, nil
}

// vaultRef is how Vault knows credential c: its accessor, or for a batch
// token, which has none, the token itself.
func vaultRef(c *brokerv1.Credential) string {
	if strings.HasPrefix(c.GetAccessor(), "b.") {
		return c.GetToken()
	}
	return c.GetAccessor()
}

// vaultRefs are the vaultRef of creds.
func vaultRefs(creds []*brokerv1.Credential) []string {
	out := make([]string, len(creds))
	for i, c := range creds {
		out[i] = vaultRef(c)
	}
	return out
}

// countDead asks Vault about every token at once, by accessor or, for a
// batch token (hvb.), by the token, and returns how many it does not know.
func countDead(ctx context.Context, root *vaultapi.Client, refs []string) (int, error) {
	var dead atomic.Int32
	_, err := parallel(ctx, len(refs), len(refs), func(ctx context.Context, i int) error {
		var err error
		gone := "invalid accessor"
		if strings.HasPrefix(refs[i], "hvb.") {
			_, err = root.Auth().Token().LookupWithContext(ctx, refs[i])
			gone = "bad token"
		} else {
			_, err = root.Auth().Token().LookupAccessorWithContext(ctx, refs[i])
		}
		var re *vaultapi.ResponseError
		switch {
		case err == nil:
		// Vault wraps the message: "1 error occurred: * invalid accessor".
		case errors.As(err, &re) && (re.StatusCode == http.StatusBadRequest || re.StatusCode == http.StatusForbidden) &&
			slices.ContainsFunc(re.Errors, func(m string) bool { return strings.Contains(m, gone) }):
			dead.Add(1)
		default:
			return err
		}
		return nil
	})
	return int(dead.Load()), err
}

// awaitDead polls Vault until it knows none of accs, for up to two minutes.
func awaitDead(ctx context.Context, root *vaultapi.Client, accs []string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		n, err := countDead(ctx, root, accs)
		if err == nil && n == len(accs) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d sampled tokens still alive in Vault (%v)", len(accs)-n, len(accs), err)
		case <-tick.C:
		}
	}
}

func revokeAccessor(ctx context.Context, c *vaultapi.Client, accessor string) error {
	if err := c.Auth().Token().RevokeAccessorWithContext(ctx, accessor); err != nil {
		return fmt.Errorf("revoke-accessor: %w", err)
	}
	return nil
}

// BenchmarkLineageRevocationAgents times AdminService.RevokeLineage of an
// agent whose lineage spans N other agents: a tree of Principals, each
// delegating reports-read to up to 16 others (the fan-out limit), three
// levels deep at most, every delegator holding a credential under its
// grant (so every grant has a Vault anchor). It reports the time to return
// (denial is effective from then on), the store commit within it, and the
// grants and credentials revoked.
func BenchmarkLineageRevocationAgents(b *testing.B) {
	f, bk := startBroker(b)
	admin := bk.Dial(b, f.Admin)
	for _, n := range []int{1, 100, 1000} {
		b.Run("agents="+strconv.Itoa(n), func(b *testing.B) {
			ctx := b.Context()
			var ret, commit time.Duration
			var grants, creds int32
			iter := 0
			for b.Loop() {
				iter++
				id := func(i int) spiffeid.ID {
					return spiffeid.RequireFromSegments(f.Stack.TrustDomain, "agents", "bench-lineage", fmt.Sprintf("n%d-i%d-a%d", n, iter, i))
				}
				rootID := id(0)
				bk.Register(b, rootID, brokerv1.Level_LEVEL_PRINCIPAL, "reports-read")
				ids := make([]spiffeid.ID, n+1)
				ids[0] = rootID
				if _, err := parallel(ctx, n, benchConcurrency, func(ctx context.Context, i int) error {
					ids[i+1] = id(i + 1)
					_, err := admin.Admin.RegisterAgent(ctx, &adminv1.RegisterAgentRequest{SpiffeId: ids[i+1].String(), Owner: "bench", Purpose: "bench", Roles: []string{"reports-read"}})
					if err == nil {
						_, err = bk.TryPlace(b, ctx, ids[i+1], brokerv1.Level_LEVEL_PRINCIPAL)
					}
					return err
				}); err != nil {
					b.Fatal(err)
				}
				// Breadth first: delegator d gives grants to agents
				// 16d+1 .. 16d+16, under the grant it received.
				received := make([]string, n+1)
				for d := 0; 16*d+1 <= n; d++ {
					conn := bk.Dial(b, ids[d])
					depth := 0
					for k := d; k > 0; k = (k - 1) / 16 {
						depth++
					}
					if received[d] != "" || d == 0 {
						if _, err := conn.Broker.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read", GrantId: received[d]}); err != nil {
							b.Fatal(err)
						}
					}
					first, last := 16*d+1, min(16*d+16, n)
					if _, err := parallel(ctx, last-first+1, benchConcurrency, func(ctx context.Context, i int) error {
						r, err := conn.Broker.Delegate(ctx, &brokerv1.DelegateRequest{Delegatee: ids[first+i].String(), Roles: []string{"reports-read"},
							Ttl: durationpb.New(time.Hour - time.Duration(depth)*time.Minute), MaxDepth: int32(3 - depth), ParentGrantId: received[d]})
						if err != nil {
							return err
						}
						received[first+i] = r.GetGrant().GetId()
						return nil
					}); err != nil {
						b.Fatal(err)
					}
				}

				start := time.Now()
				resp, err := admin.Admin.RevokeLineage(ctx, &adminv1.RevokeLineageRequest{Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: rootID.String()}, Reason: "benchmark"})
				if err != nil {
					b.Fatal(err)
				}
				ret += time.Since(start)
				s := resp.GetSummary()
				if s.GetGrantsRevoked() != int32(n) {
					b.Errorf("summary = %v; want %d grants revoked", s, n)
				}
				commit += s.GetCommitDuration().AsDuration()
				grants += s.GetGrantsRevoked()
				creds += s.GetCredentialsRevoked()
			}
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(b.N) }
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(ms(ret), "return-ms")
			b.ReportMetric(ms(commit), "commit-ms")
			b.ReportMetric(float64(grants)/float64(b.N), "grants")
			b.ReportMetric(float64(creds)/float64(b.N), "credentials")
		})
	}
}
