// Package agentapi is BrokerService, the API agents call: who am I, fetch
// a credential, delegate, revoke a grant, watch revocations, wait for an
// approval, report an outcome.
package agentapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/metrics"
	"github.com/agentictrust/atf/broker/monitor"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/vault"
	"github.com/agentictrust/atf/delegation"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Notifier tells people what happened.
type Notifier interface {
	Notify(ctx context.Context, kind, agent, role, summary string, detail map[string]string)
}

// Limiter is the per-agent rate limit (limits.Rate).
type Limiter interface {
	Allow(agent string, level authz.Level) *fault.Error
}

// RefusalCounter counts the refusals that need no audit record each
// (limits.Refusals).
type RefusalCounter interface {
	Note(caller, kind, reason, subject string) (write bool, prior *store.AuditRecord)
}

// Watcher is the behaviour watch (watch.Watch).
type Watcher interface {
	Observe(ctx context.Context, ev monitor.Event) *monitor.Anomaly
	Outcome(ctx context.Context, agent, role string, success bool)
	Breaker(ctx context.Context, agent string, failure bool)
	BreakerOpen(agent string) *fault.Error
}

// Approvals keeps approval requests (approval.Book).
type Approvals interface {
	Request(ctx context.Context, ap store.Approval) (store.Approval, error)
	Wait(ctx context.Context, id, caller string, stop <-chan struct{}, errStop error, send func(store.Approval) error) error
}

// Issuer carries out a plan (issue.Issuer).
type Issuer interface {
	Issue(ctx context.Context, p decide.Plan, revision uint64) (vault.Credential, error)
}

// Revoker revokes and tells (revoke.Revoker).
type Revoker interface {
	GlobalKill() *store.Kill
	Lineage(ctx context.Context, root store.Root, actor, reason string) (*brokerv1.RevocationSummary, error)
	// Subscribe watches agent's revocations, resuming after a cursor if
	// one is given; when events closes, ended says why.
	Subscribe(ctx context.Context, agent, resumeAfter string, marks bool) (events <-chan *brokerv1.WatchRevocationsResponse, ended func() error, cancel func())
}

// Config is what the service needs.
type Config struct {
	Store  *store.Store
	Roles  map[string]config.Role
	Gate   *authz.Gate
	Policy interface{ Current() *authz.Policy }
	Rules  delegation.Rules
	// Rate limits credential requests; Calls the other calls, per caller
	// (docs/security.md).
	Rate, Calls Limiter
	// Refusals counts the refusals that need no record each (nil: every
	// refusal is written).
	Refusals  RefusalCounter
	Watch     Watcher
	Approvals Approvals
	Issuer    Issuer
	Revoker   Revoker
	Metrics   *metrics.Metrics
	Tracer    trace.Tracer
	Notifier  Notifier
	// Reporters may report outcomes of other agents' work (admins,
	// approvers, maturity.outcome_reporters), reports that count in full
	// for the promotion gates.
	Reporters map[spiffeid.ID]bool
	// VaultAddress is where agents use their credentials.
	VaultAddress string
	// Closing is closed when atfd stops: streams end at once.
	Closing <-chan struct{}
	Now     func() time.Time
}

// Service is BrokerService.
type Service struct {
	brokerv1.UnimplementedBrokerServiceServer
	cfg Config

	mu sync.Mutex
	// open counts each caller's open streams (MaxStreamsPerCaller).
	open map[string]int
}

// MaxStreamsPerCaller bounds the streams (revocation and approval
// watches) one caller holds open at once, so that one SVID cannot take
// the broker's limits.max_streams for itself (docs/security.md).
const MaxStreamsPerCaller = 16

// New returns the service.
func New(cfg Config) *Service { return &Service{cfg: cfg, open: map[string]int{}} }

