// Package config is atfd's configuration: the YAML file, its validation and
// defaults, and the roles file. It owns no running state.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/breaker"
	"github.com/agentictrust/atf/broker/maturity"
)

// Config is atfd's configuration, read from YAML (see docs/operations.md,
// configuration reference). Secrets are never written in it: it names the
// files or environment variables that hold them.
type Config struct {
	// ListenAddr is the gRPC address, e.g. 0.0.0.0:8443.
	ListenAddr string `yaml:"listen_addr"`
	// SPIFFE says where the broker's own SVID and the trust bundles come from.
	SPIFFE SPIFFEConfig `yaml:"spiffe"`
	// TrustDomains lists the trust domains whose workloads may call.
	TrustDomains []string `yaml:"trust_domains"`
	// JWTAudience is the audience a caller's JWT-SVID must carry; default
	// the broker's own SPIFFE ID.
	JWTAudience string `yaml:"jwt_audience"`
	// Admins are the SPIFFE IDs allowed to call AdminService.
	Admins []string `yaml:"admins"`
	// SecurityOperators may stop agents (as admins may) and are the only
	// ones who may release them (ResponseService).
	SecurityOperators []string `yaml:"security_operators"`
	// StorePath is the bbolt file; empty when the store is in etcd.
	StorePath string `yaml:"store_path"`
	// Store holds the store in etcd instead, for several replicas
	// (docs/operations.md, "Several replicas on etcd").
	Store StoreConfig `yaml:"store"`
	// StoreMaxSize bounds the store file, in bytes (0: the disk is the
	// limit). Near it, nothing new is issued while revocations still
	// commit in the room kept for them (store.Options.MaxSize). Set it
	// below the disk's free space so that room is real.
	StoreMaxSize int64 `yaml:"store_max_size"`
	// StoreRetention is how long expired credential records, anchors,
	// grants and approvals stay in the store before they are pruned (the
	// audit trail keeps their story); default 24h.
	StoreRetention time.Duration `yaml:"store_retention"`
	// RolesFile defines the roles credentials are issued for.
	RolesFile string      `yaml:"roles_file"`
	Vault     VaultConfig `yaml:"vault"`
	// LogLevel is debug, info, warn or error; LogFormat is json or text.
	LogLevel  string `yaml:"log_level"`
	LogFormat string `yaml:"log_format"`
	// Policy seeds the segmentation policy.
	Policy PolicyConfig `yaml:"policy"`
	// Approvals configures human approval of Junior writes.
	Approvals ApprovalsConfig `yaml:"approvals"`
	// Notifications says where notifications go besides admins' event
	// streams.
	Notifications NotificationsConfig `yaml:"notifications"`
	// Audit says where the audit trail is streamed besides the store.
	Audit AuditConfig `yaml:"audit"`
	// Limits bound request rates and live credentials (ATF S-3..S-5).
	Limits LimitsConfig `yaml:"limits"`
	// MetricsAddr serves Prometheus metrics on /metrics (plain HTTP, e.g.
	// 127.0.0.1:9090); empty: off.
	MetricsAddr string `yaml:"metrics_addr"`
	// HealthInterval is how often Vault and the Workload API are probed for
	// the gRPC health service (default 5s).
	HealthInterval time.Duration `yaml:"health_interval"`
	// Maturity tunes the promotion gates.
	Maturity MaturityConfig `yaml:"maturity"`
	// Monitor tunes behaviour monitoring and the circuit breaker.
	Monitor MonitorConfig `yaml:"monitor"`
	// Tracing exports an OpenTelemetry span for every call and every
	// credential decision; off unless an endpoint is set.
	Tracing TracingConfig `yaml:"tracing"`
	// OAuth is the OAuth 2.0 token exchange (docs/oauth.md); off unless
	// oauth.listen_addr is set.
	OAuth OAuthConfig `yaml:"oauth"`
	// Console is the web console for people, who sign in through OpenID
	// Connect (docs/console.md); off unless console.listen_addr is set.
	Console ConsoleConfig `yaml:"console"`
}

// Console roles: what a person signed in to the console may do
// (docs/console.md). Every role may read; auditor may only read.
const (
	ConsoleAdmin            = "admin"
	ConsoleApprover         = "approver"
	ConsoleSecurityOperator = "security_operator"
	ConsoleAuditor          = "auditor"
)

// ConsoleRoles are the console roles, in the order pages list them.
var ConsoleRoles = []string{ConsoleAdmin, ConsoleApprover, ConsoleSecurityOperator, ConsoleAuditor}

