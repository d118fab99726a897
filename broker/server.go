package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/accesstoken"
	"github.com/agentictrust/atf/broker/adminapi"
	"github.com/agentictrust/atf/broker/agentapi"
	"github.com/agentictrust/atf/broker/approval"
	"github.com/agentictrust/atf/broker/approvalapi"
	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/console"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/etcdclient"
	"github.com/agentictrust/atf/broker/issue"
	"github.com/agentictrust/atf/broker/levels"
	"github.com/agentictrust/atf/broker/limits"
	"github.com/agentictrust/atf/broker/maturity"
	"github.com/agentictrust/atf/broker/maturityapi"
	"github.com/agentictrust/atf/broker/metrics"
	"github.com/agentictrust/atf/broker/monitor"
	"github.com/agentictrust/atf/broker/notify"
	"github.com/agentictrust/atf/broker/policy"
	"github.com/agentictrust/atf/broker/responseapi"
	"github.com/agentictrust/atf/broker/revoke"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/store/kv"
	"github.com/agentictrust/atf/broker/svid"
	"github.com/agentictrust/atf/broker/tracing"
	"github.com/agentictrust/atf/broker/vault"
	"github.com/agentictrust/atf/broker/watch"
	"github.com/agentictrust/atf/delegation"
)

// Option tunes New.
type Option func(*options)

type options struct {
	logger *slog.Logger
	now    func() time.Time
	tracer trace.TracerProvider
}

// WithLogger sets the logger; default discards.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithClock sets the clock; default time.Now.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithTracerProvider records the broker's spans (a decision, its Vault
// issuance and store record) with tp instead of the configured exporter:
// for a process that has its own, or a benchmark that reads them.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tracer = tp }
}

// Server is a running broker.
type Server struct {
	log *slog.Logger
	now func() time.Time
	cfg config.Config

	store   *store.Store
	etcd    *clientv3.Client // the store's, when it is in etcd
	feed    *feed            // the change feed between replicas, with etcd
	leader  *leader          // who drains the revocation queue, with etcd
	members *members         // the replicas sharing the store, with etcd
	source  *svid.Source
	self    spiffeid.ID
	// trustDomains are those whose SVIDs authenticate here.
	trustDomains []spiffeid.TrustDomain
	verifier     *attest.Verifier
	vault        *vault.Issuer
	roles        map[string]config.Role
	gate         *authz.Gate
	policy       *policy.Holder
	notifier     *notify.Notifier
	// streamers copy the audit trail out (audit.file, audit.stdout).
	streamers []*audit.Streamer
	tracing   *tracing.Tracing
	// tracerProvider replaces the configured tracing (WithTracerProvider).
	tracerProvider trace.TracerProvider
	metrics        *metrics.Metrics
	metricsLn      net.Listener
	rate, calls    *limits.Rate
	refusals       *limits.Refusals
	live           limits.Counter
	maturity       maturity.Config
	monitor        *monitor.Monitor
	breakers       *monitor.Breakers
	approvals      *approval.Book
	revoker        *revoke.Revoker
	levels         *levels.Levels
	watch          *watch.Watch

	// tokens signs access tokens; oauth serves the OAuth endpoints (both
	// nil unless oauth.listen_addr is set).
	tokens *accesstoken.Tokens
	oauth  *endpoint
	// console serves the web console (nil unless console.listen_addr is
	// set).
	console *endpoint
	// people is the console's OpenID provider, shared with the edge for
	// people's ID tokens from atfctl login (nil unless the console is on).
	people *console.People

	grpc   *grpc.Server
	health *health.Server
	// runBegun is set once the store is marked in use (BeginRun); Close
	// marks a clean end only then, and only if no call was cut off.
	runBegun bool
	stop     context.CancelFunc // stops background loops
	loops    sync.WaitGroup

	// closingCh is closed when Close starts: streams end at once, telling
	// clients to reconnect, instead of holding up the shutdown.
	closingCh chan struct{}
	lifeMu    sync.Mutex // orders Serve's start against Close
	closing   bool
	closeOnce sync.Once
}

