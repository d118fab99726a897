// Package delegation decides agent-to-agent delegations and computes what
// they are worth.
//
// It owns the attenuation rules of the Agentic Trust Framework's
// authorization chain: a grant hands a narrower slice of the delegator's
// authority to another agent; a chain is the path of grants from some
// agent's own authority down to the grant an agent acts under; a lineage is
// everything that derives from one grant or one agent, which is what the
// broker revokes at once. The package is pure logic: it stores nothing,
// imports only the standard library, and takes the time as an argument.
//
// # Basics
//
// To delegate, the broker loads the chain the delegator acts under, every
// delegator along it from the registry as it is now, and the delegator's
// live fan-out, then calls Rules.Check. A nil error comes with the Grant to
// store; any other error wraps one of the Err values, for errors.Is, and
// says what to do about it.
//
// To issue a credential to an agent acting under a grant, the broker calls
// Effective with the same kind of inputs. The Authority it returns is the
// agent's manifest narrowed by every grant and every ancestor's current
// manifest, the lowest level along the chain and the earliest expiry; the
// broker issues only roles in Authority.Roles, gates them by
// Authority.Level, and ends the credential by Authority.ExpiresAt.
//
// To revoke, LineageOfGrant and LineageOfAgent list every grant below a
// point, breadth-first and each once, even from a corrupt store that holds
// a cycle.
//
// # The confused-deputy guarantee
//
// No agent can act with more than any agent above it in its chain, nor
// with more than it holds itself. Roles are an intersection: of the acting
// agent's own manifest, of every grant's scope and of every ancestor's
// manifest as it is now, so a Principal cannot launder a role it lacks
// through another agent, and an Intern granted a role by a Principal still
// cannot use a role outside its own manifest. Level is the minimum along the
// chain, the acting agent included: an Intern anywhere in a chain makes
// everything below it Intern, so the broker caps it to read, and an Intern
// gains nothing by acting under a Principal's grant. Expiry is the earliest
// along the chain. An ancestor that is killed, deregistered, or whose grant
// is revoked or expired voids everything below it at once, without waiting
// for the lineage to be revoked in the store.
//
// # Caveats
//
// Evaluate ancestors as they are now, never as they were when a grant was
// given: demotions and shrunken manifests must take effect below them
// immediately. An ancestor missing from the map counts as deregistered.
//
// Rules.MaxDepth binds every delegator along a chain from its own grant
// down, not only the root: a Senior (2 hops) under a Principal (4 hops) at
// depth 2 lets the chain reach depth 3, not the
// Principal's 4.
//
// Check does not require the delegatee's manifest to hold the granted roles;
// Effective drops any it lacks, so such a grant is harmless until the
// delegatee's manifest grows.
//
// Check and LiveFanOut race with concurrent delegations unless the caller
// counts the fan-out and stores the grant in one store transaction.
//
// A grant with any RevokedAt is revoked, whatever the clock says; a grant is
// expired from its ExpiresAt on.
package delegation
