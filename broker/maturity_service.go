package broker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/maturity"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// maturityService runs promotions, demotions and the records they read.
type maturityService struct {
	adminv1.UnimplementedMaturityServiceServer
	s *Server
}

// promotionInput gathers what the gates read about agent.
func (s *Server) promotionInput(a store.Agent) (maturity.Input, error) {
	in := maturity.Input{Agent: a.ID, Owner: a.Owner, Level: a.Level, LevelSince: a.LevelSince, Now: s.now().UTC()}
	if in.LevelSince.IsZero() {
		in.LevelSince = a.CreatedAt
	}
	o, err := s.store.AgentOutcomes(a.ID)
	if err != nil {
		return in, err
	}
	in.Outcomes = maturity.OutcomeStats{Success: o.Success, Failure: o.Failure, Rejected: o.Rejected, Errors: o.Errors}
	ev, err := s.store.AgentEvidence(a.ID)
	if err != nil {
		return in, err
	}
	for _, e := range ev {
		in.Evidence = append(in.Evidence, maturity.Evidence{Kind: maturity.EvidenceKind(e.Kind), Target: e.Target, Reference: e.Reference, RecordedBy: e.RecordedBy, At: e.At})
	}
	sos, err := s.store.AgentSignOffs(a.ID)
	if err != nil {
		return in, err
	}
	for _, so := range sos {
		in.SignOffs = append(in.SignOffs, maturity.SignOff{Signer: so.Signer, RiskAcceptance: so.RiskAcceptance, RecordedBy: so.RecordedBy, Target: so.Target, At: so.At})
	}
	incs, err := s.store.Incidents(a.ID, false)
	if err != nil {
		return in, err
	}
	for _, inc := range incs {
		sev, _ := maturity.ParseSeverity(inc.Severity)
		in.Incidents = append(in.Incidents, maturity.Incident{ID: inc.ID, Severity: sev, Level: inc.Level, OpenedAt: inc.OpenedAt, ClosedAt: inc.ClosedAt, RCA: inc.RCA})
	}
	return in, nil
}

func (m *maturityService) evaluate(ctx context.Context, id string) (store.Agent, maturity.Report, error) {
	s := m.s
	a, err := s.store.GetAgent(id)
	if err != nil {
		return a, maturity.Report{}, s.statusOf(ctx, "get agent", err)
	}
	if !a.Usable() {
		return a, maturity.Report{}, status.Errorf(codes.FailedPrecondition, "agent %s is deregistered or stopped by the kill switch", id)
	}
	in, err := s.promotionInput(a)
	if err != nil {
		return a, maturity.Report{}, s.statusOf(ctx, "read maturity records", err)
	}
	r, err := maturity.Evaluate(s.maturity, in)
	if err != nil {
		return a, r, status.Error(codes.FailedPrecondition, strings.TrimPrefix(err.Error(), "maturity: "))
	}
	return a, r, nil
}