// openStream takes one of the caller's stream slots; done gives it back.
func (s *Service) openStream(ctx context.Context, method string) (done func(), err error) {
	if err := s.admit(ctx, method); err != nil {
		return nil, err
	}
	caller := edge.Caller(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open[caller] >= MaxStreamsPerCaller {
		s.cfg.Metrics.CallsLimited.WithLabelValues(method).Inc()
		return nil, fault.Limited("streams_per_caller", time.Second, "%s already holds %d streams open, the most one caller may; close one first",
			caller, MaxStreamsPerCaller)
	}
	s.open[caller]++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.open[caller]--; s.open[caller] <= 0 {
			delete(s.open, caller)
		}
	}, nil
}

// RegisterService registers the service with r.
func (s *Service) RegisterService(r grpc.ServiceRegistrar) {
	brokerv1.RegisterBrokerServiceServer(r, s)
}

func (s *Service) db(ctx context.Context) *store.Store {
	return s.cfg.Store.ForRequest(edge.RequestIDs(ctx))
}

// admit takes one call of the caller's from its bucket of
// limits.call_rate: every call of the agent API but FetchCredential
// (limited by limits.rate) passes it first, so that no call an agent can
// make writes or holds without bound (docs/security.md). An unregistered
// caller counts at the Intern rate, a reporter that is not an agent at
// the Principal one.
func (s *Service) admit(ctx context.Context, method string) error {
	if s.cfg.Calls == nil {
		return nil
	}
	caller := edge.Caller(ctx)
	level := authz.Intern
	a, err := s.cfg.Store.GetAgent(caller)
	switch {
	case err == nil:
		level = a.Level
	case !errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("look up caller: %w", err)
	case s.cfg.Reporters[edge.Identity(ctx).ID]:
		level = authz.Principal
	}
	if f := s.cfg.Calls.Allow(caller, level); f != nil {
		s.cfg.Metrics.CallsLimited.WithLabelValues(method).Inc()
		return f
	}
	return nil
}

// parentChain is the chain down to grant pid, which caller re-delegates
// under: it must exist and have been given to caller.
func (s *Service) parentChain(pid, caller string) ([]delegation.Grant, map[string]delegation.Agent, error) {
	grants, ancestors, err := s.chainOf(pid)
	if errors.Is(err, store.ErrNotFound) || (err == nil && grants[len(grants)-1].Delegatee != caller) {
		return nil, nil, noGrant(pid, "given to", caller)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("load grant chain: %w", err)
	}
	return grants, ancestors, nil
}

// noGrant is the answer about a grant that does not exist or that the
// caller is no party to: the same, so that it learns neither whether the
// grant exists nor who its parties are (docs/security.md).
func noGrant(id, relation, caller string) error {
	return fault.New(fault.NotFound, "grant %s does not exist or was not %s %s", id, relation, caller)
}

// noDelegatee is the answer about a delegatee that is not an active
// registered agent, unknown, deregistered or killed alike, so that a
// delegator learns nothing of another ID's standing (docs/security.md).
func noDelegatee(id string) error {
	return fault.New(fault.Denied, "delegatee %s is not an active registered agent and may receive no grant; check its SPIFFE ID, or ask an admin", id)
}

// mayPassOn refuses a delegation of a role that delegator a may not hold
// itself now: the policy in force, at its own level, must allow it (a
// grant never launders what the policy denies the delegator).
func (s *Service) mayPassOn(a store.Agent, roles []string) error {
	self, policy := a.Subject(), s.cfg.Policy.Current()
	for _, name := range roles {
		role, ok := s.cfg.Roles[name]
		if !ok {
			continue // delegation's rules refuse it as outside the manifest
		}
		if d := s.cfg.Gate.Decide(policy, self, role.Authz(), 0); d.Outcome == authz.Deny {
			return fault.New(fault.Denied, "%s may not hold role %q itself, so it cannot pass it on: %s", a.ID, name, d.Message)
		}
	}
	return nil
}

