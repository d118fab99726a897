package dev_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/devtest"
)

func TestStartWithoutTools(t *testing.T) {
	_, err := dev.Start(t.Context(), dev.Options{BinDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "not found: run `make dev-tools` first") {
		t.Fatalf("Start with an empty bin dir: got error %v, want one that says to run `make dev-tools`", err)
	}
}

// TestStack checks one real stack step by step; the last step closes it.
func TestStack(t *testing.T) {
	s := devtest.Start(t)
	td := s.TrustDomain
	parent := t

	t.Run("MintX509", func(t *testing.T) {
		id := spiffeid.RequireFromPath(td, "/agent/minted")
		files, err := s.MintX509(t.Context(), id, 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		svid, err := x509svid.Load(files.CertPath, files.KeyPath)
		if err != nil {
			t.Fatal(err)
		}
		bundle, err := x509bundle.Load(td, s.BundlePath)
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := x509svid.Verify(svid.Certificates, bundle)
		if err != nil {
			t.Fatalf("verify against the stack's bundle: %v", err)
		}
		if got != id || svid.ID != id {
			t.Errorf("SVID ID: verified %s, loaded %s; want %s", got, svid.ID, id)
		}
		if left := time.Until(svid.Certificates[0].NotAfter); left > 10*time.Minute || left < 9*time.Minute {
			t.Errorf("SVID valid for another %v, want about 10m", left)
		}
		if _, err := x509bundle.Load(td, files.BundlePath); err != nil {
			t.Errorf("minted bundle: %v", err)
		}
	})

	t.Run("MintJWT", func(t *testing.T) {
		id := spiffeid.RequireFromPath(td, "/agent/jwt")
		token, err := s.MintJWT(t.Context(), id, "atf-broker", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		bundle, err := spiffebundle.Load(td, s.SPIFFEBundlePath)
		if err != nil {
			t.Fatal(err)
		}
		if len(bundle.X509Authorities()) == 0 || len(bundle.JWTAuthorities()) == 0 {
			t.Errorf("SPIFFE bundle has %d X.509 and %d JWT authorities, want both",
				len(bundle.X509Authorities()), len(bundle.JWTAuthorities()))
		}
		svid, err := jwtsvid.ParseAndValidate(token, bundle, []string{"atf-broker"})
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID != id {
			t.Errorf("JWT-SVID ID %s, want %s", svid.ID, id)
		}
		if _, err := jwtsvid.ParseAndValidate(token, bundle, []string{"someone-else"}); err == nil {
			t.Error("JWT-SVID accepted for another audience")
		}
	})

	t.Run("RegisterWorkload", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		id := spiffeid.RequireFromPath(td, "/workload/dev-test")
		uid := "unix:uid:" + strconv.Itoa(os.Getuid())
		start := time.Now()
		if err := s.RegisterWorkload(ctx, id, uid); err != nil {
			t.Fatal(err)
		}
		if err := s.RegisterWorkload(ctx, id, uid); err != nil {
			t.Fatalf("registering the same entry again: %v", err)
		}
		if _, err := s.AwaitX509SVID(ctx, id); err != nil {
			t.Fatal(err)
		}
		t.Logf("Workload API served the new SVID %v after registration", time.Since(start).Round(time.Millisecond))

		// The same, straight from go-spiffe.
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(s.WorkloadAPIAddr))
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(svids, func(svid *x509svid.SVID) bool { return svid.ID == id })
		if i < 0 {
			t.Fatalf("Workload API serves %d SVIDs, none for %s", len(svids), id)
		}
		bundle, err := x509bundle.Load(td, s.BundlePath)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := x509svid.Verify(svids[i].Certificates, bundle); err != nil {
			t.Errorf("served SVID does not verify: %v", err)
		}
	})

	t.Run("VaultDemoData", func(t *testing.T) {
		kv := s.VaultClient().KVv2("secret")
		for path, want := range map[string][2]string{
			"demo/reports": {"summary", "Q3 revenue up 12%"},
			"demo/payroll": {"total", "1,234,567"},
		} {
			secret, err := kv.Get(t.Context(), path)
			if err != nil {
				t.Fatal(err)
			}
			if got := secret.Data[want[0]]; got != want[1] {
				t.Errorf("secret/%s %s = %v, want %q", path, want[0], got, want[1])
			}
		}
		out, err := s.Vault(t.Context(), "policy", "list")
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"atf-broker", "atf-anchor", "demo-reports-read", "demo-reports-write", "demo-payroll-read"} {
			if !slices.Contains(strings.Fields(out), p) {
				t.Errorf("vault policy list: no %s in\n%s", p, out)
			}
		}
	})

	t.Run("BrokerVaultToken", func(t *testing.T) {
		ctx := t.Context()
		token, err := s.BrokerVaultToken(ctx)
		if err != nil {
			t.Fatal(err)
		}
		broker := clientWithToken(t, s, token)
		self, err := broker.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := self.TokenPolicies(); !slices.Equal(got, []string{"atf-broker"}) {
			t.Errorf("broker token policies %q, want exactly atf-broker", got)
		}
		if _, err := broker.KVv2("secret").Get(ctx, "demo/reports"); !isForbidden(err) {
			t.Errorf("broker token reading a secret: got %v, want 403", err)
		}

		// A credential: exactly the requested policy, not renewable, at
		// most one hour, a child of the broker's token.
		cred := createWithRole(t, broker, "atf-credential", "demo-reports-read", "2h")
		info := lookup(t, s, cred)
		if got, _ := info.TokenPolicies(); !slices.Equal(got, []string{"demo-reports-read"}) {
			t.Errorf("credential policies %q, want exactly demo-reports-read", got)
		}
		if renewable, _ := info.TokenIsRenewable(); renewable {
			t.Error("credential is renewable")
		}
		if ttl, _ := info.TokenTTL(); ttl > time.Hour {
			t.Errorf("credential TTL %v, want at most 1h", ttl)
		}
		if orphan, _ := info.Data["orphan"].(bool); orphan {
			t.Error("credential is an orphan")
		}
		agent := clientWithToken(t, s, cred.Auth.ClientToken)
		if _, err := agent.KVv2("secret").Get(ctx, "demo/reports"); err != nil {
			t.Errorf("credential reading secret/demo/reports: %v", err)
		}
		if _, err := agent.KVv2("secret").Get(ctx, "demo/payroll"); !isForbidden(err) {
			t.Errorf("credential reading secret/demo/payroll: got %v, want 403", err)
		}

		for _, policy := range []string{"root", "atf-broker", "default"} {
			_, err := broker.Auth().Token().CreateWithRoleWithContext(ctx,
				&vaultapi.TokenCreateRequest{Policies: []string{policy}}, "atf-credential")
			if err == nil {
				t.Errorf("broker got a credential with policy %s", policy)
			}
		}

		// Lineage: a credential under an anchor dies with the anchor.
		anchor := createWithRole(t, broker, "atf-anchor", "atf-anchor", "1h")
		below := createWithRole(t, clientWithToken(t, s, anchor.Auth.ClientToken), "atf-credential", "demo-reports-write", "10m")
		if err := broker.Auth().Token().RevokeAccessorWithContext(ctx, anchor.Auth.Accessor); err != nil {
			t.Fatalf("broker revoking an anchor by accessor: %v", err)
		}
		if _, err := s.VaultClient().Auth().Token().LookupWithContext(ctx, below.Auth.ClientToken); err == nil {
			t.Error("credential under a revoked anchor is still alive")
		}

		// Anchors carry their agent's entity: aliases atf-agent-* only.
		for alias, ok := range map[string]bool{"atf-agent-0123abcd": true, "someone-else": false} {
			_, err := broker.Auth().Token().CreateWithRoleWithContext(ctx,
				&vaultapi.TokenCreateRequest{Policies: []string{"atf-anchor"}, TTL: "1m", EntityAlias: alias}, "atf-anchor")
			if (err == nil) != ok {
				t.Errorf("anchor with entity alias %s: %v, want allowed %t", alias, err, ok)
			}
		}
	})

	t.Run("BrokerAppRole", func(t *testing.T) {
		roleID, secretID, err := s.BrokerAppRole(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		login, err := brokerLogin(t, s, "approle", map[string]any{"role_id": roleID, "secret_id": secretID})
		if err != nil {
			t.Fatal(err)
		}
		checkBrokerLogin(t, login)
	})

	t.Run("BrokerJWTLogin", func(t *testing.T) {
		tests := []struct {
			name     string
			id       spiffeid.ID
			audience string
			ok       bool
		}{
			{"broker", s.BrokerID, "vault", true},
			{"other ID", spiffeid.RequireFromPath(td, "/impostor"), "vault", false},
			{"other audience", s.BrokerID, "atf-broker", false},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				jwt, err := s.MintJWT(t.Context(), tt.id, tt.audience, time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				login, err := brokerLogin(t, s, "jwt", map[string]any{"role": "atf-broker", "jwt": jwt})
				switch {
				case tt.ok && err != nil:
					t.Fatal(err)
				case tt.ok:
					checkBrokerLogin(t, login)
				case err == nil:
					t.Errorf("JWT login succeeded for %s with audience %s", tt.id, tt.audience)
				}
			})
		}
	})

	t.Run("SetupScript", func(t *testing.T) {
		tests := []struct {
			name, allowed, wantErr string
		}{
			{"again", "demo-reports-read,demo-reports-write,demo-payroll-read", ""},
			{"no allowed policies", "", "ATF_ALLOWED_POLICIES is not set"},
			{"root allowed", "demo-reports-read,root", "must not contain root"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				cmd := exec.CommandContext(t.Context(), "bash", "../vault/setup.sh")
				cmd.Env = append(os.Environ(),
					"PATH="+s.BinDir+string(os.PathListSeparator)+os.Getenv("PATH"),
					"VAULT_ADDR="+s.VaultAddr,
					"VAULT_TOKEN="+s.VaultRootToken,
					"ATF_ALLOWED_POLICIES="+tt.allowed,
				)
				out, err := cmd.CombinedOutput()
				switch {
				case tt.wantErr == "" && err != nil:
					t.Fatalf("setup.sh: %v\n%s", err, out)
				case tt.wantErr != "" && (err == nil || !strings.Contains(string(out), tt.wantErr)):
					t.Fatalf("setup.sh: got %v\n%s\nwant a failure saying %q", err, out, tt.wantErr)
				}
				if strings.Contains(string(out), s.VaultRootToken) {
					t.Error("setup.sh printed the token")
				}
			})
		}
	})

	var pg *dev.Postgres
	t.Run("Postgres", func(t *testing.T) {
		var err error
		if pg, err = s.StartPostgres(t.Context()); err != nil {
			t.Fatal(err)
		}
		if again, err := s.StartPostgres(t.Context()); err != nil || again != pg {
			t.Fatalf("second StartPostgres = %p, %v; want the same server %p", again, err, pg)
		}
		checkPostgresUser(t, s.PIDs()["postgres"])
		// A user of Vault's database engine logs in with its password
		// only, until its lease is revoked.
		v := s.VaultClient()
		sec, err := v.Logical().ReadWithContext(t.Context(), dev.DatabaseCredsPath)
		if err != nil || sec == nil || sec.LeaseID == "" {
			t.Fatalf("read %s: %v, %v; want a lease", dev.DatabaseCredsPath, sec, err)
		}
		user, password := sec.Data["username"].(string), sec.Data["password"].(string)
		if err := pg.Login(t.Context(), user, password); err != nil {
			t.Fatal(err)
		}
		if err := pg.Login(t.Context(), user, password+"x"); err == nil || !strings.Contains(err.Error(), "password authentication failed") {
			t.Fatalf("login with a wrong password: %v, want refused", err)
		}
		if err := v.Sys().RevokeWithContext(t.Context(), sec.LeaseID); err != nil {
			t.Fatal(err)
		}
		if err := pg.Login(t.Context(), user, password); err == nil || !strings.Contains(err.Error(), "password authentication failed") {
			t.Fatalf("login after the lease was revoked: %v, want refused", err)
		}
	})

	t.Run("Close", func(t *testing.T) {
		if parent.Failed() {
			t.Log(s.Logs()) // gone after Close
		}
		pids := s.PIDs()
		if len(pids) != 4 {
			t.Errorf("PIDs() = %v, want spire-server, spire-agent, vault and postgres", pids)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		for name, pid := range pids {
			if err := syscall.Kill(-pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("%s (process group %d) still there after Close: kill -0 gave %v", name, pid, err)
			}
		}
		for _, dir := range []string{s.Dir, pg.Dir} {
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s still there after Close: %v", dir, err)
			}
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
}

// checkPostgresUser checks that PostgreSQL (process pid) runs as the
// postgres system user when the tests run as root (PostgreSQL refuses
// root), and as the tests' user otherwise.
func checkPostgresUser(t *testing.T, pid int) {
	t.Helper()
	want := os.Geteuid()
	if want == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		if want, err = strconv.Atoi(u.Uid); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat("/proc/" + strconv.Itoa(pid))
	if err != nil {
		t.Skipf("no /proc to check the owner of PostgreSQL: %v", err)
	}
	if got := int(fi.Sys().(*syscall.Stat_t).Uid); got != want {
		t.Errorf("postgres (pid %d) runs as uid %d, want %d", pid, got, want)
	}
}

func clientWithToken(t *testing.T, s *dev.Stack, token string) *vaultapi.Client {
	t.Helper()
	c := s.VaultClient()
	c.SetToken(token)
	return c
}

func brokerLogin(t *testing.T, s *dev.Stack, method string, data map[string]any) (*vaultapi.Secret, error) {
	t.Helper()
	return clientWithToken(t, s, "").Logical().WriteWithContext(t.Context(), "auth/"+method+"/login", data)
}

// checkBrokerLogin checks that a login gave the broker's kind of token.
func checkBrokerLogin(t *testing.T, login *vaultapi.Secret) {
	t.Helper()
	if login == nil || login.Auth == nil {
		t.Fatal("login response without a token")
	}
	if !slices.Contains(login.Auth.TokenPolicies, "atf-broker") || !login.Auth.Renewable || login.Auth.LeaseDuration != 3600 {
		t.Errorf("login token: policies %q, renewable %v, TTL %ds; want atf-broker, true, 3600",
			login.Auth.TokenPolicies, login.Auth.Renewable, login.Auth.LeaseDuration)
	}
}

func createWithRole(t *testing.T, c *vaultapi.Client, role, policy, ttl string) *vaultapi.Secret {
	t.Helper()
	secret, err := c.Auth().Token().CreateWithRoleWithContext(t.Context(),
		&vaultapi.TokenCreateRequest{Policies: []string{policy}, TTL: ttl}, role)
	if err != nil {
		t.Fatalf("creating a token with role %s and policy %s: %v", role, policy, err)
	}
	return secret
}

func lookup(t *testing.T, s *dev.Stack, token *vaultapi.Secret) *vaultapi.Secret {
	t.Helper()
	info, err := s.VaultClient().Auth().Token().LookupWithContext(t.Context(), token.Auth.ClientToken)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func isForbidden(err error) bool {
	var re *vaultapi.ResponseError
	return errors.As(err, &re) && re.StatusCode == 403
}
