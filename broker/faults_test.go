package broker_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/breaker"
	"github.com/agentictrust/atf/broker/config"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/agentictrust/atf/broker"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Faults of the broker's dependencies, against the real components: Vault
// stopped, slow or answering 5xx (injected by brokertest.FaultProxy in
// front of the real Vault), the circuit breaker in front of Vault, and, on
// a stack of the test's own, a SPIRE agent that stops and comes back and a
// Vault process that stops.

// createPath is where every Vault token creation (anchor, service or batch
// credential) goes.
const createPath = "/v1/auth/token/create"

// faultEnv is a broker that reaches Vault through a FaultProxy, with a
// metrics listener, and one agent holding a credential issued before any
// fault.
type faultEnv struct {
	f     *brokertest.Fixture
	proxy *brokertest.FaultProxy
	cfg   config.Config
	b     *brokertest.Broker
	agent spiffeid.ID
	bc    brokerv1.BrokerServiceClient
	// warm is the credential issued before the fault; it also made the
	// agent's anchor, so later requests only create credentials.
	warm *brokerv1.Credential
}

func newFaultEnv(t *testing.T, tune func(*config.Config), opts ...broker.Option) *faultEnv {
	return newFaultEnvOf(t, true, tune, opts...)
}

// newFaultEnvOf is newFaultEnv with service credentials or, with service
// false, batch ones (the default kind).
func newFaultEnvOf(t *testing.T, service bool, tune func(*config.Config), opts ...broker.Option) *faultEnv {
	t.Helper()
	e := &faultEnv{f: brokertest.Setup(t)}
	e.proxy = brokertest.NewFaultProxy(t, strings.TrimPrefix(e.f.Stack.VaultAddr, "http://"))
	dir := t.TempDir()
	e.cfg = e.f.Config(t, dir)
	// These faults are followed token by token, by accessor: service
	// credentials. TestVaultSlowBatch follows batch credentials.
	if service {
		e.cfg.RolesFile = brokertest.ServiceRoles(t, dir)
	}
	e.cfg.Vault.Address = e.proxy.URL()
	e.cfg.MetricsAddr = freeAddr(t)
	tune(&e.cfg)
	e.b = e.f.StartWith(t, e.cfg, opts...)
	e.agent = e.f.ID(t, "agent")
	e.b.Register(t, e.agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	e.bc = e.b.Dial(t, e.agent).Broker
	r, err := e.fetch(t.Context())
	if err != nil {
		t.Fatalf("fetch before the fault: %v", err)
	}
	e.warm = r.GetCredential()
	return e
}

func (e *faultEnv) fetch(ctx context.Context) (*brokerv1.FetchCredentialResponse, error) {
	return e.bc.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read"})
}

// metric is the sample of name whose labels include labels.
func (e *faultEnv) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	v, _ := value(scrape(t, "http://"+e.cfg.MetricsAddr+"/metrics"), name, labels)
	return v
}

// onlyWarmLives reports whether the credential issued before the fault is
// the agent's only live token in Vault (asked as root).
func (e *faultEnv) onlyWarmLives(t *testing.T) bool {
	t.Helper()
	live, err := e.f.Stack.LiveCredentials(t.Context(), e.agent.String())
	if err != nil {
		t.Fatal(err)
	}
	return slices.Equal(live, []string{e.warm.GetAccessor()})
}

