package dev

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	vaultsetup "github.com/agentictrust/atf/deploy/vault"
)

// Demo policies and secrets the stack adds to Vault. The policies are
// config/<name>.hcl.
var (
	demoPolicies = []string{"demo-reports-read", "demo-reports-write", "demo-payroll-read", "demo-orders-db"}
	demoSecrets  = map[string]map[string]any{
		"demo/reports": {"summary": "Q3 revenue up 12%"},
		"demo/payroll": {"total": "1,234,567"},
	}
)

const (
	// BrokerPolicy is the policy of the broker's own Vault token.
	BrokerPolicy = "atf-broker"
	// brokerAppRole is the AppRole role setup.sh creates for the broker.
	brokerAppRole = "atf-broker"
)

// startVault starts a Vault dev server and loads the demo data.
func (s *Stack) startVault(ctx context.Context) error {
	home := filepath.Join(s.Dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	for attempt := 1; ; attempt++ {
		port, err := freePortPair()
		if err != nil {
			return err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		s.VaultAddr = "http://" + addr
		if s.vault, err = s.newVaultClient(s.VaultRootToken); err != nil {
			return err
		}
		s.log.Info("starting Vault", keyAddr, s.VaultAddr)
		p, err := s.spawn("vault", s.vaultEnv(), "vault", "server", "-dev",
			"-dev-root-token-id="+s.VaultRootToken,
			"-dev-listen-address="+addr,
			"-dev-no-store-token")
		if err != nil {
			return err
		}
		err = s.awaitReady(ctx, p, func(ctx context.Context) error {
			h, err := s.vault.Sys().HealthWithContext(ctx)
			switch {
			case err != nil:
				return err
			case !h.Initialized || h.Sealed:
				return errors.New("dev: vault not initialized and unsealed yet")
			}
			return nil
		})
		if err != nil && attempt == 1 && p.addrInUse() {
			s.log.Info("Vault port was taken, retrying", keyAddr, addr)
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	return s.loadDemoData(ctx)
}

// newVaultClient returns a client for the stack's Vault using token, ignoring
// any VAULT_* settings of the environment that would point it elsewhere.
func (s *Stack) newVaultClient(token string) (*vaultapi.Client, error) {
	cfg := vaultapi.DefaultConfig()
	cfg.Address = s.VaultAddr
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("dev: vault client: %w", err)
	}
	c.SetToken(token)
	c.ClearNamespace()
	return c, nil
}

// vaultEnv is the environment for Vault processes: the caller's, without
// VAULT_* variables, with HOME inside Dir (the CLI keeps ~/.vault-token
// there) and the stack's address and root token.
func (s *Stack) vaultEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VAULT_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"HOME="+filepath.Join(s.Dir, "home"),
		"VAULT_ADDR="+s.VaultAddr,
		"VAULT_TOKEN="+s.VaultRootToken,
	)
	return append(env, extra...)
}

// loadDemoData writes the demo policies and kv-v2 secrets.
func (s *Stack) loadDemoData(ctx context.Context) error {
	for _, name := range demoPolicies {
		rules, err := configFS.ReadFile("config/" + name + ".hcl")
		if err != nil {
			return fmt.Errorf("dev: %w", err)
		}
		if err := s.vault.Sys().PutPolicyWithContext(ctx, name, string(rules)); err != nil {
			return fmt.Errorf("dev: writing policy %s: %w", name, err)
		}
	}
	kv := s.vault.KVv2("secret")
	for path, data := range demoSecrets {
		// The dev server's kv-v2 mount refuses writes for a moment after
		// start, while it upgrades its storage.
		err := retry(ctx, "writing secret/"+path, func(ctx context.Context) error {
			_, err := kv.Put(ctx, path, data)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// runVaultSetup runs the operator's setup script, deploy/vault/setup.sh,
// with the vault binary on PATH, the demo policies as the allowed ones, and
// JWT auth for BrokerID with the SPIRE server's current JWT keys.
func (s *Stack) runVaultSetup(ctx context.Context) error {
	dir := filepath.Join(s.Dir, "vault-setup")
	if err := os.CopyFS(dir, vaultsetup.Files); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	jwtKeys := filepath.Join(s.Dir, "jwt-keys.pem")
	if err := s.writeJWTKeys(jwtKeys); err != nil {
		return err
	}
	logPath := filepath.Join(s.Dir, "vault-setup.log")
	log, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	defer log.Close()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(dir, "setup.sh"))
	cmd.Dir = s.Dir
	cmd.Env = s.vaultEnv(
		"PATH="+s.BinDir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"ATF_ALLOWED_POLICIES="+strings.Join(demoPolicies, ","),
		"ATF_BROKER_SPIFFE_ID="+s.BrokerID.String(),
		"ATF_JWT_VALIDATION_PUBKEYS="+jwtKeys,
	)
	cmd.Stdout, cmd.Stderr = log, log
	s.log.Info("running deploy/vault/setup.sh")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("dev: deploy/vault/setup.sh: %w; its output:\n%s", err, s.tail(logPath, errorLogLines))
	}
	return nil
}

// writeJWTKeys writes the trust domain's JWT authorities, from the SPIFFE
// bundle, as PEM public keys: the form Vault's JWT auth takes them in.
func (s *Stack) writeJWTKeys(path string) error {
	bundle, err := spiffebundle.Load(s.TrustDomain, s.SPIFFEBundlePath)
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	keys := bundle.JWTAuthorities()
	var out []byte
	for _, kid := range slices.Sorted(maps.Keys(keys)) {
		der, err := x509.MarshalPKIXPublicKey(keys[kid])
		if err != nil {
			return fmt.Errorf("dev: JWT authority %s: %w", kid, err)
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})...)
	}
	if len(out) == 0 {
		return errors.New("dev: the SPIRE bundle has no JWT authority")
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	return nil
}

// VaultClient returns a new Vault client for the stack, with the root token.
func (s *Stack) VaultClient() *vaultapi.Client {
	c, err := s.vault.Clone()
	if err != nil {
		// Clone repeats the NewClient call that Start made successfully.
		panic(fmt.Sprintf("dev: cloning the vault client: %v", err))
	}
	c.SetToken(s.VaultRootToken)
	c.ClearNamespace()
	return c
}

// Accessors lists every token accessor Vault holds; c must have a token
// allowed to list them (the root token).
func Accessors(ctx context.Context, c *vaultapi.Client) ([]string, error) {
	list, err := c.Logical().ListWithContext(ctx, "auth/token/accessors")
	if err != nil || list == nil {
		return nil, fmt.Errorf("dev: list token accessors: %v", err)
	}
	keys, _ := list.Data["keys"].([]any)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if acc, ok := k.(string); ok {
			out = append(out, acc)
		}
	}
	return out, nil
}

// LiveCredentials lists, asking Vault as root, the accessors of the live
// service tokens whose metadata names one of agents (atf_agent): the
// service credentials brokers issued to them that Vault still honours.
// Batch credentials are not in Vault's lists; LiveAnchors shows what they
// hang on.
func (s *Stack) LiveCredentials(ctx context.Context, agents ...string) ([]string, error) {
	var out []string
	err := s.liveTokens(ctx, agents, func(acc string, meta map[string]any) {
		if _, anchor := meta["atf_node"]; !anchor {
			out = append(out, acc)
		}
	})
	return out, err
}

// LiveAnchors lists, asking Vault as root, the nodes (atf_node: agent:…,
// grant:…, and role nodes …#role) of the live anchors under which agents'
// credentials hang: while none lives, none of their batch credentials can.
func (s *Stack) LiveAnchors(ctx context.Context, agents ...string) ([]string, error) {
	var out []string
	err := s.liveTokens(ctx, agents, func(_ string, meta map[string]any) {
		if node, ok := meta["atf_node"].(string); ok {
			out = append(out, node)
		}
	})
	slices.Sort(out)
	return out, err
}

// liveTokens calls found with every live token whose metadata names one
// of agents (atf_agent).
func (s *Stack) liveTokens(ctx context.Context, agents []string, found func(accessor string, meta map[string]any)) error {
	v := s.VaultClient()
	all, err := Accessors(ctx, v)
	if err != nil {
		return err
	}
	for _, acc := range all {
		sec, err := v.Auth().Token().LookupAccessorWithContext(ctx, acc)
		if err != nil {
			continue // expired or revoked since the list
		}
		meta, _ := sec.Data["meta"].(map[string]any)
		if agent, _ := meta["atf_agent"].(string); slices.Contains(agents, agent) {
			found(acc, meta)
		}
	}
	return nil
}

// Vault runs the vault CLI against the stack, as root, and returns its
// stdout.
func (s *Stack) Vault(ctx context.Context, args ...string) (string, error) {
	return s.run(ctx, s.vaultEnv(), "vault", args...)
}

// BrokerVaultToken creates an orphan token with only the atf-broker policy,
// periodic (1 h), as atfd would get it from an operator.
func (s *Stack) BrokerVaultToken(ctx context.Context) (string, error) {
	secret, err := s.vault.Auth().Token().CreateOrphanWithContext(ctx, &vaultapi.TokenCreateRequest{
		Policies:        []string{BrokerPolicy},
		NoDefaultPolicy: true,
		Period:          "1h",
		DisplayName:     "atf-broker",
	})
	if err != nil {
		return "", fmt.Errorf("dev: creating the broker token: %w", err)
	}
	if secret == nil || secret.Auth == nil {
		return "", errors.New("dev: creating the broker token: no token in response")
	}
	return secret.Auth.ClientToken, nil
}

// BrokerAppRole returns the role ID and a new secret ID of the atf-broker
// AppRole, with which atfd logs in to get a token with policy atf-broker.
func (s *Stack) BrokerAppRole(ctx context.Context) (roleID, secretID string, err error) {
	path := "auth/approle/role/" + brokerAppRole
	role, err := s.vault.Logical().ReadWithContext(ctx, path+"/role-id")
	if err != nil {
		return "", "", fmt.Errorf("dev: reading the broker role ID: %w", err)
	}
	if role == nil {
		return "", "", errors.New("dev: reading the broker role ID: no such role")
	}
	secret, err := s.vault.Logical().WriteWithContext(ctx, path+"/secret-id", nil)
	if err != nil {
		return "", "", fmt.Errorf("dev: creating a broker secret ID: %w", err)
	}
	if secret == nil {
		return "", "", errors.New("dev: creating a broker secret ID: empty response")
	}
	roleID, _ = role.Data["role_id"].(string)
	secretID, _ = secret.Data["secret_id"].(string)
	if roleID == "" || secretID == "" {
		return "", "", errors.New("dev: broker AppRole: missing role_id or secret_id in response")
	}
	return roleID, secretID, nil
}
