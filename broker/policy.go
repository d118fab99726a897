package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// loadPolicy makes the store's current policy the one in force, seeding
// the store from the configured files if it holds none. A stored policy
// that no longer loads (a broker downgrade, a hand-edited file) stops the
// start: serving with a guessed policy is worse than not serving.
func (s *Server) loadPolicy(cfg PolicyConfig) error {
	pv, err := s.store.Policy(0)
	switch {
	case errors.Is(err, store.ErrNotFound) && cfg.ModelFile == "":
		s.log.Warn("no segmentation policy is stored or configured: every credential request will be denied until an admin sets one (atfctl policy set)")
		return nil
	case errors.Is(err, store.ErrNotFound):
		model, policy, err := readPolicyFiles(cfg)
		if err != nil {
			return err
		}
		p, err := authz.NewPolicy(0, model, policy)
		if err != nil {
			return fmt.Errorf("broker: policy files %s, %s: %w", cfg.ModelFile, cfg.PolicyFile, err)
		}
		if pv, err = s.store.PutPolicy(store.PolicyVersion{Author: "atfd", Comment: "seeded from " + cfg.PolicyFile,
			Model: model, Policy: policy, Digest: p.Digest(), Lines: p.Lines()}, 0); err != nil {
			return err
		}
		s.log.Info("segmentation policy seeded from files", slog.Uint64("version", pv.Version), slog.Int("lines", p.Lines()))
	case err != nil:
		return err
	}
	p, err := authz.NewPolicy(pv.Version, pv.Model, pv.Policy)
	if err != nil {
		return fmt.Errorf("broker: stored policy version %d does not load (roll back with an older atfd, or restore a backup): %w", pv.Version, err)
	}
	for _, w := range p.Warnings() {
		s.log.Warn("policy lint", slog.String("warning", w))
	}
	if cfg.ModelFile != "" {
		if model, policy, err := readPolicyFiles(cfg); err == nil && (model != pv.Model || policy != pv.Policy) {
			s.log.Warn("the configured policy files differ from the stored policy, which stays in force; use atfctl policy set to change it",
				slog.Uint64("version", pv.Version))
		}
	}
	s.policy.Store(p)
	return nil
}

func readPolicyFiles(cfg PolicyConfig) (model, policy string, err error) {
	m, err := os.ReadFile(cfg.ModelFile)
	if err != nil {
		return "", "", fmt.Errorf("broker: policy: %w", err)
	}
	p, err := os.ReadFile(cfg.PolicyFile)
	if err != nil {
		return "", "", fmt.Errorf("broker: policy: %w", err)
	}
	return string(m), string(p), nil
}

// policyStatus turns a policy that does not load into InvalidArgument,
// saying why.
func policyStatus(err error) error {
	return status.Errorf(codes.InvalidArgument, "policy refused, the current one keeps serving: %s", strings.TrimPrefix(err.Error(), "authz: "))
}

func (a *adminService) GetPolicy(ctx context.Context, req *adminv1.GetPolicyRequest) (*adminv1.GetPolicyResponse, error) {
	pv, err := a.s.store.Policy(req.GetVersion())
	if err != nil {
		return nil, a.s.statusOf(ctx, "get policy", err)
	}
	return &adminv1.GetPolicyResponse{Version: a.s.policyVersionToProto(pv), Model: pv.Model, Policy: pv.Policy}, nil
}

func (a *adminService) ListPolicies(ctx context.Context, req *adminv1.ListPoliciesRequest) (*adminv1.ListPoliciesResponse, error) {
	size := int(req.GetPageSize())
	if size == 0 {
		size = 50
	}
	versions, err := a.s.store.Policies(req.GetBefore(), size)
	if err != nil {
		return nil, a.s.statusOf(ctx, "list policies", err)
	}
	resp := &adminv1.ListPoliciesResponse{}
	for _, pv := range versions {
		resp.Versions = append(resp.Versions, a.s.policyVersionToProto(pv))
	}
	return resp, nil
}

func (a *adminService) SetPolicy(ctx context.Context, req *adminv1.SetPolicyRequest) (*adminv1.SetPolicyResponse, error) {
	model := req.GetModel()
	if model == "" {
		cur, err := a.s.store.Policy(0)
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Error(codes.FailedPrecondition, "no policy has been set yet: send a model with the first policy")
		}
		if err != nil {
			return nil, a.s.statusOf(ctx, "load current model", err)
		}
		model = cur.Model
	}
	p, err := authz.NewPolicy(0, model, req.GetPolicy())
	if err != nil {
		a.s.logger(ctx).Info("policy update refused", slog.String(logError, err.Error()))
		return nil, policyStatus(err)
	}
	resp := &adminv1.SetPolicyResponse{Warnings: p.Warnings()}
	if req.GetDryRun() {
		return resp, nil
	}
	pv, err := a.s.commitPolicy(ctx, store.PolicyVersion{Model: model, Policy: req.GetPolicy(), Comment: req.GetComment()}, p, req.GetExpectedVersion())
	if err != nil {
		return nil, err
	}
	resp.Version = a.s.policyVersionToProto(pv)
	return resp, nil
}

