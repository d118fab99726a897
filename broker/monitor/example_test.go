package monitor_test

import (
	"fmt"
	"time"

	"github.com/agentictrust/atf/broker/breaker"
	"github.com/agentictrust/atf/broker/maturity"
	"github.com/agentictrust/atf/broker/monitor"
)

func Example() {
	const agent = "spiffe://example.org/agent/billing"
	now := time.Date(2026, time.March, 2, 10, 0, 0, 0, time.UTC)

	m, err := monitor.New(monitor.DefaultConfig())
	if err != nil {
		panic(err)
	}
	breakers, err := monitor.NewBreakers(breaker.Config{Failures: 2}, func() time.Time { return now })
	if err != nil {
		panic(err)
	}

	// The agent asks for a role its manifest does not grant, and is denied.
	found := m.Observe(monitor.Event{Agent: agent, Role: "payments-admin", Kind: monitor.Request, Time: now})
	for _, a := range found {
		fmt.Println(a.Rule, a.Severity, a.Detail)
		if a.Severity >= maturity.High {
			breakers.Trip(agent)
		}
	}
	ok, state, retryAt := breakers.Allow(agent)
	fmt.Println(ok, state, retryAt.Sub(now))
	// Output:
	// outside_manifest high role "payments-admin" is not in the agent's manifest
	// false open 30s
}
