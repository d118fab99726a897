package broker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// A registered agent with a SPIRE-minted SVID gets a token that Vault
// accepts for exactly its role's policies and lifetime, and for nothing else.
func TestFetchCredentialIssuesScopedVaultToken(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent := f.ID(t, "reporter")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")

	before := time.Now()
	r, err := b.Dial(t, agent).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
	if err != nil {
		t.Fatalf("FetchCredential: %v", err)
	}
	c := r.GetCredential()
	if got := c.GetPolicies(); !slices.Equal(got, []string{"demo-reports-read"}) {
		t.Errorf("policies = %q, want [demo-reports-read]", got)
	}
	// TTL = min(role 30m, intern 1h) = 30m.
	if got := c.GetExpiresAt().AsTime().Sub(before); got > 30*time.Minute+time.Second || got < 29*time.Minute {
		t.Errorf("credential lives %s, want 30m", got)
	}
	if c.GetRenewable() || c.GetLevel() != brokerv1.Level_LEVEL_INTERN || c.GetDecisionId() == "" || c.GetVaultAddress() != f.Stack.VaultAddr {
		t.Errorf("credential = %v", c)
	}

	// Vault's own view of the token.
	v := f.VaultAs(t, c.GetToken())
	self, err := f.Lookup(t, c.GetToken())
	if err != nil {
		t.Fatalf("Vault rejects the issued token: %v", err)
	}
	pols, _ := self.TokenPolicies()
	if !slices.Equal(pols, []string{"demo-reports-read"}) {
		t.Errorf("Vault says policies %q, want only demo-reports-read (no default)", pols)
	}
	if ttl, _ := self.TokenTTL(); ttl > 30*time.Minute || ttl < 29*time.Minute {
		t.Errorf("Vault says TTL %s", ttl)
	}
	if renewable, _ := self.TokenIsRenewable(); renewable {
		t.Error("Vault says the token is renewable")
	}
	meta, _ := self.TokenMetadata()
	if meta["atf_agent"] != agent.String() || meta["atf_role"] != "reports-read" || meta["atf_level"] != "intern" || meta["atf_decision_id"] != c.GetDecisionId() {
		t.Errorf("token metadata = %v", meta)
	}
	// A batch token (the default kind): no accessor in Vault, a name of
	// the broker's in the answer.
	if self.Data["type"] != "batch" || self.Data["accessor"] != "" || !strings.HasPrefix(c.GetAccessor(), "b.") {
		t.Errorf("Vault says type %v, accessor %q; the broker says %s; want a batch token named b.<id>", self.Data["type"], self.Data["accessor"], c.GetAccessor())
	}
	// Allowed path read, other path denied, write denied.
	if s, err := v.Logical().ReadWithContext(t.Context(), "secret/data/demo/reports"); err != nil || s == nil {
		t.Errorf("reading the role's path: %v", err)
	}
	if _, err := v.Logical().ReadWithContext(t.Context(), "secret/data/demo/payroll"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("reading another path: err = %v, want permission denied", err)
	}
	if _, err := v.Logical().WriteWithContext(t.Context(), "secret/data/demo/reports", map[string]any{"data": map[string]any{"x": "y"}}); err == nil {
		t.Error("a read credential could write")
	}

	// A shorter TTL on request is honoured.
	r, err = b.Dial(t, agent).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read", Ttl: durationpb.New(90 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if ttl, _ := f.Lookup(t, r.GetCredential().GetToken()); ttl == nil {
		t.Fatal("lookup failed")
	} else if d, _ := ttl.TokenTTL(); d > 90*time.Second {
		t.Errorf("requested 90s, Vault says %s", d)
	}

	// Both issuances are recorded, by accessor, and never the token.
	b.Stop()
	st, err := store.Open(b.Cfg.StorePath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	creds, err := st.Credentials(agent.String())
	if err != nil || len(creds) != 2 {
		t.Fatalf("recorded %d credentials (%v), want 2", len(creds), err)
	}
	raw, err := os.ReadFile(b.Cfg.StorePath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), c.GetToken()) {
		t.Error("the store file contains a token")
	}
}

