package delegation_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/delegation"
)

const (
	idA = "spiffe://td/a"
	idB = "spiffe://td/b"
	idC = "spiffe://td/c"
	idD = "spiffe://td/d"
	idE = "spiffe://td/e"
	idI = "spiffe://td/intern"
)

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// agent is an active agent at level with a four-role manifest.
func agent(id string, level delegation.Level) delegation.Agent {
	return delegation.Agent{ID: id, Level: level, Active: true, Roles: []string{"db-read", "db-write", "logs-read", "tickets-write"}}
}

// grant is a live grant at depth under parent, expiring in two hours.
func grant(id, parent, from, to string, depth, maxDepth int, roles ...string) delegation.Grant {
	return delegation.Grant{
		ID: id, ParentID: parent, Delegator: from, Delegatee: to, Roles: roles,
		ExpiresAt: now.Add(2 * time.Hour), MaxDepth: maxDepth, Depth: depth, CreatedAt: now.Add(-time.Hour),
	}
}

// baseRequest is valid: B (Senior), acting under g1 from A (Principal),
// gives C (Senior) db-read for an hour. Each refusal case breaks one thing.
func baseRequest() delegation.Request {
	c := agent(idC, delegation.Senior)
	return delegation.Request{
		Delegator: agent(idB, delegation.Senior),
		Delegatee: &c,
		Chain:     []delegation.Grant{grant("g1", "", idA, idB, 1, 2, "db-read", "db-write", "logs-read")},
		Ancestors: map[string]delegation.Agent{idA: agent(idA, delegation.Principal)},
		Roles:     []string{"db-read"},
		TTL:       time.Hour,
	}
}

// extended returns baseRequest with a second hop, g2 from B to C, so that C
// is the delegator and A and B its ancestors.
func extended() delegation.Request {
	req := baseRequest()
	req.Chain = append(req.Chain, grant("g2", "g1", idB, idC, 2, 1, "db-read", "db-write"))
	req.Ancestors[idB] = req.Delegator
	req.Delegator = *req.Delegatee
	d := agent(idD, delegation.Principal)
	req.Delegatee = &d
	return req
}

func TestCheckBase(t *testing.T) {
	for name, req := range map[string]delegation.Request{"base": baseRequest(), "extended": extended()} {
		if _, err := delegation.DefaultRules().Check(req, now); err != nil {
			t.Errorf("%s request: Check: %v", name, err)
		}
	}
}