// New builds a broker from cfg: it opens the store (failing fast if another
// atfd holds it), gets the broker's SVID, logs in to Vault and registers the
// gRPC services. It does not listen; call Serve.
func New(ctx context.Context, cfg config.Config, opts ...Option) (_ *Server, err error) {
	o := options{logger: slog.New(slog.DiscardHandler), now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{log: o.logger, now: o.now, cfg: cfg, tracerProvider: o.tracer, closingCh: make(chan struct{})}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	for _, step := range []func(context.Context) error{s.openPolicy, s.openStore, s.openMonitoring, s.openIdentity, s.openVault, s.openServices} {
		if err := step(ctx); err != nil {
			return nil, err
		}
	}
	o.logger.Info("broker ready", slog.String(edge.LogSPIFFEID, s.self.String()), slog.String(edge.LogVaultAddr, s.vault.Address()),
		slog.Int("roles", len(s.roles)), slog.Int("admins", len(cfg.Admins)))
	return s, nil
}

// idSet is a set of SPIFFE IDs checked by Config.Validate.
func idSet(ids []string) map[spiffeid.ID]bool {
	set := make(map[spiffeid.ID]bool, len(ids))
	for _, a := range ids {
		id, _ := attest.ParseID(a) // checked by Validate
		set[id] = true
	}
	return set
}

// openPolicy loads what decisions read: roles, level limits, notifications.
func (s *Server) openPolicy(context.Context) error {
	sinks, err := webhookSinks(s.cfg.Notifications.Webhook)
	if err != nil {
		return err
	}
	s.notifier = notify.New(s.log, sinks...)
	if s.roles, err = config.LoadRoles(s.cfg.RolesFile); err != nil {
		return err
	}
	limits, err := s.cfg.Limits.LevelLimits()
	if err != nil {
		return err
	}
	if s.gate, err = authz.NewGate(limits); err != nil {
		return err
	}
	return s.checkOAuthRoles()
}

// openStore opens the store and what lives in it: the run marker, the
// policy in force, the kill switch and the audit streams.
func (s *Server) openStore(ctx context.Context) (err error) {
	cfg := s.cfg
	opts := store.Options{Now: s.now, OnAudit: s.auditCommitted, OnLost: s.recordLost, MaxSize: cfg.StoreMaxSize, AuditDir: cfg.Audit.Dir}
	if e := cfg.Store.Etcd; e != nil {
		if s.etcd, err = etcdclient.New(e); err != nil {
			return err
		}
		if s.feed, err = newFeed(ctx, s.etcd, e, s.log); err != nil {
			return err
		}
		s.leader = newLeader(s.etcd, e, s.log)
		s.store, err = store.OpenEtcd(s.etcd, store.EtcdOptions{Prefix: e.Prefix, MaxTxnOps: e.MaxTxnOps, Timeout: e.Timeout, Replica: e.Replica}, opts)
	} else {
		s.store, err = store.Open(cfg.StorePath, opts)
	}
	if err != nil {
		return err
	}
	if s.tracing, err = tracing.New(cfg.Tracing); err != nil {
		return err
	}
	if s.tracerProvider != nil {
		s.tracing.Tracer = s.tracerProvider.Tracer(tracing.TracerName)
	}
	crashed, rev, err := s.store.BeginRun("atfd")
	if err != nil {
		return err
	}
	s.runBegun = true
	if crashed {
		s.log.Warn("the previous run did not stop cleanly: every live credential and anchor is revoked, since Vault may have issued tokens just before the crash that were never recorded; agents fetch anew",
			slog.Int("credentials", rev.CredentialCount()), slog.Int("queued", len(rev.Queued)))
	}
	if s.policy, err = policy.Load(s.store, cfg.Policy, notifier{s.notifier, s.now}, s.log); err != nil {
		return err
	}
	return s.auditStreams(cfg.Audit)
}

// openMonitoring sets up maturity, behaviour monitoring, circuit breakers,
// metrics and the live-credential limits.
func (s *Server) openMonitoring(context.Context) (err error) {
	cfg := s.cfg
	if s.maturity, err = cfg.Maturity.Config(); err != nil {
		return fmt.Errorf("broker: maturity: %w", err)
	}
	mcfg := monitor.DefaultConfig()
	if cfg.Monitor.BaselineWindow > 0 {
		mcfg.BaselineWindow = cfg.Monitor.BaselineWindow
	}
	if cfg.Monitor.BaselineOps > 0 {
		mcfg.BaselineOps = cfg.Monitor.BaselineOps
	}
	if s.monitor, err = monitor.New(mcfg); err != nil {
		return fmt.Errorf("broker: monitor: %w", err)
	}
	if s.breakers, err = monitor.NewBreakers(cfg.Monitor.Breaker, s.now); err != nil {
		return fmt.Errorf("broker: monitor.breaker: %w", err)
	}
	ms := metrics.State{
		LiveCredentials: func() int { return s.live.Total() },
		LeadingQueue:    func() bool { return s.leader == nil || s.leader.leading.Load() },
		Replicas: func() int {
			if s.members == nil {
				return 1
			}
			return int(s.members.n.Load())
		},
		PendingRevocations: func() (int, error) {
			q, err := s.store.PendingRevocations()
			return len(q), err
		},
		PolicyVersion: func() uint64 {
			if p := s.policy.Current(); p != nil {
				return p.Version()
			}
			return 0
		},
		Vault:      func() vault.Stats { return s.vault.Stats() },
		GlobalKill: func() bool { return s.revoker.GlobalKill() != nil },
	}
	if s.etcd != nil {
		ms.Etcd = kv.EtcdCounts
	}
	s.metrics = metrics.New(ms)
	if cfg.MetricsAddr != "" {
		if s.metricsLn, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return fmt.Errorf("broker: metrics_addr: %w", err)
		}
	}
	s.rate = limits.NewRate(cfg.Limits.Rate, s.now)
	s.calls = limits.NewCallRate(cfg.Limits.CallRate, s.now)
	s.refusals = limits.NewRefusals(cfg.Limits.RefusalWindow, s.now)
	if s.etcd != nil {
		// Replicas count in the store they share, so the limits hold
		// across all of them.
		s.live = limits.NewShared(s.store, cfg.Limits, s.log)
		return nil
	}
	live := limits.NewLive(cfg.Limits, s.now)
	creds, err := s.store.LiveCredentials(s.now())
	if err != nil {
		return err
	}
	live.Load(creds)
	s.live = live
	return nil
}

