package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/agentictrust/atf/deploy/dev/oidcop"
)

// The console demo (`make console`): the dev stack, a local OpenID
// provider with demo people, and atfd with its web console, left running
// until Ctrl-C so that a person can sign in and approve, watch and stop
// agents (docs/console.md).

var consoleScript = script{
	steps: []step{
		{"Start a local SPIRE server + agent and a Vault dev server", (*demo).startDev},
		{"Register workloads with SPIRE", (*demo).registerWorkloads},
		{"Start a local OpenID provider with demo people (zitadel/oidc, deploy/dev/oidcop)", (*demo).startProvider},
		{"Start atfd, with its web console on", (*demo).startBroker},
		{"The platform team (alice, an admin) registers three agents; two earned their level elsewhere: alice signs off, then migrates them", (*demo).registerAgents},
		{"The writer (Senior) gets a write token and delegates read access to a helper agent", (*demo).delegate},
		{"The drafter (Junior) asks to write: its request waits in the console's approvals inbox", (*demo).pendingWrite},
		{"The console answers: sign in as one of the demo people", (*demo).openConsole},
	},
	done: "The console ran on real SPIRE SVIDs, a real Vault, atfd and an OpenID provider.",
}

// consoleState is what the console demo keeps.
type consoleState struct {
	op   *oidcop.Provider
	url  string
	yaml string // atfd's console section
	// wait keeps the demo up until Ctrl-C once the console answers.
	wait bool
}

// demoPeople are the console demo's people: the password is the username
// with "-demo" after it.
var demoPeople = []oidcop.User{
	{ID: "carol", Username: "carol", Password: "carol-demo", First: "Carol", Last: "Approver", Email: "carol@example.org",
		Groups: []string{"atf-approvers", "atf-auditors"}},
	{ID: "dave", Username: "dave", Password: "dave-demo", First: "Dave", Last: "Secops", Email: "dave@example.org",
		Groups: []string{"atf-secops", "atf-admins"}},
}

func (d *demo) startProvider(ctx context.Context) error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	c := &d.console
	c.url = "http://" + addr
	secret := filepath.Join(d.stack.Dir, "console-client-secret")
	if err := os.WriteFile(secret, []byte("demo-console-secret\n"), 0o600); err != nil {
		return err
	}
	if c.op, err = oidcop.Start("127.0.0.1:0", demoPeople, oidcop.Client{ID: "atf-console", Secret: "demo-console-secret",
		RedirectURIs: []string{c.url + "/auth/callback"}}, oidcop.Client{ID: "atfctl", Device: true}); err != nil {
		return err
	}
	c.yaml = fmt.Sprintf(`
console:                 # the web console (docs/console.md)
  listen_addr: %s
  url: %s
  oidc:
    issuer: %s
    client_id: atf-console
    client_secret_file: %s
    scopes: [profile, email, groups]
  cli_client_id: atfctl  # people on the command line: atfctl login
  roles:
    admin: [atf-admins]
    approver: [atf-approvers]
    security_operator: [atf-secops]
    auditor: [atf-auditors]
`, addr, c.url, c.op.Issuer, secret)
	fmt.Printf("   OpenID provider at %s\n", c.op.Issuer)
	return nil
}

func (d *demo) pendingWrite(ctx context.Context) error {
	id, err := d.drafterWaits(ctx, "erin@example.org")
	if err != nil {
		return err
	}
	d.check(id != "none", "the drafter's request waits in the approvals inbox (%s)", id)
	return nil
}

func (d *demo) openConsole(ctx context.Context) error {
	c := &d.console
	client := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(c.url + "/login")
	if err != nil {
		return fmt.Errorf("the console does not answer: %w", err)
	}
	resp.Body.Close()
	d.check(resp.StatusCode == http.StatusFound && strings.HasPrefix(resp.Header.Get("Location"), c.op.Issuer),
		"the console sends a sign-in to the OpenID provider")
	fmt.Printf("\n   %sOpen %s%s and sign in as\n", bold, c.url, reset)
	for _, p := range demoPeople {
		fmt.Printf("     %-6s password %-11s groups %s\n", p.Username, p.Password, strings.Join(p.Groups, ", "))
	}
	fmt.Printf("   or, from a terminal, sign in with the device grant and act as that person:\n"+
		"     atfctl --addr %s --broker-id %s --bundle %s \\\n       login --issuer %s\n     atfctl --addr %s approvals list\n",
		brokerAddr, d.stack.BrokerID, d.stack.BundlePath, c.op.Issuer, brokerAddr)
	if c.wait {
		fmt.Printf("   %sPress Ctrl-C to stop.%s\n", dim, reset)
		<-ctx.Done()
	}
	return nil
}
