package revoke

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/agentictrust/atf/broker/failpoint"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/vault"
)

const (
	// anchorTTL is how long an anchor lives; it is replaced once less than
	// anchorReserve is left, so every credential and child anchor made
	// under it can live out its full lifetime.
	anchorTTL     = 4 * time.Hour
	anchorReserve = 70 * time.Minute
	// inlineRevokeTimeout bounds the Vault work a revoking call waits for;
	// the rest finishes from the queue.
	inlineRevokeTimeout = 30 * time.Second
	// settleAfterVault bounds how long a revocation of at least
	// settleAfterVaultFrom credentials waits for Vault's answer before
	// the credentials that died with the anchors are listed for their
	// agents (the broker already refuses what was revoked). Below that,
	// listing takes a few milliseconds and goes first.
	settleAfterVault     = 50 * time.Millisecond
	settleAfterVaultFrom = 1000
)

// Anchors holds the broker's current Vault anchor per lineage node, in
// memory only: the store keeps their accessors, never their tokens.
//
// Anchors of different nodes are made concurrently, and the map is locked
// only to be read or changed, never across a Vault call or a commit: a
// thousand agents starting together would otherwise queue behind one
// another's anchors, and every issuance and revocation behind them.
type Anchors struct {
	issuer *vault.Issuer
	store  *store.Store
	// policies are a role's policies, which its role anchors hold.
	policies func(role string) []string

	mu sync.Mutex
	m  map[string]*vault.Anchor
	// roles are the role nodes in m, by their base node: they go with it.
	roles map[string]map[string]bool
	// sweepAt is the size of m at which expired anchors are swept out.
	sweepAt int
	// making holds the anchors being made, by node; everyone asking for a
	// node meanwhile waits for the one making.
	making map[string]*making
}

// making is one anchor being made.
type making struct {
	done chan struct{} // closed once an and err are set
	an   *vault.Anchor
	err  error
	// dropped: the node was revoked meanwhile, so the anchor is handed to
	// those who asked before, but not kept.
	dropped bool
}

// Get returns a usable anchor for node, creating it (and its parents) if
// needed: an agent's anchor hangs under the broker's token, a grant's under
// its parent grant's or its delegator's.
func (a *Anchors) Get(ctx context.Context, node string) (*vault.Anchor, error) {
	return a.getBelow(ctx, node, nil)
}

