package authz_test

import (
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/agentictrust/atf/authz"
)

const (
	agentID = "spiffe://td/agent/a"
	// allowAll grants every role of every class to every agent of trust
	// domain td, so that only the code's invariants and the shipped model's
	// maturity gating decide.
	allowAll     = "g, spiffe://td/*, group:all\n" + allowAllLine + "\n"
	allowAllLine = "p, group:all, *, *, intern, allow"
)

var (
	readRole  = authz.Role{Name: "db-read", Class: authz.Read, Classification: authz.Internal, MaxTTL: time.Hour}
	writeRole = authz.Role{Name: "db-write", Class: authz.Write, Classification: authz.Internal, MaxTTL: time.Hour}
	adminRole = authz.Role{Name: "db-admin", Class: authz.Privileged, Classification: authz.Internal, MaxTTL: time.Hour}
)

// agent is an active agent at level whose manifest holds all three roles.
func agent(level authz.Level) *authz.Agent {
	return &authz.Agent{ID: agentID, Level: level, Active: true, Roles: []string{"db-read", "db-write", "db-admin"}}
}

func defaultGate(t testing.TB) *authz.Gate {
	t.Helper()
	g, err := authz.NewGate(authz.DefaultLimits())
	if err != nil {
		t.Fatalf("NewGate(DefaultLimits()): %v", err)
	}
	return g
}

// shippedModel is the default model the broker ships.
func shippedModel(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("../deploy/policy/model.conf")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// newPolicy loads policy under the shipped model.
func newPolicy(t testing.TB, version uint64, policy string) *authz.Policy {
	t.Helper()
	p, err := authz.NewPolicy(version, shippedModel(t), policy)
	if err != nil {
		t.Fatalf("NewPolicy: %v", err)
	}
	return p
}

func TestLevelRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		level authz.Level
		name  string
	}{
		{authz.Intern, "intern"},
		{authz.Junior, "junior"},
		{authz.Senior, "senior"},
		{authz.Principal, "principal"},
	} {
		if got := tt.level.String(); got != tt.name {
			t.Errorf("Level(%d).String() = %q, want %q", int(tt.level), got, tt.name)
		}
		if !tt.level.Valid() {
			t.Errorf("%s.Valid() = false", tt.name)
		}
		got, err := authz.ParseLevel(tt.name)
		if err != nil || got != tt.level {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", tt.name, got, err, tt.level)
		}
	}
}

func TestInvalidLevel(t *testing.T) {
	for _, l := range []authz.Level{0, -1, authz.Principal + 1} {
		if l.Valid() {
			t.Errorf("Level(%d).Valid() = true", int(l))
		}
	}
	for _, tt := range []struct {
		level authz.Level
		want  string
	}{
		{0, "level(0)"},
		{-1, "level(-1)"},
		{5, "level(5)"},
	} {
		if got := tt.level.String(); got != tt.want {
			t.Errorf("Level(%d).String() = %q, want %q", int(tt.level), got, tt.want)
		}
	}
}

func TestParseLevelRejects(t *testing.T) {
	for _, in := range []string{"", "Intern", "INTERN", " intern", "admin", "level(0)", "1"} {
		l, err := authz.ParseLevel(in)
		if err == nil {
			t.Errorf("ParseLevel(%q) = %v, want an error", in, l)
			continue
		}
		want := `authz: unknown level "` + in + `" (want intern, junior, senior or principal)`
		if err.Error() != want {
			t.Errorf("ParseLevel(%q): err = %q, want %q", in, err, want)
		}
	}
}

func TestClassRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		class authz.Class
		name  string
	}{
		{authz.Read, "read"},
		{authz.Write, "write"},
		{authz.Privileged, "privileged"},
	} {
		if got := tt.class.String(); got != tt.name {
			t.Errorf("Class(%d).String() = %q, want %q", int(tt.class), got, tt.name)
		}
		got, err := authz.ParseClass(tt.name)
		if err != nil || got != tt.class {
			t.Errorf("ParseClass(%q) = %v, %v; want %v", tt.name, got, err, tt.class)
		}
	}
	for _, tt := range []struct {
		class authz.Class
		want  string
	}{
		{0, "class(0)"},
		{-2, "class(-2)"},
		{4, "class(4)"},
	} {
		if got := tt.class.String(); got != tt.want {
			t.Errorf("Class(%d).String() = %q, want %q", int(tt.class), got, tt.want)
		}
	}
}

