package delegation

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Level orders maturity: higher is more autonomous. The zero value is not a
// level. The constants have the same values as the broker's maturity levels,
// so the broker converts with Level(l).
type Level int

// The ATF maturity levels, in order of autonomy.
const (
	Intern Level = iota + 1
	Junior
	Senior
	Principal
)

var levelNames = [...]string{Intern: "intern", Junior: "junior", Senior: "senior", Principal: "principal"}

func (l Level) String() string {
	if l >= Intern && l <= Principal {
		return levelNames[l]
	}
	return fmt.Sprintf("level(%d)", int(l))
}

// Agent is an agent, as far as delegation needs it, as the registry holds
// it now.
type Agent struct {
	// ID is the agent's SPIFFE ID.
	ID    string
	Level Level
	// Active is false once the agent is deregistered or killed.
	Active bool
	// Roles is the agent's capability manifest, already narrowed by the
	// caller to what its level may hold.
	Roles []string
}

// Grant is one delegation: Delegator hands Delegatee the roles Roles until
// ExpiresAt.
type Grant struct {
	ID string
	// ParentID is the grant the delegator acted under; "" when it delegated
	// its own authority.
	ParentID  string
	Delegator string
	Delegatee string
	// Roles is the grant's scope, sorted and without duplicates when made by
	// Check.
	Roles []string
	// Scopes narrow roles of access tokens further: for each role named,
	// one of Roles, the scopes the grant allows of it (sorted); a role not
	// named keeps what the delegator had of it.
	Scopes    map[string][]string `json:",omitempty"`
	ExpiresAt time.Time
	// MaxDepth is how many further hops of re-delegation are allowed below
	// this grant: 0 means the delegatee may not re-delegate it.
	MaxDepth int
	// Depth is 1 for a grant of the delegator's own authority, and its
	// parent's Depth+1 otherwise.
	Depth     int
	CreatedAt time.Time
	// RevokedAt is zero while the grant is live. Any other value revokes it,
	// whatever the clock says.
	RevokedAt time.Time
}

// Rules are the broker's delegation limits. The zero Rules allow nothing.
type Rules struct {
	// MaxDepth is how many hops of delegation an agent at a level may put
	// below itself, its own grant counting as the first: 0 means the level
	// may not delegate. It binds every agent along a chain, counted from the
	// grant that agent gave, not only the chain's root.
	MaxDepth map[Level]int
	// MaxTTL caps a grant's lifetime.
	MaxTTL time.Duration
	// MaxFanOut caps the live grants one delegator may hold out at once
	// under one parent grant (or under its own authority).
	MaxFanOut int
}

// DefaultRules are docs/design.md §4's defaults: Interns and Juniors may not
// delegate, Seniors may delegate two hops below themselves and Principals
// four; a grant lives at most 24 hours; 16 live grants per delegator and
// parent. Each call returns a fresh value that is safe to modify.
func DefaultRules() Rules {
	return Rules{
		MaxDepth:  map[Level]int{Intern: 0, Junior: 0, Senior: 2, Principal: 4},
		MaxTTL:    24 * time.Hour,
		MaxFanOut: 16,
	}
}

// Request is what a delegator asks Check for.
type Request struct {
	Delegator Agent
	// Delegatee is nil when the named agent is not registered.
	Delegatee *Agent
	// Chain runs from a grant of some agent's own authority down to the
	// grant the delegator acts under; it is empty when the delegator
	// delegates its own authority.
	Chain []Grant
	// Ancestors holds every delegator in Chain, by SPIFFE ID, as the
	// registry holds it now. A missing entry counts as deregistered.
	Ancestors map[string]Agent
	Roles     []string
	// Scopes narrow roles of Roles to some of their scopes (Grant.Scopes);
	// the caller checks they are scopes of those roles at all.
	Scopes map[string][]string
	TTL    time.Duration
	// MaxDepth becomes the new grant's MaxDepth.
	MaxDepth int
	// LiveFanOut is how many live grants the delegator already holds out
	// under the same parent (or its own authority). Count it in the same
	// transaction that stores the new grant.
	LiveFanOut int
}

