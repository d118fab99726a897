package agentapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/monitor"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/tracing"
	"github.com/agentictrust/atf/broker/vault"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// FetchCredential is one request through the pipeline: read the request,
// decide (package decide, with the stateful checks between its stages),
// then wait for a human, or issue (package issue), and report.
func (s *Service) FetchCredential(ctx context.Context, req *brokerv1.FetchCredentialRequest) (*brokerv1.FetchCredentialResponse, error) {
	return s.Exchange(ctx, req, nil)
}

// Exchange is FetchCredential with the scopes an access token is narrowed
// to (a role of kind jwt): the OAuth token exchange (docs/oauth.md) runs
// through the same pipeline, gates and audit as any credential.
func (s *Service) Exchange(ctx context.Context, req *brokerv1.FetchCredentialRequest, scopes []string) (*brokerv1.FetchCredentialResponse, error) {
	start := time.Now()
	r, err := s.request(ctx, req)
	if err != nil {
		return nil, err
	}
	r.Scopes = scopes
	why := decide.NewReasons(edge.NewID(), edge.RequestID(ctx), r)
	ctx, span := s.cfg.Tracer.Start(ctx, tracing.SpanDecision, trace.WithAttributes(
		attribute.String(tracing.AttrAgent, r.Caller), attribute.String(tracing.AttrRole, r.Role.Name),
		attribute.String(tracing.AttrDecisionID, why.DecisionID), attribute.String(tracing.AttrRequestID, why.RequestID)))
	resp, outcome, err := s.fetch(ctx, r, why, start)
	tracing.EndDecision(span, outcome.decision, outcome.reason, outcome.policyVersion, edge.Code(err))
	return resp, err
}

// outcome is what the decision's span reports.
type outcome struct{ decision, reason, policyVersion string }

// fetch decides and carries out r. A refusal is audited, counted and fed
// to the behaviour watch before the caller hears it; a refusal whose
// audit record cannot be written is not answered as a refusal but as
// Unavailable, so that nothing is ever refused silently.
func (s *Service) fetch(ctx context.Context, r decide.Request, why decide.Reasons, start time.Time) (*brokerv1.FetchCredentialResponse, outcome, error) {
	plan, agent, watched, err := s.decide(ctx, r, why)
	for again := false; ; again = true {
		if err == nil && plan.NeedsApproval {
			s.cfg.Metrics.Decisions.WithLabelValues("pending", plan.Reasons.Reason).Inc()
			resp, err := s.requestApproval(ctx, plan)
			if err != nil {
				return nil, outcome{"error", plan.Reasons.Reason, plan.Reasons.Version()}, err
			}
			return resp, outcome{"pending", plan.Reasons.Reason, plan.Reasons.Version()}, nil
		}
		var cred vault.Credential
		if err == nil {
			cred, err = s.cfg.Issuer.Issue(ctx, plan, agent.Revision)
		}
		if errors.Is(err, decide.ErrChanged) && !again {
			// The agent changed between the decision's read and the
			// record (a change committed meanwhile, or a moment before on
			// another replica and not yet in the recent read), and the
			// record refused the credential: once more, as a new
			// decision on the latest record.
			why = decide.NewReasons(edge.NewID(), why.RequestID, r)
			plan, agent, watched, err = s.decideOn(ctx, r, why, s.cfg.Store.CallerLatest(r.Caller), true)
			continue
		}
		var ref *decide.Refusal
		if errors.As(err, &ref) {
			return nil, outcome{ref.Reasons.Decision, refusalReason(ref), ref.Reasons.Version()}, s.refuse(ctx, r, ref, watched)
		}
		if err != nil {
			return nil, outcome{"error", "", plan.Reasons.Version()}, err
		}
		s.issued(ctx, plan, cred, start)
		return &brokerv1.FetchCredentialResponse{Credential: credentialToProto(cred, r, plan, s.cfg.VaultAddress)}, outcome{"allow", string(authz.Allowed), plan.Reasons.Version()}, nil
	}
}

