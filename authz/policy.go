package authz

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/casbin/casbin/v2"
	"github.com/casbin/casbin/v2/model"
	"github.com/casbin/casbin/v2/util"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Classification is how sensitive the data behind a role is (ATF D-3).
type Classification int

// Data classifications, in increasing order of sensitivity.
const (
	Public Classification = iota + 1
	Internal
	PII
	Secret
)

var classificationNames = [...]string{Public: "public", Internal: "internal", PII: "pii", Secret: "secret"}

func (c Classification) String() string {
	if c >= Public && c <= Secret {
		return classificationNames[c]
	}
	return fmt.Sprintf("classification(%d)", int(c))
}

// ParseClassification parses a classification name as written by String.
func ParseClassification(s string) (Classification, error) {
	for c := Public; c <= Secret; c++ {
		if classificationNames[c] == s {
			return c, nil
		}
	}
	return 0, fmt.Errorf("authz: unknown data classification %q (want public, internal, pii or secret)", s)
}

// Request fields a Casbin model may use. The broker fills them; a model must
// use sub, obj and act.
const (
	FieldSubject        = "sub" // the agent's SPIFFE ID
	FieldObject         = "obj" // the role name
	FieldAction         = "act" // the role's class
	FieldLevel          = "lvl" // the agent's (or chain's) maturity level
	FieldClassification = "cls" // the role's data classification
)

var (
	knownFields    = []string{FieldSubject, FieldObject, FieldAction, FieldLevel, FieldClassification}
	requiredFields = []string{FieldSubject, FieldObject, FieldAction}
)

// Query is what a policy is asked: may Subject hold Role (of Class and
// Classification) at Level?
type Query struct {
	Subject        string
	Role           string
	Class          Class
	Level          Level
	Classification Classification
}

// Verdict is a policy's answer to a Query.
type Verdict struct {
	Allow bool
	// Matched is the policy line that decided, as written ("p, group:x,
	// kv/*, read, intern, allow"); empty when no line matched.
	Matched string
	// Denied is set when Matched is a deny line.
	Denied bool
}

// Policy is one loaded, linted version of the Casbin model and policy. It is
// immutable and safe for concurrent use; an update builds a new Policy.
type Policy struct {
	version  uint64
	digest   string
	lines    int
	fields   []string // the model's request tokens, in order
	enforcer *casbin.SyncedEnforcer
	deny     map[string]bool // policy lines with effect deny
	warnings []string
	part     *partition // nil: every request walks the whole policy

	mu    sync.RWMutex
	cache map[Query]Verdict
}

// maxCached bounds the decision cache; it is emptied when full.
const maxCached = 1 << 16

// NewPolicy parses, lints and loads a model and policy. Any problem is an
// error naming the line: a policy that does not load never replaces one that
// does, and the broker denies everything while it has none.
func NewPolicy(version uint64, modelText, policyText string) (*Policy, error) {
	m, err := model.NewModelFromString(modelText)
	if err != nil {
		return nil, fmt.Errorf("authz: model: %w", err)
	}
	p := &Policy{version: version, cache: map[Query]Verdict{}, deny: map[string]bool{}}
	if p.fields, err = checkModel(m); err != nil {
		return nil, err
	}
	lines, err := lintPolicy(m, policyText)
	if err != nil {
		return nil, err
	}
	e, err := casbin.NewSyncedEnforcer(m)
	if err != nil {
		return nil, fmt.Errorf("authz: model: %w", err)
	}
	e.EnableLog(false)
	e.EnableAutoSave(false)
	e.AddFunction("atLeast", atLeastFunc)
	// Group members may be patterns: "g, spiffe://example.org/agents/*, group:agents".
	if _, ok := m["g"]; ok {
		for ptype := range m["g"] {
			e.AddNamedMatchingFunc(ptype, "keyMatch", util.KeyMatch)
		}
	}
	for _, l := range lines {
		var ok bool
		if l.sec == "g" {
			ok, err = e.AddNamedGroupingPolicy(l.ptype, l.fields)
		} else {
			ok, err = e.AddNamedPolicy(l.ptype, l.fields)
		}
		if err != nil {
			return nil, fmt.Errorf("authz: policy line %d: %w", l.n, err)
		}
		if !ok {
			p.warnings = append(p.warnings, fmt.Sprintf("policy line %d repeats an earlier line", l.n))
			continue
		}
		if l.sec == "p" {
			p.lines++
			if l.eft == "deny" {
				p.deny[l.text] = true
			}
		}
	}
	if p.lines == 0 {
		p.warnings = append(p.warnings, "the policy has no p lines: every request will be denied")
	}
	p.enforcer = e
	if p.part, err = newPartition(modelText, m, lines); err != nil {
		return nil, fmt.Errorf("authz: model: %w", err)
	}
	// A model can parse and still fail at enforcement (an unknown function,
	// an unsupported effect): try one request now rather than deny every
	// request later.
	if _, err := p.enforce(Query{Subject: "spiffe://probe.invalid/probe", Role: "probe", Class: Read, Level: Intern, Classification: Public}); err != nil {
		return nil, fmt.Errorf("authz: model does not evaluate: %w", err)
	}
	sum := sha256.Sum256([]byte(modelText + "\x00" + policyText))
	p.digest = hex.EncodeToString(sum[:])
	return p, nil
}

