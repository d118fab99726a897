// Command demo runs the ATF broker on a local SPIRE + Vault stack and walks
// through its first capability, printing every step: `make demo`.
//
// It starts a SPIRE server and agent and a Vault dev server on loopback,
// starts atfd (which gets its SVID from the Workload API and logs in to Vault
// with its JWT-SVID), registers agents, and shows one of them fetching a
// short-lived Vault token and using it, an Intern refused a write role, an
// unregistered workload refused, a delegation to a helper agent, a Junior
// write approved by a human and redeemed once, the policy explaining its
// decisions and refusing a dangerous pattern, the audit chain verified, and
// a deregistration killing the agent's tokens and everything it delegated;
// then (oauth.go) an agent calling an MCP tool server with an OAuth access
// token through a delegation chain A → B → C, refused as soon as B's
// lineage is revoked (-oauth runs only that part).
// Everything runs in a temporary directory that is removed at the end, also
// on Ctrl-C.
//
// With -ha (`make demo-ha`) it runs the high-availability demo instead
// (ha.go): three atfd replicas on one store in a three-member etcd cluster,
// one killed while an agent uses it, a lineage revoked on one replica heard
// through another. Either demo exits 0 only if every step behaved as
// expected: it is a check as much as a show.
package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/policy"
)

//go:embed roles.yaml
var rolesYAML []byte

const (
	bold  = "\033[1m"
	dim   = "\033[2m"
	green = "\033[32m"
	red   = "\033[31m"
	reset = "\033[0m"
)

