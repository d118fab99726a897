package maturity_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/maturity"
)

const agent = "spiffe://example.org/agent/reconciler"

var t0 = time.Date(2025, 1, 6, 0, 0, 0, 0, time.UTC)

// day returns the time n days after t0.
func day(n int) time.Time { return t0.Add(time.Duration(n) * 24 * time.Hour) }

var allKinds = []maturity.EvidenceKind{
	maturity.VulnerabilityAssessment, maturity.CodeReview, maturity.ConfigurationAudit, maturity.PenTest, maturity.AdversarialTest,
	maturity.MetricsBaseline, maturity.Improvement, maturity.ROI, maturity.StakeholderSignOff,
}

// config is the default configuration with dave, the agent's owner, among
// the authorities, so that only the owner rule keeps him from counting.
func config() maturity.Config {
	c := maturity.DefaultConfig()
	c.Authorities = []string{"carol", "dave", "erin"}
	return c
}

// ready returns an input on which an agent at from, since t0, passes every
// gate for promotion to the next level.
func ready(from authz.Level) maturity.Input {
	to := from + 1
	in := maturity.Input{
		Agent:      agent,
		Owner:      "dave",
		Level:      from,
		LevelSince: t0,
		Now:        day(60),
		Outcomes:   maturity.OutcomeStats{Success: 995, Failure: 3, Rejected: 2, Errors: 5},
		Incidents: []maturity.Incident{
			{ID: "INC-1", Severity: maturity.Low, Level: from, OpenedAt: day(2), ClosedAt: day(3), RCA: "RCA-1"},
		},
		SignOffs: []maturity.SignOff{{Signer: "carol", RiskAcceptance: "RA-1", RecordedBy: "carol", Target: to, At: day(9)}},
	}
	if to == authz.Principal {
		in.SignOffs = append(in.SignOffs, maturity.SignOff{Signer: "erin", RiskAcceptance: "RA-2", RecordedBy: "erin", Target: to, At: day(9)})
	}
	for _, k := range allKinds {
		in.Evidence = append(in.Evidence, maturity.Evidence{Kind: k, Target: to, Reference: "DOC-" + string(k), RecordedBy: "alice", At: day(5)})
	}
	return in
}

func drop(kind maturity.EvidenceKind) func(*maturity.Input) {
	return func(in *maturity.Input) {
		in.Evidence = slices.DeleteFunc(in.Evidence, func(e maturity.Evidence) bool { return e.Kind == kind })
	}
}

func signOffs(s ...maturity.SignOff) func(*maturity.Input) {
	return func(in *maturity.Input) { in.SignOffs = s }
}

func signOff(signer string, target authz.Level) maturity.SignOff {
	return maturity.SignOff{Signer: signer, RiskAcceptance: "RA-" + signer, RecordedBy: signer, Target: target, At: day(9)}
}

func outcomes(s, f, r, e int) func(*maturity.Input) {
	return func(in *maturity.Input) {
		in.Outcomes = maturity.OutcomeStats{Success: s, Failure: f, Rejected: r, Errors: e}
	}
}

func incident(i maturity.Incident) func(*maturity.Input) {
	return func(in *maturity.Input) { in.Incidents = append(in.Incidents, i) }
}