// Version is the store's version number of this policy.
func (p *Policy) Version() uint64 { return p.version }

// Digest is SHA-256 over the model and policy text.
func (p *Policy) Digest() string { return p.digest }

// Lines is the number of p lines loaded.
func (p *Policy) Lines() int { return p.lines }

// Warnings are lint findings that did not stop the load.
func (p *Policy) Warnings() []string { return slices.Clone(p.warnings) }

// Decide asks the policy about q. Answers are cached per Policy, so a
// policy update (a new Policy) starts with an empty cache. An evaluation
// error denies.
func (p *Policy) Decide(q Query) (Verdict, error) {
	p.mu.RLock()
	v, ok := p.cache[q]
	p.mu.RUnlock()
	if ok {
		return v, nil
	}
	v, err := p.enforce(q)
	if err != nil {
		return Verdict{}, err
	}
	p.mu.Lock()
	if len(p.cache) >= maxCached {
		clear(p.cache)
	}
	p.cache[q] = v
	p.mu.Unlock()
	return v, nil
}

// DecideUncached is Decide without the cache, for benchmarks and dry runs.
func (p *Policy) DecideUncached(q Query) (Verdict, error) { return p.enforce(q) }

func (p *Policy) enforce(q Query) (Verdict, error) {
	args := make([]any, len(p.fields))
	for i, f := range p.fields {
		switch f {
		case FieldSubject:
			args[i] = q.Subject
		case FieldObject:
			args[i] = q.Role
		case FieldAction:
			args[i] = q.Class.String()
		case FieldLevel:
			args[i] = q.Level.String()
		case FieldClassification:
			args[i] = q.Classification.String()
		}
	}
	e := p.enforcer
	if p.part != nil {
		var err error
		if e, err = p.part.enforcerFor(q.Subject); err != nil {
			return Verdict{}, fmt.Errorf("authz: policy evaluation: %w", err)
		}
	}
	ok, explain, err := e.EnforceEx(args...)
	if err != nil {
		return Verdict{}, fmt.Errorf("authz: policy evaluation: %w", err)
	}
	v := Verdict{Allow: ok}
	if len(explain) > 0 {
		v.Matched = "p, " + strings.Join(explain, ", ")
		v.Denied = p.deny[v.Matched]
	}
	return v, nil
}

// checkModel makes sure the broker can fill the model's request and returns
// its request tokens in order.
func checkModel(m model.Model) ([]string, error) {
	for _, sec := range []string{"r", "p", "e", "m"} {
		if _, ok := m[sec]; !ok {
			return nil, fmt.Errorf("authz: model: section [%s] is missing", map[string]string{
				"r": "request_definition", "p": "policy_definition", "e": "policy_effect", "m": "matchers"}[sec])
		}
	}
	r, ok := m["r"]["r"]
	if !ok || len(m["r"]) != 1 {
		return nil, errors.New("authz: model: request_definition must define exactly r")
	}
	var fields []string
	for _, tok := range r.Tokens {
		f := strings.TrimPrefix(tok, "r_")
		if !slices.Contains(knownFields, f) {
			return nil, fmt.Errorf("authz: model: request field %q is not one the broker provides (sub, obj, act, lvl, cls)", f)
		}
		fields = append(fields, f)
	}
	for _, f := range requiredFields {
		if !slices.Contains(fields, f) {
			return nil, fmt.Errorf("authz: model: the request must have the field %q (it has %s)", f, strings.Join(fields, ", "))
		}
	}
	matcher := m["m"]["m"]
	if matcher == nil {
		return nil, errors.New("authz: model: matchers must define m")
	}
	for _, f := range requiredFields {
		if !strings.Contains(matcher.Value, "r_"+f) {
			return nil, fmt.Errorf("authz: model: the matcher never looks at r.%s, so it cannot tell requests apart", f)
		}
	}
	if strings.Contains(matcher.Value, "eval(") {
		return nil, errors.New("authz: model: eval() is not allowed in the matcher: it would run policy text as code")
	}
	return fields, nil
}

