package main

// The OAuth part of `make demo` (docs/oauth.md): atfd also issues OAuth
// access tokens (RFC 8693 token exchange, RFC 9068 JWTs) for a role of
// kind jwt, and the example MCP tool server (deploy/examples/mcp-tools,
// docs/oauth-verifier.md), a real process, trusts them. Agent C calls it
// through a delegation chain A → B → C; revoking B's lineage makes C's
// next call fail within the push latency, long before the token expires.

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/agentictrust/atf/deploy/dev"
)

// oauthState is what the OAuth part adds to a demo.
type oauthState struct {
	issuer, toolsAddr, audience string
	// planner (A), researcher (B) and summarizer (C) are the chain; tools
	// is the tool server's SPIFFE ID.
	planner, researcher, summarizer, tools spiffeid.ID
	ab, bc                                 string // the grants A → B, B → C
	token, ownA                            string // C's token through the chain, A's own
	tokenExp                               time.Time
	cmd                                    *exec.Cmd
	done                                   chan struct{}
	log                                    string
}

// oauthSteps are the OAuth part's steps, at the end of `make demo` and
// alone with -oauth.
var oauthSteps = []step{
	{"atfd is also an OAuth authorization server: an MCP tool server (deploy/examples/mcp-tools) trusts its access tokens and follows its revocation events", (*demo).startTools},
	{"The planner (A, Senior) delegates the tool server to the researcher (B), which delegates it to the summarizer (C)", (*demo).chainTools},
	{"C exchanges its SVID for an access token for the tool server (RFC 8693) and calls it: the server sees C acting for B for A", (*demo).callTools},
	{"alice revokes B's lineage: C's next call is refused within the push latency, long before the token expires; A's own token still works", (*demo).revokeTools},
}

var oauthScript = script{
	steps: append([]step{
		{"Start a local SPIRE server + agent and a Vault dev server", (*demo).startDev},
		{"Register workloads with SPIRE", (*demo).registerWorkloads},
		{"Start atfd, with its OAuth endpoints on", (*demo).startBroker},
	}, oauthSteps...),
	done: "An agent's access token carried its delegation chain to a real resource server, which refused it as soon as the lineage was revoked.",
}

// Bounds of the OAuth part's waits.
const (
	// toolsWait bounds building and starting the tool server.
	toolsWait = 2 * time.Minute
	// refuseWait bounds the tool server refusing a revoked token: the push
	// takes milliseconds (BENCHMARKS.md).
	refuseWait = 5 * time.Second
)

// oauthConfig picks the OAuth endpoints' and the tool server's addresses
// and returns atfd's oauth section.
func (d *demo) oauthConfig() (string, error) {
	addr, err := freeAddr()
	if err != nil {
		return "", err
	}
	if d.oauth.toolsAddr, err = freeAddr(); err != nil {
		return "", err
	}
	o := &d.oauth
	o.issuer, o.audience = "https://"+addr, "https://"+o.toolsAddr+"/mcp"
	id := func(path string) spiffeid.ID { return spiffeid.RequireFromPath(d.stack.TrustDomain, path) }
	o.planner, o.researcher, o.summarizer, o.tools = id("/agents/planner"), id("/agents/researcher"), id("/agents/summarizer"), id("/services/mcp-tools")
	return fmt.Sprintf(`oauth:                   # the OAuth token exchange (docs/oauth.md)
  listen_addr: %s
  issuer: %s
  resource_servers: [%s]   # may watch revocation events`, addr, o.issuer, o.tools), nil
}

// oauthRole is the tool server's role, of kind jwt: its credentials are
// access tokens for the audience.
func (d *demo) oauthRole() string {
	return fmt.Sprintf(`  - name: mcp-tools
    description: Call the MCP tool server (deploy/examples/mcp-tools), with an OAuth access token.
    kind: jwt
    class: read
    classification: internal
    audience: %s
    scopes: [tools.list, tools.call]
    max_ttl: 10m
`, d.oauth.audience)
}

