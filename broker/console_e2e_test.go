package broker_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentictrust/atf/broker"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/oidcop"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// The web console in a real browser (Debian's Chromium, driven through
// chromedp), signed in through a real OpenID provider (zitadel/oidc's, on
// loopback), over a broker on the real SPIRE and Vault of the dev stack.

// consoleUsers are the people of the provider: one per console role, a
// second admin, and an approver who owns the test agents (the fixture
// registers them with owner owner@example.org).
var consoleUsers = []oidcop.User{
	{ID: "u-ann", Username: "ann", Password: "ann-pw", First: "Ann", Last: "Approver", Email: "ann@example.org", Groups: []string{"atf-approvers"}},
	{ID: "u-sam", Username: "sam", Password: "sam-pw", First: "Sam", Last: "Secops", Email: "sam@example.org", Groups: []string{"atf-secops"}},
	{ID: "u-aud", Username: "aud", Password: "aud-pw", First: "Audrey", Last: "Auditor", Email: "aud@example.org", Groups: []string{"atf-auditors"}},
	{ID: "u-adm", Username: "adm", Password: "adm-pw", First: "Ada", Last: "Admin", Email: "adm@example.org", Groups: []string{"atf-admins"}},
	{ID: "u-adm2", Username: "adm2", Password: "adm2-pw", First: "Alan", Last: "Admin", Email: "adm2@example.org", Groups: []string{"atf-admins"}},
	{ID: "u-own", Username: "own", Password: "own-pw", First: "Olive", Last: "Owner", Email: "owner@example.org", Groups: []string{"atf-approvers"}},
	{ID: "u-none", Username: "none", Password: "none-pw", First: "Nora", Last: "Nobody", Email: "none@example.org", Groups: []string{"staff"}},
}

// consoleEnv is a broker with its console, the provider, and a browser.
type consoleEnv struct {
	*approvalEnv
	url    string
	op     *oidcop.Provider
	alloc  context.Context
	shots  string
	offset *atomic.Int64 // added to the broker's clock
}

func newConsoleEnv(t *testing.T) *consoleEnv {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the console's browser tests need Debian's chromium: run 'make dev-tools' (as root, it installs it): %v", err)
	}
	f := brokertest.Setup(t)
	addr, err := dev.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + addr
	op, err := oidcop.Start("127.0.0.1:0", consoleUsers, oidcop.Client{ID: "atf-console-" + t.Name(), Secret: "console-secret",
		RedirectURIs: []string{base + "/auth/callback"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = op.Close() })
	dir := t.TempDir()
	secret := filepath.Join(dir, "client-secret")
	if err := os.WriteFile(secret, []byte("console-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := f.Config(t, dir)
	cfg.Console = config.ConsoleConfig{ListenAddr: addr, URL: base,
		OIDC:  config.OIDCConfig{Issuer: op.Issuer, ClientID: "atf-console-" + t.Name(), ClientSecretFile: secret, Scopes: []string{"profile", "email", oidcop.GroupsScope}},
		Roles: map[string][]string{"admin": {"atf-admins"}, "approver": {"atf-approvers"}, "security_operator": {"atf-secops"}, "auditor": {"atf-auditors"}}}
	offset := &atomic.Int64{}
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	approver := f.ID(t, "approver")
	cfg.Approvals.Approvers = []string{approver.String()}
	d := &delegEnv{f: f, cfg: cfg}
	d.b = f.StartWith(t, cfg, broker.WithClock(clock))
	d.admin = d.b.Dial(t, f.Admin).Admin
	e := &consoleEnv{approvalEnv: &approvalEnv{delegEnv: d, approver: approver, approvals: d.b.Dial(t, approver).Approvals},
		url: base, op: op, offset: offset}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-sync", true), chromedp.UserDataDir(filepath.Join(dir, "chromium")),
		chromedp.WindowSize(1400, 1000))
	alloc, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	// The browser starts with the first tab; each person then gets a
	// browser context of their own in it.
	root, cancelRoot := chromedp.NewContext(alloc)
	t.Cleanup(cancelRoot)
	if err := chromedp.Do(root, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	e.alloc = root
	e.shots = os.Getenv("ATF_SCREENSHOTS")
	if e.shots == "" {
		e.shots = filepath.Join(os.TempDir(), "atf-console-screenshots")
	}
	if err := os.MkdirAll(e.shots, 0o755); err != nil {
		t.Fatal(err)
	}
	return e
}

// browser is a tab of its own browser context (its own cookies): one
// person's browser.
func (e *consoleEnv) browser(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(e.alloc, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	ctx, cancel2 := context.WithTimeout(ctx, time.Minute)
	t.Cleanup(cancel2)
	return ctx
}

// run runs actions in ctx, failing t with what the page said if one fails.
func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v (%s)", what, err, pageSays(ctx))
	}
}

// get runs one action that returns a value, failing t if it fails.
func get[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v (%s)", what, err, pageSays(ctx))
	}
	return v
}