func TestCheckRefusals(t *testing.T) {
	for _, tt := range []struct {
		name string
		req  func() delegation.Request
		err  error
		msg  string
	}{
		{
			name: "unknown delegatee",
			req:  with(baseRequest, func(r *delegation.Request) { r.Delegatee = nil }),
			err:  delegation.ErrUnknownDelegatee,
			msg:  "delegation: unknown delegatee: the delegatee is not a registered agent; check its SPIFFE ID or register it first",
		},
		{
			name: "delegatee inactive",
			req:  with(baseRequest, func(r *delegation.Request) { r.Delegatee.Active = false }),
			err:  delegation.ErrDelegateeInactive,
			msg:  "delegation: delegatee is not active: agent spiffe://td/c is deregistered or killed and may receive no authority",
		},
		{
			name: "self-delegation under a grant",
			req:  with(baseRequest, func(r *delegation.Request) { r.Delegatee = &r.Delegator }),
			err:  delegation.ErrSelfDelegation,
			msg:  "delegation: self-delegation: agent spiffe://td/b may not delegate to itself; it already holds its own authority",
		},
		{
			name: "self-delegation of own authority (A→A)",
			req: with(baseRequest, func(r *delegation.Request) {
				r.Delegator, r.Chain = agent(idA, delegation.Principal), nil
				r.Delegatee = &r.Delegator
			}),
			err: delegation.ErrSelfDelegation,
			msg: "delegation: self-delegation: agent spiffe://td/a may not delegate to itself; it already holds its own authority",
		},
		{
			name: "cycle back to the root (A→B→A)",
			req: with(baseRequest, func(r *delegation.Request) {
				a := agent(idA, delegation.Principal)
				r.Delegatee = &a
			}),
			err: delegation.ErrCycle,
			msg: "delegation: cycle: agent spiffe://td/a already appears in the chain spiffe://td/a → spiffe://td/b; authority may not flow back up a chain",
		},
		{
			name: "cycle back to the root (A→B→C→A)",
			req: with(extended, func(r *delegation.Request) {
				a := agent(idA, delegation.Principal)
				r.Delegatee = &a
			}),
			err: delegation.ErrCycle,
			msg: "delegation: cycle: agent spiffe://td/a already appears in the chain spiffe://td/a → spiffe://td/b → spiffe://td/c; authority may not flow back up a chain",
		},
		{
			name: "cycle to the middle (A→B→C→B)",
			req: with(extended, func(r *delegation.Request) {
				b := agent(idB, delegation.Senior)
				r.Delegatee = &b
			}),
			err: delegation.ErrCycle,
			msg: "delegation: cycle: agent spiffe://td/b already appears in the chain spiffe://td/a → spiffe://td/b → spiffe://td/c; authority may not flow back up a chain",
		},
		{
			name: "delegator inactive",
			req:  with(baseRequest, func(r *delegation.Request) { r.Delegator.Active = false }),
			err:  delegation.ErrAgentInactive,
			msg:  "delegation: agent is not active: agent spiffe://td/b is deregistered or killed and holds no authority",
		},
		{
			name: "ancestor killed",
			req:  with(baseRequest, func(r *delegation.Request) { r.Ancestors[idA] = delegation.Agent{ID: idA, Level: delegation.Principal} }),
			err:  delegation.ErrAncestorInactive,
			msg:  "delegation: ancestor is not active: spiffe://td/a, which gave grant g1, is deregistered or killed; every grant below it is void",
		},
		{
			name: "ancestor no longer registered",
			req:  with(baseRequest, func(r *delegation.Request) { delete(r.Ancestors, idA) }),
			err:  delegation.ErrAncestorInactive,
			msg:  "delegation: ancestor is not active: spiffe://td/a, which gave grant g1, is no longer registered; every grant below it is void",
		},
		{
			name: "ancestor demoted to a level that may not delegate",
			req:  with(extended, func(r *delegation.Request) { r.Ancestors[idB] = agent(idB, delegation.Junior) }),
			err:  delegation.ErrAncestorLevel,
			msg:  "delegation: ancestor may no longer delegate: spiffe://td/b, which gave grant g2 in this chain, is now at level junior, which may not delegate; the chain cannot be extended",
		},
		{
			name: "grant in the chain revoked",
			req:  with(extended, func(r *delegation.Request) { r.Chain[0].RevokedAt = now.Add(-time.Minute) }),
			err:  delegation.ErrGrantRevoked,
			msg:  "delegation: grant revoked: grant g1 (spiffe://td/a → spiffe://td/b) was revoked at 2026-03-01T11:59:00Z",
		},
		{
			name: "grant in the chain expired",
			req:  with(extended, func(r *delegation.Request) { r.Chain[1].ExpiresAt = now }),
			err:  delegation.ErrGrantExpired,
			msg:  "delegation: grant expired: grant g2 (spiffe://td/b → spiffe://td/c) expired at 2026-03-01T12:00:00Z; ask spiffe://td/b for a new grant",
		},
		{
			name: "junior may not delegate",
			req:  with(baseRequest, func(r *delegation.Request) { r.Delegator.Level = delegation.Junior }),
			err:  delegation.ErrLevelMayNotDelegate,
			msg:  "delegation: level may not delegate: agent spiffe://td/b is at level junior, which may not delegate",
		},
		{
			name: "intern may not delegate its own authority",
			req: with(baseRequest, func(r *delegation.Request) {
				r.Delegator, r.Chain = agent(idI, delegation.Intern), nil
			}),
			err: delegation.ErrLevelMayNotDelegate,
			msg: "delegation: level may not delegate: agent spiffe://td/intern is at level intern, which may not delegate",
		},
		{
			name: "invalid level may not delegate",
			req:  with(baseRequest, func(r *delegation.Request) { r.Delegator.Level = 0 }),
			err:  delegation.ErrLevelMayNotDelegate,
			msg:  "delegation: level may not delegate: agent spiffe://td/b is at level level(0), which may not delegate",
		},
		{
			name: "no roles",
			req:  with(baseRequest, func(r *delegation.Request) { r.Roles = nil }),
			err:  delegation.ErrNoRoles,
			msg:  "delegation: no roles: a grant must name at least one role",
		},
		{
			name: "role outside the parent grant",
			req:  with(baseRequest, func(r *delegation.Request) { r.Roles = []string{"tickets-write", "db-read", "db-admin"} }),
			err:  delegation.ErrScope,
			msg:  `delegation: scope exceeds authority: agent spiffe://td/b may delegate only ["db-read" "db-write" "logs-read"] here (its manifest, narrowed by every grant and every ancestor's current manifest in its chain), not ["db-admin" "tickets-write"]`,
		},
		{
			name: "role outside the delegator's own manifest",
			req: with(baseRequest, func(r *delegation.Request) {
				r.Delegator.Roles = []string{"db-read"}
				r.Roles = []string{"db-write"}
			}),
			err: delegation.ErrScope,
			msg: `delegation: scope exceeds authority: agent spiffe://td/b may delegate only ["db-read"] here (its manifest, narrowed by every grant and every ancestor's current manifest in its chain), not ["db-write"]`,
		},
		{
			// g1 still names db-write, but A has since lost it.
			name: "ancestor's manifest shrank after the grant",
			req: with(extended, func(r *delegation.Request) {
				a := r.Ancestors[idA]
				a.Roles = []string{"db-read", "logs-read"}
				r.Ancestors[idA] = a
				r.Roles = []string{"db-write"}
			}),
			err: delegation.ErrScope,
			msg: `delegation: scope exceeds authority: agent spiffe://td/c may delegate only ["db-read"] here (its manifest, narrowed by every grant and every ancestor's current manifest in its chain), not ["db-write"]`,
		},
		{
			name: "zero TTL",
			req:  with(baseRequest, func(r *delegation.Request) { r.TTL = 0 }),
			err:  delegation.ErrInvalidTTL,
			msg:  "delegation: invalid TTL: TTL 0s must be positive",
		},
		{
			name: "negative TTL",
			req:  with(baseRequest, func(r *delegation.Request) { r.TTL = -time.Minute }),
			err:  delegation.ErrInvalidTTL,
			msg:  "delegation: invalid TTL: TTL -1m0s must be positive",
		},
		{
			name: "TTL above the maximum",
			req: with(baseRequest, func(r *delegation.Request) {
				r.Delegator, r.Chain, r.TTL = agent(idB, delegation.Principal), nil, 25*time.Hour
			}),
			err: delegation.ErrTTLAboveMax,
			msg: "delegation: TTL above maximum: TTL 25h0m0s exceeds the maximum grant TTL 24h0m0s",
		},
		{
			name: "TTL beyond the parent's expiry",
			req:  with(baseRequest, func(r *delegation.Request) { r.TTL = 2*time.Hour + time.Second }),
			err:  delegation.ErrOutlivesChain,
			msg:  "delegation: grant would outlive its chain: it would expire at 2026-03-01T14:00:01Z, after grant g1 which expires at 2026-03-01T14:00:00Z; ask for a TTL of at most 2h0m0s",
		},
		{
			name: "TTL beyond the root's expiry",
			req: with(extended, func(r *delegation.Request) {
				r.Chain[0].ExpiresAt = now.Add(30 * time.Minute)
				r.TTL = 45 * time.Minute
			}),
			err: delegation.ErrOutlivesChain,
			msg: "delegation: grant would outlive its chain: it would expire at 2026-03-01T12:45:00Z, after grant g1 which expires at 2026-03-01T12:30:00Z; ask for a TTL of at most 30m0s",
		},
		{
			name: "parent allows no re-delegation",
			req:  with(baseRequest, func(r *delegation.Request) { r.Chain[0].MaxDepth = 0 }),
			err:  delegation.ErrDepthExhausted,
			msg:  "delegation: depth exhausted: grant g1 allows re-delegation only down to depth 1; this grant would be at depth 2",
		},
		{
			// B gave g2 as a Principal and allowed 2 more hops, then was
			// demoted to Senior: from depth 2 it now reaches only depth 3.
			name: "ancestor's level limit reached after a demotion",
			req: with(extended, func(r *delegation.Request) {
				r.Chain[0].MaxDepth, r.Chain[1].MaxDepth = 3, 2
				r.Chain = append(r.Chain, grant("g3", "g2", idC, idD, 3, 1, "db-read"))
				r.Ancestors[idC] = r.Delegator
				r.Delegator = *r.Delegatee
				e := agent(idE, delegation.Senior)
				r.Delegatee = &e
			}),
			err: delegation.ErrDepthExhausted,
			msg: "delegation: depth exhausted: spiffe://td/b (senior), which gave grant g2 at depth 2, may delegate at most 2 hop(s) below itself, down to depth 3; this grant would be at depth 4",
		},
		{
			name: "negative max depth",
			req:  with(baseRequest, func(r *delegation.Request) { r.MaxDepth = -1 }),
			err:  delegation.ErrMaxDepth,
			msg:  "delegation: max depth not allowed: max depth -1 must not be negative",
		},
		{
			name: "max depth beyond the parent's",
			req:  with(baseRequest, func(r *delegation.Request) { r.MaxDepth = 2 }),
			err:  delegation.ErrMaxDepth,
			msg:  "delegation: max depth not allowed: max depth 2 exceeds the 1 further hop(s) left below this grant at depth 2: grant g1 allows re-delegation only down to depth 3",
		},
		{
			name: "max depth beyond the delegator's level",
			req: with(baseRequest, func(r *delegation.Request) {
				r.Chain, r.MaxDepth = nil, 2
			}),
			err: delegation.ErrMaxDepth,
			msg: "delegation: max depth not allowed: max depth 2 exceeds the 1 further hop(s) left below this grant at depth 1: agent spiffe://td/b (senior) may delegate at most 2 hop(s) below itself",
		},
		{
			name: "fan-out under a grant",
			req:  with(baseRequest, func(r *delegation.Request) { r.LiveFanOut = 16 }),
			err:  delegation.ErrFanOut,
			msg:  "delegation: too many live grants: agent spiffe://td/b already holds out 16 live grant(s) under grant g1 (limit 16); revoke one or let it expire",
		},
		{
			name: "fan-out of own authority",
			req:  with(baseRequest, func(r *delegation.Request) { r.Chain, r.LiveFanOut = nil, 17 }),
			err:  delegation.ErrFanOut,
			msg:  "delegation: too many live grants: agent spiffe://td/b already holds out 17 live grant(s) under its own authority (limit 16); revoke one or let it expire",
		},
		{
			name: "chain does not end at the delegator",
			req:  with(baseRequest, func(r *delegation.Request) { r.Chain[0].Delegatee = idD }),
			err:  delegation.ErrMalformedChain,
			msg:  "delegation: malformed chain: the chain ends with grant g1 to spiffe://td/d, not to agent spiffe://td/b",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g, err := delegation.DefaultRules().Check(tt.req(), now)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Check = %+v, %v; want %v", g, err, tt.err)
			}
			if err.Error() != tt.msg {
				t.Errorf("Check error:\n got %s\nwant %s", err, tt.msg)
			}
			if !isZero(g) {
				t.Errorf("Check returned grant %+v with its error", g)
			}
		})
	}
}

