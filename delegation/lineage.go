package delegation

import "fmt"

// LineageOfGrant returns root and every grant below it, breadth-first, each
// once. children returns the grants whose ParentID is grantID. Revoked and
// expired grants are included: revoking a lineage must reach what hangs
// below them too. It terminates even if the store holds a cycle.
func LineageOfGrant(root Grant, children func(grantID string) ([]Grant, error)) ([]Grant, error) {
	return walk([]Grant{root}, children)
}

// LineageOfAgent returns every grant agentID gave and every grant below
// those, breadth-first, each once: everything that derives from agentID's
// authority. given returns every grant the agent gave, whether of its own
// authority or under a grant it received, because a compromised agent must
// lose what it handed on either way; children is as for LineageOfGrant. It
// terminates even if the store holds a cycle.
func LineageOfAgent(agentID string, given func(agentID string) ([]Grant, error), children func(grantID string) ([]Grant, error)) ([]Grant, error) {
	roots, err := given(agentID)
	if err != nil {
		return nil, fmt.Errorf("delegation: grants given by %s: %w", agentID, err)
	}
	return walk(roots, children)
}

// walk returns roots and their descendants breadth-first, deduplicated by
// grant ID; out doubles as the queue.
func walk(roots []Grant, children func(grantID string) ([]Grant, error)) ([]Grant, error) {
	seen := make(map[string]bool, len(roots))
	out := make([]Grant, 0, len(roots))
	add := func(gs []Grant) {
		for _, g := range gs {
			if !seen[g.ID] {
				seen[g.ID] = true
				out = append(out, g)
			}
		}
	}
	add(roots)
	for i := 0; i < len(out); i++ {
		kids, err := children(out[i].ID)
		if err != nil {
			return nil, fmt.Errorf("delegation: grants below %s: %w", out[i].ID, err)
		}
		add(kids)
	}
	return out, nil
}