// grantScopes are the scopes a grant narrows roles to, by role, each a
// scope of an access-token role (kind jwt): a Vault role has none to
// narrow.
func (s *Service) grantScopes(in []*brokerv1.RoleScopes) (map[string][]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make(map[string][]string, len(in))
	for _, rs := range in {
		name := rs.GetRole()
		if _, dup := out[name]; dup {
			return nil, fault.New(fault.Invalid, "scopes of role %q are given twice; give them once", name)
		}
		role, ok := s.cfg.Roles[name]
		switch {
		case !ok:
			return nil, fault.New(fault.Invalid, "scopes are given for %q, which is no role of this broker", name)
		case role.Kind != config.KindJWT:
			return nil, fault.New(fault.Invalid, "role %q is a Vault role (kind %s): only roles of kind jwt have scopes to narrow", name, role.Kind)
		}
		if sc, foreign := role.ForeignScope(rs.GetScopes()); foreign {
			return nil, fault.New(fault.Invalid, "scope %q is not one of role %s's: %s", sc, name, strings.Join(role.Scopes, " "))
		}
		out[name] = rs.GetScopes()
	}
	return out, nil
}

// principal is agent a as delegation sees it.
func (s *Service) principal(a store.Agent) delegation.Agent {
	return decide.Principal(a, s.cfg.Roles, s.cfg.Gate)
}

func (s *Service) WhoAmI(ctx context.Context, _ *brokerv1.WhoAmIRequest) (*brokerv1.WhoAmIResponse, error) {
	if err := s.admit(ctx, "WhoAmI"); err != nil {
		return nil, err
	}
	id := edge.Identity(ctx)
	resp := &brokerv1.WhoAmIResponse{
		SpiffeId:      id.ID.String(),
		AuthMethod:    protoconv.AuthMethodToProto(id.Method),
		SvidExpiresAt: timestamppb.New(id.ExpiresAt),
	}
	a, err := s.cfg.Store.GetAgent(id.ID.String())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return resp, nil
	case err != nil:
		return nil, fmt.Errorf("look up caller: %w", err)
	}
	resp.Registered, resp.Level, resp.Status, resp.Roles = true, protoconv.LevelToProto(a.Level), protoconv.StatusToProto(a), a.Roles
	return resp, nil
}

func (s *Service) Delegate(ctx context.Context, req *brokerv1.DelegateRequest) (*brokerv1.DelegateResponse, error) {
	if err := s.admit(ctx, "Delegate"); err != nil {
		return nil, err
	}
	caller := edge.Caller(ctx)
	a, gk, err := s.cfg.Store.Caller(caller)
	switch {
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("look up caller: %w", err)
	case gk != nil:
		return nil, fault.New(fault.Denied, "%s", decide.KillSwitchMessage(gk))
	case err != nil:
		return nil, fault.New(fault.Denied, "caller is not a registered agent")
	}
	if !a.Usable() {
		return nil, fault.Wrap(fault.Denied, fmt.Errorf("%w: agent %s is deregistered or killed and holds no authority", delegation.ErrAgentInactive, caller))
	}
	delegatee, err := s.delegatee(ctx, req.GetDelegatee())
	if err != nil {
		return nil, err
	}
	scopes, err := s.grantScopes(req.GetScopes())
	if err != nil {
		return nil, err
	}
	dreq := delegation.Request{
		Delegator: s.principal(a),
		Delegatee: delegatee,
		Roles:     req.GetRoles(),
		Scopes:    scopes,
		TTL:       req.GetTtl().AsDuration(),
		MaxDepth:  int(req.GetMaxDepth()),
	}

	if pid := req.GetParentGrantId(); pid != "" {
		if dreq.Chain, dreq.Ancestors, err = s.parentChain(pid, caller); err != nil {
			return nil, err
		}
	}
	if dreq.TTL == 0 {
		// Unset: an hour, or what is left of the chain if less.
		dreq.TTL = time.Hour
		for _, g := range dreq.Chain {
			dreq.TTL = min(dreq.TTL, g.ExpiresAt.Sub(s.cfg.Now()).Truncate(time.Second))
		}
	}
	given, err := s.cfg.Store.GrantsGivenBy(caller)
	if err != nil {
		return nil, fmt.Errorf("count grants: %w", err)
	}
	now := s.cfg.Now()
	for _, g := range given {
		if g.ParentID == req.GetParentGrantId() && g.RevokedAt.IsZero() && g.ExpiresAt.After(now) {
			dreq.LiveFanOut++
		}
	}
	g, err := s.cfg.Rules.Check(dreq, now)
	if err == nil {
		err = s.mayPassOn(a, req.GetRoles())
	}
	if err != nil {
		edge.Logger(ctx).Warn("delegation refused", slog.String(edge.LogError, err.Error()))
		return nil, err
	}
	g.ID = edge.NewID()
	if err := s.db(ctx).PutGrant(g, s.cfg.Rules.MaxFanOut); err != nil {
		// An agent deregistered meanwhile may not be delegated to or from.
		if errors.Is(err, store.ErrDeregistered) || errors.Is(err, store.ErrKilled) {
			return nil, fault.Wrap(fault.Denied, err)
		}
		return nil, fmt.Errorf("record grant: %w", err)
	}
	edge.Logger(ctx).Info("grant created", slog.String("grant", g.ID), slog.String("delegatee", g.Delegatee), slog.Int("depth", g.Depth))
	s.cfg.Watch.Observe(ctx, monitor.Event{Agent: caller, InManifest: true, Kind: monitor.Delegated})
	return &brokerv1.DelegateResponse{Grant: protoconv.GrantToProto(g)}, nil
}

