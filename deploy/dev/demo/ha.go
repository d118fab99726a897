package main

// The high-availability demo (-ha, `make demo-ha`): three atfd replicas,
// real processes, on one store in a three-member etcd cluster
// (docs/operations.md, "Several replicas on etcd"), and an agent in this
// process given all three addresses (broker/client). The replica serving
// the agent is killed and the agent carries on with another; a lineage
// revoked on one replica reaches the agent through another, and Vault.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/deploy/dev"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// haState is what the HA demo adds to a demo.
type haState struct {
	etcd *dev.Etcd
	// agent is the writer's, in this process; log and changes are what it
	// logs and what happens to its credentials.
	agent   *client.Agent
	log     *logTap
	changes chan client.Change
	// first is the writer's credential before the kill, after the one
	// after; helper is the helper's, under the writer's grant.
	first, after, helper *brokerv1.Credential
	killed               *atfd
}

var haScript = script{steps: haSteps, done: "Three atfd replicas served one store in etcd: one was killed and the agent " +
	"carried on with another; a lineage revoked on one replica reached the agent through another, and Vault."}

var haSteps = []step{
	{"Start a local SPIRE server + agent, a Vault dev server and a three-member etcd cluster", (*demo).startHAStack},
	{"Register atfd with SPIRE; SPIRE mints SVIDs for the admin (alice) and two agents", (*demo).registerHAWorkloads},
	{"Start three atfd replicas, r1, r2 and r3 (real processes, atfd of `make build`), on one store in etcd", (*demo).startReplicas},
	{"alice registers the writer (A, Senior) and the helper (B) through one replica; another lists them", (*demo).registerHAAgents},
	{"The writer's agent starts with all three addresses and fetches a credential; it delegates to the helper, which fetches under the grant", (*demo).agentStarts},
	{"The replica serving the agent is killed (SIGKILL): the agent carries on with another", (*demo).killReplica},
	{"alice revokes the writer's lineage on one replica; the agent, watching through another, hears it", (*demo).revokeAcross},
	{"A clean stop: the agent closes, the surviving replicas stop on SIGTERM", (*demo).stopReplicas},
}

// Bounds of the waits for what the agent does on its own.
const (
	// fetchWait bounds a credential fetch, failing over included.
	fetchWait = 30 * time.Second
	// resumeWait bounds the agent's watch resuming on another replica:
	// its reconnect backoff (1 s, 2 s, 4 s...) plus gRPC's.
	resumeWait = 30 * time.Second
	// hearWait bounds a revocation reaching the agent.
	hearWait = 20 * time.Second
)

func (d *demo) startHAStack(ctx context.Context) error {
	if err := d.startDev(ctx); err != nil {
		return err
	}
	e, err := d.stack.StartEtcd(ctx, 3)
	if err != nil {
		return err
	}
	d.ha.etcd = e
	fmt.Printf("   etcd: %s (mutual TLS, --max-txn-ops %d)\n", strings.Join(e.Endpoints, " "), dev.MaxTxnOps)
	return nil
}

func (d *demo) registerHAWorkloads(ctx context.Context) error {
	fmt.Println("   The replicas get their SVIDs from the SPIRE agent's Workload API, attested by atfd's binary path;")
	fmt.Println("   alice, the writer and the helper use SVIDs minted by SPIRE.")
	if err := d.registerAtfd(ctx); err != nil {
		return err
	}
	return d.mint(ctx, d.alice, d.writer, d.helper)
}

func (d *demo) startReplicas(ctx context.Context) error {
	e := d.ha.etcd
	var addrs []string
	for i := range 3 {
		name := fmt.Sprintf("r%d", i+1)
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		store := fmt.Sprintf(`store:                   # one store in etcd, shared by the replicas
  etcd:
    endpoints: [%s]
    ca_file: %s
    cert_file: %s    # atfd's client certificate (mutual TLS)
    key_file: %s
    prefix: /atf/
    max_txn_ops: %d
    replica: %s          # its crash recovery revokes only what it made`,
			strings.Join(e.Endpoints, ", "), e.CAFile, e.CertFile, e.KeyFile, dev.MaxTxnOps, name)
		cfg, err := d.writeConfig(atfdConfig{name: name, addr: addr, format: "json", store: store})
		if err != nil {
			return err
		}
		if i == 0 {
			fmt.Printf("%s%s%s", dim, indent(cfg.text), reset)
		}
		a, err := d.startAtfd(ctx, cfg)
		if err != nil {
			return err
		}
		fmt.Printf("   %s is serving on %s as %s (log: %s)\n", a.name, a.addr, d.stack.BrokerID, a.log)
		addrs = append(addrs, addr)
	}
	fmt.Println("   r2 and r3 have r1's configuration but for listen_addr and replica.")
	d.env = append(os.Environ(), "ATF_BROKER_ADDR="+strings.Join(addrs, ","), "VAULT_ADDR="+d.stack.VaultAddr)
	fmt.Printf("   atfctl is given all three: ATF_BROKER_ADDR=%s (the first that answers serves)\n", strings.Join(addrs, ","))
	return nil
}