// Maturity gating: an Intern never gets a write role, a Senior does; a role
// outside the manifest is refused; an unknown role is NotFound.
func TestFetchCredentialGating(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	intern, senior := f.ID(t, "intern"), f.ID(t, "senior")
	b.Register(t, intern, brokerv1.Level_LEVEL_INTERN, "reports-read", "reports-write")
	b.Register(t, senior, brokerv1.Level_LEVEL_SENIOR, "reports-read", "reports-write")

	_, err := b.Dial(t, intern).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-write"})
	brokertest.WantCode(t, err, codes.PermissionDenied, "intern agents may hold only read credentials", "decision ")
	_, err = b.Dial(t, intern).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "payroll-read"})
	brokertest.WantCode(t, err, codes.PermissionDenied, `role "payroll-read" is not in agent`)
	_, err = b.Dial(t, intern).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "no-such-role"})
	brokertest.WantCode(t, err, codes.NotFound, `role "no-such-role" is not defined`)

	r, err := b.Dial(t, senior).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-write"})
	if err != nil {
		t.Fatalf("senior write: %v", err)
	}
	// Senior's cap is 15m, the role's 10m.
	if d := time.Until(r.GetCredential().GetExpiresAt().AsTime()); d > 10*time.Minute+time.Second {
		t.Errorf("senior write credential lives %s, want <= 10m", d)
	}
	v := f.VaultAs(t, r.GetCredential().GetToken())
	if _, err := v.Logical().WriteWithContext(t.Context(), "secret/data/demo/reports", map[string]any{"data": map[string]any{"summary": "written by " + senior.String()}}); err != nil {
		t.Errorf("write credential cannot write: %v", err)
	}
}

