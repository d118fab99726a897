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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/failpoint"
	"github.com/agentictrust/atf/broker/monitor"
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
	id := identity(ctx)
	resp := &brokerv1.WhoAmIResponse{
		SpiffeId:      id.ID.String(),
		AuthMethod:    authMethodToProto(id.Method),
		SvidExpiresAt: timestamppb.New(id.ExpiresAt),
	}
	a, err := b.s.store.GetAgent(id.ID.String())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return resp, nil
	case err != nil:
		return nil, b.s.statusOf(ctx, "look up caller", err)
	}
	resp.Registered, resp.Level, resp.Status, resp.Roles = true, levelToProto(a.Level), statusToProto(a), a.Roles
	return resp, nil
}

func (b *brokerService) FetchCredential(ctx context.Context, req *brokerv1.FetchCredentialRequest) (resp *brokerv1.FetchCredentialResponse, err error) {
	s := b.s
	caller := identity(ctx).ID.String()
	log := s.logger(ctx)
	if req.GetAgentId() != "" && req.GetAgentId() != caller {
		log.Warn("request names another agent", slog.String(logAgent, req.GetAgentId()))
		return nil, status.Errorf(codes.PermissionDenied, "request names agent %q but the caller's SVID is %s; identity comes only from the SVID", req.GetAgentId(), caller)
	}
	roleName, err := authz.CanonicalRole(req.GetRole())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, strings.TrimPrefix(err.Error(), "authz: "))
	}
	role, ok := s.roles[roleName]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "role %q is not defined in the broker's roles file", roleName)
	}
	// A full store could record neither the credential nor the decision:
	// refuse before anything happens in Vault.
	if err := s.store.Full(); err != nil {
		return nil, s.statusOf(ctx, "check the store's space", err)
	}
	decisionID := newID()
	log = log.With(slog.String(logDecisionID, decisionID), slog.String(logRole, role.Name))
	ctx, span := s.tracing.tracer.Start(ctx, spanDecision, trace.WithAttributes(
		attribute.String(attrAgent, caller), attribute.String(attrRole, role.Name),
		attribute.String(attrDecisionID, decisionID), attribute.String(attrRequestID, requestID(ctx))))
	// why is the decision's explanation, for the audit record whatever the
	// outcome. Free text is redacted before it goes anywhere.
	why := map[string]string{
		"decision_id": decisionID, "request_id": requestID(ctx), "role": role.Name, "class": role.class.String(),
		"classification": role.classification.String(), "grant_id": req.GetGrantId(), "approval_id": req.GetApprovalId(),
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
			log.Error("writing the audit record failed", slog.String(logError, err.Error()))
		}
	}
	// watched is set once the caller is known to be a registered agent:
	// its refusals feed the behaviour monitor and its circuit breaker.
	watched := false
	deny := func(d authz.Decision) error {
		explain(d)
		log.Warn("credential denied", slog.String(logReason, string(d.Reason)))
		refuse("credential_denied", "deny")
		if watched {
			s.observe(ctx, monitor.Event{Agent: caller, Role: role.Name, Kind: monitor.Denied})
			s.recordBreaker(ctx, caller, true)
		}
		return status.Errorf(codes.PermissionDenied, "%s (decision %s)", d.Message, decisionID)
	}
	limited := func(lerr *limitError) error {
		why["limit"], why["message"] = lerr.limit, lerr.msg
		log.Warn("credential limited", slog.String("limit", lerr.limit))
		refuse("credential_limited", "limited")
		if watched {
			s.observe(ctx, monitor.Event{Agent: caller, Role: role.Name, Kind: monitor.Limited})
		}
		return lerr.status()
	}

	var agent *authz.Agent
	a, err := s.store.GetAgent(caller)
	switch {
	case err == nil:
		agent = &authz.Agent{ID: a.ID, Level: a.Level, Active: a.Status == store.Active, Killed: a.Kill != nil, Roles: a.Roles}
	case !errors.Is(err, store.ErrNotFound):
		return nil, s.statusOf(ctx, "look up caller", err)
	}
	if kerr := s.killedError(); kerr != nil {
		why["reason"], why["message"] = string(authz.Killed), status.Convert(kerr).Message()
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
			return nil, status.Errorf(codes.NotFound, "grant %s does not exist", gid)
		}
		if err != nil {
			return nil, s.statusOf(ctx, "load grant chain", err)
		}
		auth, err := delegation.Effective(s.principal(a), grants, ancestors, s.now())
		if err != nil {
			return nil, deny(authz.Decision{Reason: "grant", Message: strings.TrimPrefix(err.Error(), "delegation: ")})
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
	d := s.gate.Decide(policy, agent, role.authz(), req.GetTtl().AsDuration())
	// Under a grant, every delegator above the caller must be allowed the
	// role by the policy too: a delegation never launders authority.
	for _, up := range chain[:len(chain)-1] {
		if d.Outcome == authz.Deny {
			break
		}
		if ud := s.gate.Decide(policy, &authz.Agent{ID: up, Level: agent.Level, Active: true, Roles: agent.Roles}, role.authz(), 0); ud.Outcome == authz.Deny {
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
			ID: newID(), AgentID: caller, Role: role.Name, Class: role.class.String(), Classification: role.classification.String(),
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
		return nil, s.statusOf(ctx, "issue credential", err)
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
			log.Error("revoking an unrecorded credential failed; it expires on its own", slog.String(logError, rerr.Error()),
				slog.String(logAccessor, cred.Accessor), slog.Time("expires_at", cred.ExpiresAt))
		} else if errors.Is(err, store.ErrDeregistered) || errors.Is(err, store.ErrRevoked) || errors.Is(err, store.ErrKilled) || errors.Is(err, store.ErrConflict) {
			_ = s.store.CompleteRevocation(cred.Accessor)
		}
		switch {
		case errors.Is(err, store.ErrConflict):
			return nil, status.Errorf(codes.Aborted, "agent %s's registration changed while the credential was issued; nothing was issued, retry (decision %s)", caller, decisionID)
		case errors.Is(err, store.ErrKilled):
			return nil, status.Errorf(codes.PermissionDenied, "agent %s was stopped by the kill switch (decision %s)", caller, decisionID)
		case errors.Is(err, store.ErrDeregistered):
			return nil, status.Errorf(codes.PermissionDenied, "agent %s was deregistered (decision %s)", caller, decisionID)
		case errors.Is(err, store.ErrRevoked):
			return nil, status.Errorf(codes.PermissionDenied, "the lineage this credential belongs to was revoked (decision %s)", decisionID)
		}
		return nil, s.statusOf(ctx, "record credential", err)
	}
	issued = true
	failpoint.Hit(failpoint.IssueAfterRecord)
	s.live.commit(lc, cred.Accessor, cred.ExpiresAt)
	s.metrics.decisions.WithLabelValues("allow", string(authz.Allowed)).Inc()
	s.metrics.issuance.Observe(time.Since(start).Seconds())
	s.observe(ctx, monitor.Event{Agent: caller, Lineage: chain[0], Role: role.Name, InManifest: true, Kind: monitor.Issued})
	s.recordBreaker(ctx, caller, false)
	log.Info("credential issued", slog.String(logAccessor, cred.Accessor), slog.Duration(logTTL, d.TTL),
		slog.String(logLevel, agent.Level.String()), slog.String("grant", req.GetGrantId()), slog.Int("uses", d.MaxUses))
	if d.Notify {
		s.notify(ctx, "write_issued", caller, role.Name,
			fmt.Sprintf("%s agent %s was issued %s role %s for %s", agent.Level, caller, role.class, role.Name, d.TTL),
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
		Level:        levelToProto(agent.Level),
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
	caller := identity(ctx).ID.String()
	if err := s.killedError(); err != nil {
		return nil, err
	}
	a, err := s.store.GetAgent(caller)
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Error(codes.PermissionDenied, "caller is not a registered agent")
	}
	if err != nil {
		return nil, s.statusOf(ctx, "look up caller", err)
	}
	delegateeID, err := attest.ParseID(req.GetDelegatee())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, strings.TrimPrefix(err.Error(), "attest: "))
	}
	var delegatee *delegation.Agent
	switch e, err := s.store.GetAgent(delegateeID.String()); {
	case err == nil:
		p := s.principal(e)
		delegatee = &p
	case !errors.Is(err, store.ErrNotFound):
		return nil, s.statusOf(ctx, "look up delegatee", err)
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
			return nil, status.Errorf(codes.NotFound, "grant %s does not exist", pid)
		}
		if err != nil {
			return nil, s.statusOf(ctx, "load grant chain", err)
		}
		if grants[len(grants)-1].Delegatee != caller {
			return nil, status.Errorf(codes.PermissionDenied, "grant %s was not given to %s", pid, caller)
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
		return nil, s.statusOf(ctx, "count grants", err)
	}
	now := s.now()
	for _, g := range given {
		if g.ParentID == req.GetParentGrantId() && g.RevokedAt.IsZero() && g.ExpiresAt.After(now) {
			dreq.LiveFanOut++
		}
	}
	g, err := s.rules.Check(dreq, now)
	if err != nil {
		s.logger(ctx).Warn("delegation refused", slog.String(logError, err.Error()))
		return nil, delegationStatus(err)
	}
	g.ID = newID()
	if err := s.db(ctx).PutGrant(g, s.rules.MaxFanOut); err != nil {
		// An agent deregistered meanwhile may not be delegated to or from.
		if errors.Is(err, store.ErrDeregistered) || errors.Is(err, store.ErrKilled) {
			return nil, status.Errorf(codes.PermissionDenied, "%s", strings.TrimPrefix(err.Error(), "store: "))
		}
		return nil, s.statusOf(ctx, "record grant", err)
	}
	if err := s.db(ctx).AppendAudit(store.AuditRecord{Kind: "grant_created", Actor: caller, Subject: g.ID, Detail: map[string]string{
		"delegatee": g.Delegatee, "roles": strings.Join(g.Roles, ","), "parent": g.ParentID, "expires_at": g.ExpiresAt.Format(time.RFC3339),
	}}); err != nil {
		s.logger(ctx).Error("writing the grant audit record failed", slog.String(logError, err.Error()))
	}
	s.logger(ctx).Info("grant created", slog.String("grant", g.ID), slog.String("delegatee", g.Delegatee), slog.Int("depth", g.Depth))
	s.observe(ctx, monitor.Event{Agent: caller, InManifest: true, Kind: monitor.Delegated})
	return &brokerv1.DelegateResponse{Grant: grantToProto(g)}, nil
}