// oauthPolicy lets the chain's agents ask for the tool server from Intern.
func (d *demo) oauthPolicy() string {
	o := d.oauth
	return fmt.Sprintf("\n# The demo's tool server, an OAuth resource.\ng, %s, group:tools\ng, %s, group:tools\ng, %s, group:tools\np, group:tools, mcp-tools, read, intern, allow\n",
		o.planner, o.researcher, o.summarizer)
}

func (d *demo) startTools(ctx context.Context) error {
	o := &d.oauth
	if err := d.mint(ctx, o.planner, o.researcher, o.summarizer, o.tools); err != nil {
		return err
	}
	bin, err := d.toolsBinary(ctx)
	if err != nil {
		return err
	}
	f := d.files[o.tools]
	args := []string{"-issuer", o.issuer, "-audience", o.audience, "-broker-id", d.stack.BrokerID.String(), "-listen", o.toolsAddr,
		"-introspect", "-svid-cert", f.CertPath, "-svid-key", f.KeyPath, "-bundle", f.BundlePath}
	fmt.Printf("   %s$ mcp-tools %s ...%s\n", bold, strings.Join(args[:9], " "), reset)
	fmt.Println("   (-introspect: a token the events cannot vouch for, issued before the stream was heard, is introspected, not refused)")
	o.log = filepath.Join(d.stack.Dir, "mcp-tools.log")
	logf, err := os.Create(o.log)
	if err != nil {
		return err
	}
	defer logf.Close()
	o.cmd = exec.Command(bin, args...)
	o.cmd.Stdout, o.cmd.Stderr = logf, logf
	if err := o.cmd.Start(); err != nil {
		return fmt.Errorf("start mcp-tools: %w", err)
	}
	o.done = make(chan struct{})
	go func() { _ = o.cmd.Wait(); close(o.done) }()
	if err := d.waitTools(ctx); err != nil {
		return err
	}
	fmt.Printf("   mcp-tools is serving https://%s/mcp as %s, subscribed to %s/oauth2/events (log: %s)\n", o.toolsAddr, o.tools, o.issuer, o.log)
	return nil
}

// toolsBinary is mcp-tools from the bin directory, else built into the
// stack's.
func (d *demo) toolsBinary(ctx context.Context) (string, error) {
	if p := filepath.Join(d.bin, "mcp-tools"); fileExists(p) {
		return p, nil
	}
	root, err := dev.RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(d.stack.Dir, "mcp-tools")
	fmt.Printf("   %s$ go build -o %s ./deploy/examples/mcp-tools%s\n", bold, out, reset)
	ctx, cancel := context.WithTimeout(ctx, toolsWait)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", out, "./deploy/examples/mcp-tools")
	build.Dir = root
	if b, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build mcp-tools: %v\n%s", err, b)
	}
	return out, nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// waitTools polls the tool server's /healthz until it answers.
func (d *demo) waitTools(ctx context.Context) error {
	hc, err := d.httpClient(spiffeid.ID{}, d.oauth.tools)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(toolsWait)
	for {
		resp, err := hc.Get("https://" + d.oauth.toolsAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-d.oauth.done:
			return fmt.Errorf("mcp-tools exited before it was ready (log: %s)", d.oauth.log)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("mcp-tools did not become ready: %v", err)
		}
	}
}

// stopTools stops the tool server, if it runs.
func (o *oauthState) stopTools() {
	if o.cmd == nil || o.done == nil {
		return
	}
	_ = o.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-o.done:
	case <-time.After(10 * time.Second):
		_ = o.cmd.Process.Kill()
		<-o.done
	}
}

// httpClient is an HTTPS client that checks the server is server, by its
// X.509-SVID, and presents who's (none for the zero ID).
func (d *demo) httpClient(who, server spiffeid.ID) (*http.Client, error) {
	f := d.files[d.alice]
	bundle, err := x509bundle.Load(d.stack.TrustDomain, f.BundlePath)
	if err != nil {
		return nil, err
	}
	tlsCfg := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(server))
	if !who.IsZero() {
		s, err := x509svid.Load(d.files[who].CertPath, d.files[who].KeyPath)
		if err != nil {
			return nil, err
		}
		tlsCfg = tlsconfig.MTLSClientConfig(s, bundle, tlsconfig.AuthorizeID(server))
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 10 * time.Second}, nil
}

