package delegation

import "errors"

// Refusals. Every error returned by Check and Effective wraps exactly one of
// these, so callers can map it with errors.Is; the wrapping message says what
// to do about it.
var (
	// ErrUnknownDelegatee: the delegatee is not a registered agent.
	ErrUnknownDelegatee = errors.New("delegation: unknown delegatee")
	// ErrDelegateeInactive: the delegatee is deregistered or killed.
	ErrDelegateeInactive = errors.New("delegation: delegatee is not active")
	// ErrSelfDelegation: the delegator named itself as delegatee.
	ErrSelfDelegation = errors.New("delegation: self-delegation")
	// ErrCycle: an agent would appear twice in one chain.
	ErrCycle = errors.New("delegation: cycle")
	// ErrAgentInactive: the acting agent (the delegator in Check, the agent
	// in Effective) is deregistered or killed.
	ErrAgentInactive = errors.New("delegation: agent is not active")
	// ErrAncestorInactive: an agent that delegated a grant in the chain is
	// deregistered, killed or no longer registered at all.
	ErrAncestorInactive = errors.New("delegation: ancestor is not active")
	// ErrAncestorLevel: an agent that delegated a grant in the chain is now
	// at a level that may not delegate, so the chain cannot be extended.
	ErrAncestorLevel = errors.New("delegation: ancestor may no longer delegate")
	// ErrGrantRevoked: a grant in the chain was revoked.
	ErrGrantRevoked = errors.New("delegation: grant revoked")
	// ErrGrantExpired: a grant in the chain has expired.
	ErrGrantExpired = errors.New("delegation: grant expired")
	// ErrLevelMayNotDelegate: the delegator's level may not delegate.
	ErrLevelMayNotDelegate = errors.New("delegation: level may not delegate")
	// ErrNoRoles: the request names no role.
	ErrNoRoles = errors.New("delegation: no roles")
	// ErrScope: a requested role is outside the delegator's effective
	// authority.
	ErrScope = errors.New("delegation: scope exceeds authority")
	// ErrInvalidTTL: the requested TTL is not positive.
	ErrInvalidTTL = errors.New("delegation: invalid TTL")
	// ErrTTLAboveMax: the requested TTL exceeds Rules.MaxTTL.
	ErrTTLAboveMax = errors.New("delegation: TTL above maximum")
	// ErrOutlivesChain: the grant would expire after a grant in its chain.
	ErrOutlivesChain = errors.New("delegation: grant would outlive its chain")
	// ErrDepthExhausted: the chain may not grow by another hop.
	ErrDepthExhausted = errors.New("delegation: depth exhausted")
	// ErrMaxDepth: the requested MaxDepth is negative or exceeds the hops
	// that remain below the new grant.
	ErrMaxDepth = errors.New("delegation: max depth not allowed")
	// ErrFanOut: the delegator already holds out Rules.MaxFanOut live grants
	// under the same parent.
	ErrFanOut = errors.New("delegation: too many live grants")
	// ErrMalformedChain: the chain's grants do not link up; the caller or
	// its store is at fault, not the agents.
	ErrMalformedChain = errors.New("delegation: malformed chain")
)
