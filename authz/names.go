package authz

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Names reach Casbin as policy values and keyMatch operands, so they are
// checked, never rewritten: a name that would mean something different
// after cleaning (kv/a/../b, %2e%2e, a look-alike letter) is refused with an
// error saying what is wrong, and the canonical spelling where it is obvious.

// maxNameLen bounds a role or group name, in bytes.
const maxNameLen = 128

// CanonicalRole checks that name is a canonical role name and returns it
// unchanged, or an error saying what is wrong. A canonical name is 1 to 128
// bytes of segments separated by single '/', each segment matching
// [a-z0-9]+([._-][a-z0-9]+)* and none starting with a Casbin matcher token
// prefix (r., p., g., e., m.).
func CanonicalRole(name string) (string, error) {
	if err := checkName("role", name, name); err != nil {
		return "", err
	}
	return name, nil
}

// CanonicalGroup is CanonicalRole for the group names used in policy
// subjects (the part after "group:").
func CanonicalGroup(name string) (string, error) {
	if err := checkName("group", name, name); err != nil {
		return "", err
	}
	return name, nil
}

// LintPattern checks a policy line's object pattern: a canonical role name,
// "*" alone, or a canonical role name followed by "/*", which matches every
// role below that name. No other pattern syntax is allowed: under keyMatch a
// '*' matches any suffix, so "kv/rep*" would also match "kv/repo-admin".
func LintPattern(p string) error {
	if p == "*" {
		return nil
	}
	name := strings.TrimSuffix(p, "/*")
	if strings.Contains(name, "*") {
		return fmt.Errorf("authz: pattern %q: '*' is allowed only as the whole last segment; a '*' in the middle matches more than it appears to", p)
	}
	return checkName("pattern", p, name)
}

// MatchPattern reports whether the canonical role name matches pattern, which
// must have passed LintPattern. It has Casbin's keyMatch semantics: "*"
// matches every name, and "a/b/*" matches "a/b/c" and "a/b/c/d" but neither
// "a/b" nor "a/bc".
func MatchPattern(name, pattern string) bool {
	// keyMatch compares everything before the first '*' and ignores the rest.
	if i := strings.IndexByte(pattern, '*'); i >= 0 {
		return strings.HasPrefix(name, pattern[:i])
	}
	return name == pattern
}

// LintSubject checks a policy subject: a SPIFFE ID with a path, or
// "group:" followed by a canonical group name.
func LintSubject(s string) error {
	if group, ok := strings.CutPrefix(s, "group:"); ok {
		_, err := CanonicalGroup(group)
		return err
	}
	const scheme = "spiffe://"
	rest, ok := strings.CutPrefix(s, scheme)
	if !ok {
		return fmt.Errorf("authz: subject %q: want a SPIFFE ID (spiffe://trust-domain/path) or group:<name>", s)
	}
	// go-spiffe built with spiffeid_charset_backcompat accepts quotes,
	// '*', '(' and friends; refuse them here whatever the build.
	if problem := charProblem(rest, len(scheme)); problem != "" {
		return fmt.Errorf("authz: subject %q: %s", s, problem)
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return fmt.Errorf("authz: subject %q: %w", s, err)
	}
	if id.Path() == "" {
		return fmt.Errorf("authz: subject %q: SPIFFE ID has no path; name a workload, not a trust domain", s)
	}
	return nil
}

// checkName checks name against the role name grammar. kind and quoted say
// what the error names: a pattern's error quotes the whole pattern while
// only its name part is checked, and byte positions count from the start
// of both.
func checkName(kind, quoted, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("authz: %s name is empty", kind)
	case len(name) > maxNameLen:
		// Not quoted: a request may carry an arbitrarily long name.
		return fmt.Errorf("authz: %s name is %d bytes; the limit is %d", kind, len(name), maxNameLen)
	}
	if problem := nameProblem(name, quoted[len(name):]); problem != "" {
		return fmt.Errorf("authz: %s %q: %s", kind, quoted, problem)
	}
	return nil
}

// nameProblem says what makes a non-empty name of at most maxNameLen bytes
// non-canonical, or returns "" if it is canonical. A suggested spelling is
// followed by suffix (a pattern's "/*").
func nameProblem(name, suffix string) string {
	if problem := charProblem(name, 0); problem != "" {
		return problem
	}
	// Only ASCII letters, digits, '.', '_', '-' and '/' are left.
	switch {
	case name[0] == '/':
		return "leading '/' is not allowed" + suggest(strings.Trim(name, "/"), suffix)
	case name[len(name)-1] == '/':
		return "trailing '/' is not allowed" + suggest(strings.Trim(name, "/"), suffix)
	}
	if i := strings.Index(name, "//"); i >= 0 {
		return fmt.Sprintf("empty segment (\"//\") at byte %d", i)
	}
	off := 0
	for seg := range strings.SplitSeq(name, "/") {
		switch {
		case seg == "." || seg == "..":
			return fmt.Sprintf("dot segments are not allowed: %q at byte %d", seg, off)
		case !segmentOK(seg):
			return fmt.Sprintf("segment %q: '.', '_' and '-' must each stand between two letters or digits", seg)
		case len(seg) > 1 && seg[1] == '.' && strings.IndexByte("rpgemRPGEM", seg[0]) >= 0:
			return fmt.Sprintf("segment %q looks like a Casbin matcher token (r., p., g., e., m.)", seg)
		}
		off += len(seg) + 1
	}
	// Checked last, so that the lowercase spelling is known to be canonical.
	if lower := strings.ToLower(name); lower != name {
		return fmt.Sprintf("uppercase letters are not allowed; use lowercase: %q", lower+suffix)
	}
	return ""
}

// suggest returns a hint to use name+suffix instead, if name is canonical.
func suggest(name, suffix string) string {
	if name == "" || nameProblem(name, "") != "" {
		return ""
	}
	return fmt.Sprintf("; use %q", name+suffix)
}

// segmentOK reports whether seg matches [a-zA-Z0-9]+([._-][a-zA-Z0-9]+)*;
// case is checked separately, to suggest the lowercase spelling.
func segmentOK(seg string) bool {
	prevSep := true // a segment may not start with a separator
	for i := range len(seg) {
		sep := seg[i] == '.' || seg[i] == '_' || seg[i] == '-'
		if sep && prevSep {
			return false
		}
		prevSep = sep
	}
	return !prevSep
}

// charProblem describes the first character of s that may not appear in a
// name, or returns "" if there is none. Letters of either case, digits,
// '.', '_', '-' and '/' may. off is added to the byte positions reported.
func charProblem(s string, off int) string {
	if !utf8.ValidString(s) {
		return "not valid UTF-8"
	}
	for i, r := range s {
		i += off
		switch {
		case r >= utf8.RuneSelf:
			return fmt.Sprintf("non-ASCII character U+%04X at byte %d is not allowed", r, i)
		case r <= ' ' || r == 0x7f:
			return fmt.Sprintf("whitespace or control character U+%04X at byte %d is not allowed", r, i)
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9',
			r == '.', r == '_', r == '-', r == '/':
		case r == '%':
			return "percent-encoding is not allowed; write the name decoded"
		case r == '\\':
			return fmt.Sprintf("backslash at byte %d is not allowed; segments are separated by '/'", i)
		case r == '\'' || r == '"' || r == '`':
			return fmt.Sprintf("quote character %c at byte %d is not allowed", r, i)
		default:
			return fmt.Sprintf("'%c' at byte %d is a pattern or expression character and is not allowed", r, i)
		}
	}
	return ""
}