// evaluate runs Evaluate on ready(from) after edit and checks that the
// failing lines are want and that the agent is promotable iff there are none.
func evaluate(t *testing.T, from authz.Level, edit func(*maturity.Input), want []string) {
	t.Helper()
	in := ready(from)
	if edit != nil {
		edit(&in)
	}
	r, err := maturity.Evaluate(config(), in)
	if err != nil {
		t.Fatal(err)
	}
	if r.From != from || r.To != from+1 || r.Agent != agent {
		t.Errorf("report for %s %s -> %s, want %s %s -> %s", r.Agent, r.From, r.To, agent, from, from+1)
	}
	if got := r.Failing(); !slices.Equal(got, want) {
		t.Errorf("Failing():\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if r.Promotable != (len(want) == 0) {
		t.Errorf("Promotable = %v with %d failing checks", r.Promotable, len(want))
	}
}

// TestEachGateAlone fails one gate at a time, for every promotion, and
// checks that it alone blocks it, saying why.
func TestEachGateAlone(t *testing.T) {
	for _, tt := range []struct {
		name string
		from authz.Level
		edit func(*maturity.Input)
		want []string
	}{
		{"intern ready", authz.Intern, nil, nil},
		{"intern too recent", authz.Intern, func(in *maturity.Input) { in.Now = day(10).Add(6 * time.Hour) },
			[]string{"performance: time at level: 10d 6h at intern, needs 14d (3d 18h to go)"}},
		{"intern half an hour short", authz.Intern, func(in *maturity.Input) { in.Now = day(14).Add(-30 * time.Minute) },
			[]string{"performance: time at level: 13d 23h at intern, needs 14d (30m to go)"}},
		{"intern unavailable", authz.Intern, outcomes(950, 0, 0, 50),
			[]string{"performance: availability: availability 95.0% (50 errors in 1000 reports), needs >= 99%"}},
		{"intern without vulnerability assessment", authz.Intern, drop(maturity.VulnerabilityAssessment),
			[]string{"security: vulnerability_assessment: none for junior since 2025-01-06"}},
		{"intern without stakeholder sign-off", authz.Intern, drop(maturity.StakeholderSignOff),
			[]string{"business: stakeholder_signoff: none for junior since 2025-01-06"}},
		{"intern with a critical incident", authz.Intern,
			incident(maturity.Incident{ID: "INC-9", Severity: maturity.Critical, Level: authz.Intern, OpenedAt: day(20), ClosedAt: day(21), RCA: "RCA-9"}),
			[]string{"incidents: critical incidents: at intern: INC-9 (critical, opened 2025-01-26)"}},
		{"intern without sign-off", authz.Intern, signOffs(),
			[]string{"governance: sign-off: 0 approvers for junior, needs 1 other than the owner"}},
		{"intern signed off by the owner only", authz.Intern, signOffs(signOff("dave", authz.Junior)),
			[]string{"governance: sign-off: 0 approvers for junior, needs 1 other than the owner; not counted: dave (the owner)"}},

		{"junior ready", authz.Junior, nil, nil},
		{"junior too recent", authz.Junior, func(in *maturity.Input) { in.Now = day(17) },
			[]string{"performance: time at level: 17d at junior, needs 28d (11d to go)"}},
		{"junior at exactly 95% success", authz.Junior, outcomes(95, 3, 2, 0),
			[]string{"performance: success rate: success 95.0% (95/100), needs > 95%"}},
		{"junior with too few outcome reports", authz.Junior, outcomes(10, 2, 0, 0),
			[]string{"performance: success rate: 12 outcome reports, needs 20 before rates count (8 more)"}},
		{"junior with nothing but errors", authz.Junior, outcomes(0, 0, 0, 20), []string{
			"performance: success rate: no success, failure or rejection among 20 reports, needs > 95%",
			"performance: availability: availability 0.0% (20 errors in 20 reports), needs >= 99%",
		}},
		{"junior without pen test", authz.Junior, drop(maturity.PenTest),
			[]string{"security: pen_test: none for senior since 2025-01-06"}},
		{"junior without ROI", authz.Junior, drop(maturity.ROI),
			[]string{"business: roi: none for senior since 2025-01-06"}},
		{"junior with an open high incident", authz.Junior,
			incident(maturity.Incident{ID: "INC-10", Severity: maturity.High, Level: authz.Junior, OpenedAt: day(26)}),
			[]string{"incidents: open incidents: still open: INC-10 (high, opened 2025-02-01)"}},
		{"junior signed off without risk acceptance", authz.Junior,
			signOffs(maturity.SignOff{Signer: "carol", RecordedBy: "carol", Target: authz.Senior, At: day(9)}),
			[]string{"governance: sign-off: 0 approvers for senior, needs 1 other than the owner; not counted: carol (no risk acceptance)"}},
		{"junior signed off by the owner only", authz.Junior, signOffs(signOff("dave", authz.Senior)),
			[]string{"governance: sign-off: 0 approvers for senior, needs 1 other than the owner; not counted: dave (the owner)"}},

		{"senior ready", authz.Senior, nil, nil},
		{"senior an hour short", authz.Senior, func(in *maturity.Input) { in.Now = day(56).Add(-time.Hour) },
			[]string{"performance: time at level: 55d 23h at senior, needs 56d (1h to go)"}},
		{"senior at exactly 99% success", authz.Senior, outcomes(990, 10, 0, 0),
			[]string{"performance: success rate: success 99.0% (990/1000), needs > 99%"}},
		{"senior without adversarial test", authz.Senior, drop(maturity.AdversarialTest),
			[]string{"security: adversarial_test: none for principal since 2025-01-06"}},
		{"senior without improvement", authz.Senior, drop(maturity.Improvement),
			[]string{"business: improvement: none for principal since 2025-01-06"}},
		{"senior with an incident lacking RCA", authz.Senior, func(in *maturity.Input) { in.Incidents[0].RCA = " " },
			[]string{"incidents: root cause analysis: missing for INC-1 (closed 2025-01-09)"}},
		{"senior with one approver", authz.Senior, signOffs(signOff("carol", authz.Principal)),
			[]string{"governance: sign-off: 1 approver (carol) for principal, needs 2 other than the owner"}},
		{"senior with one approver and the owner", authz.Senior, signOffs(signOff("carol", authz.Principal), signOff("dave", authz.Principal)),
			[]string{"governance: sign-off: 1 approver (carol) for principal, needs 2 other than the owner; not counted: dave (the owner)"}},
		{"senior with one approver twice", authz.Senior, signOffs(signOff("carol", authz.Principal), signOff("carol", authz.Principal)),
			[]string{"governance: sign-off: 1 approver (carol) for principal, needs 2 other than the owner"}},
		{"senior with one approver and an outsider", authz.Senior, signOffs(signOff("carol", authz.Principal), signOff("mallory", authz.Principal)),
			[]string{"governance: sign-off: 1 approver (carol) for principal, needs 2 other than the owner; not counted: mallory (not an authority)"}},
		{"senior with two approvers and the owner", authz.Senior,
			signOffs(signOff("dave", authz.Principal), signOff("carol", authz.Principal), signOff("erin", authz.Principal)), nil},
	} {
		t.Run(tt.name, func(t *testing.T) { evaluate(t, tt.from, tt.edit, tt.want) })
	}
}

// TestOnlyThisPromotionsRecords checks that evidence and sign-offs count
// only if made for this promotion: for the target level, since LevelSince.
func TestOnlyThisPromotionsRecords(t *testing.T) {
	before := func(kind maturity.EvidenceKind, when time.Time, target authz.Level) func(*maturity.Input) {
		return func(in *maturity.Input) {
			for i := range in.Evidence {
				if in.Evidence[i].Kind == kind {
					in.Evidence[i].At, in.Evidence[i].Target = when, target
				}
			}
		}
	}
	for _, tt := range []struct {
		name string
		edit func(*maturity.Input)
		want []string
	}{
		{"evidence before LevelSince", before(maturity.CodeReview, t0.Add(-time.Second), authz.Senior),
			[]string{"security: code_review: none for senior since 2025-01-06 (ignored: 1 recorded earlier)"}},
		{"evidence at LevelSince", before(maturity.CodeReview, t0, authz.Senior), nil},
		{"evidence before LevelSince and since", func(in *maturity.Input) {
			in.Evidence = append(in.Evidence, maturity.Evidence{Kind: maturity.ROI, Target: authz.Senior, Reference: "OLD", At: day(-30)})
		}, nil},
		{"evidence for another level", before(maturity.MetricsBaseline, day(5), authz.Junior),
			[]string{"business: metrics_baseline: none for senior since 2025-01-06"}},
		{"sign-off before LevelSince", signOffs(maturity.SignOff{Signer: "carol", RiskAcceptance: "RA-1", RecordedBy: "carol", Target: authz.Senior, At: day(-1)}),
			[]string{"governance: sign-off: 0 approvers for senior, needs 1 other than the owner; not counted: carol (signed 2025-01-05, before this level)"}},
		{"sign-off before LevelSince and since", signOffs(
			maturity.SignOff{Signer: "carol", RiskAcceptance: "RA-0", RecordedBy: "carol", Target: authz.Senior, At: day(-1)},
			signOff("carol", authz.Senior)), nil},
		{"sign-off for another level", signOffs(signOff("carol", authz.Junior)),
			[]string{"governance: sign-off: 0 approvers for senior, needs 1 other than the owner"}},
		{"sign-off named by someone else", signOffs(maturity.SignOff{Signer: "carol", RiskAcceptance: "RA-1", RecordedBy: "alice", Target: authz.Senior, At: day(9)}),
			[]string{"governance: sign-off: 0 approvers for senior, needs 1 other than the owner; not counted: carol (named by alice, not signed by the signer's own identity)"}},
		{"sign-off by the agent or nobody", signOffs(signOff(agent, authz.Senior), signOff("", authz.Senior)),
			[]string{"governance: sign-off: 0 approvers for senior, needs 1 other than the owner; not counted: " + agent + ` (not an authority), "" (no signer)`}},
	} {
		t.Run(tt.name, func(t *testing.T) { evaluate(t, authz.Junior, tt.edit, tt.want) })
	}
}

func TestAgentCannotSignOwnPromotion(t *testing.T) {
	c := maturity.DefaultConfig() // anyone recorded may sign off
	in := ready(authz.Junior)
	in.SignOffs = []maturity.SignOff{signOff(agent, authz.Senior)}
	r, err := maturity.Evaluate(c, in)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"governance: sign-off: 0 approvers for senior, needs 1 other than the owner; not counted: " + agent + " (the agent itself)"}
	if got := r.Failing(); !slices.Equal(got, want) || r.Promotable {
		t.Errorf("Failing() = %q, Promotable %v; want %q", got, r.Promotable, want)
	}
}