// ConsoleConfig configures the web console.
type ConsoleConfig struct {
	// ListenAddr is the console's listener; "" turns it off.
	ListenAddr string `yaml:"listen_addr"`
	// URL is where people's browsers reach the console, without a trailing
	// slash (the OpenID redirect URI is URL + "/auth/callback"): https,
	// or http on a loopback address for a workstation.
	URL string `yaml:"url"`
	// TLSCertFile and TLSKeyFile are the console's certificate, one that
	// browsers trust; required unless ListenAddr is a loopback address
	// (or a TLS-terminating proxy on the same host forwards to it).
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// OIDC is the OpenID provider people sign in with.
	OIDC OIDCConfig `yaml:"oidc"`
	// RolesClaim is the ID token (or userinfo) claim listing a person's
	// groups; default "groups".
	RolesClaim string `yaml:"roles_claim"`
	// Roles maps each console role (admin, approver, security_operator,
	// auditor) to the values of RolesClaim that grant it.
	Roles map[string][]string `yaml:"roles"`
	// SessionTTL is how long a sign-in lasts; default 30m, at most 12h.
	SessionTTL time.Duration `yaml:"session_ttl"`
	// ReauthAfter is how recent a person's authentication at the provider
	// must be for a dangerous act (the global kill switch, a policy
	// change); default 5m.
	ReauthAfter time.Duration `yaml:"reauth_after"`
	// CLIClientID is atfctl's client id at the provider: a public client
	// of the device authorization grant (RFC 8628). When set, a person
	// who ran `atfctl login` calls the admin services with the ID token
	// the provider gave atfctl (audience CLIClientID), under the same
	// roles as in the console; "" refuses people on the gRPC API.
	CLIClientID string `yaml:"cli_client_id"`
	// SessionKeyFile holds the key (32 random bytes, hex) that seals the
	// session cookies; replicas behind one address share it. Default: a
	// key of this process, so a restart signs everybody out.
	SessionKeyFile string `yaml:"session_key_file"`
}

// OIDCConfig names an OpenID provider and the console's client there.
type OIDCConfig struct {
	// Issuer is the provider's issuer URL (its discovery document is at
	// Issuer + "/.well-known/openid-configuration").
	Issuer   string `yaml:"issuer"`
	ClientID string `yaml:"client_id"`
	// ClientSecretFile holds the client secret; empty for a public
	// client (PKCE alone).
	ClientSecretFile string `yaml:"client_secret_file"`
	// Scopes asked for besides openid; default profile, email.
	Scopes []string `yaml:"scopes"`
}

// Enabled says whether the console is on.
func (c ConsoleConfig) Enabled() bool { return c.ListenAddr != "" }

// OAuthConfig configures the OAuth 2.0 token exchange (RFC 8693) that
// issues JWT access tokens for roles of kind jwt (docs/oauth.md).
type OAuthConfig struct {
	// ListenAddr is the HTTPS listener of the OAuth endpoints; "" turns
	// them off.
	ListenAddr string `yaml:"listen_addr"`
	// Issuer is the tokens' iss and the base of the metadata's URLs, an
	// https URL without a trailing slash.
	Issuer string `yaml:"issuer"`
	// TransitMount and Key name the Vault transit key (ecdsa-p256) that
	// signs the tokens; defaults transit and atf-oauth.
	TransitMount string `yaml:"transit_mount"`
	Key          string `yaml:"key"`
	// ResourceServers are the SPIFFE IDs that may introspect tokens and
	// subscribe to revocation events.
	ResourceServers []string `yaml:"resource_servers"`
	// RotateEvery rotates the signing key once the newest version is this
	// old; default 24h. The previous versions stay published while tokens
	// they signed may be unexpired.
	RotateEvery time.Duration `yaml:"rotate_every"`
}

// Enabled says whether the OAuth endpoints are on.
func (o OAuthConfig) Enabled() bool { return o.ListenAddr != "" }

// TracingConfig sends traces over OTLP/gRPC.
type TracingConfig struct {
	// Endpoint is the OTLP/gRPC collector, host:port; empty: off.
	Endpoint string `yaml:"endpoint"`
	// Insecure sends without TLS, for a collector on the same host.
	Insecure bool `yaml:"insecure"`
	// SampleRatio is the share of traces started here that are kept
	// (default 1); a caller's sampled trace is always continued.
	SampleRatio *float64 `yaml:"sample_ratio"`
}

// MaturityConfig tunes the promotion gates (defaults: ATF's).
type MaturityConfig struct {
	// Authorities are the SPIFFE IDs of the people whose sign-off counts;
	// empty: any admin's but the agent's owner's. Each signs with their
	// own SVID, so each must be an admin.
	Authorities []string `yaml:"authorities"`
	// OutcomeReporters are SPIFFE IDs, besides admins and approvers, that
	// may report on an agent's work (resource servers, QA workloads):
	// reports that count in full for the performance gate.
	OutcomeReporters []string `yaml:"outcome_reporters"`
	// SelfReportedWeight is what an agent's report of its own success
	// counts for, 0 (default) to 1; its own failures always count in full.
	SelfReportedWeight float64 `yaml:"self_reported_weight"`
	// MinTimeAtLevel overrides the time at intern, junior, senior.
	MinTimeAtLevel map[string]time.Duration `yaml:"min_time_at_level"`
	// MinOutcomes is how many outcome reports rates need (default 20).
	MinOutcomes int `yaml:"min_outcomes"`
	// DemoteOnBreakerTrip demotes an agent whenever its breaker opens.
	DemoteOnBreakerTrip bool `yaml:"demote_on_breaker_trip"`
}

