package adminapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/conformance"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/notify"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// Probes are live checks of what the broker depends on, for the
// conformance statement (docs/conformance.md, "Live evidence"); the
// composition root implements them.
type Probes interface {
	// VaultHealthy reports whether Vault answers the broker's token.
	VaultHealthy(ctx context.Context) error
	// VaultBreaker is the state of the breaker towards Vault.
	VaultBreaker() conformance.VaultBreaker
	// Identity is the broker's SVID, the Workload API's answer and the
	// trust bundles it holds.
	Identity(ctx context.Context) conformance.Identity
	// Deliveries are the notification webhook's outcomes.
	Deliveries() notify.Deliveries
}

// auditTailRecords is how many of the newest audit records the statement
// verifies (atfctl audit verify checks the whole chain).
const auditTailRecords = 1000

// probeTimeout bounds each live probe of Vault and SPIRE.
const probeTimeout = 5 * time.Second

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
			s.countAgent(&f, ag)
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
		f.PolicyVersion = pv.Version
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
	return f, nil
}

// countAgent adds an active agent to the registry's counts.
func (s *Service) countAgent(f *conformance.Facts, ag store.Agent) {
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
	for _, r := range ag.Roles {
		if _, ok := s.cfg.Roles[r]; !ok {
			f.UnknownRoles++
			break
		}
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

// conformanceEvidence gathers the registry's counts and the live checks.
func (s *Service) conformanceEvidence(ctx context.Context) (conformance.Evidence, error) {
	f, err := s.conformanceFacts()
	if err != nil {
		return conformance.Evidence{}, err
	}
	ev := conformance.Evidence{Facts: f, Now: s.cfg.Now(), Policy: s.cfg.Policy.Current(), Gate: s.cfg.Gate, Roles: s.cfg.Roles}
	if ev.Queue, err = s.cfg.Store.RevocationQueue(); err != nil {
		return ev, err
	}
	ev.AuditTail = s.verifyAuditTail(f.AuditHead)
	if path := s.cfg.Config.Audit.File; path != "" {
		ev.AuditFile = auditFileCheck(path, f.AuditHead)
	}
	if p := s.cfg.Probes; p != nil {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		defer cancel()
		ev.Vault = conformance.Check{Checked: true}
		if err := p.VaultHealthy(pctx); err != nil {
			ev.Vault.Err = err.Error()
		}
		ev.VaultBreaker = p.VaultBreaker()
		ev.Identity = p.Identity(pctx)
		ev.Webhook = p.Deliveries()
	}
	return ev, nil
}

// verifyAuditTail checks the hash chain of the newest audit records.
func (s *Service) verifyAuditTail(head uint64) conformance.AuditTail {
	var t conformance.AuditTail
	if head == 0 {
		return t
	}
	after := uint64(0)
	if head > auditTailRecords {
		after = head - auditTailRecords
	}
	recs, err := s.cfg.Store.Audit(after, auditTailRecords)
	if err != nil {
		t.Err = err.Error()
		return t
	}
	for i, r := range recs {
		switch {
		case r.Hash != r.ComputeHash():
			t.Err = fmt.Sprintf("audit record %d was altered", r.Seq)
		case i > 0 && (r.Seq != recs[i-1].Seq+1 || r.Prev != recs[i-1].Hash):
			t.Err = fmt.Sprintf("audit record %d does not follow record %d", r.Seq, recs[i-1].Seq)
		}
		if t.Err != "" {
			return t
		}
	}
	if len(recs) == 0 || recs[len(recs)-1].Seq != head {
		t.Err = fmt.Sprintf("the newest records up to %d could not be read", head)
		return t
	}
	t.From, t.To = recs[0].Seq, head
	return t
}

// auditFileCheck reads the newest record of the audit trail's JSON-lines
// copy.
func auditFileCheck(path string, head uint64) conformance.Check {
	c := conformance.Check{Checked: true}
	f, err := os.Open(path)
	if err != nil {
		c.Err = "cannot be read: " + err.Error()
		return c
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		c.Err = "cannot be read: " + err.Error()
		return c
	}
	_, line, err := store.LastLine(f, fi.Size())
	var last store.AuditRecord
	switch {
	case err != nil:
		c.Err = "cannot be read: " + err.Error()
	case line == nil:
		c.Detail = fmt.Sprintf("no record copied yet of %d", head)
	case json.Unmarshal(line, &last) != nil:
		c.Err = "its last line is not an audit record"
	default:
		c.Detail = fmt.Sprintf("newest record copied: %d of %d", last.Seq, head)
	}
	return c
}

func (s *Service) GetConformance(ctx context.Context, req *adminv1.GetConformanceRequest) (*adminv1.GetConformanceResponse, error) {
	ev, err := s.conformanceEvidence(ctx)
	if err != nil {
		return nil, fmt.Errorf("assess conformance: %w", err)
	}
	var target authz.Level
	if req.GetTargetLevel() != 0 {
		target = protoconv.LevelFromProto(req.GetTargetLevel())
	}
	st := conformance.Evaluate(s.cfg.Config, ev, target)
	st.Organization = req.GetOrganization()
	st.AssessedAt = timestamppb.New(ev.Now)
	return &adminv1.GetConformanceResponse{Statement: st}, nil
}
