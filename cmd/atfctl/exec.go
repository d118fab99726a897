package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentictrust/atf/broker/client"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// exitRevoked is atfctl exec's and sidecar's exit code when the broker took a
// credential away (revoked, or the agent killed) and the child was stopped.
const exitRevoked = 9

// roleTarget is one --role ROLE[=NAME] flag: the role and where its token
// goes (an environment variable for exec, a file for sidecar).
type roleTarget struct {
	role, name string
}

// parseRoles splits --role values; nameOf gives the default name of a role's
// target when the flag has none.
func parseRoles(values []string, nameOf func(role string) string) ([]roleTarget, error) {
	if len(values) == 0 {
		return nil, usageError{errors.New("--role is required")}
	}
	seen := map[string]bool{}
	var out []roleTarget
	for _, v := range values {
		role, name, named := strings.Cut(v, "=")
		if role == "" || (named && name == "") {
			return nil, usageError{fmt.Errorf("--role %q: want ROLE or ROLE=NAME", v)}
		}
		if !named {
			name = nameOf(role)
		}
		if seen[role] {
			return nil, usageError{fmt.Errorf("--role %s is given twice", role)}
		}
		seen[role] = true
		out = append(out, roleTarget{role, name})
	}
	return out, nil
}

// envName is the default variable for a role's token: VAULT_TOKEN when exec
// fetches one role, else ATF_TOKEN_<ROLE> (upper case, other characters _).
func envName(role string, only bool) string {
	if only {
		return "VAULT_TOKEN"
	}
	return "ATF_TOKEN_" + envWord(role)
}

// envWord is s in a variable name: upper case, characters other than
// letters and digits as _.
func envWord(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, s)
}

// secretEnv is the environment of a credential's dynamic secret: each
// field in ATF_SECRET_<FIELD> and the lease id in ATF_LEASE_ID when exec
// fetches one role, else ATF_SECRET_<ROLE>_<FIELD> and ATF_LEASE_ID_<ROLE>.
// Two fields that would share a variable are an error.
func secretEnv(c *brokerv1.Credential, role string, only bool) ([]string, error) {
	if c.GetLeaseId() == "" {
		return nil, nil
	}
	prefix, lease := "ATF_SECRET_", "ATF_LEASE_ID"
	if !only {
		prefix, lease = prefix+envWord(role)+"_", lease+"_"+envWord(role)
	}
	env := []string{lease + "=" + c.GetLeaseId()}
	seen := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(c.GetSecret())) {
		name := prefix + envWord(k)
		if other, dup := seen[name]; dup {
			return nil, fmt.Errorf("role %s: secret fields %q and %q would both be %s", role, other, k, name)
		}
		seen[name] = k
		env = append(env, name+"="+c.GetSecret()[k])
	}
	return env, nil
}