// MonitorConfig tunes behaviour monitoring (ATF B-3, B-4) and the circuit
// breaker.
type MonitorConfig struct {
	// BaselineWindow and BaselineOps: a baseline forms after this long or
	// this many events (defaults 168h, 1000).
	BaselineWindow time.Duration `yaml:"baseline_window"`
	BaselineOps    int           `yaml:"baseline_ops"`
	// Actions maps an anomaly severity (low, medium, high, critical) to
	// alert, breaker, demote or kill. Default: low and medium alert, high
	// trips the breaker, critical demotes.
	Actions map[string]string `yaml:"actions"`
	// Breaker: failures or denials within window open it for open_for; then
	// probes successes close it.
	Breaker breaker.Config `yaml:"breaker"`
}

// PolicyConfig names the Casbin model and policy the store starts with.
// They are read only while the store holds no policy; after that the
// store's versions (changed through AdminService) are the truth, and a
// start with different files logs a warning.
type PolicyConfig struct {
	ModelFile  string `yaml:"model_file"`
	PolicyFile string `yaml:"policy_file"`
}

// ApprovalsConfig configures human approval.
type ApprovalsConfig struct {
	// Approvers are the SPIFFE IDs (of people's tools or workloads) allowed
	// to call ApprovalService.
	Approvers []string `yaml:"approvers"`
	// PendingTTL is how long a request waits for a decision (default 1h);
	// RedeemWithin how long an approved request may be redeemed (default
	// 15m).
	PendingTTL   time.Duration `yaml:"pending_ttl"`
	RedeemWithin time.Duration `yaml:"redeem_within"`
}

// NotificationsConfig configures the webhook sink.
type NotificationsConfig struct {
	Webhook WebhookConfig `yaml:"webhook"`
}

// WebhookConfig is an HTTP endpoint notifications are POSTed to as JSON.
// Its URL often embeds a secret, so it is read from a file or an
// environment variable, like the signing secret.
type WebhookConfig struct {
	URLFile     string        `yaml:"url_file"`
	URLEnv      string        `yaml:"url_env"`
	SecretFile  string        `yaml:"secret_file"`
	Timeout     time.Duration `yaml:"timeout"`
	MaxAttempts int           `yaml:"max_attempts"`
}

// AuditConfig streams audit records as JSON lines.
type AuditConfig struct {
	// File is appended to (and resumed after a restart without gaps or
	// duplicates).
	File string `yaml:"file"`
	// Stdout also writes them to standard output, for a log shipper.
	Stdout bool `yaml:"stdout"`
	// Dir is where the trail lives once committed: JSON-lines segment
	// files with a checkpoint in the store (docs/operations.md), so that
	// the store stays the size of the live state. Default: store_path
	// with ".audit" added.
	Dir string `yaml:"dir"`
}

// LimitsConfig bounds what agents can ask for. A count of 0 takes the
// default; -1 means no limit.
type LimitsConfig struct {
	// Rate is a token bucket per agent, by maturity level name. Unset takes
	// the defaults; a level left out of a set map is not rate limited.
	Rate map[string]RateLimit `yaml:"rate"`
	// CallRate is a second token bucket per caller, by level, for the
	// other BrokerService calls (delegate, revoke a grant, report an
	// outcome, open a watch, who am I): unset takes the same defaults as
	// Rate. Unregistered callers get the Intern rate, per SPIFFE ID; the
	// configured outcome reporters that are not agents the Principal one.
	CallRate map[string]RateLimit `yaml:"call_rate"`
	// RefusalWindow is how long the refusals of one caller by the same
	// kind and reason that need no record each (an unregistered caller,
	// a rate limit, the kill switch) are counted in memory after the
	// first is written, before one aggregated record says how many there
	// were (default 1m; docs/security.md).
	RefusalWindow time.Duration `yaml:"refusal_window"`
	// Live credentials at once: per agent (default 50), per lineage (all
	// credentials issued under one root agent's authority, default 500) and
	// per role (default 5000).
	MaxLivePerAgent   int `yaml:"max_live_per_agent"`
	MaxLivePerLineage int `yaml:"max_live_per_lineage"`
	MaxLivePerRole    int `yaml:"max_live_per_role"`
	// MaxTTL and MaxUses tighten the maturity defaults per level (a value
	// above the default is refused: autonomy is widened by promotion, not
	// by configuration).
	MaxTTL  map[string]time.Duration `yaml:"max_ttl"`
	MaxUses map[string]int           `yaml:"max_uses"`
	// MaxStreams bounds the authenticated streams (revocation, event and
	// approval watches) open at once across all connections (default
	// 4096); MaxStreamsPerConnection the calls open at once on one
	// connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS, default 128);
	// MaxConnectionsPerIP the connections open at once from one IP
	// address (default 256, -1: no limit). Together they bound what a
	// client, with or without an SVID, can make atfd hold.
	MaxStreams              int `yaml:"max_streams"`
	MaxStreamsPerConnection int `yaml:"max_streams_per_connection"`
	MaxConnectionsPerIP     int `yaml:"max_connections_per_ip"`
}

