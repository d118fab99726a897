package broker_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentictrust/atf/broker"
	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

func TestMain(m *testing.M) { devtest.Main(m) }

const testRoles = `roles:
  - name: reports-read
    class: read
    policies: [demo-reports-read]
    max_ttl: 30m
  - name: reports-write
    class: write
    policies: [demo-reports-write]
    max_ttl: 10m
  - name: payroll-read
    class: read
    policies: [demo-payroll-read]
    max_ttl: 2m
`

// fixture is the shared SPIRE + Vault stack, with the test process
// registered as the broker's workload.
type fixture struct {
	stack *dev.Stack
	admin spiffeid.ID

	mu    sync.Mutex
	svids map[spiffeid.ID]dev.SVIDFiles
}

var (
	fixOnce sync.Once
	fix     *fixture
	fixErr  error
)

func setup(t *testing.T) *fixture {
	t.Helper()
	s := devtest.Shared(t)
	fixOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// The broker runs inside the test binary: it is the workload with
		// this process's uid.
		if fixErr = s.RegisterWorkload(ctx, s.BrokerID, "unix:uid:"+strconv.Itoa(os.Getuid())); fixErr != nil {
			return
		}
		if _, fixErr = s.AwaitX509SVID(ctx, s.BrokerID); fixErr != nil {
			return
		}
		fix = &fixture{stack: s, admin: spiffeid.RequireFromPath(s.TrustDomain, "/ops/admin"), svids: map[spiffeid.ID]dev.SVIDFiles{}}
	})
	if fixErr != nil {
		t.Fatalf("setup: %v", fixErr)
	}
	return fix
}

// id returns a SPIFFE ID in the stack's trust domain, unique to the test.
func (f *fixture) id(t *testing.T, name string) spiffeid.ID {
	return spiffeid.RequireFromSegments(f.stack.TrustDomain, "agents", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), name)
}

// svid mints (once) an X.509-SVID for id.
func (f *fixture) svid(t *testing.T, id spiffeid.ID) dev.SVIDFiles {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.svids[id]; ok {
		return s
	}
	s, err := f.stack.MintX509(t.Context(), id, time.Hour)
	if err != nil {
		t.Fatalf("mint %s: %v", id, err)
	}
	f.svids[id] = s
	return s
}

// testBroker is an in-process broker serving on loopback.
type testBroker struct {
	f    *fixture
	cfg  broker.Config
	srv  *broker.Server
	addr string
	done chan error
}

// config returns a broker configuration for the fixture, with its store in
// dir and the broker logged in to Vault with a token holding atf-broker.
func (f *fixture) config(t *testing.T, dir string) broker.Config {
	t.Helper()
	roles := filepath.Join(dir, "roles.yaml")
	if err := os.WriteFile(roles, []byte(testRoles), 0o600); err != nil {
		t.Fatal(err)
	}
	tok, err := f.stack.BrokerVaultToken(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(dir, "vault-token")
	if err := os.WriteFile(tokFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return broker.Config{
		ListenAddr:   "127.0.0.1:0",
		SPIFFE:       broker.SPIFFEConfig{WorkloadAPIAddr: f.stack.WorkloadAPIAddr},
		TrustDomains: []string{f.stack.TrustDomain.Name()},
		Admins:       []string{f.admin.String()},
		StorePath:    filepath.Join(dir, "atf.db"),
		RolesFile:    roles,
		Vault: broker.VaultConfig{
			Address: f.stack.VaultAddr,
			Timeout: 2 * time.Second,
			Auth:    broker.VaultAuth{Method: "token", TokenFile: tokFile},
		},
	}
}

// start starts a broker with cfg and stops it when t ends.
func (f *fixture) start(t *testing.T, cfg broker.Config) *testBroker {
	t.Helper()
	b, err := f.tryStart(t, cfg)
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	return b
}

func (f *fixture) tryStart(t *testing.T, cfg broker.Config) (*testBroker, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	srv, err := broker.New(ctx, cfg, broker.WithLogger(testLogger(t)))
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	b := &testBroker{f: f, cfg: cfg, srv: srv, addr: lis.Addr().String(), done: make(chan error, 1)}
	go func() { b.done <- srv.Serve(lis) }()
	t.Cleanup(b.stop)
	return b, nil
}

// stop stops the broker and waits for Serve to return; idempotent.
func (b *testBroker) stop() {
	b.srv.Close()
	if b.done != nil {
		<-b.done
		b.done = nil
	}
}

// dial connects to the broker as id, with an SVID minted by SPIRE.
func (b *testBroker) dial(t *testing.T, id spiffeid.ID) *client.Conn {
	t.Helper()
	s := b.f.svid(t, id)
	return b.dialFiles(t, s)
}

func (b *testBroker) dialFiles(t *testing.T, s dev.SVIDFiles) *client.Conn {
	t.Helper()
	c, err := client.Dial(t.Context(), client.Config{
		Addr:        b.addr,
		BrokerID:    b.f.stack.BrokerID.String(),
		SVIDFile:    s.CertPath,
		SVIDKeyFile: s.KeyPath,
		BundleFile:  s.BundlePath,
	})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// register registers id through AdminService as the admin.
func (b *testBroker) register(t *testing.T, id spiffeid.ID, level brokerv1.Level, roles ...string) *adminv1.Agent {
	t.Helper()
	r, err := b.dial(t, b.f.admin).Admin.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{
		SpiffeId: id.String(), Owner: "owner@example.org", Purpose: "test " + t.Name(), Roles: roles, Level: level,
	})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	return r.GetAgent()
}

// vaultAs returns a Vault client using token.
func (f *fixture) vaultAs(t *testing.T, token string) *vaultapi.Client {
	t.Helper()
	c := f.stack.VaultClient()
	c.SetToken(token)
	return c
}

// wantCode fails t unless err has code and its message contains every part.
func wantCode(t *testing.T, err error, code codes.Code, parts ...string) {
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

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// faultProxy forwards TCP to a real server and can be cut and restored, to
// make the real Vault unreachable for one broker without stopping it.
type faultProxy struct {
	target string
	addr   string

	mu    sync.Mutex
	lis   net.Listener
	conns map[net.Conn]bool
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	p := &faultProxy{target: target, conns: map[net.Conn]bool{}}
	if err := p.up("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.down)
	return p
}

func (p *faultProxy) up(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.lis, p.addr = lis, lis.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go p.forward(c)
		}
	}()
	return nil
}

func (p *faultProxy) forward(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[s] = true, true
	p.mu.Unlock()
	go func() { io.Copy(s, c); s.Close() }()
	io.Copy(c, s)
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, s)
	p.mu.Unlock()
}

// down cuts every connection and stops listening.
func (p *faultProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lis != nil {
		p.lis.Close()
		p.lis = nil
	}
	for c := range p.conns {
		c.Close()
	}
}

// restore listens again on the same address.
func (p *faultProxy) restore(t *testing.T) {
	t.Helper()
	if err := p.up(p.addr); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
}

func (p *faultProxy) url() string { return "http://" + p.addr }
