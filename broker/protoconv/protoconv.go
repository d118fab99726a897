// Package protoconv converts between the broker's records and their
// protobuf messages. It is the one home of these conversions, so that the
// API packages share them without depending on one another.
package protoconv

import (
	"maps"
	"slices"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/maturity"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/delegation"
)

func AgentToProto(a store.Agent) *adminv1.Agent {
	return &adminv1.Agent{
		SpiffeId:     a.ID,
		Owner:        a.Owner,
		Purpose:      a.Purpose,
		Roles:        a.Roles,
		Level:        LevelToProto(a.Level),
		Status:       StatusToProto(a),
		Version:      a.Version,
		ConfigDigest: a.ConfigDigest,
		CreatedAt:    timestamppb.New(a.CreatedAt),
		UpdatedAt:    timestamppb.New(a.UpdatedAt),
		UpdatedBy:    a.UpdatedBy,
		Revision:     a.Revision,
		Kill:         KillToProto(a.Kill),
	}
}

var approvalStatus = map[store.ApprovalStatus]brokerv1.ApprovalStatus{
	store.ApprovalPending:   brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING,
	store.ApprovalApproved:  brokerv1.ApprovalStatus_APPROVAL_STATUS_APPROVED,
	store.ApprovalDenied:    brokerv1.ApprovalStatus_APPROVAL_STATUS_DENIED,
	store.ApprovalExpired:   brokerv1.ApprovalStatus_APPROVAL_STATUS_EXPIRED,
	store.ApprovalRedeemed:  brokerv1.ApprovalStatus_APPROVAL_STATUS_REDEEMED,
	store.ApprovalCancelled: brokerv1.ApprovalStatus_APPROVAL_STATUS_CANCELLED,
}

func ApprovalStatusFromProto(st brokerv1.ApprovalStatus) store.ApprovalStatus {
	if st == brokerv1.ApprovalStatus_APPROVAL_STATUS_UNSPECIFIED {
		return store.ApprovalPending
	}
	for k, v := range approvalStatus {
		if v == st {
			return k
		}
	}
	return store.ApprovalPending
}

func ApprovalToProto(a store.Approval) *brokerv1.Approval {
	out := &brokerv1.Approval{
		Id:                 a.ID,
		AgentId:            a.AgentID,
		Role:               a.Role,
		Class:              a.Class,
		Classification:     a.Classification,
		Level:              LevelToProto(a.Level),
		GrantId:            a.GrantID,
		Ttl:                durationpb.New(a.TTL),
		Purpose:            a.Purpose,
		Justification:      a.Justification,
		Status:             approvalStatus[a.Status],
		CreatedAt:          timestamppb.New(a.CreatedAt),
		ExpiresAt:          timestamppb.New(a.ExpiresAt),
		DecidedBy:          a.DecidedBy,
		Reason:             a.Reason,
		DecisionId:         a.DecisionID,
		RedeemedDecisionId: a.RedeemedDecisionID,
		Chain:              a.Chain,
		Scopes:             a.Scopes,
	}
	if !a.DecidedAt.IsZero() {
		out.DecidedAt = timestamppb.New(a.DecidedAt)
	}
	return out
}

func AuthMethodToProto(m attest.Method) brokerv1.AuthMethod {
	switch m {
	case attest.X509SVID:
		return brokerv1.AuthMethod_AUTH_METHOD_X509_SVID
	case attest.JWTSVID:
		return brokerv1.AuthMethod_AUTH_METHOD_JWT_SVID
	}
	return brokerv1.AuthMethod_AUTH_METHOD_UNSPECIFIED
}