func main() {
	ha := flag.Bool("ha", false, "run the high-availability demo: three atfd replicas on etcd, one killed (make demo-ha)")
	oauth := flag.Bool("oauth", false, "run only the OAuth part (oauth.go): a delegation chain calling an MCP tool server, revoked")
	consoleDemo := flag.Bool("console", false, "run the web console on the dev stack with a local OpenID provider and demo people, until Ctrl-C (make console)")
	once := flag.Bool("once", false, "with -console, stop once the console answers instead of waiting for Ctrl-C (a check)")
	bin := flag.String("bin", "", "directory holding atfd and atfctl (default: bin/, where `make build` puts them)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sc := mainScript
	switch {
	case *ha:
		sc = haScript
	case *oauth:
		sc = oauthScript
	case *consoleDemo:
		sc = consoleScript
	}
	if err := run(ctx, sc, *bin, *consoleDemo && !*once); err != nil {
		if ctx.Err() != nil {
			fmt.Println("\ninterrupted; cleaned up")
			os.Exit(130)
		}
		fmt.Fprintf(os.Stderr, "%sdemo failed:%s %v\n", red, reset, err)
		os.Exit(1)
	}
}

type demo struct {
	stack      *dev.Stack
	bin        string   // holds atfd and atfctl
	env        []string // for atfctl and vault
	atfds      []*atfd  // one, or the replicas of the HA demo
	unexpected int      // steps whose outcome was not the expected one

	// The cast: agents, admins and approvers, and the SVID files of those
	// that do not use the Workload API.
	reporter, writer, helper, stranger, drafter spiffeid.ID
	alice, bob                                  spiffeid.ID
	files                                       map[spiffeid.ID]dev.SVIDFiles

	// Vault tokens of the reporter, the writer and the helper, which later
	// steps show dead.
	token, wtoken, htoken string
	// pg is the orders database; dbUser the reporter's user in it, which
	// the kill switch drops.
	pg     *dev.Postgres
	dbUser [2]string

	ha      haState
	oauth   oauthState
	console consoleState
}

// step is one numbered step of a demo.
type step struct {
	title string
	run   func(*demo, context.Context) error
}

// script is a demo: its steps in order, and what it says once all held.
type script struct {
	steps []step
	done  string
}

var mainScript = script{steps: append(mainSteps, oauthSteps...), done: "Every step above went through real SPIRE SVIDs, a real Vault and atfd."}

// mainSteps are `make demo`'s steps, in order.
var mainSteps = []step{
	{"Start a local SPIRE server + agent and a Vault dev server", (*demo).startStack},
	{"Register workloads with SPIRE", (*demo).registerWorkloads},
	{"Start atfd", (*demo).startBroker},
	{"The platform team (alice, an admin) registers three agents; two earned their level elsewhere: alice signs off, then migrates them", (*demo).registerAgents},
	{"The reporter agent asks who it is (SVID from the Workload API, no files)", (*demo).reporterWhoAmI},
	{"The reporter fetches a short-lived Vault token for reports-read", (*demo).reporterFetches},
	{"The reporter uses the token: its role's path is readable, anything else is denied", (*demo).reporterUsesToken},
	{"The reporter runs a command with a PostgreSQL user of its own (a dynamic secret under its lineage)", (*demo).reporterDatabase},
	{"The reporter is an Intern: a write role is refused, whatever its manifest says", (*demo).internRefusedWrite},
	{"An unregistered workload has a valid SVID but gets nothing", (*demo).strangerRefused},
	{"A non-admin cannot touch the registry", (*demo).nonAdminRefused},
	{"The writer (Senior) gets a write token and delegates read access to a helper agent", (*demo).delegate},
	{"A Junior agent's write waits for a human: bob (an approver) approves it, the agent redeems it once", (*demo).approve},
	{"Segmentation is explainable: dry-run a request, query the decisions, verify the audit chain", (*demo).explain},
	{"A policy with a pattern that matches more than it seems is refused; the current one keeps serving", (*demo).refuseBadPolicy},
	{"The kill switch: alice stops the reporter at once (its database user is dropped); only a security operator (bob) can release it", (*demo).killSwitch},
	{"Deregistering the writer kills its tokens and everything it delegated, in Vault, at once", (*demo).deregister},
}

// run runs sc's steps in order, atfd and atfctl from bin (default the
// stack's bin/), and says whether every step behaved as expected.
func run(ctx context.Context, sc script, bin string, wait bool) (err error) {
	d := &demo{bin: bin, console: consoleState{wait: wait}}
	defer d.close()
	defer func() {
		if err != nil {
			d.printLogs()
		}
	}()
	for i, s := range sc.steps {
		fmt.Printf("\n%s%d. %s%s\n", bold, i+1, s.title, reset)
		if err := s.run(d, ctx); err != nil {
			return err
		}
	}
	if d.unexpected > 0 {
		return fmt.Errorf("%d check(s) did not behave as expected (marked ✘ above)", d.unexpected)
	}
	fmt.Printf("\n%sDone.%s %s\n", green, reset, sc.done)
	return nil
}

// logLines is how much of each atfd's log printLogs shows.
const logLines = 30

// printLogs shows the end of each atfd's log, on failure, before the
// stack's directory (which holds them) is removed.
func (d *demo) printLogs() {
	for _, a := range d.atfds {
		b, _ := os.ReadFile(a.log)
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		fmt.Fprintf(os.Stderr, "\n%slast lines of %s's log:%s\n%s", bold, a.name, reset, indent(strings.Join(lines[max(0, len(lines)-logLines):], "\n")))
	}
}

// close stops the agent, atfd and the stack, whichever the demo got to
// start.
func (d *demo) close() {
	if d.ha.agent != nil {
		d.ha.agent.Close()
	}
	d.oauth.stopTools()
	if d.console.op != nil {
		_ = d.console.op.Close()
	}
	for _, a := range d.atfds {
		a.stop()
	}
	if d.stack != nil {
		fmt.Printf("\n%sCleaning up:%s stopping atfd, SPIRE and Vault, removing %s\n", bold, reset, d.stack.Dir)
		d.stack.Close()
	}
}

func (d *demo) startStack(ctx context.Context) error {
	if err := d.startDev(ctx); err != nil {
		return err
	}
	var err error
	d.pg, err = d.stack.StartPostgres(ctx)
	return err
}

// startDev starts SPIRE and Vault and names the cast.
func (d *demo) startDev(ctx context.Context) error {
	fmt.Println("   (loopback only, in a temporary directory; `make dev-tools` built them once)")
	stack, err := dev.Start(ctx, dev.Options{Logger: slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey || a.Key == slog.LevelKey {
				return slog.Attr{}
			}
			return a
		},
	}))})
	if err != nil {
		return err
	}
	d.stack = stack
	if d.bin == "" {
		d.bin = stack.BinDir
	}
	id := func(path string) spiffeid.ID { return spiffeid.RequireFromPath(stack.TrustDomain, path) }
	d.reporter, d.writer, d.helper, d.stranger, d.drafter = id("/agents/reporter"), id("/agents/writer"), id("/agents/helper"), id("/agents/stranger"), id("/agents/drafter")
	d.alice, d.bob = id("/ops/alice"), id("/ops/bob")
	return nil
}

