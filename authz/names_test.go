package authz_test

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/casbin/casbin/v2/util"

	"github.com/agentictrust/atf/authz"
)

var (
	name128 = strings.Repeat("abc/", 31) + "abcd"
	name129 = name128 + "e"
)

func TestCanonicalRole(t *testing.T) {
	for _, tt := range []struct {
		name string
		want string // the error; "" if name is canonical
	}{
		{"reports-read", ""},
		{"kv/reports/read", ""},
		{"db.v2/read", ""},
		{"a", ""},
		{"a_b-c.d/0/rp.x", ""},
		{name128, ""},
		{name129, "authz: role name is 129 bytes; the limit is 128"},
		{"", "authz: role name is empty"},

		// Path tricks that would let one role's pattern match another.
		{"kv/a/../b", `authz: role "kv/a/../b": dot segments are not allowed: ".." at byte 5`},
		{"kv/a/.", `authz: role "kv/a/.": dot segments are not allowed: "." at byte 5`},
		{"kv/a/%2e%2e/b", `authz: role "kv/a/%2e%2e/b": percent-encoding is not allowed; write the name decoded`},
		{"kv/a/%2E%2E", `authz: role "kv/a/%2E%2E": percent-encoding is not allowed; write the name decoded`},
		{"kv//a", `authz: role "kv//a": empty segment ("//") at byte 2`},
		{"kv/a/", `authz: role "kv/a/": trailing '/' is not allowed; use "kv/a"`},
		{"/kv/a", `authz: role "/kv/a": leading '/' is not allowed; use "kv/a"`},
		{"/kv/a b", `authz: role "/kv/a b": whitespace or control character U+0020 at byte 5 is not allowed`},
		{"/kv//a", `authz: role "/kv//a": leading '/' is not allowed`},
		{"kv\\a", `authz: role "kv\\a": backslash at byte 2 is not allowed; segments are separated by '/'`},
		{"kv/a..b", `authz: role "kv/a..b": segment "a..b": '.', '_' and '-' must each stand between two letters or digits`},
		{"kv/a.", `authz: role "kv/a.": segment "a.": '.', '_' and '-' must each stand between two letters or digits`},
		{"kv/-a", `authz: role "kv/-a": segment "-a": '.', '_' and '-' must each stand between two letters or digits`},

		// Case and look-alikes.
		{"KV/a", `authz: role "KV/a": uppercase letters are not allowed; use lowercase: "kv/a"`},
		{"Kv/A", `authz: role "Kv/A": uppercase letters are not allowed; use lowercase: "kv/a"`},
		{"ｋv/a", `authz: role "ｋv/a": non-ASCII character U+FF4B at byte 0 is not allowed`},
		{"\u212av/a", "authz: role \"\u212av/a\": non-ASCII character U+212A at byte 0 is not allowed"}, // Kelvin sign; lowercases to 'k'
		{"kv/а", `authz: role "kv/а": non-ASCII character U+0430 at byte 3 is not allowed`},
		{"kv/e\u0301", "authz: role \"kv/e\u0301\": non-ASCII character U+0301 at byte 4 is not allowed"},
		{"kv/a\u200b", `authz: role "kv/a\u200b": non-ASCII character U+200B at byte 4 is not allowed`},
		{"kv/a\u200d", `authz: role "kv/a\u200d": non-ASCII character U+200D at byte 4 is not allowed`},
		{"kv/a\u00a0", `authz: role "kv/a\u00a0": non-ASCII character U+00A0 at byte 4 is not allowed`},
		{"\xff", `authz: role "\xff": not valid UTF-8`},
		{"kv/a\xc0\xaf", `authz: role "kv/a\xc0\xaf": not valid UTF-8`}, // overlong '/'

		// Whitespace and control characters.
		{"kv/a ", `authz: role "kv/a ": whitespace or control character U+0020 at byte 4 is not allowed`},
		{" kv/a", `authz: role " kv/a": whitespace or control character U+0020 at byte 0 is not allowed`},
		{"kv/a\t", `authz: role "kv/a\t": whitespace or control character U+0009 at byte 4 is not allowed`},
		{"kv/a\n", `authz: role "kv/a\n": whitespace or control character U+000A at byte 4 is not allowed`},
		{"kv/a\x00", `authz: role "kv/a\x00": whitespace or control character U+0000 at byte 4 is not allowed`},
		{"kv/a\x7f", `authz: role "kv/a\x7f": whitespace or control character U+007F at byte 4 is not allowed`},

		// Casbin matcher injection.
		{"p.sub", `authz: role "p.sub": segment "p.sub" looks like a Casbin matcher token (r., p., g., e., m.)`},
		{"kv/p.obj", `authz: role "kv/p.obj": segment "p.obj" looks like a Casbin matcher token (r., p., g., e., m.)`},
		{"R.sub", `authz: role "R.sub": segment "R.sub" looks like a Casbin matcher token (r., p., g., e., m.)`},
		{"kv/a'", `authz: role "kv/a'": quote character ' at byte 4 is not allowed`},
		{"kv/a\"", `authz: role "kv/a\"": quote character " at byte 4 is not allowed`},
		{"kv/a`", "authz: role \"kv/a`\": quote character ` at byte 4 is not allowed"},
		{"kv/a||true", `authz: role "kv/a||true": '|' at byte 4 is a pattern or expression character and is not allowed`},
		{"kv/a && true", `authz: role "kv/a && true": whitespace or control character U+0020 at byte 4 is not allowed`},
		{"kv/a&&true", `authz: role "kv/a&&true": '&' at byte 4 is a pattern or expression character and is not allowed`},
		{"kv/*", `authz: role "kv/*": '*' at byte 3 is a pattern or expression character and is not allowed`},
		{"kv/:id", `authz: role "kv/:id": ':' at byte 3 is a pattern or expression character and is not allowed`},
		{"kv/{id}", `authz: role "kv/{id}": '{' at byte 3 is a pattern or expression character and is not allowed`},
		{"kv/a(b)", `authz: role "kv/a(b)": '(' at byte 4 is a pattern or expression character and is not allowed`},
	} {
		got, err := authz.CanonicalRole(tt.name)
		if tt.want == "" {
			if err != nil || got != tt.name {
				t.Errorf("CanonicalRole(%q) = %q, %v; want it unchanged", tt.name, got, err)
			}
			continue
		}
		if err == nil || err.Error() != tt.want || got != "" {
			t.Errorf("CanonicalRole(%q) = %q, %v\nwant error %s", tt.name, got, err, tt.want)
		}
	}
}

