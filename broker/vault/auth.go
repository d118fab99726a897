package vault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	vaultapi "github.com/hashicorp/vault/api"
)

// AppRole logs the broker in with Vault's AppRole auth method. The secret
// id is read from its file at every login, so it can be rotated on disk.
type AppRole struct {
	// Mount is the auth mount path; default "approle".
	Mount        string
	RoleID       string
	SecretIDFile string
}

// Login implements vaultapi.AuthMethod.
func (a AppRole) Login(ctx context.Context, c *vaultapi.Client) (*vaultapi.Secret, error) {
	secretID, err := os.ReadFile(a.SecretIDFile)
	if err != nil {
		return nil, fmt.Errorf("vault: approle: read secret id file: %w", err)
	}
	return c.Logical().WriteWithContext(ctx, "auth/"+mount(a.Mount, "approle")+"/login", map[string]any{
		"role_id":   a.RoleID,
		"secret_id": strings.TrimSpace(string(secretID)),
	})
}

// JWT logs the broker in with Vault's JWT auth method, presenting the
// broker's own JWT-SVID, fetched fresh at every login.
type JWT struct {
	// Mount is the auth mount path; default "jwt".
	Mount string
	Role  string
	// Token returns a JWT-SVID whose audience Vault's role expects.
	Token func(ctx context.Context) (string, error)
}

// Login implements vaultapi.AuthMethod.
func (j JWT) Login(ctx context.Context, c *vaultapi.Client) (*vaultapi.Secret, error) {
	if j.Token == nil {
		return nil, errors.New("vault: jwt: no token source")
	}
	tok, err := j.Token(ctx)
	if err != nil {
		return nil, fmt.Errorf("vault: jwt: fetch JWT-SVID: %w", err)
	}
	return c.Logical().WriteWithContext(ctx, "auth/"+mount(j.Mount, "jwt")+"/login", map[string]any{
		"role": j.Role,
		"jwt":  tok,
	})
}

func mount(m, def string) string {
	if m = strings.Trim(m, "/"); m == "" {
		return def
	}
	return m
}