func (d *demo) registerWorkloads(ctx context.Context) error {
	fmt.Println("   atfd and the reporter agent get their SVIDs from the SPIRE agent's Workload API,")
	fmt.Println("   attested by their binary path; the admin, the writer and a stranger use SVIDs minted by SPIRE.")
	if err := d.registerAtfd(ctx); err != nil {
		return err
	}
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	if err := d.stack.RegisterWorkload(ctx, d.reporter, uid, "unix:path:"+filepath.Join(d.bin, "atfctl")); err != nil {
		return err
	}
	return d.mint(ctx, d.alice, d.bob, d.writer, d.helper, d.drafter, d.stranger)
}

// registerAtfd registers atfd's binary as the broker's workload.
func (d *demo) registerAtfd(ctx context.Context) error {
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	return d.stack.RegisterWorkload(ctx, d.stack.BrokerID, uid, "unix:path:"+filepath.Join(d.bin, "atfd"))
}

// mint gets SPIRE-signed SVID files for each of who.
func (d *demo) mint(ctx context.Context, who ...spiffeid.ID) error {
	if d.files == nil {
		d.files = map[spiffeid.ID]dev.SVIDFiles{}
	}
	for _, id := range who {
		f, err := d.stack.MintX509(ctx, id, time.Hour)
		if err != nil {
			return err
		}
		d.files[id] = f
	}
	return nil
}

// as returns the atfctl flags that present who's minted SVID.
func (d *demo) as(who spiffeid.ID) []string {
	f := d.files[who]
	return []string{"--svid", f.CertPath, "--svid-key", f.KeyPath, "--bundle", f.BundlePath}
}

func (d *demo) startBroker(ctx context.Context) error {
	oauth, err := d.oauthConfig()
	if err != nil {
		return err
	}
	cfg, err := d.writeConfig(atfdConfig{name: "atfd", addr: brokerAddr, format: "text",
		store: "store_path: " + filepath.Join(d.stack.Dir, "atf.db"), oauth: oauth + d.console.yaml})
	if err != nil {
		return err
	}
	fmt.Printf("%s%s%s", dim, indent(cfg.text), reset)
	a, err := d.startAtfd(ctx, cfg)
	if err != nil {
		return err
	}
	d.env = append(os.Environ(),
		"SPIFFE_ENDPOINT_SOCKET="+d.stack.WorkloadAPIAddr,
		"ATF_BROKER_ADDR="+brokerAddr,
		"VAULT_ADDR="+d.stack.VaultAddr,
	)
	fmt.Printf("   atfd is serving on %s as %s (log: %s)\n", a.addr, d.stack.BrokerID, a.log)
	return nil
}

func (d *demo) registerAgents(ctx context.Context) error {
	d.atfctl(ctx, true, append(d.as(d.alice), "agent", "register", d.reporter.String(),
		"--owner", "alice@example.org", "--purpose", "summarise the quarterly reports", "--role", "reports-read", "--role", "reports-write", "--role", "orders-db")...)
	d.atfctl(ctx, true, append(d.as(d.alice), "agent", "register", d.writer.String(),
		"--owner", "bob@example.org", "--purpose", "publish report updates", "--role", "reports-read", "--role", "reports-write")...)
	d.atfctl(ctx, true, append(d.as(d.alice), "agent", "register", d.helper.String(),
		"--owner", "bob@example.org", "--purpose", "proof-read reports for the writer", "--role", "reports-read")...)
	d.place(ctx, d.writer.String(), "senior")
	d.place(ctx, d.helper.String(), "junior")
	d.atfctl(ctx, true, append(d.as(d.alice), "agent", "list")...)
	return nil
}

// place raises a new agent (an intern) that earned level elsewhere: alice
// signs the placement off with her own SVID and migrates it.
func (d *demo) place(ctx context.Context, id, level string) {
	d.atfctl(ctx, true, append(d.as(d.alice), "signoff", "add", id, "--target", level, "--risk", "ran as "+level+" on the old broker")...)
	d.atfctl(ctx, true, append(d.as(d.alice), "agent", "migrate", id, "--level", level, "--reason", "migrated from the old broker")...)
}