func (a *adminService) RollbackPolicy(ctx context.Context, req *adminv1.RollbackPolicyRequest) (*adminv1.RollbackPolicyResponse, error) {
	old, err := a.s.store.Policy(req.GetVersion())
	if err != nil {
		return nil, a.s.statusOf(ctx, "load policy version", err)
	}
	p, err := authz.NewPolicy(0, old.Model, old.Policy)
	if err != nil {
		return nil, policyStatus(err)
	}
	pv, err := a.s.commitPolicy(ctx, store.PolicyVersion{Model: old.Model, Policy: old.Policy, Comment: req.GetComment(), RolledBackFrom: old.Version}, p, req.GetExpectedVersion())
	if err != nil {
		return nil, err
	}
	return &adminv1.RollbackPolicyResponse{Version: a.s.policyVersionToProto(pv)}, nil
}

// commitPolicy stores a checked policy as the newest version and puts it in
// force. Updates are serialised so the policy in force is always the
// newest stored one.
func (s *Server) commitPolicy(ctx context.Context, pv store.PolicyVersion, p *authz.Policy, expected uint64) (store.PolicyVersion, error) {
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	pv.Author = identity(ctx).ID.String()
	pv.Comment = audit.Redact(pv.Comment)
	pv.Digest, pv.Lines = p.Digest(), p.Lines()
	pv, err := s.db(ctx).PutPolicy(pv, expected)
	if err != nil {
		return pv, s.statusOf(ctx, "store policy", err)
	}
	// The version number is known only now; the loaded rules are the same.
	p, err = authz.NewPolicy(pv.Version, pv.Model, pv.Policy)
	if err != nil {
		return pv, s.statusOf(ctx, "load stored policy", err)
	}
	s.policy.Store(p)
	s.logger(ctx).Info("segmentation policy updated", slog.Uint64("version", pv.Version), slog.Int("lines", pv.Lines),
		slog.Uint64("restored", pv.RolledBackFrom))
	s.notify(ctx, "policy_updated", "", "", fmt.Sprintf("segmentation policy version %d set by %s: %s", pv.Version, pv.Author, pv.Comment),
		map[string]string{"version": fmt.Sprint(pv.Version), "digest": pv.Digest})
	return pv, nil
}

func (a *adminService) TestPolicy(ctx context.Context, req *adminv1.TestPolicyRequest) (*adminv1.TestPolicyResponse, error) {
	s := a.s
	p := s.policy.Load()
	if req.GetPolicy() != "" || req.GetModel() != "" {
		model := req.GetModel()
		if model == "" && p != nil {
			cur, err := s.store.Policy(p.Version())
			if err != nil {
				return nil, s.statusOf(ctx, "load current model", err)
			}
			model = cur.Model
		}
		var err error
		if p, err = authz.NewPolicy(0, model, req.GetPolicy()); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "candidate policy does not load: %s", strings.TrimPrefix(err.Error(), "authz: "))
		}
	}
	roleName, err := authz.CanonicalRole(req.GetRole())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, strings.TrimPrefix(err.Error(), "authz: "))
	}
	role, ok := s.roles[roleName]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "role %q is not defined in the broker's roles file", roleName)
	}
	id, err := a.agentID(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	// Unregistered: decide as if it were registered with this role, at the
	// level a registration gives unless one is named.
	agent := &authz.Agent{ID: id, Level: authz.Intern, Active: true, Roles: []string{roleName}}
	switch rec, err := s.store.GetAgent(id); {
	case err == nil:
		agent = &authz.Agent{ID: rec.ID, Level: rec.Level, Active: rec.Status == store.Active, Killed: rec.Kill != nil, Roles: rec.Roles}
	case !errors.Is(err, store.ErrNotFound):
		return nil, s.statusOf(ctx, "look up agent", err)
	}
	if req.GetLevel() != 0 {
		agent.Level = levelFromProto(req.GetLevel())
	}
	d := s.gate.Decide(p, agent, role.authz(), 0)
	return &adminv1.TestPolicyResponse{Decision: decisionToProto(d, role, agent.Level)}, nil
}

func decisionToProto(d authz.Decision, role Role, level authz.Level) *adminv1.Decision {
	out := &adminv1.Decision{
		Reason:         string(d.Reason),
		Message:        d.Message,
		MaturityRule:   d.Rule,
		MaxUses:        int32(d.MaxUses),
		Notify:         d.Notify,
		PolicyVersion:  d.PolicyVersion,
		Classification: role.classification.String(),
		Class:          role.class.String(),
		Level:          levelToProto(level),
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

func (s *Server) policyVersionToProto(pv store.PolicyVersion) *adminv1.PolicyVersion {
	cur := s.policy.Load()
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