func TestSentinelsAreDistinct(t *testing.T) {
	all := []error{
		delegation.ErrUnknownDelegatee, delegation.ErrDelegateeInactive, delegation.ErrSelfDelegation,
		delegation.ErrCycle, delegation.ErrAgentInactive, delegation.ErrAncestorInactive,
		delegation.ErrAncestorLevel, delegation.ErrGrantRevoked, delegation.ErrGrantExpired,
		delegation.ErrLevelMayNotDelegate, delegation.ErrNoRoles, delegation.ErrScope,
		delegation.ErrInvalidTTL, delegation.ErrTTLAboveMax, delegation.ErrOutlivesChain,
		delegation.ErrDepthExhausted, delegation.ErrMaxDepth, delegation.ErrFanOut, delegation.ErrMalformedChain,
	}
	msgs := map[string]bool{}
	for _, err := range all {
		if msgs[err.Error()] {
			t.Errorf("two sentinels read %q", err)
		}
		msgs[err.Error()] = true
	}
}

func TestCheckGrant(t *testing.T) {
	req := baseRequest()
	req.Roles = []string{"logs-read", "db-read", "logs-read"}
	req.TTL = 2 * time.Hour // exactly the parent's expiry
	req.MaxDepth = 1
	req.LiveFanOut = 15
	got, err := delegation.DefaultRules().Check(req, now)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	want := delegation.Grant{
		ParentID: "g1", Delegator: idB, Delegatee: idC, Roles: []string{"db-read", "logs-read"},
		ExpiresAt: now.Add(2 * time.Hour), MaxDepth: 1, Depth: 2, CreatedAt: now,
	}
	if !equalGrant(got, want) {
		t.Errorf("Check =\n %+v\nwant\n %+v", got, want)
	}
	if req.Roles[0] != "logs-read" {
		t.Errorf("Check reordered the caller's roles: %q", req.Roles)
	}
}