func (d *demo) chainTools(ctx context.Context) error {
	o := &d.oauth
	for _, a := range []struct {
		id      spiffeid.ID
		purpose string
		level   string
	}{{o.planner, "plan research tasks", "senior"}, {o.researcher, "research for the planner", "senior"}, {o.summarizer, "summarise findings", "junior"}} {
		d.atfctl(ctx, true, append(d.as(d.alice), "agent", "register", a.id.String(), "--owner", "carol@example.org", "--purpose", a.purpose, "--role", "mcp-tools")...)
		d.place(ctx, a.id.String(), a.level)
	}
	ab, err := d.atfctlOut(ctx, append(d.as(o.planner), "delegate", "--to", o.researcher.String(), "--role", "mcp-tools", "--ttl", "30m", "--max-depth", "1", "-o", "json")...)
	if err != nil {
		return err
	}
	o.ab = jsonField(ab, "id")
	bc, err := d.atfctlOut(ctx, append(d.as(o.researcher), "delegate", "--to", o.summarizer.String(), "--role", "mcp-tools", "--parent", o.ab, "--ttl", "20m", "-o", "json")...)
	if err != nil {
		return err
	}
	o.bc = jsonField(bc, "id")
	fmt.Printf("   grant A → B %s, grant B → C %s\n", o.ab, o.bc)
	d.atfctl(ctx, true, append(d.as(d.alice), "lineage", "show", o.ab)...)
	return nil
}

// tokenReply is the token endpoint's answer.
type tokenReply struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope"`
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

// exchange asks atfd's token endpoint, as who (mutual TLS with its
// X.509-SVID), for a token for the tool server, under grant if not "".
func (d *demo) exchange(who spiffeid.ID, grant string) (tokenReply, error) {
	form := url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"}, "resource": {d.oauth.audience}}
	shown := "grant_type=urn:ietf:params:oauth:grant-type:token-exchange resource=" + d.oauth.audience
	if grant != "" {
		form.Set("grant_id", grant)
		shown += " grant_id=" + grant
	}
	fmt.Printf("   %sPOST %s/oauth2/token%s  (as %s, by its X.509-SVID)\n     %s\n", bold, d.oauth.issuer, reset, who, shown)
	hc, err := d.httpClient(who, d.stack.BrokerID)
	if err != nil {
		return tokenReply{}, err
	}
	resp, err := hc.PostForm(d.oauth.issuer+"/oauth2/token", form)
	if err != nil {
		return tokenReply{}, err
	}
	defer resp.Body.Close()
	var r tokenReply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return r, fmt.Errorf("the token endpoint's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("token exchange refused: %s %s: %s", resp.Status, r.Error, r.Description)
	}
	return r, nil
}

func (d *demo) callTools(ctx context.Context) error {
	o := &d.oauth
	r, err := d.exchange(o.summarizer, o.bc)
	if err != nil {
		return err
	}
	o.token, o.tokenExp = r.AccessToken, time.Now().Add(time.Duration(r.ExpiresIn)*time.Second)
	fmt.Printf("     → a Bearer token, scope %q, expires in %ds; its claims:\n%s", r.Scope, r.ExpiresIn, indent(indent(claimsOf(o.token))))
	text, status := d.callWhoami(o.token)
	want := fmt.Sprintf("%s → %s → %s", o.planner, o.researcher, o.summarizer)
	d.check(status == http.StatusOK && strings.HasPrefix(text, want+" "), "the tool server saw C acting for B acting for A (status %d)", status)
	own, err := d.exchange(o.planner, "")
	if err != nil {
		return err
	}
	o.ownA = own.AccessToken
	text, status = d.callWhoami(o.ownA)
	d.check(status == http.StatusOK && strings.HasPrefix(text, o.planner.String()+" "), "A on its own authority: %q (status %d)", text, status)
	return nil
}