// LevelLimits applies the configured tightening to the maturity defaults.
func (c LimitsConfig) LevelLimits() (map[authz.Level]authz.LevelLimits, error) {
	limits := authz.DefaultLimits()
	for name, ttl := range c.MaxTTL {
		l, err := authz.ParseLevel(name)
		if err != nil {
			return nil, fmt.Errorf("limits.max_ttl: %w", err)
		}
		lim := limits[l]
		if ttl <= 0 || ttl > lim.MaxTTL {
			return nil, fmt.Errorf("limits.max_ttl.%s must be positive and at most the default %s", name, lim.MaxTTL)
		}
		lim.MaxTTL = ttl
		limits[l] = lim
	}
	for name, uses := range c.MaxUses {
		l, err := authz.ParseLevel(name)
		if err != nil {
			return nil, fmt.Errorf("limits.max_uses: %w", err)
		}
		lim := limits[l]
		if uses <= 0 || (lim.MaxUses > 0 && uses > lim.MaxUses) {
			return nil, fmt.Errorf("limits.max_uses.%s must be positive and at most the default %d", name, lim.MaxUses)
		}
		lim.MaxUses = uses
		limits[l] = lim
	}
	return limits, nil
}

// RateLimit is a token bucket: PerSecond requests on average, Burst at once.
type RateLimit struct {
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// DefaultRateLimits are the credential request rates per level.
func DefaultRateLimits() map[string]RateLimit {
	return map[string]RateLimit{
		"intern":    {PerSecond: 1, Burst: 10},
		"junior":    {PerSecond: 2, Burst: 20},
		"senior":    {PerSecond: 10, Burst: 50},
		"principal": {PerSecond: 20, Burst: 100},
	}
}

// SPIFFEConfig selects the Workload API or files.
type SPIFFEConfig struct {
	// WorkloadAPIAddr defaults to $SPIFFE_ENDPOINT_SOCKET.
	WorkloadAPIAddr string `yaml:"workload_api_addr"`
	// SVIDFile and SVIDKeyFile replace the Workload API's SVID.
	SVIDFile    string `yaml:"svid_file"`
	SVIDKeyFile string `yaml:"svid_key_file"`
	// BundleFiles maps trust domain names to bundle files and replaces the
	// Workload API's bundles.
	BundleFiles map[string]string `yaml:"bundle_files"`
}

// VaultConfig says how to reach and log in to Vault.
type VaultConfig struct {
	Address        string        `yaml:"address"`
	CACertFile     string        `yaml:"ca_cert_file"`
	CredentialRole string        `yaml:"credential_role"`
	Timeout        time.Duration `yaml:"timeout"`
	Auth           VaultAuth     `yaml:"auth"`
	// Breaker fails issuance fast while Vault keeps failing: failures
	// unavailability failures in a row within window open it, and
	// issuance then fails fast (Unavailable, with the time to retry) for
	// open_for; then one request probes Vault, and an answer closes it.
	// Revocations never wait on it. Zero takes vault.DefaultBreakerConfig.
	Breaker breaker.Config `yaml:"breaker"`
}

// VaultAuth is the broker's own Vault login.
type VaultAuth struct {
	// Method is token (development), approle or jwt.
	Method string `yaml:"method"`
	// TokenEnv names the environment variable holding the token (method
	// token); default VAULT_TOKEN. TokenFile, if set, is read instead.
	TokenEnv  string `yaml:"token_env"`
	TokenFile string `yaml:"token_file"`
	// Mount is the auth mount path (approle, jwt); defaults to the method name.
	Mount string `yaml:"mount"`
	// RoleID and SecretIDFile are the AppRole credentials.
	RoleID       string `yaml:"role_id"`
	SecretIDFile string `yaml:"secret_id_file"`
	// Role and Audience are the JWT auth role and the audience of the
	// broker's JWT-SVID that Vault expects (default "vault").
	Role     string `yaml:"role"`
	Audience string `yaml:"audience"`
}

// Load reads a YAML configuration file. Unknown keys are errors, so a
// typo never silently leaves a default in place.
func Load(path string) (Config, error) {
	var cfg Config
	raw, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return cfg, fmt.Errorf("config: %s: %w", path, err)
	}
	return cfg, nil
}

// Validate checks cfg and fills in defaults. Every problem is reported,
// one per line, not just the first.
func (c *Config) Validate() error {
	var v validation
	c.validateCore(&v)
	c.validateVault(&v)
	c.validateLogging(&v)
	c.validatePeople(&v)
	c.validateApprovals(&v)
	c.validateLimits(&v)
	c.validateMonitor(&v)
	c.validateOAuth(&v)
	c.validateConsole(&v)
	if err := errors.Join(v.errs...); err != nil {
		return fmt.Errorf("config: invalid:\n%w", err)
	}
	return nil
}

