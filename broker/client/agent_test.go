package client_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// The Agent against the real SPIRE, Vault and broker of the shared dev
// stack.

func TestMain(m *testing.M) { devtest.Main(m) }

// testAgent is an Agent whose log is kept, so that the test can check no
// token it was handed ever reached it.
type testAgent struct {
	*client.Agent
	logs *syncBuffer

	mu     sync.Mutex
	tokens []string
}

// newAgent starts an Agent for id on the broker at addr, closed when t ends.
func newAgent(t *testing.T, f *brokertest.Fixture, addr string, id spiffeid.ID, opts ...client.Option) *testAgent {
	t.Helper()
	return newAgentAt(t, f, client.Config{Addr: addr}, id, opts...)
}

// newAgentAt is newAgent at the addresses of at.
func newAgentAt(t *testing.T, f *brokertest.Fixture, at client.Config, id spiffeid.ID, opts ...client.Option) *testAgent {
	t.Helper()
	s := f.SVID(t, id)
	ta := &testAgent{logs: &syncBuffer{}}
	t.Cleanup(func() {
		for _, tok := range ta.tokens {
			if strings.Contains(ta.logs.String(), tok) {
				t.Errorf("a token reached the log:\n%s", ta.logs)
			}
		}
	})
	log := slog.New(slog.NewTextHandler(io.MultiWriter(ta.logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := client.New(t.Context(), client.Config{
		Addr:        at.Addr,
		Addrs:       at.Addrs,
		BrokerID:    f.Stack.BrokerID.String(),
		SVIDFile:    s.CertPath,
		SVIDKeyFile: s.KeyPath,
		BundleFile:  s.BundlePath,
	}, append([]client.Option{client.WithLogger(log)}, opts...)...)
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	ta.Agent = a
	return ta
}

// credential returns the agent's credential for role, failing t on error.
func (a *testAgent) credential(t *testing.T, role string) *brokerv1.Credential {
	t.Helper()
	c, err := a.Credential(t.Context(), role)
	if err != nil {
		t.Fatalf("Credential(%s): %v", role, err)
	}
	a.seen(c)
	return c
}

func (a *testAgent) seen(c *brokerv1.Credential) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c.GetToken() != "" {
		a.tokens = append(a.tokens, c.GetToken())
	}
}

// newCredential polls role's credential until it is another than old,
// failing t after d.
func (a *testAgent) newCredential(t *testing.T, role string, old *brokerv1.Credential, d time.Duration) *brokerv1.Credential {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if c := a.credential(t, role); c.GetAccessor() != old.GetAccessor() {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("Credential(%s) still returns %s after %s", role, old.GetAccessor(), d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// issued counts the broker's credential_issued records for id.
func issued(t *testing.T, b *brokertest.Broker, id spiffeid.ID) int {
	t.Helper()
	r, err := b.Dial(t, b.F.Admin).Admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "credential_issued", Agent: id.String()})
	if err != nil {
		t.Fatalf("QueryAudit: %v", err)
	}
	return len(r.GetRecords())
}

// revokeLineage revokes everything id holds, as the admin.
func revokeLineage(t *testing.T, b *brokertest.Broker, id spiffeid.ID) {
	t.Helper()
	_, err := b.Dial(t, b.F.Admin).Admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{
		Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: id.String()}, Reason: "suspected compromise",
	})
	if err != nil {
		t.Fatalf("RevokeLineage: %v", err)
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  client.Option
		want string
	}{
		{"refresh at expiry", client.WithRefreshBefore(0), "client: refresh fraction 0 is not between 0 and 1"},
		{"refresh at issue", client.WithRefreshBefore(1), "client: refresh fraction 1 is not between 0 and 1"},
		{"refresh fraction above 1", client.WithRefreshBefore(1.5), "client: refresh fraction 1.5 is not between 0 and 1"},
		{"negative TTL", client.WithTTL(-time.Second), "client: negative TTL -1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := client.New(t.Context(), client.Config{Addr: "127.0.0.1:1"}, tc.opt)
			if err == nil || err.Error() != tc.want {
				t.Errorf("New: %v, want %q", err, tc.want)
			}
		})
	}
}

