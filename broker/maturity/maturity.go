package maturity

import (
	"fmt"
	"strings"
	"time"

	"github.com/agentictrust/atf/authz"
)

// Severity grades an incident or an anomaly (package monitor grades the
// anomalies it raises with it). The zero value is not a severity. Its text
// form is its String.
type Severity int

// Severities, in increasing order.
const (
	Low Severity = iota + 1
	Medium
	High
	Critical
)

var severityNames = [...]string{Low: "low", Medium: "medium", High: "high", Critical: "critical"}

func (s Severity) String() string {
	if s.Valid() {
		return severityNames[s]
	}
	return fmt.Sprintf("severity(%d)", int(s))
}

// Valid reports whether s is one of the four severities.
func (s Severity) Valid() bool { return s >= Low && s <= Critical }

// ParseSeverity parses a severity name as written by String.
func ParseSeverity(s string) (Severity, error) {
	for v := Low; v <= Critical; v++ {
		if severityNames[v] == s {
			return v, nil
		}
	}
	return 0, fmt.Errorf("maturity: unknown severity %q (want low, medium, high or critical)", s)
}

// MarshalText encodes s as its String.
func (s Severity) MarshalText() ([]byte, error) {
	if !s.Valid() {
		return nil, fmt.Errorf("maturity: cannot encode %s", s)
	}
	return []byte(s.String()), nil
}

// UnmarshalText decodes what MarshalText encodes.
func (s *Severity) UnmarshalText(text []byte) error {
	v, err := ParseSeverity(string(text))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// EvidenceKind is what a piece of evidence shows.
type EvidenceKind string

// Evidence kinds. The first five feed the security gate, the rest the
// business gate.
const (
	VulnerabilityAssessment EvidenceKind = "vulnerability_assessment"
	CodeReview              EvidenceKind = "code_review"
	ConfigurationAudit      EvidenceKind = "configuration_audit"
	PenTest                 EvidenceKind = "pen_test"
	AdversarialTest         EvidenceKind = "adversarial_test"
	MetricsBaseline         EvidenceKind = "metrics_baseline"
	Improvement             EvidenceKind = "improvement"
	ROI                     EvidenceKind = "roi"
	StakeholderSignOff      EvidenceKind = "stakeholder_signoff"
)

// requiredEvidence is every evidence kind, in report order, with the gate it
// belongs to and the lowest target level whose promotion needs it.
var requiredEvidence = []struct {
	kind      EvidenceKind
	gate      string
	minTarget authz.Level
}{
	{VulnerabilityAssessment, gateSecurity, authz.Junior},
	{CodeReview, gateSecurity, authz.Junior},
	{ConfigurationAudit, gateSecurity, authz.Junior},
	{PenTest, gateSecurity, authz.Senior},
	{AdversarialTest, gateSecurity, authz.Principal},
	{MetricsBaseline, gateBusiness, authz.Junior},
	{Improvement, gateBusiness, authz.Senior},
	{ROI, gateBusiness, authz.Senior},
	{StakeholderSignOff, gateBusiness, authz.Junior},
}

// ParseEvidenceKind parses an evidence kind name.
func ParseEvidenceKind(s string) (EvidenceKind, error) {
	names := make([]string, len(requiredEvidence))
	for i, r := range requiredEvidence {
		if string(r.kind) == s {
			return r.kind, nil
		}
		names[i] = string(r.kind)
	}
	return "", fmt.Errorf("maturity: unknown evidence kind %q (want one of %s)", s, strings.Join(names, ", "))
}

// OutcomeStats counts outcome reports about an agent since it reached its
// level. The success rate is Success / (Success + Failure + Rejected);
// availability is 1 - Errors / (all four), over the reports of others and
// the agent's own as weighed by Config.SelfReportedWeight.
type OutcomeStats struct {
	Success  int // the action did what was intended
	Failure  int // it did not
	Rejected int // a human turned the recommendation down
	Errors   int // the agent failed to answer at all
}

// Evidence is a security or business record made for a promotion.
type Evidence struct {
	Kind       EvidenceKind
	Target     authz.Level // the level the promotion is to
	Reference  string      // where the report lives: a ticket, a document
	RecordedBy string
	At         time.Time
}

// Incident is an incident involving the agent.
type Incident struct {
	ID       string
	Severity Severity
	Level    authz.Level // the agent's level when the incident was opened
	OpenedAt time.Time
	ClosedAt time.Time // zero while open
	RCA      string    // the root cause analysis, or where it lives
}

// SignOff is a person's approval of a promotion, with the risk they accept.
// It counts only if the signer recorded it (Signer == RecordedBy): a name
// typed by someone else proves nothing.
type SignOff struct {
	Signer         string
	RiskAcceptance string
	RecordedBy     string
	Target         authz.Level
	At             time.Time
}

// Input is what Evaluate needs to know about one agent.
type Input struct {
	Agent      string
	Owner      string // the accountable human; their sign-off alone is not enough
	Level      authz.Level
	LevelSince time.Time // when the agent reached Level
	// Outcomes are those others reported (approvers, the owner's tools,
	// resource servers); SelfReported those the agent reported itself.
	Outcomes     OutcomeStats
	SelfReported OutcomeStats
	Evidence     []Evidence
	Incidents    []Incident
	SignOffs     []SignOff
	Now          time.Time
}

func (in Input) validate() error {
	o, s := in.Outcomes, in.SelfReported
	switch {
	case !in.Level.Valid():
		return fmt.Errorf("maturity: agent %q has no valid level (%s)", in.Agent, in.Level)
	case in.Level == authz.Principal:
		return fmt.Errorf("maturity: agent %q is principal, the top level: there is no promotion from it", in.Agent)
	case in.LevelSince.IsZero():
		return fmt.Errorf("maturity: agent %q: LevelSince is not set", in.Agent)
	case in.Now.IsZero():
		return fmt.Errorf("maturity: agent %q: Now is not set", in.Agent)
	case in.Now.Before(in.LevelSince):
		return fmt.Errorf("maturity: agent %q: Now (%s) is before LevelSince (%s)", in.Agent, in.Now.Format(time.RFC3339), in.LevelSince.Format(time.RFC3339))
	case o.Success < 0 || o.Failure < 0 || o.Rejected < 0 || o.Errors < 0:
		return fmt.Errorf("maturity: agent %q: negative outcome count %+v", in.Agent, o)
	case s.Success < 0 || s.Failure < 0 || s.Rejected < 0 || s.Errors < 0:
		return fmt.Errorf("maturity: agent %q: negative self-reported outcome count %+v", in.Agent, s)
	}
	return nil
}