func (b *brokerService) RevokeGrant(ctx context.Context, req *brokerv1.RevokeGrantRequest) (*brokerv1.RevokeGrantResponse, error) {
	s := b.s
	caller := identity(ctx).ID.String()
	chain, err := s.store.Chain(req.GetGrantId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "grant %s does not exist", req.GetGrantId())
	}
	if err != nil {
		return nil, s.statusOf(ctx, "load grant chain", err)
	}
	// The delegator, or anyone above it in the chain, may revoke.
	if !slices.ContainsFunc(chain, func(g delegation.Grant) bool { return g.Delegator == caller }) {
		return nil, status.Errorf(codes.PermissionDenied, "%s did not give grant %s nor any grant above it", caller, req.GetGrantId())
	}
	sum, err := s.revokeLineage(ctx, store.Root{GrantID: req.GetGrantId()}, caller, req.GetReason())
	if err != nil {
		return nil, err
	}
	return &brokerv1.RevokeGrantResponse{Summary: sum}, nil
}

func (b *brokerService) WatchRevocations(_ *brokerv1.WatchRevocationsRequest, stream grpc.ServerStreamingServer[brokerv1.WatchRevocationsResponse]) error {
	ctx := stream.Context()
	events, cancel := b.s.hub.subscribe(identity(ctx).ID.String())
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
				return status.Error(codes.ResourceExhausted, "revocation watcher fell behind; reconnect and refetch credentials")
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}

