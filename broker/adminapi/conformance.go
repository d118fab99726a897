package adminapi

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/conformance"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// conformanceFacts reads the registry and the broker's state.
func (s *Service) conformanceFacts() (conformance.Facts, error) {
	f := conformance.Facts{Agents: map[authz.Level]int{}, RoleClasses: map[string]int{}, RoleClassifications: map[string]int{},
		GlobalKill: s.cfg.Revoker.GlobalKill() != nil, MaxRequestBytes: edge.MaxRequestBytes}
	for after := ""; ; {
		agents, next, err := s.cfg.Store.ListAgents(after, 1000, false)
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
			if s.cfg.Watch.BaselineFormed(ag.ID) {
				f.BaselinesFormed++
			}
		}
		if next == "" {
			break
		}
		after = next
	}
	switch pv, err := s.cfg.Store.Policy(0); {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return f, err
	default:
		f.PolicyVersion, f.PolicyLines = pv.Version, pv.Lines
	}
	for _, r := range s.cfg.Roles {
		f.RoleClasses[r.Authz().Class.String()]++
		f.RoleClassifications[r.Authz().Classification.String()]++
	}
	head, err := s.cfg.Store.AuditHead()
	if err != nil {
		return f, err
	}
	f.AuditHead = head.Seq
	pending, err := s.cfg.Store.PendingRevocations()
	if err != nil {
		return f, err
	}
	f.PendingRevocations = len(pending)
	return f, nil
}

func (s *Service) GetConformance(ctx context.Context, req *adminv1.GetConformanceRequest) (*adminv1.GetConformanceResponse, error) {
	f, err := s.conformanceFacts()
	if err != nil {
		return nil, fmt.Errorf("assess conformance: %w", err)
	}
	var target authz.Level
	if req.GetTargetLevel() != 0 {
		target = protoconv.LevelFromProto(req.GetTargetLevel())
	}
	st := conformance.Evaluate(s.cfg.Config, f, target)
	st.Organization = req.GetOrganization()
	st.AssessedAt = timestamppb.New(s.cfg.Now())
	return &adminv1.GetConformanceResponse{Statement: st}, nil
}