func TestParseClassRejects(t *testing.T) {
	for _, in := range []string{"", "Read", "admin", "readonly", "class(1)"} {
		c, err := authz.ParseClass(in)
		if err == nil {
			t.Errorf("ParseClass(%q) = %v, want an error", in, c)
			continue
		}
		want := `authz: unknown role class "` + in + `" (want read, write or privileged)`
		if err.Error() != want {
			t.Errorf("ParseClass(%q): err = %q, want %q", in, err, want)
		}
	}
}

func TestDefaultLimits(t *testing.T) {
	want := map[authz.Level]authz.LevelLimits{
		authz.Intern:    {Classes: []authz.Class{authz.Read}, MaxTTL: time.Hour},
		authz.Junior:    {Classes: []authz.Class{authz.Read}, Approval: []authz.Class{authz.Write}, MaxTTL: 15 * time.Minute},
		authz.Senior:    {Classes: []authz.Class{authz.Read, authz.Write}, Notify: []authz.Class{authz.Write}, MaxTTL: 15 * time.Minute},
		authz.Principal: {Classes: []authz.Class{authz.Read, authz.Write, authz.Privileged}, MaxTTL: 5 * time.Minute, MaxUses: 100},
	}
	mine := authz.DefaultLimits()
	if !reflect.DeepEqual(mine, want) {
		t.Fatalf("DefaultLimits() = %v, want %v", mine, want)
	}

	// Changing one caller's copy, down to the shared-looking class slices,
	// must not reach the next caller.
	mine[authz.Senior].Classes[0] = authz.Privileged
	mine[authz.Junior].Approval[0] = authz.Privileged
	mine[authz.Intern] = authz.LevelLimits{Classes: []authz.Class{authz.Write}, MaxTTL: time.Second}
	delete(mine, authz.Principal)
	if got := authz.DefaultLimits(); !reflect.DeepEqual(got, want) {
		t.Errorf("after mutating an earlier result, DefaultLimits() = %v, want %v", got, want)
	}
}

func TestNewGate(t *testing.T) {
	with := func(l authz.Level, lim authz.LevelLimits) map[authz.Level]authz.LevelLimits {
		m := authz.DefaultLimits()
		m[l] = lim
		return m
	}
	without := func(l authz.Level) map[authz.Level]authz.LevelLimits {
		m := authz.DefaultLimits()
		delete(m, l)
		return m
	}
	tests := []struct {
		name    string
		limits  map[authz.Level]authz.LevelLimits
		wantErr string
	}{
		{"defaults", authz.DefaultLimits(), ""},
		{"intern with no classes", with(authz.Intern, authz.LevelLimits{MaxTTL: time.Minute}), ""},
		{"tightened senior", with(authz.Senior, authz.LevelLimits{Classes: []authz.Class{authz.Read}, MaxTTL: time.Minute}), ""},
		{"intern notified of reads", with(authz.Intern, authz.LevelLimits{Classes: []authz.Class{authz.Read}, Notify: []authz.Class{authz.Read}, MaxTTL: time.Hour}), ""},
		{"nil", nil, "authz: no limits for level intern"},
		{"empty", map[authz.Level]authz.LevelLimits{}, "authz: no limits for level intern"},
		{"no junior", without(authz.Junior), "authz: no limits for level junior"},
		{"no principal", without(authz.Principal), "authz: no limits for level principal"},
		{"zero TTL", with(authz.Senior, authz.LevelLimits{Classes: []authz.Class{authz.Read}}), "authz: level senior: max TTL must be positive"},
		{"negative TTL", with(authz.Principal, authz.LevelLimits{MaxTTL: -time.Minute}), "authz: level principal: max TTL must be positive"},
		{"intern write", with(authz.Intern, authz.LevelLimits{Classes: []authz.Class{authz.Read, authz.Write}, MaxTTL: time.Hour}), "authz: level intern may hold only read credentials"},
		{"intern privileged", with(authz.Intern, authz.LevelLimits{Classes: []authz.Class{authz.Privileged}, MaxTTL: time.Hour}), "authz: level intern may hold only read credentials"},
		{"intern invalid class", with(authz.Intern, authz.LevelLimits{Classes: []authz.Class{0}, MaxTTL: time.Hour}), "authz: level intern may hold only read credentials"},
		{"intern write after approval", with(authz.Intern, authz.LevelLimits{Classes: []authz.Class{authz.Read}, Approval: []authz.Class{authz.Write}, MaxTTL: time.Hour}), "authz: level intern may hold only read credentials"},
		{"intern privileged after approval", with(authz.Intern, authz.LevelLimits{Approval: []authz.Class{authz.Privileged}, MaxTTL: time.Hour}), "authz: level intern may hold only read credentials"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := authz.NewGate(tt.limits)
			if tt.wantErr == "" {
				if err != nil || g == nil {
					t.Fatalf("NewGate = %v, %v; want a gate", g, err)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("NewGate: err = %v, want %q", err, tt.wantErr)
			}
			if g != nil {
				t.Error("NewGate returned a gate along with its error")
			}
		})
	}
}

