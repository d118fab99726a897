package broker_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Delegation and lineage revocation through the API, against real
// SPIRE-minted SVIDs and the real Vault of the shared dev stack.

var reportsRW = []string{"reports-read", "reports-write"}

// delegEnv is a broker and the admin's connection to it.
type delegEnv struct {
	f     *brokertest.Fixture
	cfg   config.Config
	b     *brokertest.Broker
	admin adminv1.AdminServiceClient
}

func newDelegEnv(t *testing.T, f *brokertest.Fixture, cfg config.Config) *delegEnv {
	t.Helper()
	e := &delegEnv{f: f, cfg: cfg}
	e.start(t)
	return e
}

// start starts a broker on e's configuration (and store).
func (e *delegEnv) start(t *testing.T) {
	t.Helper()
	e.b = e.f.Start(t, e.cfg)
	e.admin = e.b.Dial(t, e.f.Admin).Admin
}

// delegAgent is a registered agent connected to the broker.
type delegAgent struct {
	id spiffeid.ID
	bc brokerv1.BrokerServiceClient
}

func (e *delegEnv) register(t *testing.T, name string, level brokerv1.Level, roles ...string) delegAgent {
	t.Helper()
	id := e.f.ID(t, name)
	e.b.Register(t, id, level, roles...)
	return delegAgent{id: id, bc: e.b.Dial(t, id).Broker}
}

// redial connects the agents to e's current broker, after a restart.
func (e *delegEnv) redial(t *testing.T, as ...*delegAgent) {
	t.Helper()
	for _, a := range as {
		a.bc = e.b.Dial(t, a.id).Broker
	}
}

func (a delegAgent) delegate(ctx context.Context, to spiffeid.ID, parent string, ttl time.Duration, maxDepth int32, roles ...string) (*brokerv1.Grant, error) {
	r, err := a.bc.Delegate(ctx, &brokerv1.DelegateRequest{
		Delegatee: to.String(), Roles: roles, Ttl: durationpb.New(ttl), MaxDepth: maxDepth, ParentGrantId: parent,
	})
	return r.GetGrant(), err
}

func (a delegAgent) mustDelegate(t *testing.T, to spiffeid.ID, parent string, ttl time.Duration, maxDepth int32, roles ...string) *brokerv1.Grant {
	t.Helper()
	g, err := a.delegate(t.Context(), to, parent, ttl, maxDepth, roles...)
	if err != nil {
		t.Fatalf("%s delegating %q to %s: %v", a.id, roles, to, err)
	}
	return g
}

func (a delegAgent) fetch(ctx context.Context, role, grant string) (*brokerv1.Credential, error) {
	r, err := a.bc.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: role, GrantId: grant})
	return r.GetCredential(), err
}

func (a delegAgent) mustFetch(t *testing.T, role, grant string) *brokerv1.Credential {
	t.Helper()
	c, err := a.fetch(t.Context(), role, grant)
	if err != nil {
		t.Fatalf("%s fetching %s under grant %q: %v", a.id, role, grant, err)
	}
	return c
}

// delegChain is A (Principal) → B (Senior) → C (Senior) → D (Principal).
// A Principal may put four hops below itself, a Senior two below its own
// grant, so the three hops fit: A's grant leaves B two more, B's (depth 2)
// leaves C one, C's (depth 3) none. The last grant is reports-read only.
type delegChain struct {
	a, b, c, d delegAgent
	ab, bc, cd *brokerv1.Grant
}

func (e *delegEnv) chain(t *testing.T) delegChain {
	t.Helper()
	ch := delegChain{
		a: e.register(t, "a", brokerv1.Level_LEVEL_PRINCIPAL, reportsRW...),
		b: e.register(t, "b", brokerv1.Level_LEVEL_SENIOR, reportsRW...),
		c: e.register(t, "c", brokerv1.Level_LEVEL_SENIOR, reportsRW...),
		d: e.register(t, "d", brokerv1.Level_LEVEL_PRINCIPAL, reportsRW...),
	}
	ch.ab = ch.a.mustDelegate(t, ch.b.id, "", time.Hour, 2, reportsRW...)
	ch.bc = ch.b.mustDelegate(t, ch.c.id, ch.ab.GetId(), 50*time.Minute, 1, reportsRW...)
	ch.cd = ch.c.mustDelegate(t, ch.d.id, ch.bc.GetId(), 40*time.Minute, 0, "reports-read")
	return ch
}

// below fetches one credential under each grant of the chain and returns
// their tokens by holder.
func (ch delegChain) below(t *testing.T) map[string]string {
	t.Helper()
	return map[string]string{
		"B under A→B": ch.b.mustFetch(t, "reports-write", ch.ab.GetId()).GetToken(),
		"C under B→C": ch.c.mustFetch(t, "reports-write", ch.bc.GetId()).GetToken(),
		"D under C→D": ch.d.mustFetch(t, "reports-read", ch.cd.GetId()).GetToken(),
	}
}

func (e *delegEnv) revokeLineage(t *testing.T, grantID, reason string) *brokerv1.RevocationSummary {
	t.Helper()
	r, err := e.admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{Root: &adminv1.RevokeLineageRequest_GrantId{GrantId: grantID}, Reason: reason})
	if err != nil {
		t.Fatalf("RevokeLineage(grant %s): %v", grantID, err)
	}
	return r.GetSummary()
}

func (e *delegEnv) lineage(t *testing.T, root *adminv1.GetLineageRequest) *adminv1.GetLineageResponse {
	t.Helper()
	r, err := e.admin.GetLineage(t.Context(), root)
	if err != nil {
		t.Fatalf("GetLineage: %v", err)
	}
	return r
}

// wantRevokedLineage checks that GetLineage of grant shows every grant
// revoked and no live credential.
func (e *delegEnv) wantRevokedLineage(t *testing.T, grant string, grants int) {
	t.Helper()
	l := e.lineage(t, &adminv1.GetLineageRequest{Root: &adminv1.GetLineageRequest_GrantId{GrantId: grant}})
	if len(l.GetGrants()) != grants {
		t.Errorf("lineage of %s has %d grants, want %d", grant, len(l.GetGrants()), grants)
	}
	for _, g := range l.GetGrants() {
		if g.GetRevokedAt() == nil {
			t.Errorf("grant %s (%s → %s) is not marked revoked", g.GetId(), g.GetDelegator(), g.GetDelegatee())
		}
	}
	if n := len(l.GetCredentials()); n != 0 {
		t.Errorf("lineage of %s still lists %d live credentials: %v", grant, n, l.GetCredentials())
	}
}