// getBelow is get for the anchor of a parent of the nodes below, whose
// anchors wait on it.
func (a *Anchors) getBelow(ctx context.Context, node string, below []string) (*vault.Anchor, error) {
	if len(below) > 64 || slices.Contains(below, node) {
		return nil, errors.New("revoke: anchor chain too deep or cyclic (corrupted grants?)")
	}
	for {
		a.mu.Lock()
		if an := a.m[node]; a.issuer.Usable(an, anchorReserve) {
			a.mu.Unlock()
			return an, nil
		}
		mk := a.making[node]
		if mk == nil {
			break // a.mu held
		}
		a.mu.Unlock()
		select {
		case <-mk.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		// Unless the caller making it gave up waiting for a parent's, it
		// is everyone's answer.
		if ctx.Err() != nil || !errors.Is(mk.err, context.Canceled) && !errors.Is(mk.err, context.DeadlineExceeded) {
			return mk.an, mk.err
		}
	}
	mk := &making{done: make(chan struct{})}
	if a.making == nil {
		a.making = map[string]*making{}
	}
	a.making[node] = mk
	a.mu.Unlock()
	mk.an, mk.err = a.create(ctx, node, append(below, node))
	a.mu.Lock()
	if a.making[node] == mk {
		delete(a.making, node)
	}
	if mk.err == nil && !mk.dropped {
		a.putLocked(node, mk.an)
	}
	a.mu.Unlock()
	close(mk.done)
	return mk.an, mk.err
}

// putLocked keeps an for node, sweeping out anchors that can no longer be
// used once the map has doubled since the last sweep, so that it holds
// about what is live.
func (a *Anchors) putLocked(node string, an *vault.Anchor) {
	if len(a.m) >= a.sweepAt {
		// Only what is held: a replacement being made for a stale node
		// is kept when it is done.
		for n, old := range a.m {
			if !a.issuer.Usable(old, anchorReserve) {
				delete(a.m, n)
				if base := store.BaseNode(n); base != n {
					delete(a.roles[base], n)
				}
			}
		}
		a.sweepAt = max(2*len(a.m), 1024)
	}
	a.m[node] = an
	if base := store.BaseNode(node); base != node {
		if a.roles == nil {
			a.roles = map[string]map[string]bool{}
		}
		if a.roles[base] == nil {
			a.roles[base] = map[string]bool{}
		}
		a.roles[base][node] = true
	}
}

// deleteLocked forgets node's anchor and those of its role nodes, and
// those being made for them.
func (a *Anchors) deleteLocked(node string) {
	for _, n := range append([]string{node}, slices.Collect(maps.Keys(a.roles[node]))...) {
		delete(a.m, n)
		if mk := a.making[n]; mk != nil {
			mk.dropped = true
			delete(a.making, n) // later callers make anew
		}
	}
	delete(a.roles, node)
	if base := store.BaseNode(node); base != node {
		delete(a.roles[base], node)
	}
}

// create makes and records an anchor for node; path is node and the nodes
// below it waiting on it. A role node's anchor hangs under its base node's
// and holds the role's policies.
func (a *Anchors) create(ctx context.Context, node string, path []string) (*vault.Anchor, error) {
	var parent *vault.Anchor
	var policies []string
	parentAccessor := ""
	if base := store.BaseNode(node); base != node {
		var err error
		if parent, err = a.getBelow(ctx, base, path); err != nil {
			return nil, err
		}
		parentAccessor = parent.Accessor
		policies = a.policies(strings.TrimPrefix(node, base+"#"))
	} else if id, ok := strings.CutPrefix(node, "grant:"); ok {
		g, err := a.store.GetGrant(id)
		if err != nil {
			return nil, err
		}
		up := store.AgentNode(g.Delegator)
		if g.ParentID != "" {
			up = store.GrantNode(g.ParentID)
		}
		if parent, err = a.getBelow(ctx, up, path); err != nil {
			return nil, err
		}
		parentAccessor = parent.Accessor
	}
	// Others may be waiting for it: the caller's giving up does not stop
	// it (the Vault timeout bounds it).
	ctx = context.WithoutCancel(ctx)
	holder, err := a.holder(store.BaseNode(node))
	if err != nil {
		return nil, err
	}
	// It carries the holder's Vault entity, never the broker's: so do all
	// tokens below it (docs/security.md, "Vault identity").
	an, err := a.issuer.CreateAnchor(ctx, parent, holder, anchorTTL, map[string]string{"atf_node": node, "atf_agent": holder}, policies...)
	if err != nil {
		return nil, err
	}
	failpoint.Hit(failpoint.AnchorAfterVault)
	// Recorded before use: a revocation must always find it.
	if err := a.store.AddAnchor(store.Anchor{Accessor: an.Accessor, Node: node, Parent: parentAccessor, CreatedAt: time.Now().UTC(), ExpiresAt: an.ExpiresAt.UTC()}); err != nil {
		_ = a.issuer.Revoke(ctx, an.Accessor)
		return nil, err
	}
	return an, nil
}

// holder is the agent whose credentials hang below node's anchors: the
// agent's own, or a grant's delegatee. The anchors carry its Vault entity
// (vault.EntityAlias), which Vault's audit log names in every request of
// theirs and their credentials', and their metadata names it.
func (a *Anchors) holder(node string) (string, error) {
	id, ok := strings.CutPrefix(node, "grant:")
	if !ok {
		return strings.TrimPrefix(node, "agent:"), nil
	}
	g, err := a.store.GetGrant(id)
	return g.Delegatee, err
}

// Drop forgets the anchors of revoked nodes (with their role nodes'), and
// those being made for them.
func (a *Anchors) Drop(nodes ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, n := range nodes {
		a.deleteLocked(n)
	}
}

// DropAll forgets every anchor (the global kill switch revoked them all).
func (a *Anchors) DropAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.m)
	clear(a.roles)
	for _, mk := range a.making {
		mk.dropped = true
	}
	clear(a.making)
}

// Retire revokes in Vault, and forgets, every anchor held that carries
// Vault entity entity: Vault gives that entity identity policies, which
// widen every token below them (docs/security.md, "Vault identity"). It
// returns how many it revoked and the first error; an anchor it could not
// revoke lives until it expires, and its credentials no longer than theirs.
func (a *Anchors) Retire(ctx context.Context, entity string) (int, error) {
	if entity == "" {
		return 0, nil
	}
	a.mu.Lock()
	var nodes, victims []string
	for n, an := range a.m {
		if an.EntityID == entity {
			nodes, victims = append(nodes, n), append(victims, an.Accessor)
		}
	}
	for _, n := range nodes {
		a.deleteLocked(n)
	}
	a.mu.Unlock()
	var first error
	for _, acc := range victims {
		if err := a.issuer.Revoke(ctx, acc); err != nil && first == nil {
			first = err
		}
	}
	return len(victims), first
}
