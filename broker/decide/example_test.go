package decide_test

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/policy"
)

// A Junior reporting agent asks for a write role under the shipped model
// and example policy: the plan waits for a human, and once a human has
// approved, the same request is issued. As an Intern it is refused,
// whatever the policy says.
func ExampleDecide() {
	gate, err := authz.NewGate(authz.DefaultLimits())
	if err != nil {
		fmt.Println(err)
		return
	}
	pol, err := authz.NewPolicy(1, policy.Model, policy.Example)
	if err != nil {
		fmt.Println(err)
		return
	}
	dir, err := os.MkdirTemp("", "decide-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "roles.yaml")
	const rolesFile = "roles:\n  - {name: reports-write, class: write, classification: internal, policies: [demo-reports-write], max_ttl: 10m}\n"
	if err := os.WriteFile(path, []byte(rolesFile), 0o600); err != nil {
		fmt.Println(err)
		return
	}
	roles, err := config.LoadRoles(path)
	if err != nil {
		fmt.Println(err)
		return
	}

	ask := func(a store.Agent, approvalID string) {
		req := decide.Request{Caller: a.ID, Role: roles["reports-write"], ApprovalID: approvalID}
		why := decide.NewReasons("d-1", "r-1", req)
		auth := decide.Own(a.ID, &a)
		why.Of(auth)
		plan, ref := decide.Decide(decide.Input{Gate: gate, Policy: pol, Request: req, Authority: auth}, why)
		switch {
		case ref != nil:
			fmt.Println("refused:", ref)
		case plan.NeedsApproval:
			fmt.Println("waits for a human:", plan.Reasons.Rule)
		default:
			fmt.Println("issue", plan.Policies, "for", plan.TTL, "under", plan.Node())
		}
	}
	reporter := store.Agent{ID: "spiffe://example.org/agents/reporter", Level: authz.Junior, Status: store.Active, Roles: []string{"reports-write"}}
	ask(reporter, "")
	ask(reporter, "approval-1")
	reporter.Level = authz.Intern
	ask(reporter, "")
	// Output:
	// waits for a human: junior: write needs human approval
	// issue [demo-reports-write] for 10m0s under agent:spiffe://example.org/agents/reporter
	// refused: intern agents may hold only read credentials (role "reports-write" is write) (decision d-1)
}