// TestCheckChain builds A(Principal)→B(Senior)→C(Senior)→D(Principal) by
// Check, each delegator passing down as much depth as it may, and finds the
// chain exhausted at D, bound by B's level.
func TestCheckChain(t *testing.T) {
	rules := delegation.DefaultRules()
	agents := map[string]delegation.Agent{
		idA: agent(idA, delegation.Principal),
		idB: agent(idB, delegation.Senior),
		idC: agent(idC, delegation.Senior),
		idD: agent(idD, delegation.Principal),
		idE: agent(idE, delegation.Principal),
	}
	var chain []delegation.Grant
	for i, step := range []struct {
		from, to string
		maxDepth int
	}{
		{idA, idB, 3}, // A may go 4 deep: 3 more below its grant
		{idB, idC, 1}, // B (Senior) reaches depth 3 from depth 2
		{idC, idD, 0}, // depth 3 is as deep as B allows
	} {
		to := agents[step.to]
		g, err := rules.Check(delegation.Request{
			Delegator: agents[step.from], Delegatee: &to, Chain: chain, Ancestors: agents,
			Roles: []string{"db-read", "db-write"}, TTL: time.Duration(3-i) * time.Hour, MaxDepth: step.maxDepth,
		}, now)
		if err != nil {
			t.Fatalf("step %d, %s → %s: Check: %v", i+1, step.from, step.to, err)
		}
		if g.Depth != i+1 || g.MaxDepth != step.maxDepth {
			t.Errorf("step %d: depth %d, max depth %d; want %d, %d", i+1, g.Depth, g.MaxDepth, i+1, step.maxDepth)
		}
		g.ID = fmt.Sprintf("g%d", i+1)
		chain = append(chain, g)
	}

	auth, err := delegation.Effective(agents[idD], chain, agents, now)
	if err != nil {
		t.Fatalf("Effective(D): %v", err)
	}
	if want := []string{idA, idB, idC, idD}; !slices.Equal(auth.Chain, want) {
		t.Errorf("Effective(D).Chain = %q, want %q", auth.Chain, want)
	}
	if auth.Level != delegation.Senior {
		t.Errorf("Effective(D).Level = %s, want senior", auth.Level)
	}

	e := agents[idE]
	_, err = rules.Check(delegation.Request{
		Delegator: agents[idD], Delegatee: &e, Chain: chain, Ancestors: agents,
		Roles: []string{"db-read"}, TTL: time.Minute,
	}, now)
	want := "delegation: depth exhausted: grant g3 allows re-delegation only down to depth 3; this grant would be at depth 4"
	if !errors.Is(err, delegation.ErrDepthExhausted) || err.Error() != want {
		t.Errorf("Check(D → E) = %v, want %s", err, want)
	}
}

// TestMaxDepthPassesDown: each grant's MaxDepth caps every grant below it,
// whatever the delegators' levels would allow.
func TestMaxDepthPassesDown(t *testing.T) {
	rules := delegation.DefaultRules()
	agents := map[string]delegation.Agent{
		idA: agent(idA, delegation.Principal),
		idB: agent(idB, delegation.Principal),
		idC: agent(idC, delegation.Principal),
		idD: agent(idD, delegation.Principal),
	}
	check := func(chain []delegation.Grant, from, to string, maxDepth int) (delegation.Grant, error) {
		d := agents[to]
		return rules.Check(delegation.Request{
			Delegator: agents[from], Delegatee: &d, Chain: chain, Ancestors: agents,
			Roles: []string{"db-read"}, TTL: time.Hour, MaxDepth: maxDepth,
		}, now)
	}
	if _, err := check(nil, idA, idB, 4); !errors.Is(err, delegation.ErrMaxDepth) {
		t.Errorf("A → B with max depth 4: %v, want %v (a Principal has 3 hops below its grant)", err, delegation.ErrMaxDepth)
	}
	g1, err := check(nil, idA, idB, 1)
	if err != nil {
		t.Fatalf("A → B: %v", err)
	}
	g1.ID = "g1"
	if _, err := check([]delegation.Grant{g1}, idB, idC, 1); !errors.Is(err, delegation.ErrMaxDepth) {
		t.Errorf("B → C with max depth 1 under g1 (max depth 1): %v, want %v", err, delegation.ErrMaxDepth)
	}
	g2, err := check([]delegation.Grant{g1}, idB, idC, 0)
	if err != nil {
		t.Fatalf("B → C: %v", err)
	}
	g2.ID = "g2"
	_, err = check([]delegation.Grant{g1, g2}, idC, idD, 0)
	want := "delegation: depth exhausted: grant g2 allows re-delegation only down to depth 2; this grant would be at depth 3"
	if !errors.Is(err, delegation.ErrDepthExhausted) || err.Error() != want {
		t.Errorf("C → D = %v, want %s", err, want)
	}
}

func TestFanOutLimit(t *testing.T) {
	rules := delegation.DefaultRules()
	rules.MaxFanOut = 2
	for live, wantErr := range map[int]error{0: nil, 1: nil, 2: delegation.ErrFanOut, 3: delegation.ErrFanOut} {
		req := baseRequest()
		req.LiveFanOut = live
		if _, err := rules.Check(req, now); !errors.Is(err, wantErr) {
			t.Errorf("Check with %d live grants out of 2: %v, want %v", live, err, wantErr)
		}
	}
}

func TestZeroRulesAllowNothing(t *testing.T) {
	if _, err := (delegation.Rules{}).Check(baseRequest(), now); !errors.Is(err, delegation.ErrLevelMayNotDelegate) {
		t.Errorf("zero Rules: Check = %v, want %v", err, delegation.ErrLevelMayNotDelegate)
	}
}