func TestCanonicalGroup(t *testing.T) {
	for _, tt := range []struct {
		name string
		want string // the error; "" if name is canonical
	}{
		{"ops", ""},
		{"team/ops", ""},
		{"", "authz: group name is empty"},
		{"Ops", `authz: group "Ops": uppercase letters are not allowed; use lowercase: "ops"`},
		{"g.admin", `authz: group "g.admin": segment "g.admin" looks like a Casbin matcher token (r., p., g., e., m.)`},
		{"ops/..", `authz: group "ops/..": dot segments are not allowed: ".." at byte 4`},
	} {
		got, err := authz.CanonicalGroup(tt.name)
		if tt.want == "" {
			if err != nil || got != tt.name {
				t.Errorf("CanonicalGroup(%q) = %q, %v; want it unchanged", tt.name, got, err)
			}
			continue
		}
		if err == nil || err.Error() != tt.want || got != "" {
			t.Errorf("CanonicalGroup(%q) = %q, %v\nwant error %s", tt.name, got, err, tt.want)
		}
	}
}

// TestCanonicalRoleEveryASCII puts each ASCII character inside a name, and
// checks the decision against the grammar written as a regular expression.
func TestCanonicalRoleEveryASCII(t *testing.T) {
	for c := range utf8.RuneSelf {
		for _, name := range []string{"kv/a" + string(rune(c)) + "b", string(rune(c)) + ".x"} {
			if _, err := authz.CanonicalRole(name); (err == nil) != isCanonical(name) {
				t.Errorf("CanonicalRole(%q): %v; grammar says canonical = %t", name, err, isCanonical(name))
			}
		}
	}
}

var (
	grammar = regexp.MustCompile(`^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$`)
	token   = regexp.MustCompile(`(^|/)[rpgem]\.`)
	// hint is an error's suggested spelling.
	hint = regexp.MustCompile(`; use (?:lowercase: )?("(?:[^"\\]|\\.)*")$`)
)

// isCanonical is the documented grammar, independent of the implementation.
func isCanonical(s string) bool {
	return len(s) <= 128 && grammar.MatchString(s) && !token.MatchString(s)
}

