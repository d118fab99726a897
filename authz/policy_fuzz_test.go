package authz_test

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/agentictrust/atf/authz"
)

// normalise is a policy as the broker prints its lines (Verdict.Matched):
// comments and blank lines dropped, each line's fields trimmed and joined
// with ", ".
func normalise(text string) []string {
	var out []string
	for raw := range strings.SplitSeq(text, "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, ",")
		for i := range parts {
			parts[i] = strings.TrimSpace(parts[i])
		}
		out = append(out, strings.Join(parts, ", "))
	}
	return out
}

// probes are the requests a fuzzed policy is asked: the fuzzer's own,
// and ones built from the policy's subjects, member patterns and role
// patterns, so that lines actually match. Every probe has a subject and
// role the broker could ask about.
func probes(lines []string, sub, role string, class, level, cls uint8) []authz.Query {
	subjects, roles := []string{sub}, []string{role}
	addSubject := func(s string) {
		if authz.LintSubject(s) == nil && !strings.HasPrefix(s, "group:") && !slices.Contains(subjects, s) && len(subjects) < 5 {
			subjects = append(subjects, s)
		}
	}
	addRole := func(r string) {
		if _, err := authz.CanonicalRole(r); err == nil && !slices.Contains(roles, r) && len(roles) < 5 {
			roles = append(roles, r)
		}
	}
	for _, l := range lines {
		f := strings.Split(l, ", ")
		switch {
		case f[0] == "g" && len(f) == 3:
			addSubject(strings.TrimSuffix(f[1], "*") + "m")
			addSubject(f[1])
		case f[0] == "p" && len(f) == 6:
			addSubject(f[1])
			addRole(strings.TrimSuffix(f[2], "/*") + "/x")
			addRole(strings.TrimSuffix(f[2], "/*"))
		}
	}
	var qs []authz.Query
	for _, s := range subjects {
		for _, r := range roles {
			qs = append(qs,
				authz.Query{Subject: s, Role: r, Class: authz.Class(1 + class%3), Level: authz.Level(1 + level%4), Classification: authz.Classification(1 + cls%4)},
				authz.Query{Subject: s, Role: r, Class: authz.Read, Level: authz.Principal, Classification: authz.Internal})
		}
	}
	return qs
}

// decideAll asks p every query twice (the second answer from its cache)
// and once uncached; the three must agree.
func decideAll(t *testing.T, p *authz.Policy, qs []authz.Query) []authz.Verdict {
	t.Helper()
	out := make([]authz.Verdict, len(qs))
	for i, q := range qs {
		v, err := p.Decide(q)
		if err != nil {
			t.Fatalf("Decide(%+v): %v", q, err)
		}
		cached, err := p.Decide(q)
		if err != nil || cached != v {
			t.Fatalf("Decide(%+v) = %+v, then from the cache %+v, %v", q, v, cached, err)
		}
		if u, err := p.DecideUncached(q); err != nil || u != v {
			t.Fatalf("Decide(%+v) = %+v, uncached %+v, %v", q, v, u, err)
		}
		out[i] = v
	}
	return out
}

