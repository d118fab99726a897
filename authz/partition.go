package authz

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/casbin/casbin/v2"
	"github.com/casbin/casbin/v2/model"
)

// partition evaluates a request against only the policy lines that can
// match it. Casbin walks every line on every request (and its role manager
// rescans all roles for a subject that only a pattern names), so a policy
// of 10,000 lines costs milliseconds per decision. When the matcher starts
// with g(r.sub, p.sub), a line whose subject is not the requester or one of
// its groups can never match, and for every Casbin effect a line that does
// not match changes nothing; so evaluating the requester's lines alone,
// in their original order, gives the same answer. The group closure is
// computed here from the linted g lines, with the same semantics as
// Casbin's role manager with keyMatch members.
type partition struct {
	template model.Model // the model without policy lines
	lines    [][]string  // p lines, in policy order
	bySub    map[string][]int
	members  map[string][]string // member → groups it is directly in
	patterns []memberPattern

	mu   sync.Mutex
	subs map[string]*casbin.SyncedEnforcer // by candidate line set
	// closures caches each subject's groups.
	closures map[string][]string
}

type memberPattern struct {
	prefix, group string // "spiffe://td/agents/" for "spiffe://td/agents/*"
}

// maxPartitions bounds the cached sub-enforcers and closures; the caches
// are emptied when full.
const maxPartitions = 4096

// maxGroupDepth is how deep groups nest, as Casbin's role manager allows.
const maxGroupDepth = 10

// newPartition returns nil if the model's matcher does not start with
// g(r.sub, p.sub), or the model has role definitions other than a plain
// "g = _, _".
func newPartition(modelText string, m model.Model, lines []policyLine) (*partition, error) {
	matcher := strings.ReplaceAll(m["m"]["m"].Value, " ", "")
	g := m["g"]
	if !strings.HasPrefix(matcher, "g(r_sub,p_sub)&&") || len(g) != 1 || g["g"] == nil ||
		strings.Count(g["g"].Value, "_") != 2 || len(m["p"]) != 1 || m["p"]["p"] == nil {
		return nil, nil
	}
	subIdx := slices.Index(m["p"]["p"].Tokens, "p_sub")
	if subIdx < 0 {
		return nil, nil
	}
	template, err := model.NewModelFromString(modelText)
	if err != nil {
		return nil, err
	}
	pt := &partition{template: template, bySub: map[string][]int{}, members: map[string][]string{},
		subs: map[string]*casbin.SyncedEnforcer{}, closures: map[string][]string{}}
	seen := map[string]bool{}
	for _, l := range lines {
		if seen[l.ptype+"\x00"+l.text] {
			continue // Casbin drops repeated lines too
		}
		seen[l.ptype+"\x00"+l.text] = true
		switch l.sec {
		case "p":
			pt.bySub[l.fields[subIdx]] = append(pt.bySub[l.fields[subIdx]], len(pt.lines))
			pt.lines = append(pt.lines, l.fields)
		case "g":
			member, group := l.fields[0], l.fields[1]
			if prefix, ok := strings.CutSuffix(member, "*"); ok {
				pt.patterns = append(pt.patterns, memberPattern{prefix: prefix, group: group})
			} else {
				pt.members[member] = append(pt.members[member], group)
			}
		}
	}
	return pt, nil
}

// closure is sub and every group it is in, directly, through a member
// pattern or through nested groups.
func (pt *partition) closure(sub string) []string {
	pt.mu.Lock()
	c, ok := pt.closures[sub]
	pt.mu.Unlock()
	if ok {
		return c
	}
	c = []string{sub}
	frontier := []string{sub}
	for depth := 0; depth <= maxGroupDepth && len(frontier) > 0; depth++ {
		var next []string
		for _, name := range frontier {
			direct := pt.members[name]
			for _, p := range pt.patterns {
				if strings.HasPrefix(name, p.prefix) {
					direct = append(direct[:len(direct):len(direct)], p.group)
				}
			}
			for _, grp := range direct {
				if !slices.Contains(c, grp) {
					c = append(c, grp)
					next = append(next, grp)
				}
			}
		}
		frontier = next
	}
	pt.mu.Lock()
	if len(pt.closures) >= maxPartitions {
		clear(pt.closures)
	}
	pt.closures[sub] = c
	pt.mu.Unlock()
	return c
}

// g is the model's g() for sub-enforcers: membership by closure.
func (pt *partition) g(args ...any) (any, error) {
	if len(args) != 2 {
		return false, fmt.Errorf("g takes 2 arguments, got %d", len(args))
	}
	a, _ := args[0].(string)
	b, _ := args[1].(string)
	return slices.Contains(pt.closure(a), b), nil
}

// enforcerFor returns an enforcer holding only the lines sub can match.
func (pt *partition) enforcerFor(sub string) (*casbin.SyncedEnforcer, error) {
	var idx []int
	for _, s := range pt.closure(sub) {
		idx = append(idx, pt.bySub[s]...)
	}
	slices.Sort(idx)
	var key strings.Builder
	for _, i := range idx {
		key.WriteString(strconv.Itoa(i))
		key.WriteByte(',')
	}
	pt.mu.Lock()
	e, ok := pt.subs[key.String()]
	pt.mu.Unlock()
	if ok {
		return e, nil
	}
	e, err := casbin.NewSyncedEnforcer(pt.template.Copy())
	if err != nil {
		return nil, err
	}
	e.EnableLog(false)
	e.EnableAutoSave(false)
	e.AddFunction("atLeast", atLeastFunc)
	e.AddFunction("g", pt.g)
	// With no role manager on the assertion, Casbin keeps the g() above.
	e.GetModel()["g"]["g"].RM = nil
	rules := make([][]string, len(idx))
	for j, i := range idx {
		rules[j] = pt.lines[i]
	}
	if len(rules) > 0 {
		if _, err := e.AddNamedPolicies("p", rules); err != nil {
			return nil, err
		}
	}
	pt.mu.Lock()
	if len(pt.subs) >= maxPartitions {
		clear(pt.subs)
	}
	pt.subs[key.String()] = e
	pt.mu.Unlock()
	return e, nil
}
