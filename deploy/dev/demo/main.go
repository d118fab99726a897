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
// a deregistration killing the agent's tokens and everything it delegated.
// Everything runs in a temporary directory that is removed at the end, also
// on Ctrl-C.
package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
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
	bin        string
	env        []string // for atfctl and vault
	atfd       *exec.Cmd
	atfLog     string
	unexpected int // steps whose outcome was not the expected one

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
}

// steps is the demo's script, in order.
var steps = []struct {
	title string
	run   func(*demo, context.Context) error
}{
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

func run(ctx context.Context) error {
	d := &demo{}
	defer d.close()
	for i, s := range steps {
		fmt.Printf("\n%s%d. %s%s\n", bold, i+1, s.title, reset)
		if err := s.run(d, ctx); err != nil {
			return err
		}
	}
	if d.unexpected > 0 {
		return fmt.Errorf("%d step(s) did not behave as expected; atfd's log is %s", d.unexpected, d.atfLog)
	}
	fmt.Printf("\n%sDone.%s Every step above went through real SPIRE SVIDs, a real Vault and atfd.\n", green, reset)
	return nil
}

// close stops atfd and the stack, whichever the demo got to start.
func (d *demo) close() {
	if d.atfd != nil {
		d.atfd.Process.Signal(syscall.SIGTERM)
		d.atfd.Wait()
	}
	if d.stack != nil {
		fmt.Printf("\n%sCleaning up:%s stopping atfd, SPIRE and Vault, removing %s\n", bold, reset, d.stack.Dir)
		d.stack.Close()
	}
}

func (d *demo) startStack(ctx context.Context) error {
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
	d.stack, d.bin = stack, stack.BinDir
	if d.pg, err = stack.StartPostgres(ctx); err != nil {
		return err
	}
	id := func(path string) spiffeid.ID { return spiffeid.RequireFromPath(stack.TrustDomain, path) }
	d.reporter, d.writer, d.helper, d.stranger, d.drafter = id("/agents/reporter"), id("/agents/writer"), id("/agents/helper"), id("/agents/stranger"), id("/agents/drafter")
	d.alice, d.bob = id("/ops/alice"), id("/ops/bob")
	return nil
}

func (d *demo) registerWorkloads(ctx context.Context) error {
	fmt.Println("   atfd and the reporter agent get their SVIDs from the SPIRE agent's Workload API,")
	fmt.Println("   attested by their binary path; the admin, the writer and a stranger use SVIDs minted by SPIRE.")
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	if err := d.stack.RegisterWorkload(ctx, d.stack.BrokerID, uid, "unix:path:"+filepath.Join(d.bin, "atfd")); err != nil {
		return err
	}
	if err := d.stack.RegisterWorkload(ctx, d.reporter, uid, "unix:path:"+filepath.Join(d.bin, "atfctl")); err != nil {
		return err
	}
	d.files = map[spiffeid.ID]dev.SVIDFiles{}
	for _, who := range []spiffeid.ID{d.alice, d.bob, d.writer, d.helper, d.drafter, d.stranger} {
		f, err := d.stack.MintX509(ctx, who, time.Hour)
		if err != nil {
			return err
		}
		d.files[who] = f
	}
	return nil
}

// as returns the atfctl flags that present who's minted SVID.
func (d *demo) as(who spiffeid.ID) []string {
	f := d.files[who]
	return []string{"--svid", f.CertPath, "--svid-key", f.KeyPath, "--bundle", f.BundlePath}
}

func (d *demo) startBroker(ctx context.Context) error {
	cfgPath, err := d.writeConfig(d.alice, d.bob)
	if err != nil {
		return err
	}
	if d.atfd, err = d.startAtfd(ctx, cfgPath); err != nil {
		return err
	}
	d.env = append(os.Environ(),
		"SPIFFE_ENDPOINT_SOCKET="+d.stack.WorkloadAPIAddr,
		"ATF_BROKER_ADDR="+brokerAddr,
		"VAULT_ADDR="+d.stack.VaultAddr,
	)
	if err := d.waitReady(ctx, d.as(d.alice)); err != nil {
		return err
	}
	fmt.Printf("   atfd is serving on %s as %s (log: %s)\n", brokerAddr, d.stack.BrokerID, d.atfLog)
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
		fmt.Printf("     %s✔ logged in, as expected%s\n", green, reset)
	case err != nil && !wantOK:
		fmt.Printf("%s     %s✔ refused, as expected%s\n", indent(err.Error()+"\n"), green, reset)
	default:
		d.unexpected++
		fmt.Printf("     %s✘ unexpected outcome (%v)%s\n", red, err, reset)
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
	d.atfctl(ctx, true, append(d.as(d.alice), "agent", "register", d.drafter.String(),
		"--owner", "carol@example.org", "--purpose", "draft report corrections", "--role", "reports-write")...)
	d.place(ctx, d.drafter.String(), "junior")
	d.atfctl(ctx, false, append(d.as(d.drafter), "creds", "fetch", "--role", "reports-write", "--justification", "fix the Q3 typo")...)
	d.atfctl(ctx, true, append(d.as(d.bob), "approvals", "list")...)
	list, err := d.atfctlOut(ctx, append(d.as(d.bob), "approvals", "list", "-o", "json")...)
	if err != nil {
		return err
	}
	approvalID := firstApprovalID(list)
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

// writeConfig writes atfd's configuration, roles file and policy (the
// shipped example, in the stack's trust domain) into the stack dir.
func (d *demo) writeConfig(admin, approver spiffeid.ID) (string, error) {
	dir := d.stack.Dir
	roles := filepath.Join(dir, "roles.yaml")
	if err := os.WriteFile(roles, rolesYAML, 0o600); err != nil {
		return "", err
	}
	model, pol := filepath.Join(dir, "model.conf"), filepath.Join(dir, "policy.csv")
	if err := os.WriteFile(model, []byte(policy.Model), 0o600); err != nil {
		return "", err
	}
	example := strings.ReplaceAll(policy.Example, "spiffe://example.org/", d.stack.TrustDomain.IDString()+"/") +
		"\n# The demo's database role: a PostgreSQL user of its own, from Intern.\np, group:reporting, orders-db, read, intern, allow\n"
	if err := os.WriteFile(pol, []byte(example), 0o600); err != nil {
		return "", err
	}
	cfg := fmt.Sprintf(`# atfd configuration for the demo (see docs/operations.md, configuration reference)
listen_addr: %s
spiffe:
  workload_api_addr: %s
trust_domains: [%s]
admins: [%s]
store_path: %s
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
log_format: text
`, brokerAddr, d.stack.WorkloadAPIAddr, d.stack.TrustDomain.Name(), admin, filepath.Join(dir, "atf.db"), roles,
		model, pol, approver, approver, filepath.Join(dir, "audit.jsonl"), d.stack.VaultAddr)
	path := filepath.Join(dir, "atfd.yaml")
	fmt.Printf("%s%s%s", dim, indent(cfg), reset)
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

func (d *demo) startAtfd(ctx context.Context, cfgPath string) (*exec.Cmd, error) {
	d.atfLog = filepath.Join(d.stack.Dir, "atfd.log")
	logf, err := os.Create(d.atfLog)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(d.bin, "atfd"), "-config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = os.Environ()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start atfd: %w", err)
	}
	return cmd, nil
}

// waitReady polls whoami until atfd answers.
func (d *demo) waitReady(ctx context.Context, flags []string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		cmd := exec.CommandContext(ctx, filepath.Join(d.bin, "atfctl"), append(flags, "whoami")...)
		cmd.Env = d.env
		out, err := cmd.CombinedOutput()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			log, _ := os.ReadFile(d.atfLog)
			return fmt.Errorf("atfd did not become ready: %s\n%s\natfd log:\n%s", err, out, log)
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
	cmd := exec.CommandContext(ctx, filepath.Join(d.bin, tool), args...)
	cmd.Env = append(append([]string{}, d.env...), extraEnv...)
	out, err := cmd.CombinedOutput()
	fmt.Print(indent(string(out)))
	var exitErr *exec.ExitError
	switch {
	case err == nil && wantOK, errors.As(err, &exitErr) && !wantOK:
		verdict := "allowed, as expected"
		if !wantOK {
			verdict = "refused, as expected"
		}
		fmt.Printf("     %s✔ %s%s\n", green, verdict, reset)
	default:
		d.unexpected++
		fmt.Printf("     %s✘ unexpected outcome (%v)%s\n", red, err, reset)
	}
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
