package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"
)

// minimal is a configuration that validates.
func minimal() config.Config {
	return config.Config{
		ListenAddr:   "127.0.0.1:0",
		TrustDomains: []string{"td"},
		StorePath:    "atf.db",
		RolesFile:    "roles.yaml",
		Vault:        config.VaultConfig{Address: "http://127.0.0.1:8200", Auth: config.VaultAuth{Method: "token"}},
	}
}

func TestConfigDefaults(t *testing.T) {
	c := minimal()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Approvals.PendingTTL != time.Hour || c.Approvals.RedeemWithin != 15*time.Minute {
		t.Errorf("approval windows = %s, %s; want 1h, 15m", c.Approvals.PendingTTL, c.Approvals.RedeemWithin)
	}
	if len(c.Limits.Rate) != 4 || c.Limits.Rate["intern"] != (config.RateLimit{PerSecond: 1, Burst: 10}) {
		t.Errorf("rate limits = %v, want the defaults", c.Limits.Rate)
	}
	if c.Limits.MaxLivePerAgent != 50 || c.Limits.MaxLivePerLineage != 500 || c.Limits.MaxLivePerRole != 5000 {
		t.Errorf("live limits = %d/%d/%d, want 50/500/5000", c.Limits.MaxLivePerAgent, c.Limits.MaxLivePerLineage, c.Limits.MaxLivePerRole)
	}
	if c.Limits.MaxStreams != 4096 || c.Limits.MaxStreamsPerConnection != 128 || c.Limits.MaxConnectionsPerIP != 256 {
		t.Errorf("stream and connection limits = %d/%d/%d, want 4096/128/256", c.Limits.MaxStreams, c.Limits.MaxStreamsPerConnection, c.Limits.MaxConnectionsPerIP)
	}
	// A set map is taken as written: levels left out are not rate limited.
	c = minimal()
	c.Limits.Rate = map[string]config.RateLimit{"junior": {PerSecond: 3, Burst: 3}}
	c.Limits.MaxLivePerAgent = -1
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.Limits.Rate) != 1 || c.Limits.MaxLivePerAgent != -1 {
		t.Errorf("limits = %+v; want the rate map and -1 kept", c.Limits)
	}
}

