package audit

import (
	"math"
	"regexp"
	"strings"
	"unicode/utf8"
)

// maxRedact is the most text Redact keeps. Audit details and log lines are
// short; a longer input is an agent pasting a document, and cutting it keeps
// the cost of redacting (and of storing the result) bounded.
const maxRedact = 64 << 10

// wordCut is how far back Redact looks for a space when it cuts text, so a
// token cut in half is dropped rather than left partly readable.
const wordCut = 1 << 10

// maxPasses bounds redactAll's loop. Every pass that changes the text turns
// some of it into a marker that no rule matches again, so the loop ends on
// its own, after two passes for any text seen so far; the bound is a guard.
const maxPasses = 16

// Redact returns s with personal data and secrets replaced by
// "[REDACTED:<kind>]". The kinds are
//
//   - private-key: a PEM private key block, from its BEGIN line to its END
//     line or, if that is missing, to the end of the text;
//   - bearer: the token after "Bearer";
//   - credential: the value in key=value or key: value where the key ends in
//     password, passwd, pwd, secret, token, api_key, apikey, access_key or
//     private_key (any case; the key itself is kept);
//   - jwt, vault-token (hvs., hvb., hvr. and legacy s. tokens), aws-key
//     (AKIA, ASIA), github-token (ghp_ and kin, github_pat_), slack-token
//     (xoxb- and kin);
//   - email, phone (international +digits, or US (xxx) xxx-xxxx and
//     xxx-xxx-xxxx), card (13 to 19 digits, in groups split by single spaces
//     or dashes, passing the Luhn check), iban (passing its mod-97 check), ssn
//     (ddd-dd-dddd with a valid area, group and serial);
//   - high-entropy: a run of 32 or more of [A-Za-z0-9+/=_-] holding letters
//     and digits, at 4 or more bits of Shannon entropy per character.
//
// SPIFFE IDs, UUIDs and lowercase hex strings of exactly 32 or 64 characters
// (the broker's own ids and hashes) are never redacted by the rules that go
// by shape alone; the first three kinds, where the text itself says a secret
// follows, redact them too.
//
// Invalid UTF-8 is replaced with U+FFFD first. Only the first 64 KiB of s is
// redacted and returned (cut back to the last space before that if it is near,
// so a token is not left half visible), and if redaction lengthens the text
// past 64 KiB, less of s is kept: the result is never longer than 64 KiB.
//
// Redact is idempotent: Redact(Redact(s)) == Redact(s).
func Redact(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	n, step := min(len(s), maxRedact), 0
	for {
		out := redactAll(cut(s, n))
		if len(out) <= maxRedact {
			return out
		}
		// Markers can be longer than what they replace. Keep less of s: in
		// proportion, and at least a step that grows, so that this ends
		// after a few rounds.
		step = max(2*step, 64)
		n = max(0, min(n*maxRedact/len(out), n-step))
	}
}