// openIdentity gets the broker's SVID and trust bundles and the verifier of
// callers' SVIDs.
func (s *Server) openIdentity(ctx context.Context) (err error) {
	cfg := s.cfg
	if s.source, err = svid.Open(ctx, svid.Config{
		WorkloadAPIAddr: cfg.SPIFFE.WorkloadAPIAddr,
		CertFile:        cfg.SPIFFE.SVIDFile,
		KeyFile:         cfg.SPIFFE.SVIDKeyFile,
		BundleFiles:     cfg.SPIFFE.BundleFiles,
	}); err != nil {
		return err
	}
	if s.self, err = s.source.ID(); err != nil {
		return err
	}
	tds := make([]spiffeid.TrustDomain, 0, len(cfg.TrustDomains))
	for _, name := range cfg.TrustDomains {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return fmt.Errorf("broker: trust_domains: %w", err)
		}
		tds = append(tds, td)
	}
	audience := cfg.JWTAudience
	if audience == "" {
		audience = s.self.String()
	}
	s.trustDomains = tds
	s.verifier, err = attest.New(attest.Config{TrustDomains: tds, X509Bundles: s.source, JWTBundles: s.source, Audience: audience, Now: s.now})
	return err
}

// openVault logs in to Vault.
func (s *Server) openVault(ctx context.Context) (err error) {
	cfg := s.cfg
	vcfg := vault.Config{
		Address:        cfg.Vault.Address,
		CACertFile:     cfg.Vault.CACertFile,
		CredentialRole: cfg.Vault.CredentialRole,
		Timeout:        cfg.Vault.Timeout,
		Logger:         s.log,
		Breaker:        cfg.Vault.Breaker,
		Now:            s.now,
	}
	if vcfg.Login, vcfg.Token, err = vaultLogin(cfg.Vault.Auth, s.source); err != nil {
		return err
	}
	s.vault, err = vault.New(ctx, vcfg)
	return err
}

