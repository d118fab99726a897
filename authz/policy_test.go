package authz_test

import (
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/authz"
)

var (
	levels          = []authz.Level{authz.Intern, authz.Junior, authz.Senior, authz.Principal}
	classes         = []authz.Class{authz.Read, authz.Write, authz.Privileged}
	classifications = []authz.Classification{authz.Public, authz.Internal, authz.PII, authz.Secret}
)

// docs/design.md §4's "role classes" row, written out: what each level may hold,
// and whether a human must approve it first.
var designClasses = map[authz.Level]map[authz.Class]authz.Outcome{
	authz.Intern:    {authz.Read: authz.Allow},
	authz.Junior:    {authz.Read: authz.Allow, authz.Write: authz.NeedsApproval},
	authz.Senior:    {authz.Read: authz.Allow, authz.Write: authz.Allow},
	authz.Principal: {authz.Read: authz.Allow, authz.Write: authz.Allow, authz.Privileged: authz.Allow},
}

// The shipped model's data rule: pii and secret roles need Senior or above.
var designClassificationFloor = map[authz.Classification]authz.Level{
	authz.Public:   authz.Intern,
	authz.Internal: authz.Intern,
	authz.PII:      authz.Senior,
	authz.Secret:   authz.Senior,
}

// designLowest is the lowest level docs/design.md lets hold a role of class and
// classification.
func designLowest(class authz.Class, cls authz.Classification) authz.Level {
	for _, l := range levels {
		if _, ok := designClasses[l][class]; ok && l >= designClassificationFloor[cls] {
			return l
		}
	}
	panic(fmt.Sprintf("docs/design.md gives %s %s data to no level", class, cls))
}

// TestDecideMaturityMatrix runs every level, class and classification
// through the shipped model under a policy that grants everything, so that
// only the maturity rules decide.
func TestDecideMaturityMatrix(t *testing.T) {
	g := defaultGate(t)
	p := newPolicy(t, 1, allowAll)
	for _, level := range levels {
		for _, class := range classes {
			for _, cls := range classifications {
				role := authz.Role{Name: fmt.Sprintf("kv/%s/%s", class, cls), Class: class, Classification: cls, MaxTTL: time.Hour}
				var want authz.Decision
				switch lowest := designLowest(class, cls); {
				case level == authz.Intern && class != authz.Read:
					want = authz.Decision{Reason: authz.ClassNotAllowed, Rule: "intern: read only (invariant)",
						Message: fmt.Sprintf("intern agents may hold only read credentials (role %q is %s)", role.Name, class)}
				case level < lowest:
					want = authz.Decision{Reason: authz.LevelTooLow, Message: fmt.Sprintf(
						"role %q (%s, %s data) needs maturity level %s or above; agent %s is %s", role.Name, class, cls, lowest, agentID, level)}
				case designClasses[level][class] == authz.NeedsApproval:
					want = authz.Decision{Outcome: authz.NeedsApproval, Reason: authz.ApprovalRequired}
				default:
					// docs/design.md §4: Senior notifies on every write issuance.
					want = authz.Decision{Outcome: authz.Allow, Reason: authz.Allowed, Notify: level == authz.Senior && class == authz.Write}
				}
				t.Run(fmt.Sprintf("%s/%s/%s", level, class, cls), func(t *testing.T) {
					a := &authz.Agent{ID: agentID, Level: level, Active: true, Roles: []string{role.Name}}
					got := g.Decide(p, a, role, 0)
					if got.Outcome != want.Outcome || got.Reason != want.Reason || got.Notify != want.Notify {
						t.Fatalf("Decide = %s, %s, notify %t (%s); want %s, %s, notify %t",
							got.Outcome, got.Reason, got.Notify, got.Message, want.Outcome, want.Reason, want.Notify)
					}
					if want.Message != "" && got.Message != want.Message {
						t.Errorf("Message = %q\nwant %q", got.Message, want.Message)
					}
					if want.Rule != "" && got.Rule != want.Rule {
						t.Errorf("Rule = %q, want %q", got.Rule, want.Rule)
					}
				})
			}
		}
	}
}