func (d *demo) registerHAAgents(ctx context.Context) error {
	first, last := d.atfds[0], d.atfds[len(d.atfds)-1]
	fmt.Printf("   Through %s:\n", first.name)
	d.atfctl(ctx, true, append(d.as(d.alice), "--addr", first.addr, "agent", "register", d.writer.String(),
		"--owner", "bob@example.org", "--purpose", "publish report updates", "--role", "reports-read", "--role", "reports-write")...)
	d.atfctl(ctx, true, append(d.as(d.alice), "--addr", first.addr, "agent", "register", d.helper.String(),
		"--owner", "bob@example.org", "--purpose", "proof-read reports for the writer", "--role", "reports-read")...)
	d.place(ctx, d.writer.String(), "senior")
	d.place(ctx, d.helper.String(), "junior")
	fmt.Printf("   Through %s, which reads the same store:\n", last.name)
	d.atfctl(ctx, true, append(d.as(d.alice), "--addr", last.addr, "agent", "list")...)
	return nil
}

func (d *demo) agentStarts(ctx context.Context) error {
	var addrs []string
	for _, a := range d.atfds {
		addrs = append(addrs, a.addr)
	}
	f := d.files[d.writer]
	fmt.Printf("   %sagent, err := client.New(ctx, client.Config{Addrs: %q, ...})%s\n", bold, addrs, reset)
	fmt.Printf("   (broker/client, in this process, with the writer's SVID; its log and the changes to its credentials are shown as they come)\n")
	d.ha.log, d.ha.changes = &logTap{}, make(chan client.Change, 16)
	ag, err := client.New(ctx, client.Config{Addrs: addrs, BrokerID: d.stack.BrokerID.String(),
		SVIDFile: f.CertPath, SVIDKeyFile: f.KeyPath, BundleFile: f.BundlePath},
		client.WithLogger(slog.New(slog.NewTextHandler(d.ha.log, &slog.HandlerOptions{ReplaceAttr: noTime}))),
		client.WithOnChange(func(c client.Change) { d.ha.changes <- c }))
	if err != nil {
		return fmt.Errorf("the writer's agent: %w", err)
	}
	d.ha.agent = ag
	if d.ha.first, err = d.agentFetch(ctx, "reports-read"); err != nil {
		return err
	}
	d.describe(d.ha.first)

	grant, err := d.atfctlShown(ctx, append(d.as(d.writer), "delegate", "--to", d.helper.String(), "--role", "reports-read", "--ttl", "10m", "-o", "json")...)
	if err != nil {
		return err
	}
	fmt.Print(indent(grant))
	if d.ha.helper, err = d.fetchAs(ctx, d.helper, "--role", "reports-read", "--grant", jsonField(grant, "id")); err != nil {
		return err
	}
	d.describe(d.ha.helper)
	d.lookup(ctx, "the helper's token", d.ha.helper.GetToken(), true)
	return nil
}

func (d *demo) killReplica(ctx context.Context) error {
	victim := d.atfdNamed(d.issuer(d.ha.first))
	if victim == nil {
		return errors.New("no replica's log shows the writer's first credential issued")
	}
	fmt.Printf("   %s$ kill -KILL %d%s   (%s, which the agent's connection is on)\n", bold, victim.cmd.Process.Pid, reset, victim.name)
	killed := time.Now()
	victim.cmd.Process.Kill()
	<-victim.done
	d.ha.killed = victim
	fmt.Printf("     %s exited: %v\n", victim.name, victim.err)

	fmt.Println("   What the agent holds it keeps serving, and Vault honours it:")
	held, err := d.agentFetch(ctx, "reports-read")
	if err != nil {
		return err
	}
	d.check(held.GetAccessor() == d.ha.first.GetAccessor(), "the same credential, %s, from the agent's cache", held.GetAccessor())
	d.vault(ctx, held.GetToken(), true, "kv", "get", "-field=summary", "secret/demo/reports")

	fmt.Println("   Its next credential comes from a replica still running:")
	start := time.Now()
	if d.ha.after, err = d.agentFetch(ctx, "reports-write"); err != nil {
		return fmt.Errorf("the agent got no credential after %s was killed: %w", victim.name, err)
	}
	took := time.Since(start)
	by := d.describe(d.ha.after)
	d.check(by != "" && by != victim.name, "issued by %s, %s after the kill (the call took %s)",
		by, start.Add(took).Sub(killed).Round(time.Millisecond), took.Round(time.Millisecond))

	at, resumed := d.ha.log.waitFor(ctx, "revocation watch resumed", resumeWait)
	d.ha.log.show()
	reset := d.ha.log.has("dropped every cached credential")
	d.check(resumed && !reset, "the agent's revocation watch resumed on %s where it broke, %s after the kill: nothing revoked meanwhile is missed",
		by, at.Sub(killed).Round(time.Millisecond))
	return nil
}