func TestConfigRefusals(t *testing.T) {
	for _, tt := range []struct {
		name   string
		change func(*config.Config)
		want   string
	}{
		{"policy model without policy", func(c *config.Config) { c.Policy.ModelFile = "m.conf" }, "policy.model_file and policy.policy_file go together"},
		{"approver not a SPIFFE ID", func(c *config.Config) { c.Approvals.Approvers = []string{"bob"} }, "approvals.approvers:"},
		{"no stream limit", func(c *config.Config) { c.Limits.MaxStreams = -1 }, "limits.max_streams must be positive"},
		{"negative connections per IP", func(c *config.Config) { c.Limits.MaxConnectionsPerIP = -2 }, "limits.max_connections_per_ip must be positive, or -1 for no limit"},
		{"negative approval window", func(c *config.Config) { c.Approvals.RedeemWithin = -time.Minute }, "redeem_within must be positive"},
		{"webhook url twice", func(c *config.Config) {
			c.Notifications.Webhook.URLFile, c.Notifications.Webhook.URLEnv = "f", "E"
		}, "url_file and url_env are alternatives"},
		{"rate for an unknown level", func(c *config.Config) { c.Limits.Rate = map[string]config.RateLimit{"boss": {PerSecond: 1, Burst: 1}} }, `limits.rate: authz: unknown level "boss"`},
		{"rate of zero", func(c *config.Config) { c.Limits.Rate = map[string]config.RateLimit{"intern": {Burst: 1}} }, "limits.rate.intern: per_second must be positive"},
		{"live limit below -1", func(c *config.Config) { c.Limits.MaxLivePerRole = -5 }, "limits.max_live_per_role must be positive, or -1"},
		{"max ttl above the default", func(c *config.Config) { c.Limits.MaxTTL = map[string]time.Duration{"junior": time.Hour} }, "limits.max_ttl.junior must be positive and at most the default 15m0s"},
		{"max uses above the default", func(c *config.Config) { c.Limits.MaxUses = map[string]int{"principal": 1000} }, "limits.max_uses.principal must be positive and at most the default 100"},
		{"max uses for an unknown level", func(c *config.Config) { c.Limits.MaxUses = map[string]int{"chief": 1} }, `limits.max_uses: authz: unknown level "chief"`},
		{"negative Vault breaker", func(c *config.Config) { c.Vault.Breaker.OpenFor = -time.Second }, "vault.breaker: OpenFor is -1s; want 0 or more"},
		{"OAuth without issuer", func(c *config.Config) { c.OAuth.ListenAddr = ":8443" }, `oauth.issuer must be an https URL without query, fragment or trailing slash, such as https://atfd.example:8443, not ""`},
		{"OAuth issuer over http", func(c *config.Config) { c.OAuth = config.OAuthConfig{ListenAddr: ":8443", Issuer: "http://atfd"} }, "oauth.issuer must be an https URL"},
		{"OAuth issuer with a trailing slash", func(c *config.Config) { c.OAuth = config.OAuthConfig{ListenAddr: ":8443", Issuer: "https://atfd/"} }, "oauth.issuer must be an https URL"},
		{"OAuth rotation too often", func(c *config.Config) {
			c.OAuth = config.OAuthConfig{ListenAddr: ":8443", Issuer: "https://atfd", RotateEvery: time.Second}
		}, "oauth.rotate_every must be at least 1m"},
		{"OAuth resource server not a SPIFFE ID", func(c *config.Config) {
			c.OAuth = config.OAuthConfig{ListenAddr: ":8443", Issuer: "https://atfd", ResourceServers: []string{"mcp"}}
		}, "oauth.resource_servers:"},
		{"atfctl login without the console", func(c *config.Config) { c.Console.CLIClientID = "atfctl" }, "console.cli_client_id needs the console"},
		{"atfctl login as the console's client", func(c *config.Config) {
			c.Console = config.ConsoleConfig{ListenAddr: "127.0.0.1:8444", URL: "http://127.0.0.1:8444", CLIClientID: "atf-console",
				OIDC: config.OIDCConfig{Issuer: "https://op.example", ClientID: "atf-console"}, Roles: map[string][]string{"auditor": {"g"}}}
		}, "console.cli_client_id must be a client of its own"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := minimal()
			tt.change(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestLoadRolesRefusals(t *testing.T) {
	for _, tt := range []struct {
		name, yaml, want string
	}{
		{"no classification", "roles:\n  - {name: a, class: read, policies: [p], max_ttl: 1m}\n", `role 1 ("a"): authz: unknown data classification ""`},
		{"unknown classification", "roles:\n  - {name: a, class: read, classification: top, policies: [p], max_ttl: 1m}\n", `unknown data classification "top"`},
		{"dot segment", "roles:\n  - {name: kv/../a, class: read, classification: public, policies: [p], max_ttl: 1m}\n", "dot segments are not allowed"},
		{"uppercase", "roles:\n  - {name: KV/a, class: read, classification: public, policies: [p], max_ttl: 1m}\n", `use lowercase: "kv/a"`},
		{"dynamic batch", "roles:\n  - {name: db, class: read, classification: internal, policies: [p], max_ttl: 1m, kind: batch, dynamic: database/creds/db}\n",
			`role 1 ("db"): a role with a dynamic secret has service credentials`},
		{"dynamic mount only", "roles:\n  - {name: db, class: read, classification: internal, policies: [p], max_ttl: 1m, dynamic: database}\n",
			`dynamic "database": want a secrets engine path such as database/creds/ROLE`},
		{"dynamic dot dot", "roles:\n  - {name: db, class: read, classification: internal, policies: [p], max_ttl: 1m, dynamic: database/creds/../x}\n",
			`dynamic "database/creds/../x": segment ".."`},
		{"dynamic trailing slash", "roles:\n  - {name: db, class: read, classification: internal, policies: [p], max_ttl: 1m, dynamic: database/creds/}\n",
			`segment "": use letters, digits`},
		{"dynamic query", "roles:\n  - {name: db, class: read, classification: internal, policies: [p], max_ttl: 1m, dynamic: \"database/creds/x?ttl=1h\"}\n",
			`segment "x?ttl=1h"`},
		{"dynamic from sys", "roles:\n  - {name: db, class: read, classification: internal, policies: [p], max_ttl: 1m, dynamic: sys/leases/lookup}\n",
			`dynamic "sys/leases/lookup": sys/ is not a secrets engine`},
		{"dynamic from auth", "roles:\n  - {name: db, class: read, classification: internal, policies: [p], max_ttl: 1m, dynamic: auth/token/create}\n",
			`auth/ is not a secrets engine`},
		{"unknown kind", "roles:\n  - {name: a, class: read, classification: public, policies: [p], max_ttl: 1m, kind: oauth}\n", `kind must be batch, service or jwt, not "oauth"`},
		{"jwt with policies", "roles:\n  - {name: a, kind: jwt, class: read, classification: public, policies: [p], audience: \"https://x\", max_ttl: 1m}\n",
			"a role of kind jwt issues access tokens, not Vault tokens: it takes no policies and no dynamic secret"},
		{"jwt without audience", "roles:\n  - {name: a, kind: jwt, class: read, classification: public, max_ttl: 1m}\n",
			`a role of kind jwt needs audience, an absolute URI without fragment (RFC 8707), not ""`},
		{"jwt relative audience", "roles:\n  - {name: a, kind: jwt, class: read, classification: public, audience: tools, max_ttl: 1m}\n", `not "tools"`},
		{"jwt scope with a space", "roles:\n  - {name: a, kind: jwt, class: read, classification: public, audience: \"https://x\", scopes: [\"a b\"], max_ttl: 1m}\n",
			`scope "a b": scopes are distinct, non-empty printable ASCII`},
		{"jwt scope twice", "roles:\n  - {name: a, kind: jwt, class: read, classification: public, audience: \"https://x\", scopes: [a, a], max_ttl: 1m}\n", `scope "a"`},
		{"two jwt roles, one audience", "roles:\n  - {name: a, kind: jwt, class: read, classification: public, audience: \"https://x\", max_ttl: 1m}\n" +
			"  - {name: b, kind: jwt, class: write, classification: public, audience: \"https://x\", max_ttl: 1m}\n",
			`roles "a" and "b" both have audience "https://x": a resource belongs to one role`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "roles.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := config.LoadRoles(path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadRoles = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	// Hierarchical names are fine.
	path := filepath.Join(t.TempDir(), "roles.yaml")
	if err := os.WriteFile(path, []byte("roles:\n  - {name: kv/reports/read, class: read, classification: internal, policies: [p], max_ttl: 1m}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if roles, err := config.LoadRoles(path); err != nil || len(roles) != 1 {
		t.Fatalf("LoadRoles = %v, %v; want one role", roles, err)
	}
}

// A role with a dynamic secret keeps its path and gets service
// credentials unless it says so itself; others stay batch by default.
func TestLoadRolesDynamic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "roles.yaml")
	if err := os.WriteFile(path, []byte(`roles:
  - {name: orders-db, class: read, classification: internal, policies: [p], max_ttl: 1m, dynamic: database/creds/orders-db}
  - {name: orders-db-svc, class: read, classification: internal, policies: [p], max_ttl: 1m, kind: service, dynamic: database/creds/orders_db.v2}
  - {name: reports, class: read, classification: internal, policies: [p], max_ttl: 1m}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	roles, err := config.LoadRoles(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][2]string{
		"orders-db":     {"service", "database/creds/orders-db"},
		"orders-db-svc": {"service", "database/creds/orders_db.v2"},
		"reports":       {"batch", ""},
	} {
		if r := roles[name]; r.Kind != want[0] || r.Dynamic != want[1] {
			t.Errorf("role %s: kind %q, dynamic %q; want %q, %q", name, r.Kind, r.Dynamic, want[0], want[1])
		}
	}
}