// validation collects the problems Validate finds.
type validation struct{ errs []error }

func (v *validation) bad(format string, args ...any) {
	v.errs = append(v.errs, fmt.Errorf(format, args...))
}

// ids checks a list of SPIFFE IDs named under key.
func (v *validation) ids(key string, ids []string) {
	for _, a := range ids {
		if _, err := attest.ParseID(a); err != nil {
			v.bad("%s: %v", key, err)
		}
	}
}

func (c *Config) validateCore(v *validation) {
	if c.ListenAddr == "" {
		v.bad("listen_addr is required")
	}
	if len(c.TrustDomains) == 0 {
		v.bad("trust_domains needs at least one trust domain")
	}
	if c.StoreMaxSize < 0 {
		v.bad("store_max_size must not be negative")
	}
	switch {
	case c.StoreRetention < 0:
		v.bad("store_retention must not be negative")
	case c.StoreRetention == 0:
		c.StoreRetention = 24 * time.Hour
	}
	c.Store.validate(v, c.StorePath)
	if c.StorePath != "" && c.Audit.Dir == "" {
		c.Audit.Dir = c.StorePath + ".audit"
	}
	if c.RolesFile == "" {
		v.bad("roles_file is required")
	}
	if (c.SPIFFE.SVIDFile == "") != (c.SPIFFE.SVIDKeyFile == "") {
		v.bad("spiffe.svid_file and spiffe.svid_key_file go together")
	}
	if (c.Policy.ModelFile == "") != (c.Policy.PolicyFile == "") {
		v.bad("policy.model_file and policy.policy_file go together")
	}
	if c.HealthInterval == 0 {
		c.HealthInterval = 5 * time.Second
	}
	if c.HealthInterval < 0 {
		v.bad("health_interval must be positive")
	}
	if r := c.Tracing.SampleRatio; r != nil && (*r < 0 || *r > 1) {
		v.bad("tracing.sample_ratio must be between 0 and 1")
	}
}

func (c *Config) validateVault(v *validation) {
	if c.Vault.Address == "" {
		v.bad("vault.address is required")
	}
	if err := c.Vault.Breaker.Validate(); err != nil {
		v.bad("vault.%v", err)
	}
	a := &c.Vault.Auth
	switch a.Method {
	case "token":
		if a.TokenEnv == "" && a.TokenFile == "" {
			a.TokenEnv = "VAULT_TOKEN"
		}
	case "approle":
		if a.RoleID == "" || a.SecretIDFile == "" {
			v.bad("vault.auth: approle needs role_id and secret_id_file")
		}
	case "jwt":
		if a.Role == "" {
			v.bad("vault.auth: jwt needs role")
		}
		if a.Audience == "" {
			a.Audience = "vault"
		}
	default:
		v.bad("vault.auth.method must be token, approle or jwt, not %q", a.Method)
	}
}

func (c *Config) validateLogging(v *validation) {
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		v.bad("log_level: %v", err)
	}
	if c.LogFormat == "" {
		c.LogFormat = "json"
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		v.bad("log_format must be json or text, not %q", c.LogFormat)
	}
}

func (c *Config) validatePeople(v *validation) {
	v.ids("admins", c.Admins)
	v.ids("approvals.approvers", c.Approvals.Approvers)
	v.ids("security_operators", c.SecurityOperators)
	v.ids("maturity.outcome_reporters", c.Maturity.OutcomeReporters)
	for _, a := range c.Maturity.Authorities {
		if strings.HasPrefix(a, "oidc:") {
			// A person of the console: the console checks they are an admin.
			if !c.Console.Enabled() || !strings.Contains(a, "#") {
				v.bad("maturity.authorities: %s names a person signed in through OpenID Connect (oidc:ISSUER#SUBJECT), which needs the console on (console.listen_addr)", a)
			}
			continue
		}
		if _, err := attest.ParseID(a); err != nil {
			v.bad("maturity.authorities: %v", err)
			continue
		}
		if !slices.Contains(c.Admins, a) {
			v.bad("maturity.authorities: %s is not in admins: authorities record their sign-offs themselves, through the admin API", a)
		}
	}
}

func (c *Config) validateApprovals(v *validation) {
	if c.Approvals.PendingTTL == 0 {
		c.Approvals.PendingTTL = time.Hour
	}
	if c.Approvals.RedeemWithin == 0 {
		c.Approvals.RedeemWithin = 15 * time.Minute
	}
	if c.Approvals.PendingTTL < 0 || c.Approvals.RedeemWithin < 0 {
		v.bad("approvals: pending_ttl and redeem_within must be positive")
	}
	if w := c.Notifications.Webhook; w.URLFile != "" && w.URLEnv != "" {
		v.bad("notifications.webhook: url_file and url_env are alternatives")
	}
}