// The first calls for a role share one fetch, later ones get the cached
// credential, the token works in Vault, and broker errors come back as
// their gRPC status.
func TestAgentCachesAndSharesFetches(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	id := f.ID(t, "reader")
	b.Register(t, id, brokerv1.Level_LEVEL_INTERN, "reports-read")
	a := newAgent(t, f, b.Addr, id)

	const callers = 16
	creds := make([]*brokerv1.Credential, callers)
	errs := make([]error, callers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			<-start
			creds[i], errs[i] = a.Credential(t.Context(), "reports-read")
		})
	}
	close(start)
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		a.seen(creds[i])
		if creds[i].GetAccessor() == "" || creds[i].GetAccessor() != creds[0].GetAccessor() {
			t.Fatalf("caller %d got accessor %q, caller 0 %q; want one shared credential", i, creds[i].GetAccessor(), creds[0].GetAccessor())
		}
	}
	if n := issued(t, b, id); n != 1 {
		t.Errorf("%d concurrent first calls made %d fetches, want 1", callers, n)
	}

	if again := a.credential(t, "reports-read"); again.GetAccessor() != creds[0].GetAccessor() {
		t.Errorf("a later call got %s, want the cached %s", again.GetAccessor(), creds[0].GetAccessor())
	}
	if n := issued(t, b, id); n != 1 {
		t.Errorf("a cached credential was fetched again: %d fetches", n)
	}
	if s, err := f.VaultAs(t, creds[0].GetToken()).KVv2("secret").Get(t.Context(), "demo/reports"); err != nil || s.Data["summary"] == nil {
		t.Errorf("reading secret/demo/reports with the credential: %v, %v", s, err)
	}
	// A caller changing what it got does not change the cache.
	creds[0].Token = "changed"
	if c := a.credential(t, "reports-read"); c.GetToken() == "changed" {
		t.Error("a caller's change to its credential reached the cache")
	}

	_, err := a.Credential(t.Context(), "payroll-read")
	brokertest.WantCode(t, err, codes.PermissionDenied, `role "payroll-read" is not in agent`)

	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := a.Credential(t.Context(), "payroll-read"); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Credential after Close: %v, want ErrClosed", err)
	}
}

// A short-lived credential is replaced before it expires, while it is still
// valid, and not long before.
func TestAgentRefreshesBeforeExpiry(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	id := f.ID(t, "reader")
	b.Register(t, id, brokerv1.Level_LEVEL_INTERN, "reports-read")
	const ttl = 4 * time.Second
	a := newAgent(t, f, b.Addr, id, client.WithTTL(ttl))

	fetched := time.Now()
	first := a.credential(t, "reports-read")
	if life := first.GetExpiresAt().AsTime().Sub(first.GetIssuedAt().AsTime()); life != ttl {
		t.Fatalf("credential lives %s, want the %s asked for", life, ttl)
	}
	next := a.newCredential(t, "reports-read", first, ttl)
	after := time.Since(fetched)
	if f.Dead(t, first.GetToken()) {
		t.Errorf("the credential was replaced %s after it was fetched, once Vault no longer knew it", after)
	}
	// Refreshing when 30% ±10% of the lifetime remains: after 2.68–2.92 s.
	if after < ttl/2 {
		t.Errorf("the credential was replaced %s after it was fetched, want when about 30%% of its %s remained", after, ttl)
	}
	if f.Dead(t, next.GetToken()) {
		t.Error("Vault does not know the refreshed credential")
	}
	if n := issued(t, b, id); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
}

// A revoked credential is dropped within a second, and the next call
// fetches one that works.
func TestAgentDropsRevokedCredential(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	id := f.ID(t, "reader")
	b.Register(t, id, brokerv1.Level_LEVEL_INTERN, "reports-read")
	a := newAgent(t, f, b.Addr, id)

	old := a.credential(t, "reports-read")
	revokeLineage(t, b, id)
	next := a.newCredential(t, "reports-read", old, time.Second)
	if !f.Dead(t, old.GetToken()) {
		t.Error("Vault still knows the revoked credential")
	}
	if f.Dead(t, next.GetToken()) {
		t.Error("Vault does not know the credential fetched after the revocation")
	}
	if !strings.Contains(a.logs.String(), old.GetAccessor()) {
		t.Errorf("the log does not say which credential was revoked:\n%s", a.logs)
	}
}