// recorded is how many credentials the store holds for the agent; it stops
// the broker to read them.
func (e *faultEnv) recorded(t *testing.T) int {
	t.Helper()
	e.b.Stop()
	st, err := store.Open(e.cfg.StorePath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	creds, err := st.Credentials(e.agent.String())
	if err != nil {
		t.Fatal(err)
	}
	return len(creds)
}

// Vault stopped, slow (answers later than vault.timeout) or answering 503:
// issuance fails closed with Unavailable, no token is left alive in Vault
// (those a slow Vault creates after the broker gave up are revoked when
// their answer comes), nothing is recorded, health blames Vault and only
// Vault, and issuance resumes when Vault is back. The breaker is set out of
// reach here; TestVaultBreaker covers it.
func TestVaultFaults(t *testing.T) {
	const (
		timeout  = time.Second
		attempts = 5
	)
	for _, tt := range []struct {
		name          string
		inject, clear func(*testing.T, *brokertest.FaultProxy)
		// reached is how many of the attempts' creations reach the proxy;
		// late how many tokens Vault makes after the broker gave up.
		reached, late int
	}{
		{"stopped", func(_ *testing.T, p *brokertest.FaultProxy) { p.Down() }, func(t *testing.T, p *brokertest.FaultProxy) { p.Restore(t) }, 0, 0},
		{"slow", func(_ *testing.T, p *brokertest.FaultProxy) { p.Delay(3 * timeout) }, func(_ *testing.T, p *brokertest.FaultProxy) { p.Delay(0) }, attempts, attempts},
		{"503", func(_ *testing.T, p *brokertest.FaultProxy) { p.Fail(503) }, func(_ *testing.T, p *brokertest.FaultProxy) { p.Fail(0) }, attempts, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newFaultEnv(t, func(cfg *config.Config) {
				cfg.Vault.Timeout = timeout
				cfg.Vault.Breaker.Failures = 1000
				cfg.HealthInterval = 500 * time.Millisecond
			})
			creates := e.proxy.Requests(createPath)
			tt.inject(t, e.proxy)
			for range attempts {
				_, err := e.fetch(t.Context())
				brokertest.WantCode(t, err, codes.Unavailable, "Vault is unavailable", "nothing was issued")
			}
			if got := e.proxy.Requests(createPath) - creates; got != tt.reached {
				t.Errorf("%d token creations reached Vault's proxy, want %d", got, tt.reached)
			}
			failed, err := e.b.Dial(t, e.f.Admin).Admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "credential_failed", Agent: e.agent.String()})
			if err != nil || len(failed.GetRecords()) != attempts || failed.GetRecords()[0].GetDetail()["reason"] != "vault_unavailable" {
				t.Errorf("credential_failed records %v (%v), want %d with reason vault_unavailable", failed.GetRecords(), err, attempts)
			}
			devtest.WaitFor(t, 10*time.Second, "the health probe to find Vault down and the Workload API up", func() bool {
				return e.metric(t, "atf_dependency_up", map[string]string{"dependency": "vault"}) == 0 &&
					e.metric(t, "atf_dependency_up", map[string]string{"dependency": "workload_api"}) == 1
			})
			tt.clear(t, e.proxy)
			devtest.WaitFor(t, 30*time.Second, "only the credential issued before the fault to live in Vault", func() bool {
				return e.onlyWarmLives(t) && e.metric(t, "atf_vault_late_tokens_revoked_total", nil) == float64(tt.late)
			})
			if _, err := e.fetch(t.Context()); err != nil {
				t.Fatalf("fetch with Vault back: %v", err)
			}
			if n := e.recorded(t); n != 2 {
				t.Errorf("the store holds %d credentials for the agent, want 2 (before the fault and after it)", n)
			}
		})
	}
}