// wantDead fails t for every token Vault still accepts.
func (e *delegEnv) wantDead(t *testing.T, tokens map[string]string) {
	t.Helper()
	for who, tok := range tokens {
		if !e.f.Dead(t, tok) {
			t.Errorf("token of %s is still alive in Vault", who)
		}
	}
}

// wantAlive fails t for every token Vault does not accept.
func (e *delegEnv) wantAlive(t *testing.T, tokens map[string]string) {
	t.Helper()
	for who, tok := range tokens {
		if _, err := e.f.Lookup(t, tok); err != nil {
			t.Errorf("token of %s is not alive in Vault: %v", who, err)
		}
	}
}

// Every refusal of Delegate, each with its status code and the part of the
// message that tells the caller what to do.
func TestDelegateRefusals(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	ctx := t.Context()
	a := e.register(t, "a", brokerv1.Level_LEVEL_PRINCIPAL, reportsRW...)
	b := e.register(t, "b", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	c := e.register(t, "c", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	intern := e.register(t, "intern", brokerv1.Level_LEVEL_INTERN, "reports-read")
	junior := e.register(t, "junior", brokerv1.Level_LEVEL_JUNIOR, "reports-read")
	stranger := e.register(t, "stranger", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	gone := e.register(t, "gone", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	goneDelegator := e.register(t, "gone-delegator", brokerv1.Level_LEVEL_PRINCIPAL, reportsRW...)
	for _, id := range []spiffeid.ID{gone.id, goneDelegator.id} {
		if _, err := e.admin.DeregisterAgent(ctx, &adminv1.DeregisterAgentRequest{SpiffeId: id.String(), Reason: "retired"}); err != nil {
			t.Fatal(err)
		}
	}
	unregistered := delegAgent{id: f.ID(t, "unregistered"), bc: e.b.Dial(t, f.ID(t, "unregistered")).Broker}

	// A's grant to B: reports-read only, 30 minutes, three more hops.
	before := time.Now()
	ab := a.mustDelegate(t, b.id, "", 30*time.Minute, 3, "reports-read")
	if ab.GetDepth() != 1 || ab.GetParentGrantId() != "" || ab.GetDelegator() != a.id.String() || ab.GetDelegatee() != b.id.String() ||
		!slices.Equal(ab.GetRoles(), []string{"reports-read"}) || ab.GetMaxDepth() != 3 || ab.GetRevokedAt() != nil {
		t.Errorf("grant = %v", ab)
	}
	if exp := ab.GetExpiresAt().AsTime(); exp.Before(before.Add(30*time.Minute-time.Second)) || exp.After(time.Now().Add(30*time.Minute)) {
		t.Errorf("grant expires at %s, want 30m from now", exp)
	}
	// A's grant to C that may not be re-delegated.
	ac := a.mustDelegate(t, c.id, "", 30*time.Minute, 0, "reports-read")

	for _, tt := range []struct {
		name     string
		from     delegAgent
		to       spiffeid.ID
		parent   string
		ttl      time.Duration
		maxDepth int32
		roles    []string
		code     codes.Code
		parts    []string
	}{
		{"unknown delegatee", a, f.ID(t, "nobody"), "", time.Minute, 0, []string{"reports-read"},
			codes.PermissionDenied, []string{"is not an active registered agent and may receive no grant"}},
		{"self-delegation", a, a.id, "", time.Minute, 0, []string{"reports-read"},
			codes.PermissionDenied, []string{"self-delegation", "may not delegate to itself"}},
		{"cycle: B back to A under A's grant", b, a.id, ab.GetId(), time.Minute, 0, []string{"reports-read"},
			codes.PermissionDenied, []string{"cycle", a.id.String() + " already appears in the chain", "may not flow back up"}},
		{"intern delegator", intern, b.id, "", time.Minute, 0, []string{"reports-read"},
			codes.PermissionDenied, []string{"is at level intern, which may not delegate"}},
		{"junior delegator", junior, b.id, "", time.Minute, 0, []string{"reports-read"},
			codes.PermissionDenied, []string{"is at level junior, which may not delegate"}},
		{"role outside the delegator's manifest", a, b.id, "", time.Minute, 0, []string{"payroll-read", "reports-read"},
			codes.PermissionDenied, []string{"scope exceeds authority", `may delegate only ["reports-read" "reports-write"]`, `not ["payroll-read"]`}},
		{"role outside the parent grant", b, c.id, ab.GetId(), time.Minute, 0, []string{"reports-write"},
			codes.PermissionDenied, []string{"scope exceeds authority", `may delegate only ["reports-read"] here`, `not ["reports-write"]`}},
		{"TTL beyond the parent grant", b, c.id, ab.GetId(), 2 * time.Hour, 0, []string{"reports-read"},
			codes.InvalidArgument, []string{"would outlive its chain", "after grant " + ab.GetId(), "ask for a TTL of at most"}},
		{"TTL beyond the maximum", a, b.id, "", 48 * time.Hour, 0, []string{"reports-read"},
			codes.InvalidArgument, []string{"exceeds the maximum grant TTL 24h0m0s"}},
		{"depth exhausted", c, b.id, ac.GetId(), time.Minute, 0, []string{"reports-read"},
			codes.PermissionDenied, []string{"depth exhausted", "grant " + ac.GetId() + " allows re-delegation only down to depth 1", "would be at depth 2"}},
		{"max depth beyond a Principal's four hops", a, b.id, "", time.Minute, 4, []string{"reports-read"},
			codes.InvalidArgument, []string{"max depth 4 exceeds the 3 further hop(s)", "(principal) may delegate at most 4 hop(s)"}},
		{"max depth beyond a Senior's two hops", b, c.id, "", time.Minute, 2, []string{"reports-read"},
			codes.InvalidArgument, []string{"max depth 2 exceeds the 1 further hop(s)", "(senior) may delegate at most 2 hop(s)"}},
		// A's grant allows three more hops, but B is a Senior: its own
		// level binds it below A's grant too.
		{"a Senior's level binds under a Principal's grant", b, c.id, ab.GetId(), time.Minute, 2, []string{"reports-read"},
			codes.InvalidArgument, []string{"max depth 2 exceeds the 1 further hop(s) left below this grant at depth 2"}},
		{"parent grant given to someone else", stranger, c.id, ab.GetId(), time.Minute, 0, []string{"reports-read"},
			codes.NotFound, []string{"grant " + ab.GetId() + " does not exist or was not given to " + stranger.id.String()}},
		{"unknown parent grant", b, c.id, "0123456789abcdef0123456789abcdef", time.Minute, 0, []string{"reports-read"},
			codes.NotFound, []string{"grant 0123456789abcdef0123456789abcdef does not exist or was not given to"}},
		{"deregistered delegatee", a, gone.id, "", time.Minute, 0, []string{"reports-read"},
			codes.PermissionDenied, []string{gone.id.String() + " is not an active registered agent and may receive no grant"}},
		{"deregistered delegator", goneDelegator, b.id, "", time.Minute, 0, []string{"reports-read"},
			codes.PermissionDenied, []string{"is deregistered or killed and holds no authority"}},
		{"unregistered delegator", unregistered, b.id, "", time.Minute, 0, []string{"reports-read"},
			codes.PermissionDenied, []string{"caller is not a registered agent"}},
		{"no roles", a, b.id, "", time.Minute, 0, nil,
			codes.InvalidArgument, []string{"roles"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g, err := tt.from.delegate(t.Context(), tt.to, tt.parent, tt.ttl, tt.maxDepth, tt.roles...)
			if err == nil {
				t.Fatalf("granted: %v", g)
			}
			brokertest.WantCode(t, err, tt.code, tt.parts...)
		})
	}

	_, err := a.bc.Delegate(ctx, &brokerv1.DelegateRequest{Delegatee: "spiffe://" + f.Stack.TrustDomain.Name() + "/agents/../admin", Roles: []string{"reports-read"}})
	brokertest.WantCode(t, err, codes.InvalidArgument, "dot segment")

	// None of the refusals left a grant behind.
	for _, id := range []spiffeid.ID{a.id, b.id, intern.id, junior.id, stranger.id, goneDelegator.id} {
		l := e.lineage(t, &adminv1.GetLineageRequest{Root: &adminv1.GetLineageRequest_AgentId{AgentId: id.String()}})
		want := map[spiffeid.ID]int{a.id: 2}[id]
		if len(l.GetGrants()) != want {
			t.Errorf("%s gave %d grants, want %d: %v", id, len(l.GetGrants()), want, l.GetGrants())
		}
	}
}

// MaxFanOut (16 by default) caps the live grants a delegator holds out
// under one parent: the 17th is ResourceExhausted, a grant under another
// parent counts apart, and revoking one frees its slot.
func TestDelegateFanOut(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	up := e.register(t, "upstream", brokerv1.Level_LEVEL_PRINCIPAL, "reports-read")
	fan := e.register(t, "fan", brokerv1.Level_LEVEL_PRINCIPAL, "reports-read")
	to := e.register(t, "to", brokerv1.Level_LEVEL_SENIOR, "reports-read")

	var given []*brokerv1.Grant
	for range 16 {
		given = append(given, fan.mustDelegate(t, to.id, "", 10*time.Minute, 0, "reports-read"))
	}
	_, err := fan.delegate(t.Context(), to.id, "", 10*time.Minute, 0, "reports-read")
	brokertest.WantCode(t, err, codes.ResourceExhausted, "already holds out 16 live grant(s) under its own authority (limit 16)", "revoke one")

	// Under a grant it received, fan starts afresh.
	upg := up.mustDelegate(t, fan.id, "", 20*time.Minute, 1, "reports-read")
	fan.mustDelegate(t, to.id, upg.GetId(), 10*time.Minute, 0, "reports-read")

	if _, err := fan.bc.RevokeGrant(t.Context(), &brokerv1.RevokeGrantRequest{GrantId: given[0].GetId(), Reason: "make room"}); err != nil {
		t.Fatal(err)
	}
	fan.mustDelegate(t, to.id, "", 10*time.Minute, 0, "reports-read")
	_, err = fan.delegate(t.Context(), to.id, "", 10*time.Minute, 0, "reports-read")
	brokertest.WantCode(t, err, codes.ResourceExhausted, "limit 16")
}

// The fan-out limit holds under concurrent Delegate calls too.
func TestDelegateFanOutConcurrent(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	fan := e.register(t, "fan", brokerv1.Level_LEVEL_PRINCIPAL, "reports-read")
	to := e.register(t, "to", brokerv1.Level_LEVEL_SENIOR, "reports-read")
	var granted, exhausted atomic.Int32
	var wg sync.WaitGroup
	for range 48 {
		wg.Go(func() {
			_, err := fan.delegate(t.Context(), to.id, "", 10*time.Minute, 0, "reports-read")
			switch status.Code(err) {
			case codes.OK:
				granted.Add(1)
			case codes.ResourceExhausted:
				exhausted.Add(1)
			default:
				t.Errorf("Delegate: %v", err)
			}
		})
	}
	wg.Wait()
	if granted.Load() != 16 {
		t.Errorf("%d concurrent grants were given under one parent (%d refused); the limit is 16", granted.Load(), exhausted.Load())
	}
}

// Down a chain A (Principal) → B (Senior) → C (Senior) → D (Principal),
// each agent gets a credential under its grant whose scope in Vault is
// exactly the role asked for within the grant, at the lowest level along
// the chain, with the chain root-first in the response and on the token.
func TestDelegationChainCredentials(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	ch := e.chain(t)
	if ch.cd.GetDepth() != 3 || ch.cd.GetParentGrantId() != ch.bc.GetId() || ch.bc.GetParentGrantId() != ch.ab.GetId() {
		t.Fatalf("chain grants: %v / %v / %v", ch.ab, ch.bc, ch.cd)
	}
	ids := func(as ...delegAgent) []string {
		out := make([]string, len(as))
		for i, a := range as {
			out[i] = a.id.String()
		}
		return out
	}
	tokens := map[string]string{}
	for _, tt := range []struct {
		name   string
		who    delegAgent
		grant  *brokerv1.Grant
		role   string
		chain  []string
		policy string
		maxTTL time.Duration
	}{
		// A is a Principal: nothing below it lives longer than A's own 5
		// minutes or makes more than its 100 uses, whatever the level.
		{"B under A's grant", ch.b, ch.ab, "reports-write", ids(ch.a, ch.b), "demo-reports-write", 5 * time.Minute},
		{"C under B's grant", ch.c, ch.bc, "reports-write", ids(ch.a, ch.b, ch.c), "demo-reports-write", 5 * time.Minute},
		// D is a Principal, but B and C are Seniors: D acts as a Senior.
		{"D under C's grant", ch.d, ch.cd, "reports-read", ids(ch.a, ch.b, ch.c, ch.d), "demo-reports-read", 5 * time.Minute},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.who.mustFetch(t, tt.role, tt.grant.GetId())
			tokens[tt.name] = c.GetToken()
			if !slices.Equal(c.GetChain(), tt.chain) {
				t.Errorf("chain = %q, want %q", c.GetChain(), tt.chain)
			}
			if c.GetGrantId() != tt.grant.GetId() || c.GetLevel() != brokerv1.Level_LEVEL_SENIOR || !slices.Equal(c.GetPolicies(), []string{tt.policy}) {
				t.Errorf("credential = grant %s, level %s, policies %q", c.GetGrantId(), c.GetLevel(), c.GetPolicies())
			}
			if d := time.Until(c.GetExpiresAt().AsTime()); d > tt.maxTTL+time.Second {
				t.Errorf("credential lives %s, want at most %s", d, tt.maxTTL)
			}
			s, err := f.Lookup(t, c.GetToken())
			if err != nil {
				t.Fatalf("Vault rejects the token: %v", err)
			}
			if pols, _ := s.TokenPolicies(); !slices.Equal(pols, []string{tt.policy}) {
				t.Errorf("Vault says policies %q, want only %s", pols, tt.policy)
			}
			if uses := fmt.Sprint(s.Data["num_uses"]); uses != "100" {
				t.Errorf("Vault says num_uses %s, want the root Principal's 100", uses)
			}
			meta, _ := s.TokenMetadata()
			if meta["atf_grant_id"] != tt.grant.GetId() || meta["atf_chain"] != strings.Join(tt.chain, " > ") ||
				meta["atf_agent"] != tt.who.id.String() || meta["atf_level"] != "senior" || meta["atf_role"] != tt.role {
				t.Errorf("token metadata = %v", meta)
			}
		})
	}

	// C's grant to D names reports-read only: D may not turn it into a
	// write credential, though its own manifest names reports-write.
	_, err := ch.d.fetch(t.Context(), "reports-write", ch.cd.GetId())
	brokertest.WantCode(t, err, codes.PermissionDenied, `role "reports-write" is not in agent`)
	// In Vault the read token reads but cannot write; C's write token writes.
	d := f.VaultAs(t, tokens["D under C's grant"])
	if s, err := d.Logical().ReadWithContext(t.Context(), "secret/data/demo/reports"); err != nil || s == nil {
		t.Errorf("D's read token cannot read: %v", err)
	}
	payload := map[string]any{"data": map[string]any{"summary": "written under a delegation"}}
	if _, err := d.Logical().WriteWithContext(t.Context(), "secret/data/demo/reports", payload); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("D's read token writing: err = %v, want permission denied", err)
	}
	if _, err := f.VaultAs(t, tokens["C under B's grant"]).Logical().WriteWithContext(t.Context(), "secret/data/demo/reports", payload); err != nil {
		t.Errorf("C's write token cannot write: %v", err)
	}

	// A grant is usable only by its delegatee.
	_, err = ch.c.fetch(t.Context(), "reports-read", ch.cd.GetId())
	brokertest.WantCode(t, err, codes.NotFound, "does not exist or was not given to "+ch.c.id.String())
	_, err = ch.c.fetch(t.Context(), "reports-read", "0123456789abcdef0123456789abcdef")
	brokertest.WantCode(t, err, codes.NotFound, "does not exist or was not given to")
}

// The level under a grant is the lowest along the chain: a Principal's
// write grant is useless to an Intern, and demoting an agent in the middle
// of a chain to Intern caps everyone below it (and stops the chain growing).
func TestDelegationLevelIsChainMinimum(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))

	t.Run("Principal to Intern", func(t *testing.T) {
		p := e.register(t, "principal", brokerv1.Level_LEVEL_PRINCIPAL, reportsRW...)
		intern := e.register(t, "intern", brokerv1.Level_LEVEL_INTERN, reportsRW...)
		g := p.mustDelegate(t, intern.id, "", 30*time.Minute, 0, reportsRW...)
		_, err := intern.fetch(t.Context(), "reports-write", g.GetId())
		brokertest.WantCode(t, err, codes.PermissionDenied, `role "reports-write" is not in agent`)
		c := intern.mustFetch(t, "reports-read", g.GetId())
		if c.GetLevel() != brokerv1.Level_LEVEL_INTERN || !slices.Equal(c.GetPolicies(), []string{"demo-reports-read"}) {
			t.Errorf("intern's credential: level %s, policies %q", c.GetLevel(), c.GetPolicies())
		}
	})

	t.Run("demotions", func(t *testing.T) {
		ch := e.chain(t)
		below := ch.below(t)
		demote := func(a delegAgent) {
			t.Helper()
			intern := brokerv1.Level_LEVEL_INTERN
			if _, err := e.admin.UpdateAgent(t.Context(), &adminv1.UpdateAgentRequest{SpiffeId: a.id.String(), Level: &intern}); err != nil {
				t.Fatal(err)
			}
		}
		// D, a Principal that gave nothing, demoted: under C's grant it now
		// acts as an Intern.
		demote(ch.d)
		c := ch.d.mustFetch(t, "reports-read", ch.cd.GetId())
		if c.GetLevel() != brokerv1.Level_LEVEL_INTERN {
			t.Errorf("D under C's grant after its demotion: level %s, want intern", c.GetLevel())
		}
		if s, err := f.Lookup(t, c.GetToken()); err != nil {
			t.Fatal(err)
		} else if meta, _ := s.TokenMetadata(); meta["atf_level"] != "intern" {
			t.Errorf("token metadata atf_level = %q, want intern", meta["atf_level"])
		}

		// B demoted: an Intern backs no grant, so B's grant to C goes, with
		// everything below it; under A's grant B itself acts as an Intern.
		demote(ch.b)
		e.wantDead(t, map[string]string{"C under B→C": below["C under B→C"], "D under C→D": below["D under C→D"], "D as an intern": c.GetToken()})
		_, err := ch.c.fetch(t.Context(), "reports-read", ch.bc.GetId())
		brokertest.WantCode(t, err, codes.PermissionDenied, "grant revoked: grant "+ch.bc.GetId())
		_, err = ch.b.fetch(t.Context(), "reports-write", ch.ab.GetId())
		brokertest.WantCode(t, err, codes.PermissionDenied, `role "reports-write" is not in agent`)
		if c := ch.b.mustFetch(t, "reports-read", ch.ab.GetId()); c.GetLevel() != brokerv1.Level_LEVEL_INTERN {
			t.Errorf("B under A's grant after its demotion: level %s, want intern", c.GetLevel())
		}
	})
}

