package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// loadPolicy makes the store's current policy the one in force, seeding
// the store from the configured files if it holds none. A stored policy
// that no longer loads (a broker downgrade, a hand-edited file) stops the
// start: serving with a guessed policy is worse than not serving.
func (s *Server) loadPolicy(cfg config.PolicyConfig) error {
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

func readPolicyFiles(cfg config.PolicyConfig) (model, policy string, err error) {
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
	return fault.New(fault.Invalid, "policy refused, the current one keeps serving: %w", err)
}

func (a *adminService) GetPolicy(ctx context.Context, req *adminv1.GetPolicyRequest) (*adminv1.GetPolicyResponse, error) {
	pv, err := a.s.store.Policy(req.GetVersion())
	if err != nil {
		return nil, fmt.Errorf("get policy: %w", err)
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
		return nil, fmt.Errorf("list policies: %w", err)
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
		return nil, fmt.Errorf("load policy version: %w", err)
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
	pv.Author = edge.Caller(ctx)
	pv.Comment = audit.Redact(pv.Comment)
	pv.Digest, pv.Lines = p.Digest(), p.Lines()
	pv, err := s.db(ctx).PutPolicy(pv, expected)
	if err != nil {
		return pv, fmt.Errorf("store policy: %w", err)
	}
	// The version number is known only now; the loaded rules are the same.
	p, err = authz.NewPolicy(pv.Version, pv.Model, pv.Policy)
	if err != nil {
		return pv, fmt.Errorf("load stored policy: %w", err)
	}
	s.policy.Store(p)
	edge.Logger(ctx).Info("segmentation policy updated", slog.Uint64("version", pv.Version), slog.Int("lines", pv.Lines),
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
	role, ok := s.roles[roleName]
	if !ok {
		return nil, fault.New(fault.NotFound, "role %q is not defined in the broker's roles file", roleName)
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
		return nil, fmt.Errorf("look up agent: %w", err)
	}
	if req.GetLevel() != 0 {
		agent.Level = protoconv.LevelFromProto(req.GetLevel())
	}
	d := s.gate.Decide(p, agent, role.Authz(), 0)
	return &adminv1.TestPolicyResponse{Decision: protoconv.DecisionToProto(d, role, agent.Level)}, nil
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