// credentialToProto is the answer of an issuance: the token, and the
// dynamic secret read with it, if any.
func credentialToProto(cred vault.Credential, r decide.Request, plan decide.Plan, vaultAddr string) *brokerv1.Credential {
	c := &brokerv1.Credential{
		Token:        cred.Token,
		Accessor:     cred.Accessor,
		Role:         r.Role.Name,
		Policies:     cred.Policies,
		IssuedAt:     timestamppb.New(cred.IssuedAt),
		ExpiresAt:    timestamppb.New(cred.ExpiresAt),
		Renewable:    false,
		Level:        protoconv.LevelToProto(plan.Level),
		DecisionId:   plan.Reasons.DecisionID,
		VaultAddress: vaultAddr,
		GrantId:      r.GrantID,
		Chain:        plan.Chain,
	}
	if l := cred.Lease; l.ID != "" {
		c.Secret, c.LeaseId, c.LeaseExpiresAt = l.Data, l.ID, timestamppb.New(l.ExpiresAt)
	}
	return c
}

// request checks the request's own fields and the role it names.
func (s *Service) request(ctx context.Context, req *brokerv1.FetchCredentialRequest) (decide.Request, error) {
	caller := edge.Caller(ctx)
	if req.GetAgentId() != "" && req.GetAgentId() != caller {
		edge.Logger(ctx).Warn("request names another agent", slog.String(edge.LogAgent, req.GetAgentId()))
		return decide.Request{}, fault.New(fault.Denied, "request names agent %q but the caller's SVID is %s; identity comes only from the SVID", req.GetAgentId(), caller)
	}
	name, err := authz.CanonicalRole(req.GetRole())
	if err != nil {
		return decide.Request{}, fault.Wrap(fault.Invalid, err)
	}
	role, ok := s.cfg.Roles[name]
	if !ok {
		return decide.Request{}, fault.New(fault.NotFound, "role %q is not defined in the broker's roles file", name)
	}
	// A full store could record neither the credential nor the decision:
	// refuse before anything happens in Vault.
	if err := s.cfg.Store.Full(); err != nil {
		return decide.Request{}, fmt.Errorf("check the store's space: %w", err)
	}
	return decide.Request{Caller: caller, Role: role, TTL: req.GetTtl().AsDuration(), GrantID: req.GetGrantId(),
		ApprovalID: req.GetApprovalId(), Purpose: audit.Redact(req.GetPurpose()), Justification: audit.Redact(req.GetJustification())}, nil
}

// decide decides r on the caller's record and the kill switch as a recent
// read of the store finds them (store.CallerRecent; in etcd, without a
// round trip to the leader). An issuance decided on it stands: its record
// commits only if the agent is still at the revision decided on, the kill
// switch off and the lineage live (store.RecordCredential), so a
// revocation or a kill committed on any replica refuses it all the same.
// A read that would refuse before the gate, or feed the behaviour monitor
// a role outside the agent's manifest (an anomaly, which can demote or
// stop the agent), is confirmed on the latest state before anything is
// decided on it. Any other outcome (a refusal by the gate, an approval
// to ask for) is checked against the latest state after and, if that
// differs, decided again on it: in that rare case the request counts
// twice against the caller's rate and behaviour baseline.
func (s *Service) decide(ctx context.Context, r decide.Request, why decide.Reasons) (decide.Plan, store.Agent, bool, error) {
	c := s.cfg.Store.CallerRecent(r.Caller)
	if c.Recent && (c.Err != nil || c.Kill != nil || !c.Agent.Usable() || !slices.Contains(c.Agent.Roles, r.Role.Name)) {
		c = s.cfg.Store.CallerLatest(r.Caller)
	}
	plan, agent, watched, err := s.decideOn(ctx, r, why, c, false)
	if !c.Recent || (err == nil && !plan.NeedsApproval) {
		return plan, agent, watched, err
	}
	latest := s.cfg.Store.CallerLatest(r.Caller)
	if latest.Same(c) {
		return plan, agent, watched, err
	}
	return s.decideOn(ctx, r, why, latest, false)
}