// An admin's RevokeLineage of B's grant kills B's, C's and D's tokens in
// Vault before it answers, and leaves A's own authority alone; from then on
// nothing is issued under the revoked grants.
func TestRevokeLineageKillsDescendants(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	ch := e.chain(t)
	own := map[string]string{
		"A's own": ch.a.mustFetch(t, "reports-read", "").GetToken(),
		"B's own": ch.b.mustFetch(t, "reports-read", "").GetToken(),
	}
	below := ch.below(t)

	sum := e.revokeLineage(t, ch.ab.GetId(), "compromised")
	e.wantDead(t, below)
	e.wantAlive(t, own)
	if sum.GetGrantsRevoked() != 3 || sum.GetCredentialsRevoked() != 3 || sum.GetVaultPending() != 0 || sum.GetVaultConfirmed() < 1 {
		t.Errorf("summary = %v, want 3 grants, 3 credentials, all confirmed by Vault", sum)
	}
	if sum.GetCommitDuration().AsDuration() <= 0 || sum.GetTotalDuration().AsDuration() < sum.GetCommitDuration().AsDuration() {
		t.Errorf("summary durations: commit %s, total %s", sum.GetCommitDuration().AsDuration(), sum.GetTotalDuration().AsDuration())
	}

	for _, tt := range []struct {
		who   delegAgent
		role  string
		grant string
	}{{ch.b, "reports-write", ch.ab.GetId()}, {ch.c, "reports-write", ch.bc.GetId()}, {ch.d, "reports-read", ch.cd.GetId()}} {
		_, err := tt.who.fetch(t.Context(), tt.role, tt.grant)
		brokertest.WantCode(t, err, codes.PermissionDenied, "grant revoked: grant "+ch.ab.GetId(), "was revoked at")
	}
	other := e.register(t, "other", brokerv1.Level_LEVEL_SENIOR, "reports-read")
	_, err := ch.c.delegate(t.Context(), other.id, ch.bc.GetId(), time.Minute, 0, "reports-read")
	brokertest.WantCode(t, err, codes.PermissionDenied, "grant revoked")
	e.wantRevokedLineage(t, ch.ab.GetId(), 3)

	// A's own credential is still listed live in A's lineage.
	l := e.lineage(t, &adminv1.GetLineageRequest{Root: &adminv1.GetLineageRequest_AgentId{AgentId: ch.a.id.String()}})
	if len(l.GetCredentials()) != 1 || l.GetCredentials()[0].GetAgentId() != ch.a.id.String() || l.GetCredentials()[0].GetGrantId() != "" {
		t.Errorf("A's lineage credentials = %v, want A's own only", l.GetCredentials())
	}

	// Revoking again finds nothing left to revoke.
	if again := e.revokeLineage(t, ch.ab.GetId(), "again"); again.GetGrantsRevoked() != 0 || again.GetCredentialsRevoked() != 0 || again.GetVaultPending() != 0 {
		t.Errorf("second revocation = %v, want nothing", again)
	}
	// A's own authority still delegates; the new grant works.
	g := ch.a.mustDelegate(t, ch.b.id, "", 10*time.Minute, 0, "reports-read")
	e.wantAlive(t, map[string]string{"B under a new grant": ch.b.mustFetch(t, "reports-read", g.GetId()).GetToken()})
}