func (d *demo) reporterWhoAmI(ctx context.Context) error {
	d.atfctl(ctx, true, "whoami")
	return nil
}

func (d *demo) reporterFetches(ctx context.Context) error {
	var err error
	if d.token, err = d.atfctlOut(ctx, "creds", "fetch", "--role", "reports-read", "--token-only"); err != nil {
		return err
	}
	d.atfctl(ctx, true, "creds", "fetch", "--role", "reports-read", "--ttl", "5m")
	return nil
}

func (d *demo) reporterUsesToken(ctx context.Context) error {
	d.vault(ctx, d.token, true, "kv", "get", "secret/demo/reports")
	d.vault(ctx, d.token, false, "kv", "get", "secret/demo/payroll")
	return nil
}

func (d *demo) reporterDatabase(ctx context.Context) error {
	out := filepath.Join(d.stack.Dir, "reporter-db")
	d.atfctl(ctx, true, "exec", "--role", "orders-db", "--", "sh", "-c",
		`echo "PostgreSQL user $ATF_SECRET_USERNAME, Vault lease $ATF_LEASE_ID"; echo "$ATF_SECRET_USERNAME $ATF_SECRET_PASSWORD" > `+out)
	b, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	if f := strings.Fields(string(b)); len(f) == 2 {
		d.dbUser = [2]string{f[0], f[1]}
	}
	d.dbLogin(ctx, true)
	return nil
}

// dbLogin logs in to the orders database as the reporter's user; a login
// that should fail is retried for a while, since Vault drops the user in
// the background.
func (d *demo) dbLogin(ctx context.Context, wantOK bool) {
	fmt.Printf("   %s$ psql -U %s orders -c 'SELECT count(*) FROM orders'%s\n", bold, d.dbUser[0], reset)
	err := d.pg.Login(ctx, d.dbUser[0], d.dbUser[1])
	for deadline := time.Now().Add(30 * time.Second); err == nil && !wantOK && time.Now().Before(deadline); err = d.pg.Login(ctx, d.dbUser[0], d.dbUser[1]) {
		time.Sleep(200 * time.Millisecond)
	}
	switch {
	case err == nil && wantOK:
		d.check(true, "logged in, as expected")
	case err != nil && !wantOK:
		fmt.Print(indent(err.Error()))
		d.check(true, "refused, as expected")
	default:
		d.check(false, "unexpected outcome (%v)", err)
	}
}

func (d *demo) internRefusedWrite(ctx context.Context) error {
	d.atfctl(ctx, false, "creds", "fetch", "--role", "reports-write")
	return nil
}

func (d *demo) strangerRefused(ctx context.Context) error {
	d.atfctl(ctx, true, append(d.as(d.stranger), "whoami")...)
	d.atfctl(ctx, false, append(d.as(d.stranger), "creds", "fetch", "--role", "reports-read")...)
	return nil
}

func (d *demo) nonAdminRefused(ctx context.Context) error {
	d.atfctl(ctx, false, append(d.as(d.writer), "agent", "list")...)
	return nil
}

func (d *demo) delegate(ctx context.Context) error {
	var err error
	if d.wtoken, err = d.atfctlOut(ctx, append(d.as(d.writer), "creds", "fetch", "--role", "reports-write", "--token-only")...); err != nil {
		return err
	}
	d.vault(ctx, d.wtoken, true, "kv", "put", "secret/demo/reports", "summary=Q3 revenue up 13% (restated)")
	grant, err := d.atfctlOut(ctx, append(d.as(d.writer), "delegate", "--to", d.helper.String(), "--role", "reports-read", "--ttl", "10m", "-o", "json")...)
	if err != nil {
		return err
	}
	grantID := jsonField(grant, "id")
	fmt.Print(indent(grant))
	d.atfctl(ctx, false, append(d.as(d.writer), "delegate", "--to", d.helper.String(), "--role", "payroll-read")...)
	if d.htoken, err = d.atfctlOut(ctx, append(d.as(d.helper), "creds", "fetch", "--role", "reports-read", "--grant", grantID, "--token-only")...); err != nil {
		return err
	}
	d.atfctl(ctx, true, append(d.as(d.helper), "creds", "fetch", "--role", "reports-read", "--grant", grantID)...)
	d.vault(ctx, d.htoken, true, "kv", "get", "-field=summary", "secret/demo/reports")
	d.atfctl(ctx, true, append(d.as(d.alice), "lineage", "show", d.writer.String())...)
	return nil
}