func (d *demo) revokeAcross(ctx context.Context) error {
	via := d.atfdNamed(d.issuer(d.ha.after))
	var on *atfd
	for _, a := range d.atfds {
		if a != via && a != d.ha.killed && on == nil {
			on = a
		}
	}
	if via == nil || on == nil {
		return errors.New("no replica left to revoke on besides the one the agent uses")
	}
	fmt.Printf("   The agent's connection, and its revocation watch, is on %s; alice revokes on %s:\n", via.name, on.name)
	start := time.Now()
	d.atfctl(ctx, true, append(d.as(d.alice), "--addr", on.addr, "revoke", "lineage", d.writer.String(), "--reason", "drill: the writer's key may have leaked")...)
	d.hear(via, start, d.ha.first, d.ha.after)

	fmt.Println("   In Vault, the writer's credentials and the helper's, under its grant, are dead:")
	d.lookup(ctx, "the writer's reports-read token", d.ha.first.GetToken(), false)
	d.lookup(ctx, "the writer's reports-write token", d.ha.after.GetToken(), false)
	d.lookup(ctx, "the helper's token", d.ha.helper.GetToken(), false)

	fmt.Println("   The writer itself is not stopped: its next call fetches anew.")
	fresh, err := d.agentFetch(ctx, "reports-read")
	if err != nil {
		return err
	}
	d.describe(fresh)
	d.check(fresh.GetAccessor() != d.ha.first.GetAccessor(), "a new credential, not the revoked one")
	d.lookup(ctx, "the writer's new token", fresh.GetToken(), true)
	return nil
}

// hear waits for the agent to report each of creds revoked, and checks
// that it did, through via, within hearWait of start.
func (d *demo) hear(via *atfd, start time.Time, creds ...*brokerv1.Credential) {
	want := map[string]bool{}
	for _, c := range creds {
		want[c.GetAccessor()] = true
	}
	timeout := time.After(hearWait)
	for len(want) > 0 {
		select {
		case c := <-d.ha.changes:
			fmt.Printf("     the agent hears: %s %s %s (%s), %s after the revocation began\n",
				c.Role, c.Accessor, c.Kind, c.Reason, time.Since(start).Round(time.Millisecond))
			if c.Kind == client.Revoked {
				delete(want, c.Accessor)
			}
		case <-timeout:
			d.ha.log.show()
			d.check(false, "the agent did not hear %d of its credentials revoked within %s", len(want), hearWait)
			return
		}
	}
	d.ha.log.show()
	d.check(true, "the agent heard, through %s, the revocation made on another replica; its cache dropped both credentials", via.name)
}

func (d *demo) stopReplicas(ctx context.Context) error {
	fmt.Printf("   %s$ agent.Close()%s\n", bold, reset)
	d.check(d.ha.agent.Close() == nil, "the agent closed")
	d.ha.agent = nil
	for _, a := range d.atfds {
		if a == d.ha.killed {
			continue
		}
		fmt.Printf("   %s$ kill -TERM %d%s   (%s)\n", bold, a.cmd.Process.Pid, reset, a.name)
		start := time.Now()
		err := a.stop()
		d.check(err == nil, "%s stopped cleanly in %s (exit status: %v)", a.name, time.Since(start).Round(time.Millisecond), exitStatus(err))
	}
	fmt.Println("   etcd, SPIRE and Vault stop with the rest of the stack, below.")
	return nil
}

// exitStatus says how a process exited, from Wait's error.
func exitStatus(err error) string {
	if err == nil {
		return "0"
	}
	return err.Error()
}

// agentFetch asks the writer's agent for a credential for role.
func (d *demo) agentFetch(ctx context.Context, role string) (*brokerv1.Credential, error) {
	fmt.Printf("   %s$ agent.Credential(ctx, %q)%s\n", bold, role, reset)
	ctx, cancel := context.WithTimeout(ctx, fetchWait)
	defer cancel()
	c, err := d.ha.agent.Credential(ctx, role)
	if err != nil {
		d.ha.log.show()
		return nil, fmt.Errorf("the writer's agent, credential for %s: %w", role, err)
	}
	return c, nil
}

