package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store/kv"
)

// Records the promotion gates read. Evidence and sign-offs are kept per
// agent in the order recorded; incidents by id; outcome counts per agent
// for its current level (a level change starts them again).
var (
	bucketOutcomes  = []byte("outcomes")
	bucketEvidence  = []byte("evidence")
	bucketSignOffs  = []byte("sign_offs")
	bucketIncidents = []byte("incidents")
)

// OutcomeCounts counts outcome reports by how the action ended.
type OutcomeCounts struct {
	Success  int `json:"success"`
	Failure  int `json:"failure"`
	Rejected int `json:"rejected"`
	Errors   int `json:"errors"`
}

// Outcomes counts the outcome reports about an agent at one level: those
// others made (Attested) and those the agent made of itself (Self).
type Outcomes struct {
	Level    authz.Level   `json:"level"`
	Self     OutcomeCounts `json:"self"`
	Attested OutcomeCounts `json:"attested"`
}

// Evidence is a security or business record for a promotion.
type Evidence struct {
	Agent      string      `json:"agent"`
	Kind       string      `json:"kind"`
	Target     authz.Level `json:"target"`
	Reference  string      `json:"reference"`
	RecordedBy string      `json:"recorded_by"`
	At         time.Time   `json:"at"`
}

// SignOff is a person's approval of a promotion and the risk they accept.
type SignOff struct {
	Agent          string      `json:"agent"`
	Signer         string      `json:"signer"`
	RiskAcceptance string      `json:"risk_acceptance"`
	Target         authz.Level `json:"target"`
	RecordedBy     string      `json:"recorded_by"`
	At             time.Time   `json:"at"`
}

// Incident is an incident involving an agent.
type Incident struct {
	ID       string      `json:"id"`
	Agent    string      `json:"agent"`
	Severity string      `json:"severity"`
	Summary  string      `json:"summary"`
	Level    authz.Level `json:"level"`
	OpenedAt time.Time   `json:"opened_at"`
	OpenedBy string      `json:"opened_by"`
	ClosedAt time.Time   `json:"closed_at,omitzero"`
	ClosedBy string      `json:"closed_by,omitempty"`
	RCA      string      `json:"rca,omitempty"`
}

// OutcomeReport is a report of how one of an agent's tasks ended, by the
// agent itself (Reporter == Agent: self-reported) or by someone else.
type OutcomeReport struct {
	Agent    string
	Reporter string
	// Outcome is "success", "failure", "rejected" or "error".
	Outcome    string
	Role       string
	DecisionID string
	// Message is the agent's free text, redacted by the caller.
	Message string
}

// RecordOutcome counts r at its agent's current level and, in the same
// transaction, appends its outcome_reported audit record.
func (s *Store) RecordOutcome(r OutcomeReport) error {
	err := s.group(func(tx kv.Tx) error {
		if err := s.room(tx); err != nil {
			return err
		}
		a, err := getAgent(tx, r.Agent)
		if err != nil {
			return err
		}
		o, err := outcomesOf(tx, a)
		if err != nil {
			return err
		}
		self := r.Reporter == r.Agent
		counts := &o.Attested
		if self {
			counts = &o.Self
		}
		switch r.Outcome {
		case "success":
			counts.Success++
		case "failure":
			counts.Failure++
		case "rejected":
			counts.Rejected++
		case "error":
			counts.Errors++
		default:
			return refuse(ErrInvalid, "outcome %q", r.Outcome)
		}
		if err := putJSON(tx, bucketOutcomes, r.Agent, o); err != nil {
			return err
		}
		return s.appendAudit(tx, AuditRecord{Time: s.now().UTC(), Kind: "outcome_reported", Actor: r.Reporter, Subject: r.Outcome, Detail: map[string]string{
			"agent": r.Agent, "outcome": r.Outcome, "role": r.Role, "decision_id": r.DecisionID, "message": r.Message, "level": a.Level.String(),
			"self_reported": strconv.FormatBool(self),
		}})
	})
	if err != nil {
		return fmt.Errorf("store: record outcome: %w", err)
	}
	return nil
}

// AgentOutcomes returns the agent's outcome counts at its current level.
func (s *Store) AgentOutcomes(agent string) (Outcomes, error) {
	var o Outcomes
	err := s.view(func(tx kv.Tx) error {
		a, err := getAgent(tx, agent)
		if err != nil {
			return err
		}
		o, err = outcomesOf(tx, a)
		return err
	})
	return o, err
}

