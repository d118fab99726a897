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
	atfLog     string
	unexpected int // steps whose outcome was not the expected one
}

func run(ctx context.Context) error {
	step := 0
	title := func(s string) { step++; fmt.Printf("\n%s%d. %s%s\n", bold, step, s, reset) }

	title("Start a local SPIRE server + agent and a Vault dev server")
	fmt.Println("   (loopback only, in a temporary directory; the first run of `make tools` built them)")
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
	defer func() {
		fmt.Printf("\n%sCleaning up:%s stopping atfd, SPIRE and Vault, removing %s\n", bold, reset, stack.Dir)
		stack.Close()
	}()
	d := &demo{stack: stack, bin: stack.BinDir}
	td := stack.TrustDomain
	id := func(path string) spiffeid.ID { return spiffeid.RequireFromPath(td, path) }
	reporter, writer, helper, stranger, alice := id("/agents/reporter"), id("/agents/writer"), id("/agents/helper"), id("/agents/stranger"), id("/ops/alice")
	drafter, bob := id("/agents/drafter"), id("/ops/bob")

	title("Register workloads with SPIRE")
	fmt.Println("   atfd and the reporter agent get their SVIDs from the SPIRE agent's Workload API,")
	fmt.Println("   attested by their binary path; the admin, the writer and a stranger use SVIDs minted by SPIRE.")
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	if err := stack.RegisterWorkload(ctx, stack.BrokerID, uid, "unix:path:"+filepath.Join(d.bin, "atfd")); err != nil {
		return err
	}
	if err := stack.RegisterWorkload(ctx, reporter, uid, "unix:path:"+filepath.Join(d.bin, "atfctl")); err != nil {
		return err
	}
	files := map[spiffeid.ID]dev.SVIDFiles{}
	for _, who := range []spiffeid.ID{alice, bob, writer, helper, drafter, stranger} {
		f, err := stack.MintX509(ctx, who, time.Hour)
		if err != nil {
			return err
		}
		files[who] = f
	}
	svidFlags := func(who spiffeid.ID) []string {
		f := files[who]
		return []string{"--svid", f.CertPath, "--svid-key", f.KeyPath, "--bundle", f.BundlePath}
	}

	title("Start atfd")
	cfgPath, err := d.writeConfig(alice, bob)
	if err != nil {
		return err
	}
	atfd, err := d.startAtfd(ctx, cfgPath)
	if err != nil {
		return err
	}
	defer func() {
		atfd.Process.Signal(syscall.SIGTERM)
		atfd.Wait()
	}()
	d.env = append(os.Environ(),
		"SPIFFE_ENDPOINT_SOCKET="+stack.WorkloadAPIAddr,
		"ATF_BROKER_ADDR="+brokerAddr,
		"VAULT_ADDR="+stack.VaultAddr,
	)
	if err := d.waitReady(ctx, svidFlags(alice)); err != nil {
		return err
	}
	fmt.Printf("   atfd is serving on %s as %s (log: %s)\n", brokerAddr, stack.BrokerID, d.atfLog)

	title("The platform team (alice, an admin) registers three agents")
	d.atfctl(ctx, true, append(svidFlags(alice), "agent", "register", reporter.String(),
		"--owner", "alice@example.org", "--purpose", "summarise the quarterly reports", "--role", "reports-read", "--role", "reports-write")...)
	d.atfctl(ctx, true, append(svidFlags(alice), "agent", "register", writer.String(),
		"--owner", "bob@example.org", "--purpose", "publish report updates", "--role", "reports-read", "--role", "reports-write", "--level", "senior")...)
	d.atfctl(ctx, true, append(svidFlags(alice), "agent", "register", helper.String(),
		"--owner", "bob@example.org", "--purpose", "proof-read reports for the writer", "--role", "reports-read", "--level", "junior")...)
	d.atfctl(ctx, true, append(svidFlags(alice), "agent", "list")...)

	title("The reporter agent asks who it is (SVID from the Workload API, no files)")
	d.atfctl(ctx, true, "whoami")

	title("The reporter fetches a short-lived Vault token for reports-read")
	token, err := d.atfctlOut(ctx, "creds", "fetch", "--role", "reports-read", "--token-only")
	if err != nil {
		return err
	}
	d.atfctl(ctx, true, "creds", "fetch", "--role", "reports-read", "--ttl", "5m")

	title("The reporter uses the token: its role's path is readable, anything else is denied")
	d.vault(ctx, token, true, "kv", "get", "secret/demo/reports")
	d.vault(ctx, token, false, "kv", "get", "secret/demo/payroll")

	title("The reporter is an Intern: a write role is refused, whatever its manifest says")
	d.atfctl(ctx, false, "creds", "fetch", "--role", "reports-write")

	title("An unregistered workload has a valid SVID but gets nothing")
	d.atfctl(ctx, true, append(svidFlags(stranger), "whoami")...)
	d.atfctl(ctx, false, append(svidFlags(stranger), "creds", "fetch", "--role", "reports-read")...)

	title("A non-admin cannot touch the registry")
	d.atfctl(ctx, false, append(svidFlags(writer), "agent", "list")...)

	title("The writer (Senior) gets a write token and delegates read access to a helper agent")
	wtoken, err := d.atfctlOut(ctx, append(svidFlags(writer), "creds", "fetch", "--role", "reports-write", "--token-only")...)
	if err != nil {
		return err
	}
	d.vault(ctx, wtoken, true, "kv", "put", "secret/demo/reports", "summary=Q3 revenue up 13% (restated)")
	grant, err := d.atfctlOut(ctx, append(svidFlags(writer), "delegate", "--to", helper.String(), "--role", "reports-read", "--ttl", "10m", "-o", "json")...)
	if err != nil {
		return err
	}
	grantID := jsonField(grant, "id")
	fmt.Print(indent(grant))
	d.atfctl(ctx, false, append(svidFlags(writer), "delegate", "--to", helper.String(), "--role", "payroll-read")...)
	htoken, err := d.atfctlOut(ctx, append(svidFlags(helper), "creds", "fetch", "--role", "reports-read", "--grant", grantID, "--token-only")...)
	if err != nil {
		return err
	}
	d.atfctl(ctx, true, append(svidFlags(helper), "creds", "fetch", "--role", "reports-read", "--grant", grantID)...)
	d.vault(ctx, htoken, true, "kv", "get", "-field=summary", "secret/demo/reports")
	d.atfctl(ctx, true, append(svidFlags(alice), "lineage", "show", writer.String())...)

	title("A Junior agent's write waits for a human: bob (an approver) approves it, the agent redeems it once")
	d.atfctl(ctx, true, append(svidFlags(alice), "agent", "register", drafter.String(),
		"--owner", "carol@example.org", "--purpose", "draft report corrections", "--role", "reports-write", "--level", "junior")...)
	d.atfctl(ctx, false, append(svidFlags(drafter), "creds", "fetch", "--role", "reports-write", "--justification", "fix the Q3 typo")...)
	d.atfctl(ctx, true, append(svidFlags(bob), "approvals", "list")...)
	list, err := d.atfctlOut(ctx, append(svidFlags(bob), "approvals", "list", "-o", "json")...)
	if err != nil {
		return err
	}
	approvalID := firstApprovalID(list)
	d.atfctl(ctx, false, append(svidFlags(drafter), "approvals", "approve", approvalID, "--reason", "approving myself")...)
	d.atfctl(ctx, true, append(svidFlags(bob), "approvals", "approve", approvalID, "--reason", "typo fix, ticket REP-7")...)
	d.atfctl(ctx, true, append(svidFlags(drafter), "creds", "fetch", "--role", "reports-write", "--approval", approvalID)...)
	d.atfctl(ctx, false, append(svidFlags(drafter), "creds", "fetch", "--role", "reports-write", "--approval", approvalID)...)

	title("Segmentation is explainable: dry-run a request, query the decisions, verify the audit chain")
	d.atfctl(ctx, true, append(svidFlags(alice), "policy", "test", id("/agents/finance/payroll-bot").String(), "--role", "payroll-read", "--level", "junior")...)
	d.atfctl(ctx, true, append(svidFlags(alice), "policy", "test", drafter.String(), "--role", "reports-write")...)
	d.atfctl(ctx, true, append(svidFlags(alice), "audit", "query", "--decision", "deny")...)
	d.atfctl(ctx, true, append(svidFlags(alice), "audit", "verify")...)

	title("A policy with a pattern that matches more than it seems is refused; the current one keeps serving")
	bad := filepath.Join(stack.Dir, "bad-policy.csv")
	if err := os.WriteFile(bad, []byte("p, group:reporting, reports/*/write, write, junior, allow\n"), 0o600); err != nil {
		return err
	}
	d.atfctl(ctx, false, append(svidFlags(alice), "policy", "set", "--policy", bad, "--comment", "let reporting write everywhere")...)
	d.atfctl(ctx, true, append(svidFlags(alice), "policy", "list")...)

	title("The kill switch: alice stops the reporter at once; only a security operator (bob) can release it")
	d.atfctl(ctx, true, append(svidFlags(alice), "kill", reporter.String(), "--reason", "drill: suspected prompt injection")...)
	d.vault(ctx, token, false, "kv", "get", "secret/demo/reports")
	d.atfctl(ctx, false, "creds", "fetch", "--role", "reports-read")
	d.atfctl(ctx, false, append(svidFlags(alice), "unkill", reporter.String(), "--reason", "drill over")...)
	d.atfctl(ctx, true, append(svidFlags(bob), "unkill", reporter.String(), "--reason", "drill over")...)
	d.atfctl(ctx, true, "creds", "fetch", "--role", "reports-read", "--ttl", "5m")

	title("Deregistering the writer kills its tokens and everything it delegated, in Vault, at once")
	d.atfctl(ctx, true, append(svidFlags(alice), "agent", "deregister", writer.String(), "--reason", "replaced by v2")...)
	d.vault(ctx, wtoken, false, "kv", "get", "secret/demo/reports")
	d.vault(ctx, htoken, false, "kv", "get", "secret/demo/reports")
	d.atfctl(ctx, false, append(svidFlags(writer), "creds", "fetch", "--role", "reports-write")...)
	d.atfctl(ctx, true, append(svidFlags(alice), "agent", "history", writer.String())...)

	if d.unexpected > 0 {
		return fmt.Errorf("%d step(s) did not behave as expected; atfd's log is %s", d.unexpected, d.atfLog)
	}
	fmt.Printf("\n%sDone.%s Every step above went through real SPIRE SVIDs, a real Vault and atfd.\n", green, reset)
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
	example := strings.ReplaceAll(policy.Example, "spiffe://example.org/", d.stack.TrustDomain.IDString()+"/")
	if err := os.WriteFile(pol, []byte(example), 0o600); err != nil {
		return "", err
	}
	cfg := fmt.Sprintf(`# atfd configuration for the demo (see the README's configuration reference)
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
