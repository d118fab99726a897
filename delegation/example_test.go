package delegation_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/agentictrust/atf/delegation"
)

// A Principal planner hands an Intern reporter part of its authority. The
// reporter acts as an Intern with only the roles both hold, and may not pass
// the grant on.
func Example() {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	rules := delegation.DefaultRules()
	planner := delegation.Agent{
		ID: "spiffe://example.org/agent/planner", Level: delegation.Principal, Active: true,
		Roles: []string{"orders-read", "orders-write", "orders-admin"},
	}
	reporter := delegation.Agent{
		ID: "spiffe://example.org/agent/reporter", Level: delegation.Intern, Active: true,
		Roles: []string{"orders-read", "reports-write"},
	}

	g, err := rules.Check(delegation.Request{
		Delegator: planner,
		Delegatee: &reporter,
		Roles:     []string{"orders-read", "orders-write"},
		TTL:       time.Hour,
	}, now)
	if err != nil {
		fmt.Println(err)
		return
	}
	g.ID = "grant-1" // the broker assigns IDs when it stores a grant
	fmt.Println("grant:", g.Delegator, "→", g.Delegatee, g.Roles, "depth", g.Depth, "until", g.ExpiresAt.Format(time.Kitchen))

	chain := []delegation.Grant{g}
	ancestors := map[string]delegation.Agent{planner.ID: planner}
	auth, err := delegation.Effective(reporter, chain, ancestors, now)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("reporter acts as", auth.Level, "with", auth.Roles)

	archiver := delegation.Agent{
		ID: "spiffe://example.org/agent/archiver", Level: delegation.Senior, Active: true,
		Roles: []string{"orders-read"},
	}
	_, err = rules.Check(delegation.Request{
		Delegator: reporter,
		Delegatee: &archiver,
		Chain:     chain,
		Ancestors: ancestors,
		Roles:     []string{"orders-read"},
		TTL:       time.Minute,
	}, now)
	fmt.Println(errors.Is(err, delegation.ErrLevelMayNotDelegate), err)
	// Output:
	// grant: spiffe://example.org/agent/planner → spiffe://example.org/agent/reporter [orders-read orders-write] depth 1 until 1:00PM
	// reporter acts as intern with [orders-read]
	// true delegation: level may not delegate: agent spiffe://example.org/agent/reporter is at level intern, which may not delegate
}