// A batch token Vault creates after the broker gave up cannot be revoked
// alone: the role anchor it hangs on is, and with it the agent's batch
// credentials of that role (the one issued before the fault too). Nothing
// late lives; the next fetch, with Vault back, hangs on a new anchor.
func TestVaultSlowBatch(t *testing.T) {
	const timeout, attempts = time.Second, 3
	e := newFaultEnvOf(t, false, func(cfg *config.Config) {
		cfg.Vault.Timeout = timeout
		cfg.Vault.Breaker.Failures = 1000
	})
	if !strings.HasPrefix(e.warm.GetAccessor(), "b.") {
		t.Fatalf("credential before the fault = %s, want a batch token", e.warm.GetAccessor())
	}
	before, err := e.f.Stack.LiveAnchors(t.Context(), e.agent.String())
	if err != nil || len(before) != 2 {
		t.Fatalf("live anchors %v (%v), want the agent's and its role anchor", before, err)
	}
	e.proxy.Delay(3 * timeout)
	for range attempts {
		_, err := e.fetch(t.Context())
		brokertest.WantCode(t, err, codes.Unavailable, "Vault is unavailable", "nothing was issued")
	}
	e.proxy.Delay(0)
	devtest.WaitFor(t, 30*time.Second, "the late batch tokens' role anchor to be revoked", func() bool {
		return e.metric(t, "atf_vault_late_tokens_revoked_total", nil) == attempts && e.f.Dead(t, e.warm.GetToken())
	})
	after, err := e.f.Stack.LiveAnchors(t.Context(), e.agent.String())
	if err != nil || !slices.Equal(after, []string{store.AgentNode(e.agent.String())}) {
		t.Fatalf("live anchors after the late answers %v (%v), want only the agent's own", after, err)
	}
	// Each failed call's record, committed while Vault was asked, was
	// voided: the trail says so, and the store holds none of them.
	voided, err := e.b.Dial(t, e.f.Admin).Admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "credential_voided", Agent: e.agent.String()})
	if err != nil || len(voided.GetRecords()) != attempts || voided.GetRecords()[0].GetDetail()["reason"] != "Vault did not issue it" {
		t.Errorf("credential_voided records %v (%v), want %d saying Vault did not issue it", voided.GetRecords(), err, attempts)
	}
	r, err := e.fetch(t.Context())
	if err != nil || e.f.Dead(t, r.GetCredential().GetToken()) {
		t.Fatalf("fetch with Vault back: %v", err)
	}
	if n := e.recorded(t); n != 2 {
		t.Errorf("the store holds %d credentials for the agent, want 2 (before the fault and after it)", n)
	}
}

// An agent changed while its credential is issued (the change commits
// between the decision's read and the record; a slow Vault holds the
// issuance open): the record refuses the credential decided on the old
// agent record, whose service token is revoked in Vault, and the broker
// decides once more on the new record and issues. The caller gets one
// credential, and the audit trail has both decisions.
func TestAgentChangedMidIssuance(t *testing.T) {
	e := newFaultEnvOf(t, true, func(*config.Config) {})
	admin := e.b.Dial(t, e.f.Admin).Admin
	asked := e.proxy.Requests(createPath)
	e.proxy.Delay(300 * time.Millisecond)
	type answer struct {
		r   *brokerv1.FetchCredentialResponse
		err error
	}
	done := make(chan answer, 1)
	go func() {
		r, err := e.fetch(t.Context())
		done <- answer{r, err}
	}()
	devtest.WaitFor(t, 10*time.Second, "the issuance to reach Vault", func() bool { return e.proxy.Requests(createPath) > asked })
	purpose := "changed while a credential was issued"
	up, err := admin.UpdateAgent(t.Context(), &adminv1.UpdateAgentRequest{SpiffeId: e.agent.String(), Purpose: &purpose})
	if err != nil {
		t.Fatal(err)
	}
	got := <-done
	e.proxy.Delay(0)
	if got.err != nil {
		t.Fatalf("fetch across the change: %v, want a credential decided again", got.err)
	}
	issued := got.r.GetCredential()
	refused, err := admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "credential_refused", Agent: e.agent.String()})
	if err != nil || len(refused.GetRecords()) != 1 {
		t.Fatalf("credential_refused records %v (%v), want the one decided on the old record", refused.GetRecords(), err)
	}
	old := refused.GetRecords()[0]
	if d := old.GetDetail(); !strings.Contains(d["refused"], "changed") || d["decision_id"] == issued.GetDecisionId() {
		t.Errorf("refused record %v: want it refused as the agent changed, under a decision other than the issued one (%s)", d, issued.GetDecisionId())
	}
	if up.GetAgent().GetRevision() < 2 {
		t.Fatalf("agent revision after the change %d, want it raised", up.GetAgent().GetRevision())
	}
	live, err := e.f.Stack.LiveCredentials(t.Context(), e.agent.String())
	if want := []string{e.warm.GetAccessor(), issued.GetAccessor()}; err != nil || !sameSet(live, want) {
		t.Errorf("live in Vault %v (%v), want only %v: the refused token revoked", live, err, want)
	}
	if e.f.Dead(t, issued.GetToken()) {
		t.Error("the credential issued on the new record does not work in Vault")
	}
}