// Callers the broker must refuse, each with a status a person can act on.
func TestRefusedCallers(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent, stranger := f.ID(t, "agent"), f.ID(t, "stranger")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	fetch := &brokerv1.FetchCredentialRequest{Role: "reports-read"}

	t.Run("unregistered", func(t *testing.T) {
		_, err := b.Dial(t, stranger).Broker.FetchCredential(t.Context(), fetch)
		brokertest.WantCode(t, err, codes.PermissionDenied, "not a registered agent")
		who, err := b.Dial(t, stranger).Broker.WhoAmI(t.Context(), &brokerv1.WhoAmIRequest{})
		if err != nil || who.GetRegistered() || who.GetSpiffeId() != stranger.String() {
			t.Fatalf("WhoAmI = %v, %v", who, err)
		}
	})
	t.Run("body names another agent", func(t *testing.T) {
		_, err := b.Dial(t, stranger).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read", AgentId: agent.String()})
		brokertest.WantCode(t, err, codes.PermissionDenied, "identity comes only from the SVID")
	})
	t.Run("body names itself", func(t *testing.T) {
		_, err := b.Dial(t, agent).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read", AgentId: agent.String()})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("non-admin on AdminService", func(t *testing.T) {
		_, err := b.Dial(t, agent).Admin.ListAgents(t.Context(), &adminv1.ListAgentsRequest{})
		brokertest.WantCode(t, err, codes.PermissionDenied, "is not a broker admin")
		_, err = b.Dial(t, agent).Admin.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{SpiffeId: stranger.String(), Owner: "x", Purpose: "y"})
		brokertest.WantCode(t, err, codes.PermissionDenied, "is not a broker admin")
	})
	t.Run("expired SVID", func(t *testing.T) {
		s, err := f.Stack.MintX509(t.Context(), f.ID(t, "shortlived"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c := b.DialFiles(t, s)
		// Register it, prove it works, then let it expire on the open
		// connection: the next call is refused.
		b.Register(t, f.ID(t, "shortlived"), brokerv1.Level_LEVEL_INTERN, "reports-read")
		if _, err := c.Broker.WhoAmI(t.Context(), &brokerv1.WhoAmIRequest{}); err != nil {
			t.Skipf("SVID expired before the first call (slow machine): %v", err)
		}
		time.Sleep(time.Until(leafExpiry(t, s)) + 100*time.Millisecond)
		_, err = c.Broker.FetchCredential(t.Context(), fetch)
		brokertest.WantCode(t, err, codes.Unauthenticated, "expired")
	})
	t.Run("trust domain not allowlisted", func(t *testing.T) {
		// A broker that trusts only another trust domain refuses a valid
		// SVID of this one, though it holds its bundle.
		cfg := f.Config(t, t.TempDir())
		cfg.TrustDomains = []string{"elsewhere.test"}
		other := f.Start(t, cfg)
		_, err := other.Dial(t, agent).Broker.WhoAmI(t.Context(), &brokerv1.WhoAmIRequest{})
		brokertest.WantCode(t, err, codes.Unauthenticated, `trust domain "atf.test" is not trusted by this broker`)
	})
	t.Run("no SVID", func(t *testing.T) {
		conn := dialNoClientCert(t, b)
		_, err := brokerv1.NewBrokerServiceClient(conn).WhoAmI(t.Context(), &brokerv1.WhoAmIRequest{})
		brokertest.WantCode(t, err, codes.Unauthenticated, "no SVID presented")
	})
	t.Run("malformed bearer", func(t *testing.T) {
		conn := dialNoClientCert(t, b)
		ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Basic Zm9vOmJhcg==")
		_, err := brokerv1.NewBrokerServiceClient(conn).WhoAmI(ctx, &brokerv1.WhoAmIRequest{})
		brokertest.WantCode(t, err, codes.Unauthenticated, "Bearer")
	})
}

// JWT-SVIDs: accepted only with the broker's own ID as the one audience.
func TestJWTSVID(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent := f.ID(t, "jwt-agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	conn := dialNoClientCert(t, b)
	bc := brokerv1.NewBrokerServiceClient(conn)
	call := func(token string) (*brokerv1.WhoAmIResponse, error) {
		ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+token)
		return bc.WhoAmI(ctx, &brokerv1.WhoAmIRequest{})
	}

	good, err := f.Stack.MintJWT(t.Context(), agent, f.Stack.BrokerID.String(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	who, err := call(good)
	if err != nil {
		t.Fatalf("valid JWT-SVID refused: %v", err)
	}
	if who.GetSpiffeId() != agent.String() || who.GetAuthMethod() != brokerv1.AuthMethod_AUTH_METHOD_JWT_SVID || !who.GetRegistered() {
		t.Errorf("WhoAmI = %v", who)
	}
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+good)
	if _, err := bc.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
		t.Errorf("FetchCredential with JWT-SVID: %v", err)
	}

	other, err := f.Stack.MintJWT(t.Context(), agent, "spiffe://atf.test/some-other-service", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_, err = call(other)
	brokertest.WantCode(t, err, codes.Unauthenticated, "audience")

	_, err = call("not-a-jwt")
	brokertest.WantCode(t, err, codes.Unauthenticated)
	_, err = call(strings.Repeat("a", 9000))
	brokertest.WantCode(t, err, codes.Unauthenticated, "longer than")

	// An X.509-SVID and a JWT-SVID naming different workloads.
	c := b.Dial(t, f.ID(t, "someone-else"))
	_, err = c.Broker.WhoAmI(ctx, &brokerv1.WhoAmIRequest{})
	brokertest.WantCode(t, err, codes.Unauthenticated, "X.509-SVID names")
}

// Every malformed request gets InvalidArgument with the field and the rule.
func TestMalformedRequests(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	bc := b.Dial(t, agent).Broker
	ac := b.Dial(t, f.Admin).Admin

	for _, tt := range []struct {
		name  string
		call  func() error
		parts []string
	}{
		{"empty role", func() error {
			_, err := bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{})
			return err
		}, []string{"role"}},
		{"role with dot-dot", func() error {
			_, err := bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "../reports-read"})
			return err
		}, []string{`role "../reports-read": dot segments are not allowed`}},
		{"uppercase role", func() error {
			_, err := bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "Reports-Read"})
			return err
		}, []string{"role"}},
		{"zero ttl", func() error {
			_, err := bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read", Ttl: durationpb.New(0)})
			return err
		}, []string{"ttl"}},
		{"negative ttl", func() error {
			_, err := bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read", Ttl: durationpb.New(-time.Minute)})
			return err
		}, []string{"ttl"}},
		{"register without owner", func() error {
			_, err := ac.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{SpiffeId: f.ID(t, "x").String(), Purpose: "p"})
			return err
		}, []string{"owner"}},
		{"register uppercase trust domain", func() error {
			_, err := ac.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{SpiffeId: "spiffe://ATF.test/agents/x", Owner: "o", Purpose: "p"})
			return err
		}, []string{"trust domain"}},
		{"register dot segment", func() error {
			_, err := ac.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{SpiffeId: "spiffe://atf.test/agents/../admin", Owner: "o", Purpose: "p"})
			return err
		}, []string{"dot segment"}},
		{"register percent-encoding", func() error {
			_, err := ac.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{SpiffeId: "spiffe://atf.test/agents/%61", Owner: "o", Purpose: "p"})
			return err
		}, []string{"path"}},
		{"register without path", func() error {
			_, err := ac.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{SpiffeId: "spiffe://atf.test", Owner: "o", Purpose: "p"})
			return err
		}, []string{"needs a path"}},
		{"register untrusted trust domain", func() error {
			_, err := ac.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{SpiffeId: "spiffe://elsewhere.test/agents/x", Owner: "o", Purpose: "p"})
			return err
		}, []string{"trust domain is not in trust_domains"}},
		{"register undefined role", func() error {
			_, err := ac.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{SpiffeId: f.ID(t, "y").String(), Owner: "o", Purpose: "p", Roles: []string{"db-admin"}})
			return err
		}, []string{`role "db-admin" is not defined`}},
		{"register undefined level", func() error {
			_, err := ac.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{SpiffeId: f.ID(t, "z").String(), Owner: "o", Purpose: "p", Level: 99})
			return err
		}, []string{"level"}},
		{"list page too large", func() error {
			_, err := ac.ListAgents(t.Context(), &adminv1.ListAgentsRequest{PageSize: 100000})
			return err
		}, []string{"page_size"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			brokertest.WantCode(t, tt.call(), codes.InvalidArgument, tt.parts...)
		})
	}
}