// Check decides whether req may become a grant. On success it returns the
// grant to store, with CreatedAt set to now and ID left for the caller to
// fill; otherwise an error wrapping one of the Err values. The checks run in
// this order, and the first refusal is the answer: who receives, the chain
// it extends, the roles, the lifetime, the depth, the fan-out.
func (r Rules) Check(req Request, now time.Time) (Grant, error) {
	if err := checkDelegatee(req); err != nil {
		return Grant{}, err
	}
	auth, err := Effective(req.Delegator, req.Chain, req.Ancestors, now)
	if err != nil {
		return Grant{}, err
	}
	if err := r.checkChain(req, auth); err != nil {
		return Grant{}, err
	}
	roles, err := checkScope(req, auth)
	if err != nil {
		return Grant{}, err
	}
	scopes, err := checkScopes(req, auth, roles)
	if err != nil {
		return Grant{}, err
	}
	expires, err := r.checkTTL(req, auth, now)
	if err != nil {
		return Grant{}, err
	}
	depth, err := r.checkDepth(req)
	if err != nil {
		return Grant{}, err
	}
	parent, err := r.checkFanOut(req)
	if err != nil {
		return Grant{}, err
	}
	return Grant{
		ParentID:  parent,
		Delegator: req.Delegator.ID,
		Delegatee: req.Delegatee.ID,
		Roles:     roles,
		Scopes:    scopes,
		ExpiresAt: expires,
		MaxDepth:  req.MaxDepth,
		Depth:     depth,
		CreatedAt: now,
	}, nil
}

// checkDelegatee refuses a delegatee that is unknown, inactive or the
// delegator itself.
func checkDelegatee(req Request) error {
	d, e := req.Delegator, req.Delegatee
	switch {
	case e == nil:
		return fmt.Errorf("%w: the delegatee is not a registered agent; check its SPIFFE ID or register it first", ErrUnknownDelegatee)
	case !e.Active:
		return fmt.Errorf("%w: agent %s is deregistered or killed and may receive no authority", ErrDelegateeInactive, e.ID)
	case e.ID == d.ID:
		return fmt.Errorf("%w: agent %s may not delegate to itself; it already holds its own authority", ErrSelfDelegation, d.ID)
	}
	return nil
}

// checkChain refuses to extend the chain back up to an agent already in it,
// or when the delegator or any ancestor is at a level that may not delegate.
func (r Rules) checkChain(req Request, auth Authority) error {
	d, e := req.Delegator, req.Delegatee
	if slices.Contains(auth.Chain, e.ID) {
		return fmt.Errorf("%w: agent %s already appears in the chain %s; authority may not flow back up a chain", ErrCycle, e.ID, strings.Join(auth.Chain, " → "))
	}
	if r.MaxDepth[d.Level] <= 0 {
		return fmt.Errorf("%w: agent %s is at level %s, which may not delegate", ErrLevelMayNotDelegate, d.ID, d.Level)
	}
	for _, g := range req.Chain {
		// Effective has checked every delegator is present and active.
		if a := req.Ancestors[g.Delegator]; r.MaxDepth[a.Level] <= 0 {
			return fmt.Errorf("%w: %s, which gave grant %s in this chain, is now at level %s, which may not delegate; the chain cannot be extended", ErrAncestorLevel, g.Delegator, g.ID, a.Level)
		}
	}
	return nil
}

// checkScope returns the requested roles, normalized, if they are within
// the delegator's effective authority.
func checkScope(req Request, auth Authority) ([]string, error) {
	roles := normalize(req.Roles)
	if len(roles) == 0 {
		return nil, fmt.Errorf("%w: a grant must name at least one role", ErrNoRoles)
	}
	var outside []string
	for _, role := range roles {
		if _, ok := slices.BinarySearch(auth.Roles, role); !ok {
			outside = append(outside, role)
		}
	}
	if len(outside) > 0 {
		return nil, fmt.Errorf("%w: agent %s may delegate only %q here (its manifest, narrowed by every grant and every ancestor's current manifest in its chain), not %q", ErrScope, req.Delegator.ID, auth.Roles, outside)
	}
	return roles, nil
}

// checkScopes returns the requested scopes of roles, normalized, if each
// names one of the grant's roles and stays within what the chain allows
// of it.
func checkScopes(req Request, auth Authority, roles []string) (map[string][]string, error) {
	if len(req.Scopes) == 0 {
		return nil, nil
	}
	out := make(map[string][]string, len(req.Scopes))
	for role, scopes := range req.Scopes {
		if _, ok := slices.BinarySearch(roles, role); !ok {
			return nil, fmt.Errorf("%w: scopes are given for role %q, which the grant does not give (%q)", ErrScope, role, roles)
		}
		scopes = normalize(scopes)
		if len(scopes) == 0 {
			return nil, fmt.Errorf("%w: role %q is narrowed to no scope at all; leave it out of the grant instead", ErrScope, role)
		}
		if allowed, narrowed := auth.Scopes[role]; narrowed {
			var outside []string
			for _, sc := range scopes {
				if _, ok := slices.BinarySearch(allowed, sc); !ok {
					outside = append(outside, sc)
				}
			}
			if len(outside) > 0 {
				return nil, fmt.Errorf("%w: agent %s may pass on only the scopes %q of role %q here (narrowed by a grant in its chain), not %q",
					ErrScope, req.Delegator.ID, allowed, role, outside)
			}
		}
		out[role] = scopes
	}
	return out, nil
}