func TestDecide(t *testing.T) {
	inactive := agent(authz.Principal)
	inactive.Active = false
	inactiveNoLevel := &authz.Agent{ID: agentID}
	noManifest := agent(authz.Principal)
	noManifest.Roles = nil
	noTTL := readRole
	noTTL.MaxTTL = 0
	negativeTTL := readRole
	negativeTTL.MaxTTL = -time.Minute
	unclassified := readRole
	unclassified.Classification = 0
	overclassified := readRole
	overclassified.Classification = authz.Secret + 1

	deny := func(r authz.Reason, msg string) authz.Decision {
		return authz.Decision{Reason: r, Message: msg}
	}
	// consulted is a denial the policy (version 1) had a say in.
	consulted := func(r authz.Reason, msg string) authz.Decision {
		return authz.Decision{Reason: r, Message: msg, PolicyVersion: 1}
	}
	allow := func(msg, rule string, ttl time.Duration, maxUses int, notify bool) authz.Decision {
		return authz.Decision{Outcome: authz.Allow, Reason: authz.Allowed, Message: msg, Matched: allowAllLine, Rule: rule,
			PolicyVersion: 1, TTL: ttl, MaxUses: maxUses, Notify: notify}
	}
	tests := []struct {
		name  string
		agent *authz.Agent
		role  authz.Role
		want  authz.Decision
	}{
		{"nil agent", nil, readRole,
			deny(authz.NotRegistered, "caller is not a registered agent; ask the platform team to register its SPIFFE ID")},
		{"inactive", inactive, readRole,
			deny(authz.NotActive, "agent spiffe://td/agent/a is deregistered")},
		{"inactive wins over other faults", inactiveNoLevel, readRole,
			deny(authz.NotActive, "agent spiffe://td/agent/a is deregistered")},
		{"level zero", agent(0), readRole,
			deny(authz.InvalidLevel, "agent spiffe://td/agent/a has no valid maturity level")},
		{"level above principal", agent(authz.Principal + 1), readRole,
			deny(authz.InvalidLevel, "agent spiffe://td/agent/a has no valid maturity level")},
		{"role not in manifest", agent(authz.Principal), authz.Role{Name: "kv-read", Class: authz.Read, Classification: authz.Internal, MaxTTL: time.Hour},
			deny(authz.NotInManifest, `role "kv-read" is not in agent spiffe://td/agent/a's capability manifest`)},
		{"empty manifest", noManifest, readRole,
			deny(authz.NotInManifest, `role "db-read" is not in agent spiffe://td/agent/a's capability manifest`)},
		{"role without TTL", agent(authz.Principal), noTTL,
			deny(authz.InvalidRole, `role "db-read" lacks a positive max TTL, a class or a data classification; fix the roles file`)},
		{"role with negative TTL", agent(authz.Principal), negativeTTL,
			deny(authz.InvalidRole, `role "db-read" lacks a positive max TTL, a class or a data classification; fix the roles file`)},
		{"role without classification", agent(authz.Principal), unclassified,
			deny(authz.InvalidRole, `role "db-read" lacks a positive max TTL, a class or a data classification; fix the roles file`)},
		{"role with unknown classification", agent(authz.Principal), overclassified,
			deny(authz.InvalidRole, `role "db-read" lacks a positive max TTL, a class or a data classification; fix the roles file`)},
		{"intern write", agent(authz.Intern), writeRole, authz.Decision{Reason: authz.ClassNotAllowed,
			Message: `intern agents may hold only read credentials (role "db-write" is write)`, Rule: "intern: read only (invariant)"}},
		{"intern privileged", agent(authz.Intern), adminRole, authz.Decision{Reason: authz.ClassNotAllowed,
			Message: `intern agents may hold only read credentials (role "db-admin" is privileged)`, Rule: "intern: read only (invariant)"}},
		{"junior privileged", agent(authz.Junior), adminRole, consulted(authz.LevelTooLow,
			`role "db-admin" (privileged, internal data) needs maturity level principal or above; agent spiffe://td/agent/a is junior`)},
		{"senior privileged", agent(authz.Senior), adminRole, consulted(authz.LevelTooLow,
			`role "db-admin" (privileged, internal data) needs maturity level principal or above; agent spiffe://td/agent/a is senior`)},
		{"principal role of no class", agent(authz.Principal), authz.Role{Name: "db-read", Classification: authz.Internal, MaxTTL: time.Hour}, deny(authz.InvalidRole,
			`role "db-read" lacks a positive max TTL, a class or a data classification; fix the roles file`)},
		{"junior write", agent(authz.Junior), writeRole, authz.Decision{Outcome: authz.NeedsApproval, Reason: authz.ApprovalRequired,
			Message: `junior agents need a human's approval for write role "db-write"; the request waits for an approver`,
			Matched: allowAllLine, Rule: "junior: write needs human approval", PolicyVersion: 1, TTL: 15 * time.Minute}},
		{"intern read", agent(authz.Intern), readRole,
			allow(`intern agent may hold read role "db-read"`, "intern: read allowed", time.Hour, 0, false)},
		{"junior read", agent(authz.Junior), readRole,
			allow(`junior agent may hold read role "db-read"`, "junior: read allowed", 15*time.Minute, 0, false)},
		{"senior write", agent(authz.Senior), writeRole,
			allow(`senior agent may hold write role "db-write"`, "senior: write allowed, notify", 15*time.Minute, 0, true)},
		{"principal privileged", agent(authz.Principal), adminRole,
			allow(`principal agent may hold privileged role "db-admin"`, "principal: privileged allowed", 5*time.Minute, 100, false)},
		{"principal read", agent(authz.Principal), readRole,
			allow(`principal agent may hold read role "db-read"`, "principal: read allowed", 5*time.Minute, 100, false)},
	}
	g := defaultGate(t)
	p := newPolicy(t, 1, allowAll)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := g.Decide(p, tt.agent, tt.role, 0); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decide =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

func TestDecideTTL(t *testing.T) {
	// Senior's level maximum is 15 minutes.
	tests := []struct {
		name      string
		roleMax   time.Duration
		requested time.Duration
		want      time.Duration
	}{
		{"level caps", time.Hour, 0, 15 * time.Minute},
		{"role caps", 10 * time.Minute, 0, 10 * time.Minute},
		{"request caps", time.Hour, 5 * time.Minute, 5 * time.Minute},
		{"request under role under level", 10 * time.Minute, time.Minute, time.Minute},
		{"request over role", 10 * time.Minute, 12 * time.Minute, 10 * time.Minute},
		{"request over level", time.Hour, time.Hour, 15 * time.Minute},
		{"all equal", 15 * time.Minute, 15 * time.Minute, 15 * time.Minute},
		{"one nanosecond", time.Hour, time.Nanosecond, time.Nanosecond},
		{"negative request is no cap", time.Hour, -time.Minute, 15 * time.Minute},
	}
	g := defaultGate(t)
	p := newPolicy(t, 1, allowAll)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			role := writeRole
			role.MaxTTL = tt.roleMax
			d := g.Decide(p, agent(authz.Senior), role, tt.requested)
			if d.Outcome != authz.Allow {
				t.Fatalf("Decide = %s: %s", d.Outcome, d.Message)
			}
			if d.TTL != tt.want {
				t.Errorf("TTL = %v, want %v", d.TTL, tt.want)
			}
		})
	}
}