func (m *maturityService) EvaluatePromotion(ctx context.Context, req *adminv1.EvaluatePromotionRequest) (*adminv1.EvaluatePromotionResponse, error) {
	_, r, err := m.evaluate(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	return &adminv1.EvaluatePromotionResponse{Report: reportToProto(r)}, nil
}

func (m *maturityService) Promote(ctx context.Context, req *adminv1.PromoteRequest) (*adminv1.PromoteResponse, error) {
	s := m.s
	a, r, err := m.evaluate(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	if !r.Promotable {
		return nil, status.Errorf(codes.FailedPrecondition, "%s cannot be promoted to %s yet: %s", a.ID, r.To, strings.Join(r.Failing(), "; "))
	}
	actor := identity(ctx).ID.String()
	// The gates were read at this revision: a concurrent change refuses.
	a, err = s.db(ctx).SetLevel(a.ID, actor, store.ActionPromote, audit.Redact(req.GetReason()), r.To, a.Revision)
	if err != nil {
		return nil, s.statusOf(ctx, "promote", err)
	}
	s.logger(ctx).Info("agent promoted", slog.String(logAgent, a.ID), slog.String(logLevel, a.Level.String()))
	s.notify(ctx, "agent_promoted", a.ID, "", fmt.Sprintf("%s promoted %s from %s to %s: %s", actor, a.ID, r.From, r.To, req.GetReason()), nil)
	return &adminv1.PromoteResponse{Report: reportToProto(r), Agent: agentToProto(a)}, nil
}

func (m *maturityService) Demote(ctx context.Context, req *adminv1.DemoteRequest) (*adminv1.DemoteResponse, error) {
	steps := int(req.GetLevels())
	if steps == 0 {
		steps = 1
	}
	a, sum, err := m.s.demote(ctx, req.GetSpiffeId(), identity(ctx).ID.String(), audit.Redact(req.GetReason()), steps)
	if err != nil {
		return nil, err
	}
	return &adminv1.DemoteResponse{Agent: agentToProto(a), Summary: sum}, nil
}

// demote lowers agent by steps levels (not below Intern) and at once
// revokes what the new level does not back: credentials and grants.
func (s *Server) demote(ctx context.Context, id, actor, reason string, steps int) (store.Agent, *brokerv1.RevocationSummary, error) {
	a, err := s.store.GetAgent(id)
	if err != nil {
		return a, nil, s.statusOf(ctx, "get agent", err)
	}
	if a.Level == authz.Intern {
		return a, nil, status.Errorf(codes.FailedPrecondition, "%s is an intern already; stop it with the kill switch instead", id)
	}
	to := max(a.Level-authz.Level(steps), authz.Intern)
	return s.changeLevel(ctx, a, actor, store.ActionDemote, reason, to)
}

// changeLevel sets the agent's level and revokes what it no longer backs.
func (s *Server) changeLevel(ctx context.Context, a store.Agent, actor, action, reason string, to authz.Level) (store.Agent, *brokerv1.RevocationSummary, error) {
	from := a.Level
	a, err := s.db(ctx).SetLevel(a.ID, actor, action, reason, to, 0)
	if err != nil {
		return a, nil, s.statusOf(ctx, action, err)
	}
	start := time.Now()
	sum, err := s.revokeUnbacked(ctx, a, actor)
	if err != nil {
		return a, nil, err
	}
	s.logger(ctx).Warn("agent level changed", slog.String(logAgent, a.ID), slog.String("action", action),
		slog.String("from", from.String()), slog.String("to", to.String()), slog.Duration(logDuration, time.Since(start)))
	s.notify(ctx, "agent_"+action+"d", a.ID, "", fmt.Sprintf("%s: %s %s from %s to %s: %s", actor, action, a.ID, from, to, reason), nil)
	return a, sum, nil
}

func (m *maturityService) RollbackLevel(ctx context.Context, req *adminv1.RollbackLevelRequest) (*adminv1.RollbackLevelResponse, error) {
	s := m.s
	old, err := s.store.AgentAt(req.GetSpiffeId(), req.GetRevision())
	if err != nil {
		return nil, s.statusOf(ctx, "read history", err)
	}
	a, err := s.store.GetAgent(req.GetSpiffeId())
	if err != nil {
		return nil, s.statusOf(ctx, "get agent", err)
	}
	if old.Level == a.Level {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is already at level %s, the level of revision %d", a.ID, a.Level, req.GetRevision())
	}
	a, sum, err := s.changeLevel(ctx, a, identity(ctx).ID.String(), store.ActionRollback,
		fmt.Sprintf("level of revision %d restored: %s", req.GetRevision(), audit.Redact(req.GetReason())), old.Level)
	if err != nil {
		return nil, err
	}
	return &adminv1.RollbackLevelResponse{Agent: agentToProto(a), Summary: sum}, nil
}

// target is the level a record is for: the one given, or the next.
func target(a store.Agent, l brokerv1.Level) (authz.Level, error) {
	if l != brokerv1.Level_LEVEL_UNSPECIFIED {
		return levelFromProto(l), nil
	}
	if a.Level >= authz.Principal {
		return 0, status.Errorf(codes.InvalidArgument, "%s is a principal: there is no next level; name the target", a.ID)
	}
	return a.Level + 1, nil
}

func (m *maturityService) RecordEvidence(ctx context.Context, req *adminv1.RecordEvidenceRequest) (*adminv1.RecordEvidenceResponse, error) {
	s := m.s
	kind, err := maturity.ParseEvidenceKind(req.GetKind())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, strings.TrimPrefix(err.Error(), "maturity: "))
	}
	a, err := s.store.GetAgent(req.GetSpiffeId())
	if err != nil {
		return nil, s.statusOf(ctx, "get agent", err)
	}
	to, err := target(a, req.GetTarget())
	if err != nil {
		return nil, err
	}
	e := store.Evidence{Agent: a.ID, Kind: string(kind), Target: to, Reference: audit.Redact(req.GetReference()), RecordedBy: identity(ctx).ID.String(), At: s.now().UTC()}
	if err := s.db(ctx).AddEvidence(e); err != nil {
		return nil, s.statusOf(ctx, "record evidence", err)
	}
	return &adminv1.RecordEvidenceResponse{Evidence: evidenceToProto(e)}, nil
}

