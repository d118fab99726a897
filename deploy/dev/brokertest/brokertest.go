// Package brokertest runs in-process brokers against the shared dev stack
// (real SPIRE and Vault, package deploy/dev) for integration tests, and
// dials them as SPIRE-minted agents.
//
// A test package using it calls devtest.Main from TestMain.
package brokertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/breaker"
	"github.com/agentictrust/atf/broker/config"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentictrust/atf/broker"
	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	"github.com/agentictrust/atf/deploy/policy"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Roles is the roles file of every test broker; its policies are the dev
// stack's demo policies.
const Roles = `roles:
  - name: reports-read
    class: read
    classification: internal
    policies: [demo-reports-read]
    max_ttl: 30m
  - name: reports-write
    class: write
    classification: internal
    policies: [demo-reports-write]
    max_ttl: 10m
  - name: payroll-read
    class: read
    classification: pii
    policies: [demo-payroll-read]
    max_ttl: 2m
`

// DatabaseRoles are roles with a dynamic secret, a PostgreSQL user of the
// dev stack's database engine (dev.Stack.StartPostgres): orders-db, whose
// policy allows reading it, and orders-db-unallowed, whose policy does not
// (Vault refuses the read).
const DatabaseRoles = `  - name: orders-db
    class: read
    classification: internal
    policies: [demo-orders-db]
    max_ttl: 10m
    dynamic: ` + dev.DatabaseCredsPath + `
  - name: orders-db-unallowed
    class: read
    classification: internal
    policies: [demo-reports-read]
    max_ttl: 10m
    dynamic: ` + dev.DatabaseCredsPath + `
`

// DatabaseConfig is Config with DatabaseRoles in the roles file, and the
// fixture's PostgreSQL, started if need be.
func (f *Fixture) DatabaseConfig(t testing.TB, dir string) (config.Config, *dev.Postgres) {
	t.Helper()
	pg, err := f.Stack.StartPostgres(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	cfg := f.Config(t, dir)
	if err := os.WriteFile(cfg.RolesFile, []byte(Roles+DatabaseRoles), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg, pg
}

// OpenPolicy is the segmentation policy of every test broker unless a test
// sets its own: every agent of the trust domain may have every role, so
// the shipped model's maturity gating (and the code's invariants) decide.
func OpenPolicy(td spiffeid.TrustDomain) string {
	return "g, " + td.IDString() + "/*, group:all\np, group:all, *, *, intern, allow\n"
}

// Fixture is the shared SPIRE + Vault stack, with the test process
// registered as the broker's workload.
type Fixture struct {
	Stack *dev.Stack
	// Admin is the SPIFFE ID in every broker's admins list.
	Admin spiffeid.ID
	// Signer is a second admin, a person other than Admin: a Principal's
	// placement needs two distinct sign-offs.
	Signer spiffeid.ID

	mu    sync.Mutex
	svids map[spiffeid.ID]dev.SVIDFiles
}

var (
	fixOnce sync.Once
	fix     *Fixture
	fixErr  error
)

// Setup returns the fixture on the test binary's shared dev stack,
// registering the test process as the broker's workload on first use.
func Setup(t testing.TB) *Fixture {
	t.Helper()
	s := devtest.Shared(t)
	fixOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		fix, fixErr = newFixture(ctx, s, 0)
	})
	if fixErr != nil {
		t.Fatalf("setup: %v", fixErr)
	}
	return fix
}

// SetupStack returns a fixture on s, a stack of the test's own (one it may
// break, see devtest.Start), with the test process registered as the
// broker's workload, its X.509-SVIDs living svidTTL (0: SPIRE's default).
func SetupStack(t testing.TB, s *dev.Stack, svidTTL time.Duration) *Fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	f, err := newFixture(ctx, s, svidTTL)
	if err != nil {
		t.Fatalf("setup: %v", err)
	}
	return f
}

func newFixture(ctx context.Context, s *dev.Stack, svidTTL time.Duration) (*Fixture, error) {
	// The broker runs inside the test binary: it is the workload with this
	// process's uid.
	if err := s.RegisterWorkloadTTL(ctx, s.BrokerID, svidTTL, "unix:uid:"+strconv.Itoa(os.Getuid())); err != nil {
		return nil, err
	}
	if _, err := s.AwaitX509SVID(ctx, s.BrokerID); err != nil {
		return nil, err
	}
	return &Fixture{Stack: s, Admin: spiffeid.RequireFromPath(s.TrustDomain, "/ops/admin"), Signer: spiffeid.RequireFromPath(s.TrustDomain, "/ops/signer"),
		svids: map[spiffeid.ID]dev.SVIDFiles{}}, nil
}