func (d *demo) approve(ctx context.Context) error {
	approvalID, err := d.drafterWaits(ctx, "carol@example.org")
	if err != nil {
		return err
	}
	d.atfctl(ctx, false, append(d.as(d.drafter), "approvals", "approve", approvalID, "--reason", "approving myself")...)
	d.atfctl(ctx, true, append(d.as(d.bob), "approvals", "approve", approvalID, "--reason", "typo fix, ticket REP-7")...)
	d.atfctl(ctx, true, append(d.as(d.drafter), "creds", "fetch", "--role", "reports-write", "--approval", approvalID)...)
	d.atfctl(ctx, false, append(d.as(d.drafter), "creds", "fetch", "--role", "reports-write", "--approval", approvalID)...)
	return nil
}

func (d *demo) explain(ctx context.Context) error {
	payrollBot := spiffeid.RequireFromPath(d.stack.TrustDomain, "/agents/finance/payroll-bot")
	d.atfctl(ctx, true, append(d.as(d.alice), "policy", "test", payrollBot.String(), "--role", "payroll-read", "--level", "junior")...)
	d.atfctl(ctx, true, append(d.as(d.alice), "policy", "test", d.drafter.String(), "--role", "reports-write")...)
	d.atfctl(ctx, true, append(d.as(d.alice), "audit", "query", "--decision", "deny")...)
	d.atfctl(ctx, true, append(d.as(d.alice), "audit", "verify")...)
	return nil
}

func (d *demo) refuseBadPolicy(ctx context.Context) error {
	bad := filepath.Join(d.stack.Dir, "bad-policy.csv")
	if err := os.WriteFile(bad, []byte("p, group:reporting, reports/*/write, write, junior, allow\n"), 0o600); err != nil {
		return err
	}
	d.atfctl(ctx, false, append(d.as(d.alice), "policy", "set", "--policy", bad, "--comment", "let reporting write everywhere")...)
	d.atfctl(ctx, true, append(d.as(d.alice), "policy", "list")...)
	return nil
}

func (d *demo) killSwitch(ctx context.Context) error {
	d.atfctl(ctx, true, append(d.as(d.alice), "kill", d.reporter.String(), "--reason", "drill: suspected prompt injection")...)
	d.vault(ctx, d.token, false, "kv", "get", "secret/demo/reports")
	d.dbLogin(ctx, false)
	d.atfctl(ctx, false, "creds", "fetch", "--role", "reports-read")
	d.atfctl(ctx, false, append(d.as(d.alice), "unkill", d.reporter.String(), "--reason", "drill over")...)
	d.atfctl(ctx, true, append(d.as(d.bob), "unkill", d.reporter.String(), "--reason", "drill over")...)
	d.atfctl(ctx, true, "creds", "fetch", "--role", "reports-read", "--ttl", "5m")
	return nil
}

func (d *demo) deregister(ctx context.Context) error {
	d.atfctl(ctx, true, append(d.as(d.alice), "agent", "deregister", d.writer.String(), "--reason", "replaced by v2")...)
	d.vault(ctx, d.wtoken, false, "kv", "get", "secret/demo/reports")
	d.vault(ctx, d.htoken, false, "kv", "get", "secret/demo/reports")
	d.atfctl(ctx, false, append(d.as(d.writer), "creds", "fetch", "--role", "reports-write")...)
	d.atfctl(ctx, true, append(d.as(d.alice), "agent", "history", d.writer.String())...)
	return nil
}

const brokerAddr = "127.0.0.1:18443"

