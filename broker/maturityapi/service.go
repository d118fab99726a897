// Package maturityapi is MaturityService, for admins: promotion through
// the gates, demotion and rollback, the evidence, sign-offs and incidents
// the gates read.
package maturityapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
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

// Notifier tells people what happened.
type Notifier interface {
	Notify(ctx context.Context, kind, agent, role, summary string, detail map[string]string)
}

// Levels changes levels (levels.Levels).
type Levels interface {
	Demote(ctx context.Context, id, actor, reason string, steps int) (store.Agent, *brokerv1.RevocationSummary, error)
	Change(ctx context.Context, a store.Agent, actor, action, reason string, to authz.Level) (store.Agent, *brokerv1.RevocationSummary, error)
}

// Watcher shows what the behaviour watch knows of an agent (watch.Watch).
type Watcher interface {
	BreakerProto(agent string) *adminv1.Breaker
	BaselineProto(agent string) *adminv1.Baseline
}

// Config is what the service needs.
type Config struct {
	Store    *store.Store
	Levels   Levels
	Watch    Watcher
	Maturity maturity.Config
	Notifier Notifier
	Now      func() time.Time
}

// Service is MaturityService.
type Service struct {
	adminv1.UnimplementedMaturityServiceServer
	cfg Config
}

// New returns the service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

// RegisterService registers the service with r.
func (s *Service) RegisterService(r grpc.ServiceRegistrar) {
	adminv1.RegisterMaturityServiceServer(r, s)
}

func (s *Service) db(ctx context.Context) *store.Store {
	return s.cfg.Store.ForRequest(edge.RequestIDs(ctx))
}

// promotionInput gathers what the gates read about agent.
func (s *Service) promotionInput(a store.Agent) (maturity.Input, error) {
	in := maturity.Input{Agent: a.ID, Owner: a.Owner, Level: a.Level, LevelSince: a.LevelSince, Now: s.cfg.Now().UTC()}
	if in.LevelSince.IsZero() {
		in.LevelSince = a.CreatedAt
	}
	o, err := s.cfg.Store.AgentOutcomes(a.ID)
	if err != nil {
		return in, err
	}
	in.Outcomes, in.SelfReported = outcomeStats(o.Attested), outcomeStats(o.Self)
	ev, err := s.cfg.Store.AgentEvidence(a.ID)
	if err != nil {
		return in, err
	}
	for _, e := range ev {
		in.Evidence = append(in.Evidence, maturity.Evidence{Kind: maturity.EvidenceKind(e.Kind), Target: e.Target, Reference: e.Reference, RecordedBy: e.RecordedBy, At: e.At})
	}
	sos, err := s.cfg.Store.AgentSignOffs(a.ID)
	if err != nil {
		return in, err
	}
	for _, so := range sos {
		in.SignOffs = append(in.SignOffs, maturity.SignOff{Signer: so.Signer, RiskAcceptance: so.RiskAcceptance, RecordedBy: so.RecordedBy, Target: so.Target, At: so.At})
	}
	incs, err := s.cfg.Store.Incidents(a.ID, false)
	if err != nil {
		return in, err
	}
	for _, inc := range incs {
		sev, _ := maturity.ParseSeverity(inc.Severity)
		in.Incidents = append(in.Incidents, maturity.Incident{ID: inc.ID, Severity: sev, Level: inc.Level, OpenedAt: inc.OpenedAt, ClosedAt: inc.ClosedAt, RCA: inc.RCA})
	}
	return in, nil
}

func outcomeStats(c store.OutcomeCounts) maturity.OutcomeStats {
	return maturity.OutcomeStats{Success: c.Success, Failure: c.Failure, Rejected: c.Rejected, Errors: c.Errors}
}

func outcomeCounts(o maturity.OutcomeStats) *adminv1.OutcomeCounts {
	return &adminv1.OutcomeCounts{Success: int64(o.Success), Failure: int64(o.Failure), Rejected: int64(o.Rejected), Errors: int64(o.Errors)}
}