// pageSays is where the tab is and what its page says, for a failure.
func pageSays(ctx context.Context) string {
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(short, chromedp.Location())
	body, _ := chromedp.Run(short, chromedp.Text(chromedp.CSS("body")))
	return fmt.Sprintf("page %s: %.600s", loc, body)
}

// signIn signs user in at the provider through the console's login, and
// waits for the console's first page.
func (e *consoleEnv) signIn(t *testing.T, ctx context.Context, user, next string) {
	t.Helper()
	pw := ""
	for _, u := range consoleUsers {
		if u.Username == user {
			pw = u.Password
		}
	}
	do(t, ctx, "sign in as "+user,
		chromedp.Navigate(e.url+"/login?next="+url.QueryEscape(next)),
		chromedp.WaitVisible(chromedp.ID("username")),
		chromedp.SendKeys(chromedp.ID("username"), user),
		chromedp.SendKeys(chromedp.ID("password"), pw),
		chromedp.Click(chromedp.CSS(`button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.ID("who-name")))
}

func (e *consoleEnv) shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(e.shots, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Logf("screenshot %s: %v", name, err)
	}
}

// text is the text of the element sel.
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	return get(t, ctx, "read "+sel, chromedp.Text(chromedp.CSS(sel)))
}

// cookie is the browser's session cookie for the console.
func (e *consoleEnv) cookie(t *testing.T, ctx context.Context) *http.Cookie {
	t.Helper()
	res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{e.url}})
	if err != nil {
		t.Fatalf("read cookies: %v", err)
	}
	for _, c := range res.Cookies {
		if c.Name == "__Host-atf_session" {
			if !c.HTTPOnly || !c.Secure || c.SameSite != network.CookieSameSiteStrict {
				t.Errorf("session cookie: HttpOnly %v, Secure %v, SameSite %v; want HttpOnly, Secure, Strict", c.HTTPOnly, c.Secure, c.SameSite)
			}
			return &http.Cookie{Name: c.Name, Value: c.Value}
		}
	}
	t.Fatal("no session cookie after sign-in")
	return nil
}

// post posts form to path with cookie, as a forger or a script would,
// returning the status and body.
func (e *consoleEnv) post(t *testing.T, cookie *http.Cookie, path string, form url.Values, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, b.String()
}

// csrf is the CSRF token of the page open in ctx.
func csrf(t *testing.T, ctx context.Context) string {
	t.Helper()
	return get(t, ctx, "read the CSRF token", chromedp.AttributeValue(chromedp.CSS(`input[name="csrf"]`), "value")).Value
}

func TestConsole(t *testing.T) {
	e := newConsoleEnv(t)
	humanOf := func(id string) string { return "oidc:" + e.op.Issuer + "#" + id }

	t.Run("an approver approves a waiting Junior request and the agent gets its Vault token", func(t *testing.T) {
		junior := e.agent(t, e.f.ID(t, "junior"), brokerv1.Level_LEVEL_JUNIOR, reportsRW...)
		ap := junior.requestWrite(t, "rotate the weekly report")
		wait := junior.waitApproval(t, ap.GetId())
		wantWaitStatus(t, wait, brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING)

		// The agent's owner, an approver too, may not approve it.
		owner := e.browser(t)
		e.signIn(t, owner, "own", "/approvals")
		row := fmt.Sprintf(`tr[data-approval="%s"]`, ap.GetId())
		do(t, owner, "owner approves",
			chromedp.WaitVisible(chromedp.CSS(row)),
			chromedp.SendKeys(chromedp.CSS(row+" input.reason"), "mine"),
			chromedp.Click(chromedp.CSS(row+" button.approve")),
			chromedp.WaitVisible(chromedp.ID("error")))
		if msg := text(t, owner, "#error"); !strings.Contains(msg, "owns") {
			t.Errorf("the owner's approval: %q, want a refusal saying they own the agent", msg)
		}

		ctx := e.browser(t)
		e.signIn(t, ctx, "ann", "/approvals")
		if got := text(t, ctx, row); !strings.Contains(got, "reports-write") || !strings.Contains(got, "rotate the weekly report") {
			t.Errorf("approvals row = %q, want the role and the justification", got)
		}
		e.shot(t, ctx, "approvals")
		do(t, ctx, "approve",
			chromedp.SendKeys(chromedp.CSS(row+" input.reason"), "weekly rotation is expected"),
			chromedp.Click(chromedp.CSS(row+" button.approve")),
			chromedp.WaitNotPresent(chromedp.CSS(row)))
		got := wantWaitStatus(t, wait, brokerv1.ApprovalStatus_APPROVAL_STATUS_APPROVED)
		if got.GetDecidedBy() != humanOf("u-ann") {
			t.Errorf("decided by %q, want the verified person %q", got.GetDecidedBy(), humanOf("u-ann"))
		}
		cred, err := junior.redeem(t.Context(), "reports-write", ap.GetId())
		if err != nil {
			t.Fatalf("redeem the approved request: %v", err)
		}
		if _, err := e.f.Lookup(t, cred.GetToken()); err != nil {
			t.Errorf("the approved credential is not alive in Vault: %v", err)
		}
		recs, err := e.admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "approval_approved"})
		if err != nil || len(recs.GetRecords()) == 0 {
			t.Fatalf("audit of the approval: %v, %v", recs, err)
		}
		r := recs.GetRecords()[len(recs.GetRecords())-1]
		if r.GetActor() != humanOf("u-ann") || r.GetDetail()["actor_name"] != "Ann Approver" {
			t.Errorf("approval audited with actor %q, name %q; want %q, Ann Approver", r.GetActor(), r.GetDetail()["actor_name"], humanOf("u-ann"))
		}
	})

	t.Run("the agents page counts the live credentials each agent holds itself", func(t *testing.T) {
		ch := e.chain(t)
		ch.below(t) // one each for B, C and D, under the chain's grants
		for range 2 {
			ch.a.mustFetch(t, "reports-read", "")
		}
		ctx := e.browser(t)
		e.signIn(t, ctx, "aud", "/")
		live := func(step string, want map[spiffeid.ID]string) {
			t.Helper()
			do(t, ctx, step, chromedp.Navigate(e.url+"/"), chromedp.WaitVisible(chromedp.ID("agents")))
			for id, n := range want {
				if got := text(t, ctx, fmt.Sprintf(`tr[data-agent="%s"] td.num`, id)); got != n {
					t.Errorf("%s: %s's live credentials = %q, want %s (its own, not its delegatees')", step, id, got, n)
				}
			}
		}
		live("before", map[spiffeid.ID]string{ch.a.id: "2", ch.b.id: "1", ch.c.id: "1", ch.d.id: "1"})
		e.revokeLineage(t, ch.ab.GetId(), "agents page")
		live("after revoking A→B", map[spiffeid.ID]string{ch.a.id: "2", ch.b.id: "0", ch.c.id: "0", ch.d.id: "0"})
	})

	t.Run("a security operator revokes a subtree in the lineage graph and its tokens die in Vault", func(t *testing.T) {
		ch := e.chain(t)
		below := ch.below(t)
		own := map[string]string{"A": ch.a.mustFetch(t, "reports-read", "").GetToken()}
		ctx := e.browser(t)
		e.signIn(t, ctx, "sam", "/lineage?id="+url.QueryEscape(ch.a.id.String()))
		do(t, ctx, "lineage graph", chromedp.WaitVisible(chromedp.ID("lineage-graph")))
		nodes := get(t, ctx, "graph nodes", chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("#lineage-graph g.node")).map(n => n.dataset.agent)`))
		if len(nodes) != 4 {
			t.Errorf("graph nodes = %v, want A, B, C, D", nodes)
		}
		e.shot(t, ctx, "lineage")
		link := fmt.Sprintf(`tr[data-grant="%s"] a.revoke-subtree`, ch.ab.GetId())
		do(t, ctx, "open the confirmation", chromedp.Click(chromedp.CSS(link)), chromedp.WaitVisible(chromedp.ID("will-die")))
		names := text(t, ctx, "#will-die")
		for _, id := range []string{ch.b.id.String(), ch.c.id.String(), ch.d.id.String()} {
			if !strings.Contains(names, id) {
				t.Errorf("the confirmation does not name %s among what will die: %q", id, names)
			}
		}
		e.shot(t, ctx, "revoke-confirm")
		do(t, ctx, "confirm",
			chromedp.SendKeys(chromedp.ID("reason"), "compromised B"),
			chromedp.Click(chromedp.ID("confirm-revoke")),
			chromedp.WaitVisible(chromedp.ID("revoked-summary")))
		e.wantDead(t, below)
		e.wantAlive(t, own)
		e.wantRevokedLineage(t, ch.ab.GetId(), 3)
	})

	t.Run("an auditor sees no kill button and a forged POST is refused", func(t *testing.T) {
		victim := e.register(t, "victim", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
		ctx := e.browser(t)
		e.signIn(t, ctx, "aud", "/agent?id="+url.QueryEscape(victim.id.String()))
		do(t, ctx, "agent page", chromedp.WaitVisible(chromedp.ID("agent-id")))
		buttons := get(t, ctx, "find buttons", chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("#kill-agent, #kill-lineage, #signoff, #kill-all")).map(b => b.id)`))
		if len(buttons) != 0 {
			t.Errorf("the auditor's agent page offers %v", buttons)
		}
		e.shot(t, ctx, "agent-auditor")
		token := csrf(t, ctx) // the logout form's: a valid token of this session
		ck := e.cookie(t, ctx)
		code, body := e.post(t, ck, "/kill", url.Values{"csrf": {token}, "agent": {victim.id.String()}, "reason": {"forged"}}, nil)
		if code != http.StatusForbidden || !strings.Contains(body, "security_operator") {
			t.Errorf("the auditor's forged kill: %d %.200q; want 403 naming the role it needs", code, body)
		}
		// A security operator's session, but a request from another site
		// or without the form's token.
		sam := e.browser(t)
		e.signIn(t, sam, "sam", "/kill")
		samToken, samCookie := csrf(t, sam), e.cookie(t, sam)
		for name, c := range map[string]struct {
			form   url.Values
			header map[string]string
		}{
			"no token":            {url.Values{"agent": {victim.id.String()}, "reason": {"x"}}, nil},
			"wrong token":         {url.Values{"csrf": {token}, "agent": {victim.id.String()}, "reason": {"x"}}, nil},
			"from another site":   {url.Values{"csrf": {samToken}, "agent": {victim.id.String()}, "reason": {"x"}}, map[string]string{"Sec-Fetch-Site": "cross-site"}},
			"from another origin": {url.Values{"csrf": {samToken}, "agent": {victim.id.String()}, "reason": {"x"}}, map[string]string{"Origin": "http://evil.example"}},
		} {
			if code, body := e.post(t, samCookie, "/kill", c.form, c.header); code != http.StatusForbidden || !strings.Contains(body, "CSRF") {
				t.Errorf("%s: %d %.200q; want 403 CSRF", name, code, body)
			}
		}
		if code, _ := e.post(t, nil, "/kill", url.Values{"csrf": {samToken}, "agent": {victim.id.String()}, "reason": {"x"}}, nil); code != http.StatusUnauthorized {
			t.Errorf("a POST without the session cookie: %d, want 401", code)
		}
		a, err := e.admin.GetAgent(t.Context(), &adminv1.GetAgentRequest{SpiffeId: victim.id.String()})
		if err != nil || a.GetAgent().GetKill() != nil {
			t.Fatalf("after the forged POSTs the agent is %v (%v); want it untouched", a.GetAgent().GetKill(), err)
		}
		// The real form works for the operator, and names what dies first.
		do(t, sam, "kill through the form",
			chromedp.Navigate(e.url+"/agent?id="+url.QueryEscape(victim.id.String())),
			chromedp.Click(chromedp.ID("kill-agent")),
			chromedp.WaitVisible(chromedp.ID("will-die")),
			chromedp.SendKeys(chromedp.ID("reason"), "suspicious"),
			chromedp.Click(chromedp.ID("confirm-kill")),
			chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#killed tr[data-agent="%s"]`, victim.id))))
		if _, err := victim.fetch(t.Context(), "reports-read", ""); err == nil {
			t.Error("the killed agent still gets credentials")
		}
	})

	t.Run("two sign-offs by the same person are one signer", func(t *testing.T) {
		senior := e.register(t, "senior", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
		page := "/agent?id=" + url.QueryEscape(senior.id.String())
		signOff := func(ctx context.Context, risk string) {
			do(t, ctx, "sign off", chromedp.Navigate(e.url+page), chromedp.WaitVisible(chromedp.ID("risk")),
				chromedp.SendKeys(chromedp.ID("risk"), risk), chromedp.Click(chromedp.ID("signoff")))
			waitText(t, ctx, "#signoffs", risk)
		}
		adm := e.browser(t)
		e.signIn(t, adm, "adm", page)
		signOff(adm, "accepted once")
		signOff(adm, "accepted twice")
		check := func() string {
			r, err := e.admin.GetAgent(t.Context(), &adminv1.GetAgentRequest{SpiffeId: senior.id.String()})
			if err != nil || r.GetAgent().GetLevel() != brokerv1.Level_LEVEL_SENIOR {
				t.Fatalf("agent: %v %v", r, err)
			}
			return text(t, adm, "body")
		}
		if body := check(); !strings.Contains(body, "1 approver ("+humanOf("u-adm")+") for principal, needs 2") {
			t.Errorf("after two sign-offs by one person the gate says: %s", gateLine(body))
		}
		e.shot(t, adm, "agent-gates")
		adm2 := e.browser(t)
		e.signIn(t, adm2, "adm2", page)
		signOff(adm2, "accepted by another")
		do(t, adm, "reload", chromedp.Navigate(e.url+page), chromedp.WaitVisible(chromedp.ID("agent-id")))
		if body := check(); !strings.Contains(body, "2 approvers") {
			t.Errorf("after a second person's sign-off the gate says: %s", gateLine(body))
		}
	})

	t.Run("a person without a console role is refused at sign-in", func(t *testing.T) {
		ctx := e.browser(t)
		do(t, ctx, "sign in", chromedp.Navigate(e.url+"/login"), chromedp.WaitVisible(chromedp.ID("username")),
			chromedp.SendKeys(chromedp.ID("username"), "none"), chromedp.SendKeys(chromedp.ID("password"), "none-pw"),
			chromedp.Click(chromedp.CSS(`button[type="submit"]`)), chromedp.WaitVisible(chromedp.ID("error")))
		if msg := text(t, ctx, "#error"); !strings.Contains(msg, "holds no console role") {
			t.Errorf("sign-in without a role: %q", msg)
		}
	})

	t.Run("the global kill switch needs a fresh sign-in; release is for security operators; sessions expire; logout ends the session", func(t *testing.T) {
		sam := e.browser(t)
		e.signIn(t, sam, "sam", "/kill")
		e.offset.Store(int64(6 * time.Minute)) // past console.reauth_after (5m)
		do(t, sam, "kill all with a stale sign-in",
			chromedp.Navigate(e.url+"/kill"),
			chromedp.SendKeys(chromedp.ID("kill-all-reason"), "drill"),
			chromedp.Click(chromedp.ID("kill-all")),
			chromedp.WaitVisible(chromedp.ID("reauth")))
		do(t, sam, "sign in again",
			chromedp.Click(chromedp.ID("reauth-link")),
			chromedp.WaitVisible(chromedp.ID("username")),
			chromedp.SendKeys(chromedp.ID("username"), "sam"), chromedp.SendKeys(chromedp.ID("password"), "sam-pw"),
			chromedp.Click(chromedp.CSS(`button[type="submit"]`)),
			chromedp.WaitVisible(chromedp.ID("who-name")),
			chromedp.Navigate(e.url+"/kill"),
			chromedp.SendKeys(chromedp.ID("kill-all-reason"), "drill"),
			chromedp.Click(chromedp.ID("kill-all")),
			chromedp.WaitVisible(chromedp.ID("release-all")))
		e.shot(t, sam, "kill-switch")
		ks, err := e.b.Dial(t, e.f.Admin).Response.GetKillSwitch(t.Context(), &adminv1.GetKillSwitchRequest{})
		if err != nil || ks.GetGlobal() == nil || ks.GetGlobal().GetBy() != humanOf("u-sam") {
			t.Fatalf("global kill switch = %v (%v), want on, by %s", ks.GetGlobal(), err, humanOf("u-sam"))
		}
		// An admin may pull the switch but not release it.
		adm := e.browser(t)
		e.signIn(t, adm, "adm", "/kill")
		n := get(t, adm, "look for release", chromedp.Evaluate[int](`document.querySelectorAll("#release-all, button.release").length`))
		if n != 0 {
			t.Errorf("an admin is offered %d release buttons; release is for security operators", n)
		}
		// The same selector finds the operator's (the agent killed above
		// is listed with its release button).
		if n := get(t, sam, "look for release", chromedp.Evaluate[int](`document.querySelectorAll("#release-all, button.release").length`)); n < 2 {
			t.Errorf("the security operator is offered %d release buttons, want the global one and the killed agent's", n)
		}
		if code, body := e.post(t, e.cookie(t, adm), "/release/all", url.Values{"csrf": {csrf(t, adm)}, "reason": {"x"}}, nil); code != http.StatusForbidden {
			t.Errorf("an admin's release: %d %.200q, want 403", code, body)
		}
		do(t, sam, "release",
			chromedp.SendKeys(chromedp.CSS(`form[action="/release/all"] input[name="reason"]`), "drill over"),
			chromedp.Click(chromedp.ID("release-all")),
			chromedp.WaitVisible(chromedp.ID("kill-all")))

		// Logout: the cookie copied before it no longer works.
		ck := e.cookie(t, adm)
		do(t, adm, "logout", chromedp.Click(chromedp.ID("logout")), chromedp.WaitVisible(chromedp.ID("signin")))
		if code, _ := e.post(t, ck, "/kill/all", url.Values{"csrf": {"x"}, "reason": {"x"}}, nil); code != http.StatusUnauthorized {
			t.Errorf("a signed-out session's cookie: %d, want 401", code)
		}
		// Expiry: past console.session_ttl (30m from sam's second sign-in,
		// made at +6m) the session is over.
		e.offset.Store(int64(37 * time.Minute))
		do(t, sam, "after expiry", chromedp.Navigate(e.url+"/kill"), chromedp.WaitVisible(chromedp.ID("username")))
		loc := get(t, sam, "location", chromedp.Location())
		if !strings.HasPrefix(loc, e.op.Issuer) {
			t.Errorf("an expired session's page went to %s, want the provider's sign-in", loc)
		}
		e.offset.Store(0)
	})

	t.Run("pages carry a strict Content-Security-Policy and no third-party request", func(t *testing.T) {
		resp, err := http.Get(e.url + "/signed-out")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		csp := resp.Header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("CSP %q lacks %q", csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("CSP %q allows inline code", csp)
		}
		ctx := e.browser(t)
		var (
			mu    sync.Mutex
			hosts []string
			own   int // requests to the console: proof the listener hears them
		)
		do(t, ctx, "open a tab", chromedp.Navigate("about:blank"))
		if err := chromedp.Listen(ctx, func(ev any) {
			if r, ok := ev.(*network.EventRequestWillBeSent); ok {
				u, err := url.Parse(r.Request.URL)
				if err != nil || u.Scheme == "about" || u.Scheme == "data" || strings.HasPrefix(r.Request.URL, e.op.Issuer) {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if u.Host == strings.TrimPrefix(e.url, "http://") {
					own++
				} else {
					hosts = append(hosts, u.Host)
				}
			}
		}); err != nil {
			t.Fatal(err)
		}
		e.signIn(t, ctx, "aud", "/")
		for _, p := range []string{"/", "/approvals", "/kill", "/audit", "/policy", "/events"} {
			do(t, ctx, "open "+p, chromedp.Navigate(e.url+p), chromedp.WaitVisible(chromedp.CSS("main")))
		}
		// The page follows the broker's events: a kill made elsewhere
		// appears in it.
		do(t, ctx, "live events", chromedp.WaitVisible(chromedp.ID("events-state")),
			chromedp.Poll[chromedp.Void](`document.getElementById("events-state").textContent === "Live."`, chromedp.WithPollingTimeout(10*time.Second)))
		watched := e.register(t, "watched", brokerv1.Level_LEVEL_INTERN, "reports-read")
		if _, err := e.b.Dial(t, e.f.Admin).Response.Kill(t.Context(), &adminv1.KillRequest{
			Target: &adminv1.KillRequest_AgentId{AgentId: watched.id.String()}, Reason: "events page"}); err != nil {
			t.Fatal(err)
		}
		do(t, ctx, "the kill in the live events", chromedp.Poll[chromedp.Void](`[...document.querySelectorAll("#events tbody tr")].some(r => r.textContent.includes("`+
			watched.id.String()+`") && r.textContent.includes("kill"))`, chromedp.WithPollingTimeout(10*time.Second)))
		e.shot(t, ctx, "events")
		do(t, ctx, "audit", chromedp.Navigate(e.url+"/audit"), chromedp.WaitVisible(chromedp.ID("chain")))
		if s := text(t, ctx, "#chain"); !strings.Contains(s, "Hash chain verified") {
			t.Errorf("audit page: %q", s)
		}
		e.shot(t, ctx, "audit")
		mu.Lock()
		defer mu.Unlock()
		if len(hosts) != 0 {
			t.Errorf("the console made requests to %v", hosts)
		}
		if own < 8 {
			t.Errorf("the browser was seen making %d requests to the console, want every page and its assets: the check above saw nothing", own)
		}
	})
}

// waitText waits until the element sel's text contains want.
func waitText(t *testing.T, ctx context.Context, sel, want string) {
	t.Helper()
	expr := fmt.Sprintf(`(document.querySelector(%q) || {innerText: ""}).innerText.includes(%q)`, sel, want)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr)); err == nil && ok {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s never said %q (%s)", sel, want, pageSays(ctx))
}

// gateLine is the sign-off check's line of an agent page's text.
func gateLine(body string) string {
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, "approver") {
			return l
		}
	}
	return "(no sign-off check on the page)"
}