// ID returns a SPIFFE ID in the stack's trust domain, unique to the test.
func (f *Fixture) ID(t testing.TB, name string) spiffeid.ID {
	return spiffeid.RequireFromSegments(f.Stack.TrustDomain, "agents", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), name)
}

// SVID mints (once) an X.509-SVID for id.
func (f *Fixture) SVID(t testing.TB, id spiffeid.ID) dev.SVIDFiles {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.svids[id]; ok {
		return s
	}
	s, err := f.Stack.MintX509(t.Context(), id, time.Hour)
	if err != nil {
		t.Fatalf("mint %s: %v", id, err)
	}
	f.svids[id] = s
	return s
}

// Broker is an in-process broker serving on loopback.
type Broker struct {
	F    *Fixture
	Cfg  config.Config
	Addr string
	srv  *broker.Server
	done chan error

	placeOnce sync.Once
	placers   [2]*client.Conn // the admin's and the signer's, for Place; closed by Stop
	placeErr  error
}

// ServiceRoles writes Roles with every role's credentials service tokens
// (kind: service) to a file in dir, and returns its path: for tests of what
// only service tokens have (an accessor, revocation alone).
func ServiceRoles(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "service-roles.yaml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(Roles, "    max_ttl:", "    kind: service\n    max_ttl:")), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Config returns a broker configuration for the fixture, with its store in
// dir and the broker logged in to Vault with a token holding atf-broker.
func (f *Fixture) Config(t testing.TB, dir string) config.Config {
	t.Helper()
	roles := filepath.Join(dir, "roles.yaml")
	if err := os.WriteFile(roles, []byte(Roles), 0o600); err != nil {
		t.Fatal(err)
	}
	tok, err := f.Stack.BrokerVaultToken(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(dir, "vault-token")
	if err := os.WriteFile(tokFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	modelFile, policyFile := filepath.Join(dir, "model.conf"), filepath.Join(dir, "policy.csv")
	if err := os.WriteFile(modelFile, []byte(policy.Model), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(policyFile, []byte(OpenPolicy(f.Stack.TrustDomain)), 0o600); err != nil {
		t.Fatal(err)
	}
	return config.Config{
		ListenAddr:   "127.0.0.1:0",
		SPIFFE:       config.SPIFFEConfig{WorkloadAPIAddr: f.Stack.WorkloadAPIAddr},
		TrustDomains: []string{f.Stack.TrustDomain.Name()},
		Admins:       []string{f.Admin.String(), f.Signer.String()},
		StorePath:    filepath.Join(dir, "atf.db"),
		RolesFile:    roles,
		Policy:       config.PolicyConfig{ModelFile: modelFile, PolicyFile: policyFile},
		// Tests fetch in bursts; limit tests set their own.
		Limits: config.LimitsConfig{
			Rate:            map[string]config.RateLimit{},
			CallRate:        map[string]config.RateLimit{},
			MaxLivePerAgent: -1, MaxLivePerLineage: -1, MaxLivePerRole: -1,
		},
		// Tests provoke refusals on purpose: anomalies only alert and the
		// breaker needs many failures, unless a test sets its own.
		Monitor: config.MonitorConfig{
			Actions: map[string]string{"low": "alert", "medium": "alert", "high": "alert", "critical": "alert"},
			Breaker: breaker.Config{Failures: 1000},
		},
		Vault: config.VaultConfig{
			Address: f.Stack.VaultAddr,
			Timeout: 2 * time.Second,
			Auth:    config.VaultAuth{Method: "token", TokenFile: tokFile},
		},
	}
}

// Start starts a broker with cfg and stops it when t ends.
func (f *Fixture) Start(t testing.TB, cfg config.Config) *Broker {
	t.Helper()
	return f.StartWith(t, cfg)
}

// StartWith is Start with options for broker.New, such as a clock. They
// apply after the fixture's logger, so one may replace it.
func (f *Fixture) StartWith(t testing.TB, cfg config.Config, opts ...broker.Option) *Broker {
	t.Helper()
	b, err := f.TryStart(t, cfg, opts...)
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	return b
}

// TryStart is StartWith, returning broker.New's error.
func (f *Fixture) TryStart(t testing.TB, cfg config.Config, opts ...broker.Option) (*Broker, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	srv, err := broker.New(ctx, cfg, append([]broker.Option{broker.WithLogger(logger())}, opts...)...)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	b := &Broker{F: f, Cfg: cfg, Addr: lis.Addr().String(), srv: srv, done: make(chan error, 1)}
	go func() { b.done <- srv.Serve(lis) }()
	t.Cleanup(b.Stop)
	return b, nil
}

// Stop stops the broker and waits for Serve to return; idempotent.
func (b *Broker) Stop() {
	for _, c := range b.placers {
		if c != nil {
			c.Close()
		}
	}
	b.srv.Close()
	if b.done != nil {
		<-b.done
		b.done = nil
	}
}

// Dial connects to the broker as id, with an SVID minted by SPIRE.
func (b *Broker) Dial(t testing.TB, id spiffeid.ID) *client.Conn {
	t.Helper()
	s := b.F.SVID(t, id)
	return b.DialFiles(t, s)
}

// DialFiles connects to the broker with the given SVID files.
func (b *Broker) DialFiles(t testing.TB, s dev.SVIDFiles) *client.Conn {
	t.Helper()
	c, err := client.Dial(t.Context(), b.clientConfig(s))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (b *Broker) clientConfig(s dev.SVIDFiles) client.Config {
	return client.Config{Addr: b.Addr, BrokerID: b.F.Stack.BrokerID.String(), SVIDFile: s.CertPath, SVIDKeyFile: s.KeyPath, BundleFile: s.BundlePath}
}

// Register registers id through AdminService as the admin and, for a
// level above Intern, places it there (Place).
func (b *Broker) Register(t testing.TB, id spiffeid.ID, level brokerv1.Level, roles ...string) *adminv1.Agent {
	t.Helper()
	r, err := b.Dial(t, b.F.Admin).Admin.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{
		SpiffeId: id.String(), Owner: "owner@example.org", Purpose: "test " + t.Name(), Roles: roles,
	})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	if level > brokerv1.Level_LEVEL_INTERN {
		return b.Place(t, id, level)
	}
	return r.GetAgent()
}

// Place raises a registered agent to level as a migration does: the
// fixture's admin (and, for Principal, its signer) sign off with their own
// SVIDs, and the admin migrates it.
func (b *Broker) Place(t testing.TB, id spiffeid.ID, level brokerv1.Level) *adminv1.Agent {
	t.Helper()
	a, err := b.TryPlace(t, t.Context(), id, level)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TryPlace is Place returning the error, safe to call from several
// goroutines once Place (or Register at a level above Intern) has run on
// the test's own.
func (b *Broker) TryPlace(t testing.TB, ctx context.Context, id spiffeid.ID, level brokerv1.Level) (*adminv1.Agent, error) {
	// The connections live as long as the broker, whichever test placed
	// first.
	b.placeOnce.Do(func() {
		for i, id := range []spiffeid.ID{b.F.Admin, b.F.Signer} {
			if b.placers[i], b.placeErr = client.Dial(context.WithoutCancel(ctx), b.clientConfig(b.F.SVID(t, id))); b.placeErr != nil {
				return
			}
		}
	})
	if b.placeErr != nil {
		return nil, fmt.Errorf("dial to place %s: %w", id, b.placeErr)
	}
	signers := b.placers[:1]
	if level == brokerv1.Level_LEVEL_PRINCIPAL {
		signers = b.placers[:]
	}
	for _, c := range signers {
		if _, err := c.Maturity.RecordSignOff(ctx, &adminv1.RecordSignOffRequest{SpiffeId: id.String(), RiskAcceptance: "test placement", Target: level}); err != nil {
			return nil, fmt.Errorf("sign off %s for %s: %w", id, level, err)
		}
	}
	r, err := b.placers[0].Maturity.MigrateAgent(ctx, &adminv1.MigrateAgentRequest{SpiffeId: id.String(), Level: level, Reason: "test placement"})
	if err != nil {
		return nil, fmt.Errorf("migrate %s to %s: %w", id, level, err)
	}
	return r.GetAgent(), nil
}

// VaultAs returns a Vault client using token.
func (f *Fixture) VaultAs(t testing.TB, token string) *vaultapi.Client {
	t.Helper()
	c := f.Stack.VaultClient()
	c.SetToken(token)
	return c
}

// Lookup asks Vault, as root, about token. An error containing "bad token"
// means Vault does not know it: revoked or expired. (Credentials carry no
// default policy, so they cannot look themselves up.)
func (f *Fixture) Lookup(t testing.TB, token string) (*vaultapi.Secret, error) {
	t.Helper()
	return f.Stack.VaultClient().Auth().Token().LookupWithContext(t.Context(), token)
}

// Dead reports whether Vault says token does not exist.
func (f *Fixture) Dead(t testing.TB, token string) bool {
	t.Helper()
	_, err := f.Lookup(t, token)
	return err != nil && strings.Contains(err.Error(), "bad token")
}

// WantCode fails t unless err has code and its message contains every part.
func WantCode(t testing.TB, err error, code codes.Code, parts ...string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		t.Fatalf("got %v, want code %s", err, code)
	}
	for _, p := range parts {
		if !strings.Contains(st.Message(), p) {
			t.Fatalf("message %q does not contain %q", st.Message(), p)
		}
	}
}

// logger logs to stderr with -v and discards otherwise.
func logger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// FaultProxy is an HTTP proxy in front of a real Vault that a test can
// break for one broker without touching the server: cut it (Down, which
// refuses connections as a stopped Vault does), make Vault's answers late
// (Delay), or answer errors in Vault's place (Fail). It counts the requests
// that reach it.
type FaultProxy struct {
	proxy *httputil.ReverseProxy
	addr  string

	mu       sync.Mutex
	srv      *http.Server
	cut      chan struct{} // closed by Down: late answers are dropped
	delay    time.Duration
	fail     int
	requests map[string]int // by path
}

// NewFaultProxy starts a proxy to target (host:port), stopped when t ends.
func NewFaultProxy(t testing.TB, target string) *FaultProxy {
	t.Helper()
	p := &FaultProxy{requests: map[string]int{}}
	p.proxy = &httputil.ReverseProxy{
		Rewrite:      func(r *httputil.ProxyRequest) { r.SetURL(&url.URL{Scheme: "http", Host: target}) },
		Transport:    lateTransport{p},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) },
	}
	if err := p.up("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Down)
	return p
}

func (p *FaultProxy) up(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: p, ErrorLog: log.New(io.Discard, "", 0), ReadHeaderTimeout: 10 * time.Second}
	p.mu.Lock()
	p.srv, p.addr, p.cut = srv, lis.Addr().String(), make(chan struct{})
	p.mu.Unlock()
	go srv.Serve(lis)
	return nil
}

func (p *FaultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.requests[r.URL.Path]++
	fail := p.fail
	p.mu.Unlock()
	if fail != 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(fail)
		fmt.Fprintf(w, `{"errors":["fault injected by the test: %d %s"]}`, fail, http.StatusText(fail))
		return
	}
	p.proxy.ServeHTTP(w, r)
}

// lateTransport forwards to Vault and holds its answer for the proxy's
// delay. Vault gets the request whatever the client does meanwhile: the
// fault is a late answer, not a lost request.
type lateTransport struct{ p *FaultProxy }

func (t lateTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r.WithContext(context.WithoutCancel(r.Context())))
	t.p.mu.Lock()
	delay, cut := t.p.delay, t.p.cut
	t.p.mu.Unlock()
	if err != nil || delay == 0 {
		return resp, err
	}
	wait := time.NewTimer(delay)
	defer wait.Stop()
	select {
	case <-wait.C:
		return resp, nil
	case <-cut:
		resp.Body.Close()
		return nil, errors.New("brokertest: proxy down")
	}
}