// When the broker restarts, the agent reconnects its watch, drops what it
// held (revocations may have been missed while the watch was down) and
// fetches anew; revocations after the restart reach it.
func TestAgentSurvivesBrokerRestart(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	b := f.Start(t, cfg)
	id := f.ID(t, "reader")
	b.Register(t, id, brokerv1.Level_LEVEL_INTERN, "reports-read")
	r := newRelay(t, b.Addr)
	a := newAgent(t, f, r.addr(), id)

	old := a.credential(t, "reports-read")
	b.Stop()
	if c := a.credential(t, "reports-read"); c.GetAccessor() != old.GetAccessor() {
		t.Errorf("with the broker down, Credential returned %s, want the cached %s", c.GetAccessor(), old.GetAccessor())
	}
	b = f.Start(t, cfg)
	r.to(b.Addr)

	// Reconnect backoff is 1 s, 2 s, 4 s…, plus gRPC's own.
	next := a.newCredential(t, "reports-read", old, 30*time.Second)
	if f.Dead(t, next.GetToken()) {
		t.Error("Vault does not know the credential fetched after the restart")
	}
	if !strings.Contains(a.logs.String(), "revocation watch restored") {
		t.Errorf("the log does not say the watch was restored:\n%s", a.logs)
	}

	revokeLineage(t, b, id)
	a.newCredential(t, "reports-read", next, time.Second)
	if !f.Dead(t, next.GetToken()) {
		t.Error("Vault still knows the credential revoked after the restart")
	}
	// The broker's graceful stop waits (up to 5 s) for open watches; closing
	// the agent first ends its watch.
	a.Close()
}

// A Junior's write waits for an approver and is then redeemed, once, and
// not refreshed (its successor would need another approval); a denial, or
// a pending request when the agent does not wait, comes back as an
// *ApprovalError.
func TestAgentApprovals(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	approver := f.ID(t, "approver")
	cfg.Approvals.Approvers = []string{approver.String()}
	b := f.Start(t, cfg)
	approvals := b.Dial(t, approver).Approvals

	for _, tc := range []struct {
		name    string
		opts    []client.Option
		verdict adminv1.Verdict
		wantErr string // with ID for the request's id
	}{
		{"approved", []client.Option{client.WithTTL(3 * time.Second)}, adminv1.Verdict_VERDICT_APPROVE, ""},
		{"denied", nil, adminv1.Verdict_VERDICT_DENY, "client: approval ID for role reports-write is denied: not this quarter"},
		{"pending without waiting", []client.Option{client.WithApprovalWait(false)}, adminv1.Verdict_VERDICT_UNSPECIFIED, "client: approval ID for role reports-write is pending"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id := f.ID(t, "junior")
			b.Register(t, id, brokerv1.Level_LEVEL_JUNIOR, "reports-read", "reports-write")
			a := newAgent(t, f, b.Addr, id, tc.opts...)

			type result struct {
				cred *brokerv1.Credential
				err  error
			}
			got := make(chan result, 1)
			go func() {
				c, err := a.Credential(t.Context(), "reports-write")
				got <- result{c, err}
			}()
			ap := pending(t, approvals, id)
			if tc.verdict != adminv1.Verdict_VERDICT_UNSPECIFIED {
				select {
				case r := <-got:
					t.Fatalf("Credential returned before the request was decided: %v, %v", r.cred.GetAccessor(), r.err)
				default:
				}
				if _, err := approvals.DecideApproval(t.Context(), &adminv1.DecideApprovalRequest{
					ApprovalId: ap.GetId(), Verdict: tc.verdict, Reason: "not this quarter",
				}); err != nil {
					t.Fatalf("DecideApproval: %v", err)
				}
			}
			var r result
			select {
			case r = <-got:
			case <-time.After(10 * time.Second):
				t.Fatal("Credential did not return within 10s of the decision")
			}
			a.seen(r.cred)

			if tc.wantErr != "" {
				var ae *client.ApprovalError
				if want := strings.ReplaceAll(tc.wantErr, "ID", ap.GetId()); !errors.As(r.err, &ae) || r.err.Error() != want {
					t.Fatalf("Credential: %v, want an *ApprovalError %q", r.err, want)
				}
				if ae.Approval.GetId() != ap.GetId() {
					t.Errorf("the error carries approval %s, want %s", ae.Approval.GetId(), ap.GetId())
				}
				return
			}
			if r.err != nil {
				t.Fatalf("Credential after approval: %v", r.err)
			}
			if !slices.Equal(r.cred.GetPolicies(), []string{"demo-reports-write"}) || f.Dead(t, r.cred.GetToken()) {
				t.Errorf("credential after approval: policies %v, known to Vault: %v", r.cred.GetPolicies(), !f.Dead(t, r.cred.GetToken()))
			}
			if again := a.credential(t, "reports-write"); again.GetAccessor() != r.cred.GetAccessor() {
				t.Errorf("a later call got %s, want the cached %s", again.GetAccessor(), r.cred.GetAccessor())
			}
			// Nothing to poll for: no refresh must ask a human again
			// before the credential expires.
			time.Sleep(time.Until(r.cred.GetExpiresAt().AsTime()) + time.Second)
			for st, want := range map[brokerv1.ApprovalStatus]int{
				brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING:  0,
				brokerv1.ApprovalStatus_APPROVAL_STATUS_REDEEMED: 1,
			} {
				list, err := approvals.ListApprovals(t.Context(), &adminv1.ListApprovalsRequest{Status: st, Agent: id.String()})
				if err != nil {
					t.Fatal(err)
				}
				if got := len(list.GetApprovals()); got != want {
					t.Errorf("%d approval requests %s, want %d", got, st, want)
				}
			}
		})
	}
}