func (c *Config) validateLimits(v *validation) {
	if c.Limits.Rate == nil {
		c.Limits.Rate = DefaultRateLimits()
	}
	if c.Limits.CallRate == nil {
		c.Limits.CallRate = DefaultRateLimits()
	}
	for key, rates := range map[string]map[string]RateLimit{"rate": c.Limits.Rate, "call_rate": c.Limits.CallRate} {
		for name, r := range rates {
			if _, err := authz.ParseLevel(name); err != nil {
				v.bad("limits.%s: %v", key, err)
			}
			if r.PerSecond <= 0 || r.Burst < 1 {
				v.bad("limits.%s.%s: per_second must be positive and burst at least 1", key, name)
			}
		}
	}
	switch {
	case c.Limits.RefusalWindow == 0:
		c.Limits.RefusalWindow = time.Minute
	case c.Limits.RefusalWindow < 0:
		v.bad("limits.refusal_window must be positive")
	}
	if _, err := c.Limits.LevelLimits(); err != nil {
		v.bad("%v", err)
	}
	for _, l := range []struct {
		name string
		v    *int
		def  int
		// unlimited: -1 lifts the limit.
		unlimited bool
	}{
		{"max_live_per_agent", &c.Limits.MaxLivePerAgent, 50, true},
		{"max_live_per_lineage", &c.Limits.MaxLivePerLineage, 500, true},
		{"max_live_per_role", &c.Limits.MaxLivePerRole, 5000, true},
		{"max_connections_per_ip", &c.Limits.MaxConnectionsPerIP, 256, true},
		{"max_streams", &c.Limits.MaxStreams, 4096, false},
		{"max_streams_per_connection", &c.Limits.MaxStreamsPerConnection, 128, false},
	} {
		switch {
		case *l.v == 0:
			*l.v = l.def
		case *l.v == -1 && l.unlimited:
		case *l.v < 0 && l.unlimited:
			v.bad("limits.%s must be positive, or -1 for no limit", l.name)
		case *l.v < 0:
			v.bad("limits.%s must be positive", l.name)
		}
	}
}

func (c *Config) validateMonitor(v *validation) {
	if _, err := c.Maturity.Config(); err != nil {
		v.bad("maturity: %v", err)
	}
	if c.Monitor.Actions == nil {
		c.Monitor.Actions = map[string]string{"low": "alert", "medium": "alert", "high": "breaker", "critical": "demote"}
	}
	for sev, act := range c.Monitor.Actions {
		if _, err := maturity.ParseSeverity(sev); err != nil {
			v.bad("monitor.actions: %v", err)
		}
		if !slices.Contains([]string{"alert", "breaker", "demote", "kill"}, act) {
			v.bad("monitor.actions.%s must be alert, breaker, demote or kill, not %q", sev, act)
		}
	}
}

func (c *Config) validateOAuth(v *validation) {
	o := &c.OAuth
	if !o.Enabled() {
		return
	}
	if u, err := url.Parse(o.Issuer); err != nil || u.Scheme != "https" || u.Host == "" || strings.HasSuffix(o.Issuer, "/") ||
		u.RawQuery != "" || u.Fragment != "" {
		v.bad("oauth.issuer must be an https URL without query, fragment or trailing slash, such as https://atfd.example:8443, not %q", o.Issuer)
	}
	if o.TransitMount == "" {
		o.TransitMount = "transit"
	}
	if o.Key == "" {
		o.Key = "atf-oauth"
	}
	switch {
	case o.RotateEvery == 0:
		o.RotateEvery = 24 * time.Hour
	case o.RotateEvery < time.Minute:
		v.bad("oauth.rotate_every must be at least 1m")
	}
	v.ids("oauth.resource_servers", o.ResourceServers)
}