// FuzzPolicy loads fuzzed policy text under the shipped model. Whatever the
// text, NewPolicy never panics. A refusal names the first bad line: the
// lines before it load, and the line alone is refused for the same reason.
// A policy that loads counts its distinct p lines, decides the same way
// from its cache, uncached and when loaded again, explains every answer
// with one of its own lines as printed, and loads from that printing to
// the same decisions. Appending a deny line denies what it names and
// keeps every denial; appending an allow line keeps every allowance and
// overrides no deny line.
func FuzzPolicy(f *testing.F) {
	model := shippedModel(f)
	example, err := os.ReadFile("../deploy/policy/policy.csv")
	if err != nil {
		f.Fatal(err)
	}
	for _, text := range []string{
		string(example), allowAll, "", "# nothing\n\n",
		"g, spiffe://td/*, group:all\np, group:all, kv/a/*, read, intern, allow\np, spiffe://td/agent/a, kv/a/b, *, intern, deny\n",
		"g, spiffe://td/agents/*, group:agents\ng, group:agents, group:staff\ng, group:staff, group:agents\np, group:staff, *, write, junior, allow\n",
		"p,spiffe://td/agent/a,kv/x,read,intern,allow\r\np , spiffe://td/agent/a , kv/x , read , intern , allow\n",
		"p, group:all, kv/*/read, read, intern, allow", "p, group:all, kv/a, read, intern", "g, group:x/*, group:y",
		"p, spiffe://td/agent/a, p.obj, read, intern, allow", "q, group:all, *, read, intern, allow",
		"p, group:all, *, read, *, allow", "g, spiffe://td/a, spiffe://td/b", "p, \"group:all\", *, read, intern, allow",
	} {
		f.Add(text, agentID, "kv/a/b", uint8(0), uint8(0), uint8(1))
	}
	f.Add(allowAll, "spiffe://td/agent/a/../b", "KV/a", uint8(1), uint8(3), uint8(3))
	f.Add(string(example), "spiffe://example.org/agents/finance/payroll-bot", "payroll-read", uint8(0), uint8(2), uint8(2))

	f.Fuzz(func(t *testing.T, text, sub, role string, class, level, cls uint8) {
		p, err := authz.NewPolicy(1, model, text)
		if err != nil {
			if p != nil {
				t.Fatalf("NewPolicy returned a policy and %v", err)
			}
			checkRefusal(t, model, text, err)
			return
		}
		lines := normalise(text)
		var pLines, allowLines, denyLines []string
		for _, l := range lines {
			if strings.HasPrefix(l, "p, ") && !slices.Contains(pLines, l) {
				pLines = append(pLines, l)
				if strings.HasSuffix(l, ", deny") {
					denyLines = append(denyLines, l)
				} else {
					allowLines = append(allowLines, l)
				}
			}
		}
		if p.Lines() != len(pLines) {
			t.Fatalf("Lines() = %d; the policy has %d distinct p lines", p.Lines(), len(pLines))
		}

		qs := probes(lines, sub, role, class, level, cls)
		verdicts := decideAll(t, p, qs)
		for i, v := range verdicts {
			switch {
			case v.Allow && (v.Denied || !slices.Contains(allowLines, v.Matched)):
				t.Fatalf("%+v allowed by %q, which is not an allow line of the policy", qs[i], v.Matched)
			case v.Denied && (v.Allow || !slices.Contains(denyLines, v.Matched)):
				t.Fatalf("%+v denied by %q, which is not a deny line of the policy", qs[i], v.Matched)
			case !v.Allow && !v.Denied && v.Matched != "":
				t.Fatalf("%+v neither allowed nor denied, but matched %q", qs[i], v.Matched)
			}
		}

		// Loaded again, and loaded from its printing: the same policy.
		again, err := authz.NewPolicy(2, model, text)
		if err != nil || again.Digest() != p.Digest() || !slices.Equal(again.Warnings(), p.Warnings()) {
			t.Fatalf("loaded again: %v, digest %q, warnings %q; first %q, %q", err, again.Digest(), again.Warnings(), p.Digest(), p.Warnings())
		}
		printed := strings.Join(lines, "\n")
		if !slices.Equal(normalise(printed), lines) {
			t.Fatalf("printing is not idempotent:\n%s", printed)
		}
		fromPrint, err := authz.NewPolicy(1, model, printed)
		if err != nil {
			t.Fatalf("the printed policy does not load: %v\n%s", err, printed)
		}
		if fromPrint.Lines() != p.Lines() || len(fromPrint.Warnings()) != len(p.Warnings()) {
			t.Fatalf("printed policy: %d lines, warnings %q; original %d, %q", fromPrint.Lines(), fromPrint.Warnings(), p.Lines(), p.Warnings())
		}
		for name, other := range map[string]*authz.Policy{"loaded again": again, "loaded from its printing": fromPrint} {
			if got := decideAll(t, other, qs); !slices.Equal(got, verdicts) {
				t.Fatalf("%s, the policy decides\n %+v\nnot\n %+v\nfor %+v", name, got, verdicts, qs)
			}
		}

		// A deny line for the first probe the policy could name.
		target := slices.IndexFunc(qs, func(q authz.Query) bool {
			return strings.HasPrefix(q.Subject, "spiffe://") && authz.LintSubject(q.Subject) == nil && authz.LintPattern(q.Role) == nil
		})
		if target < 0 {
			return
		}
		q := qs[target]
		denyLine := fmt.Sprintf("p, %s, %s, *, intern, deny", q.Subject, q.Role)
		denied, err := authz.NewPolicy(3, model, text+"\n"+denyLine+"\n")
		if err != nil {
			t.Fatalf("appending %q: %v", denyLine, err)
		}
		for i, v := range decideAll(t, denied, qs) {
			named := qs[i].Subject == q.Subject && qs[i].Role == q.Role
			if !verdicts[i].Allow && v.Allow || named && !v.Denied {
				t.Fatalf("after appending %q, %+v is %+v; before, %+v", denyLine, qs[i], v, verdicts[i])
			}
		}
		allowLine := fmt.Sprintf("p, %s, *, *, intern, allow", q.Subject)
		allowed, err := authz.NewPolicy(4, model, text+"\n"+allowLine+"\n")
		if err != nil {
			t.Fatalf("appending %q: %v", allowLine, err)
		}
		for i, v := range decideAll(t, allowed, qs) {
			if verdicts[i].Allow && !v.Allow || verdicts[i].Denied && (!v.Denied || v.Matched != verdicts[i].Matched) {
				t.Fatalf("after appending %q, %+v is %+v; before, %+v", allowLine, qs[i], v, verdicts[i])
			}
		}
	})
}

