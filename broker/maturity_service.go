package broker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/maturity"
	"github.com/agentictrust/atf/broker/protoconv"
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
		return a, maturity.Report{}, fmt.Errorf("get agent: %w", err)
	}
	if !a.Usable() {
		return a, maturity.Report{}, fault.New(fault.Precondition, "agent %s is deregistered or stopped by the kill switch", id)
	}
	in, err := s.promotionInput(a)
	if err != nil {
		return a, maturity.Report{}, fmt.Errorf("read maturity records: %w", err)
	}
	r, err := maturity.Evaluate(s.maturity, in)
	if err != nil {
		return a, r, fault.Wrap(fault.Precondition, err)
	}
	return a, r, nil
}

func (m *maturityService) EvaluatePromotion(ctx context.Context, req *adminv1.EvaluatePromotionRequest) (*adminv1.EvaluatePromotionResponse, error) {
	_, r, err := m.evaluate(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	return &adminv1.EvaluatePromotionResponse{Report: protoconv.ReportToProto(r)}, nil
}

func (m *maturityService) Promote(ctx context.Context, req *adminv1.PromoteRequest) (*adminv1.PromoteResponse, error) {
	s := m.s
	a, r, err := m.evaluate(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	if !r.Promotable {
		return nil, fault.New(fault.Precondition, "%s cannot be promoted to %s yet: %s", a.ID, r.To, strings.Join(r.Failing(), "; "))
	}
	actor := edge.Caller(ctx)
	// The gates were read at this revision: a concurrent change refuses.
	a, err = s.db(ctx).SetLevel(a.ID, actor, store.ActionPromote, audit.Redact(req.GetReason()), r.To, a.Revision)
	if err != nil {
		return nil, fmt.Errorf("promote: %w", err)
	}
	edge.Logger(ctx).Info("agent promoted", slog.String(edge.LogAgent, a.ID), slog.String(edge.LogLevel, a.Level.String()))
	s.notify(ctx, "agent_promoted", a.ID, "", fmt.Sprintf("%s promoted %s from %s to %s: %s", actor, a.ID, r.From, r.To, req.GetReason()), nil)
	return &adminv1.PromoteResponse{Report: protoconv.ReportToProto(r), Agent: protoconv.AgentToProto(a)}, nil
}

func (m *maturityService) Demote(ctx context.Context, req *adminv1.DemoteRequest) (*adminv1.DemoteResponse, error) {
	steps := int(req.GetLevels())
	if steps == 0 {
		steps = 1
	}
	a, sum, err := m.s.demote(ctx, req.GetSpiffeId(), edge.Caller(ctx), audit.Redact(req.GetReason()), steps)
	if err != nil {
		return nil, err
	}
	return &adminv1.DemoteResponse{Agent: protoconv.AgentToProto(a), Summary: sum}, nil
}

// demote lowers agent by steps levels (not below Intern) and at once
// revokes what the new level does not back: credentials and grants.
func (s *Server) demote(ctx context.Context, id, actor, reason string, steps int) (store.Agent, *brokerv1.RevocationSummary, error) {
	a, err := s.store.GetAgent(id)
	if err != nil {
		return a, nil, fmt.Errorf("get agent: %w", err)
	}
	if a.Level == authz.Intern {
		return a, nil, fault.New(fault.Precondition, "%s is an intern already; stop it with the kill switch instead", id)
	}
	to := max(a.Level-authz.Level(steps), authz.Intern)
	return s.changeLevel(ctx, a, actor, store.ActionDemote, reason, to)
}

// levelChangeEvents names the notification of each level change.
var levelChangeEvents = map[string]string{
	store.ActionPromote:  "agent_promoted",
	store.ActionDemote:   "agent_demoted",
	store.ActionRollback: "agent_level_rolled_back",
}

// changeLevel sets the agent's level and revokes what it no longer backs.
func (s *Server) changeLevel(ctx context.Context, a store.Agent, actor, action, reason string, to authz.Level) (store.Agent, *brokerv1.RevocationSummary, error) {
	from := a.Level
	a, err := s.db(ctx).SetLevel(a.ID, actor, action, reason, to, 0)
	if err != nil {
		return a, nil, fmt.Errorf("%s: %w", action, err)
	}
	start := time.Now()
	sum, err := s.revokeUnbacked(ctx, a, actor)
	if err != nil {
		return a, nil, err
	}
	edge.Logger(ctx).Warn("agent level changed", slog.String(edge.LogAgent, a.ID), slog.String("action", action),
		slog.String("from", from.String()), slog.String("to", to.String()), slog.Duration(edge.LogDuration, time.Since(start)))
	s.notify(ctx, levelChangeEvents[action], a.ID, "", fmt.Sprintf("%s: %s %s from %s to %s: %s", actor, action, a.ID, from, to, reason), nil)
	return a, sum, nil
}

func (m *maturityService) RollbackLevel(ctx context.Context, req *adminv1.RollbackLevelRequest) (*adminv1.RollbackLevelResponse, error) {
	s := m.s
	old, err := s.store.AgentAt(req.GetSpiffeId(), req.GetRevision())
	if err != nil {
		return nil, fmt.Errorf("read history: %w", err)
	}
	a, err := s.store.GetAgent(req.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("get agent: %w", err)
	}
	if old.Level == a.Level {
		return nil, fault.New(fault.Precondition, "%s is already at level %s, the level of revision %d", a.ID, a.Level, req.GetRevision())
	}
	a, sum, err := s.changeLevel(ctx, a, edge.Caller(ctx), store.ActionRollback,
		fmt.Sprintf("level of revision %d restored: %s", req.GetRevision(), audit.Redact(req.GetReason())), old.Level)
	if err != nil {
		return nil, err
	}
	return &adminv1.RollbackLevelResponse{Agent: protoconv.AgentToProto(a), Summary: sum}, nil
}

// target is the level a record is for: the one given, or the next.
func target(a store.Agent, l brokerv1.Level) (authz.Level, error) {
	if l != brokerv1.Level_LEVEL_UNSPECIFIED {
		return protoconv.LevelFromProto(l), nil
	}
	if a.Level >= authz.Principal {
		return 0, fault.New(fault.Invalid, "%s is a principal: there is no next level; name the target", a.ID)
	}
	return a.Level + 1, nil
}

func (m *maturityService) RecordEvidence(ctx context.Context, req *adminv1.RecordEvidenceRequest) (*adminv1.RecordEvidenceResponse, error) {
	s := m.s
	kind, err := maturity.ParseEvidenceKind(req.GetKind())
	if err != nil {
		return nil, fault.Wrap(fault.Invalid, err)
	}
	a, err := s.store.GetAgent(req.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("get agent: %w", err)
	}
	to, err := target(a, req.GetTarget())
	if err != nil {
		return nil, err
	}
	e := store.Evidence{Agent: a.ID, Kind: string(kind), Target: to, Reference: audit.Redact(req.GetReference()), RecordedBy: edge.Caller(ctx), At: s.now().UTC()}
	if err := s.db(ctx).AddEvidence(e); err != nil {
		return nil, fmt.Errorf("record evidence: %w", err)
	}
	return &adminv1.RecordEvidenceResponse{Evidence: protoconv.EvidenceToProto(e)}, nil
}

func (m *maturityService) RecordSignOff(ctx context.Context, req *adminv1.RecordSignOffRequest) (*adminv1.RecordSignOffResponse, error) {
	s := m.s
	a, err := s.store.GetAgent(req.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("get agent: %w", err)
	}
	to, err := target(a, req.GetTarget())
	if err != nil {
		return nil, err
	}
	so := store.SignOff{Agent: a.ID, Signer: req.GetSigner(), RiskAcceptance: audit.Redact(req.GetRiskAcceptance()), Target: to,
		RecordedBy: edge.Caller(ctx), At: s.now().UTC()}
	if err := s.db(ctx).AddSignOff(so); err != nil {
		return nil, fmt.Errorf("record sign-off: %w", err)
	}
	return &adminv1.RecordSignOffResponse{SignOff: protoconv.SignOffToProto(so)}, nil
}

func (m *maturityService) OpenIncident(ctx context.Context, req *adminv1.OpenIncidentRequest) (*adminv1.OpenIncidentResponse, error) {
	s := m.s
	actor := edge.Caller(ctx)
	inc, err := s.db(ctx).OpenIncident(store.Incident{ID: edge.NewID(), Agent: req.GetSpiffeId(), Severity: req.GetSeverity(),
		Summary: audit.Redact(req.GetSummary()), OpenedAt: s.now().UTC(), OpenedBy: actor})
	if err != nil {
		return nil, fmt.Errorf("open incident: %w", err)
	}
	resp := &adminv1.OpenIncidentResponse{Incident: protoconv.IncidentToProto(inc)}
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
		edge.Logger(ctx).Error("demotion after an incident failed; demote the agent by hand", slog.String("incident", inc.ID), slog.String(edge.LogError, err.Error()))
		return nil
	}
	return protoconv.AgentToProto(a)
}

func (m *maturityService) UpdateIncident(ctx context.Context, req *adminv1.UpdateIncidentRequest) (*adminv1.UpdateIncidentResponse, error) {
	s := m.s
	actor := edge.Caller(ctx)
	inc, before, err := s.db(ctx).UpdateIncident(req.GetIncidentId(), actor, req.GetSeverity(), audit.Redact(req.GetNote()))
	if err != nil {
		return nil, fmt.Errorf("update incident: %w", err)
	}
	resp := &adminv1.UpdateIncidentResponse{Incident: protoconv.IncidentToProto(inc)}
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
	inc, err := m.s.db(ctx).CloseIncident(req.GetIncidentId(), edge.Caller(ctx), audit.Redact(req.GetRca()))
	if err != nil {
		return nil, fmt.Errorf("close incident: %w", err)
	}
	return &adminv1.CloseIncidentResponse{Incident: protoconv.IncidentToProto(inc)}, nil
}

func (m *maturityService) ListIncidents(ctx context.Context, req *adminv1.ListIncidentsRequest) (*adminv1.ListIncidentsResponse, error) {
	incs, err := m.s.store.Incidents(req.GetSpiffeId(), req.GetOpenOnly())
	if err != nil {
		return nil, fmt.Errorf("list incidents: %w", err)
	}
	resp := &adminv1.ListIncidentsResponse{}
	for _, inc := range incs {
		resp.Incidents = append(resp.Incidents, protoconv.IncidentToProto(inc))
	}
	return resp, nil
}

func (m *maturityService) GetMaturity(ctx context.Context, req *adminv1.GetMaturityRequest) (*adminv1.GetMaturityResponse, error) {
	s := m.s
	a, err := s.store.GetAgent(req.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("get agent: %w", err)
	}
	in, err := s.promotionInput(a)
	if err != nil {
		return nil, fmt.Errorf("read maturity records: %w", err)
	}
	resp := &adminv1.GetMaturityResponse{
		Agent:      protoconv.AgentToProto(a),
		LevelSince: timestamppb.New(in.LevelSince),
		Outcomes: &adminv1.OutcomeCounts{Success: int64(in.Outcomes.Success), Failure: int64(in.Outcomes.Failure),
			Rejected: int64(in.Outcomes.Rejected), Errors: int64(in.Outcomes.Errors)},
		Breaker:  s.breakerToProto(a.ID),
		Baseline: s.baselineToProto(a.ID),
	}
	ev, err := s.store.AgentEvidence(a.ID)
	if err != nil {
		return nil, fmt.Errorf("read evidence: %w", err)
	}
	for _, e := range ev {
		resp.Evidence = append(resp.Evidence, protoconv.EvidenceToProto(e))
	}
	sos, err := s.store.AgentSignOffs(a.ID)
	if err != nil {
		return nil, fmt.Errorf("read sign-offs: %w", err)
	}
	for _, so := range sos {
		resp.SignOffs = append(resp.SignOffs, protoconv.SignOffToProto(so))
	}
	incs, err := s.store.Incidents(a.ID, false)
	if err != nil {
		return nil, fmt.Errorf("read incidents: %w", err)
	}
	for _, inc := range incs {
		resp.Incidents = append(resp.Incidents, protoconv.IncidentToProto(inc))
	}
	return resp, nil
}

func (b *brokerService) ReportOutcome(ctx context.Context, req *brokerv1.ReportOutcomeRequest) (*brokerv1.ReportOutcomeResponse, error) {
	s := b.s
	caller := edge.Caller(ctx)
	a, err := s.store.GetAgent(caller)
	if err != nil || !a.Usable() {
		return nil, fault.New(fault.Denied, "%s is not an active registered agent; only agents report outcomes", caller)
	}
	outcome := strings.ToLower(strings.TrimPrefix(req.GetOutcome().String(), "OUTCOME_"))
	if err := s.db(ctx).RecordOutcome(store.OutcomeReport{Agent: caller, Outcome: outcome, Role: req.GetRole(),
		DecisionID: req.GetDecisionId(), Message: audit.Redact(req.GetDetail())}); err != nil {
		return nil, fmt.Errorf("record outcome: %w", err)
	}
	// A human rejecting a recommendation is not the agent failing.
	failed := req.GetOutcome() == brokerv1.Outcome_OUTCOME_FAILURE || req.GetOutcome() == brokerv1.Outcome_OUTCOME_ERROR
	s.observeOutcome(ctx, caller, req.GetRole(), !failed)
	return &brokerv1.ReportOutcomeResponse{}, nil
}