// claimsOf is the JSON of a token's claims, for show: the tool server
// verifies them.
func claimsOf(token string) string {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "(not a JWT)"
	}
	var v map[string]any
	if err := decodeB64JSON(parts[1], &v); err != nil {
		return "(" + err.Error() + ")"
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// callWhoami calls the tool whoami with token: its text, or the refusal.
func (d *demo) callWhoami(token string) (string, int) {
	fmt.Printf("   %sPOST https://%s/mcp%s  Authorization: Bearer <token>  {\"method\": \"tools/call\", \"params\": {\"name\": \"whoami\"}}\n", bold, d.oauth.toolsAddr, reset)
	text, status, err := d.whoami(token)
	switch {
	case err != nil:
		text = err.Error()
	case status != http.StatusOK:
		fmt.Printf("%s", indent(fmt.Sprintf("%d %s", status, text)))
	default:
		fmt.Printf("%s", indent(text))
	}
	return text, status
}

// whoami calls the tool whoami with token, quietly.
func (d *demo) whoami(token string) (string, int, error) {
	hc, err := d.httpClient(spiffeid.ID{}, d.oauth.tools)
	if err != nil {
		return "", 0, err
	}
	req, err := http.NewRequest(http.MethodPost, "https://"+d.oauth.toolsAddr+"/mcp",
		strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}`))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.Header.Get("WWW-Authenticate"), resp.StatusCode, nil
	}
	var out struct {
		Result struct {
			Content []struct {
				Text string `json:"text"`
			} `json:"content"`
		} `json:"result"`
		Error *struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil || out.Error != nil || len(out.Result.Content) == 0 {
		return fmt.Sprintf("not a tool result (%v)", err), resp.StatusCode, nil
	}
	return out.Result.Content[0].Text, resp.StatusCode, nil
}

func (d *demo) revokeTools(ctx context.Context) error {
	o := &d.oauth
	start := time.Now()
	d.atfctl(ctx, true, append(d.as(d.alice), "revoke", "lineage", o.ab, "--reason", "drill: the researcher is compromised")...)
	returned := time.Now()
	// The next call, and more if the push has not arrived yet: how long
	// after the revocation the tool server first refused.
	var status int
	for status = http.StatusOK; status == http.StatusOK && time.Since(returned) < refuseWait; {
		if _, status, _ = d.whoami(o.token); status == http.StatusOK {
			time.Sleep(time.Millisecond)
		}
	}
	refused := time.Now()
	_, status = d.callWhoami(o.token)
	d.check(status == http.StatusUnauthorized, "refused (%d), %s after `atfctl revoke` started, %s after it returned; the token would have lived %s more",
		status, refused.Sub(start).Round(time.Millisecond), refused.Sub(returned).Round(time.Millisecond), time.Until(o.tokenExp).Round(time.Second))
	if lat, ok := d.pushLatency(); ok {
		fmt.Printf("   the tool server's log: %s\n", lat)
		d.check(true, "push latency (atfd's commit → the tool server applied the revocation)")
	} else {
		d.check(false, "the tool server logged no revocation (log: %s)", o.log)
	}
	text, status := d.callWhoami(o.ownA)
	d.check(status == http.StatusOK && strings.HasPrefix(text, o.planner.String()+" "), "A's own token still works (status %d)", status)
	return nil
}

// decodeB64JSON decodes a JWT segment (base64url, no padding) into v.
func decodeB64JSON(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// pushLatency is the tool server's log line of the revocation.
func (d *demo) pushLatency() (string, bool) {
	deadline := time.Now().Add(refuseWait)
	for time.Now().Before(deadline) {
		f, err := os.Open(d.oauth.log)
		if err != nil {
			return "", false
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if line := sc.Text(); strings.Contains(line, "msg=revocation") {
				f.Close()
				_, after, _ := strings.Cut(line, "msg=")
				return after, true
			}
		}
		f.Close()
		time.Sleep(50 * time.Millisecond)
	}
	return "", false
}