func TestDecideCustomLimits(t *testing.T) {
	limits := authz.DefaultLimits()
	limits[authz.Senior] = authz.LevelLimits{Classes: []authz.Class{authz.Read}, MaxTTL: 2 * time.Minute, MaxUses: 3}
	g, err := authz.NewGate(limits)
	if err != nil {
		t.Fatalf("NewGate: %v", err)
	}
	p := newPolicy(t, 1, allowAll)
	for _, tt := range []struct {
		role authz.Role
		want authz.Decision
	}{
		{readRole, authz.Decision{Outcome: authz.Allow, Reason: authz.Allowed, Message: `senior agent may hold read role "db-read"`,
			Matched: allowAllLine, Rule: "senior: read allowed", PolicyVersion: 1, TTL: 2 * time.Minute, MaxUses: 3}},
		// The policy allows the write; the tightened limits do not.
		{writeRole, authz.Decision{Reason: authz.ClassNotAllowed, Message: `agents at level senior may not hold write credentials (role "db-write")`,
			Matched: allowAllLine, Rule: "senior: no write", PolicyVersion: 1}},
	} {
		if got := g.Decide(p, agent(authz.Senior), tt.role, 0); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Decide(senior, %s) =\n %+v\nwant\n %+v", tt.role.Class, got, tt.want)
		}
	}
}