// delegatee is the agent a grant is to go to: an active registered one,
// or the same refusal whatever else it is (noDelegatee).
func (s *Service) delegatee(ctx context.Context, raw string) (*delegation.Agent, error) {
	id, err := attest.ParseID(raw)
	if err != nil {
		return nil, fault.Wrap(fault.Invalid, err)
	}
	e, err := s.cfg.Store.GetAgent(id.String())
	switch {
	case err == nil && e.Usable():
		p := s.principal(e)
		return &p, nil
	case err == nil || errors.Is(err, store.ErrNotFound):
		edge.Logger(ctx).Warn("delegation refused: the delegatee is not an active registered agent",
			slog.String("delegatee", id.String()), slog.Bool("registered", err == nil))
		return nil, noDelegatee(id.String())
	}
	return nil, fmt.Errorf("look up delegatee: %w", err)
}

func (s *Service) RevokeGrant(ctx context.Context, req *brokerv1.RevokeGrantRequest) (*brokerv1.RevokeGrantResponse, error) {
	if err := s.admit(ctx, "RevokeGrant"); err != nil {
		return nil, err
	}
	caller := edge.Caller(ctx)
	chain, err := s.cfg.Store.Chain(req.GetGrantId())
	// The delegator, or anyone above it in the chain, may revoke.
	if errors.Is(err, store.ErrNotFound) || (err == nil && !slices.ContainsFunc(chain, func(g delegation.Grant) bool { return g.Delegator == caller })) {
		return nil, noGrant(req.GetGrantId(), "given, nor any grant above it, by", caller)
	}
	if err != nil {
		return nil, fmt.Errorf("load grant chain: %w", err)
	}
	sum, err := s.cfg.Revoker.Lineage(ctx, store.Root{GrantID: req.GetGrantId()}, caller, req.GetReason())
	if err != nil {
		return nil, err
	}
	return &brokerv1.RevokeGrantResponse{Summary: sum}, nil
}

func (s *Service) WatchRevocations(req *brokerv1.WatchRevocationsRequest, stream grpc.ServerStreamingServer[brokerv1.WatchRevocationsResponse]) error {
	ctx := stream.Context()
	done, err := s.openStream(ctx, "WatchRevocations")
	if err != nil {
		return err
	}
	defer done()
	events, ended, cancel := s.cfg.Revoker.Subscribe(ctx, edge.Caller(ctx), req.GetResumeAfter(), req.GetMarks())
	defer cancel()
	return edge.Relay(ctx, stream, s.cfg.Closing, events, ended, stream.Send)
}