// pending polls for id's pending approval request.
func pending(t *testing.T, approvals adminv1.ApprovalServiceClient, id spiffeid.ID) *brokerv1.Approval {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := approvals.ListApprovals(t.Context(), &adminv1.ListApprovalsRequest{Status: brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING, Agent: id.String()})
		if err != nil {
			t.Fatalf("ListApprovals: %v", err)
		}
		if aps := r.GetApprovals(); len(aps) == 1 {
			return aps[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pending approval request of %s after 10s", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// relay forwards TCP to a broker that can be swapped, so that the agent
// keeps one address across a restart, as it would with atfd's fixed listen
// address (a brokertest broker listens on a new port at every start). It
// also injects faults: it can refuse connections and cut those it holds.
type relay struct {
	lis    net.Listener
	target atomic.Pointer[string]
	// refusing: new connections are closed at once.
	refusing atomic.Bool

	mu    sync.Mutex
	conns map[net.Conn]bool // both ends of every connection forwarded
}

func newRelay(t *testing.T, target string) *relay {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{lis: lis, conns: map[net.Conn]bool{}}
	r.to(target)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go r.forward(c)
		}
	}()
	t.Cleanup(func() { lis.Close() })
	return r
}

func (r *relay) addr() string { return r.lis.Addr().String() }

// to sends new connections to target.
func (r *relay) to(target string) { r.target.Store(&target) }

// refuse closes new connections at once (on) or forwards them again.
func (r *relay) refuse(on bool) { r.refusing.Store(on) }

// cut closes every connection the relay holds: the client sees its
// broker go away without a word.
func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		c.Close()
	}
}

func (r *relay) forward(c net.Conn) {
	defer c.Close()
	if r.refusing.Load() {
		return
	}
	var d net.Dialer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	s, err := d.DialContext(ctx, "tcp", *r.target.Load())
	cancel()
	if err != nil {
		return
	}
	defer s.Close()
	r.mu.Lock()
	r.conns[c], r.conns[s] = true, true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.conns, c)
		delete(r.conns, s)
		r.mu.Unlock()
	}()
	go func() { io.Copy(s, c); s.Close() }()
	io.Copy(c, s)
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// WithOnChange reports a refresh (with the successor) and a revocation
// (with the broker's reason), in order, naming the credential that changed.
func TestAgentReportsChanges(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	id := f.ID(t, "watcher")
	b.Register(t, id, brokerv1.Level_LEVEL_INTERN, "reports-read")
	changes := make(chan client.Change, 16)
	a := newAgent(t, f, b.Addr, id, client.WithTTL(4*time.Second), client.WithOnChange(func(c client.Change) { changes <- c }))

	first := a.credential(t, "reports-read")
	next := func(what string) client.Change {
		t.Helper()
		select {
		case c := <-changes:
			return c
		case <-time.After(10 * time.Second):
			t.Fatalf("no change reported: want %s", what)
		}
		return client.Change{}
	}
	c := next("a refresh")
	if c.Kind != client.Refreshed || c.Role != "reports-read" || c.Accessor != first.GetAccessor() || c.Credential.GetAccessor() == first.GetAccessor() {
		t.Fatalf("change %+v, want reports-read %s refreshed", c, first.GetAccessor())
	}
	a.seen(c.Credential)
	refreshed := c.Credential.GetAccessor()
	revokeLineage(t, b, id)
	c = next("a revocation")
	if c.Kind != client.Revoked || c.Accessor != refreshed || c.Reason != "suspected compromise" || c.Credential != nil {
		t.Fatalf("change %+v, want the refreshed credential revoked", c)
	}
}