// The registry: register, get, list (paginated), update, deregister, and
// the history of who changed what; it survives a restart.
func TestRegistryLifecycleAndRestart(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	b := f.Start(t, cfg)
	ac := b.Dial(t, f.Admin).Admin
	var ids []spiffeid.ID
	for i := range 5 {
		id := f.ID(t, "agent-"+string(rune('a'+i)))
		ids = append(ids, id)
		b.Register(t, id, brokerv1.Level_LEVEL_INTERN, "reports-read")
	}
	got, err := ac.GetAgent(t.Context(), &adminv1.GetAgentRequest{SpiffeId: ids[0].String()})
	if err != nil {
		t.Fatal(err)
	}
	if a := got.GetAgent(); a.GetOwner() != "owner@example.org" || a.GetLevel() != brokerv1.Level_LEVEL_INTERN || a.GetStatus() != brokerv1.AgentStatus_AGENT_STATUS_ACTIVE || a.GetUpdatedBy() != f.Admin.String() || a.GetRevision() != 1 {
		t.Errorf("GetAgent = %v", a)
	}
	_, err = ac.RegisterAgent(t.Context(), &adminv1.RegisterAgentRequest{SpiffeId: ids[0].String(), Owner: "o", Purpose: "p"})
	brokertest.WantCode(t, err, codes.AlreadyExists)
	_, err = ac.GetAgent(t.Context(), &adminv1.GetAgentRequest{SpiffeId: f.ID(t, "nobody").String()})
	brokertest.WantCode(t, err, codes.NotFound)

	// Pages of two cover all five, once each, in order.
	var seen []string
	token := ""
	for {
		r, err := ac.ListAgents(t.Context(), &adminv1.ListAgentsRequest{PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range r.GetAgents() {
			seen = append(seen, a.GetSpiffeId())
		}
		if token = r.GetNextPageToken(); token == "" {
			break
		}
	}
	var want []string
	for _, id := range ids {
		want = append(want, id.String())
	}
	if !slices.Equal(seen, want) {
		t.Errorf("listed %q, want %q", seen, want)
	}

	// A level is raised only through the promotion gates.
	level := brokerv1.Level_LEVEL_SENIOR
	_, err = ac.UpdateAgent(t.Context(), &adminv1.UpdateAgentRequest{SpiffeId: ids[1].String(), Level: &level})
	brokertest.WantCode(t, err, codes.FailedPrecondition, "promote it through the gates")
	level = brokerv1.Level_LEVEL_INTERN
	up, err := ac.UpdateAgent(t.Context(), &adminv1.UpdateAgentRequest{SpiffeId: ids[1].String(), Level: &level, Roles: &adminv1.RoleList{Roles: []string{"reports-read", "reports-write"}}, ExpectedRevision: 1})
	if err != nil {
		t.Fatal(err)
	}
	if up.GetAgent().GetLevel() != level || up.GetAgent().GetRevision() != 2 || len(up.GetAgent().GetRoles()) != 2 {
		t.Errorf("UpdateAgent = %v", up.GetAgent())
	}
	_, err = ac.UpdateAgent(t.Context(), &adminv1.UpdateAgentRequest{SpiffeId: ids[1].String(), Level: &level, ExpectedRevision: 1})
	brokertest.WantCode(t, err, codes.FailedPrecondition, "revision")

	// Nobody registers or changes their own record.
	_, err = ac.UpdateAgent(t.Context(), &adminv1.UpdateAgentRequest{SpiffeId: f.Admin.String(), Level: &level})
	brokertest.WantCode(t, err, codes.PermissionDenied, "its own agent record")

	if _, err := ac.DeregisterAgent(t.Context(), &adminv1.DeregisterAgentRequest{SpiffeId: ids[2].String(), Reason: "retired"}); err != nil {
		t.Fatal(err)
	}
	_, err = b.Dial(t, ids[2]).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
	brokertest.WantCode(t, err, codes.PermissionDenied, "deregistered")

	// Restart on the same store: everything is still there.
	b.Stop()
	b2 := f.Start(t, cfg)
	ac2 := b2.Dial(t, f.Admin).Admin
	r, err := ac2.ListAgents(t.Context(), &adminv1.ListAgentsRequest{IncludeDeregistered: true})
	if err != nil || len(r.GetAgents()) != 5 {
		t.Fatalf("after restart: %d agents, %v", len(r.GetAgents()), err)
	}
	h, err := ac2.ListAgentHistory(t.Context(), &adminv1.ListAgentHistoryRequest{SpiffeId: ids[1].String()})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, c := range h.GetChanges() {
		actions = append(actions, c.GetAction())
		if c.GetActor() != f.Admin.String() || c.GetTime() == nil {
			t.Errorf("change %v lacks actor or time", c)
		}
	}
	if !slices.Equal(actions, []string{"register", "update"}) {
		t.Errorf("history actions %q", actions)
	}
	h, err = ac2.ListAgentHistory(t.Context(), &adminv1.ListAgentHistoryRequest{SpiffeId: ids[2].String()})
	if err != nil || len(h.GetChanges()) != 2 || h.GetChanges()[1].GetReason() != "retired" {
		t.Errorf("deregistration history = %v, %v", h, err)
	}
}

// A second atfd on the same store file fails fast with a clear message.
func TestSecondBrokerOnSameStoreFailsFast(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	f.Start(t, cfg)
	start := time.Now()
	_, err := f.TryStart(t, cfg)
	if !errors.Is(err, store.ErrLocked) || !strings.Contains(err.Error(), "another atfd") {
		t.Fatalf("second broker: %v, want ErrLocked naming another atfd", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %s to fail", d)
	}
}

// Deregistration revokes the agent's live credentials in Vault; with Vault
// unreachable the revocation is queued durably and finished when it is back,
// even across a restart. Issuance with Vault down is Unavailable and leaves
// no record.
func TestVaultOutage(t *testing.T) {
	f := brokertest.Setup(t)
	proxy := brokertest.NewFaultProxy(t, strings.TrimPrefix(f.Stack.VaultAddr, "http://"))
	cfg := f.Config(t, t.TempDir())
	cfg.Vault.Address = proxy.URL()
	b := f.Start(t, cfg)
	agent, other := f.ID(t, "agent"), f.ID(t, "other")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	b.Register(t, other, brokerv1.Level_LEVEL_INTERN, "reports-read")
	bc := b.Dial(t, agent).Broker
	fetch := &brokerv1.FetchCredentialRequest{Role: "reports-read"}

	live, err := bc.FetchCredential(t.Context(), fetch)
	if err != nil {
		t.Fatal(err)
	}
	otherLive, err := b.Dial(t, other).Broker.FetchCredential(t.Context(), fetch)
	if err != nil {
		t.Fatal(err)
	}

	proxy.Down()
	_, err = bc.FetchCredential(t.Context(), fetch)
	brokertest.WantCode(t, err, codes.Unavailable, "Vault is unavailable", "nothing was issued")

	ac := b.Dial(t, f.Admin).Admin
	dr, err := ac.DeregisterAgent(t.Context(), &adminv1.DeregisterAgentRequest{SpiffeId: agent.String(), Reason: "compromised"})
	if err != nil {
		t.Fatal(err)
	}
	// Revoked in the broker at once; the Vault side (the agent's anchor) is
	// queued.
	if dr.GetCredentialsRevoked() != 1 || dr.GetRevocationsPending() != 1 {
		t.Fatalf("deregister with Vault down: revoked %d, pending %d; want 1, 1", dr.GetCredentialsRevoked(), dr.GetRevocationsPending())
	}
	// The broker refuses at once, whatever Vault's state.
	_, err = bc.FetchCredential(t.Context(), fetch)
	brokertest.WantCode(t, err, codes.PermissionDenied, "deregistered")

	// Restart while Vault is still away: the queue is in the store. The
	// broker needs Vault to start, so bring it back just after the restart
	// begins... simplest honest order: stop, restore, start.
	b.Stop()
	st, err := store.Open(cfg.StorePath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pending, _ := st.PendingRevocations()
	creds, _ := st.Credentials(agent.String())
	st.Close()
	// One entry: the agent's Vault anchor, under which its credential hangs.
	if len(pending) != 1 {
		t.Fatalf("queue after stop = %v, want the agent's anchor", pending)
	}
	if len(creds) != 1 {
		t.Fatalf("recorded %d credentials for the agent, want 1 (the failed issuance must leave none)", len(creds))
	}
	proxy.Restore(t)
	f.Start(t, cfg)
	// The restarted broker drains the queue: the token dies in Vault.
	devtest.WaitFor(t, 30*time.Second, "the queued revocation to reach Vault", func() bool {
		return f.Dead(t, live.GetCredential().GetToken())
	})
	// The other agent's credential is untouched.
	if _, err := f.Lookup(t, otherLive.GetCredential().GetToken()); err != nil {
		t.Errorf("another agent's credential was revoked: %v", err)
	}
}

// Deregistration with Vault up revokes at once, before it answers.
func TestDeregisterRevokesLiveCredentials(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_SENIOR, "reports-read", "reports-write")
	bc := b.Dial(t, agent).Broker
	var tokens []string
	for _, role := range []string{"reports-read", "reports-write", "reports-read"} {
		r, err := bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: role})
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, r.GetCredential().GetToken())
	}
	dr, err := b.Dial(t, f.Admin).Admin.DeregisterAgent(t.Context(), &adminv1.DeregisterAgentRequest{SpiffeId: agent.String(), Reason: "done"})
	if err != nil {
		t.Fatal(err)
	}
	if dr.GetCredentialsRevoked() != 3 || dr.GetRevocationsPending() != 0 {
		t.Errorf("revoked %d, pending %d; want 3, 0", dr.GetCredentialsRevoked(), dr.GetRevocationsPending())
	}
	for i, tok := range tokens {
		if !f.Dead(t, tok) {
			t.Errorf("token %d still valid in Vault after deregistration", i)
		}
	}
}