// firstApprovalID picks the newest request from `approvals list -o json`.
// drafterWaits registers the drafter (a Junior that may write reports,
// owned by owner) and has it ask to write: its request waits for a human;
// it returns the request's approval id, as bob lists it.
func (d *demo) drafterWaits(ctx context.Context, owner string) (string, error) {
	d.atfctl(ctx, true, append(d.as(d.alice), "agent", "register", d.drafter.String(),
		"--owner", owner, "--purpose", "draft report corrections", "--role", "reports-write")...)
	d.place(ctx, d.drafter.String(), "junior")
	d.atfctl(ctx, false, append(d.as(d.drafter), "creds", "fetch", "--role", "reports-write", "--justification", "fix the Q3 typo")...)
	d.atfctl(ctx, true, append(d.as(d.bob), "approvals", "list")...)
	list, err := d.atfctlOut(ctx, append(d.as(d.bob), "approvals", "list", "-o", "json")...)
	if err != nil {
		return "", err
	}
	return firstApprovalID(list), nil
}

func firstApprovalID(list string) string {
	var out struct {
		Approvals []struct {
			ID string `json:"id"`
		} `json:"approvals"`
	}
	if json.Unmarshal([]byte(list), &out) != nil || len(out.Approvals) == 0 {
		return "none"
	}
	return out.Approvals[0].ID
}

// atfdConfig is what sets one atfd's configuration apart.
type atfdConfig struct {
	name   string // "atfd", or the replica's name
	addr   string // listen_addr
	store  string // the YAML of store_path, or of store.etcd
	format string // log_format
	// oauth is the YAML of the oauth section (oauth.go), which also adds
	// the tool server's role and policy; "" leaves OAuth off.
	oauth string
	// path and text are the written file and its contents.
	path, text string
}

// writeConfig writes atfd's configuration for c into the stack dir, with
// the roles file and policy (the shipped example, in the stack's trust
// domain) every atfd of the demo shares.
func (d *demo) writeConfig(c atfdConfig) (atfdConfig, error) {
	dir := d.stack.Dir
	roles := filepath.Join(dir, "roles.yaml")
	rolesText := string(rolesYAML)
	if c.oauth != "" {
		rolesText += d.oauthRole()
	}
	if err := os.WriteFile(roles, []byte(rolesText), 0o600); err != nil {
		return c, err
	}
	model, pol := filepath.Join(dir, "model.conf"), filepath.Join(dir, "policy.csv")
	if err := os.WriteFile(model, []byte(policy.Model), 0o600); err != nil {
		return c, err
	}
	example := strings.ReplaceAll(policy.Example, "spiffe://example.org/", d.stack.TrustDomain.IDString()+"/") +
		"\n# The demo's database role: a PostgreSQL user of its own, from Intern.\np, group:reporting, orders-db, read, intern, allow\n"
	if c.oauth != "" {
		example += d.oauthPolicy()
	}
	if err := os.WriteFile(pol, []byte(example), 0o600); err != nil {
		return c, err
	}
	c.text = fmt.Sprintf(`# atfd configuration for the demo (see docs/operations.md, configuration reference)
listen_addr: %s
spiffe:
  workload_api_addr: %s
trust_domains: [%s]
admins: [%s]
%s
roles_file: %s
policy:                  # seeds the store; later changes go through atfctl policy
  model_file: %s
  policy_file: %s
approvals:
  approvers: [%s]
security_operators: [%s]     # may release the kill switch
audit:
  file: %s               # the hash-chained trail, also as JSON lines
vault:
  address: %s
  auth:
    method: jwt          # atfd logs in to Vault with its own JWT-SVID
    role: atf-broker
    audience: vault
log_format: %s
%s
`, c.addr, d.stack.WorkloadAPIAddr, d.stack.TrustDomain.Name(), d.alice, c.store, roles,
		model, pol, d.bob, d.bob, filepath.Join(dir, c.name+"-audit.jsonl"), d.stack.VaultAddr, c.format, c.oauth)
	c.path = filepath.Join(dir, c.name+".yaml")
	return c, os.WriteFile(c.path, []byte(c.text), 0o600)
}

// atfd is one atfd process of the demo.
type atfd struct {
	name, addr, log string
	cmd             *exec.Cmd
	done            chan struct{} // closed once it exited and was reaped
	err             error         // how it exited, once done is closed
}