func TestIncidents(t *testing.T) {
	for _, tt := range []struct {
		name string
		inc  []maturity.Incident
		want []string
	}{
		{"critical at the previous level", []maturity.Incident{
			{ID: "INC-2", Severity: maturity.Critical, Level: authz.Intern, OpenedAt: day(-20), ClosedAt: day(-19), RCA: "RCA-2"},
		}, nil},
		{"critical at this level in an earlier stint", []maturity.Incident{
			{ID: "INC-2", Severity: maturity.Critical, Level: authz.Junior, OpenedAt: day(-40), ClosedAt: day(-39), RCA: "RCA-2"},
		}, nil},
		{"critical at this level opened at LevelSince", []maturity.Incident{
			{ID: "INC-2", Severity: maturity.Critical, Level: authz.Junior, OpenedAt: t0, ClosedAt: day(1), RCA: "RCA-2"},
		}, []string{"incidents: critical incidents: at junior: INC-2 (critical, opened 2025-01-06)"}},
		{"open below high", []maturity.Incident{
			{ID: "INC-2", Severity: maturity.Medium, Level: authz.Junior, OpenedAt: day(5)},
		}, nil},
		{"open critical at this level", []maturity.Incident{
			{ID: "INC-2", Severity: maturity.Critical, Level: authz.Junior, OpenedAt: day(5)},
		}, []string{
			"incidents: critical incidents: at junior: INC-2 (critical, opened 2025-01-11)",
			"incidents: open incidents: still open: INC-2 (critical, opened 2025-01-11)",
		}},
		{"open high from an earlier level", []maturity.Incident{
			{ID: "INC-2", Severity: maturity.High, Level: authz.Intern, OpenedAt: day(-5)},
		}, []string{"incidents: open incidents: still open: INC-2 (high, opened 2025-01-01)"}},
		{"closed without RCA at any level", []maturity.Incident{
			{ID: "INC-2", Severity: maturity.Low, Level: authz.Intern, OpenedAt: day(-50), ClosedAt: day(-49)},
			{ID: "INC-3", Severity: maturity.Medium, Level: authz.Junior, OpenedAt: day(4), ClosedAt: day(6)},
			{ID: "INC-4", Severity: maturity.High, Level: authz.Junior, OpenedAt: day(4), ClosedAt: day(6), RCA: "RCA-4"},
		}, []string{"incidents: root cause analysis: missing for INC-2 (closed 2024-11-18); INC-3 (closed 2025-01-12)"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			evaluate(t, authz.Junior, func(in *maturity.Input) { in.Incidents = tt.inc }, tt.want)
		})
	}
}

