package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/failpoint"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/monitor"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/vault"
	"github.com/agentictrust/atf/delegation"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

type brokerService struct {
	brokerv1.UnimplementedBrokerServiceServer
	s *Server
}

func (b *brokerService) WhoAmI(ctx context.Context, _ *brokerv1.WhoAmIRequest) (*brokerv1.WhoAmIResponse, error) {
	id := edge.Identity(ctx)
	resp := &brokerv1.WhoAmIResponse{
		SpiffeId:      id.ID.String(),
		AuthMethod:    protoconv.AuthMethodToProto(id.Method),
		SvidExpiresAt: timestamppb.New(id.ExpiresAt),
	}
	a, err := b.s.store.GetAgent(id.ID.String())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return resp, nil
	case err != nil:
		return nil, fmt.Errorf("look up caller: %w", err)
	}
	resp.Registered, resp.Level, resp.Status, resp.Roles = true, protoconv.LevelToProto(a.Level), protoconv.StatusToProto(a), a.Roles
	return resp, nil
}

func (b *brokerService) FetchCredential(ctx context.Context, req *brokerv1.FetchCredentialRequest) (resp *brokerv1.FetchCredentialResponse, err error) {
	s := b.s
	caller := edge.Caller(ctx)
	log := edge.Logger(ctx)
	if req.GetAgentId() != "" && req.GetAgentId() != caller {
		log.Warn("request names another agent", slog.String(edge.LogAgent, req.GetAgentId()))
		return nil, fault.New(fault.Denied, "request names agent %q but the caller's SVID is %s; identity comes only from the SVID", req.GetAgentId(), caller)
	}
	roleName, err := authz.CanonicalRole(req.GetRole())
	if err != nil {
		return nil, fault.Wrap(fault.Invalid, err)
	}
	role, ok := s.roles[roleName]
	if !ok {
		return nil, fault.New(fault.NotFound, "role %q is not defined in the broker's roles file", roleName)
	}
	// A full store could record neither the credential nor the decision:
	// refuse before anything happens in Vault.
	if err := s.store.Full(); err != nil {
		return nil, fmt.Errorf("check the store's space: %w", err)
	}
	decisionID := edge.NewID()
	log = log.With(slog.String(edge.LogDecisionID, decisionID), slog.String(edge.LogRole, role.Name))
	ctx, span := s.tracing.tracer.Start(ctx, spanDecision, trace.WithAttributes(
		attribute.String(attrAgent, caller), attribute.String(attrRole, role.Name),
		attribute.String(attrDecisionID, decisionID), attribute.String(attrRequestID, edge.RequestID(ctx))))
	// why is the decision's explanation, for the audit record whatever the
	// outcome. Free text is redacted before it goes anywhere.
	why := map[string]string{
		"decision_id": decisionID, "request_id": edge.RequestID(ctx), "role": role.Name, "class": role.Authz().Class.String(),
		"classification": role.Authz().Classification.String(), "grant_id": req.GetGrantId(), "approval_id": req.GetApprovalId(),
		"purpose": audit.Redact(req.GetPurpose()),
	}
	defer func() { traceDecision(span, resp, why, err) }()
	explain := func(d authz.Decision) {
		why["reason"], why["message"], why["rule"] = string(d.Reason), d.Message, d.Rule
		why["policy"], why["policy_version"] = d.Matched, strconv.FormatUint(d.PolicyVersion, 10)
	}
	start := time.Now()
	refuse := func(kind, decision string) {
		why["decision"] = decision
		reason := why["reason"]
		if decision == "limited" {
			reason = why["limit"]
		}
		s.metrics.decisions.WithLabelValues(decision, reason).Inc()
		if err := s.db(ctx).AppendAudit(store.AuditRecord{Kind: kind, Actor: caller, Subject: role.Name, Detail: why}); err != nil {
			log.Error("writing the audit record failed", slog.String(edge.LogError, err.Error()))
		}
	}
	// watched is set once the caller is known to be a registered agent:
	// its refusals feed the behaviour monitor and its circuit breaker.
	watched := false
	deny := func(d authz.Decision) error {
		explain(d)
		log.Warn("credential denied", slog.String(edge.LogReason, string(d.Reason)))
		refuse("credential_denied", "deny")
		if watched {
			s.observe(ctx, monitor.Event{Agent: caller, Role: role.Name, Kind: monitor.Denied})
			s.recordBreaker(ctx, caller, true)
		}
		return fault.New(fault.Denied, "%s (decision %s)", d.Message, decisionID)
	}
	limited := func(lerr *fault.Error) error {
		why["limit"], why["message"] = lerr.Limit, lerr.Msg
		log.Warn("credential limited", slog.String("limit", lerr.Limit))
		refuse("credential_limited", "limited")
		if watched {
			s.observe(ctx, monitor.Event{Agent: caller, Role: role.Name, Kind: monitor.Limited})
		}
		return lerr
	}

	var agent *authz.Agent
	a, err := s.store.GetAgent(caller)
	switch {
	case err == nil:
		agent = &authz.Agent{ID: a.ID, Level: a.Level, Active: a.Status == store.Active, Killed: a.Kill != nil, Roles: a.Roles}
	case !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("look up caller: %w", err)
	}
	if kerr := s.killedError(); kerr != nil {
		why["reason"], why["message"] = string(authz.Killed), kerr.Error()
		refuse("credential_denied", "deny")
		return nil, kerr
	}
	if lerr := s.rate.allow(caller, a.Level); lerr != nil {
		return nil, limited(lerr)
	}
	// Under a grant, the agent's authority narrows to the chain's: roles
	// intersected, level the lowest, expiry the earliest.
	chain := []string{caller}
	var grantIDs []string
	var chainLevels []authz.Level
	var notAfter time.Time
	if gid := req.GetGrantId(); gid != "" && agent != nil {
		grants, ancestors, err := s.chainOf(gid)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fault.New(fault.NotFound, "grant %s does not exist", gid)
		}
		if err != nil {
			return nil, fmt.Errorf("load grant chain: %w", err)
		}
		auth, err := delegation.Effective(s.principal(a), grants, ancestors, s.now())
		if err != nil {
			return nil, deny(authz.Decision{Reason: "grant", Message: err.Error()})
		}
		agent.Level, agent.Roles = authz.Level(auth.Level), auth.Roles
		for _, an := range ancestors {
			chainLevels = append(chainLevels, authz.Level(an.Level))
		}
		chain, grantIDs, notAfter = auth.Chain, auth.GrantIDs, auth.ExpiresAt
	}
	if agent != nil {
		why["level"], why["chain"] = agent.Level.String(), strings.Join(chain, " > ")
		if lerr := s.breakerOpen(caller); lerr != nil {
			return nil, limited(lerr)
		}
		if an := s.observe(ctx, monitor.Event{Agent: caller, Lineage: chain[0], Role: role.Name,
			InManifest: slices.Contains(a.Roles, role.Name), Kind: monitor.Request}); an != nil {
			watched = true
			return nil, deny(authz.Decision{Reason: "anomaly", Message: fmt.Sprintf(
				"request refused: %s behaviour anomaly (%s); the platform team has been notified", an.Severity, an.Rule)})
		}
		watched = true
	}
	policy := s.policy.Load()
	d := s.gate.Decide(policy, agent, role.Authz(), req.GetTtl().AsDuration())
	// Under a grant, every delegator above the caller must be allowed the
	// role by the policy too: a delegation never launders authority.
	for _, up := range chain[:len(chain)-1] {
		if d.Outcome == authz.Deny {
			break
		}
		if ud := s.gate.Decide(policy, &authz.Agent{ID: up, Level: agent.Level, Active: true, Roles: agent.Roles}, role.Authz(), 0); ud.Outcome == authz.Deny {
			ud.Message = fmt.Sprintf("delegator %s may not hold role %q itself, so it cannot pass it on: %s", up, role.Name, ud.Message)
			d = ud
		}
	}
	explain(d)
	if d.Outcome == authz.Deny {
		return nil, deny(d)
	}
	if d.Outcome == authz.NeedsApproval && req.GetApprovalId() == "" {
		s.metrics.decisions.WithLabelValues("pending", string(d.Reason)).Inc()
		return s.requestApproval(ctx, store.Approval{
			ID: edge.NewID(), AgentID: caller, Role: role.Name, Class: role.Authz().Class.String(), Classification: role.Authz().Classification.String(),
			Level: agent.Level, GrantID: req.GetGrantId(), Chain: chain, TTL: d.TTL, Purpose: why["purpose"],
			Justification: audit.Redact(req.GetJustification()), CreatedAt: s.now().UTC(), DecisionID: decisionID, Why: why,
		})
	}
	// A delegated credential never exceeds what any ancestor could hold
	// itself: the strictest lifetime and use limits along the chain apply.
	for _, lvl := range chainLevels {
		lim := s.gate.Limits(lvl)
		d.TTL = min(d.TTL, lim.MaxTTL)
		if lim.MaxUses > 0 && (d.MaxUses == 0 || lim.MaxUses < d.MaxUses) {
			d.MaxUses = lim.MaxUses
		}
	}
	if !notAfter.IsZero() {
		d.TTL = min(d.TTL, notAfter.Sub(s.now()).Truncate(time.Second))
		if d.TTL < time.Second {
			return nil, deny(authz.Decision{Reason: "grant", Message: fmt.Sprintf("grant %s expires too soon to issue anything under it", req.GetGrantId())})
		}
	}
	lc, lerr := s.live.reserve(caller, lineageRoot(caller, chain), role.Name)
	if lerr != nil {
		return nil, limited(lerr)
	}
	issued := false
	defer func() {
		if !issued {
			s.live.cancel(lc)
		}
	}()
	if id := req.GetApprovalId(); id != "" {
		release, err := s.claimApproval(ctx, id, caller, role.Name, req.GetGrantId(), decisionID)
		if err != nil {
			return nil, err
		}
		defer func() {
			if !issued {
				release()
			}
		}()
	}
	node := store.AgentNode(caller)
	if req.GetGrantId() != "" {
		node = store.GrantNode(req.GetGrantId())
	}
	vreq := vault.Request{
		Policies: role.Policies,
		TTL:      d.TTL,
		NumUses:  d.MaxUses,
		Metadata: map[string]string{
			"atf_agent":       caller,
			"atf_role":        role.Name,
			"atf_level":       agent.Level.String(),
			"atf_decision_id": decisionID,
			"atf_grant_id":    req.GetGrantId(),
			"atf_chain":       strings.Join(chain, " > "),
			"atf_grant_chain": strings.Join(grantIDs, ","),
		},
		DisplayName: "atf-" + strings.ReplaceAll(role.Name, "/", "-"),
	}
	vctx, vspan := s.tracing.tracer.Start(ctx, spanVaultIssue)
	cred, anchor, err := s.issueUnder(vctx, node, vreq)
	endSpan(vspan, err)
	if errors.Is(err, store.ErrKilled) {
		return nil, deny(authz.Decision{Reason: authz.Killed, Message: "the kill switch stopped this agent while the request was in flight"})
	}
	if errors.Is(err, store.ErrRevoked) || errors.Is(err, store.ErrDeregistered) {
		// The store refused an anchor: a revocation committed while this
		// call was in flight.
		return nil, deny(authz.Decision{Reason: "revoked", Message: "the lineage this credential belongs to was revoked"})
	}
	if err != nil {
		// Allowed, but Vault did not issue: the trail says so too.
		why["reason"], why["message"] = "vault_unavailable", "Vault did not issue the credential; nothing was issued"
		if !errors.Is(err, vault.ErrUnavailable) {
			why["reason"], why["message"] = "vault_refused", "Vault refused to issue the credential; nothing was issued"
		}
		refuse("credential_failed", "error")
		return nil, fmt.Errorf("issue credential: %w", err)
	}
	failpoint.Hit(failpoint.IssueAfterVault)
	_, rspan := s.tracing.tracer.Start(ctx, spanStoreRecord)
	err = s.db(ctx).RecordCredential(store.Credential{
		Accessor:      cred.Accessor,
		AgentID:       caller,
		Role:          role.Name,
		Level:         agent.Level,
		Policies:      cred.Policies,
		DecisionID:    decisionID,
		IssuedAt:      cred.IssuedAt.UTC(),
		ExpiresAt:     cred.ExpiresAt.UTC(),
		GrantID:       req.GetGrantId(),
		Anchor:        anchor,
		Chain:         chain,
		GrantIDs:      grantIDs,
		ApprovalID:    req.GetApprovalId(),
		AgentRevision: a.Revision,
		Why:           why,
	})
	endSpan(rspan, err)
	if err != nil {
		// Never hand out a credential the broker has not recorded. A refused
		// record is queued for revocation; revoke it now as well.
		if rerr := s.issuer.Revoke(context.WithoutCancel(ctx), cred.Accessor); rerr != nil {
			log.Error("revoking an unrecorded credential failed; it expires on its own", slog.String(edge.LogError, rerr.Error()),
				slog.String(edge.LogAccessor, cred.Accessor), slog.Time("expires_at", cred.ExpiresAt))
		} else if errors.Is(err, store.ErrDeregistered) || errors.Is(err, store.ErrRevoked) || errors.Is(err, store.ErrKilled) || errors.Is(err, store.ErrConflict) {
			_ = s.store.CompleteRevocation(cred.Accessor)
		}
		switch {
		case errors.Is(err, store.ErrConflict):
			return nil, fault.New(fault.Aborted, "agent %s's registration changed while the credential was issued; nothing was issued, retry (decision %s)", caller, decisionID)
		case errors.Is(err, store.ErrKilled):
			return nil, fault.New(fault.Denied, "agent %s was stopped by the kill switch (decision %s)", caller, decisionID)
		case errors.Is(err, store.ErrDeregistered):
			return nil, fault.New(fault.Denied, "agent %s was deregistered (decision %s)", caller, decisionID)
		case errors.Is(err, store.ErrRevoked):
			return nil, fault.New(fault.Denied, "the lineage this credential belongs to was revoked (decision %s)", decisionID)
		}
		return nil, fmt.Errorf("record credential: %w", err)
	}
	issued = true
	failpoint.Hit(failpoint.IssueAfterRecord)
	s.live.commit(lc, cred.Accessor, cred.ExpiresAt)
	s.metrics.decisions.WithLabelValues("allow", string(authz.Allowed)).Inc()
	s.metrics.issuance.Observe(time.Since(start).Seconds())
	s.observe(ctx, monitor.Event{Agent: caller, Lineage: chain[0], Role: role.Name, InManifest: true, Kind: monitor.Issued})
	s.recordBreaker(ctx, caller, false)
	log.Info("credential issued", slog.String(edge.LogAccessor, cred.Accessor), slog.Duration(edge.LogTTL, d.TTL),
		slog.String(edge.LogLevel, agent.Level.String()), slog.String("grant", req.GetGrantId()), slog.Int("uses", d.MaxUses))
	if d.Notify {
		s.notify(ctx, "write_issued", caller, role.Name,
			fmt.Sprintf("%s agent %s was issued %s role %s for %s", agent.Level, caller, role.Authz().Class, role.Name, d.TTL),
			map[string]string{"decision_id": decisionID, "accessor": cred.Accessor, "purpose": why["purpose"], "chain": why["chain"]})
	}
	return &brokerv1.FetchCredentialResponse{Credential: &brokerv1.Credential{
		Token:        cred.Token,
		Accessor:     cred.Accessor,
		Role:         role.Name,
		Policies:     cred.Policies,
		IssuedAt:     timestamppb.New(cred.IssuedAt),
		ExpiresAt:    timestamppb.New(cred.ExpiresAt),
		Renewable:    false,
		Level:        protoconv.LevelToProto(agent.Level),
		DecisionId:   decisionID,
		VaultAddress: s.issuer.Address(),
		GrantId:      req.GetGrantId(),
		Chain:        chain,
	}}, nil
}