// The broker logs in to Vault with AppRole, as in production.
func TestVaultAppRoleLogin(t *testing.T) {
	f := brokertest.Setup(t)
	dir := t.TempDir()
	cfg := f.Config(t, dir)
	roleID, secretID, err := f.Stack.BrokerAppRole(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(dir, "secret-id")
	if err := os.WriteFile(secretFile, []byte(secretID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Vault.Auth = config.VaultAuth{Method: "approle", RoleID: roleID, SecretIDFile: secretFile}
	b := f.Start(t, cfg)
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	if _, err := b.Dial(t, agent).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
		t.Fatal(err)
	}
	// A wrong secret id: the broker refuses to start, saying why.
	if err := os.WriteFile(secretFile, []byte("not-the-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.StorePath = filepath.Join(dir, "other.db")
	_, err = f.TryStart(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "login") || strings.Contains(err.Error(), "not-the-secret") {
		t.Fatalf("start with a bad secret id: %v", err)
	}
}

// The broker logs in to Vault with its own JWT-SVID from the Workload API.
func TestVaultJWTLogin(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Vault.Auth = config.VaultAuth{Method: "jwt", Role: "atf-broker", Audience: "vault"}
	b := f.Start(t, cfg)
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	if _, err := b.Dial(t, agent).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
		t.Fatal(err)
	}
}

// Health and reflection answer without an SVID, so probes and grpcurl work.
func TestHealthAndReflectionWithoutSVID(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	conn := dialNoClientCert(t, b)
	r, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{})
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", r, err)
	}

	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	listed, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	var names []string
	for _, s := range listed.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{brokerv1.BrokerService_ServiceDesc.ServiceName, adminv1.AdminService_ServiceDesc.ServiceName,
		adminv1.ApprovalService_ServiceDesc.ServiceName, adminv1.ResponseService_ServiceDesc.ServiceName, adminv1.MaturityService_ServiceDesc.ServiceName} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %q, without %s", names, want)
		}
	}
}

