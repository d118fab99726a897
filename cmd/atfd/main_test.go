package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	"github.com/agentictrust/atf/deploy/policy"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// The test binary doubles as atfd: run with ATF_TEST_RUN_ATFD=1 it is the
// daemon, so the end-to-end test exercises main itself as a real process.
func TestMain(m *testing.M) {
	if os.Getenv("ATF_TEST_RUN_ATFD") == "1" {
		main()
		return
	}
	devtest.Main(m)
}

const roles = `roles:
  - name: reports-read
    class: read
    classification: internal
    policies: [demo-reports-read]
    max_ttl: 5m
`

// atfd as a process: it gets its SVID from the Workload API and serves the
// rotated SVID without a restart, a second atfd on the same store exits at
// once saying why, and SIGTERM stops it cleanly.
func TestAtfdProcess(t *testing.T) {
	s := devtest.Shared(t)
	ctx := t.Context()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// A 20 s SVID: the SPIRE agent rotates it after about 10 s.
	if err := s.RegisterWorkloadTTL(ctx, s.BrokerID, 20*time.Second, "unix:path:"+exe); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	admin := spiffeid.RequireFromPath(s.TrustDomain, "/ops/admin")
	addr := freeAddr(t)
	auditFile := filepath.Join(dir, "audit.jsonl")
	cfg := writeConfig(t, s, dir, addr, admin, policy.Example, "audit:\n  file: "+auditFile+"\n")

	var logs bytes.Buffer
	atfd := exec.Command(exe, "-config", cfg)
	atfd.Env = append(os.Environ(), "ATF_TEST_RUN_ATFD=1")
	atfd.Stdout, atfd.Stderr = &logs, &logs
	if err := atfd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- atfd.Wait() }()
	t.Cleanup(func() {
		atfd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("atfd output:\n%s", logs.String())
		}
	})

	// Ready when an admin can call it.
	files, err := s.MintX509(ctx, admin, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(ctx, client.Config{Addr: addr, BrokerID: s.BrokerID.String(), SVIDFile: files.CertPath, SVIDKeyFile: files.KeyPath, BundleFile: files.BundlePath})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	devtest.WaitFor(t, 30*time.Second, "atfd to serve", func() bool {
		_, err := c.Broker.WhoAmI(ctx, &brokerv1.WhoAmIRequest{})
		return err == nil
	})

	// SVID rotation without restart: new connections see a new certificate.
	bundle, err := x509bundle.Load(s.TrustDomain, s.BundlePath)
	if err != nil {
		t.Fatal(err)
	}
	serial := func() string {
		conn, err := tls.Dial("tcp", addr, tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(s.BrokerID)))
		if err != nil {
			t.Fatalf("TLS to atfd: %v", err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := serial()
	devtest.WaitFor(t, 45*time.Second, "atfd to serve a rotated SVID", func() bool { return serial() != first })
	if _, err := c.Broker.WhoAmI(ctx, &brokerv1.WhoAmIRequest{}); err != nil {
		t.Fatalf("after rotation: %v", err)
	}

	// A second atfd on the same store fails fast.
	start := time.Now()
	second := exec.Command(exe, "-config", cfg, "-listen-addr", freeAddr(t))
	second.Env = append(os.Environ(), "ATF_TEST_RUN_ATFD=1")
	out, err := second.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "locked by another process") {
		t.Fatalf("second atfd: %v\n%s", err, out)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("second atfd took %s to give up", d)
	}

	// SIGTERM: a clean exit.
	if err := atfd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("atfd exited with %v after SIGTERM", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("atfd did not stop within 15s of SIGTERM")
	}

	// The audit trail's JSON-lines copy holds the seeding of the policy and
	// verifies.
	f, err := os.Open(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, last, err := audit.VerifyLines(f)
	if err != nil || n == 0 || last.Seq != n {
		t.Fatalf("audit.jsonl: %d records, last %d, %v; want a verified copy from record 1", n, last.Seq, err)
	}
}

// A configuration error stops atfd before it touches anything, saying what.
func TestAtfdRefusesBadConfig(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "atfd.yaml")
	if err := os.WriteFile(cfg, []byte("listen_addr: 127.0.0.1:0\nlisten_adr: typo\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-config", cfg)
	cmd.Env = append(os.Environ(), "ATF_TEST_RUN_ATFD=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "listen_adr") {
		t.Fatalf("atfd with a typo in its config: %v\n%s", err, out)
	}
	if err := os.WriteFile(cfg, []byte("listen_addr: 127.0.0.1:0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(exe, "-config", cfg)
	cmd.Env = append(os.Environ(), "ATF_TEST_RUN_ATFD=1")
	out, err = cmd.CombinedOutput()
	for _, want := range []string{"trust_domains", "store_path", "roles_file", "vault.address", "vault.auth.method"} {
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("atfd with an incomplete config does not mention %s: %v\n%s", want, err, out)
		}
	}
}

// A damaged store stops atfd at once, saying how to recover, and is left
// as it was.
func TestAtfdRefusesDamagedStore(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	storePath := filepath.Join(dir, "atf.db")
	s, err := store.Open(storePath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if _, err := s.RegisterAgent(store.Agent{ID: fmt.Sprintf("spiffe://atf.test/agent/%d", i), Level: authz.Intern}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	// bbolt grows the file ahead of its pages: cut half of the pages.
	pages, err := s.Backup(io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(storePath, pages/2); err != nil {
		t.Fatal(err)
	}
	damaged, err := os.ReadFile(storePath)
	if err != nil {
		t.Fatal(err)
	}
	rolesFile, cfg := filepath.Join(dir, "roles.yaml"), filepath.Join(dir, "atfd.yaml")
	if err := os.WriteFile(rolesFile, []byte(roles), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`listen_addr: 127.0.0.1:0
trust_domains: [atf.test]
store_path: %s
roles_file: %s
vault:
  address: http://127.0.0.1:1
  auth:
    method: token
`, storePath, rolesFile)), 0o600); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	cmd := exec.CommandContext(t.Context(), exe, "-config", cfg)
	cmd.Env = append(os.Environ(), "ATF_TEST_RUN_ATFD=1")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("atfd on a damaged store: %v, want a non-zero exit\n%s", err, out)
	}
	want := fmt.Sprintf("atfd: store: %s is damaged (", storePath)
	if !strings.Contains(string(out), want) || !strings.Contains(string(out), "Restore the latest backup (atfctl admin backup makes one) to "+storePath) {
		t.Errorf("atfd's output does not say the store is damaged and how to restore it:\n%s", out)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("atfd took %s to give up", d)
	}
	if after, err := os.ReadFile(storePath); err != nil || !bytes.Equal(after, damaged) {
		t.Errorf("atfd changed the damaged store (%v)", err)
	}
}

// writeConfig writes an atfd config in dir for the dev stack s, listening
// on addr with admin as its admin, the roles above, the shipped model with
// policyCSV, and extra YAML, and returns its path.
func writeConfig(t testing.TB, s *dev.Stack, dir, addr string, admin spiffeid.ID, policyCSV, extra string) string {
	t.Helper()
	tok, err := s.BrokerVaultToken(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("atfd.yaml", fmt.Sprintf(`listen_addr: %s
spiffe:
  workload_api_addr: %s
trust_domains: [%s]
admins: [%s]
store_path: %s
roles_file: %s
policy:
  model_file: %s
  policy_file: %s
vault:
  address: %s
  auth:
    method: token
    token_file: %s
log_format: text
%s`, addr, s.WorkloadAPIAddr, s.TrustDomain.Name(), admin, filepath.Join(dir, "atf.db"), write("roles.yaml", roles),
		write("model.conf", policy.Model), write("policy.csv", policyCSV), s.VaultAddr, write("token", tok), extra))
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
