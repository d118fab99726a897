package delegation

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Authority is what an agent may do when acting under a chain.
type Authority struct {
	// Roles are the agent's manifest narrowed by every grant in the chain
	// and every ancestor's current manifest, sorted.
	Roles []string
	// Level is the lowest level along the chain, the agent's included; an
	// invalid (zero) level anywhere leaves it invalid, for the caller to
	// refuse.
	Level Level
	// ExpiresAt is the earliest expiry in the chain; zero when the agent
	// acts under its own authority.
	ExpiresAt time.Time
	// Chain holds the SPIFFE IDs from the root delegator down to the agent
	// (only the agent when it acts under its own authority).
	Chain []string
	// GrantIDs are the chain's grants, root first.
	GrantIDs []string
	// Scopes are, for each access-token role a grant of the chain
	// narrows, the scopes every such grant allows (sorted); a role not
	// here has all its scopes. Nil without a narrowing grant.
	Scopes map[string][]string
}

// Effective returns the authority agent has when acting under chain, which
// runs from a grant of some agent's own authority down to a grant to agent
// (empty: agent's own authority). ancestors holds every delegator in chain
// as the registry holds it now; a missing one counts as deregistered.
//
// It fails with ErrMalformedChain if the grants do not link up, ErrCycle if
// an agent appears twice, ErrAgentInactive if agent is not active, and
// ErrGrantRevoked, ErrGrantExpired or ErrAncestorInactive for the first
// grant, from the root, that no longer holds.
func Effective(agent Agent, chain []Grant, ancestors map[string]Agent, now time.Time) (Authority, error) {
	path, err := links(agent.ID, chain)
	if err != nil {
		return Authority{}, err
	}
	if !agent.Active {
		return Authority{}, fmt.Errorf("%w: agent %s is deregistered or killed and holds no authority", ErrAgentInactive, agent.ID)
	}
	auth := Authority{Level: agent.Level, Chain: path, GrantIDs: make([]string, len(chain))}
	lists := make([][]string, 0, 2*len(chain))
	for i, g := range chain {
		a, known := ancestors[g.Delegator]
		switch {
		case !g.RevokedAt.IsZero():
			return Authority{}, fmt.Errorf("%w: grant %s (%s → %s) was revoked at %s", ErrGrantRevoked, g.ID, g.Delegator, g.Delegatee, g.RevokedAt.Format(time.RFC3339))
		case !now.Before(g.ExpiresAt):
			return Authority{}, fmt.Errorf("%w: grant %s (%s → %s) expired at %s; ask %s for a new grant", ErrGrantExpired, g.ID, g.Delegator, g.Delegatee, g.ExpiresAt.Format(time.RFC3339), g.Delegator)
		case !known:
			return Authority{}, fmt.Errorf("%w: %s, which gave grant %s, is no longer registered; every grant below it is void", ErrAncestorInactive, g.Delegator, g.ID)
		case !a.Active:
			return Authority{}, fmt.Errorf("%w: %s, which gave grant %s, is deregistered or killed; every grant below it is void", ErrAncestorInactive, g.Delegator, g.ID)
		}
		auth.Level = min(auth.Level, a.Level)
		if auth.ExpiresAt.IsZero() || g.ExpiresAt.Before(auth.ExpiresAt) {
			auth.ExpiresAt = g.ExpiresAt
		}
		auth.GrantIDs[i] = g.ID
		lists = append(lists, g.Roles, a.Roles)
		for role, scopes := range g.Scopes {
			if have, ok := auth.Scopes[role]; ok {
				scopes = intersect(have, [][]string{scopes})
			}
			if auth.Scopes == nil {
				auth.Scopes = map[string][]string{}
			}
			auth.Scopes[role] = normalize(scopes)
		}
	}
	auth.Roles = intersect(agent.Roles, lists)
	for role := range auth.Scopes {
		if _, ok := slices.BinarySearch(auth.Roles, role); !ok {
			delete(auth.Scopes, role)
		}
	}
	return auth, nil
}

// links checks that chain runs from a grant of its root's own authority down
// to agent, one hop per grant, and returns the agents along it.
func links(agent string, chain []Grant) ([]string, error) {
	path := make([]string, 0, len(chain)+1)
	for i, g := range chain {
		switch {
		case g.ID == "":
			return nil, fmt.Errorf("%w: grant %d of the chain has no ID", ErrMalformedChain, i+1)
		case i == 0 && g.ParentID != "":
			return nil, fmt.Errorf("%w: the chain starts at grant %s, whose parent is %s; a chain starts at a grant of its delegator's own authority", ErrMalformedChain, g.ID, g.ParentID)
		case i > 0 && g.ParentID != chain[i-1].ID:
			return nil, fmt.Errorf("%w: grant %s has parent %s, not the grant before it, %s", ErrMalformedChain, g.ID, g.ParentID, chain[i-1].ID)
		case i > 0 && g.Delegator != chain[i-1].Delegatee:
			return nil, fmt.Errorf("%w: grant %s was given by %s, but the grant before it, %s, was given to %s", ErrMalformedChain, g.ID, g.Delegator, chain[i-1].ID, chain[i-1].Delegatee)
		case g.Depth != i+1:
			return nil, fmt.Errorf("%w: grant %s has depth %d, but it is hop %d of the chain", ErrMalformedChain, g.ID, g.Depth, i+1)
		}
		path = append(path, g.Delegator)
	}
	if n := len(chain); n > 0 && chain[n-1].Delegatee != agent {
		return nil, fmt.Errorf("%w: the chain ends with grant %s to %s, not to agent %s", ErrMalformedChain, chain[n-1].ID, chain[n-1].Delegatee, agent)
	}
	path = append(path, agent)
	for i, id := range path {
		if slices.Contains(path[:i], id) {
			return nil, fmt.Errorf("%w: agent %s appears twice in the chain %s; the grant store is corrupt", ErrCycle, id, strings.Join(path, " → "))
		}
	}
	return path, nil
}

// intersect returns the distinct roles of base that are in every one of
// lists, sorted.
func intersect(base []string, lists [][]string) []string {
	roles := normalize(base)
	// seen[i] == j once roles[i] has been found in lists[:j].
	seen := make([]int, len(roles))
	for j, l := range lists {
		for _, r := range l {
			if i, ok := slices.BinarySearch(roles, r); ok && seen[i] == j {
				seen[i] = j + 1
			}
		}
	}
	out := roles[:0]
	for i, r := range roles {
		if seen[i] == len(lists) {
			out = append(out, r)
		}
	}
	return out
}