func LevelToProto(l authz.Level) brokerv1.Level {
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

func LevelFromProto(l brokerv1.Level) authz.Level {
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

func StatusToProto(a store.Agent) brokerv1.AgentStatus {
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

func AuditToProto(r store.AuditRecord) *adminv1.AuditRecord {
	return &adminv1.AuditRecord{Seq: r.Seq, Time: timestamppb.New(r.Time), Kind: r.Kind, Actor: r.Actor, Subject: r.Subject, Detail: r.Detail, Prev: r.Prev, Hash: r.Hash}
}

func GrantToProto(g delegation.Grant) *brokerv1.Grant {
	p := &brokerv1.Grant{
		Id:            g.ID,
		ParentGrantId: g.ParentID,
		Delegator:     g.Delegator,
		Delegatee:     g.Delegatee,
		Roles:         g.Roles,
		CreatedAt:     timestamppb.New(g.CreatedAt),
		ExpiresAt:     timestamppb.New(g.ExpiresAt),
		MaxDepth:      int32(g.MaxDepth),
		Depth:         int32(g.Depth),
	}
	if !g.RevokedAt.IsZero() {
		p.RevokedAt = timestamppb.New(g.RevokedAt)
	}
	for _, role := range slices.Sorted(maps.Keys(g.Scopes)) {
		p.Scopes = append(p.Scopes, &brokerv1.RoleScopes{Role: role, Scopes: g.Scopes[role]})
	}
	return p
}

func ReportToProto(r maturity.Report) *adminv1.PromotionReport {
	out := &adminv1.PromotionReport{SpiffeId: r.Agent, From: LevelToProto(r.From), To: LevelToProto(r.To), Promotable: r.Promotable}
	for _, g := range r.Gates {
		pg := &adminv1.PromotionGate{Name: g.Name, Pass: g.Pass}
		for _, c := range g.Checks {
			pg.Checks = append(pg.Checks, &adminv1.GateCheck{Name: c.Name, Pass: c.Pass, Detail: c.Detail})
		}
		out.Gates = append(out.Gates, pg)
	}
	return out
}

func EvidenceToProto(e store.Evidence) *adminv1.Evidence {
	return &adminv1.Evidence{Kind: e.Kind, Target: LevelToProto(e.Target), Reference: e.Reference, RecordedBy: e.RecordedBy, At: timestamppb.New(e.At)}
}

func SignOffToProto(so store.SignOff) *adminv1.SignOff {
	return &adminv1.SignOff{Signer: so.Signer, RiskAcceptance: so.RiskAcceptance, Target: LevelToProto(so.Target), RecordedBy: so.RecordedBy, At: timestamppb.New(so.At)}
}

func IncidentToProto(in store.Incident) *adminv1.Incident {
	out := &adminv1.Incident{Id: in.ID, SpiffeId: in.Agent, Severity: in.Severity, Summary: in.Summary, Level: LevelToProto(in.Level),
		OpenedAt: timestamppb.New(in.OpenedAt), OpenedBy: in.OpenedBy, ClosedBy: in.ClosedBy, Rca: in.RCA}
	if !in.ClosedAt.IsZero() {
		out.ClosedAt = timestamppb.New(in.ClosedAt)
	}
	return out
}

func DecisionToProto(d authz.Decision, role config.Role, level authz.Level) *adminv1.Decision {
	out := &adminv1.Decision{
		Reason:         string(d.Reason),
		Message:        d.Message,
		MaturityRule:   d.Rule,
		MaxUses:        int32(d.MaxUses),
		Notify:         d.Notify,
		PolicyVersion:  d.PolicyVersion,
		Classification: role.Authz().Classification.String(),
		Class:          role.Authz().Class.String(),
		Level:          LevelToProto(level),
	}
	if d.Matched != "" && d.Reason != authz.PolicyError {
		out.MatchedPolicy = []string{d.Matched}
	}
	if d.TTL > 0 {
		out.Ttl = durationpb.New(d.TTL)
	}
	switch d.Outcome {
	case authz.Allow:
		out.Outcome = adminv1.Outcome_OUTCOME_ALLOW
	case authz.NeedsApproval:
		out.Outcome = adminv1.Outcome_OUTCOME_PENDING_APPROVAL
	default:
		out.Outcome = adminv1.Outcome_OUTCOME_DENY
	}
	return out
}

func KillToProto(k *store.Kill) *adminv1.KillState {
	if k == nil {
		return nil
	}
	return &adminv1.KillState{At: timestamppb.New(k.At), By: k.By, Reason: k.Reason, LineageRoot: k.Lineage}
}