// startAtfd starts atfd on c, logging to <name>.log in the stack dir, and
// returns once it answers the admin.
func (d *demo) startAtfd(ctx context.Context, c atfdConfig) (*atfd, error) {
	a := &atfd{name: c.name, addr: c.addr, log: filepath.Join(d.stack.Dir, c.name+".log"), done: make(chan struct{})}
	logf, err := os.Create(a.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	a.cmd = exec.Command(filepath.Join(d.bin, "atfd"), "-config", c.path)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	a.cmd.Env = os.Environ()
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start atfd: %w", err)
	}
	d.atfds = append(d.atfds, a)
	go func() {
		a.err = a.cmd.Wait()
		close(a.done)
	}()
	return a, d.waitReady(ctx, a)
}

// atfdStopGrace is how long atfd has to stop after SIGTERM before it is
// killed: its graceful stop waits up to 5 s for open streams.
const atfdStopGrace = 15 * time.Second

// stop stops a with SIGTERM (SIGKILL after atfdStopGrace) unless it
// already exited, and reports how it exited.
func (a *atfd) stop() error {
	select {
	case <-a.done:
		return a.err
	default:
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(atfdStopGrace):
		a.cmd.Process.Kill()
		<-a.done
	}
	return a.err
}

// waitReady polls whoami, as the admin, until a answers.
func (d *demo) waitReady(ctx context.Context, a *atfd) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		cmd := exec.CommandContext(ctx, filepath.Join(d.bin, "atfctl"), append(d.as(d.alice), "--addr", a.addr, "whoami")...)
		out, err := cmd.CombinedOutput()
		if err == nil {
			return nil
		}
		select {
		case <-a.done:
			return fmt.Errorf("%s exited before it was ready (%v)", a.name, a.err)
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s did not become ready: %s\n%s", a.name, err, out)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// atfctl runs atfctl, prints the command and its output, and says whether
// the outcome is the one expected.
func (d *demo) atfctl(ctx context.Context, wantOK bool, args ...string) {
	d.show(ctx, wantOK, nil, "atfctl", args...)
}

func (d *demo) atfctlOut(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(d.bin, "atfctl"), args...)
	cmd.Env = d.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("atfctl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

func (d *demo) vault(ctx context.Context, token string, wantOK bool, args ...string) {
	d.show(ctx, wantOK, []string{"VAULT_TOKEN=" + token}, "vault", args...)
}

func (d *demo) show(ctx context.Context, wantOK bool, extraEnv []string, tool string, args ...string) {
	fmt.Printf("   %s$ %s %s%s\n", bold, tool, shorten(args), reset)
	dir := d.bin
	if tool == "vault" {
		dir = d.stack.BinDir
	}
	cmd := exec.CommandContext(ctx, filepath.Join(dir, tool), args...)
	cmd.Env = append(append([]string{}, d.env...), extraEnv...)
	out, err := cmd.CombinedOutput()
	fmt.Print(indent(string(out)))
	var exitErr *exec.ExitError
	switch {
	case err == nil && wantOK:
		d.check(true, "allowed, as expected")
	case errors.As(err, &exitErr) && !wantOK:
		d.check(true, "refused, as expected")
	default:
		d.check(false, "unexpected outcome (%v)", err)
	}
}

// check prints whether something the demo expects held, and counts it
// if not: the demo fails at the end.
func (d *demo) check(ok bool, format string, args ...any) {
	if ok {
		fmt.Printf("     %s✔ %s%s\n", green, fmt.Sprintf(format, args...), reset)
		return
	}
	d.unexpected++
	fmt.Printf("     %s✘ %s%s\n", red, fmt.Sprintf(format, args...), reset)
}

// jsonField returns a string field of the object atfctl's JSON output
// wraps, e.g. "id" of {"grant": {...}}.
func jsonField(out, field string) string {
	var v map[string]map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return ""
	}
	for _, inner := range v {
		if s, ok := inner[field].(string); ok {
			return s
		}
	}
	return ""
}

// shorten hides SVID file paths, which are long and all alike.
func shorten(args []string) string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == "--svid" && i+5 < len(args) {
			out = append(out, "--svid "+filepath.Base(args[i+1])+" ...")
			i += 5
			continue
		}
		a := args[i]
		if strings.ContainsAny(a, " ") {
			a = "'" + a + "'"
		}
		out = append(out, a)
	}
	return strings.Join(out, " ")
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "     " + strings.ReplaceAll(s, "\n", "\n     ") + "\n"
}