// RevokeGrant is for the delegator and those above it in the chain; anyone
// else, the delegatee included, is refused.
func TestRevokeGrantByDelegatorOrAncestor(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	ch := e.chain(t)
	stranger := e.register(t, "stranger", brokerv1.Level_LEVEL_PRINCIPAL, reportsRW...)
	below := ch.below(t)
	revoke := func(a delegAgent, grant string) (*brokerv1.RevocationSummary, error) {
		r, err := a.bc.RevokeGrant(t.Context(), &brokerv1.RevokeGrantRequest{GrantId: grant, Reason: "test"})
		return r.GetSummary(), err
	}

	_, err := revoke(stranger, ch.bc.GetId())
	brokertest.WantCode(t, err, codes.NotFound, "grant "+ch.bc.GetId()+" does not exist or was not given, nor any grant above it, by "+stranger.id.String())
	_, err = revoke(ch.c, ch.bc.GetId())
	brokertest.WantCode(t, err, codes.NotFound, "does not exist or was not given")
	_, err = revoke(ch.d, ch.ab.GetId())
	brokertest.WantCode(t, err, codes.NotFound, "does not exist or was not given")
	_, err = revoke(ch.a, "0123456789abcdef0123456789abcdef")
	brokertest.WantCode(t, err, codes.NotFound, "does not exist or was not given")
	e.wantAlive(t, below)

	// A, two grants above, revokes C's grant to D.
	sum, err := revoke(ch.a, ch.cd.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if sum.GetGrantsRevoked() != 1 || sum.GetCredentialsRevoked() != 1 || sum.GetVaultPending() != 0 {
		t.Errorf("A revoking C→D: %v", sum)
	}
	e.wantDead(t, map[string]string{"D": below["D under C→D"]})
	e.wantAlive(t, map[string]string{"B": below["B under A→B"], "C": below["C under B→C"]})

	// B, the delegator, revokes its grant to C.
	sum, err = revoke(ch.b, ch.bc.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if sum.GetGrantsRevoked() != 1 || sum.GetCredentialsRevoked() != 1 || sum.GetVaultPending() != 0 {
		t.Errorf("B revoking B→C: %v", sum)
	}
	e.wantDead(t, map[string]string{"C": below["C under B→C"]})
	e.wantAlive(t, map[string]string{"B": below["B under A→B"]})
	_, err = ch.c.fetch(t.Context(), "reports-read", ch.bc.GetId())
	brokertest.WantCode(t, err, codes.PermissionDenied, "grant revoked: grant "+ch.bc.GetId())
	_, err = ch.b.fetch(t.Context(), "reports-read", ch.ab.GetId())
	if err != nil {
		t.Errorf("B under its still-live grant: %v", err)
	}
}

// Revoking a grant's Vault anchor in Vault alone, bypassing the broker,
// kills every token below it. A restarted broker, and a running one that
// finds its anchor refused, replace the anchor and serve the grant again.
func TestVaultCascadeWithoutBroker(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	e := newDelegEnv(t, f, cfg)
	ch := e.chain(t)
	own := map[string]string{"A's own": ch.a.mustFetch(t, "reports-read", "").GetToken()}
	bCred := ch.b.mustFetch(t, "reports-write", ch.ab.GetId())
	below := map[string]string{
		"B under A→B": bCred.GetToken(),
		"C under B→C": ch.c.mustFetch(t, "reports-write", ch.bc.GetId()).GetToken(),
		"D under C→D": ch.d.mustFetch(t, "reports-read", ch.cd.GetId()).GetToken(),
	}

	// Only the store knows the anchors' accessors; read it with the broker
	// stopped (it holds the file's lock).
	e.b.Stop()
	st, err := store.Open(cfg.StorePath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := st.Credentials(ch.b.id.String())
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(creds, func(c store.Credential) bool { return c.Accessor == bCred.GetAccessor() })
	if i < 0 || creds[i].Anchor == "" {
		t.Fatalf("B's credential under A→B is not recorded with its anchor: %v", creds)
	}
	root := f.Stack.VaultClient()
	s, err := root.Auth().Token().LookupAccessorWithContext(t.Context(), creds[i].Anchor)
	if err != nil {
		t.Fatalf("the recorded anchor is not in Vault: %v", err)
	}
	// The credential hangs on A→B's role anchor for its role, which hangs
	// on A→B's own anchor: that one goes, behind the broker's back.
	if meta, _ := s.TokenMetadata(); meta["atf_node"] != store.RoleNode(store.GrantNode(ch.ab.GetId()), "reports-write") {
		t.Fatalf("the recorded anchor is for %q, want A→B's reports-write role node", meta["atf_node"])
	}
	anchor := ""
	for acc := range vaultAccessorSet(t, f) {
		if s, err := root.Auth().Token().LookupAccessorWithContext(t.Context(), acc); err == nil {
			if meta, _ := s.TokenMetadata(); meta["atf_node"] == store.GrantNode(ch.ab.GetId()) {
				anchor = acc
			}
		}
	}
	if anchor == "" {
		t.Fatal("no Vault anchor for A→B's node")
	}
	if err := root.Auth().Token().RevokeAccessorWithContext(t.Context(), anchor); err != nil {
		t.Fatal(err)
	}
	e.wantDead(t, below)
	e.wantAlive(t, own)

	// A restarted broker has no anchor in memory and makes new ones.
	e.start(t)
	e.redial(t, &ch.b)
	before := vaultAccessorSet(t, f)
	healed := ch.b.mustFetch(t, "reports-read", ch.ab.GetId())
	e.wantAlive(t, map[string]string{"B after the restart": healed.GetToken()})

	// Behind the running broker's back: the new anchor is the new token
	// whose metadata names A→B's node.
	anchor = ""
	for acc := range vaultAccessorSet(t, f) {
		if before[acc] || acc == healed.GetAccessor() {
			continue
		}
		s, err := root.Auth().Token().LookupAccessorWithContext(t.Context(), acc)
		if err != nil {
			continue // gone since the listing
		}
		if meta, _ := s.TokenMetadata(); meta["atf_node"] == store.GrantNode(ch.ab.GetId()) {
			anchor = acc
		}
	}
	if anchor == "" {
		t.Fatal("no new Vault anchor for A→B")
	}
	if err := root.Auth().Token().RevokeAccessorWithContext(t.Context(), anchor); err != nil {
		t.Fatal(err)
	}
	e.wantDead(t, map[string]string{"B after the restart": healed.GetToken()})
	again := ch.b.mustFetch(t, "reports-read", ch.ab.GetId())
	e.wantAlive(t, map[string]string{"B after Vault refused the anchor": again.GetToken()})
}

// vaultAccessorSet lists every token accessor Vault holds, as root.
func vaultAccessorSet(t *testing.T, f *brokertest.Fixture) map[string]bool {
	t.Helper()
	s, err := f.Stack.VaultClient().Logical().ListWithContext(t.Context(), "auth/token/accessors")
	if err != nil || s == nil {
		t.Fatalf("list accessors: %v", err)
	}
	keys, _ := s.Data["keys"].([]any)
	out := make(map[string]bool, len(keys))
	for _, k := range keys {
		if acc, ok := k.(string); ok {
			out[acc] = true
		}
	}
	return out
}

// Concurrent FetchCredential and Delegate calls throughout a lineage while
// an admin revokes it: once RevokeLineage has returned, no token the broker
// handed out in the lineage is alive in Vault, every call that started
// after it failed, and every grant made during the race is revoked.
func TestRevokeLineageRace(t *testing.T) {
	const (
		calls = 1000
		// Delegations per delegator: short of MaxFanOut (16), with B→C and
		// C→D already out.
		delegations = 14
	)
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	ch := e.chain(t)
	ctx := t.Context()

	var (
		mu       sync.Mutex
		tokens   []string                  // every token handed out
		grants   = map[string]delegAgent{} // every grant made during the race, and its delegatee
		lateOK   []int                     // calls that started after the revocation returned, yet succeeded
		refusals = map[codes.Code]int{}
	)
	issue := func(a delegAgent, role, grant string) error {
		c, err := a.fetch(ctx, role, grant)
		if err == nil {
			mu.Lock()
			tokens = append(tokens, c.GetToken())
			mu.Unlock()
		}
		return err
	}
	delegateAndUse := func(from, to delegAgent, parent string) error {
		g, err := from.delegate(ctx, to.id, parent, 10*time.Minute, 0, "reports-read")
		if err != nil {
			return err
		}
		mu.Lock()
		grants[g.GetId()] = to
		mu.Unlock()
		return issue(to, "reports-read", g.GetId())
	}

	var (
		completed atomic.Int32
		revoked   atomic.Bool
		after     atomic.Int32
		summary   = make(chan *brokerv1.RevocationSummary, 1)
	)
	revoke := func() {
		r, err := e.admin.RevokeLineage(ctx, &adminv1.RevokeLineageRequest{Root: &adminv1.RevokeLineageRequest_GrantId{GrantId: ch.ab.GetId()}, Reason: "race"})
		if err != nil {
			t.Errorf("RevokeLineage: %v", err)
		}
		revoked.Store(true)
		summary <- r.GetSummary()
	}
	before := vaultAccessorSet(t, f)
	step := calls/delegations + 1
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range calls {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			late := revoked.Load()
			var err error
			switch {
			case i%step == 0:
				err = delegateAndUse(ch.b, ch.c, ch.ab.GetId())
			case i%step == 1:
				err = delegateAndUse(ch.c, ch.d, ch.bc.GetId())
			case i%3 == 0:
				err = issue(ch.b, "reports-write", ch.ab.GetId())
			case i%3 == 1:
				err = issue(ch.c, "reports-read", ch.bc.GetId())
			default:
				err = issue(ch.d, "reports-read", ch.cd.GetId())
			}
			mu.Lock()
			switch code := status.Code(err); {
			case late && err == nil:
				lateOK = append(lateOK, i)
			case code == codes.OK:
			case code == codes.PermissionDenied:
				refusals[code]++
			default:
				refusals[code]++
				t.Errorf("call %d: %v", i, err)
			}
			mu.Unlock()
			if late {
				after.Add(1)
			}
			if completed.Add(1) == calls/3 {
				go revoke()
			}
		})
	}
	wg.Wait()
	sum := <-summary
	elapsed := time.Since(start)

	if len(lateOK) > 0 {
		t.Errorf("%d calls that started after RevokeLineage returned succeeded: %v", len(lateOK), lateOK)
	}
	if sum.GetVaultPending() != 0 {
		t.Errorf("summary = %v: Vault did not confirm everything", sum)
	}
	if len(tokens) == 0 {
		t.Fatal("no credential was issued before the revocation: the race did not happen")
	}
	// Every token handed out is dead in Vault.
	var alive atomic.Int32
	work := make(chan string)
	var lookups sync.WaitGroup
	for range 16 {
		lookups.Go(func() {
			for tok := range work {
				if !f.Dead(t, tok) {
					alive.Add(1)
				}
			}
		})
	}
	for _, tok := range tokens {
		work <- tok
	}
	close(work)
	lookups.Wait()
	if n := alive.Load(); n > 0 {
		t.Errorf("%d of %d tokens handed out in the lineage are alive in Vault after RevokeLineage returned", n, len(tokens))
	}

	// The broker's view: every grant revoked, none live below.
	l := e.lineage(t, &adminv1.GetLineageRequest{Root: &adminv1.GetLineageRequest_GrantId{GrantId: ch.ab.GetId()}})
	inLineage := map[string]bool{}
	for _, g := range l.GetGrants() {
		inLineage[g.GetId()] = true
		if g.GetRevokedAt() == nil {
			t.Errorf("grant %s (%s → %s) survived the revocation", g.GetId(), g.GetDelegator(), g.GetDelegatee())
		}
	}
	for g := range grants {
		if !inLineage[g] {
			t.Errorf("grant %s made during the race is not in the lineage", g)
		}
	}
	if n := len(l.GetCredentials()); n != 0 {
		t.Errorf("%d credentials in the lineage are still live in the broker", n)
	}
	if int(sum.GetCredentialsRevoked()) != len(tokens) {
		t.Errorf("the revocation revoked %d credentials; %d were handed out", sum.GetCredentialsRevoked(), len(tokens))
	}
	// Nor is any token Vault made for the lineage during the race alive,
	// handed out or not: credentials refused after issuance, anchors.
	root := f.Stack.VaultClient()
	for acc := range vaultAccessorSet(t, f) {
		if before[acc] {
			continue
		}
		s, err := root.Auth().Token().LookupAccessorWithContext(ctx, acc)
		if err != nil {
			continue // revoked since the listing
		}
		meta, _ := s.TokenMetadata()
		if g, _ := strings.CutPrefix(meta["atf_node"], "grant:"); inLineage[g] || inLineage[meta["atf_grant_id"]] {
			t.Errorf("Vault token %s made during the race is alive: %v", acc, meta)
		}
	}
	// Further calls fail.
	made := len(grants)
	grants[ch.ab.GetId()], grants[ch.bc.GetId()], grants[ch.cd.GetId()] = ch.b, ch.c, ch.d
	for g, who := range grants {
		_, err := who.fetch(ctx, "reports-read", g)
		brokertest.WantCode(t, err, codes.PermissionDenied, "grant revoked")
	}
	_, err := ch.b.delegate(ctx, ch.c.id, ch.ab.GetId(), time.Minute, 0, "reports-read")
	brokertest.WantCode(t, err, codes.PermissionDenied, "grant revoked")
	t.Logf("%d calls in %s: %d tokens and %d grants handed out, %d calls started after the revocation returned, refusals %v; revocation: %v",
		calls, elapsed.Round(time.Millisecond), len(tokens), made, after.Load(), refusals, sum)
}

// With Vault unreachable, RevokeLineage still commits and the broker denies
// at once; the Vault side is queued and finished once Vault is back, by the
// same broker or by a restarted one.
func TestRevokeLineageVaultDown(t *testing.T) {
	for _, restart := range []bool{false, true} {
		name := "Vault back"
		if restart {
			name = "Vault back after a broker restart"
		}
		t.Run(name, func(t *testing.T) {
			f := brokertest.Setup(t)
			proxy := brokertest.NewFaultProxy(t, strings.TrimPrefix(f.Stack.VaultAddr, "http://"))
			cfg := f.Config(t, t.TempDir())
			cfg.Vault.Address = proxy.URL()
			e := newDelegEnv(t, f, cfg)
			ch := e.chain(t)
			own := map[string]string{"A's own": ch.a.mustFetch(t, "reports-read", "").GetToken()}
			below := ch.below(t)

			proxy.Down()
			sum := e.revokeLineage(t, ch.ab.GetId(), "compromised")
			// Three grant anchors hold the three credentials.
			if sum.GetGrantsRevoked() != 3 || sum.GetCredentialsRevoked() != 3 || sum.GetVaultConfirmed() != 0 || sum.GetVaultPending() != 3 {
				t.Errorf("summary with Vault down = %v, want 3 grants, 3 credentials, 3 pending", sum)
			}
			denied := func() {
				t.Helper()
				for _, tt := range []struct {
					who   delegAgent
					grant string
				}{{ch.b, ch.ab.GetId()}, {ch.c, ch.bc.GetId()}, {ch.d, ch.cd.GetId()}} {
					_, err := tt.who.fetch(t.Context(), "reports-read", tt.grant)
					brokertest.WantCode(t, err, codes.PermissionDenied, "grant revoked")
				}
			}
			denied()
			e.wantRevokedLineage(t, ch.ab.GetId(), 3)
			// Vault has not heard of it yet.
			e.wantAlive(t, below)

			if restart {
				e.b.Stop()
				st, err := store.Open(cfg.StorePath, store.Options{})
				if err != nil {
					t.Fatal(err)
				}
				pending, err := st.PendingRevocations()
				st.Close()
				if err != nil || len(pending) != 3 {
					t.Fatalf("queue after stop = %v, %v; want the three grant anchors", pending, err)
				}
				proxy.Restore(t)
				e.start(t)
				e.redial(t, &ch.b, &ch.c, &ch.d)
				denied()
			} else {
				proxy.Restore(t)
			}
			devtest.WaitFor(t, 30*time.Second, "the queued revocations to reach Vault", func() bool {
				for _, tok := range below {
					if !f.Dead(t, tok) {
						return false
					}
				}
				return true
			})
			e.wantAlive(t, own)
			e.wantRevokedLineage(t, ch.ab.GetId(), 3)
		})
	}
}

// A watcher hears of a revocation that hits it, with its credentials'
// accessors and its grants, as soon as the revocation is done; an agent it
// does not hit hears nothing.
func TestWatchRevocationsOnLineageRevocation(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	ch := e.chain(t)
	aOwn := ch.a.mustFetch(t, "reports-read", "")
	bCred := ch.b.mustFetch(t, "reports-write", ch.ab.GetId())
	cCred := ch.c.mustFetch(t, "reports-read", ch.bc.GetId())

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	watch := func(a delegAgent) grpc.ServerStreamingClient[brokerv1.WatchRevocationsResponse] {
		t.Helper()
		s, err := a.bc.WatchRevocations(ctx, &brokerv1.WatchRevocationsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		// The header says the watch is in place.
		if _, err := s.Header(); err != nil {
			t.Fatalf("watch header: %v", err)
		}
		return s
	}
	aw, bw, cw, dw := watch(ch.a), watch(ch.b), watch(ch.c), watch(ch.d)

	e.revokeLineage(t, ch.ab.GetId(), "compromised")
	done := time.Now()
	for _, tt := range []struct {
		name      string
		w         grpc.ServerStreamingClient[brokerv1.WatchRevocationsResponse]
		grant     string
		accessors []string
	}{
		{"B", bw, ch.ab.GetId(), []string{bCred.GetAccessor()}},
		{"C", cw, ch.bc.GetId(), []string{cCred.GetAccessor()}},
		{"D", dw, ch.cd.GetId(), nil},
	} {
		ev, err := tt.w.Recv()
		if err != nil {
			t.Fatalf("%s's watch: %v", tt.name, err)
		}
		if !slices.Equal(ev.GetGrantIds(), []string{tt.grant}) || !slices.Equal(ev.GetAccessors(), tt.accessors) || ev.GetReason() != "compromised" || ev.GetTime() == nil {
			t.Errorf("%s's event = %v, want grant %s and accessors %q", tt.name, ev, tt.grant, tt.accessors)
		}
	}
	if d := time.Since(done); d > 2*time.Second {
		t.Errorf("events arrived %s after RevokeLineage returned", d)
	}

	// A lost nothing: the first event it sees is for its own credential,
	// revoked next.
	if _, err := e.admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: ch.a.id.String()}, Reason: "rotate"}); err != nil {
		t.Fatal(err)
	}
	ev, err := aw.Recv()
	if err != nil {
		t.Fatalf("A's watch: %v", err)
	}
	if len(ev.GetGrantIds()) != 0 || !slices.Equal(ev.GetAccessors(), []string{aOwn.GetAccessor()}) || ev.GetReason() != "rotate" {
		t.Errorf("A's first event = %v, want only its own credential, revoked by the second call", ev)
	}
}