// Down refuses new connections and cuts open ones.
func (p *FaultProxy) Down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv != nil {
		p.srv.Close()
		close(p.cut)
		p.srv = nil
	}
}

// Restore listens again on the same address.
func (p *FaultProxy) Restore(t testing.TB) {
	t.Helper()
	if err := p.up(p.addr); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
}

// Delay holds each of Vault's answers for d before passing it on; 0 stops
// delaying.
func (p *FaultProxy) Delay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

// Fail answers every request with HTTP status code (e.g. 503) without
// forwarding it; 0 forwards again.
func (p *FaultProxy) Fail(code int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail = code
}

// Requests counts the requests that reached the proxy (forwarded or not)
// whose path begins with prefix, e.g. "/v1/auth/token/create".
func (p *FaultProxy) Requests(prefix string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for path, c := range p.requests {
		if strings.HasPrefix(path, prefix) {
			n += c
		}
	}
	return n
}

// URL is the proxy's address as an http URL.
func (p *FaultProxy) URL() string { return "http://" + p.addr }

var (
	etcdOnce sync.Once
	etcdRun  *dev.Etcd
	etcdErr  error
)

// Etcd returns the test binary's etcd cluster (three members on the shared
// stack), started by the first test that asks.
func (f *Fixture) Etcd(t testing.TB) *dev.Etcd {
	t.Helper()
	etcdOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		etcdRun, etcdErr = f.Stack.StartEtcd(ctx, 3)
	})
	if etcdErr != nil {
		t.Fatal(etcdErr)
	}
	return etcdRun
}

