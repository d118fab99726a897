package maturity_test

import (
	"fmt"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/maturity"
)

func ExampleEvaluate() {
	since := time.Date(2025, 3, 3, 9, 0, 0, 0, time.UTC)
	const agent = "spiffe://example.org/agent/reconciler"
	evidence := func(k maturity.EvidenceKind, ref string) maturity.Evidence {
		return maturity.Evidence{Kind: k, Target: authz.Senior, Reference: ref, RecordedBy: "alice", At: since.AddDate(0, 0, 10)}
	}
	in := maturity.Input{
		Agent:      agent,
		Owner:      "dave",
		Level:      authz.Junior,
		LevelSince: since,
		Now:        since.AddDate(0, 0, 17),
		Outcomes:   maturity.OutcomeStats{Success: 470, Failure: 18, Rejected: 12, Errors: 1},
		Evidence: []maturity.Evidence{
			evidence(maturity.VulnerabilityAssessment, "SEC-101"),
			evidence(maturity.CodeReview, "PR-4521"),
			evidence(maturity.ConfigurationAudit, "SEC-102"),
			evidence(maturity.MetricsBaseline, "DASH-7"),
			evidence(maturity.Improvement, "DASH-8"),
			evidence(maturity.ROI, "FIN-3"),
			evidence(maturity.StakeholderSignOff, "MEMO-12"),
		},
		Incidents: []maturity.Incident{
			{ID: "INC-88", Severity: maturity.Medium, Level: authz.Junior, OpenedAt: since.AddDate(0, 0, 3), ClosedAt: since.AddDate(0, 0, 4)},
		},
		SignOffs: []maturity.SignOff{
			{Signer: "dave", RiskAcceptance: "RA-9", RecordedBy: "dave", Target: authz.Senior, At: since.AddDate(0, 0, 16)},
		},
	}
	r, err := maturity.Evaluate(maturity.DefaultConfig(), in)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s -> %s promotable: %v\n", r.From, r.To, r.Promotable)
	for _, line := range r.Failing() {
		fmt.Println(line)
	}

	to, demote := maturity.DefaultConfig().Demotion(authz.Senior, maturity.Trigger{Kind: maturity.TriggerIncident, Severity: maturity.Critical})
	fmt.Println("critical incident at senior demotes:", demote, "to", to)
	// Output:
	// junior -> senior promotable: false
	// performance: time at level: 17d at junior, needs 28d (11d to go)
	// performance: success rate: success 94.0% (470/500), needs > 95%
	// security: pen_test: none for senior since 2025-03-03
	// incidents: root cause analysis: missing for INC-88 (closed 2025-03-07)
	// governance: sign-off: 0 approvers for senior, needs 1 other than the owner; not counted: dave (the owner)
	// critical incident at senior demotes: true to junior
}