// Deregistering a delegator revokes every grant it gave, under its own
// authority or under a grant it received, and everything below them; grants
// above it and other agents' own credentials are untouched.
func TestDeregisterDelegatorRevokesItsGrants(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	ch := e.chain(t)
	z := e.register(t, "z", brokerv1.Level_LEVEL_PRINCIPAL, reportsRW...)
	x := e.register(t, "x", brokerv1.Level_LEVEL_SENIOR, "reports-read")
	za := z.mustDelegate(t, ch.a.id, "", time.Hour, 2, reportsRW...)
	ax := ch.a.mustDelegate(t, x.id, za.GetId(), 30*time.Minute, 0, "reports-read")

	dead := ch.below(t)
	dead["X under A→X"] = x.mustFetch(t, "reports-read", ax.GetId()).GetToken()
	dead["A's own"] = ch.a.mustFetch(t, "reports-read", "").GetToken()
	dead["A under Z→A"] = ch.a.mustFetch(t, "reports-read", za.GetId()).GetToken()
	alive := map[string]string{
		"B's own": ch.b.mustFetch(t, "reports-read", "").GetToken(),
		"Z's own": z.mustFetch(t, "reports-read", "").GetToken(),
	}

	r, err := e.admin.DeregisterAgent(t.Context(), &adminv1.DeregisterAgentRequest{SpiffeId: ch.a.id.String(), Reason: "compromised"})
	if err != nil {
		t.Fatal(err)
	}
	if r.GetCredentialsRevoked() != int32(len(dead)) || r.GetRevocationsPending() != 0 {
		t.Errorf("deregistration revoked %d credentials, %d pending; want %d, 0", r.GetCredentialsRevoked(), r.GetRevocationsPending(), len(dead))
	}
	e.wantDead(t, dead)
	e.wantAlive(t, alive)

	_, err = ch.b.fetch(t.Context(), "reports-read", ch.ab.GetId())
	brokertest.WantCode(t, err, codes.PermissionDenied, "grant revoked: grant "+ch.ab.GetId())
	_, err = x.fetch(t.Context(), "reports-read", ax.GetId())
	brokertest.WantCode(t, err, codes.PermissionDenied, "grant revoked: grant "+ax.GetId())
	l := e.lineage(t, &adminv1.GetLineageRequest{Root: &adminv1.GetLineageRequest_AgentId{AgentId: ch.a.id.String()}})
	var revoked []string
	for _, g := range l.GetGrants() {
		if g.GetRevokedAt() != nil {
			revoked = append(revoked, g.GetId())
		}
	}
	slices.Sort(revoked)
	want := []string{ch.ab.GetId(), ch.bc.GetId(), ch.cd.GetId(), ax.GetId()}
	slices.Sort(want)
	if !slices.Equal(revoked, want) || len(l.GetGrants()) != len(want) || len(l.GetCredentials()) != 0 {
		t.Errorf("A's lineage after deregistration: grants %v, credentials %v", l.GetGrants(), l.GetCredentials())
	}
	// Z's grant to A is not A's to lose, but nothing can use it now.
	zl := e.lineage(t, &adminv1.GetLineageRequest{Root: &adminv1.GetLineageRequest_GrantId{GrantId: za.GetId()}})
	if zl.GetGrants()[0].GetRevokedAt() != nil {
		t.Errorf("Z→A was revoked by A's deregistration")
	}
	_, err = ch.a.fetch(t.Context(), "reports-read", za.GetId())
	brokertest.WantCode(t, err, codes.PermissionDenied, "deregistered")
}