func outcomesOf(tx kv.Tx, a Agent) (Outcomes, error) {
	o := Outcomes{Level: a.Level}
	if v := tx.Bucket(bucketOutcomes).Get([]byte(a.ID)); v != nil {
		// Counts stored before reports by others were kept apart (flat,
		// all made by the agent) are self-reported.
		var stored struct {
			Outcomes
			OutcomeCounts
		}
		if err := json.Unmarshal(v, &stored); err != nil {
			return o, fmt.Errorf("store: decode outcomes of %s: %w", a.ID, err)
		}
		if stored.Level == a.Level {
			o = stored.Outcomes
			o.Self.Success += stored.Success
			o.Self.Failure += stored.Failure
			o.Self.Rejected += stored.Rejected
			o.Self.Errors += stored.Errors
		}
	}
	return o, nil
}

// AddEvidence records evidence for a promotion, audited.
func (s *Store) AddEvidence(e Evidence) error {
	return s.addRecord(bucketEvidence, e.Agent, e, AuditRecord{Time: e.At, Kind: "evidence_recorded", Actor: e.RecordedBy, Subject: e.Agent,
		Detail: map[string]string{"agent": e.Agent, "kind": e.Kind, "target": e.Target.String(), "reference": e.Reference}})
}

// AddSignOff records a sign-off for a promotion, audited.
func (s *Store) AddSignOff(so SignOff) error {
	return s.addRecord(bucketSignOffs, so.Agent, so, AuditRecord{Time: so.At, Kind: "promotion_signed_off", Actor: so.RecordedBy, Subject: so.Agent,
		Detail: map[string]string{"agent": so.Agent, "signer": so.Signer, "target": so.Target.String(), "risk_acceptance": so.RiskAcceptance}})
}

// AgentEvidence returns the evidence recorded for agent, oldest first.
func (s *Store) AgentEvidence(agent string) ([]Evidence, error) {
	return listRecords[Evidence](s, bucketEvidence, agent)
}

// AgentSignOffs returns the sign-offs recorded for agent, oldest first.
func (s *Store) AgentSignOffs(agent string) ([]SignOff, error) {
	return listRecords[SignOff](s, bucketSignOffs, agent)
}

// addRecord appends v under agent in bucket, with its audit record.
func (s *Store) addRecord(bucket []byte, agent string, v any, rec AuditRecord) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	err = s.update(func(tx kv.Tx) error {
		if err := s.room(tx); err != nil {
			return err
		}
		if _, err := getAgent(tx, agent); err != nil {
			return err
		}
		b := tx.Bucket(bucket)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		if err := b.Put(binaryPair(agent, seq), raw); err != nil {
			return err
		}
		return s.appendAudit(tx, rec)
	})
	if err != nil {
		return fmt.Errorf("store: record %s: %w", rec.Kind, err)
	}
	return nil
}

func binaryPair(agent string, seq uint64) []byte { return append(pair(agent, ""), seqKey(seq)...) }