// cut returns s cut to at most n bytes, on a rune boundary and, if a space
// is near, before the word that the cut would split.
func cut(s string, n int) string {
	if n >= len(s) {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	if n > 0 && !isSpace(s[n-1]) && !isSpace(s[n]) {
		if i := strings.LastIndexAny(s[:n], " \t\r\n"); i >= 0 && n-i <= wordCut {
			n = i + 1
		}
	}
	return s[:n]
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// redactAll applies the rules until the text no longer changes, so that
// what one rule's marker leaves (a new boundary, a shorter run) has been
// seen by every other rule: that makes Redact idempotent.
func redactAll(s string) string {
	for range maxPasses {
		out := redactPass(s)
		if out == s {
			break
		}
		s = out
	}
	return s
}

// redactPass applies the context rules to the whole text, then the shape
// rules to what lies between the protected spans.
func redactPass(s string) string {
	for _, r := range contextRules {
		s = r.apply(s)
	}
	var spans [][]int
	if mayProtect(s) {
		spans = protected.FindAllStringIndex(s, -1)
	}
	if spans == nil {
		return redactShapes(s)
	}
	var b strings.Builder
	last := 0
	for _, m := range spans {
		b.WriteString(redactShapes(s[last:m[0]]))
		b.WriteString(s[m[0]:m[1]])
		last = m[1]
	}
	b.WriteString(redactShapes(s[last:]))
	return b.String()
}

func redactShapes(s string) string {
	for _, r := range shapeRules {
		s = r.apply(s)
	}
	return s
}

// A rule redacts what its regexp matches. The part replaced is the first
// capture group that took part in the match, or else the whole match; pick,
// if set, then narrows that to the secret within it (lo == hi: none).
type rule struct {
	kind string
	// need, if set, is a cheap test that s may hold a match. A regexp costs
	// some 25 ns a byte, and most text holds no secret at all.
	need func(s string) bool
	re   *regexp.Regexp
	pick func(m string) (lo, hi int)
}

func (r rule) apply(s string) string {
	if r.need != nil && !r.need(s) {
		return s
	}
	var b strings.Builder
	last := 0
	for _, m := range r.re.FindAllStringSubmatchIndex(s, -1) {
		lo, hi := m[0], m[1]
		for g := 2; g < len(m); g += 2 {
			if m[g] >= 0 {
				lo, hi = m[g], m[g+1]
				break
			}
		}
		if r.pick != nil {
			plo, phi := r.pick(s[lo:hi])
			lo, hi = lo+plo, lo+phi
		}
		if lo == hi {
			continue
		}
		b.WriteString(s[last:lo])
		b.WriteString("[REDACTED:")
		b.WriteString(r.kind)
		b.WriteByte(']')
		last = hi
	}
	if b.Len() == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

// whole picks the whole match if valid says it is a secret.
func whole(valid func(string) bool) func(string) (int, int) {
	return func(m string) (int, int) {
		if valid(m) {
			return 0, len(m)
		}
		return 0, 0
	}
}

// has returns a need: s holds one of subs.
func has(subs ...string) func(string) bool {
	return func(s string) bool {
		for _, sub := range subs {
			if strings.Contains(s, sub) {
				return true
			}
		}
		return false
	}
}

// digitsAtLeast returns a need: s holds at least n digits.
func digitsAtLeast(n int) func(string) bool {
	return func(s string) bool { return digits(s) >= n }
}

// longestRun is the length of the longest run of bytes of s that in accepts.
func longestRun(s string, in func(byte) bool) int {
	longest, n := 0, 0
	for i := 0; i < len(s); i++ {
		if n = n + 1; !in(s[i]) {
			n = 0
		}
		longest = max(longest, n)
	}
	return longest
}

// mayIBAN is the iban rule's need: a country code and check digits.
func mayIBAN(s string) bool {
	for i := 0; i+3 < len(s); i++ {
		if isUpper(s[i]) && isUpper(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			return true
		}
	}
	return false
}

// mayProtect is protected's need.
func mayProtect(s string) bool {
	return strings.Contains(s, "spiffe://") || strings.Contains(s, "[REDACTED:") ||
		longestRun(s, func(c byte) bool { return isHex(c) || c == '-' }) >= 32
}

// protected matches what the shape rules must leave alone: SPIFFE IDs,
// UUIDs, the broker's hex ids and hashes, and markers already written.
var protected = regexp.MustCompile(`spiffe://[A-Za-z0-9._/-]+` +
	`|\[REDACTED:[a-z-]+\]` +
	`|\b[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}\b` +
	`|\b(?:[0-9a-f]{64}|[0-9a-f]{32})\b`)

// contextRules go first and over the whole text: the text around the secret
// says what it is, whatever it looks like.
var contextRules = []rule{
	{kind: "private-key", re: regexp.MustCompile(
		`-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*)`)},
	// Before credential, which would take "Bearer" for the value in
	// "token: Bearer ..." and leave the token.
	{kind: "bearer", need: has("earer", "EARER"),
		re:   regexp.MustCompile(`\b(?:Bearer|bearer|BEARER)[ \t]+([A-Za-z0-9._~+/-]+=*)`),
		pick: whole(func(t string) bool { return len(t) >= 8 && (hasDigit(t) || len(t) >= 20) })},
	{kind: "credential", need: func(s string) bool {
		return strings.ContainsAny(s, ":=") && has("pass", "pwd", "secret", "token", "key")(strings.ToLower(s))
	}, re: regexp.MustCompile(
		`(?i)[a-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)["']?[ \t]*[:=][ \t]*` +
			`(?:"([^"\r\n]*)"|'([^'\r\n]*)'|([^\s"',;&]+))`)},
}

// shapeRules go by the look of a secret alone. The most specific go first,
// so that a token gets the most telling kind.
var shapeRules = []rule{
	{kind: "jwt", need: has("eyJ"), re: regexp.MustCompile(`\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*`)},
	{kind: "vault-token", need: has("hvs.", "hvb.", "hvr.", "s."),
		re: regexp.MustCompile(`\bhv[sbr]\.[A-Za-z0-9_-]{20,}|\bs\.[A-Za-z0-9]{24}\b`)},
	{kind: "aws-key", need: has("AKIA", "ASIA"), re: regexp.MustCompile(`\b(?:AKIA|ASIA)[A-Z0-9]{16}\b`)},
	{kind: "github-token", need: has("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
		re: regexp.MustCompile(`\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})`)},
	{kind: "slack-token", need: has("xox"), re: regexp.MustCompile(`\bxox[abprs]-[A-Za-z0-9-]{10,}`)},
	{kind: "email", need: has("@"), re: regexp.MustCompile(`[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b`)},
	{kind: "iban", need: mayIBAN, re: regexp.MustCompile(`\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b`), pick: pickIBAN},
	{kind: "card", need: digitsAtLeast(13), re: regexp.MustCompile(`\b[0-9](?:[ -]?[0-9]){12,}\b`), pick: pickCard},
	{kind: "ssn", need: digitsAtLeast(9), re: regexp.MustCompile(`\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b`), pick: whole(validSSN)},
	// A + after a letter or digit is a version's build metadata, not a phone.
	{kind: "phone", need: func(s string) bool { return strings.Contains(s, "+") && digits(s) >= 8 },
		re: regexp.MustCompile(`(?:^|[^A-Za-z0-9+])(\+[0-9][0-9 .()-]*[0-9])\b`), pick: pickPhone},
	{kind: "phone", need: digitsAtLeast(10), re: regexp.MustCompile(`(?:\([0-9]{3}\) ?|\b[0-9]{3}-)[0-9]{3}-[0-9]{4}\b`)},
	{kind: "high-entropy", need: func(s string) bool { return longestRun(s, inEntropyRun) >= 32 },
		re: regexp.MustCompile(`[A-Za-z0-9+/=_-]{32,}`), pick: whole(highEntropy)},
}

// pickCard finds, among the digit groups of m, the first run of whole
// groups that is a card number: 13 to 19 digits, split by one kind of
// separator (a card is not written "3456 900-12-3456"), passing the Luhn
// check. It looks at no more than 19 digits from each group.
func pickCard(m string) (int, int) {
	for lo := 0; lo < len(m); {
		hi, d, sep := 0, 0, byte(0)
		for i := lo; i <= len(m) && d <= 19; i++ {
			if i < len(m) && isDigit(m[i]) {
				d++
				continue
			}
			if d >= 13 && d <= 19 && luhn(m[lo:i]) {
				hi = i
			}
			if i == len(m) || sep != 0 && m[i] != sep {
				break
			}
			sep = m[i]
		}
		if hi > 0 {
			return lo, hi
		}
		next := strings.IndexAny(m[lo:], " -")
		if next < 0 {
			break
		}
		lo += next + 1
	}
	return 0, 0
}

func luhn(s string) bool {
	sum, double := 0, false
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] < '0' || s[i] > '9' {
			continue
		}
		d := int(s[i] - '0')
		if double {
			if d *= 2; d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return sum%10 == 0
}

// pickIBAN finds the longest prefix of m, ending at a group, that is an
// IBAN: 15 to 34 characters passing the mod-97 check.
func pickIBAN(m string) (int, int) {
	for hi := len(m); hi > 0; hi = strings.LastIndexByte(m[:hi], ' ') {
		if c := strings.ReplaceAll(m[:hi], " ", ""); len(c) >= 15 && len(c) <= 34 && mod97(c[4:]+c[:4]) == 1 {
			return 0, hi
		}
	}
	return 0, 0
}

// mod97 is s, its letters read as numbers (A=10 ... Z=35), modulo 97.
func mod97(s string) int {
	r := 0
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			r = (r*100 + int(c-'A') + 10) % 97
		} else {
			r = (r*10 + int(c-'0')) % 97
		}
	}
	return r
}

func validSSN(m string) bool {
	area, group, serial := m[0:3], m[4:6], m[7:11]
	return area != "000" && area != "666" && area[0] != '9' && group != "00" && serial != "0000"
}

// pickPhone finds the longest prefix of m, ending after a digit group, with
// 8 to 15 digits.
func pickPhone(m string) (int, int) {
	hi, d := 0, 0
	for i := 0; i < len(m) && d <= 15; i++ {
		if !isDigit(m[i]) {
			continue
		}
		if d++; d >= 8 && d <= 15 && (i+1 == len(m) || !isDigit(m[i+1])) {
			hi = i + 1
		}
	}
	return 0, hi
}

// highEntropy reports whether a run holds letters and digits and has at
// least 4 bits of Shannon entropy per character.
func highEntropy(s string) bool {
	// Paths and slugs (/api/v1/agents/reports-read/2026) mix letters and
	// digits too, but in lowercase words; base64 secrets mix cases.
	if strings.ContainsRune(s, '/') && strings.ToLower(s) == s {
		return false
	}
	var counts [256]int
	letters := false
	for i := 0; i < len(s); i++ {
		counts[s[i]]++
		letters = letters || isLetter(s[i])
	}
	if !letters || !hasDigit(s) {
		return false
	}
	h, n := 0.0, float64(len(s))
	for _, c := range counts {
		if c > 0 {
			p := float64(c) / n
			h -= p * math.Log2(p)
		}
	}
	return h >= 4.0
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isHex(c byte) bool { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func isUpper(c byte) bool { return c >= 'A' && c <= 'Z' }

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || isUpper(c) }

// inEntropyRun reports whether c is one of [A-Za-z0-9+/=_-].
func inEntropyRun(c byte) bool {
	return isLetter(c) || isDigit(c) || c == '+' || c == '/' || c == '=' || c == '_' || c == '-'
}

func hasDigit(s string) bool { return digits(s) > 0 }

func digits(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		if isDigit(s[i]) {
			n++
		}
	}
	return n
}