// TestExamplePolicy checks the shipped example policy's decisions for the
// demo's agents, with the roles of the demo's roles file.
func TestExamplePolicy(t *testing.T) {
	b, err := os.ReadFile("../deploy/policy/policy.csv")
	if err != nil {
		t.Fatal(err)
	}
	p := newPolicy(t, 1, string(b))
	if w := p.Warnings(); len(w) != 0 {
		t.Errorf("example policy warnings: %q", w)
	}
	const (
		reporter   = "spiffe://example.org/agents/reporter"
		writer     = "spiffe://example.org/agents/writer"
		helper     = "spiffe://example.org/agents/helper"
		payrollBot = "spiffe://example.org/agents/finance/payroll-bot"
		stranger   = "spiffe://example.org/agents/stranger"

		reportsReadLine  = "p, group:reporting, reports-read, read, intern, allow"
		reportsWriteLine = "p, group:reporting, reports-write, write, junior, allow"
		payrollReadLine  = "p, group:finance, payroll-read, read, senior, allow"
		archiveDenyLine  = "p, group:reporting, archive/*, write, intern, deny"
	)
	roles := map[string]authz.Role{
		"reports-read":    {Name: "reports-read", Class: authz.Read, Classification: authz.Internal, MaxTTL: 30 * time.Minute},
		"reports-write":   {Name: "reports-write", Class: authz.Write, Classification: authz.Internal, MaxTTL: 10 * time.Minute},
		"payroll-read":    {Name: "payroll-read", Class: authz.Read, Classification: authz.PII, MaxTTL: 5 * time.Minute},
		"archive/reports": {Name: "archive/reports", Class: authz.Write, Classification: authz.Internal, MaxTTL: 5 * time.Minute},
	}
	g := defaultGate(t)
	for _, tt := range []struct {
		id      string
		level   authz.Level
		role    string
		outcome authz.Outcome
		reason  authz.Reason
		matched string
	}{
		{reporter, authz.Intern, "reports-read", authz.Allow, authz.Allowed, reportsReadLine},
		{reporter, authz.Intern, "reports-write", authz.Deny, authz.ClassNotAllowed, ""},
		{reporter, authz.Intern, "payroll-read", authz.Deny, authz.NoPolicyMatch, ""},
		{helper, authz.Junior, "reports-read", authz.Allow, authz.Allowed, reportsReadLine},
		{helper, authz.Junior, "reports-write", authz.NeedsApproval, authz.ApprovalRequired, reportsWriteLine},
		{writer, authz.Senior, "reports-write", authz.Allow, authz.Allowed, reportsWriteLine},
		{writer, authz.Senior, "payroll-read", authz.Deny, authz.NoPolicyMatch, ""},
		{writer, authz.Senior, "archive/reports", authz.Deny, authz.PolicyDenied, archiveDenyLine},
		{payrollBot, authz.Junior, "payroll-read", authz.Deny, authz.LevelTooLow, ""},
		{payrollBot, authz.Senior, "payroll-read", authz.Allow, authz.Allowed, payrollReadLine},
		{payrollBot + "/eu", authz.Senior, "payroll-read", authz.Allow, authz.Allowed, payrollReadLine},
		{payrollBot, authz.Principal, "reports-read", authz.Deny, authz.NoPolicyMatch, ""},
		{"spiffe://example.org/agents/financebot", authz.Senior, "payroll-read", authz.Deny, authz.NoPolicyMatch, ""},
		{stranger, authz.Principal, "reports-read", authz.Deny, authz.NoPolicyMatch, ""},
	} {
		t.Run(fmt.Sprintf("%s/%s/%s", tt.id, tt.level, tt.role), func(t *testing.T) {
			a := &authz.Agent{ID: tt.id, Level: tt.level, Active: true, Roles: slices.Collect(maps.Keys(roles))}
			got := g.Decide(p, a, roles[tt.role], 0)
			if got.Outcome != tt.outcome || got.Reason != tt.reason || got.Matched != tt.matched {
				t.Errorf("Decide = %s, %s, matched %q (%s)\nwant %s, %s, matched %q",
					got.Outcome, got.Reason, got.Matched, got.Message, tt.outcome, tt.reason, tt.matched)
			}
		})
	}
}