// render writes every check of r, passing or not.
func render(r maturity.Report) []string {
	var out []string
	for _, g := range r.Gates {
		for _, c := range g.Checks {
			verdict := "FAIL"
			if c.Pass {
				verdict = "pass"
			}
			out = append(out, fmt.Sprintf("%s: %s: %s: %s", g.Name, c.Name, verdict, c.Detail))
		}
	}
	return out
}

func TestReport(t *testing.T) {
	in := ready(authz.Junior)
	in.Outcomes = maturity.OutcomeStats{Success: 481, Failure: 12, Rejected: 7, Errors: 3}
	r, err := maturity.Evaluate(config(), in)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"performance: time at level: pass: 60d at junior, needs 28d",
		"performance: success rate: pass: success 96.2% (481/500), needs > 95%",
		"performance: availability: pass: availability 99.4% (3 errors in 503 reports), needs >= 99%",
		"security: vulnerability_assessment: pass: DOC-vulnerability_assessment by alice on 2025-01-11",
		"security: code_review: pass: DOC-code_review by alice on 2025-01-11",
		"security: configuration_audit: pass: DOC-configuration_audit by alice on 2025-01-11",
		"security: pen_test: pass: DOC-pen_test by alice on 2025-01-11",
		"business: metrics_baseline: pass: DOC-metrics_baseline by alice on 2025-01-11",
		"business: improvement: pass: DOC-improvement by alice on 2025-01-11",
		"business: roi: pass: DOC-roi by alice on 2025-01-11",
		"business: stakeholder_signoff: pass: DOC-stakeholder_signoff by alice on 2025-01-11",
		"incidents: critical incidents: pass: none at junior since 2025-01-06",
		"incidents: open incidents: pass: none of high or critical severity open",
		"incidents: root cause analysis: pass: every closed incident has one",
		"governance: sign-off: pass: 1 approver (carol) for senior, needs 1 other than the owner",
	}
	if got := render(r); !slices.Equal(got, want) {
		t.Errorf("report:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var gates []string
	for _, g := range r.Gates {
		gates = append(gates, g.Name)
		if !g.Pass {
			t.Errorf("gate %s fails", g.Name)
		}
	}
	if want := []string{"performance", "security", "business", "incidents", "governance"}; !slices.Equal(gates, want) {
		t.Errorf("gates %q, want %q", gates, want)
	}
	if !r.Promotable || len(r.Failing()) != 0 {
		t.Errorf("Promotable = %v, Failing() = %q", r.Promotable, r.Failing())
	}
}

func TestLatestEvidenceShown(t *testing.T) {
	in := ready(authz.Intern)
	in.Evidence = append(in.Evidence, maturity.Evidence{Kind: maturity.CodeReview, Target: authz.Junior, Reference: "PR-7", RecordedBy: "bob", At: day(8)})
	r, err := maturity.Evaluate(config(), in)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Gates[1].Checks[1], (maturity.Check{Name: "code_review", Pass: true, Detail: "PR-7 by bob on 2025-01-14"}); got != want {
		t.Errorf("check %+v, want %+v", got, want)
	}
}

// TestAvailabilityBeforeMinOutcomes: with no success rate required (an
// intern), too few reports leave availability unmeasured rather than failing.
func TestAvailabilityBeforeMinOutcomes(t *testing.T) {
	in := ready(authz.Intern)
	in.Outcomes = maturity.OutcomeStats{Success: 2, Errors: 3}
	r, err := maturity.Evaluate(config(), in)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"performance: time at level: pass: 60d at intern, needs 14d",
		"performance: availability: pass: not measured: 5 outcome reports, counts from 20",
	}
	if got := render(r)[:2]; !slices.Equal(got, want) || !r.Promotable {
		t.Errorf("got %q (promotable %v), want %q", got, r.Promotable, want)
	}
}