// fetchAs fetches a credential with atfctl as who (a minted SVID), with
// the fetch flags given.
func (d *demo) fetchAs(ctx context.Context, who spiffeid.ID, flags ...string) (*brokerv1.Credential, error) {
	out, err := d.atfctlShown(ctx, append(append(d.as(who), "creds", "fetch"), append(flags, "-o", "json")...)...)
	if err != nil {
		return nil, err
	}
	var r brokerv1.FetchCredentialResponse
	if err := protojson.Unmarshal([]byte(out), &r); err != nil || r.GetCredential() == nil {
		return nil, fmt.Errorf("atfctl creds fetch: no credential in its answer (%v)", err)
	}
	return r.GetCredential(), nil
}

// atfctlShown prints the atfctl command, runs it, and returns its output.
func (d *demo) atfctlShown(ctx context.Context, args ...string) (string, error) {
	fmt.Printf("   %s$ atfctl %s%s\n", bold, shorten(args), reset)
	return d.atfctlOut(ctx, args...)
}

// describe prints a credential (never its token) and which replica issued
// it, which it returns ("" if no replica's log has it).
func (d *demo) describe(c *brokerv1.Credential) string {
	by := d.issuer(c)
	level := strings.ToLower(strings.TrimPrefix(c.GetLevel().String(), "LEVEL_"))
	fmt.Printf("     %s credential %s for %s, expires in %s, chain %s\n", level, c.GetAccessor(), c.GetRole(),
		time.Until(c.GetExpiresAt().AsTime()).Round(time.Second), strings.Join(c.GetChain(), " → "))
	fmt.Printf("     issued by %s (its log: credential issued, decision %s)\n", by, c.GetDecisionId())
	return by
}

// issuer names the replica whose log has c issued, or "".
func (d *demo) issuer(c *brokerv1.Credential) string {
	for _, a := range d.atfds {
		f, err := os.Open(a.log)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) == nil && line[slog.MessageKey] == "credential issued" && line[edge.LogDecisionID] == c.GetDecisionId() {
				f.Close()
				return a.name
			}
		}
		f.Close()
	}
	return ""
}

func (d *demo) atfdNamed(name string) *atfd {
	for _, a := range d.atfds {
		if a.name == name {
			return a
		}
	}
	return nil
}

// lookup asks Vault, as root (credentials carry no policy to look
// themselves up), about token, and checks it is alive or dead as wanted.
// A token that should be dead gets a few seconds to be.
func (d *demo) lookup(ctx context.Context, what, token string, wantAlive bool) {
	fmt.Printf("   %s$ vault token lookup <%s>%s   (as root)\n", bold, what, reset)
	tokens := d.stack.VaultClient().Auth().Token()
	sec, err := tokens.LookupWithContext(ctx, token)
	for deadline := time.Now().Add(10 * time.Second); err == nil && !wantAlive && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		sec, err = tokens.LookupWithContext(ctx, token)
	}
	if err != nil {
		var re *vaultapi.ResponseError
		if errors.As(err, &re) {
			fmt.Printf("     Vault answers %d: %s\n", re.StatusCode, strings.Join(re.Errors, "; "))
		} else {
			fmt.Print(indent(err.Error()))
		}
		d.check(!wantAlive && strings.Contains(err.Error(), "bad token"), "refused: Vault no longer knows it")
		return
	}
	meta, _ := sec.Data["meta"].(map[string]any)
	fmt.Printf("     policies %v, ttl %vs, atf_agent %v, atf_chain %v\n", sec.Data["policies"], sec.Data["ttl"], meta["atf_agent"], meta["atf_chain"])
	d.check(wantAlive, "Vault knows it")
}

// freeAddr is a loopback address whose port was free a moment ago.
func freeAddr() (string, error) { return dev.FreeAddr() }

// noTime drops the time from log lines the demo prints.
func noTime(_ []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// logTap keeps the agent's log lines, for the narration to show them
// where they belong and to wait for one.
type logTap struct {
	mu    sync.Mutex
	lines []logLine
	shown int
}

type logLine struct {
	at   time.Time
	text string
}

func (l *logTap) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for line := range strings.Lines(string(p)) {
		l.lines = append(l.lines, logLine{time.Now(), strings.TrimRight(line, "\n")})
	}
	return len(p), nil
}

// waitFor waits up to d for a line containing s, and says when it was
// logged.
func (l *logTap) waitFor(ctx context.Context, s string, d time.Duration) (time.Time, bool) {
	for deadline := time.Now().Add(d); ctx.Err() == nil && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if at, ok := l.find(s); ok {
			return at, true
		}
	}
	return l.find(s)
}

func (l *logTap) find(s string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line.text, s) {
			return line.at, true
		}
	}
	return time.Time{}, false
}

func (l *logTap) has(s string) bool {
	_, ok := l.find(s)
	return ok
}

// show prints the lines not shown yet.
func (l *logTap) show() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines[l.shown:] {
		fmt.Printf("     %sagent log: %s%s\n", dim, line.text, reset)
	}
	l.shown = len(l.lines)
}