// While Vault's breaker is open, a batch issuance is refused before
// anything is written: it is recorded beside the Vault call only while
// Vault answers. The calls that opened the breaker reached Vault, so their
// records were voided; the calls refused fast left none.
func TestVaultBreakerBatch(t *testing.T) {
	const failures = 3
	e := newFaultEnvOf(t, false, func(cfg *config.Config) {
		cfg.Vault.Breaker = breaker.Config{Failures: failures, OpenFor: time.Minute}
	})
	admin := e.b.Dial(t, e.f.Admin).Admin
	voided := func() int {
		r, err := admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "credential_voided", Agent: e.agent.String()})
		if err != nil {
			t.Fatal(err)
		}
		return len(r.GetRecords())
	}
	e.proxy.Fail(503)
	for range failures {
		_, err := e.fetch(t.Context())
		brokertest.WantCode(t, err, codes.Unavailable, "Vault is unavailable", "nothing was issued")
	}
	if n := voided(); n != failures {
		t.Fatalf("%d credential_voided records after the failures that opened the breaker, want %d", n, failures)
	}
	for range 10 {
		_, err := e.fetch(t.Context())
		brokertest.WantCode(t, err, codes.Unavailable, "Vault circuit breaker open", "nothing was issued")
	}
	if n := voided(); n != failures {
		t.Errorf("%d credential_voided records after 10 calls refused by the open breaker, want still %d: they recorded something", n, failures)
	}
	if n := e.recorded(t); n != 1 {
		t.Errorf("the store holds %d credentials for the agent, want 1 (the one before the fault)", n)
	}
}

// A burst of concurrent requests against a slow Vault: every one fails
// closed, and once Vault's late answers are in (and their tokens revoked)
// the goroutines are back near where they were: nothing piles up.
func TestVaultSlowBurst(t *testing.T) {
	const (
		burst   = 200
		timeout = time.Second
		// slack is far below a goroutine per request.
		slack = 50
	)
	e := newFaultEnv(t, func(cfg *config.Config) {
		cfg.Vault.Timeout = timeout
		cfg.Vault.Breaker.Failures = 1000 // every request waits on Vault
	})
	creates := e.proxy.Requests(createPath)
	before := runtime.NumGoroutine()
	e.proxy.Delay(3 * timeout)
	got := map[codes.Code]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range burst {
		wg.Go(func() {
			_, err := e.fetch(t.Context())
			mu.Lock()
			defer mu.Unlock()
			got[status.Code(err)]++
		})
	}
	wg.Wait()
	if got[codes.Unavailable] != burst {
		t.Errorf("codes = %v, want %d Unavailable", got, burst)
	}
	if n := e.proxy.Requests(createPath) - creates; n != burst {
		t.Errorf("%d token creations reached Vault's proxy, want %d", n, burst)
	}
	e.proxy.Delay(0)
	devtest.WaitFor(t, 60*time.Second, "the burst to settle: late tokens revoked", func() bool {
		return e.metric(t, "atf_vault_late_tokens_revoked_total", nil) == burst
	})
	// The Vault client keeps up to vault.IdleConns connections for the
	// next burst (two goroutines each, and one in the proxy): cut them, so
	// that what is left is what the burst itself left behind.
	e.proxy.Down()
	e.proxy.Restore(t)
	devtest.WaitFor(t, 30*time.Second, "goroutines back after the burst", func() bool {
		return runtime.NumGoroutine() <= before+slack
	})
	if !e.onlyWarmLives(t) {
		t.Error("tokens from the burst live in Vault")
	}
	t.Logf("goroutines: %d before the burst, %d after it settled", before, runtime.NumGoroutine())
}