func (m *maturityService) RecordSignOff(ctx context.Context, req *adminv1.RecordSignOffRequest) (*adminv1.RecordSignOffResponse, error) {
	s := m.s
	a, err := s.store.GetAgent(req.GetSpiffeId())
	if err != nil {
		return nil, s.statusOf(ctx, "get agent", err)
	}
	to, err := target(a, req.GetTarget())
	if err != nil {
		return nil, err
	}
	so := store.SignOff{Agent: a.ID, Signer: req.GetSigner(), RiskAcceptance: audit.Redact(req.GetRiskAcceptance()), Target: to,
		RecordedBy: identity(ctx).ID.String(), At: s.now().UTC()}
	if err := s.db(ctx).AddSignOff(so); err != nil {
		return nil, s.statusOf(ctx, "record sign-off", err)
	}
	return &adminv1.RecordSignOffResponse{SignOff: signOffToProto(so)}, nil
}

func (m *maturityService) OpenIncident(ctx context.Context, req *adminv1.OpenIncidentRequest) (*adminv1.OpenIncidentResponse, error) {
	s := m.s
	actor := identity(ctx).ID.String()
	inc, err := s.db(ctx).OpenIncident(store.Incident{ID: newID(), Agent: req.GetSpiffeId(), Severity: req.GetSeverity(),
		Summary: audit.Redact(req.GetSummary()), OpenedAt: s.now().UTC(), OpenedBy: actor})
	if err != nil {
		return nil, s.statusOf(ctx, "open incident", err)
	}
	resp := &adminv1.OpenIncidentResponse{Incident: incidentToProto(inc)}
	s.notify(ctx, "incident_opened", inc.Agent, "", fmt.Sprintf("%s incident %s on %s: %s", inc.Severity, inc.ID, inc.Agent, inc.Summary), nil)
	resp.Demoted = s.incidentDemotion(ctx, inc, actor)
	return resp, nil
}

// incidentDemotion demotes the agent if the incident's severity calls for
// it at the level the agent had when the incident opened. The incident
// stands whatever happens to the demotion: a failure is logged and the
// caller can demote by hand.
func (s *Server) incidentDemotion(ctx context.Context, inc store.Incident, actor string) *adminv1.Agent {
	sev, _ := maturity.ParseSeverity(inc.Severity)
	if _, demote := s.maturity.Demotion(inc.Level, maturity.Trigger{Kind: maturity.TriggerIncident, Severity: sev}); !demote {
		return nil
	}
	a, _, err := s.demote(ctx, inc.Agent, actor, fmt.Sprintf("%s incident %s", inc.Severity, inc.ID), s.maturity.DemotionSteps)
	if err != nil {
		s.logger(ctx).Error("demotion after an incident failed; demote the agent by hand", slog.String("incident", inc.ID), slog.String(logError, err.Error()))
		return nil
	}
	return agentToProto(a)
}