// checkTTL returns when the grant expires, if its TTL is positive, within
// MaxTTL and ends no later than the chain it extends.
func (r Rules) checkTTL(req Request, auth Authority, now time.Time) (time.Time, error) {
	expires := now.Add(req.TTL)
	switch {
	case req.TTL <= 0:
		return time.Time{}, fmt.Errorf("%w: TTL %s must be positive", ErrInvalidTTL, req.TTL)
	case req.TTL > r.MaxTTL:
		return time.Time{}, fmt.Errorf("%w: TTL %s exceeds the maximum grant TTL %s", ErrTTLAboveMax, req.TTL, r.MaxTTL)
	case !auth.ExpiresAt.IsZero() && expires.After(auth.ExpiresAt):
		g := req.Chain[slices.IndexFunc(req.Chain, func(g Grant) bool { return g.ExpiresAt.Equal(auth.ExpiresAt) })]
		return time.Time{}, fmt.Errorf("%w: it would expire at %s, after grant %s which expires at %s; ask for a TTL of at most %s",
			ErrOutlivesChain, expires.Format(time.RFC3339), g.ID, g.ExpiresAt.Format(time.RFC3339), auth.ExpiresAt.Sub(now))
	}
	return expires, nil
}

// checkDepth returns the grant's depth, if the chain may grow by a hop and
// the requested MaxDepth fits in the hops left below it.
func (r Rules) checkDepth(req Request) (int, error) {
	d := req.Delegator
	depth := len(req.Chain) + 1
	limit, at, byGrant := r.depthLimit(d, req.Chain, req.Ancestors)
	switch {
	case limit < depth:
		return 0, fmt.Errorf("%w: %s; this grant would be at depth %d", ErrDepthExhausted, r.depthReason(d, req.Chain, req.Ancestors, limit, at, byGrant), depth)
	case req.MaxDepth < 0:
		return 0, fmt.Errorf("%w: max depth %d must not be negative", ErrMaxDepth, req.MaxDepth)
	case req.MaxDepth > limit-depth:
		return 0, fmt.Errorf("%w: max depth %d exceeds the %d further hop(s) left below this grant at depth %d: %s", ErrMaxDepth, req.MaxDepth, limit-depth, depth, r.depthReason(d, req.Chain, req.Ancestors, limit, at, byGrant))
	}
	return depth, nil
}

// checkFanOut returns the grant's parent ("" for the delegator's own
// authority), if the delegator holds out fewer than MaxFanOut live grants
// under it.
func (r Rules) checkFanOut(req Request) (string, error) {
	parent := ""
	if len(req.Chain) > 0 {
		parent = req.Chain[len(req.Chain)-1].ID
	}
	if req.LiveFanOut >= r.MaxFanOut {
		under := "its own authority"
		if parent != "" {
			under = "grant " + parent
		}
		return "", fmt.Errorf("%w: agent %s already holds out %d live grant(s) under %s (limit %d); revoke one or let it expire", ErrFanOut, req.Delegator.ID, req.LiveFanOut, under, r.MaxFanOut)
	}
	return parent, nil
}

// depthLimit returns the deepest depth a grant below chain may reach, and
// which bound sets it: with byGrant, chain[at].MaxDepth; otherwise the level
// of whoever gave chain[at], or of d when at is len(chain). On a tie the
// deepest bound wins, since it is the one the delegator can see.
func (r Rules) depthLimit(d Agent, chain []Grant, ancestors map[string]Agent) (limit, at int, byGrant bool) {
	at = len(chain)
	limit = at + r.MaxDepth[d.Level]
	for i, g := range chain {
		if l := g.Depth - 1 + r.MaxDepth[ancestors[g.Delegator].Level]; l <= limit {
			limit, at, byGrant = l, i, false
		}
		if l := g.Depth + g.MaxDepth; l <= limit {
			limit, at, byGrant = l, i, true
		}
	}
	return limit, at, byGrant
}

// depthReason explains the bound depthLimit found. It runs only on a
// refusal, keeping formatting off the path of an allowed request.
func (r Rules) depthReason(d Agent, chain []Grant, ancestors map[string]Agent, limit, at int, byGrant bool) string {
	if at == len(chain) {
		return fmt.Sprintf("agent %s (%s) may delegate at most %d hop(s) below itself", d.ID, d.Level, r.MaxDepth[d.Level])
	}
	g := chain[at]
	if byGrant {
		return fmt.Sprintf("grant %s allows re-delegation only down to depth %d", g.ID, limit)
	}
	l := ancestors[g.Delegator].Level
	return fmt.Sprintf("%s (%s), which gave grant %s at depth %d, may delegate at most %d hop(s) below itself, down to depth %d", g.Delegator, l, g.ID, g.Depth, r.MaxDepth[l], limit)
}

// normalize returns a sorted copy of roles without duplicates.
func normalize(roles []string) []string {
	s := slices.Clone(roles)
	slices.Sort(s)
	return slices.Compact(s)
}