func listRecords[T any](s *Store, bucket []byte, agent string) ([]T, error) {
	var out []T
	err := s.view(func(tx kv.Tx) error {
		prefix := pair(agent, "")
		c := tx.Bucket(bucket).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var r T
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("store: decode record of %s: %w", agent, err)
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// OpenIncident records a new incident against an agent, audited. The
// agent's level at that moment is kept with it.
func (s *Store) OpenIncident(in Incident) (Incident, error) {
	err := s.update(func(tx kv.Tx) error {
		if err := s.room(tx); err != nil {
			return err
		}
		a, err := getAgent(tx, in.Agent)
		if err != nil {
			return err
		}
		if a.Status != Active {
			return refuse(ErrDeregistered, "%s", a.ID)
		}
		in.Level = a.Level
		if err := putJSON(tx, bucketIncidents, in.ID, in); err != nil {
			return err
		}
		return s.appendAudit(tx, AuditRecord{Time: in.OpenedAt, Kind: "incident_opened", Actor: in.OpenedBy, Subject: in.ID,
			Detail: map[string]string{"agent": in.Agent, "severity": in.Severity, "summary": in.Summary, "level": a.Level.String()}})
	})
	if err != nil {
		return Incident{}, fmt.Errorf("store: open incident: %w", err)
	}
	return in, nil
}

// UpdateIncident changes an open incident's severity (if sev is not "")
// and appends note to its summary, audited. It returns the incident and
// its severity before the change.
func (s *Store) UpdateIncident(id, actor, sev, note string) (Incident, string, error) {
	var in Incident
	var before string
	err := s.update(func(tx kv.Tx) error {
		v := tx.Bucket(bucketIncidents).Get([]byte(id))
		if v == nil {
			return refuse(ErrNotFound, "incident %s", id)
		}
		if err := json.Unmarshal(v, &in); err != nil {
			return err
		}
		if !in.ClosedAt.IsZero() {
			return refuse(ErrConflict, "incident %s is closed", id)
		}
		before = in.Severity
		if sev != "" {
			in.Severity = sev
		}
		if note != "" {
			in.Summary += "\n" + s.now().UTC().Format(time.RFC3339) + " " + actor + ": " + note
		}
		if err := putJSON(tx, bucketIncidents, id, in); err != nil {
			return err
		}
		return s.appendAudit(tx, AuditRecord{Time: s.now().UTC(), Kind: "incident_updated", Actor: actor, Subject: id,
			Detail: map[string]string{"agent": in.Agent, "severity": in.Severity, "previous_severity": before, "note": note}})
	})
	if err != nil {
		return Incident{}, "", fmt.Errorf("store: update incident: %w", err)
	}
	return in, before, nil
}

// CloseIncident closes an open incident with its root-cause analysis.
func (s *Store) CloseIncident(id, actor, rca string) (Incident, error) {
	var in Incident
	err := s.update(func(tx kv.Tx) error {
		v := tx.Bucket(bucketIncidents).Get([]byte(id))
		if v == nil {
			return refuse(ErrNotFound, "incident %s", id)
		}
		if err := json.Unmarshal(v, &in); err != nil {
			return err
		}
		if !in.ClosedAt.IsZero() {
			return refuse(ErrConflict, "incident %s is already closed", id)
		}
		in.ClosedAt, in.ClosedBy, in.RCA = s.now().UTC(), actor, rca
		if err := putJSON(tx, bucketIncidents, id, in); err != nil {
			return err
		}
		return s.appendAudit(tx, AuditRecord{Time: in.ClosedAt, Kind: "incident_closed", Actor: actor, Subject: id,
			Detail: map[string]string{"agent": in.Agent, "severity": in.Severity, "rca": rca}})
	})
	if err != nil {
		return Incident{}, fmt.Errorf("store: close incident: %w", err)
	}
	return in, nil
}

// Incident returns the incident with id.
func (s *Store) Incident(id string) (Incident, error) {
	var in Incident
	err := s.view(func(tx kv.Tx) error {
		v := tx.Bucket(bucketIncidents).Get([]byte(id))
		if v == nil {
			return refuse(ErrNotFound, "incident %s", id)
		}
		return json.Unmarshal(v, &in)
	})
	return in, err
}

// Incidents returns the incidents of agent ("" for all), oldest first.
func (s *Store) Incidents(agent string, openOnly bool) ([]Incident, error) {
	var out []Incident
	err := s.view(func(tx kv.Tx) error {
		return tx.Bucket(bucketIncidents).ForEach(func(k, v []byte) error {
			var in Incident
			if err := json.Unmarshal(v, &in); err != nil {
				return fmt.Errorf("store: decode incident %s: %w", k, err)
			}
			if (agent == "" || in.Agent == agent) && (!openOnly || in.ClosedAt.IsZero()) {
				out = append(out, in)
			}
			return nil
		})
	})
	slices.SortFunc(out, func(a, b Incident) int { return a.OpenedAt.Compare(b.OpenedAt) })
	return out, err
}

func putJSON(tx kv.Tx, bucket []byte, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put([]byte(key), raw)
}

// SetLevel changes an agent's level as action (ActionPromote, ActionDemote,
// ActionRollback or ActionMigrate), recorded in its history with reason and audited as
// "agent_" and the action, and returns the agent. A non-zero
// expectedRevision refuses a concurrent change (ErrConflict).
func (s *Store) SetLevel(id, actor, action, reason string, level authz.Level, expectedRevision uint64) (Agent, error) {
	switch action {
	case ActionPromote, ActionDemote, ActionRollback, ActionMigrate:
	default:
		return Agent{}, fmt.Errorf("store: set level: %w: action %q", ErrInvalid, action)
	}
	a, err := s.modify(id, actor, expectedRevision, AgentChange{Action: action, Reason: reason}, func(a *Agent) { a.Level = level })
	if err != nil {
		return Agent{}, fmt.Errorf("store: set level: %w", err)
	}
	return a, nil
}

// AgentAt returns the agent's record as of revision.
func (s *Store) AgentAt(id string, revision uint64) (Agent, error) {
	hist, err := s.AgentHistory(id)
	if err != nil {
		return Agent{}, err
	}
	for _, ch := range hist {
		if ch.Revision == revision {
			return ch.Agent, nil
		}
	}
	return Agent{}, refuse(ErrNotFound, "agent %s has no revision %d", id, revision)
}