// checkRefusal checks the refusal of text under model: it names a line
// that is neither blank nor a comment, the lines before it load, and the
// line alone is refused for the same reason.
func checkRefusal(t *testing.T, model, text string, err error) {
	t.Helper()
	var n int
	if _, serr := fmt.Sscanf(err.Error(), "authz: policy line %d:", &n); serr != nil {
		t.Fatalf("NewPolicy: %v; want an error naming a policy line", err)
	}
	lines := strings.Split(text, "\n")
	if n < 1 || n > len(lines) {
		t.Fatalf("NewPolicy: %v; the policy has %d lines", err, len(lines))
	}
	if bad := strings.TrimSpace(lines[n-1]); bad == "" || strings.HasPrefix(bad, "#") {
		t.Fatalf("NewPolicy: %v; that line is %q", err, lines[n-1])
	}
	if _, perr := authz.NewPolicy(1, model, strings.Join(lines[:n-1], "\n")); perr != nil {
		t.Fatalf("NewPolicy: %v; but the lines before it do not load either: %v", err, perr)
	}
	reason := strings.SplitN(err.Error(), ": ", 3)[2]
	_, alone := authz.NewPolicy(1, model, lines[n-1])
	if want := "authz: policy line 1: " + reason; alone == nil || alone.Error() != want {
		t.Fatalf("NewPolicy: %v; line %d alone: %v, want %s", err, n, alone, want)
	}
}

// FuzzModel loads a fuzzed Casbin model with a fuzzed policy. Whatever the
// text, NewPolicy never panics and returns a policy or an error, never
// both; what loads loads the same way twice and decides the same way from
// both loads, answering or failing alike.
func FuzzModel(f *testing.F) {
	shipped := shippedModel(f)
	const replacement = "[request_definition]\nr = sub, obj, act\n\n[policy_definition]\np = sub, obj, act\n\n" +
		"[policy_effect]\ne = some(where (p.eft == allow))\n\n[matchers]\nm = r.sub == p.sub && keyMatch(r.obj, p.obj) && r.act == p.act\n"
	for _, tt := range []struct{ model, policy string }{
		{shipped, allowAll},
		{replacement, "p, spiffe://td/agent/a, kv/*, read\n"},
		{strings.Replace(replacement, "p = sub, obj, act", "p = sub, obj, act, owner", 1), "p, spiffe://td/agent/a, kv/*, read, ops\n"},
		{strings.Replace(replacement, "keyMatch(r.obj, p.obj)", "eval(p.obj)", 1), "p, spiffe://td/agent/a, kv/*, read\n"},
		{strings.Replace(replacement, "keyMatch(r.obj, p.obj)", "nosuch(r.obj)", 1), ""},
		{strings.Replace(replacement, "e = some(where (p.eft == allow))", "e = priority(p.eft) || deny", 1), ""},
		{strings.Replace(replacement, "r = sub, obj, act", "r = sub, obj, act, lvl, cls", 1), "p, spiffe://td/agent/a, kv/*, read\n"},
		{strings.Replace(shipped, "g = _, _", "g = _, _\ng2 = _, _, _", 1), allowAll},
		{"[matchers]\nm = (", ""},
		{"", ""},
		{"[request_definition]\nr = sub, obj, act\n[request_definition]\nr = sub\n", ""},
	} {
		f.Add(tt.model, tt.policy, agentID, "kv/a")
	}
	f.Fuzz(func(t *testing.T, modelText, text, sub, role string) {
		p, err := authz.NewPolicy(1, modelText, text)
		if err != nil {
			if p != nil || !strings.HasPrefix(err.Error(), "authz: ") {
				t.Fatalf("NewPolicy = %v, %v", p, err)
			}
			return
		}
		again, err := authz.NewPolicy(1, modelText, text)
		if err != nil || again.Digest() != p.Digest() || again.Lines() != p.Lines() || !slices.Equal(again.Warnings(), p.Warnings()) {
			t.Fatalf("loaded again: %v, %d lines, warnings %q; first %d, %q", err, again.Lines(), again.Warnings(), p.Lines(), p.Warnings())
		}
		for _, q := range probes(normalise(text), sub, role, 0, 0, 1) {
			v1, err1 := p.Decide(q)
			v2, err2 := again.DecideUncached(q)
			if v1 != v2 || fmt.Sprint(err1) != fmt.Sprint(err2) {
				t.Fatalf("%+v: %+v, %v; loaded again, %+v, %v", q, v1, err1, v2, err2)
			}
		}
	})
}
