package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/conformance"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// conformanceFacts reads the registry and the broker's state.
func (s *Server) conformanceFacts() (conformance.Facts, error) {
	f := conformance.Facts{Agents: map[authz.Level]int{}, RoleClasses: map[string]int{}, RoleClassifications: map[string]int{},
		GlobalKill: s.globalKill.Load() != nil}
	for after := ""; ; {
		agents, next, err := s.store.ListAgents(after, 1000, false)
		if err != nil {
			return f, err
		}
		for _, ag := range agents {
			f.Agents[ag.Level]++
			if strings.TrimSpace(ag.Owner) == "" {
				f.NoOwner++
			}
			if strings.TrimSpace(ag.Purpose) == "" {
				f.NoPurpose++
			}
			if len(ag.Roles) == 0 {
				f.EmptyManifest++
			}
			if ag.Version != "" && ag.ConfigDigest != "" {
				f.Bound++
			}
			if ag.Kill != nil {
				f.Killed++
			}
			if b, ok := s.monitor.Baseline(ag.ID); ok && b.Formed {
				f.BaselinesFormed++
			}
		}
		if next == "" {
			break
		}
		after = next
	}
	switch pv, err := s.store.Policy(0); {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return f, err
	default:
		f.PolicyVersion, f.PolicyLines = pv.Version, pv.Lines
	}
	for _, r := range s.roles {
		f.RoleClasses[r.Authz().Class.String()]++
		f.RoleClassifications[r.Authz().Classification.String()]++
	}
	head, err := s.store.AuditHead()
	if err != nil {
		return f, err
	}
	f.AuditHead = head.Seq
	pending, err := s.store.PendingRevocations()
	if err != nil {
		return f, err
	}
	f.PendingRevocations = len(pending)
	return f, nil
}

func (a *adminService) GetConformance(ctx context.Context, req *adminv1.GetConformanceRequest) (*adminv1.GetConformanceResponse, error) {
	f, err := a.s.conformanceFacts()
	if err != nil {
		return nil, fmt.Errorf("assess conformance: %w", err)
	}
	var target authz.Level
	if req.GetTargetLevel() != 0 {
		target = protoconv.LevelFromProto(req.GetTargetLevel())
	}
	st := conformance.Evaluate(a.s.cfg, f, target)
	st.Organization = req.GetOrganization()
	st.AssessedAt = timestamppb.New(a.s.now())
	return &adminv1.GetConformanceResponse{Statement: st}, nil
}