func TestDecideInternInvariantSurvivesLimitChanges(t *testing.T) {
	limits := authz.DefaultLimits()
	g, err := authz.NewGate(limits)
	if err != nil {
		t.Fatalf("NewGate: %v", err)
	}
	p := newPolicy(t, 1, allowAll)
	// Whatever happens to the map after validation, an Intern gets no more
	// than read.
	limits[authz.Intern] = authz.LevelLimits{Classes: []authz.Class{authz.Read, authz.Write, authz.Privileged}, Approval: []authz.Class{authz.Write, authz.Privileged}, MaxTTL: time.Hour}
	for _, role := range []authz.Role{writeRole, adminRole} {
		if d := g.Decide(p, agent(authz.Intern), role, 0); d.Outcome != authz.Deny || d.Reason != authz.ClassNotAllowed {
			t.Errorf("Decide(intern, %s) = %+v, want a class_not_allowed denial", role.Class, d)
		}
	}
	if g.LevelMayHold(authz.Intern, authz.Write) || g.LevelMayHold(authz.Intern, authz.Privileged) {
		t.Error("LevelMayHold(intern, write or privileged) = true after the limits map changed")
	}
}

func BenchmarkDecide(b *testing.B) {
	g := defaultGate(b)
	p := newPolicy(b, 1, allowAll)
	for _, bb := range []struct {
		name  string
		agent *authz.Agent
		role  authz.Role
	}{
		{"allow", agent(authz.Principal), adminRole},
		{"deny class", agent(authz.Intern), writeRole},
		{"deny unregistered", nil, readRole},
	} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				g.Decide(p, bb.agent, bb.role, 10*time.Minute)
			}
		})
	}
}