// dialNoClientCert connects over TLS, verifying the broker against the
// bundle, without presenting a client certificate.
func dialNoClientCert(t *testing.T, b *brokertest.Broker) *grpc.ClientConn {
	t.Helper()
	return dialTLS(t, b, nil, nil)
}

func leafExpiry(t *testing.T, s dev.SVIDFiles) time.Time {
	t.Helper()
	sv, err := x509svid.Load(s.CertPath, s.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	return sv.Certificates[0].NotAfter
}

// Clients get their identity from the Workload API, as X.509-SVID or as
// JWT-SVID. The test process is registered as the broker's workload, so it
// calls the broker as the broker's own ID.
func TestClientOverWorkloadAPI(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	for _, tt := range []struct {
		jwt  bool
		want brokerv1.AuthMethod
	}{
		{false, brokerv1.AuthMethod_AUTH_METHOD_X509_SVID},
		{true, brokerv1.AuthMethod_AUTH_METHOD_JWT_SVID},
	} {
		t.Run(tt.want.String(), func(t *testing.T) {
			c, err := client.Dial(t.Context(), client.Config{Addr: b.Addr, WorkloadAPIAddr: f.Stack.WorkloadAPIAddr, JWT: tt.jwt})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			who, err := c.Broker.WhoAmI(t.Context(), &brokerv1.WhoAmIRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if who.GetSpiffeId() != f.Stack.BrokerID.String() || who.GetAuthMethod() != tt.want || who.GetRegistered() {
				t.Errorf("WhoAmI = %v", who)
			}
		})
	}
}

// The broker keeps its own Vault token alive: with a token whose period is
// a few seconds, issuance still works well past that period.
func TestBrokerRenewsItsVaultToken(t *testing.T) {
	f := brokertest.Setup(t)
	dir := t.TempDir()
	cfg := f.Config(t, dir)
	root := f.Stack.VaultClient()
	s, err := root.Auth().Token().CreateOrphanWithContext(t.Context(), &vaultapi.TokenCreateRequest{
		Policies: []string{"atf-broker"}, NoDefaultPolicy: true, Period: "3s",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.Vault.Auth.TokenFile, []byte(s.Auth.ClientToken), 0o600); err != nil {
		t.Fatal(err)
	}
	b := f.Start(t, cfg)
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := b.Dial(t, agent).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
			t.Fatalf("issuance failed %s after start: %v", 8*time.Second-time.Until(deadline), err)
		}
		time.Sleep(time.Second)
	}
}

// A demotion or a role taken away revokes, at once, the live credentials
// the new registration would not grant, and only those.
func TestDemotionRevokesWhatTheLevelNoLongerHolds(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_SENIOR, "reports-read", "reports-write", "payroll-read")
	bc := b.Dial(t, agent).Broker
	tokens := map[string]string{}
	for _, role := range []string{"reports-read", "reports-write", "payroll-read"} {
		r, err := bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: role})
		if err != nil {
			t.Fatal(err)
		}
		tokens[role] = r.GetCredential().GetToken()
	}
	intern := brokerv1.Level_LEVEL_INTERN
	_, err := b.Dial(t, f.Admin).Admin.UpdateAgent(t.Context(), &adminv1.UpdateAgentRequest{
		SpiffeId: agent.String(), Level: &intern, Roles: &adminv1.RoleList{Roles: []string{"reports-read", "reports-write"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for role, want := range map[string]bool{"reports-read": false, "reports-write": true, "payroll-read": true} {
		if got := f.Dead(t, tokens[role]); got != want {
			t.Errorf("%s token dead = %t, want %t", role, got, want)
		}
	}
}

// Streams that need no SVID (health Watch, reflection) are bounded: a
// client without a certificate cannot open them without end; the health
// Check still answers, and a closed stream frees its slot.
func TestPublicStreamsBounded(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	conn := dialNoClientCert(t, b)
	health := healthpb.NewHealthClient(conn)
	const limit = 64 // edge.Config.MaxPublicStreams's default
	var cancels []context.CancelFunc
	for i := range limit {
		ctx, cancel := context.WithCancel(t.Context())
		cancels = append(cancels, cancel)
		w, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Recv(); err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
	}
	w, err := health.Watch(t.Context(), &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	brokertest.WantCode(t, err, codes.ResourceExhausted, "too many open health and reflection streams")
	// Reflection shares the bound.
	refl, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(t.Context())
	if err == nil {
		// Send may see the refused stream end (EOF); Recv says why.
		_ = refl.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
		_, err = refl.Recv()
	}
	brokertest.WantCode(t, err, codes.ResourceExhausted, "too many open health and reflection streams")
	if r, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health Check with the streams full = %v, %v", r, err)
	}
	cancels[0]()
	devtest.WaitFor(t, 10*time.Second, "a closed stream's slot to be free", func() bool {
		w, err := health.Watch(t.Context(), &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = w.Recv()
		}
		return err == nil
	})
	for _, c := range cancels {
		c()
	}
}