// decideOn runs the decision's stages on c: admission (the kill switch,
// the rate limit), the chain's attenuation, the breaker and the behaviour
// monitor, then the gate. watched says whether the caller's refusals feed
// the behaviour watch (once it is known as an agent that passed the
// monitor). again is a request decided a second time, after it passed
// the rate limit and the monitor once: they do not count it again.
func (s *Service) decideOn(ctx context.Context, r decide.Request, why decide.Reasons, c store.CallerRead, again bool) (plan decide.Plan, agent store.Agent, watched bool, err error) {
	a, globalKill := c.Agent, c.Kill
	var rec *store.Agent
	switch {
	case c.Err == nil:
		rec = &a
	case !errors.Is(c.Err, store.ErrNotFound):
		return plan, a, false, fmt.Errorf("look up caller: %w", c.Err)
	}
	// The rate limit first: a caller refused by the kill switch (or the
	// gate, unregistered) is limited like any other (docs/security.md).
	if f := s.rate(r.Caller, a.Level, again); f != nil {
		return plan, a, false, decide.Limit(why, f)
	}
	// An unregistered caller is the gate's to refuse, as not registered:
	// whether the kill switch is on is none of its business.
	if ref := decide.Admit(why, globalKill); ref != nil && rec != nil {
		return plan, a, false, ref
	}
	auth := decide.Own(r.Caller, rec)
	if r.GrantID != "" && rec != nil {
		grants, ancestors, err := s.chainOf(r.GrantID)
		if errors.Is(err, store.ErrNotFound) || (err == nil && grants[len(grants)-1].Delegatee != r.Caller) {
			return plan, a, false, noGrant(r.GrantID, "given to", r.Caller)
		}
		if err != nil {
			return plan, a, false, fmt.Errorf("load grant chain: %w", err)
		}
		var ref *decide.Refusal
		if auth, ref = decide.Attenuate(why, auth, s.principal(a), grants, ancestors, s.cfg.Now()); ref != nil {
			return plan, a, false, ref
		}
	}
	if rec != nil {
		why.Of(auth)
		if f := s.cfg.Watch.BreakerOpen(r.Caller); f != nil {
			return plan, a, false, decide.Limit(why, f)
		}
		if an := s.observe(ctx, monitor.Event{Agent: r.Caller, Lineage: auth.Lineage(), Role: r.Role.Name,
			InManifest: slices.Contains(a.Roles, r.Role.Name), Kind: monitor.Request}, again); an != nil {
			return plan, a, true, decide.Deny(why, authz.Decision{Reason: decide.ReasonAnomaly, Message: fmt.Sprintf(
				"request refused: %s behaviour anomaly (%s); the platform team has been notified", an.Severity, an.Rule)})
		}
	}
	plan, ref := decide.Decide(decide.Input{Gate: s.cfg.Gate, Policy: s.cfg.Policy.Current(), Request: r, Authority: auth, Now: s.cfg.Now()}, why)
	if ref != nil {
		return plan, a, rec != nil, ref
	}
	return plan, a, rec != nil, nil
}

// rate is the caller's rate limit; a request decided again is not
// counted again.
func (s *Service) rate(caller string, level authz.Level, again bool) *fault.Error {
	if again {
		return nil
	}
	return s.cfg.Rate.Allow(caller, level)
}

// observe feeds ev to the behaviour monitor, once per request.
func (s *Service) observe(ctx context.Context, ev monitor.Event, again bool) *monitor.Anomaly {
	if again {
		return nil
	}
	return s.cfg.Watch.Observe(ctx, ev)
}

// refuse records a refusal: an audit record, a metric, and for a watched
// agent an event for the monitor (and a failure for its breaker, if
// denied).
func (s *Service) refuse(ctx context.Context, r decide.Request, ref *decide.Refusal, watched bool) (err error) {
	why := ref.Reasons
	log := edge.Logger(ctx).With(slog.String(edge.LogDecisionID, why.DecisionID), slog.String(edge.LogRole, r.Role.Name))
	s.cfg.Metrics.Decisions.WithLabelValues(why.Decision, refusalReason(ref)).Inc()
	write := true
	if countOnly(ref) && s.cfg.Refusals != nil {
		var prior *store.AuditRecord
		write, prior = s.cfg.Refusals.Note(r.Caller, ref.AuditKind(), refusalReason(ref), r.Role.Name)
		if prior != nil {
			// The window before this one: not this request's record.
			err = s.cfg.Store.AppendAudit(*prior)
		}
		if !write {
			s.cfg.Metrics.Suppressed.WithLabelValues(ref.AuditKind(), refusalReason(ref)).Inc()
		}
	}
	if write && err == nil {
		err = s.db(ctx).AppendAudit(store.AuditRecord{Kind: ref.AuditKind(), Actor: r.Caller, Subject: r.Role.Name, Detail: why.Detail()})
	}
	if err != nil {
		log.Error("writing the audit record of a refusal failed; the caller is told the broker is unavailable", slog.String(edge.LogError, err.Error()))
		return fault.New(fault.Unavailable, "the broker could not record its decision %s; nothing was issued; retry later", why.DecisionID)
	}
	if !write {
		log = slog.New(slog.DiscardHandler) // counted: one line per window
	}
	switch ref.Outcome {
	case decide.Denied:
		log.Warn("credential denied", slog.String(edge.LogReason, why.Reason))
		if watched {
			s.cfg.Watch.Observe(ctx, monitor.Event{Agent: r.Caller, Role: r.Role.Name, Kind: monitor.Denied})
			s.cfg.Watch.Breaker(ctx, r.Caller, true)
		}
	case decide.Limited:
		log.Warn("credential limited", slog.String("limit", why.Limit))
		if watched {
			s.cfg.Watch.Observe(ctx, monitor.Event{Agent: r.Caller, Role: r.Role.Name, Kind: monitor.Limited})
		}
	}
	return ref
}