// TestDecisionExplained checks that a decision names the policy line that
// made it, or says why there is none.
func TestDecisionExplained(t *testing.T) {
	const (
		publicLine = "p, group:all, kv/public/*, read, intern, allow"
		ownLine    = "p, spiffe://td/agent/a, kv/reports/*, read, intern, allow"
		denyLine   = "p, spiffe://td/agent/a, kv/reports/*, *, intern, deny"
		opsLine    = "p, group:all, kv/ops/*, write, senior, allow"
	)
	explained := newPolicy(t, 7, "g, spiffe://td/*, group:all\n"+publicLine+"\n"+ownLine+"\n"+opsLine+"\n")
	denied := newPolicy(t, 8, allowAll+denyLine+"\n")
	role := func(name string, class authz.Class, cls authz.Classification) authz.Role {
		return authz.Role{Name: name, Class: class, Classification: cls, MaxTTL: time.Hour}
	}
	for _, tt := range []struct {
		name   string
		policy *authz.Policy
		level  authz.Level
		role   authz.Role
		want   authz.Decision
	}{
		{"allow names its line", explained, authz.Intern, role("kv/reports/q3", authz.Read, authz.Internal), authz.Decision{
			Outcome: authz.Allow, Reason: authz.Allowed, Message: `intern agent may hold read role "kv/reports/q3"`,
			Matched: ownLine, Rule: "intern: read allowed", PolicyVersion: 7, TTL: time.Hour}},
		{"group allow names its line", explained, authz.Intern, role("kv/public/menu", authz.Read, authz.Public), authz.Decision{
			Outcome: authz.Allow, Reason: authz.Allowed, Message: `intern agent may hold read role "kv/public/menu"`,
			Matched: publicLine, Rule: "intern: read allowed", PolicyVersion: 7, TTL: time.Hour}},
		{"no line", explained, authz.Principal, role("kv/payroll/read", authz.Read, authz.Internal), authz.Decision{
			Reason: authz.NoPolicyMatch, PolicyVersion: 7,
			Message: `no segmentation rule lets agent spiffe://td/agent/a hold the read role "kv/payroll/read" at level principal; ask the platform team`}},
		{"line for another class", explained, authz.Principal, role("kv/reports/fix", authz.Write, authz.Internal), authz.Decision{
			Reason: authz.NoPolicyMatch, PolicyVersion: 7,
			Message: `no segmentation rule lets agent spiffe://td/agent/a hold the write role "kv/reports/fix" at level principal; ask the platform team`}},
		{"line from a higher level", explained, authz.Junior, role("kv/ops/restart", authz.Write, authz.Internal), authz.Decision{
			Reason: authz.LevelTooLow, PolicyVersion: 7,
			Message: `role "kv/ops/restart" (write, internal data) needs maturity level senior or above; agent spiffe://td/agent/a is junior`}},
		{"deny line over a broad allow", denied, authz.Principal, role("kv/reports/q3", authz.Read, authz.Internal), authz.Decision{
			Reason: authz.PolicyDenied, Matched: denyLine, PolicyVersion: 8,
			Message: `a segmentation rule denies agent spiffe://td/agent/a the read role "kv/reports/q3"`}},
		{"deny line elsewhere", denied, authz.Principal, role("kv/other/q3", authz.Read, authz.Internal), authz.Decision{
			Outcome: authz.Allow, Reason: authz.Allowed, Message: `principal agent may hold read role "kv/other/q3"`,
			Matched: allowAllLine, Rule: "principal: read allowed", PolicyVersion: 8, TTL: 5 * time.Minute, MaxUses: 100}},
		// The deny line applies to every class and level; the maturity
		// gating that keeps the role from these agents anyway must not hide
		// it.
		{"deny line, pii role, intern", denied, authz.Intern, role("kv/reports/salaries", authz.Read, authz.PII), authz.Decision{
			Reason: authz.PolicyDenied, Matched: denyLine, PolicyVersion: 8,
			Message: `a segmentation rule denies agent spiffe://td/agent/a the read role "kv/reports/salaries"`}},
		{"deny line, privileged role, senior", denied, authz.Senior, role("kv/reports/admin", authz.Privileged, authz.Internal), authz.Decision{
			Reason: authz.PolicyDenied, Matched: denyLine, PolicyVersion: 8,
			Message: `a segmentation rule denies agent spiffe://td/agent/a the privileged role "kv/reports/admin"`}},
		{"no policy", nil, authz.Principal, role("kv/reports/q3", authz.Read, authz.Internal), authz.Decision{
			Reason:  authz.NoPolicy,
			Message: "no segmentation policy is loaded, so the broker denies every request; ask the platform team to set one"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := &authz.Agent{ID: agentID, Level: tt.level, Active: true, Roles: []string{tt.role.Name}}
			if got := defaultGate(t).Decide(tt.policy, a, tt.role, 0); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decide =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

// allowed asks p whether subject may hold role, a read role of internal
// data, at level intern.
func allowed(t *testing.T, p *authz.Policy, subject, role string) bool {
	t.Helper()
	v, err := p.Decide(authz.Query{Subject: subject, Role: role, Class: authz.Read, Level: authz.Intern, Classification: authz.Internal})
	if err != nil {
		t.Fatalf("Decide(%s, %s): %v", subject, role, err)
	}
	return v.Allow
}

func TestGroupPatterns(t *testing.T) {
	p := newPolicy(t, 1, `g, spiffe://td/agents/*, group:agents
g, group:agents, group:staff
g, spiffe://td/solo, group:staff
g, group:staff, group:everyone
p, group:agents, kv/agents/*, read, intern, allow
p, group:everyone, kv/everyone/*, read, intern, allow
`)
	for _, tt := range []struct {
		subject        string
		agents, nested bool // may hold kv/agents/x, kv/everyone/x
	}{
		{"spiffe://td/agents/x", true, true},
		{"spiffe://td/agents/x/y", true, true},
		{"spiffe://td/solo", false, true},
		{"spiffe://td/agents", false, false},
		{"spiffe://td/agentsx", false, false},
		{"spiffe://td/agentsx/y", false, false},
		{"spiffe://other/agents/x", false, false},
		{"spiffe://td/solo/x", false, false},
		{"spiffe://td/other", false, false},
	} {
		if got := allowed(t, p, tt.subject, "kv/agents/x"); got != tt.agents {
			t.Errorf("%s may hold kv/agents/x: %t, want %t", tt.subject, got, tt.agents)
		}
		if got := allowed(t, p, tt.subject, "kv/everyone/x"); got != tt.nested {
			t.Errorf("%s may hold kv/everyone/x (two groups up): %t, want %t", tt.subject, got, tt.nested)
		}
	}
}

func TestRolePatterns(t *testing.T) {
	p := newPolicy(t, 1, `g, spiffe://td/*, group:all
p, group:all, kv/reports/*, read, intern, allow
p, group:all, reports-read, read, intern, allow
`)
	for _, tt := range []struct {
		role string
		want bool
	}{
		{"kv/reports/read", true},
		{"kv/reports/q3/read", true},
		{"kv/reports", false},
		{"kv/reportsx/read", false},
		{"kv/payroll/read", false},
		{"kv", false},
		{"reports-read", true},
		{"reports-read/x", false},
		{"reports-reader", false},
	} {
		if got := allowed(t, p, agentID, tt.role); got != tt.want {
			t.Errorf("%s allowed: %t, want %t", tt.role, got, tt.want)
		}
	}
}

// edit returns text with old replaced by repl, failing if old is absent so
// that a changed model cannot silently turn a case into a no-op.
func edit(t *testing.T, text, old, repl string) string {
	t.Helper()
	if !strings.Contains(text, old) {
		t.Fatalf("the shipped model no longer contains %q", old)
	}
	return strings.Replace(text, old, repl, 1)
}

func TestNewPolicyRefusesModel(t *testing.T) {
	const (
		request = "r = sub, obj, act, lvl, cls"
		effect  = "e = some(where (p.eft == allow)) && !some(where (p.eft == deny))"
		keyObj  = "keyMatch(r.obj, p.obj)"
	)
	m := shippedModel(t)
	for _, tt := range []struct {
		name, model, want string
	}{
		{"no request_definition", edit(t, m, "[request_definition]", "[x]"), "authz: model: missing required sections: request_definition"},
		{"no policy_definition", edit(t, m, "[policy_definition]", "[x]"), "authz: model: missing required sections: policy_definition"},
		{"no policy_effect", edit(t, m, "[policy_effect]", "[x]"), "authz: model: missing required sections: policy_effect"},
		{"no matchers", edit(t, m, "[matchers]", "[x]"), "authz: model: missing required sections: matchers"},
		{"unknown request field", edit(t, m, request, "r = sub, obj, act, foo"),
			`authz: model: request field "foo" is not one the broker provides (sub, obj, act, lvl, cls)`},
		{"no act field", edit(t, m, request, "r = sub, obj, lvl, cls"),
			`authz: model: the request must have the field "act" (it has sub, obj, lvl, cls)`},
		{"no sub field", edit(t, m, request, "r = obj, act"),
			`authz: model: the request must have the field "sub" (it has obj, act)`},
		{"two requests", edit(t, m, request, request+"\nr2 = sub, obj, act"), "authz: model: request_definition must define exactly r"},
		{"matcher ignores r.sub", edit(t, m, "g(r.sub, p.sub)", `p.sub == "group:all"`),
			"authz: model: the matcher never looks at r.sub, so it cannot tell requests apart"},
		{"matcher ignores r.obj", edit(t, m, keyObj, `p.obj == "*"`),
			"authz: model: the matcher never looks at r.obj, so it cannot tell requests apart"},
		{"eval in matcher", edit(t, m, keyObj, keyObj+" && eval(p.obj)"),
			"authz: model: eval() is not allowed in the matcher: it would run policy text as code"},
		{"unsupported effect", edit(t, m, effect, "e = some(where (p.eft == maybe))"),
			"authz: model does not evaluate: authz: policy evaluation: unsupported effect"},
		{"unknown function", edit(t, m, keyObj, "nosuch(r.obj, p.obj)"),
			"authz: model does not evaluate: authz: policy evaluation: Undefined function nosuch"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := authz.NewPolicy(1, tt.model, allowAll)
			if err == nil || err.Error() != tt.want || p != nil {
				t.Errorf("NewPolicy = %v, %v\nwant error %s", p, err, tt.want)
			}
		})
	}
}

func TestNewPolicyRefusesPolicy(t *testing.T) {
	const midStar = "'*' is allowed only as the whole last segment; a '*' in the middle matches more than it appears to"
	for _, tt := range []struct {
		name, policy, want string
	}{
		{"star in the middle", "p, group:all, kv/*/read, read, intern, allow",
			`authz: policy line 1: pattern "kv/*/read": ` + midStar},
		{"star inside a segment", "p, group:all, kv/rep*, read, intern, allow",
			`authz: policy line 1: pattern "kv/rep*": ` + midStar},
		{"line number counts comments and blanks", "# roles\n\n" + allowAll + "p, group:all, kv/*/read, read, intern, allow",
			`authz: policy line 5: pattern "kv/*/read": ` + midStar},
		{"bare subject", "p, alice, *, read, intern, allow",
			`authz: policy line 1: subject "alice": want a SPIFFE ID (spiffe://trust-domain/path) or group:<name>`},
		{"subject pattern", "p, spiffe://td/agents/*, *, read, intern, allow",
			`authz: policy line 1: subject "spiffe://td/agents/*": '*' at byte 19 is a pattern or expression character and is not allowed`},
		{"subject without path", "p, spiffe://td, *, read, intern, allow",
			`authz: policy line 1: subject "spiffe://td": SPIFFE ID has no path; name a workload, not a trust domain`},
		{"quoted subject", `p, "group:all", *, read, intern, allow`,
			`authz: policy line 1: subject "\"group:all\"": want a SPIFFE ID (spiffe://trust-domain/path) or group:<name>`},
		{"bad class", "p, group:all, *, admin, intern, allow",
			`authz: policy line 1: unknown role class "admin" (want read, write or privileged)`},
		{"bad level", "p, group:all, *, read, boss, allow",
			`authz: policy line 1: unknown level "boss" (want intern, junior, senior or principal)`},
		{"star level", "p, group:all, *, read, *, allow",
			`authz: policy line 1: unknown level "*" (want intern, junior, senior or principal)`},
		{"bad effect", "p, group:all, *, read, intern, maybe",
			`authz: policy line 1: effect must be allow or deny, not "maybe"`},
		{"too few fields", "p, group:all, *, read, intern",
			"authz: policy line 1: p lines have 5 fields, this one has 4"},
		{"too many fields", "p, group:all, *, read, intern, allow, x",
			"authz: policy line 1: p lines have 5 fields, this one has 6"},
		{"unknown ptype", "q, group:all, *, read, intern, allow",
			`authz: policy line 1: "q" is not a policy or role type of the model`},
		{"empty field", "p, group:all, , read, intern, allow",
			"authz: policy line 1: field 2 is empty"},
		{"quote in a role", "p, group:all, kv/a'b, read, intern, allow",
			`authz: policy line 1: pattern "kv/a'b": quote character ' at byte 4 is not allowed`},
		{"double quote in a role", `p, group:all, kv/a", read, intern, allow`,
			`authz: policy line 1: pattern "kv/a\"": quote character " at byte 4 is not allowed`},
		{"|| in a role", "p, group:all, kv/a||true, read, intern, allow",
			`authz: policy line 1: pattern "kv/a||true": '|' at byte 4 is a pattern or expression character and is not allowed`},
		{"matcher token in a role", "p, group:all, p.obj, read, intern, allow",
			`authz: policy line 1: pattern "p.obj": segment "p.obj" looks like a Casbin matcher token (r., p., g., e., m.)`},
		{"matcher token in a group", "p, group:p.sub, *, read, intern, allow",
			`authz: policy line 1: group "p.sub": segment "p.sub" looks like a Casbin matcher token (r., p., g., e., m.)`},
		{"g group is a SPIFFE ID", "g, spiffe://td/a, spiffe://td/b",
			`authz: policy line 1: "spiffe://td/b": the second field of a g line is a group:<name>`},
		{"g group is a bare name", "g, spiffe://td/a, admins",
			`authz: policy line 1: "admins": the second field of a g line is a group:<name>`},
		{"g group is a pattern", "g, spiffe://td/a, group:x/*",
			`authz: policy line 1: group "x/*": '*' at byte 2 is a pattern or expression character and is not allowed`},
		{"g member is a group pattern", "g, group:x/*, group:y",
			`authz: policy line 1: member pattern "group:x/*" must be a SPIFFE ID or trust domain followed by /*`},
		{"g member has a quote", "g, spiffe://td/a', group:y",
			`authz: policy line 1: subject "spiffe://td/a'": quote character ' at byte 13 is not allowed`},
		{"g line too short", "g, spiffe://td/a",
			"authz: policy line 1: g lines have 2 fields, this one has 1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := authz.NewPolicy(1, shippedModel(t), tt.policy)
			if err == nil || err.Error() != tt.want || p != nil {
				t.Errorf("NewPolicy = %v, %v\nwant error %s", p, err, tt.want)
			}
		})
	}
}

func TestNewPolicyWarnings(t *testing.T) {
	for _, tt := range []struct {
		name, policy string
		lines        int
		want         []string
	}{
		{"clean", allowAll, 1, nil},
		{"empty", "", 0, []string{"the policy has no p lines: every request will be denied"}},
		{"comments and groups only", "# nothing yet\ng, spiffe://td/*, group:all\n", 0,
			[]string{"the policy has no p lines: every request will be denied"}},
		{"duplicate p line", allowAll + "p,group:all,*,*,intern,allow\n", 1, []string{"policy line 3 repeats an earlier line"}},
		{"duplicate g line", allowAll + "g, spiffe://td/*, group:all\n", 1, []string{"policy line 3 repeats an earlier line"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newPolicy(t, 1, tt.policy)
			if got := p.Warnings(); !slices.Equal(got, tt.want) || p.Lines() != tt.lines {
				t.Errorf("Warnings() = %q, Lines() = %d; want %q, %d", got, p.Lines(), tt.want, tt.lines)
			}
		})
	}

	// A policy without p lines loads, and denies.
	a := agent(authz.Principal)
	want := authz.Decision{Reason: authz.NoPolicyMatch, PolicyVersion: 1,
		Message: `no segmentation rule lets agent spiffe://td/agent/a hold the read role "db-read" at level principal; ask the platform team`}
	if got := defaultGate(t).Decide(newPolicy(t, 1, ""), a, readRole, 0); !reflect.DeepEqual(got, want) {
		t.Errorf("Decide under an empty policy =\n %+v\nwant\n %+v", got, want)
	}
}

// TestReplacementModel loads a model that knows nothing of levels or
// classifications: the policy then grants every class, and the code's
// invariants and maturity limits still hold.
func TestReplacementModel(t *testing.T) {
	const model = `[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && keyMatch(r.obj, p.obj) && r.act == p.act
`
	const (
		readLine       = "p, spiffe://td/agent/a, kv/*, read"
		writeLine      = "p, spiffe://td/agent/a, kv/*, write"
		privilegedLine = "p, spiffe://td/agent/a, kv/*, privileged"
	)
	p, err := authz.NewPolicy(2, model, readLine+"\n"+writeLine+"\n"+privilegedLine+"\n")
	if err != nil {
		t.Fatalf("NewPolicy: %v", err)
	}
	g := defaultGate(t)
	for _, tt := range []struct {
		id      string
		level   authz.Level
		class   authz.Class
		outcome authz.Outcome
		reason  authz.Reason
		matched string
		rule    string
	}{
		{agentID, authz.Intern, authz.Read, authz.Allow, authz.Allowed, readLine, "intern: read allowed"},
		{agentID, authz.Intern, authz.Write, authz.Deny, authz.ClassNotAllowed, "", "intern: read only (invariant)"},
		{agentID, authz.Intern, authz.Privileged, authz.Deny, authz.ClassNotAllowed, "", "intern: read only (invariant)"},
		{agentID, authz.Junior, authz.Write, authz.NeedsApproval, authz.ApprovalRequired, writeLine, "junior: write needs human approval"},
		{agentID, authz.Junior, authz.Privileged, authz.Deny, authz.ClassNotAllowed, privilegedLine, "junior: no privileged"},
		{agentID, authz.Senior, authz.Privileged, authz.Deny, authz.ClassNotAllowed, privilegedLine, "senior: no privileged"},
		{agentID, authz.Principal, authz.Privileged, authz.Allow, authz.Allowed, privilegedLine, "principal: privileged allowed"},
		{"spiffe://td/agent/b", authz.Principal, authz.Read, authz.Deny, authz.NoPolicyMatch, "", ""},
	} {
		t.Run(fmt.Sprintf("%s/%s/%s", tt.id, tt.level, tt.class), func(t *testing.T) {
			role := authz.Role{Name: "kv/secrets/" + tt.class.String(), Class: tt.class, Classification: authz.Secret, MaxTTL: time.Hour}
			a := &authz.Agent{ID: tt.id, Level: tt.level, Active: true, Roles: []string{role.Name}}
			got := g.Decide(p, a, role, 0)
			if got.Outcome != tt.outcome || got.Reason != tt.reason || got.Matched != tt.matched || got.Rule != tt.rule {
				t.Errorf("Decide = %s, %s, matched %q, rule %q (%s)\nwant %s, %s, matched %q, rule %q",
					got.Outcome, got.Reason, got.Matched, got.Rule, got.Message, tt.outcome, tt.reason, tt.matched, tt.rule)
			}
		})
	}
}

// TestDecideCacheIsPerPolicy asks the same question of two policy versions
// in turn: neither may answer from the other's cache.
func TestDecideCacheIsPerPolicy(t *testing.T) {
	g := defaultGate(t)
	v1 := newPolicy(t, 1, allowAll)
	v2 := newPolicy(t, 2, allowAll+"p, group:all, db-read, read, intern, deny\n")
	a := agent(authz.Junior)
	for _, tt := range []struct {
		p       *authz.Policy
		outcome authz.Outcome
		reason  authz.Reason
	}{
		{v1, authz.Allow, authz.Allowed},
		{v2, authz.Deny, authz.PolicyDenied},
		{v1, authz.Allow, authz.Allowed},
		{v2, authz.Deny, authz.PolicyDenied},
	} {
		if d := g.Decide(tt.p, a, readRole, 0); d.Outcome != tt.outcome || d.Reason != tt.reason || d.PolicyVersion != tt.p.Version() {
			t.Errorf("Decide under version %d = %s, %s, version %d; want %s, %s",
				tt.p.Version(), d.Outcome, d.Reason, d.PolicyVersion, tt.outcome, tt.reason)
		}
	}
}

// TestDecideConcurrent has 8 goroutines decide the same requests against one
// policy, whose cache they fill together; every answer must be the one a
// lone caller gets from a fresh copy of the policy.
func TestDecideConcurrent(t *testing.T) {
	const text = allowAll + "p, spiffe://td/agent/a, db-admin, *, intern, deny\n"
	g := defaultGate(t)
	type request struct {
		agent *authz.Agent
		role  authz.Role
	}
	var requests []request
	for _, l := range levels {
		for _, r := range []authz.Role{readRole, writeRole, adminRole} {
			requests = append(requests, request{agent(l), r})
			b := agent(l)
			b.ID = "spiffe://td/agent/b"
			requests = append(requests, request{b, r})
		}
	}
	alone := newPolicy(t, 1, text)
	want := make([]authz.Decision, len(requests))
	for i, r := range requests {
		want[i] = g.Decide(alone, r.agent, r.role, 0)
	}

	shared := newPolicy(t, 1, text)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for n := range 50 * len(requests) {
				i := (n + w) % len(requests)
				if got := g.Decide(shared, requests[i].agent, requests[i].role, 0); !reflect.DeepEqual(got, want[i]) {
					t.Errorf("goroutine %d: Decide(%s, %s) =\n %+v\nwant\n %+v", w, requests[i].agent.Level, requests[i].role.Name, got, want[i])
					return
				}
			}
		})
	}
	wg.Wait()
}