func (s *Service) WaitApproval(req *brokerv1.WaitApprovalRequest, stream grpc.ServerStreamingServer[brokerv1.WaitApprovalResponse]) error {
	ctx := stream.Context()
	done, err := s.openStream(ctx, "WaitApproval")
	if err != nil {
		return err
	}
	defer done()
	return s.cfg.Approvals.Wait(ctx, req.GetApprovalId(), edge.Caller(ctx), s.cfg.Closing, edge.ErrShuttingDown, func(ap store.Approval) error {
		return stream.Send(&brokerv1.WaitApprovalResponse{Approval: protoconv.ApprovalToProto(ap)})
	})
}

func (s *Service) ReportOutcome(ctx context.Context, req *brokerv1.ReportOutcomeRequest) (*brokerv1.ReportOutcomeResponse, error) {
	if err := s.admit(ctx, "ReportOutcome"); err != nil {
		return nil, err
	}
	caller := edge.Caller(ctx)
	agent, err := s.outcomeSubject(ctx, caller, req.GetAgentId())
	if err != nil {
		return nil, err
	}
	outcome := strings.ToLower(strings.TrimPrefix(req.GetOutcome().String(), "OUTCOME_"))
	if err := s.db(ctx).RecordOutcome(store.OutcomeReport{Agent: agent, Reporter: caller, Outcome: outcome, Role: req.GetRole(),
		DecisionID: req.GetDecisionId(), Message: audit.Redact(req.GetDetail())}); err != nil {
		return nil, fmt.Errorf("record outcome: %w", err)
	}
	// A human rejecting a recommendation is not the agent failing.
	failed := req.GetOutcome() == brokerv1.Outcome_OUTCOME_FAILURE || req.GetOutcome() == brokerv1.Outcome_OUTCOME_ERROR
	s.cfg.Watch.Outcome(ctx, agent, req.GetRole(), !failed)
	return &brokerv1.ReportOutcomeResponse{}, nil
}

// outcomeSubject is the agent an outcome report is about: the caller's own
// (self-reported), or another's (agentID) if the caller is a reporter who
// is not an agent itself.
func (s *Service) outcomeSubject(ctx context.Context, caller, agentID string) (string, error) {
	if agentID == "" || agentID == caller {
		a, err := s.cfg.Store.GetAgent(caller)
		if err != nil || !a.Usable() {
			return "", fault.New(fault.Denied, "%s is not an active registered agent; only agents report their own outcomes", caller)
		}
		return caller, nil
	}
	if !s.cfg.Reporters[edge.Identity(ctx).ID] {
		return "", fault.New(fault.Denied, "%s may not report on another agent's work: reporters are admins, approvers and "+
			"maturity.outcome_reporters in atfd's configuration", caller)
	}
	if err := edge.NotAnAgent(ctx, s.cfg.Store); err != nil {
		return "", err
	}
	a, err := s.cfg.Store.GetAgent(agentID)
	if err != nil || !a.Usable() {
		return "", fault.New(fault.Precondition, "%s is not an active registered agent: there is no work of it to report", agentID)
	}
	return agentID, nil
}

// chainOf loads the chain down to grantID and its delegators as they are
// now.
func (s *Service) chainOf(grantID string) ([]delegation.Grant, map[string]delegation.Agent, error) {
	chain, err := s.cfg.Store.Chain(grantID)
	if err != nil {
		return nil, nil, err
	}
	ancestors := make(map[string]delegation.Agent, len(chain))
	for _, g := range chain {
		a, err := s.cfg.Store.GetAgent(g.Delegator)
		if errors.Is(err, store.ErrNotFound) {
			continue // counts as deregistered
		}
		if err != nil {
			return nil, nil, err
		}
		ancestors[g.Delegator] = s.principal(a)
	}
	return chain, ancestors, nil
}