func authMethodToProto(m attest.Method) brokerv1.AuthMethod {
	switch m {
	case attest.X509SVID:
		return brokerv1.AuthMethod_AUTH_METHOD_X509_SVID
	case attest.JWTSVID:
		return brokerv1.AuthMethod_AUTH_METHOD_JWT_SVID
	}
	return brokerv1.AuthMethod_AUTH_METHOD_UNSPECIFIED
}

func levelToProto(l authz.Level) brokerv1.Level {
	switch l {
	case authz.Intern:
		return brokerv1.Level_LEVEL_INTERN
	case authz.Junior:
		return brokerv1.Level_LEVEL_JUNIOR
	case authz.Senior:
		return brokerv1.Level_LEVEL_SENIOR
	case authz.Principal:
		return brokerv1.Level_LEVEL_PRINCIPAL
	}
	return brokerv1.Level_LEVEL_UNSPECIFIED
}

func levelFromProto(l brokerv1.Level) authz.Level {
	switch l {
	case brokerv1.Level_LEVEL_JUNIOR:
		return authz.Junior
	case brokerv1.Level_LEVEL_SENIOR:
		return authz.Senior
	case brokerv1.Level_LEVEL_PRINCIPAL:
		return authz.Principal
	}
	// Unspecified means Intern: autonomy is earned.
	return authz.Intern
}

func statusToProto(a store.Agent) brokerv1.AgentStatus {
	switch {
	case a.Status == store.Active && a.Kill != nil:
		return brokerv1.AgentStatus_AGENT_STATUS_KILLED
	}
	switch a.Status {
	case store.Active:
		return brokerv1.AgentStatus_AGENT_STATUS_ACTIVE
	case store.Deregistered:
		return brokerv1.AgentStatus_AGENT_STATUS_DEREGISTERED
	}
	return brokerv1.AgentStatus_AGENT_STATUS_UNSPECIFIED
}