func (c *Config) validateConsole(v *validation) {
	o := &c.Console
	if !o.Enabled() {
		if o.CLIClientID != "" {
			v.bad("console.cli_client_id needs the console's provider and roles: set console.listen_addr and the rest of console")
		}
		return
	}
	loopback := isLoopback(o.ListenAddr)
	u, err := url.Parse(o.URL)
	switch {
	case err != nil || u.Host == "" || strings.HasSuffix(o.URL, "/") || u.RawQuery != "" || u.Fragment != "" || u.Path != "":
		v.bad("console.url must be the console's base URL, such as https://atf.example.com, without path or trailing slash, not %q", o.URL)
	case u.Scheme == "http" && !isLoopback(u.Host):
		v.bad("console.url: http is only for a loopback address (a workstation); people's browsers reach the console over https")
	case u.Scheme != "http" && u.Scheme != "https":
		v.bad("console.url must be an https URL, not %q", o.URL)
	}
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		v.bad("console.tls_cert_file and console.tls_key_file go together")
	}
	if o.TLSCertFile == "" && !loopback {
		v.bad("console.listen_addr %s is not a loopback address: set console.tls_cert_file and console.tls_key_file (the console never serves people in the clear)", o.ListenAddr)
	}
	if iu, err := url.Parse(o.OIDC.Issuer); err != nil || iu.Host == "" || (iu.Scheme != "https" && !(iu.Scheme == "http" && isLoopback(iu.Host))) {
		v.bad("console.oidc.issuer must be the OpenID provider's https issuer URL, not %q", o.OIDC.Issuer)
	}
	if o.OIDC.ClientID == "" {
		v.bad("console.oidc.client_id is required")
	}
	if o.CLIClientID != "" && o.CLIClientID == o.OIDC.ClientID {
		v.bad("console.cli_client_id must be a client of its own at the provider (a public one, with the device grant), not the console's %q: "+
			"each ID token then names the one client it was issued to", o.CLIClientID)
	}
	if len(o.OIDC.Scopes) == 0 {
		o.OIDC.Scopes = []string{"profile", "email"}
	}
	if o.RolesClaim == "" {
		o.RolesClaim = "groups"
	}
	if len(o.Roles) == 0 {
		v.bad("console.roles must map at least one role (admin, approver, security_operator, auditor) to groups of console.roles_claim: nobody could do anything")
	}
	for r := range o.Roles {
		if !slices.Contains(ConsoleRoles, r) {
			v.bad("console.roles: %q is no console role (admin, approver, security_operator, auditor)", r)
		}
	}
	switch {
	case o.SessionTTL == 0:
		o.SessionTTL = 30 * time.Minute
	case o.SessionTTL < time.Minute || o.SessionTTL > 12*time.Hour:
		v.bad("console.session_ttl must be between 1m and 12h")
	}
	switch {
	case o.ReauthAfter == 0:
		o.ReauthAfter = 5 * time.Minute
	case o.ReauthAfter < 0 || o.ReauthAfter > o.SessionTTL:
		v.bad("console.reauth_after must be positive and at most console.session_ttl")
	}
}

// isLoopback says whether hostport (or a host alone) is a loopback address
// or localhost.
func isLoopback(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Role is a credential the broker issues: a name agents ask for, a class
// that maturity gating checks, and the Vault policies the token carries.
type Role struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	Class       string `yaml:"class"`
	// Classification is the data behind the role: public, internal, pii or
	// secret (ATF D-3). The default policy needs Senior+ for pii and secret.
	Classification string        `yaml:"classification"`
	Policies       []string      `yaml:"policies"`
	MaxTTL         time.Duration `yaml:"max_ttl"`
	// Kind is the kind of Vault token the role's credentials are: batch
	// (the default: revoked at once with their anchor, any number of them;
	// no accessor, no use count, not revocable one by one) or service
	// (accessor-tracked, revocable alone). A use-limited credential is
	// always a service token. See docs/design.md §6.
	Kind string `yaml:"kind"`
	// Dynamic is a Vault path that yields a dynamic secret with a lease,
	// e.g. database/creds/orders-db: the broker reads it with the
	// credential's token and hands out the secret with the token. The
	// role's policies must allow read on it. Such a role's credentials
	// are service tokens, so that undoing a failed issuance revokes the
	// token and any lease it made (docs/design.md §3.4).
	Dynamic string `yaml:"dynamic"`
	// Audience is, for a role of kind jwt, the resource its access tokens
	// are for (their aud, an RFC 8707 resource indicator such as
	// https://mcp.example/tools); Scopes are the scopes a token may carry.
	// Such a role has no Vault policies (docs/oauth.md).
	Audience string   `yaml:"audience"`
	Scopes   []string `yaml:"scopes"`

	class          authz.Class
	classification authz.Classification
}