// openServices wires what decides, issues and revokes, and the gRPC
// services that use them, behind the edge.
func (s *Server) openServices(ctx context.Context) (err error) {
	note := notifier{s.notifier, s.now}
	s.approvals = approval.New(approval.Config{Store: s.store, PendingTTL: s.cfg.Approvals.PendingTTL,
		RedeemWithin: s.cfg.Approvals.RedeemWithin, Notifier: note, Now: s.now})
	rolePolicies := func(role string) []string { return s.roles[role].Policies }
	rc := revoke.Config{Store: s.store, Vault: s.vault, Live: s.live, Approvals: s.approvals,
		RolePolicies: rolePolicies, Log: s.log}
	if s.feed != nil {
		rc.Feed, rc.Lead, rc.ResumeWindow = s.feed, s.leader.Lead, s.feed.window
	}
	if s.revoker, err = revoke.New(rc); err != nil {
		return err
	}
	if s.feed != nil {
		s.feed.apply = s.applyChange
		s.policy.OnCommit = func() { s.feed.Publish(revoke.Change{Policy: true}) }
		share := func(n int) {
			s.rate.Share(n)
			s.calls.Share(n)
		}
		if s.members, err = joinMembers(ctx, s.etcd, s.cfg.Store.Etcd, s.log, share); err != nil {
			return err
		}
	}
	if gk := s.revoker.GlobalKill(); gk != nil {
		s.log.Warn("the global kill switch holds every agent; a security operator must release it", slog.String(edge.LogReason, gk.Reason))
	}
	rules := delegation.DefaultRules()
	s.levels = levels.New(levels.Config{Store: s.store, Revoker: s.revoker, Policy: s.policy, Gate: s.gate, Roles: s.roles,
		Rules: rules, Notifier: note, Now: s.now})
	if s.watch, err = watch.New(watch.Config{Store: s.store, Monitor: s.monitor, Breakers: s.breakers, Levels: s.levels, Revoker: s.revoker,
		Metrics: s.metrics, Notifier: note, Maturity: s.maturity, Actions: s.cfg.Monitor.Actions, Log: s.log, Now: s.now}); err != nil {
		return err
	}
	var people edge.People
	if o := s.cfg.Console; o.Enabled() {
		s.people = console.NewPeople(o, nil, s.now)
		if o.CLIClientID != "" {
			people = s.people
		}
	}
	e, err := edge.New(edge.Config{Verifier: s.verifier, Admins: idSet(s.cfg.Admins), SecurityOperators: idSet(s.cfg.SecurityOperators),
		Approvers: idSet(s.cfg.Approvals.Approvers), People: people, ReauthAfter: s.cfg.Console.ReauthAfter, MaxStreams: s.cfg.Limits.MaxStreams, MaxStreamsPerConnection: s.cfg.Limits.MaxStreamsPerConnection,
		Log: s.log, Now: s.now})
	if err != nil {
		return err
	}
	sopts := e.ServerOptions(credentials.NewTLS(s.verifier.ServerTLSConfig(s.source)))
	if s.tracing.ServerOption != nil {
		sopts = append(sopts, s.tracing.ServerOption)
	}
	s.grpc = grpc.NewServer(sopts...)
	if err := s.openTokens(ctx); err != nil {
		return err
	}
	svcs := s.services(rules, note)
	for _, svc := range svcs {
		svc.RegisterService(edge.Registrar(s.grpc))
	}
	if err := s.openOAuth(svcs[0].(*agentapi.Service)); err != nil {
		return err
	}
	all := make([]any, len(svcs))
	for i, svc := range svcs {
		all[i] = svc
	}
	if err := s.openConsole(all); err != nil {
		return err
	}
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	return nil
}