func (m *maturityService) UpdateIncident(ctx context.Context, req *adminv1.UpdateIncidentRequest) (*adminv1.UpdateIncidentResponse, error) {
	s := m.s
	actor := identity(ctx).ID.String()
	inc, before, err := s.db(ctx).UpdateIncident(req.GetIncidentId(), actor, req.GetSeverity(), audit.Redact(req.GetNote()))
	if err != nil {
		return nil, s.statusOf(ctx, "update incident", err)
	}
	resp := &adminv1.UpdateIncidentResponse{Incident: incidentToProto(inc)}
	if inc.Severity != before {
		s.notify(ctx, "incident_updated", inc.Agent, "", fmt.Sprintf("incident %s on %s is now %s (was %s)", inc.ID, inc.Agent, inc.Severity, before), nil)
		old, _ := maturity.ParseSeverity(before)
		if _, already := s.maturity.Demotion(inc.Level, maturity.Trigger{Kind: maturity.TriggerIncident, Severity: old}); !already {
			resp.Demoted = s.incidentDemotion(ctx, inc, actor)
		}
	}
	return resp, nil
}

func (m *maturityService) CloseIncident(ctx context.Context, req *adminv1.CloseIncidentRequest) (*adminv1.CloseIncidentResponse, error) {
	inc, err := m.s.db(ctx).CloseIncident(req.GetIncidentId(), identity(ctx).ID.String(), audit.Redact(req.GetRca()))
	if err != nil {
		return nil, m.s.statusOf(ctx, "close incident", err)
	}
	return &adminv1.CloseIncidentResponse{Incident: incidentToProto(inc)}, nil
}

func (m *maturityService) ListIncidents(ctx context.Context, req *adminv1.ListIncidentsRequest) (*adminv1.ListIncidentsResponse, error) {
	incs, err := m.s.store.Incidents(req.GetSpiffeId(), req.GetOpenOnly())
	if err != nil {
		return nil, m.s.statusOf(ctx, "list incidents", err)
	}
	resp := &adminv1.ListIncidentsResponse{}
	for _, inc := range incs {
		resp.Incidents = append(resp.Incidents, incidentToProto(inc))
	}
	return resp, nil
}

func (m *maturityService) GetMaturity(ctx context.Context, req *adminv1.GetMaturityRequest) (*adminv1.GetMaturityResponse, error) {
	s := m.s
	a, err := s.store.GetAgent(req.GetSpiffeId())
	if err != nil {
		return nil, s.statusOf(ctx, "get agent", err)
	}
	in, err := s.promotionInput(a)
	if err != nil {
		return nil, s.statusOf(ctx, "read maturity records", err)
	}
	resp := &adminv1.GetMaturityResponse{
		Agent:      agentToProto(a),
		LevelSince: timestamppb.New(in.LevelSince),
		Outcomes: &adminv1.OutcomeCounts{Success: int64(in.Outcomes.Success), Failure: int64(in.Outcomes.Failure),
			Rejected: int64(in.Outcomes.Rejected), Errors: int64(in.Outcomes.Errors)},
		Breaker:  s.breakerToProto(a.ID),
		Baseline: s.baselineToProto(a.ID),
	}
	ev, err := s.store.AgentEvidence(a.ID)
	if err != nil {
		return nil, s.statusOf(ctx, "read evidence", err)
	}
	for _, e := range ev {
		resp.Evidence = append(resp.Evidence, evidenceToProto(e))
	}
	sos, err := s.store.AgentSignOffs(a.ID)
	if err != nil {
		return nil, s.statusOf(ctx, "read sign-offs", err)
	}
	for _, so := range sos {
		resp.SignOffs = append(resp.SignOffs, signOffToProto(so))
	}
	incs, err := s.store.Incidents(a.ID, false)
	if err != nil {
		return nil, s.statusOf(ctx, "read incidents", err)
	}
	for _, inc := range incs {
		resp.Incidents = append(resp.Incidents, incidentToProto(inc))
	}
	return resp, nil
}