func FuzzCanonicalRole(f *testing.F) {
	for _, s := range []string{
		"kv/reports/read", "KV/Reports", "/kv/a/", "kv/a/../b", "kv/a/%2e%2e", "p.sub", "kv/g.x",
		"ｋv/a", "\u212av/a", "kv/a\u200b", "kv/a ", "\xff", "kv//a", "a..b", "kv/*", name128, name129,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, x string) {
		got, err := authz.CanonicalRole(x)
		if _, gerr := authz.CanonicalGroup(x); (gerr == nil) != (err == nil) {
			t.Fatalf("CanonicalRole(%q): %v, but CanonicalGroup: %v", x, err, gerr)
		}
		if (err == nil) != isCanonical(x) {
			t.Fatalf("CanonicalRole(%q): %v; grammar says canonical = %t", x, err, isCanonical(x))
		}
		if err != nil {
			if got != "" || !strings.HasPrefix(err.Error(), "authz: ") {
				t.Fatalf("CanonicalRole(%q) = %q, %v", x, got, err)
			}
			// Every spelling an error suggests is canonical.
			if m := hint.FindStringSubmatch(err.Error()); m != nil {
				s, uerr := strconv.Unquote(m[1])
				if uerr != nil {
					t.Fatalf("CanonicalRole(%q): %v: bad hint: %v", x, err, uerr)
				}
				if _, serr := authz.CanonicalRole(s); serr != nil {
					t.Fatalf("CanonicalRole(%q): %v, but the suggestion is refused: %v", x, err, serr)
				}
			}
			// An ASCII name wrong only in case is told its lowercase spelling.
			lower := strings.ToLower(x)
			if _, lerr := authz.CanonicalRole(lower); lerr == nil && isASCII(x) {
				want := "use lowercase: " + strconv.Quote(lower)
				if !strings.HasSuffix(err.Error(), want) {
					t.Fatalf("CanonicalRole(%q): %v; want it to end %s", x, err, want)
				}
			}
			return
		}
		if got != x || !isASCII(x) || strings.ToLower(x) != x ||
			strings.Contains(x, "..") || strings.Contains(x, "//") || strings.ContainsAny(x, "%*") {
			t.Fatalf("CanonicalRole(%q) = %q, accepted", x, got)
		}
		for seg := range strings.SplitSeq(x, "/") {
			if seg == "" {
				t.Fatalf("CanonicalRole(%q) accepted an empty segment", x)
			}
		}
	})
}