func TestDefaultRules(t *testing.T) {
	r := delegation.DefaultRules()
	want := map[delegation.Level]int{delegation.Intern: 0, delegation.Junior: 0, delegation.Senior: 2, delegation.Principal: 4}
	for l, d := range want {
		if r.MaxDepth[l] != d {
			t.Errorf("DefaultRules().MaxDepth[%s] = %d, want %d", l, r.MaxDepth[l], d)
		}
	}
	if r.MaxTTL != 24*time.Hour || r.MaxFanOut != 16 {
		t.Errorf("DefaultRules() MaxTTL %s, MaxFanOut %d; want 24h, 16", r.MaxTTL, r.MaxFanOut)
	}
	r.MaxDepth[delegation.Intern] = 3
	if delegation.DefaultRules().MaxDepth[delegation.Intern] != 0 {
		t.Error("changing one DefaultRules value changed the next")
	}
}

func TestLevelString(t *testing.T) {
	for l, want := range map[delegation.Level]string{
		delegation.Intern: "intern", delegation.Junior: "junior", delegation.Senior: "senior", delegation.Principal: "principal",
		0: "level(0)", 5: "level(5)",
	} {
		if got := l.String(); got != want {
			t.Errorf("Level(%d).String() = %q, want %q", int(l), got, want)
		}
	}
}