// EtcdConfig is Config with the store in the fixture's etcd cluster under
// prefix, as replica: replicas of one broker share a prefix.
func (f *Fixture) EtcdConfig(t testing.TB, dir, prefix, replica string) config.Config {
	t.Helper()
	return f.EtcdConfigOn(t, f.Etcd(t), dir, prefix, replica)
}

// EtcdConfigOn is EtcdConfig on the cluster e (a test's own, to stop
// members of).
func (f *Fixture) EtcdConfigOn(t testing.TB, e *dev.Etcd, dir, prefix, replica string) config.Config {
	t.Helper()
	cfg := f.Config(t, dir)
	cfg.StorePath = ""
	cfg.Store.Etcd = &config.EtcdConfig{Endpoints: e.Endpoints, CAFile: e.CAFile, CertFile: e.CertFile, KeyFile: e.KeyFile,
		Prefix: prefix, MaxTxnOps: dev.MaxTxnOps, Replica: replica}
	return cfg
}

// OAuthRoles are roles of kind jwt: OAuth access tokens for two resources
// of an MCP-style tool server, one to read (tools-read) and one to write
// (tools-admin), added to Roles by OAuthConfig.
const OAuthRoles = `  - name: tools-read
    kind: jwt
    class: read
    classification: internal
    audience: ` + OAuthToolsAudience + `
    scopes: [tools.list, tools.call]
    max_ttl: 10m
  - name: tools-admin
    kind: jwt
    class: write
    classification: internal
    audience: ` + OAuthAdminAudience + `
    scopes: [tools.admin]
    max_ttl: 5m
`