func isASCII(s string) bool {
	for i := range len(s) {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func TestLintPattern(t *testing.T) {
	const midStar = "'*' is allowed only as the whole last segment; a '*' in the middle matches more than it appears to"
	for _, tt := range []struct {
		pattern string
		want    string // the error; "" if the pattern is accepted
	}{
		{"*", ""},
		{"kv/reports/*", ""},
		{"kv/*", ""},
		{"kv/reports/read", ""},
		{"reports-read", ""},
		{name128 + "/*", ""},
		{name129 + "/*", "authz: pattern name is 129 bytes; the limit is 128"},
		{"", "authz: pattern name is empty"},
		{"/*", "authz: pattern name is empty"},
		{"kv/*/read", `authz: pattern "kv/*/read": ` + midStar},
		{"kv/rep*", `authz: pattern "kv/rep*": ` + midStar},
		{"*/read", `authz: pattern "*/read": ` + midStar},
		{"**", `authz: pattern "**": ` + midStar},
		{"kv/**", `authz: pattern "kv/**": ` + midStar},
		{"kv/*/*", `authz: pattern "kv/*/*": ` + midStar},
		{"kv/*/", `authz: pattern "kv/*/": ` + midStar},
		{"kv/:id", `authz: pattern "kv/:id": ':' at byte 3 is a pattern or expression character and is not allowed`},
		{"kv/{x}/*", `authz: pattern "kv/{x}/*": '{' at byte 3 is a pattern or expression character and is not allowed`},
		{"kv/(a|b)", `authz: pattern "kv/(a|b)": '(' at byte 3 is a pattern or expression character and is not allowed`},
		{"kv/a?", `authz: pattern "kv/a?": '?' at byte 4 is a pattern or expression character and is not allowed`},
		{"kv/[ab]", `authz: pattern "kv/[ab]": '[' at byte 3 is a pattern or expression character and is not allowed`},
		{"kv/a/../*", `authz: pattern "kv/a/../*": dot segments are not allowed: ".." at byte 5`},
		{"kv/%2e%2e/*", `authz: pattern "kv/%2e%2e/*": percent-encoding is not allowed; write the name decoded`},
		{"KV/Reports/*", `authz: pattern "KV/Reports/*": uppercase letters are not allowed; use lowercase: "kv/reports/*"`},
		{"/kv/*", `authz: pattern "/kv/*": leading '/' is not allowed; use "kv/*"`},
		{"kv//*", `authz: pattern "kv//*": trailing '/' is not allowed; use "kv/*"`},
		{"kv/p.obj/*", `authz: pattern "kv/p.obj/*": segment "p.obj" looks like a Casbin matcher token (r., p., g., e., m.)`},
		{"kv/a /*", `authz: pattern "kv/a /*": whitespace or control character U+0020 at byte 4 is not allowed`},
	} {
		err := authz.LintPattern(tt.pattern)
		if tt.want == "" {
			if err != nil {
				t.Errorf("LintPattern(%q) = %v", tt.pattern, err)
			}
			continue
		}
		if err == nil || err.Error() != tt.want {
			t.Errorf("LintPattern(%q) = %v\nwant %s", tt.pattern, err, tt.want)
		}
	}
}

func TestMatchPattern(t *testing.T) {
	for _, tt := range []struct {
		name, pattern string
		want          bool
	}{
		{"a", "*", true},
		{"a/b/c", "*", true},
		{"a/b/c", "a/b/*", true},
		{"a/b/c/d", "a/b/*", true},
		{"a/b", "a/b/*", false},
		{"a/bc", "a/b/*", false},
		{"a/c/d", "a/b/*", false},
		{"a/b", "a/b", true},
		{"a/b/c", "a/b", false},
		{"a/bc", "a/b", false},
	} {
		if got := authz.MatchPattern(tt.name, tt.pattern); got != tt.want {
			t.Errorf("MatchPattern(%q, %q) = %t, want %t", tt.name, tt.pattern, got, tt.want)
		}
	}
}

// TestMatchPatternAgreesWithKeyMatch checks MatchPattern against Casbin's
// keyMatch for canonical names and accepted patterns. They differ only on
// patterns LintPattern refuses: keyMatch ignores everything after the first
// '*', so a '*' inside a segment or before the last one matches more than
// it appears to; those cases are listed here as the reason for the refusal.
func TestMatchPatternAgreesWithKeyMatch(t *testing.T) {
	names := []string{"a", "a/b", "a/bc", "a/b/c", "a/b/c/d", "kv/reports", "kv/reports/read", "kv/reports-admin", "kv/repo"}
	patterns := []string{"*", "a", "a/b", "a/b/*", "a/*", "kv/*", "kv/reports", "kv/reports/*"}
	for _, n := range names {
		if _, err := authz.CanonicalRole(n); err != nil {
			t.Fatal(err)
		}
		for _, p := range patterns {
			if err := authz.LintPattern(p); err != nil {
				t.Fatal(err)
			}
			if got, want := authz.MatchPattern(n, p), util.KeyMatch(n, p); got != want {
				t.Errorf("MatchPattern(%q, %q) = %t; util.KeyMatch = %t", n, p, got, want)
			}
		}
	}

	for _, tt := range []struct{ name, pattern string }{
		{"a/bc", "a/b*"},
		{"kv/reports-admin", "kv/rep*"},
		{"kv/x/admin", "kv/*/read"},
		{"admin", "*/read"},
		{"kv/reports-admin", "kv/reports*"},
	} {
		if !util.KeyMatch(tt.name, tt.pattern) {
			t.Errorf("util.KeyMatch(%q, %q) = false; this case no longer shows keyMatch over-matching", tt.name, tt.pattern)
		}
		if authz.LintPattern(tt.pattern) == nil {
			t.Errorf("LintPattern(%q) accepts a pattern keyMatch reads as matching %q", tt.pattern, tt.name)
		}
	}
}

func FuzzMatchPatternAgreesWithKeyMatch(f *testing.F) {
	f.Add("a/b/c", "a/b/*")
	f.Add("a/bc", "a/b/*")
	f.Add("a/b", "a/b/*")
	f.Add("kv/reports", "*")
	f.Add("kv/reports", "kv/reports")
	f.Add("kv/reports-admin", "kv/rep*")
	f.Fuzz(func(t *testing.T, name, pattern string) {
		if _, err := authz.CanonicalRole(name); err != nil {
			return
		}
		if authz.LintPattern(pattern) != nil {
			return
		}
		if got, want := authz.MatchPattern(name, pattern), util.KeyMatch(name, pattern); got != want {
			t.Fatalf("MatchPattern(%q, %q) = %t; util.KeyMatch = %t", name, pattern, got, want)
		}
	})
}

// FuzzPatternDecisionCanonical is the differential property the broker
// relies on: any raw string CanonicalRole lets through gets the same
// decision from MatchPattern as from Casbin's keyMatch.
func FuzzPatternDecisionCanonical(f *testing.F) {
	patterns := []string{"*", "kv/*", "kv/a/*", "kv/b", "kv/a/b/*", "reports-read", "reports/*"}
	for _, p := range patterns {
		if err := authz.LintPattern(p); err != nil {
			f.Fatal(err)
		}
	}
	for _, s := range []string{"kv/a/../b", "kv/a/b", "kv/a", "kv/ab", "/kv/a/x", "kv//a/x", "kv/a/%2e%2e/b", "reports-read", "reports"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, r string) {
		if _, err := authz.CanonicalRole(r); err != nil {
			return
		}
		for _, p := range patterns {
			if got, want := authz.MatchPattern(r, p), util.KeyMatch(r, p); got != want {
				t.Fatalf("MatchPattern(%q, %q) = %t; util.KeyMatch = %t", r, p, got, want)
			}
		}
	})
}

func TestLintSubject(t *testing.T) {
	const forms = `want a SPIFFE ID (spiffe://trust-domain/path) or group:<name>`
	for _, tt := range []struct {
		subject string
		want    string // the error; "" if the subject is accepted
	}{
		{"spiffe://example.org/agent/reporter", ""},
		{"spiffe://example.org/Agent_1", ""},
		{"group:ops", ""},
		{"group:team/ops", ""},
		{"", `authz: subject "": ` + forms},
		{"alice", `authz: subject "alice": ` + forms},
		{"user:alice", `authz: subject "user:alice": ` + forms},
		{"SPIFFE://example.org/a", `authz: subject "SPIFFE://example.org/a": ` + forms},
		{"Group:ops", `authz: subject "Group:ops": ` + forms},
		{"group:", "authz: group name is empty"},
		{"group:Ops", `authz: group "Ops": uppercase letters are not allowed; use lowercase: "ops"`},
		{"group:ops/../admin", `authz: group "ops/../admin": dot segments are not allowed: ".." at byte 4`},
		{"spiffe://example.org", `authz: subject "spiffe://example.org": SPIFFE ID has no path; name a workload, not a trust domain`},
		{"spiffe://", `authz: subject "spiffe://": trust domain is missing`},
		{"spiffe://example.org/agent/", `authz: subject "spiffe://example.org/agent/": path cannot have a trailing slash`},
		{"spiffe://example.org/a/../b", `authz: subject "spiffe://example.org/a/../b": path cannot contain dot segments`},
		{"spiffe://example.org//a", `authz: subject "spiffe://example.org//a": path cannot contain empty segments`},
		{"spiffe://Example.org/a", `authz: subject "spiffe://Example.org/a": trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores`},
		{"spiffe://example.org/agent/ｒ", `authz: subject "spiffe://example.org/agent/ｒ": non-ASCII character U+FF52 at byte 27 is not allowed`},
		{"spiffe://example.org/a\u200b", `authz: subject "spiffe://example.org/a\u200b": non-ASCII character U+200B at byte 22 is not allowed`},
		{"spiffe://example.org/a\xff", `authz: subject "spiffe://example.org/a\xff": not valid UTF-8`},
		{"spiffe://example.org/a b", `authz: subject "spiffe://example.org/a b": whitespace or control character U+0020 at byte 22 is not allowed`},
		{"spiffe://example.org/a*", `authz: subject "spiffe://example.org/a*": '*' at byte 22 is a pattern or expression character and is not allowed`},
		{"spiffe://example.org/a'", `authz: subject "spiffe://example.org/a'": quote character ' at byte 22 is not allowed`},
		{"spiffe://example.org/a%41", `authz: subject "spiffe://example.org/a%41": percent-encoding is not allowed; write the name decoded`},
		{"spiffe://example.org:8443/a", `authz: subject "spiffe://example.org:8443/a": ':' at byte 20 is a pattern or expression character and is not allowed`},
	} {
		err := authz.LintSubject(tt.subject)
		if tt.want == "" {
			if err != nil {
				t.Errorf("LintSubject(%q) = %v", tt.subject, err)
			}
			continue
		}
		if err == nil || err.Error() != tt.want {
			t.Errorf("LintSubject(%q) = %v\nwant %s", tt.subject, err, tt.want)
		}
	}
}