// newAgentLogger logs the client's warnings (refresh failures, reconnects)
// to stderr; tokens are never logged.
func newAgentLogger(cmd *cobra.Command) *slog.Logger {
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// startAgent starts a client.Agent with the global flags, whose changes go
// to the returned channel (buffered; a slow reader holds the agent's
// delivery goroutine, never its lock). stop closes the agent; changes
// nobody reads any more are then dropped, so that closing never waits on
// them.
func (g *globals) startAgent(cmd *cobra.Command, ttl time.Duration) (_ *client.Agent, _ <-chan client.Change, stop func(), _ error) {
	cfg, err := g.clientConfig()
	if err != nil {
		return nil, nil, nil, err
	}
	changes, done := make(chan client.Change, 64), make(chan struct{})
	a, err := client.New(cmd.Context(), cfg, client.WithTTL(ttl), client.WithLogger(newAgentLogger(cmd)),
		client.WithOnChange(func(c client.Change) {
			select {
			case changes <- c:
			case <-done:
			}
		}))
	if err != nil {
		return nil, nil, nil, err
	}
	return a, changes, func() { close(done); a.Close() }, nil
}

// fetchAll gets a credential for every role.
func fetchAll(ctx context.Context, a *client.Agent, roles []roleTarget) (map[string]*brokerv1.Credential, error) {
	creds := make(map[string]*brokerv1.Credential, len(roles))
	for _, r := range roles {
		c, err := a.Credential(ctx, r.role)
		if err != nil {
			return nil, fmt.Errorf("role %s: %w", r.role, err)
		}
		creds[r.role] = c
	}
	return creds, nil
}

func newExec(g *globals) *cobra.Command {
	var (
		roleFlags []string
		addrEnv   string
		ttl       time.Duration
		grace     time.Duration
	)
	cmd := &cobra.Command{
		Use:   "exec --role ROLE[=VAR] [--role ...] -- COMMAND [ARGS...]",
		Short: "Run a command with the agent's credentials in its environment, and stop it when one is revoked",
		Long: `exec fetches a credential for each --role, starts COMMAND with the tokens in its
environment, keeps them fresh, and stops COMMAND when the broker takes one away.

The token of a single role goes in VAULT_TOKEN; with several roles, each goes
in ATF_TOKEN_<ROLE> (upper case, other characters as _), or in the variable
named after '='. VAULT_ADDR (--vault-addr-env) holds the Vault address.

A role with a dynamic secret (e.g. a database user) also puts each of its
fields in ATF_SECRET_<FIELD> (ATF_SECRET_USERNAME, ATF_SECRET_PASSWORD) and
its Vault lease in ATF_LEASE_ID; with several roles, in
ATF_SECRET_<ROLE>_<FIELD> and ATF_LEASE_ID_<ROLE>. Revoking the credential
revokes the lease: the database drops the user.

A process's environment cannot change while it runs, so when a credential is
refreshed before it expires, exec restarts COMMAND with the new one (SIGTERM,
then SIGKILL after --grace). Also after atfd restarts, since revocations may
have been missed meanwhile. A process that must not restart should read
files from 'atfctl sidecar' instead.

When a credential is revoked, or the agent is killed, exec stops COMMAND
(SIGTERM, then SIGKILL after --grace) and exits 9. Otherwise it exits with
COMMAND's exit status. SIGTERM, SIGHUP, SIGINT, SIGQUIT, SIGUSR1 and SIGUSR2
are passed on to COMMAND. When stdin is not a terminal, COMMAND runs in its
own process group and signals reach the whole group, so that a shell's
children stop too.`,
		Example: `  atfctl exec --role reports-read -- python agent.py
  atfctl exec --role reports-read=READ_TOKEN --role reports-write=WRITE_TOKEN -- ./agent
  atfctl exec --role reports-read --ttl 10m --grace 30s -- sh -c 'vault kv get secret/reports/q3'
  atfctl exec --role orders-db -- sh -c 'PGPASSWORD="$ATF_SECRET_PASSWORD" psql -h db -U "$ATF_SECRET_USERNAME" orders'`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, argv []string) error {
			if cmd.ArgsLenAtDash() != 0 {
				return usageError{errors.New("put the command after --, e.g. atfctl exec --role R -- COMMAND")}
			}
			roles, err := parseRoles(roleFlags, func(role string) string { return envName(role, len(roleFlags) == 1) })
			if err != nil {
				return err
			}
			if grace <= 0 {
				return usageError{errors.New("--grace must be positive")}
			}
			a, changes, stop, err := g.startAgent(cmd, ttl)
			if err != nil {
				return err
			}
			defer stop()
			x := &execution{cmd: cmd, argv: argv, roles: roles, addrEnv: addrEnv, grace: grace, agent: a}
			return x.run(changes)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&roleFlags, "role", nil, "role to fetch, optionally =VARIABLE for its token (repeatable; required)")
	f.StringVar(&addrEnv, "vault-addr-env", "VAULT_ADDR", "variable for the Vault address; empty to leave it unset")
	f.DurationVar(&ttl, "ttl", 0, "requested lifetime of each credential; default and maximum: the role's and your level's")
	f.DurationVar(&grace, "grace", 10*time.Second, "how long COMMAND has to exit after SIGTERM before SIGKILL")
	return cmd
}

// execution is one atfctl exec: the child and the credentials it holds.
type execution struct {
	cmd     *cobra.Command
	argv    []string
	roles   []roleTarget
	addrEnv string
	grace   time.Duration
	agent   *client.Agent

	child *exec.Cmd
	group bool          // the child leads its own process group
	done  chan struct{} // closed when the child has exited
	// held maps the accessors the child holds to their roles.
	held map[string]string
}

func (x *execution) run(changes <-chan client.Change) error {
	ctx := x.cmd.Context()
	creds, err := fetchAll(ctx, x.agent, x.roles)
	if err != nil {
		return err
	}
	if err := x.start(creds); err != nil {
		return err
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	for {
		select {
		case <-x.done:
			return x.exitStatus()
		case s := <-sigs:
			x.signal(s.(syscall.Signal))
		case <-ctx.Done():
			// Ctrl-C (or the caller's context): pass it on and let the child
			// decide; its status is exec's.
			x.signal(syscall.SIGINT)
			x.awaitOrKill()
			return x.exitStatus()
		case c := <-changes:
			role, ok := x.held[c.Accessor]
			if !ok {
				continue // a credential the child no longer holds
			}
			switch c.Kind {
			case client.Revoked:
				x.stop()
				return exitError{code: exitRevoked, msg: fmt.Sprintf("credential for role %s was revoked (%s); stopped %s", role, orUnknown(c.Reason), x.argv[0])}
			case client.Refreshed, client.Reset, client.Expired:
				fresh, err := fetchAll(ctx, x.agent, x.roles)
				if err != nil {
					x.stop()
					return x.lost(role, c.Kind, err)
				}
				fmt.Fprintf(x.cmd.ErrOrStderr(), "atfctl exec: credential for role %s %s; restarting %s with fresh credentials\n", role, c.Kind, x.argv[0])
				x.stop()
				if err := x.start(fresh); err != nil {
					return err
				}
			}
		}
	}
}

// lost is exec's error when a credential could not be replaced.
func (x *execution) lost(role string, kind client.ChangeKind, err error) error {
	if code := exitCode(err); code == 3 || code == 4 {
		// The broker refuses the agent now: it was killed, deregistered or
		// lost the role.
		return exitError{code: exitRevoked, msg: fmt.Sprintf("credential for role %s %s and the broker refuses a new one (%s); stopped %s", role, kind, message(err), x.argv[0])}
	}
	return fmt.Errorf("credential for role %s %s and could not be replaced; stopped %s: %w", role, kind, x.argv[0], err)
}

func orUnknown(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}

// start starts the child with creds in its environment.
func (x *execution) start(creds map[string]*brokerv1.Credential) error {
	env := os.Environ()
	x.held = map[string]string{}
	for _, r := range x.roles {
		c := creds[r.role]
		env = append(env, r.name+"="+c.GetToken())
		secret, err := secretEnv(c, r.role, len(x.roles) == 1)
		if err != nil {
			return err
		}
		env = append(env, secret...)
		x.held[c.GetAccessor()] = r.role
		if x.addrEnv != "" && c.GetVaultAddress() != "" {
			env = append(env, x.addrEnv+"="+c.GetVaultAddress())
		}
	}
	child := exec.Command(x.argv[0], x.argv[1:]...)
	child.Env = env
	child.Stdin, child.Stdout, child.Stderr = x.cmd.InOrStdin(), x.cmd.OutOrStdout(), x.cmd.ErrOrStderr()
	x.group = !isTerminal(os.Stdin)
	child.SysProcAttr = sysProcAttr(x.group)
	if err := child.Start(); err != nil {
		return err
	}
	x.child, x.done = child, make(chan struct{})
	go func(done chan struct{}) {
		_ = child.Wait() // the status is read from child.ProcessState
		close(done)
	}(x.done)
	return nil
}

// stop ends the child: SIGTERM, then SIGKILL if it has not exited within
// the grace period.
func (x *execution) stop() {
	x.signal(syscall.SIGTERM)
	x.awaitOrKill()
}

// awaitOrKill waits the grace period for the child to exit, then kills it.
func (x *execution) awaitOrKill() {
	t := time.NewTimer(x.grace)
	defer t.Stop()
	select {
	case <-x.done:
		return
	case <-t.C:
	}
	fmt.Fprintf(x.cmd.ErrOrStderr(), "atfctl exec: %s did not exit within %s; killing it\n", x.argv[0], x.grace)
	x.signal(syscall.SIGKILL)
	<-x.done
}

// signal sends s to the child (its group, if it leads one).
func (x *execution) signal(s syscall.Signal) {
	select {
	case <-x.done:
		return
	default:
	}
	signalChild(x.child.Process, x.group, s)
}

// exitStatus passes on the child's exit status.
func (x *execution) exitStatus() error {
	st := x.child.ProcessState
	if st.Success() {
		return nil
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		// The shell's convention.
		return exitError{code: 128 + int(ws.Signal()), msg: fmt.Sprintf("%s: %s", x.argv[0], st)}
	}
	return exitError{code: st.ExitCode()} // the command said why, if it wanted to
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