// issueUnder creates a credential under node's anchor. If Vault refuses the
// anchor (revoked or expired behind the broker's back), it is replaced once.
func (s *Server) issueUnder(ctx context.Context, node string, req vault.Request) (vault.Credential, string, error) {
	for attempt := 0; ; attempt++ {
		anchor, err := s.anchors.get(ctx, node)
		if err != nil {
			return vault.Credential{}, "", err
		}
		req.Parent = anchor
		cred, err := s.issuer.Issue(ctx, req)
		if errors.Is(err, vault.ErrRejected) && attempt == 0 {
			s.anchors.drop(node)
			continue
		}
		return cred, anchor.Accessor, err
	}
}

func (b *brokerService) Delegate(ctx context.Context, req *brokerv1.DelegateRequest) (*brokerv1.DelegateResponse, error) {
	s := b.s
	caller := edge.Caller(ctx)
	if err := s.killedError(); err != nil {
		return nil, err
	}
	a, err := s.store.GetAgent(caller)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fault.New(fault.Denied, "caller is not a registered agent")
	}
	if err != nil {
		return nil, fmt.Errorf("look up caller: %w", err)
	}
	delegateeID, err := attest.ParseID(req.GetDelegatee())
	if err != nil {
		return nil, fault.Wrap(fault.Invalid, err)
	}
	var delegatee *delegation.Agent
	switch e, err := s.store.GetAgent(delegateeID.String()); {
	case err == nil:
		p := s.principal(e)
		delegatee = &p
	case !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("look up delegatee: %w", err)
	}
	dreq := delegation.Request{
		Delegator: s.principal(a),
		Delegatee: delegatee,
		Roles:     req.GetRoles(),
		TTL:       req.GetTtl().AsDuration(),
		MaxDepth:  int(req.GetMaxDepth()),
	}

	if pid := req.GetParentGrantId(); pid != "" {
		grants, ancestors, err := s.chainOf(pid)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fault.New(fault.NotFound, "grant %s does not exist", pid)
		}
		if err != nil {
			return nil, fmt.Errorf("load grant chain: %w", err)
		}
		if grants[len(grants)-1].Delegatee != caller {
			return nil, fault.New(fault.Denied, "grant %s was not given to %s", pid, caller)
		}
		dreq.Chain, dreq.Ancestors = grants, ancestors
	}
	if dreq.TTL == 0 {
		// Unset: an hour, or what is left of the chain if less.
		dreq.TTL = time.Hour
		for _, g := range dreq.Chain {
			dreq.TTL = min(dreq.TTL, g.ExpiresAt.Sub(s.now()).Truncate(time.Second))
		}
	}
	given, err := s.store.GrantsGivenBy(caller)
	if err != nil {
		return nil, fmt.Errorf("count grants: %w", err)
	}
	now := s.now()
	for _, g := range given {
		if g.ParentID == req.GetParentGrantId() && g.RevokedAt.IsZero() && g.ExpiresAt.After(now) {
			dreq.LiveFanOut++
		}
	}
	g, err := s.rules.Check(dreq, now)
	if err != nil {
		edge.Logger(ctx).Warn("delegation refused", slog.String(edge.LogError, err.Error()))
		return nil, err
	}
	g.ID = edge.NewID()
	if err := s.db(ctx).PutGrant(g, s.rules.MaxFanOut); err != nil {
		// An agent deregistered meanwhile may not be delegated to or from.
		if errors.Is(err, store.ErrDeregistered) || errors.Is(err, store.ErrKilled) {
			return nil, fault.Wrap(fault.Denied, err)
		}
		return nil, fmt.Errorf("record grant: %w", err)
	}
	if err := s.db(ctx).AppendAudit(store.AuditRecord{Kind: "grant_created", Actor: caller, Subject: g.ID, Detail: map[string]string{
		"delegatee": g.Delegatee, "roles": strings.Join(g.Roles, ","), "parent": g.ParentID, "expires_at": g.ExpiresAt.Format(time.RFC3339),
	}}); err != nil {
		edge.Logger(ctx).Error("writing the grant audit record failed", slog.String(edge.LogError, err.Error()))
	}
	edge.Logger(ctx).Info("grant created", slog.String("grant", g.ID), slog.String("delegatee", g.Delegatee), slog.Int("depth", g.Depth))
	s.observe(ctx, monitor.Event{Agent: caller, InManifest: true, Kind: monitor.Delegated})
	return &brokerv1.DelegateResponse{Grant: protoconv.GrantToProto(g)}, nil
}