// services are the broker's gRPC services, each given what it uses.
func (s *Server) services(rules delegation.Rules, note notifier) []interface{ RegisterService(grpc.ServiceRegistrar) } {
	ic := issue.Config{Store: s.store, Vault: s.vault, Anchors: s.revoker.Anchors(), Live: s.live, Approvals: s.approvals, Tracer: s.tracing.Tracer}
	if s.tokens != nil {
		ic.Tokens = s.tokens
	}
	issuer := issue.New(ic)
	return []interface{ RegisterService(grpc.ServiceRegistrar) }{
		agentapi.New(agentapi.Config{Store: s.store, Roles: s.roles, Gate: s.gate, Policy: s.policy, Rules: rules, Rate: s.rate, Calls: s.calls,
			Refusals: s.refusals, Watch: s.watch,
			Approvals: s.approvals, Issuer: issuer, Revoker: s.revoker, Metrics: s.metrics, Tracer: s.tracing.Tracer, Notifier: note,
			Reporters:    idSet(slices.Concat(s.cfg.Admins, s.cfg.Approvals.Approvers, s.cfg.Maturity.OutcomeReporters)),
			VaultAddress: s.vault.Address(), Closing: s.closingCh, Now: s.now}),
		adminapi.New(adminapi.Config{Store: s.store, Trust: s.verifier, Roles: s.roles, Gate: s.gate, Policy: s.policy, Levels: s.levels,
			Revoker: s.revoker, Watch: s.watch, Notifier: note, Events: s.notifier, Config: s.cfg, Probes: probes{s}, Closing: s.closingCh, Now: s.now}),
		approvalapi.New(approvalapi.Config{Store: s.store, Approvals: s.approvals}),
		responseapi.New(responseapi.Config{Store: s.store, Revoker: s.revoker, Trust: s.verifier, Operators: idSet(s.cfg.SecurityOperators), Notifier: note}),
		maturityapi.New(maturityapi.Config{Store: s.store, Levels: s.levels, Watch: s.watch, Maturity: s.maturity, Notifier: note, Now: s.now}),
	}
}

// Serve serves gRPC on lis until Close. It also retries queued revocations
// and streams the audit trail.
func (s *Server) Serve(lis net.Listener) error {
	// Close may run before or while Serve starts: background work starts
	// only if it has not, and under the lock Close takes to stop it.
	s.lifeMu.Lock()
	if s.closing {
		s.lifeMu.Unlock()
		return nil
	}
	s.revoker.Start()
	ctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	for _, st := range s.streamers {
		s.loops.Go(func() { st.Run(ctx) })
	}
	s.loops.Go(func() { s.shipAudit(ctx) })
	if s.feed != nil {
		s.loops.Go(func() { s.feed.run(ctx) })
		s.loops.Go(func() { s.members.run(ctx) })
		if shared, ok := s.live.(*limits.Shared); ok {
			s.loops.Go(func() { shared.Run(ctx) })
		}
	}
	s.loops.Go(func() { s.prune(ctx) })
	s.serveOAuth(ctx)
	s.serve(s.console)
	s.loops.Go(func() { s.flushRefusals(ctx) })
	s.loops.Go(func() { every(ctx, watch.BaselineSaveEvery, s.watch.SaveBaselines) })
	for _, svc := range healthServices {
		s.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	s.loops.Go(func() { s.probeHealth(ctx, s.cfg.HealthInterval) })
	if s.metricsLn != nil {
		s.loops.Go(func() { s.metrics.Serve(ctx, s.metricsLn, readyHandler(s.health), s.log) })
	}
	s.lifeMu.Unlock()
	if n := s.cfg.Limits.MaxConnectionsPerIP; n > 0 {
		lis = edge.LimitPerIP(lis, n, s.log)
	}
	err := s.grpc.Serve(lis)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// flushRefusals writes the aggregated records of the refusal windows
// that ended (limits.Refusals), every window's length, until ctx ends.
func (s *Server) flushRefusals(ctx context.Context) {
	every(ctx, s.refusals.Window(), func() { s.writeRefusals(false) })
}

// writeRefusals writes the aggregated records of the refusal windows
// that ended, or of all of them.
func (s *Server) writeRefusals(all bool) {
	recs := s.refusals.Flush(all)
	if len(recs) == 0 {
		return
	}
	if err := s.store.AppendAudit(recs...); err != nil {
		s.log.Error("writing aggregated refusal records failed; their counts are lost", slog.String(edge.LogError, err.Error()),
			slog.Int(edge.LogCount, len(recs)))
	}
}

// Close stops serving (letting calls in flight finish for up to 5 s) and
// releases the store, the Workload API and Vault renewal. Safe to call more
// than once and after a failed New.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.lifeMu.Lock()
		s.closing = true
		s.lifeMu.Unlock()
		close(s.closingCh)
		if s.grpc != nil {
			s.health.Shutdown()
			done := make(chan struct{})
			go func() { s.grpc.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				s.grpc.Stop()
				// Handlers may still be between Vault and the store: the
				// next start must treat this run as crashed.
				s.runBegun = false
			}
		}
		s.oauth.close()
		s.console.close()
		if s.refusals != nil && s.store != nil {
			// Calls are over: what the refusal windows counted is written.
			s.writeRefusals(true)
		}
		s.lifeMu.Lock()
		if s.revoker != nil {
			s.revoker.Stop()
		}
		if s.stop != nil {
			s.stop() // the streamers drain what is committed, then return
		}
		s.lifeMu.Unlock()
		s.loops.Wait()
		if s.metricsLn != nil {
			_ = s.metricsLn.Close() // already closed if Serve ran
		}
		if s.watch != nil {
			s.watch.SaveBaselines()
		}
		for _, st := range s.streamers {
			st.Close()
		}
		if s.notifier != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s.notifier.Close(ctx)
			cancel()
		}
		if s.tracing != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.tracing.Shutdown(ctx) // spans lost here cost no request
			cancel()
		}
		if s.vault != nil {
			s.vault.Close()
		}
		if s.source != nil {
			s.source.Close()
		}
		if s.store != nil {
			if s.runBegun {
				if err := s.store.EndRun(); err != nil {
					s.log.Error("marking a clean stop failed; the next start revokes every live credential", slog.String(edge.LogError, err.Error()))
				}
			}
			s.store.Close()
		}
		if s.etcd != nil {
			s.etcd.Close()
		}
	})
}