// policyLine is one parsed, linted line of a policy.
type policyLine struct {
	n      int    // line number, from 1
	text   string // "p, a, b, c" normalised
	sec    string // "p" or "g"
	ptype  string // "p", "p2", "g", ...
	fields []string
	eft    string
}

// lintPolicy parses the policy text and checks every field: subjects are
// SPIFFE IDs or groups, role patterns canonical with '*' only at the end,
// classes, levels and effects from their fixed sets.
func lintPolicy(m model.Model, text string) ([]policyLine, error) {
	var out []policyLine
	for i, raw := range strings.Split(text, "\n") {
		n := i + 1
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, ",")
		for j := range parts {
			parts[j] = strings.TrimSpace(parts[j])
		}
		ptype, fields := parts[0], parts[1:]
		l := policyLine{n: n, ptype: ptype, fields: fields, text: strings.Join(parts, ", ")}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("authz: policy line %d: %s", n, strings.TrimPrefix(fmt.Sprintf(format, args...), "authz: "))
		}
		var tokens []string
		switch {
		case m["p"][ptype] != nil:
			l.sec, tokens = "p", m["p"][ptype].Tokens
		case m["g"] != nil && m["g"][ptype] != nil:
			l.sec = "g"
			tokens = make([]string, strings.Count(m["g"][ptype].Value, "_"))
		default:
			return nil, bad("%q is not a policy or role type of the model", ptype)
		}
		if len(fields) != len(tokens) {
			return nil, bad("%s lines have %d fields, this one has %d", ptype, len(tokens), len(fields))
		}
		for j, f := range fields {
			if f == "" {
				return nil, bad("field %d is empty", j+1)
			}
			if l.sec == "g" {
				if err := lintMember(f, j); err != nil {
					return nil, bad("%v", err)
				}
				continue
			}
			tok := strings.TrimPrefix(tokens[j], ptype+"_")
			if err := lintField(tok, f); err != nil {
				return nil, bad("%v", err)
			}
			if tok == "eft" {
				l.eft = f
			}
		}
		out = append(out, l)
	}
	return out, nil
}

// lintField checks one p-line field by the model's name for it.
func lintField(tok, f string) error {
	switch tok {
	case "sub":
		return LintSubject(f)
	case "obj":
		return LintPattern(f)
	case "act":
		if f == "*" {
			return nil
		}
		_, err := ParseClass(f)
		return err
	case "lvl":
		_, err := ParseLevel(f)
		return err
	case "cls":
		if f == "*" {
			return nil
		}
		_, err := ParseClassification(f)
		return err
	case "eft":
		if f != "allow" && f != "deny" {
			return fmt.Errorf("effect must be allow or deny, not %q", f)
		}
		return nil
	}
	// A field the broker does not know: it can only be compared, so keep it
	// to plain words that cannot be read as an expression.
	if _, err := CanonicalRole(f); err != nil {
		return fmt.Errorf("field %s: %w", tok, err)
	}
	return nil
}

// lintMember checks a g-line field: the member (field 0) may be a SPIFFE ID,
// a SPIFFE ID pattern ending in "/*" or a group; the group (field 1) must be
// a group.
func lintMember(f string, j int) error {
	if j > 0 || !strings.HasSuffix(f, "/*") {
		if j > 0 && !strings.HasPrefix(f, "group:") {
			return fmt.Errorf("%q: the second field of a g line is a group:<name>", f)
		}
		return LintSubject(f)
	}
	prefix := strings.TrimSuffix(f, "/*")
	if td, err := spiffeid.TrustDomainFromString(prefix); err == nil && td.IDString() == prefix {
		return nil // a whole trust domain
	}
	if err := LintSubject(prefix); err != nil || strings.HasPrefix(prefix, "group:") {
		return fmt.Errorf("member pattern %q must be a SPIFFE ID or trust domain followed by /*", f)
	}
	return nil
}

// atLeastFunc is the model function atLeast(level, floor).
func atLeastFunc(args ...any) (any, error) {
	if len(args) != 2 {
		return false, fmt.Errorf("atLeast takes 2 arguments, got %d", len(args))
	}
	a, _ := args[0].(string)
	b, _ := args[1].(string)
	la, errA := ParseLevel(a)
	lb, errB := ParseLevel(b)
	return errA == nil && errB == nil && la >= lb, nil
}