// stoppableClock is the real clock until the test stops it; then it moves
// only when the test advances it.
type stoppableClock struct {
	mu      sync.Mutex
	stopped bool
	now     time.Time
}

func (c *stoppableClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.stopped {
		return time.Now()
	}
	return c.now
}

func (c *stoppableClock) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped, c.now = true, time.Now()
}

func (c *stoppableClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// The circuit breaker in front of Vault: failures in a row open it; while
// open, issuance fails fast without asking Vault, saying when to retry,
// while revocations still go to Vault (and, refused, are queued); after
// open_for one request probes, a failed probe keeps it open, and a
// probe Vault answers closes it.
func TestVaultBreaker(t *testing.T) {
	const (
		failures = 3
		openFor  = 30 * time.Second
	)
	clk := &stoppableClock{}
	e := newFaultEnv(t, func(cfg *config.Config) {
		cfg.Vault.Breaker = breaker.Config{Failures: failures, OpenFor: openFor}
	}, broker.WithClock(clk.Now))
	other := e.f.ID(t, "other")
	e.b.Register(t, other, brokerv1.Level_LEVEL_INTERN, "reports-read")
	otherCred, err := e.b.Dial(t, other).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
	if err != nil {
		t.Fatal(err)
	}
	// From here on, time moves only when the test says so (every SVID in
	// use was minted before: the broker judges them by this clock too).
	clk.Stop()
	creates := e.proxy.Requests(createPath)
	reached := func() int { return e.proxy.Requests(createPath) - creates }
	wantMetrics := func(open, trips float64) {
		t.Helper()
		if got := e.metric(t, "atf_vault_breaker_open", nil); got != open {
			t.Errorf("atf_vault_breaker_open = %v, want %v", got, open)
		}
		if got := e.metric(t, "atf_vault_breaker_trips_total", nil); got != trips {
			t.Errorf("atf_vault_breaker_trips_total = %v, want %v", got, trips)
		}
	}
	// failFast checks that a request is refused by the open breaker, telling
	// when to retry, without reaching Vault.
	failFast := func(retryAt time.Time) {
		t.Helper()
		before := reached()
		_, err := e.fetch(t.Context())
		brokertest.WantCode(t, err, codes.Unavailable, "Vault circuit breaker open; retrying at "+retryAt.UTC().Format(time.RFC3339), "nothing was issued")
		var retry *errdetails.RetryInfo
		for _, d := range status.Convert(err).Details() {
			if r, ok := d.(*errdetails.RetryInfo); ok {
				retry = r
			}
		}
		if want := retryAt.Sub(clk.Now()); retry == nil || retry.GetRetryDelay().AsDuration() != want {
			t.Errorf("RetryInfo = %v, want %s", retry, want)
		}
		if reached() != before {
			t.Error("a request refused by the open breaker reached Vault")
		}
	}
	wantVaultDown := func() {
		t.Helper()
		_, err := e.fetch(t.Context())
		brokertest.WantCode(t, err, codes.Unavailable, "Vault is unavailable", "nothing was issued")
	}

	// 1. Vault answers 503: the first failures reach it, then the breaker
	// opens and the rest fail fast.
	e.proxy.Fail(503)
	for range failures {
		wantVaultDown()
	}
	openedAt := clk.Now()
	for range 10 {
		failFast(openedAt.Add(openFor))
	}
	if reached() != failures {
		t.Errorf("%d creations reached Vault, want %d (the failures that opened the breaker)", reached(), failures)
	}
	wantMetrics(1, 1)

	// 2. A revocation while the breaker is open still goes to Vault; Vault
	// refuses it, so it is queued.
	revokes := e.proxy.Requests("/v1/auth/token/revoke-accessor")
	dr, err := e.b.Dial(t, e.f.Admin).Admin.DeregisterAgent(t.Context(), &adminv1.DeregisterAgentRequest{SpiffeId: other.String(), Reason: "breaker test"})
	if err != nil {
		t.Fatal(err)
	}
	if dr.GetCredentialsRevoked() != 1 || dr.GetRevocationsPending() != 1 {
		t.Errorf("deregister with the breaker open: revoked %d, pending %d; want 1, 1", dr.GetCredentialsRevoked(), dr.GetRevocationsPending())
	}
	if e.proxy.Requests("/v1/auth/token/revoke-accessor") == revokes {
		t.Error("the revocation did not reach Vault while the breaker was open")
	}

	// 3. Half-open: after open_for one request probes Vault; it still
	// fails, so the breaker stays open for another open_for.
	clk.Advance(openFor)
	wantVaultDown()
	if reached() != failures+1 {
		t.Errorf("%d creations reached Vault, want %d (one probe more)", reached(), failures+1)
	}
	failFast(clk.Now().Add(openFor))

	// 4. Vault answers again: the next probe closes the breaker, and
	// issuance goes to Vault as usual.
	e.proxy.Fail(0)
	clk.Advance(openFor)
	for range 3 {
		if _, err := e.fetch(t.Context()); err != nil {
			t.Fatalf("fetch with Vault back: %v", err)
		}
	}
	if reached() != failures+4 {
		t.Errorf("%d creations reached Vault, want %d", reached(), failures+4)
	}
	wantMetrics(0, 1)

	// 5. The queued revocation completes now that Vault answers.
	devtest.WaitFor(t, 30*time.Second, "the queued revocation to reach Vault", func() bool {
		return e.f.Dead(t, otherCred.GetCredential().GetToken())
	})
}

// The SPIRE agent stops, on a stack of the test's own with short-lived
// SVIDs for the broker: callers with valid SVIDs still authenticate
// against the broker's cached bundles (X.509 and JWT) and health says
// NOT_SERVING; once the broker's cached SVID expires, new connections are
// refused; when the agent is back, the broker's SVID rotates again, new
// callers are accepted and health says SERVING. Last, the stack's Vault
// process stops: issuance fails closed and health says NOT_SERVING.
func TestSPIREAgentStopped(t *testing.T) {
	s := devtest.Start(t)
	// A 12 s SVID: the agent rotates it every ~6 s, and one left without
	// the agent expires within 12 s.
	f := brokertest.SetupStack(t, s, 12*time.Second)
	cfg := f.Config(t, t.TempDir())
	cfg.HealthInterval = 200 * time.Millisecond
	cfg.MetricsAddr = freeAddr(t)
	b := f.Start(t, cfg)
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	ctx := t.Context()

	// conn is a caller's connection from before the outage.
	conn := b.Dial(t, agent)
	health := func() healthpb.HealthCheckResponse_ServingStatus {
		r, err := healthpb.NewHealthClient(conn.ClientConn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return healthpb.HealthCheckResponse_UNKNOWN
		}
		return r.GetStatus()
	}
	devtest.WaitFor(t, 10*time.Second, "health SERVING", func() bool { return health() == healthpb.HealthCheckResponse_SERVING })
	bundle, err := x509bundle.Load(s.TrustDomain, s.BundlePath)
	if err != nil {
		t.Fatal(err)
	}
	// served is the certificate the broker presents to a new connection.
	served := func() (*x509.Certificate, error) {
		c, err := tls.Dial("tcp", b.Addr, tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(s.BrokerID)))
		if err != nil {
			return nil, err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0], nil
	}
	// newCaller connects anew and asks who it is, with its X.509-SVID
	// and, if jwt, a JWT-SVID too.
	newCaller := func(jwt bool) (*brokerv1.WhoAmIResponse, error) {
		cctx := ctx
		if jwt {
			tok, err := s.MintJWT(ctx, agent, s.BrokerID.String(), time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			cctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
		}
		return b.Dial(t, agent).Broker.WhoAmI(cctx, &brokerv1.WhoAmIRequest{})
	}
	// wantUp checks the health probe's verdict on each dependency.
	wantUp := func(vault, workloadAPI float64) {
		t.Helper()
		families := scrape(t, "http://"+cfg.MetricsAddr+"/metrics")
		for dep, want := range map[string]float64{"vault": vault, "workload_api": workloadAPI} {
			if got, _ := value(families, "atf_dependency_up", map[string]string{"dependency": dep}); got != want {
				t.Errorf("atf_dependency_up{%s} = %v, want %v", dep, got, want)
			}
		}
	}

	// 1. The agent stops. The broker keeps the SVID and bundles it has.
	if err := s.Stop("spire-agent"); err != nil {
		t.Fatal(err)
	}
	cached, err := served()
	if err != nil {
		t.Fatalf("TLS to the broker with the agent just stopped: %v", err)
	}
	devtest.WaitFor(t, 10*time.Second, "health NOT_SERVING without the Workload API", func() bool {
		return health() == healthpb.HealthCheckResponse_NOT_SERVING
	})
	wantUp(1, 0)
	for _, jwt := range []bool{false, true} {
		r, err := newCaller(jwt)
		if err != nil {
			t.Fatalf("a new caller (jwt %t) with the agent down: %v", jwt, err)
		}
		if want := map[bool]brokerv1.AuthMethod{false: brokerv1.AuthMethod_AUTH_METHOD_X509_SVID, true: brokerv1.AuthMethod_AUTH_METHOD_JWT_SVID}[jwt]; r.GetAuthMethod() != want {
			t.Errorf("auth method %v, want %v", r.GetAuthMethod(), want)
		}
	}
	if _, err := conn.Broker.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
		t.Fatalf("fetch with the agent down: %v", err)
	}

	// 2. The broker's cached SVID expires: it can no longer prove who it
	// is, so new connections are refused.
	devtest.WaitFor(t, time.Until(cached.NotAfter)+15*time.Second, "the broker's cached SVID to expire", func() bool {
		_, err := served()
		return err != nil && strings.Contains(err.Error(), "expired")
	})
	_, err = newCaller(false)
	brokertest.WantCode(t, err, codes.Unavailable, "expired")

	// 3. The agent is back: the broker gets a new SVID without a restart,
	// and new callers are accepted again.
	if err := s.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	devtest.WaitFor(t, 45*time.Second, "the broker to serve a new SVID", func() bool {
		c, err := served()
		return err == nil && c.SerialNumber.Cmp(cached.SerialNumber) != 0
	})
	if _, err := newCaller(false); err != nil {
		t.Fatalf("a new caller with the agent back: %v", err)
	}
	devtest.WaitFor(t, 30*time.Second, "health SERVING with the agent back", func() bool {
		return health() == healthpb.HealthCheckResponse_SERVING
	})

	// 4. Vault's process stops: issuance fails closed.
	if err := s.Stop("vault"); err != nil {
		t.Fatal(err)
	}
	_, err = conn.Broker.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read"})
	brokertest.WantCode(t, err, codes.Unavailable, "Vault is unavailable", "nothing was issued")
	devtest.WaitFor(t, 10*time.Second, "health NOT_SERVING with Vault stopped", func() bool {
		return health() == healthpb.HealthCheckResponse_NOT_SERVING
	})
	wantUp(0, 1)
}