// TestSelfReportedOutcomes: an agent's own successes count at
// SelfReportedWeight (nothing by default); its own failures in full.
func TestSelfReportedOutcomes(t *testing.T) {
	for _, tt := range []struct {
		name   string
		weight float64
		self   maturity.OutcomeStats
		want   string
	}{
		{"successes alone, by default", 0, maturity.OutcomeStats{Success: 500},
			"performance: success rate: FAIL: 0 outcome reports, needs 20 before rates count (20 more); 500 self-reported successes counted at weight 0"},
		{"failures count in full", 0, maturity.OutcomeStats{Success: 100, Failure: 30},
			"performance: success rate: FAIL: success 0.0% (0/30), needs > 95%; 100 self-reported successes counted at weight 0"},
		{"a weight of one half", 0.5, maturity.OutcomeStats{Success: 50, Failure: 1},
			"performance: success rate: pass: success 96.2% (25/26), needs > 95%; 50 self-reported successes counted at weight 0.5"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := config()
			c.SelfReportedWeight = tt.weight
			in := ready(authz.Junior)
			in.Outcomes, in.SelfReported = maturity.OutcomeStats{}, tt.self
			r, err := maturity.Evaluate(c, in)
			if err != nil {
				t.Fatal(err)
			}
			if got := render(r)[1]; got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestEvaluateErrors(t *testing.T) {
	for _, tt := range []struct {
		name string
		edit func(*maturity.Config, *maturity.Input)
		want string
	}{
		{"principal", func(_ *maturity.Config, in *maturity.Input) { in.Level = authz.Principal },
			`maturity: agent "` + agent + `" is principal, the top level: there is no promotion from it`},
		{"no level", func(_ *maturity.Config, in *maturity.Input) { in.Level = 0 },
			`maturity: agent "` + agent + `" has no valid level (level(0))`},
		{"no LevelSince", func(_ *maturity.Config, in *maturity.Input) { in.LevelSince = time.Time{} },
			`maturity: agent "` + agent + `": LevelSince is not set`},
		{"no Now", func(_ *maturity.Config, in *maturity.Input) { in.Now = time.Time{} },
			`maturity: agent "` + agent + `": Now is not set`},
		{"Now before LevelSince", func(_ *maturity.Config, in *maturity.Input) { in.Now = day(-1) },
			`maturity: agent "` + agent + `": Now (2025-01-05T00:00:00Z) is before LevelSince (2025-01-06T00:00:00Z)`},
		{"negative outcomes", func(_ *maturity.Config, in *maturity.Input) { in.Outcomes.Rejected = -1 },
			`maturity: agent "` + agent + `": negative outcome count {Success:995 Failure:3 Rejected:-1 Errors:5}`},
		{"invalid config", func(c *maturity.Config, _ *maturity.Input) { c.MinOutcomes = 0 },
			"maturity: MinOutcomes is 0; want at least 1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, in := config(), ready(authz.Junior)
			tt.edit(&c, &in)
			r, err := maturity.Evaluate(c, in)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("error %v, want %s", err, tt.want)
			}
			if r.Gates != nil {
				t.Errorf("report with gates alongside an error: %+v", r)
			}
		})
	}
}
