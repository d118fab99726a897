package adminapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// policyRefused is the answer to a policy that does not load.
func policyRefused(err error) error {
	return fault.New(fault.Invalid, "policy refused, the current one keeps serving: %w", err)
}

func (s *Service) GetPolicy(ctx context.Context, req *adminv1.GetPolicyRequest) (*adminv1.GetPolicyResponse, error) {
	pv, err := s.cfg.Store.Policy(req.GetVersion())
	if err != nil {
		return nil, fmt.Errorf("get policy: %w", err)
	}
	return &adminv1.GetPolicyResponse{Version: s.versionToProto(pv), Model: pv.Model, Policy: pv.Policy}, nil
}

func (s *Service) ListPolicies(ctx context.Context, req *adminv1.ListPoliciesRequest) (*adminv1.ListPoliciesResponse, error) {
	size := int(req.GetPageSize())
	if size == 0 {
		size = 50
	}
	versions, err := s.cfg.Store.Policies(req.GetBefore(), size)
	if err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	resp := &adminv1.ListPoliciesResponse{}
	for _, pv := range versions {
		resp.Versions = append(resp.Versions, s.versionToProto(pv))
	}
	return resp, nil
}

func (s *Service) SetPolicy(ctx context.Context, req *adminv1.SetPolicyRequest) (*adminv1.SetPolicyResponse, error) {
	model := req.GetModel()
	if model == "" {
		cur, err := s.cfg.Store.Policy(0)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fault.New(fault.Precondition, "no policy has been set yet: send a model with the first policy")
		}
		if err != nil {
			return nil, fmt.Errorf("load current model: %w", err)
		}
		model = cur.Model
	}
	p, err := authz.NewPolicy(0, model, req.GetPolicy())
	if err != nil {
		edge.Logger(ctx).Info("policy update refused", slog.String(edge.LogError, err.Error()))
		return nil, policyRefused(err)
	}
	resp := &adminv1.SetPolicyResponse{Warnings: p.Warnings()}
	if req.GetDryRun() {
		rev, err := s.cfg.Store.ReviewPolicy(s.cfg.Levels.PolicyJudge(p))
		if err != nil {
			return nil, fmt.Errorf("review what the policy would revoke: %w", err)
		}
		resp.Summary = &brokerv1.RevocationSummary{GrantsRevoked: int32(len(rev.Grants)), CredentialsRevoked: int32(rev.CredentialCount())}
		return resp, nil
	}
	pv, sum, err := s.commitPolicy(ctx, store.PolicyVersion{Model: model, Policy: req.GetPolicy(), Comment: req.GetComment()}, p, req.GetExpectedVersion())
	if err != nil {
		return nil, err
	}
	resp.Version, resp.Summary = s.versionToProto(pv), sum
	return resp, nil
}

func (s *Service) RollbackPolicy(ctx context.Context, req *adminv1.RollbackPolicyRequest) (*adminv1.RollbackPolicyResponse, error) {
	old, err := s.cfg.Store.Policy(req.GetVersion())
	if err != nil {
		return nil, fmt.Errorf("load policy version: %w", err)
	}
	p, err := authz.NewPolicy(0, old.Model, old.Policy)
	if err != nil {
		return nil, policyRefused(err)
	}
	pv, sum, err := s.commitPolicy(ctx, store.PolicyVersion{Model: old.Model, Policy: old.Policy, Comment: req.GetComment(), RolledBackFrom: old.Version}, p, req.GetExpectedVersion())
	if err != nil {
		return nil, err
	}
	return &adminv1.RollbackPolicyResponse{Version: s.versionToProto(pv), Summary: sum}, nil
}

// commitPolicy puts p in force as the newest version and revokes, in the
// same commit, what it no longer allows; then revokes that in Vault and
// tells the agents watching, as a demotion does (docs/security.md, "A
// policy change").
func (s *Service) commitPolicy(ctx context.Context, pv store.PolicyVersion, p *authz.Policy, expected uint64) (store.PolicyVersion, *brokerv1.RevocationSummary, error) {
	start := time.Now()
	pv, rev, err := s.cfg.Policy.Commit(ctx, pv, p, expected, s.cfg.Levels.PolicyJudge(p))
	commit := time.Since(start)
	if len(rev.Grants) == 0 && rev.CredentialCount() == 0 && len(rev.Queued) == 0 {
		return pv, &brokerv1.RevocationSummary{CommitDuration: durationpb.New(commit), TotalDuration: durationpb.New(commit)}, err
	}
	// Committed, even if putting the version in force then failed: what
	// it revoked is finished either way.
	reason := fmt.Sprintf("policy version %d no longer allows it", pv.Version)
	wait := len(rev.Queued) <= policyVaultInline
	return pv, s.cfg.Revoker.Finish(ctx, store.Root{}, pv.Author, reason, rev, start, commit, wait), err
}

// policyVaultInline is the most Vault revocations a policy change waits
// for before it answers, as a demotion does; a wider change (each agent's
// role anchor is revoked on its own, a few milliseconds each) answers once
// committed, already in force in the broker, and Vault follows from the
// durable queue (vault_pending says how many are left).
const policyVaultInline = 256

func (s *Service) TestPolicy(ctx context.Context, req *adminv1.TestPolicyRequest) (*adminv1.TestPolicyResponse, error) {
	p := s.cfg.Policy.Current()
	if req.GetPolicy() != "" || req.GetModel() != "" {
		model := req.GetModel()
		if model == "" && p != nil {
			cur, err := s.cfg.Store.Policy(p.Version())
			if err != nil {
				return nil, fmt.Errorf("load current model: %w", err)
			}
			model = cur.Model
		}
		var err error
		if p, err = authz.NewPolicy(0, model, req.GetPolicy()); err != nil {
			return nil, fault.New(fault.Invalid, "candidate policy does not load: %w", err)
		}
	}
	roleName, err := authz.CanonicalRole(req.GetRole())
	if err != nil {
		return nil, fault.Wrap(fault.Invalid, err)
	}
	role, ok := s.cfg.Roles[roleName]
	if !ok {
		return nil, fault.New(fault.NotFound, "role %q is not defined in the broker's roles file", roleName)
	}
	id, err := s.agentID(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	// Unregistered: decide as if it were registered with this role, at the
	// level a registration gives unless one is named.
	agent := &authz.Agent{ID: id, Level: authz.Intern, Active: true, Roles: []string{roleName}}
	switch rec, err := s.cfg.Store.GetAgent(id); {
	case err == nil:
		agent = rec.Subject()
	case !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("look up agent: %w", err)
	}
	if req.GetLevel() != 0 {
		agent.Level = protoconv.LevelFromProto(req.GetLevel())
	}
	d := s.cfg.Gate.Decide(p, agent, role.Authz(), 0)
	return &adminv1.TestPolicyResponse{Decision: protoconv.DecisionToProto(d, role, agent.Level)}, nil
}

func (s *Service) versionToProto(pv store.PolicyVersion) *adminv1.PolicyVersion {
	cur := s.cfg.Policy.Current()
	return &adminv1.PolicyVersion{
		Version:        pv.Version,
		CreatedAt:      timestamppb.New(pv.CreatedAt),
		Author:         pv.Author,
		Comment:        pv.Comment,
		Digest:         pv.Digest,
		RolledBackFrom: pv.RolledBackFrom,
		PolicyLines:    int32(pv.Lines),
		Current:        cur != nil && cur.Version() == pv.Version,
	}
}