func (s *Service) evaluate(ctx context.Context, id string) (store.Agent, maturity.Report, error) {
	a, err := s.cfg.Store.GetAgent(id)
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
	r, err := maturity.Evaluate(s.cfg.Maturity, in)
	if err != nil {
		return a, r, fault.Wrap(fault.Precondition, err)
	}
	return a, r, nil
}

func (s *Service) EvaluatePromotion(ctx context.Context, req *adminv1.EvaluatePromotionRequest) (*adminv1.EvaluatePromotionResponse, error) {
	_, r, err := s.evaluate(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	return &adminv1.EvaluatePromotionResponse{Report: protoconv.ReportToProto(r)}, nil
}

func (s *Service) Promote(ctx context.Context, req *adminv1.PromoteRequest) (*adminv1.PromoteResponse, error) {
	if err := edge.ActOn(ctx, s.cfg.Store, req.GetSpiffeId()); err != nil {
		return nil, err
	}
	a, r, err := s.evaluate(ctx, req.GetSpiffeId())
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
	s.cfg.Notifier.Notify(ctx, "agent_promoted", a.ID, "", fmt.Sprintf("%s promoted %s from %s to %s: %s", actor, a.ID, r.From, r.To, req.GetReason()), nil)
	return &adminv1.PromoteResponse{Report: protoconv.ReportToProto(r), Agent: protoconv.AgentToProto(a)}, nil
}

func (s *Service) Demote(ctx context.Context, req *adminv1.DemoteRequest) (*adminv1.DemoteResponse, error) {
	steps := int(req.GetLevels())
	if steps == 0 {
		steps = 1
	}
	a, sum, err := s.cfg.Levels.Demote(ctx, req.GetSpiffeId(), edge.Caller(ctx), audit.Redact(req.GetReason()), steps)
	if err != nil {
		return nil, err
	}
	return &adminv1.DemoteResponse{Agent: protoconv.AgentToProto(a), Summary: sum}, nil
}

func (s *Service) RollbackLevel(ctx context.Context, req *adminv1.RollbackLevelRequest) (*adminv1.RollbackLevelResponse, error) {
	old, err := s.cfg.Store.AgentAt(req.GetSpiffeId(), req.GetRevision())
	if err != nil {
		return nil, fmt.Errorf("read history: %w", err)
	}
	a, err := s.cfg.Store.GetAgent(req.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("get agent: %w", err)
	}
	if old.Level == a.Level {
		return nil, fault.New(fault.Precondition, "%s is already at level %s, the level of revision %d", a.ID, a.Level, req.GetRevision())
	}
	// Raising a level skips no gate: that is a promotion or a migration.
	if old.Level > a.Level {
		return nil, fault.New(fault.Precondition, "a rollback only lowers a level: %s is at %s and revision %d had %s; raise it through the gates "+
			"(atfctl agent promote) or, with its sign-offs, a migration (atfctl agent migrate)", a.ID, a.Level, req.GetRevision(), old.Level)
	}
	a, sum, err := s.cfg.Levels.Change(ctx, a, edge.Caller(ctx), store.ActionRollback,
		fmt.Sprintf("level of revision %d restored: %s", req.GetRevision(), audit.Redact(req.GetReason())), old.Level)
	if err != nil {
		return nil, err
	}
	return &adminv1.RollbackLevelResponse{Agent: protoconv.AgentToProto(a), Summary: sum}, nil
}

// MigrateAgent places an agent that earned its autonomy elsewhere at a
// higher level, on the sign-offs a promotion to that level needs; the
// history and audit trail say it was a migration and who signed off.
func (s *Service) MigrateAgent(ctx context.Context, req *adminv1.MigrateAgentRequest) (*adminv1.MigrateAgentResponse, error) {
	if err := edge.ActOn(ctx, s.cfg.Store, req.GetSpiffeId()); err != nil {
		return nil, err
	}
	a, err := s.cfg.Store.GetAgent(req.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("get agent: %w", err)
	}
	if !a.Usable() {
		return nil, fault.New(fault.Precondition, "agent %s is deregistered or stopped by the kill switch", a.ID)
	}
	to := protoconv.LevelFromProto(req.GetLevel())
	if to <= a.Level {
		return nil, fault.New(fault.Precondition, "%s is at %s: a migration only raises a level (lower it with atfctl agent demote)", a.ID, a.Level)
	}
	in, err := s.promotionInput(a)
	if err != nil {
		return nil, fmt.Errorf("read maturity records: %w", err)
	}
	c, err := maturity.SignedOff(s.cfg.Maturity, in, to)
	if err != nil {
		return nil, fault.Wrap(fault.Precondition, err)
	}
	if !c.Pass {
		return nil, fault.New(fault.Precondition, "%s cannot be placed at %s without the sign-offs a promotion there needs: %s; "+
			"each signer records their own (atfctl signoff add %s --target %s)", a.ID, to, c.Detail, a.ID, to)
	}
	actor, from := edge.Caller(ctx), a.Level
	reason := fmt.Sprintf("migration from %s to %s: %s; sign-off: %s", from, to, audit.Redact(req.GetReason()), c.Detail)
	if a, err = s.db(ctx).SetLevel(a.ID, actor, store.ActionMigrate, reason, to, a.Revision); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	edge.Logger(ctx).Warn("agent migrated", slog.String(edge.LogAgent, a.ID), slog.String("from", from.String()), slog.String(edge.LogLevel, a.Level.String()))
	s.cfg.Notifier.Notify(ctx, "agent_migrated", a.ID, "", fmt.Sprintf("%s placed %s at %s (was %s): %s", actor, a.ID, to, from, reason), nil)
	return &adminv1.MigrateAgentResponse{Agent: protoconv.AgentToProto(a), SignOff: &adminv1.GateCheck{Name: c.Name, Pass: c.Pass, Detail: c.Detail}}, nil
}

// recordFor is the agent a maturity record (evidence, sign-off) is about
// and the level it is for.
func (s *Service) recordFor(id string, l brokerv1.Level) (store.Agent, authz.Level, error) {
	a, err := s.cfg.Store.GetAgent(id)
	if err != nil {
		return a, 0, fmt.Errorf("get agent: %w", err)
	}
	to, err := target(a, l)
	return a, to, err
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

func (s *Service) RecordEvidence(ctx context.Context, req *adminv1.RecordEvidenceRequest) (*adminv1.RecordEvidenceResponse, error) {
	kind, err := maturity.ParseEvidenceKind(req.GetKind())
	if err != nil {
		return nil, fault.Wrap(fault.Invalid, err)
	}
	if err := edge.ActOn(ctx, s.cfg.Store, req.GetSpiffeId()); err != nil {
		return nil, err
	}
	a, to, err := s.recordFor(req.GetSpiffeId(), req.GetTarget())
	if err != nil {
		return nil, err
	}
	e := store.Evidence{Agent: a.ID, Kind: string(kind), Target: to, Reference: audit.Redact(req.GetReference()), RecordedBy: edge.Caller(ctx), At: s.cfg.Now().UTC()}
	if err := s.db(ctx).AddEvidence(e); err != nil {
		return nil, fmt.Errorf("record evidence: %w", err)
	}
	return &adminv1.RecordEvidenceResponse{Evidence: protoconv.EvidenceToProto(e)}, nil
}

// RecordSignOff records the caller's own sign-off: the signer is the
// verified identity that calls, so nobody signs for someone else.
func (s *Service) RecordSignOff(ctx context.Context, req *adminv1.RecordSignOffRequest) (*adminv1.RecordSignOffResponse, error) {
	signer := edge.Caller(ctx)
	// The signer field is deprecated: it is read only to refuse it.
	if named := req.GetSigner(); named != "" {
		return nil, fault.New(fault.Invalid, "a sign-off is no longer recorded for a signer named in the request (%q): each signer records their own, "+
			"with their own SVID (atfctl signoff add, run by the signer)", named)
	}
	if auth := s.cfg.Maturity.Authorities; len(auth) > 0 && !slices.Contains(auth, signer) {
		return nil, fault.New(fault.Denied, "%s is not a promotion authority (atfd's configuration: maturity.authorities): its sign-off would not count", signer)
	}
	if err := edge.ActOn(ctx, s.cfg.Store, req.GetSpiffeId()); err != nil {
		return nil, err
	}
	a, to, err := s.recordFor(req.GetSpiffeId(), req.GetTarget())
	if err != nil {
		return nil, err
	}
	so := store.SignOff{Agent: a.ID, Signer: signer, RiskAcceptance: audit.Redact(req.GetRiskAcceptance()), Target: to,
		RecordedBy: signer, At: s.cfg.Now().UTC()}
	if err := s.db(ctx).AddSignOff(so); err != nil {
		return nil, fmt.Errorf("record sign-off: %w", err)
	}
	return &adminv1.RecordSignOffResponse{SignOff: protoconv.SignOffToProto(so)}, nil
}

func (s *Service) OpenIncident(ctx context.Context, req *adminv1.OpenIncidentRequest) (*adminv1.OpenIncidentResponse, error) {
	actor := edge.Caller(ctx)
	inc, err := s.db(ctx).OpenIncident(store.Incident{ID: edge.NewID(), Agent: req.GetSpiffeId(), Severity: req.GetSeverity(),
		Summary: audit.Redact(req.GetSummary()), OpenedAt: s.cfg.Now().UTC(), OpenedBy: actor})
	if err != nil {
		return nil, fmt.Errorf("open incident: %w", err)
	}
	resp := &adminv1.OpenIncidentResponse{Incident: protoconv.IncidentToProto(inc)}
	s.cfg.Notifier.Notify(ctx, "incident_opened", inc.Agent, "", fmt.Sprintf("%s incident %s on %s: %s", inc.Severity, inc.ID, inc.Agent, inc.Summary), nil)
	resp.Demoted = s.incidentDemotion(ctx, inc, actor)
	return resp, nil
}

// incidentDemotion demotes the agent if the incident's severity calls for
// it at the level the agent had when the incident opened. The incident
// stands whatever happens to the demotion: a failure is logged and the
// caller can demote by hand.
func (s *Service) incidentDemotion(ctx context.Context, inc store.Incident, actor string) *adminv1.Agent {
	sev, _ := maturity.ParseSeverity(inc.Severity)
	if _, demote := s.cfg.Maturity.Demotion(inc.Level, maturity.Trigger{Kind: maturity.TriggerIncident, Severity: sev}); !demote {
		return nil
	}
	a, _, err := s.cfg.Levels.Demote(ctx, inc.Agent, actor, fmt.Sprintf("%s incident %s", inc.Severity, inc.ID), s.cfg.Maturity.DemotionSteps)
	if err != nil {
		edge.Logger(ctx).Error("demotion after an incident failed; demote the agent by hand", slog.String("incident", inc.ID), slog.String(edge.LogError, err.Error()))
		return nil
	}
	return protoconv.AgentToProto(a)
}

// incidentActOn applies edge.ActOn to the agent of incident id; the
// store reports an unknown id when the incident is changed.
func (s *Service) incidentActOn(ctx context.Context, id string) error {
	inc, err := s.cfg.Store.Incident(id)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get incident: %w", err)
	}
	return edge.ActOn(ctx, s.cfg.Store, inc.Agent)
}

func (s *Service) UpdateIncident(ctx context.Context, req *adminv1.UpdateIncidentRequest) (*adminv1.UpdateIncidentResponse, error) {
	if err := s.incidentActOn(ctx, req.GetIncidentId()); err != nil {
		return nil, err
	}
	actor := edge.Caller(ctx)
	inc, before, err := s.db(ctx).UpdateIncident(req.GetIncidentId(), actor, req.GetSeverity(), audit.Redact(req.GetNote()))
	if err != nil {
		return nil, fmt.Errorf("update incident: %w", err)
	}
	resp := &adminv1.UpdateIncidentResponse{Incident: protoconv.IncidentToProto(inc)}
	if inc.Severity != before {
		s.cfg.Notifier.Notify(ctx, "incident_updated", inc.Agent, "", fmt.Sprintf("incident %s on %s is now %s (was %s)", inc.ID, inc.Agent, inc.Severity, before), nil)
		old, _ := maturity.ParseSeverity(before)
		if _, already := s.cfg.Maturity.Demotion(inc.Level, maturity.Trigger{Kind: maturity.TriggerIncident, Severity: old}); !already {
			resp.Demoted = s.incidentDemotion(ctx, inc, actor)
		}
	}
	return resp, nil
}

func (s *Service) CloseIncident(ctx context.Context, req *adminv1.CloseIncidentRequest) (*adminv1.CloseIncidentResponse, error) {
	if err := s.incidentActOn(ctx, req.GetIncidentId()); err != nil {
		return nil, err
	}
	inc, err := s.db(ctx).CloseIncident(req.GetIncidentId(), edge.Caller(ctx), audit.Redact(req.GetRca()))
	if err != nil {
		return nil, fmt.Errorf("close incident: %w", err)
	}
	return &adminv1.CloseIncidentResponse{Incident: protoconv.IncidentToProto(inc)}, nil
}

func (s *Service) ListIncidents(ctx context.Context, req *adminv1.ListIncidentsRequest) (*adminv1.ListIncidentsResponse, error) {
	incs, err := s.cfg.Store.Incidents(req.GetSpiffeId(), req.GetOpenOnly())
	if err != nil {
		return nil, fmt.Errorf("list incidents: %w", err)
	}
	resp := &adminv1.ListIncidentsResponse{}
	for _, inc := range incs {
		resp.Incidents = append(resp.Incidents, protoconv.IncidentToProto(inc))
	}
	return resp, nil
}

func (s *Service) GetMaturity(ctx context.Context, req *adminv1.GetMaturityRequest) (*adminv1.GetMaturityResponse, error) {
	a, err := s.cfg.Store.GetAgent(req.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("get agent: %w", err)
	}
	in, err := s.promotionInput(a)
	if err != nil {
		return nil, fmt.Errorf("read maturity records: %w", err)
	}
	resp := &adminv1.GetMaturityResponse{
		Agent:        protoconv.AgentToProto(a),
		LevelSince:   timestamppb.New(in.LevelSince),
		Outcomes:     outcomeCounts(in.Outcomes),
		SelfReported: outcomeCounts(in.SelfReported),
		Breaker:      s.cfg.Watch.BreakerProto(a.ID),
		Baseline:     s.cfg.Watch.BaselineProto(a.ID),
	}
	ev, err := s.cfg.Store.AgentEvidence(a.ID)
	if err != nil {
		return nil, fmt.Errorf("read evidence: %w", err)
	}
	for _, e := range ev {
		resp.Evidence = append(resp.Evidence, protoconv.EvidenceToProto(e))
	}
	sos, err := s.cfg.Store.AgentSignOffs(a.ID)
	if err != nil {
		return nil, fmt.Errorf("read sign-offs: %w", err)
	}
	for _, so := range sos {
		resp.SignOffs = append(resp.SignOffs, protoconv.SignOffToProto(so))
	}
	incs, err := s.cfg.Store.Incidents(a.ID, false)
	if err != nil {
		return nil, fmt.Errorf("read incidents: %w", err)
	}
	for _, inc := range incs {
		resp.Incidents = append(resp.Incidents, protoconv.IncidentToProto(inc))
	}
	return resp, nil
}