// vaultLogin turns the auth config into a Vault login method or a token.
func vaultLogin(a config.VaultAuth, src *svid.Source) (login vaultapi.AuthMethod, token string, err error) {
	switch a.Method {
	case "approle":
		return vault.AppRole{Mount: a.Mount, RoleID: a.RoleID, SecretIDFile: a.SecretIDFile}, "", nil
	case "jwt":
		return vault.JWT{Mount: a.Mount, Role: a.Role, Token: func(ctx context.Context) (string, error) {
			return src.FetchJWTSVID(ctx, a.Audience)
		}}, "", nil
	}
	token, err = readSecret(a.TokenFile, a.TokenEnv)
	return nil, token, err
}

// recordLost revokes a credential whose record the store lost after the
// agent had it (store.Options.OnLost).
func (s *Server) recordLost(c store.Credential) {
	if s.revoker != nil {
		s.revoker.Lost(c)
	}
}

// auditCommitted wakes the audit streamers after a commit with records.
func (s *Server) auditCommitted() {
	for _, st := range s.streamers {
		st.Notify()
	}
}

// webhookSinks builds the notification webhook, if configured.
func webhookSinks(cfg config.WebhookConfig) ([]notify.Sink, error) {
	if cfg.URLFile == "" && cfg.URLEnv == "" {
		return nil, nil
	}
	url, err := readSecret(cfg.URLFile, cfg.URLEnv)
	if err != nil {
		return nil, fmt.Errorf("broker: notifications.webhook url: %w", err)
	}
	wh := &notify.Webhook{URL: url, Timeout: cfg.Timeout, MaxAttempts: cfg.MaxAttempts}
	if cfg.SecretFile != "" {
		secret, err := readSecret(cfg.SecretFile, "")
		if err != nil {
			return nil, fmt.Errorf("broker: notifications.webhook secret: %w", err)
		}
		wh.Secret = []byte(secret)
	}
	return []notify.Sink{wh}, nil
}