func (b *brokerService) ReportOutcome(ctx context.Context, req *brokerv1.ReportOutcomeRequest) (*brokerv1.ReportOutcomeResponse, error) {
	s := b.s
	caller := identity(ctx).ID.String()
	a, err := s.store.GetAgent(caller)
	if err != nil || !a.Usable() {
		return nil, status.Errorf(codes.PermissionDenied, "%s is not an active registered agent; only agents report outcomes", caller)
	}
	outcome := strings.ToLower(strings.TrimPrefix(req.GetOutcome().String(), "OUTCOME_"))
	if err := s.db(ctx).RecordOutcome(caller, outcome); err != nil {
		return nil, s.statusOf(ctx, "record outcome", err)
	}
	if err := s.db(ctx).AppendAudit(store.AuditRecord{Kind: "outcome_reported", Actor: caller, Subject: outcome, Detail: map[string]string{
		"agent": caller, "outcome": outcome, "role": req.GetRole(), "decision_id": req.GetDecisionId(),
		"message": audit.Redact(req.GetDetail()), "level": a.Level.String(), "request_id": requestID(ctx),
	}}); err != nil {
		s.logger(ctx).Error("writing the outcome audit record failed", slog.String(logError, err.Error()))
	}
	// A human rejecting a recommendation is not the agent failing.
	failed := req.GetOutcome() == brokerv1.Outcome_OUTCOME_FAILURE || req.GetOutcome() == brokerv1.Outcome_OUTCOME_ERROR
	s.observeOutcome(ctx, caller, req.GetRole(), !failed)
	return &brokerv1.ReportOutcomeResponse{}, nil
}

func reportToProto(r maturity.Report) *adminv1.PromotionReport {
	out := &adminv1.PromotionReport{SpiffeId: r.Agent, From: levelToProto(r.From), To: levelToProto(r.To), Promotable: r.Promotable}
	for _, g := range r.Gates {
		pg := &adminv1.PromotionGate{Name: g.Name, Pass: g.Pass}
		for _, c := range g.Checks {
			pg.Checks = append(pg.Checks, &adminv1.GateCheck{Name: c.Name, Pass: c.Pass, Detail: c.Detail})
		}
		out.Gates = append(out.Gates, pg)
	}
	return out
}

func evidenceToProto(e store.Evidence) *adminv1.Evidence {
	return &adminv1.Evidence{Kind: e.Kind, Target: levelToProto(e.Target), Reference: e.Reference, RecordedBy: e.RecordedBy, At: timestamppb.New(e.At)}
}

func signOffToProto(so store.SignOff) *adminv1.SignOff {
	return &adminv1.SignOff{Signer: so.Signer, RiskAcceptance: so.RiskAcceptance, Target: levelToProto(so.Target), RecordedBy: so.RecordedBy, At: timestamppb.New(so.At)}
}

func incidentToProto(in store.Incident) *adminv1.Incident {
	out := &adminv1.Incident{Id: in.ID, SpiffeId: in.Agent, Severity: in.Severity, Summary: in.Summary, Level: levelToProto(in.Level),
		OpenedAt: timestamppb.New(in.OpenedAt), OpenedBy: in.OpenedBy, ClosedBy: in.ClosedBy, Rca: in.RCA}
	if !in.ClosedAt.IsZero() {
		out.ClosedAt = timestamppb.New(in.ClosedAt)
	}
	return out
}