// countOnly says whether ref is a refusal the audit trail counts per
// caller, kind and reason instead of recording each (Refusals): one of an
// unregistered caller, of the kill switch, of a deregistered agent or of
// the rate limit. Any caller with an SVID can repeat these at will; a
// registered agent's refusals by the policy keep a record each, at the
// pace its rate limit allows (docs/security.md).
func countOnly(ref *decide.Refusal) bool {
	switch authz.Reason(ref.Reasons.Reason) {
	case authz.NotRegistered, authz.Killed, authz.NotActive:
		return true
	}
	return ref.Outcome == decide.Limited && ref.Reasons.Limit == "rate"
}

// refusalReason is the reason a refusal is counted under: the limit for a
// limited request, the decision's reason otherwise.
func refusalReason(ref *decide.Refusal) string {
	if ref.Outcome == decide.Limited {
		return ref.Reasons.Limit
	}
	return ref.Reasons.Reason
}

// requestApproval records plan as a request a human must approve.
func (s *Service) requestApproval(ctx context.Context, p decide.Plan) (*brokerv1.FetchCredentialResponse, error) {
	role := p.Role.Authz()
	// The scopes the token would carry, named for the approver and held
	// to at redemption: asked for none, every scope the role has now.
	scopes := p.Request.Scopes
	if len(scopes) == 0 && p.Role.Kind == config.KindJWT {
		scopes = p.Role.Scopes
	}
	ap, err := s.cfg.Approvals.Request(ctx, store.Approval{
		ID: edge.NewID(), AgentID: p.Caller, Role: p.Role.Name, Class: role.Class.String(), Classification: role.Classification.String(),
		Level: p.Level, GrantID: p.GrantID, Chain: p.Chain, TTL: p.TTL, RequestedTTL: p.Request.TTL, Scopes: scopes, Purpose: p.Purpose,
		Justification: p.Justification, CreatedAt: s.cfg.Now().UTC(), DecisionID: p.Reasons.DecisionID, Why: p.Reasons.Detail(),
	})
	if err != nil {
		return nil, err
	}
	return &brokerv1.FetchCredentialResponse{Approval: protoconv.ApprovalToProto(ap)}, nil
}

// issued reports an issuance: metrics, the behaviour watch, the log, and
// a notification when the level calls for one.
func (s *Service) issued(ctx context.Context, p decide.Plan, cred vault.Credential, start time.Time) {
	s.cfg.Metrics.Decisions.WithLabelValues("allow", string(authz.Allowed)).Inc()
	s.cfg.Metrics.Issuance.Observe(time.Since(start).Seconds())
	s.cfg.Watch.Observe(ctx, monitor.Event{Agent: p.Caller, Lineage: p.Lineage(), Role: p.Role.Name, InManifest: true, Kind: monitor.Issued})
	s.cfg.Watch.Breaker(ctx, p.Caller, false)
	edge.Logger(ctx).Info("credential issued", slog.String(edge.LogDecisionID, p.Reasons.DecisionID), slog.String(edge.LogRole, p.Role.Name),
		slog.String(edge.LogAccessor, cred.Accessor), slog.String(edge.LogLeaseID, cred.Lease.ID), slog.Duration(edge.LogTTL, p.TTL), slog.String(edge.LogLevel, p.Level.String()),
		slog.String("grant", p.GrantID), slog.Int("uses", p.MaxUses))
	if p.Notify {
		s.cfg.Notifier.Notify(ctx, "write_issued", p.Caller, p.Role.Name,
			fmt.Sprintf("%s agent %s was issued %s role %s for %s", p.Level, p.Caller, p.Role.Authz().Class, p.Role.Name, p.TTL),
			map[string]string{"decision_id": p.Reasons.DecisionID, "accessor": cred.Accessor, "purpose": p.Purpose, "chain": p.Reasons.Chain})
	}
}