// FuzzDecisionCanonical is the differential property the policy relies on:
// a raw role name CanonicalRole accepts gets the same verdict as its
// canonical form, and an allow under "kv/a/*" really is below kv/a.
func FuzzDecisionCanonical(f *testing.F) {
	p := newPolicy(f, 1, "g, spiffe://td/*, group:all\np, group:all, kv/a/*, read, intern, allow\n")
	for _, s := range []string{
		"kv/a/../b", "kv/a/%2e%2e", "kv//a", "kv/a/.", "KV/a", "ｋv/a", "kv/a\u200b", "kv/a ",
		"p.sub", "kv/a'", "kv\\a", "kv/a||true", "kv/a/b", "kv/a", "kv/ab",
	} {
		f.Add(s)
	}
	query := func(role string) authz.Query {
		return authz.Query{Subject: agentID, Role: role, Class: authz.Read, Level: authz.Intern, Classification: authz.Internal}
	}
	f.Fuzz(func(t *testing.T, r string) {
		canonical, err := authz.CanonicalRole(r)
		if err != nil {
			return
		}
		got, err := p.Decide(query(r))
		if err != nil {
			t.Fatalf("Decide(%q): %v", r, err)
		}
		want, err := p.DecideUncached(query(canonical))
		if err != nil {
			t.Fatalf("DecideUncached(%q): %v", canonical, err)
		}
		if got != want {
			t.Fatalf("verdict for %q = %+v; for its canonical form %q = %+v", r, got, canonical, want)
		}
		if got.Allow && (!strings.HasPrefix(r, "kv/a/") || slices.Contains(strings.Split(r, "/"), "..")) {
			t.Fatalf("%q is allowed by kv/a/*", r)
		}
	})
}