// The resources of OAuthRoles, and the issuer of OAuthConfig.
const (
	OAuthToolsAudience = "https://mcp.example/tools"
	OAuthAdminAudience = "https://mcp.example/admin"
	OAuthIssuer        = "https://atfd.test"
)

// OAuthConfig is Config with the OAuth endpoints on (a loopback port, the
// issuer OAuthIssuer) and OAuthRoles in the roles file; resourceServers
// may introspect and watch revocations.
func (f *Fixture) OAuthConfig(t testing.TB, dir string, resourceServers ...spiffeid.ID) config.Config {
	t.Helper()
	return WithOAuth(t, f.Config(t, dir), resourceServers...)
}

// WithOAuth is cfg (Config, EtcdConfig) with what OAuthConfig adds.
func WithOAuth(t testing.TB, cfg config.Config, resourceServers ...spiffeid.ID) config.Config {
	t.Helper()
	if err := os.WriteFile(cfg.RolesFile, []byte(Roles+OAuthRoles), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.OAuth = config.OAuthConfig{ListenAddr: "127.0.0.1:0", Issuer: OAuthIssuer}
	for _, id := range resourceServers {
		cfg.OAuth.ResourceServers = append(cfg.OAuth.ResourceServers, id.String())
	}
	return cfg
}

// RotateSigningKey rotates the broker's access-token signing key now.
func (b *Broker) RotateSigningKey(t testing.TB) {
	t.Helper()
	if err := b.srv.RotateSigningKey(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// OAuthURL is the base URL of the broker's OAuth endpoints.
func (b *Broker) OAuthURL() string { return "https://" + b.srv.OAuthAddr() }

// HTTPClient is an HTTPS client of the broker's OAuth endpoints that
// verifies the broker's X.509-SVID against the trust bundle and, unless
// id is the zero ID, presents id's X.509-SVID (mutual TLS).
func (b *Broker) HTTPClient(t testing.TB, id spiffeid.ID) *http.Client {
	t.Helper()
	td := b.F.Stack.TrustDomain
	files := b.F.SVID(t, b.F.Admin) // any SVID's bundle is the trust domain's
	bundle, err := x509bundle.Load(td, files.BundlePath)
	if err != nil {
		t.Fatal(err)
	}
	// The broker's own SVID, as the gRPC fixture checks.
	broker := tlsconfig.AuthorizeID(b.F.Stack.BrokerID)
	tlsCfg := tlsconfig.TLSClientConfig(bundle, broker)
	if !id.IsZero() {
		s := b.F.SVID(t, id)
		svid, err := x509svid.Load(s.CertPath, s.KeyPath)
		if err != nil {
			t.Fatal(err)
		}
		tlsCfg = tlsconfig.MTLSClientConfig(svid, bundle, broker)
	}
	tr := &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}