func TestEffective(t *testing.T) {
	a := agent(idA, delegation.Principal)
	b := agent(idB, delegation.Senior)
	c := agent(idC, delegation.Principal)
	chain := []delegation.Grant{
		grant("g1", "", idA, idB, 1, 2, "db-read", "db-write", "logs-read", "db-admin"),
		grant("g2", "g1", idB, idC, 2, 1, "db-read", "logs-read", "tickets-write", "db-write"),
	}
	chain[1].ExpiresAt = now.Add(time.Hour)

	for _, tt := range []struct {
		name      string
		agent     delegation.Agent
		chain     []delegation.Grant
		ancestors map[string]delegation.Agent
		want      delegation.Authority
	}{
		{
			name:  "own authority",
			agent: delegation.Agent{ID: idA, Level: delegation.Principal, Active: true, Roles: []string{"z", "a", "z"}},
			want:  delegation.Authority{Roles: []string{"a", "z"}, Level: delegation.Principal, Chain: []string{idA}},
		},
		{
			name:      "intersection, min level, earliest expiry",
			agent:     c,
			chain:     chain,
			ancestors: map[string]delegation.Agent{idA: a, idB: b},
			want: delegation.Authority{
				Roles: []string{"db-read", "db-write", "logs-read"}, Level: delegation.Senior,
				ExpiresAt: now.Add(time.Hour), Chain: []string{idA, idB, idC}, GrantIDs: []string{"g1", "g2"},
			},
		},
		{
			name:  "ancestors count as they are now",
			agent: c,
			chain: chain,
			ancestors: map[string]delegation.Agent{
				idA: {ID: idA, Level: delegation.Principal, Active: true, Roles: []string{"db-read", "logs-read"}},
				idB: {ID: idB, Level: delegation.Intern, Active: true, Roles: []string{"db-read", "db-write", "logs-read"}},
			},
			want: delegation.Authority{
				Roles: []string{"db-read", "logs-read"}, Level: delegation.Intern,
				ExpiresAt: now.Add(time.Hour), Chain: []string{idA, idB, idC}, GrantIDs: []string{"g1", "g2"},
			},
		},
		{
			name:      "the agent's own manifest bounds it",
			agent:     delegation.Agent{ID: idC, Level: delegation.Principal, Active: true, Roles: []string{"tickets-write"}},
			chain:     chain,
			ancestors: map[string]delegation.Agent{idA: a, idB: b},
			want: delegation.Authority{
				Roles: []string{}, Level: delegation.Senior,
				ExpiresAt: now.Add(time.Hour), Chain: []string{idA, idB, idC}, GrantIDs: []string{"g1", "g2"},
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := delegation.Effective(tt.agent, tt.chain, tt.ancestors, now)
			if err != nil {
				t.Fatalf("Effective: %v", err)
			}
			if !equalAuthority(got, tt.want) {
				t.Errorf("Effective =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

// TestConfusedDeputy: a Principal cannot launder authority through an
// Intern, and an Intern gains nothing from a Principal's grant.
func TestConfusedDeputy(t *testing.T) {
	p := delegation.Agent{ID: idA, Level: delegation.Principal, Active: true, Roles: []string{"db-admin", "db-read", "db-write"}}
	intern := delegation.Agent{ID: idI, Level: delegation.Intern, Active: true, Roles: []string{"db-read", "logs-read"}}
	rules := delegation.DefaultRules()
	g, err := rules.Check(delegation.Request{
		Delegator: p, Delegatee: &intern, Roles: []string{"db-admin", "db-read", "db-write"}, TTL: time.Hour,
	}, now)
	if err != nil {
		t.Fatalf("Principal → Intern: %v", err)
	}
	g.ID = "g1"
	ancestors := map[string]delegation.Agent{idA: p}

	auth, err := delegation.Effective(intern, []delegation.Grant{g}, ancestors, now)
	if err != nil {
		t.Fatalf("Effective(intern): %v", err)
	}
	if auth.Level != delegation.Intern || !slices.Equal(auth.Roles, []string{"db-read"}) {
		t.Errorf("Intern under a Principal's grant: level %s, roles %q; want intern, [db-read]", auth.Level, auth.Roles)
	}

	// The Intern cannot pass the Principal's grant on to a Principal.
	d := agent(idD, delegation.Principal)
	_, err = rules.Check(delegation.Request{
		Delegator: intern, Delegatee: &d, Chain: []delegation.Grant{g}, Ancestors: ancestors,
		Roles: []string{"db-read"}, TTL: time.Minute,
	}, now)
	if !errors.Is(err, delegation.ErrLevelMayNotDelegate) {
		t.Errorf("Intern → Principal: %v, want %v", err, delegation.ErrLevelMayNotDelegate)
	}

	// A chain that passed through an agent since demoted to Intern leaves
	// everything below it at Intern.
	chain := []delegation.Grant{
		grant("g1", "", idA, idB, 1, 3, "db-read", "db-write"),
		grant("g2", "g1", idB, idD, 2, 0, "db-read", "db-write"),
	}
	ancestors = map[string]delegation.Agent{idA: p, idB: agent(idB, delegation.Intern)}
	auth, err = delegation.Effective(d, chain, ancestors, now)
	if err != nil {
		t.Fatalf("Effective(D under a demoted B): %v", err)
	}
	if auth.Level != delegation.Intern {
		t.Errorf("Principal under a demoted Intern: level %s, want intern", auth.Level)
	}
}

func TestEffectiveRefusals(t *testing.T) {
	a, b := agent(idA, delegation.Principal), agent(idB, delegation.Senior)
	ancestors := map[string]delegation.Agent{idA: a, idB: b}
	chain := func(edit func([]delegation.Grant)) []delegation.Grant {
		c := []delegation.Grant{
			grant("g1", "", idA, idB, 1, 2, "db-read"),
			grant("g2", "g1", idB, idC, 2, 1, "db-read"),
		}
		edit(c)
		return c
	}
	for _, tt := range []struct {
		name  string
		agent delegation.Agent
		chain []delegation.Grant
		err   error
		msg   string
	}{
		{
			name:  "first grant has a parent",
			chain: chain(func(c []delegation.Grant) { c[0].ParentID = "g0" }),
			err:   delegation.ErrMalformedChain,
			msg:   "delegation: malformed chain: the chain starts at grant g1, whose parent is g0; a chain starts at a grant of its delegator's own authority",
		},
		{
			name:  "parent link broken",
			chain: chain(func(c []delegation.Grant) { c[1].ParentID = "g9" }),
			err:   delegation.ErrMalformedChain,
			msg:   "delegation: malformed chain: grant g2 has parent g9, not the grant before it, g1",
		},
		{
			name:  "agents do not connect",
			chain: chain(func(c []delegation.Grant) { c[1].Delegator = idE }),
			err:   delegation.ErrMalformedChain,
			msg:   "delegation: malformed chain: grant g2 was given by spiffe://td/e, but the grant before it, g1, was given to spiffe://td/b",
		},
		{
			name:  "wrong depth",
			chain: chain(func(c []delegation.Grant) { c[1].Depth = 5 }),
			err:   delegation.ErrMalformedChain,
			msg:   "delegation: malformed chain: grant g2 has depth 5, but it is hop 2 of the chain",
		},
		{
			name:  "grant without ID",
			chain: chain(func(c []delegation.Grant) { c[1].ID = "" }),
			err:   delegation.ErrMalformedChain,
			msg:   "delegation: malformed chain: grant 2 of the chain has no ID",
		},
		{
			name:  "chain ends at another agent",
			agent: agent(idD, delegation.Senior),
			chain: chain(func([]delegation.Grant) {}),
			err:   delegation.ErrMalformedChain,
			msg:   "delegation: malformed chain: the chain ends with grant g2 to spiffe://td/c, not to agent spiffe://td/d",
		},
		{
			name:  "cycle in the stored chain",
			agent: agent(idA, delegation.Principal),
			chain: chain(func(c []delegation.Grant) { c[1].Delegatee = idA }),
			err:   delegation.ErrCycle,
			msg:   "delegation: cycle: agent spiffe://td/a appears twice in the chain spiffe://td/a → spiffe://td/b → spiffe://td/a; the grant store is corrupt",
		},
		{
			name:  "agent inactive",
			agent: delegation.Agent{ID: idC, Level: delegation.Senior},
			chain: chain(func([]delegation.Grant) {}),
			err:   delegation.ErrAgentInactive,
			msg:   "delegation: agent is not active: agent spiffe://td/c is deregistered or killed and holds no authority",
		},
		{
			name:  "revoked before it expires",
			chain: chain(func(c []delegation.Grant) { c[1].RevokedAt = now.Add(time.Hour) }),
			err:   delegation.ErrGrantRevoked,
			msg:   "delegation: grant revoked: grant g2 (spiffe://td/b → spiffe://td/c) was revoked at 2026-03-01T13:00:00Z",
		},
		{
			name:  "expired",
			chain: chain(func(c []delegation.Grant) { c[0].ExpiresAt = now.Add(-time.Second) }),
			err:   delegation.ErrGrantExpired,
			msg:   "delegation: grant expired: grant g1 (spiffe://td/a → spiffe://td/b) expired at 2026-03-01T11:59:59Z; ask spiffe://td/a for a new grant",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ag := tt.agent
			if ag.ID == "" {
				ag = agent(idC, delegation.Senior)
			}
			got, err := delegation.Effective(ag, tt.chain, ancestors, now)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Effective = %+v, %v; want %v", got, err, tt.err)
			}
			if err.Error() != tt.msg {
				t.Errorf("Effective error:\n got %s\nwant %s", err, tt.msg)
			}
		})
	}
}

// graph is a grant store as the broker's callbacks see it.
type graph struct {
	children map[string][]delegation.Grant // by parent grant ID
	given    map[string][]delegation.Grant // by delegator
	calls    int
}

func (g *graph) childrenOf(id string) ([]delegation.Grant, error) {
	g.calls++
	return g.children[id], nil
}

func (g *graph) givenBy(agent string) ([]delegation.Grant, error) { return g.given[agent], nil }

func ids(gs []delegation.Grant) []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		out[i] = g.ID
	}
	return out
}

func TestLineageOfGrant(t *testing.T) {
	g := func(id string) delegation.Grant { return delegation.Grant{ID: id} }
	tree := &graph{children: map[string][]delegation.Grant{
		"g1": {g("g2"), g("g3")},
		"g2": {g("g4")},
		"g3": {g("g5"), g("g6")},
		"g4": {g("g7")},
	}}
	// Corrupt: g3 hangs under both g1 and g2, and g4 points back at g1.
	cyclic := &graph{children: map[string][]delegation.Grant{
		"g1": {g("g2"), g("g3")},
		"g2": {g("g3"), g("g4"), g("g3")},
		"g4": {g("g1"), g("g2")},
		"g3": {g("g3")},
	}}
	for _, tt := range []struct {
		name  string
		graph *graph
		root  string
		want  []string
	}{
		{"tree", tree, "g1", []string{"g1", "g2", "g3", "g4", "g5", "g6", "g7"}},
		{"subtree", tree, "g3", []string{"g3", "g5", "g6"}},
		{"leaf", tree, "g7", []string{"g7"}},
		{"cycle", cyclic, "g1", []string{"g1", "g2", "g3", "g4"}},
		{"cycle from the middle", cyclic, "g4", []string{"g4", "g1", "g2", "g3"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.graph.calls = 0
			got, err := delegation.LineageOfGrant(g(tt.root), tt.graph.childrenOf)
			if err != nil {
				t.Fatalf("LineageOfGrant: %v", err)
			}
			if !slices.Equal(ids(got), tt.want) {
				t.Errorf("LineageOfGrant(%s) = %q, want %q", tt.root, ids(got), tt.want)
			}
			if tt.graph.calls != len(tt.want) {
				t.Errorf("children called %d times, want once per grant (%d)", tt.graph.calls, len(tt.want))
			}
		})
	}
}

// TestLineageOfAgent: A's lineage holds every grant A gave, of its own
// authority or under X's grant, and everything its delegatees gave under
// those; not what B gave of its own authority.
func TestLineageOfAgent(t *testing.T) {
	gx := grant("gx", "", "spiffe://td/x", idA, 1, 2, "db-read")
	g1 := grant("g1", "", idA, idB, 1, 2, "db-read")
	g2 := grant("g2", "gx", idA, idC, 2, 1, "db-read")
	g3 := grant("g3", "g1", idB, idC, 2, 1, "db-read")
	g4 := grant("g4", "g3", idC, idD, 3, 0, "db-read")
	g5 := grant("g5", "", idB, idE, 1, 0, "db-read")
	st := &graph{
		children: map[string][]delegation.Grant{"gx": {g2}, "g1": {g3}, "g3": {g4}},
		given:    map[string][]delegation.Grant{"spiffe://td/x": {gx}, idA: {g1, g2}, idB: {g3, g5}, idC: {g4}},
	}
	for _, tt := range []struct {
		agent string
		want  []string
	}{
		{idA, []string{"g1", "g2", "g3", "g4"}},
		{idB, []string{"g3", "g5", "g4"}},
		{idD, []string{}},
	} {
		got, err := delegation.LineageOfAgent(tt.agent, st.givenBy, st.childrenOf)
		if err != nil {
			t.Fatalf("LineageOfAgent(%s): %v", tt.agent, err)
		}
		if !slices.Equal(ids(got), tt.want) {
			t.Errorf("LineageOfAgent(%s) = %q, want %q", tt.agent, ids(got), tt.want)
		}
	}
}

func TestLineageStoreErrors(t *testing.T) {
	boom := errors.New("store: disk on fire")
	fail := func(string) ([]delegation.Grant, error) { return nil, boom }
	none := func(string) ([]delegation.Grant, error) { return nil, nil }

	_, err := delegation.LineageOfGrant(delegation.Grant{ID: "g1"}, fail)
	if want := "delegation: grants below g1: store: disk on fire"; !errors.Is(err, boom) || err.Error() != want {
		t.Errorf("LineageOfGrant = %v, want %s", err, want)
	}
	_, err = delegation.LineageOfAgent(idA, fail, none)
	if want := "delegation: grants given by spiffe://td/a: store: disk on fire"; !errors.Is(err, boom) || err.Error() != want {
		t.Errorf("LineageOfAgent = %v, want %s", err, want)
	}
}

// benchRoles is a 20-role manifest.
func benchRoles() []string {
	roles := make([]string, 20)
	for i := range roles {
		roles[i] = fmt.Sprintf("role-%02d", i)
	}
	return roles
}

// benchChain is a chain of n Principals, each grant passing on every role.
func benchChain(n int) ([]delegation.Grant, map[string]delegation.Agent, []delegation.Agent) {
	agents := make([]delegation.Agent, n+2)
	byID := map[string]delegation.Agent{}
	for i := range agents {
		agents[i] = delegation.Agent{ID: fmt.Sprintf("spiffe://td/agent/%d", i), Level: delegation.Principal, Active: true, Roles: benchRoles()}
		byID[agents[i].ID] = agents[i]
	}
	chain := make([]delegation.Grant, n)
	for i := range chain {
		parent := ""
		if i > 0 {
			parent = chain[i-1].ID
		}
		chain[i] = delegation.Grant{
			ID: fmt.Sprintf("g%d", i+1), ParentID: parent, Delegator: agents[i].ID, Delegatee: agents[i+1].ID,
			Roles: benchRoles(), ExpiresAt: now.Add(time.Hour), MaxDepth: 3 - i, Depth: i + 1,
		}
	}
	return chain, byID, agents
}

// BenchmarkCheck extends a chain of three grants to depth 4, the deepest a
// Principal may reach.
func BenchmarkCheck(b *testing.B) {
	chain, byID, agents := benchChain(3)
	rules := delegation.DefaultRules()
	req := delegation.Request{
		Delegator: agents[3], Delegatee: &agents[4], Chain: chain, Ancestors: byID,
		Roles: benchRoles()[:10], TTL: 30 * time.Minute,
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rules.Check(req, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEffective evaluates an agent under a chain of four grants.
func BenchmarkEffective(b *testing.B) {
	chain, byID, agents := benchChain(4)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := delegation.Effective(agents[4], chain, byID, now); err != nil {
			b.Fatal(err)
		}
	}
}

func with(base func() delegation.Request, edit func(*delegation.Request)) func() delegation.Request {
	return func() delegation.Request {
		r := base()
		edit(&r)
		return r
	}
}

func isZero(g delegation.Grant) bool { return equalGrant(g, delegation.Grant{}) }

func equalGrant(a, b delegation.Grant) bool {
	return a.ID == b.ID && a.ParentID == b.ParentID && a.Delegator == b.Delegator && a.Delegatee == b.Delegatee &&
		slices.Equal(a.Roles, b.Roles) && a.ExpiresAt.Equal(b.ExpiresAt) && a.MaxDepth == b.MaxDepth &&
		a.Depth == b.Depth && a.CreatedAt.Equal(b.CreatedAt) && a.RevokedAt.Equal(b.RevokedAt)
}

func equalAuthority(a, b delegation.Authority) bool {
	return slices.Equal(a.Roles, b.Roles) && a.Level == b.Level && a.ExpiresAt.Equal(b.ExpiresAt) &&
		slices.Equal(a.Chain, b.Chain) && slices.Equal(a.GrantIDs, b.GrantIDs)
}

// A grant may narrow a role to some of its scopes; a grant below it may
// narrow further but never widen, the chain's scopes are the intersection
// of every narrowing grant's, and a role the chain no longer gives takes
// its scopes with it.
func TestScopes(t *testing.T) {
	rules := delegation.DefaultRules()
	agents := map[string]delegation.Agent{
		idA: agent(idA, delegation.Principal), idB: agent(idB, delegation.Senior),
		idC: agent(idC, delegation.Senior), idD: agent(idD, delegation.Principal),
	}
	check := func(from, to string, chain []delegation.Grant, roles []string, scopes map[string][]string) (delegation.Grant, error) {
		d := agents[to]
		return rules.Check(delegation.Request{Delegator: agents[from], Delegatee: &d, Chain: chain, Ancestors: agents,
			Roles: roles, Scopes: scopes, TTL: time.Hour, MaxDepth: 2 - len(chain)}, now)
	}
	g1, err := check(idA, idB, nil, []string{"db-read", "tickets-write"}, map[string][]string{"tickets-write": {"tickets.update", "tickets.list", "tickets.list"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"tickets.list", "tickets.update"}; !slices.Equal(g1.Scopes["tickets-write"], want) || len(g1.Scopes) != 1 {
		t.Fatalf("g1.Scopes = %v, want tickets-write: %q", g1.Scopes, want)
	}
	g1.ID = "g1"
	chain := []delegation.Grant{g1}
	auth, err := delegation.Effective(agents[idB], chain, agents, now)
	if err != nil || !slices.Equal(auth.Scopes["tickets-write"], []string{"tickets.list", "tickets.update"}) || len(auth.Scopes) != 1 {
		t.Fatalf("Effective(B).Scopes = %v, %v", auth.Scopes, err)
	}

	for name, tt := range map[string]struct {
		roles  []string
		scopes map[string][]string
		want   string
	}{
		"wider than the chain": {[]string{"tickets-write"}, map[string][]string{"tickets-write": {"tickets.list", "tickets.delete"}},
			`may pass on only the scopes ["tickets.list" "tickets.update"] of role "tickets-write" here (narrowed by a grant in its chain), not ["tickets.delete"]`},
		"a role the grant does not give": {[]string{"db-read"}, map[string][]string{"tickets-write": {"tickets.list"}},
			`scopes are given for role "tickets-write", which the grant does not give`},
		"no scope": {[]string{"tickets-write"}, map[string][]string{"tickets-write": {}}, "narrowed to no scope at all"},
	} {
		_, err := check(idB, idC, chain, tt.roles, tt.scopes)
		if !errors.Is(err, delegation.ErrScope) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Check = %v, want ErrScope saying %s", name, err, tt.want)
		}
	}

	// Narrower: allowed; the chain keeps the intersection.
	g2, err := check(idB, idC, chain, []string{"db-read", "tickets-write"}, map[string][]string{"tickets-write": {"tickets.list"}})
	if err != nil {
		t.Fatal(err)
	}
	g2.ID = "g2"
	chain = append(chain, g2)
	if auth, err = delegation.Effective(agents[idC], chain, agents, now); err != nil || !slices.Equal(auth.Scopes["tickets-write"], []string{"tickets.list"}) {
		t.Fatalf("Effective(C).Scopes = %v, %v", auth.Scopes, err)
	}
	// A grant below that does not name the role keeps the chain's scopes.
	g3, err := check(idC, idD, chain, []string{"tickets-write"}, nil)
	if err != nil || g3.Scopes != nil {
		t.Fatalf("g3 = %+v, %v", g3, err)
	}
	g3.ID = "g3"
	if auth, err = delegation.Effective(agents[idD], append(chain, g3), agents, now); err != nil || !slices.Equal(auth.Scopes["tickets-write"], []string{"tickets.list"}) {
		t.Fatalf("Effective(D).Scopes = %v, %v", auth.Scopes, err)
	}
	// A role the chain no longer gives takes its scopes with it.
	g3.Roles = []string{"db-read"}
	if auth, err = delegation.Effective(agents[idD], append(chain, g3), agents, now); err != nil || len(auth.Scopes) != 0 {
		t.Fatalf("Effective(D).Scopes without tickets-write = %v, %v", auth.Scopes, err)
	}
}