// benchPolicy is n agents, each with a read line for its team's roles and
// a membership of its team's group.
func benchPolicy(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "g, spiffe://td/agent/%d, group:team%d\n", i, i%50)
		fmt.Fprintf(&b, "p, spiffe://td/agent/%d, kv/team%d/*, read, intern, allow\n", i, i%50)
	}
	return b.String()
}

// BenchmarkDecision measures a decision for an agent in the middle of a
// policy of n p lines. cached is the full Gate.Decide (invariants, Casbin
// through the policy's cache, maturity limits), as the broker runs it;
// uncached is the Casbin evaluation alone, which the cache saves.
func BenchmarkDecision(b *testing.B) {
	g := defaultGate(b)
	for _, n := range []int{10, 1000, 10000} {
		p := newPolicy(b, 1, benchPolicy(n))
		i := n / 2
		role := authz.Role{Name: fmt.Sprintf("kv/team%d/read", i%50), Class: authz.Read, Classification: authz.Internal, MaxTTL: time.Hour}
		a := &authz.Agent{ID: fmt.Sprintf("spiffe://td/agent/%d", i), Level: authz.Junior, Active: true, Roles: []string{role.Name}}
		if d := g.Decide(p, a, role, 0); d.Outcome != authz.Allow {
			b.Fatalf("%d lines: Decide = %s: %s", n, d.Outcome, d.Message)
		}
		q := authz.Query{Subject: a.ID, Role: role.Name, Class: role.Class, Level: a.Level, Classification: role.Classification}
		b.Run(fmt.Sprintf("lines=%d/cached", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				g.Decide(p, a, role, 0)
			}
		})
		b.Run(fmt.Sprintf("lines=%d/uncached", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.DecideUncached(q); err != nil {
					b.Fatal(err)
				}
			}
		})
		// Cold: a policy version's first request from each agent, which
		// also builds that agent's slice of the policy.
		b.Run(fmt.Sprintf("lines=%d/cold", n), func(b *testing.B) {
			b.ReportAllocs()
			j := 0
			for b.Loop() {
				j = (j + 1) % n
				cq := q
				cq.Subject = fmt.Sprintf("spiffe://td/agent/%d", j)
				if _, err := p.DecideUncached(cq); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
