package broker

import (
	"context"
	"errors"
	"log/slog"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/vault"
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
	resp.Registered, resp.Level, resp.Status, resp.Roles = true, levelToProto(a.Level), statusToProto(a.Status), a.Roles
	return resp, nil
}

func (b *brokerService) FetchCredential(ctx context.Context, req *brokerv1.FetchCredentialRequest) (*brokerv1.FetchCredentialResponse, error) {
	s := b.s
	caller := identity(ctx).ID.String()
	log := s.logger(ctx)
	if req.GetAgentId() != "" && req.GetAgentId() != caller {
		log.Warn("request names another agent", slog.String(logAgent, req.GetAgentId()))
		return nil, status.Errorf(codes.PermissionDenied, "request names agent %q but the caller's SVID is %s; identity comes only from the SVID", req.GetAgentId(), caller)
	}
	role, ok := s.roles[req.GetRole()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "role %q is not defined in the broker's roles file", req.GetRole())
	}
	var agent *authz.Agent
	a, err := s.store.GetAgent(caller)
	switch {
	case err == nil:
		agent = &authz.Agent{ID: a.ID, Level: a.Level, Active: a.Status == store.Active, Roles: a.Roles}
	case !errors.Is(err, store.ErrNotFound):
		return nil, s.statusOf(ctx, "look up caller", err)
	}
	decisionID := newID()
	d := s.gate.Decide(agent, role.authz(), req.GetTtl().AsDuration())
	log = log.With(slog.String(logDecisionID, decisionID), slog.String(logRole, role.Name))
	if !d.Allow {
		log.Warn("credential denied", slog.String(logReason, string(d.Reason)))
		return nil, status.Errorf(codes.PermissionDenied, "%s (decision %s)", d.Message, decisionID)
	}
	cred, err := s.issuer.Issue(ctx, vault.Request{
		Policies: role.Policies,
		TTL:      d.TTL,
		NumUses:  d.MaxUses,
		Metadata: map[string]string{
			"atf_agent":       caller,
			"atf_role":        role.Name,
			"atf_level":       a.Level.String(),
			"atf_decision_id": decisionID,
		},
		DisplayName: "atf-" + role.Name,
	})
	if err != nil {
		return nil, s.statusOf(ctx, "issue credential", err)
	}
	err = s.store.RecordCredential(store.Credential{
		Accessor:   cred.Accessor,
		AgentID:    caller,
		Role:       role.Name,
		Level:      a.Level,
		Policies:   cred.Policies,
		DecisionID: decisionID,
		IssuedAt:   cred.IssuedAt.UTC(),
		ExpiresAt:  cred.ExpiresAt.UTC(),
	})
	if err != nil {
		// Never hand out a credential the broker has not recorded. If it was
		// queued (deregistered meanwhile), the revoker finishes the job.
		if rerr := s.issuer.Revoke(context.WithoutCancel(ctx), cred.Accessor); rerr != nil {
			log.Error("revoking an unrecorded credential failed; it expires on its own", slog.String(logError, rerr.Error()),
				slog.String(logAccessor, cred.Accessor), slog.Time("expires_at", cred.ExpiresAt))
		} else if errors.Is(err, store.ErrDeregistered) {
			_ = s.store.CompleteRevocation(cred.Accessor)
		}
		if errors.Is(err, store.ErrDeregistered) {
			return nil, status.Errorf(codes.PermissionDenied, "agent %s was deregistered (decision %s)", caller, decisionID)
		}
		return nil, s.statusOf(ctx, "record credential", err)
	}
	log.Info("credential issued", slog.String(logAccessor, cred.Accessor), slog.Duration(logTTL, d.TTL),
		slog.String(logLevel, a.Level.String()), slog.String("uses", strconv.Itoa(d.MaxUses)))
	return &brokerv1.FetchCredentialResponse{Credential: &brokerv1.Credential{
		Token:        cred.Token,
		Accessor:     cred.Accessor,
		Role:         role.Name,
		Policies:     cred.Policies,
		IssuedAt:     timestamppb.New(cred.IssuedAt),
		ExpiresAt:    timestamppb.New(cred.ExpiresAt),
		Renewable:    false,
		Level:        levelToProto(a.Level),
		DecisionId:   decisionID,
		VaultAddress: s.issuer.Address(),
	}}, nil
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

func statusToProto(st store.Status) brokerv1.AgentStatus {
	switch st {
	case store.Active:
		return brokerv1.AgentStatus_AGENT_STATUS_ACTIVE
	case store.Deregistered:
		return brokerv1.AgentStatus_AGENT_STATUS_DEREGISTERED
	}
	return brokerv1.AgentStatus_AGENT_STATUS_UNSPECIFIED
}