func (b *brokerService) RevokeGrant(ctx context.Context, req *brokerv1.RevokeGrantRequest) (*brokerv1.RevokeGrantResponse, error) {
	s := b.s
	caller := edge.Caller(ctx)
	chain, err := s.store.Chain(req.GetGrantId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, fault.New(fault.NotFound, "grant %s does not exist", req.GetGrantId())
	}
	if err != nil {
		return nil, fmt.Errorf("load grant chain: %w", err)
	}
	// The delegator, or anyone above it in the chain, may revoke.
	if !slices.ContainsFunc(chain, func(g delegation.Grant) bool { return g.Delegator == caller }) {
		return nil, fault.New(fault.Denied, "%s did not give grant %s nor any grant above it", caller, req.GetGrantId())
	}
	sum, err := s.revokeLineage(ctx, store.Root{GrantID: req.GetGrantId()}, caller, req.GetReason())
	if err != nil {
		return nil, err
	}
	return &brokerv1.RevokeGrantResponse{Summary: sum}, nil
}

func (b *brokerService) WatchRevocations(_ *brokerv1.WatchRevocationsRequest, stream grpc.ServerStreamingServer[brokerv1.WatchRevocationsResponse]) error {
	ctx := stream.Context()
	events, cancel := b.s.hub.subscribe(edge.Caller(ctx))
	defer cancel()
	// Headers tell the client the watch is in place before any event.
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-b.s.closingCh:
			return errShuttingDown
		case ev, ok := <-events:
			if !ok {
				return fault.New(fault.Exhausted, "revocation watcher fell behind; reconnect and refetch credentials")
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}