// LoadRoles reads and checks a roles file.
func LoadRoles(path string) (map[string]Role, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: roles: %w", err)
	}
	var file struct {
		Roles []Role `yaml:"roles"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		return nil, fmt.Errorf("config: roles %s: %w", path, err)
	}
	roles := make(map[string]Role, len(file.Roles))
	for i, r := range file.Roles {
		where := fmt.Sprintf("config: roles %s: role %d (%q)", path, i+1, r.Name)
		if _, err := authz.CanonicalRole(r.Name); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if _, dup := roles[r.Name]; dup {
			return nil, fmt.Errorf("%s: defined twice", where)
		}
		if r.class, err = authz.ParseClass(r.Class); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if r.classification, err = authz.ParseClassification(r.Classification); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if r.Kind == KindJWT {
			if err := r.checkJWT(); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
		} else if len(r.Policies) == 0 || slices.Contains(r.Policies, "root") || slices.Contains(r.Policies, "") {
			return nil, fmt.Errorf("%s: needs one or more Vault policies, none of them root", where)
		}
		if r.MaxTTL <= 0 {
			return nil, fmt.Errorf("%s: max_ttl must be positive", where)
		}
		if err := r.checkKind(); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		roles[r.Name] = r
	}
	if err := distinctAudiences(roles); err != nil {
		return nil, fmt.Errorf("config: roles %s: %w", path, err)
	}
	if len(roles) == 0 {
		return nil, fmt.Errorf("config: roles %s: no roles defined", path)
	}
	return roles, nil
}

// checkKind checks the role's kind and dynamic-secret path and fills in
// the default kind: batch, or service for a role with a dynamic secret.
func (r *Role) checkKind() error {
	if r.Dynamic != "" {
		if err := checkDynamicPath(r.Dynamic); err != nil {
			return err
		}
		switch r.Kind {
		case "":
			r.Kind = "service"
		case "batch":
			return errors.New("a role with a dynamic secret has service credentials (kind: service, or leave it out): undoing a failed issuance must revoke the token and any lease it made, and a batch token cannot be revoked alone")
		}
	}
	switch r.Kind {
	case "":
		r.Kind = "batch"
	case "batch", "service", KindJWT:
	default:
		return fmt.Errorf("kind must be batch, service or jwt, not %q", r.Kind)
	}
	return nil
}

// KindJWT is the kind of a role whose credentials are OAuth access tokens
// (JWTs) for one resource, not Vault tokens (docs/oauth.md).
const KindJWT = "jwt"

// checkJWT checks a jwt role: an absolute resource URI as its audience,
// plain scope tokens, and no Vault policy or dynamic secret.
func (r *Role) checkJWT() error {
	if len(r.Policies) > 0 || r.Dynamic != "" {
		return errors.New("a role of kind jwt issues access tokens, not Vault tokens: it takes no policies and no dynamic secret")
	}
	u, err := url.Parse(r.Audience)
	if err != nil || !u.IsAbs() || u.Fragment != "" {
		return fmt.Errorf("a role of kind jwt needs audience, an absolute URI without fragment (RFC 8707), not %q", r.Audience)
	}
	seen := map[string]bool{}
	for _, sc := range r.Scopes {
		if sc == "" || seen[sc] || strings.ContainsFunc(sc, func(c rune) bool { return c <= ' ' || c == '"' || c == '\\' || c > '~' }) {
			return fmt.Errorf("scope %q: scopes are distinct, non-empty printable ASCII without space, '\"' or '\\' (RFC 6749 §3.3)", sc)
		}
		seen[sc] = true
	}
	return nil
}

// notSecretsEngines are mounts a dynamic secret is never read from.
var notSecretsEngines = []string{"sys", "auth", "identity", "cubbyhole"}

// checkDynamicPath checks a dynamic-secret path: a secrets engine mount
// and a path below it, in segments of letters, digits, '.', '_' and '-'
// (no '.' or '..' segment), without leading or trailing '/'.
func checkDynamicPath(p string) error {
	segs := strings.Split(p, "/")
	if len(segs) < 2 {
		return fmt.Errorf("dynamic %q: want a secrets engine path such as database/creds/ROLE", p)
	}
	for _, seg := range segs {
		if seg == "" || seg == "." || seg == ".." || strings.IndexFunc(seg, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
		}) >= 0 {
			return fmt.Errorf("dynamic %q: segment %q: use letters, digits, '.', '_' and '-', no empty, '.' or '..' segment", p, seg)
		}
	}
	if slices.Contains(notSecretsEngines, segs[0]) {
		return fmt.Errorf("dynamic %q: %s/ is not a secrets engine", p, segs[0])
	}
	return nil
}

// ForeignScope returns the first of scopes that is not one of the role's;
// false if the role has them all.
func (r Role) ForeignScope(scopes []string) (string, bool) {
	for _, sc := range scopes {
		if !slices.Contains(r.Scopes, sc) {
			return sc, true
		}
	}
	return "", false
}

func (r Role) Authz() authz.Role {
	return authz.Role{Name: r.Name, Class: r.class, Classification: r.classification, MaxTTL: r.MaxTTL}
}

// Config is the maturity package's configuration with these settings.
func (m MaturityConfig) Config() (maturity.Config, error) {
	c := maturity.DefaultConfig()
	c.Authorities = m.Authorities
	c.SelfReportedWeight = m.SelfReportedWeight
	c.DemoteOnBreakerTrip = m.DemoteOnBreakerTrip
	if m.MinOutcomes != 0 {
		c.MinOutcomes = m.MinOutcomes
	}
	for name, d := range m.MinTimeAtLevel {
		l, err := authz.ParseLevel(name)
		if err != nil {
			return c, fmt.Errorf("min_time_at_level: %w", err)
		}
		c.MinTimeAtLevel[l] = d
	}
	return c, c.Validate()
}

// distinctAudiences checks that no two jwt roles name the same audience:
// a token request names its resource, and the resource its role.
func distinctAudiences(roles map[string]Role) error {
	by := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(roles)) {
		r := roles[name]
		if r.Kind != KindJWT {
			continue
		}
		if other, dup := by[r.Audience]; dup {
			return fmt.Errorf("roles %q and %q both have audience %q: a resource belongs to one role", other, name, r.Audience)
		}
		by[r.Audience] = name
	}
	return nil
}
