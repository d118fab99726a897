package maturity

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/agentictrust/atf/authz"
)

// Gate names, in report order.
const (
	gatePerformance = "performance"
	gateSecurity    = "security"
	gateBusiness    = "business"
	gateIncidents   = "incidents"
	gateGovernance  = "governance"
)

// Check is one criterion of a gate, with the numbers behind the verdict.
type Check struct {
	Name   string
	Pass   bool
	Detail string
}

// Gate is one of the five promotion gates; it passes if all its checks do.
type Gate struct {
	Name   string
	Pass   bool
	Checks []Check
}

// Report is the outcome of Evaluate for the promotion From → To.
type Report struct {
	Agent      string
	From, To   authz.Level
	Gates      []Gate // performance, security, business, incidents, governance
	Promotable bool   // every gate passes
}

// Failing returns "gate: check: detail" for each failing check, in report
// order; it is empty if r is promotable.
func (r Report) Failing() []string {
	var out []string
	for _, g := range r.Gates {
		for _, c := range g.Checks {
			if !c.Pass {
				out = append(out, g.Name+": "+c.Name+": "+c.Detail)
			}
		}
	}
	return out
}

// Evaluate checks in's agent against the five gates for a promotion to the
// next level. It fails if c is invalid, if the agent is at Principal (there
// is no next level) or has no valid level, or if in is inconsistent.
func Evaluate(c Config, in Input) (Report, error) {
	if err := c.Validate(); err != nil {
		return Report{}, err
	}
	if err := in.validate(); err != nil {
		return Report{}, err
	}
	to := in.Level + 1
	r := Report{Agent: in.Agent, From: in.Level, To: to, Gates: []Gate{
		gate(gatePerformance, performance(c, in)),
		gate(gateSecurity, evidence(gateSecurity, in, to)),
		gate(gateBusiness, evidence(gateBusiness, in, to)),
		gate(gateIncidents, incidents(in)),
		gate(gateGovernance, []Check{governance(c, in, to)}),
	}}
	r.Promotable = !slices.ContainsFunc(r.Gates, func(g Gate) bool { return !g.Pass })
	return r, nil
}

func gate(name string, checks []Check) Gate {
	return Gate{Name: name, Checks: checks, Pass: !slices.ContainsFunc(checks, func(c Check) bool { return !c.Pass })}
}

func performance(c Config, in Input) []Check {
	at, need := in.Now.Sub(in.LevelSince), c.MinTimeAtLevel[in.Level]
	held := Check{Name: "time at level", Pass: at >= need, Detail: fmt.Sprintf("%s at %s, needs %s", span(at), in.Level, span(need))}
	if !held.Pass {
		held.Detail += fmt.Sprintf(" (%s to go)", span(ceil(need-at)))
	}
	checks := []Check{held}

	o := weigh(c, in)
	total := o.success + o.failure + o.rejected + o.errors
	counted := total >= float64(c.MinOutcomes)
	if threshold, ok := c.MinSuccessRate[in.Level]; ok {
		s := Check{Name: "success rate"}
		decided := o.success + o.failure + o.rejected
		switch {
		case !counted:
			s.Detail = fmt.Sprintf("%s outcome reports, needs %d before rates count (%s more)", num(total), c.MinOutcomes, num(float64(c.MinOutcomes)-total))
		case decided == 0:
			s.Detail = fmt.Sprintf("no success, failure or rejection among %s reports, needs > %s", num(total), percent(threshold))
		default:
			rate := o.success / decided
			s.Pass = rate > threshold
			s.Detail = fmt.Sprintf("success %.1f%% (%s/%s), needs > %s", rate*100, num(o.success), num(decided), percent(threshold))
		}
		s.Detail += o.note
		checks = append(checks, s)
	}

	// Too few reports fail the success rate where one is required; on its
	// own availability is simply not measured yet.
	a := Check{Name: "availability", Pass: true, Detail: fmt.Sprintf("not measured: %s outcome reports, counts from %d", num(total), c.MinOutcomes)}
	if counted {
		rate := (total - o.errors) / total
		a.Pass = rate >= c.MinAvailability
		a.Detail = fmt.Sprintf("availability %.1f%% (%s errors in %s reports), needs >= %s", rate*100, num(o.errors), num(total), percent(c.MinAvailability))
	}
	return append(checks, a)
}

// weighed are the outcome counts the performance gate reads.
type weighed struct {
	success, failure, rejected, errors float64
	note                               string // what was discounted, for the detail of a check
}

// weigh counts the reports of others in full, and the agent's own: its
// failures, rejections and errors in full (a report against itself is
// credible), its successes at Config.SelfReportedWeight.
func weigh(c Config, in Input) weighed {
	o, s := in.Outcomes, in.SelfReported
	w := weighed{
		success:  float64(o.Success) + c.SelfReportedWeight*float64(s.Success),
		failure:  float64(o.Failure + s.Failure),
		rejected: float64(o.Rejected + s.Rejected),
		errors:   float64(o.Errors + s.Errors),
	}
	if s.Success > 0 {
		w.note = fmt.Sprintf("; %d self-reported successes counted at weight %s", s.Success, num(c.SelfReportedWeight))
	}
	return w
}

// num writes a count with no more digits than it has (at most two).
func num(f float64) string { return strconv.FormatFloat(math.Round(f*100)/100, 'f', -1, 64) }

// evidence checks the evidence kinds gate needs for a promotion to to.
func evidence(gate string, in Input, to authz.Level) []Check {
	var checks []Check
	for _, r := range requiredEvidence {
		if r.gate != gate || to < r.minTarget {
			continue
		}
		var latest *Evidence
		stale := 0
		for i, e := range in.Evidence {
			switch {
			case e.Kind != r.kind || e.Target != to:
			case e.At.Before(in.LevelSince):
				stale++
			case latest == nil || e.At.After(latest.At):
				latest = &in.Evidence[i]
			}
		}
		c := Check{Name: string(r.kind), Pass: latest != nil}
		if c.Pass {
			c.Detail = fmt.Sprintf("%s by %s on %s", latest.Reference, latest.RecordedBy, date(latest.At))
		} else {
			c.Detail = fmt.Sprintf("none for %s since %s", to, date(in.LevelSince))
			if stale > 0 {
				c.Detail += fmt.Sprintf(" (ignored: %d recorded earlier)", stale)
			}
		}
		checks = append(checks, c)
	}
	return checks
}

func incidents(in Input) []Check {
	var critical, open, noRCA []string
	for _, i := range in.Incidents {
		opened := fmt.Sprintf("%s (%s, opened %s)", i.ID, i.Severity, date(i.OpenedAt))
		if i.Severity == Critical && i.Level == in.Level && !i.OpenedAt.Before(in.LevelSince) {
			critical = append(critical, opened)
		}
		switch {
		case i.ClosedAt.IsZero() && i.Severity >= High:
			open = append(open, opened)
		case !i.ClosedAt.IsZero() && strings.TrimSpace(i.RCA) == "":
			noRCA = append(noRCA, fmt.Sprintf("%s (closed %s)", i.ID, date(i.ClosedAt)))
		}
	}
	return []Check{
		listed("critical incidents", "at "+in.Level.String()+": ", critical, fmt.Sprintf("none at %s since %s", in.Level, date(in.LevelSince))),
		listed("open incidents", "still open: ", open, "none of high or critical severity open"),
		listed("root cause analysis", "missing for ", noRCA, "every closed incident has one"),
	}
}

// listed is a check that passes if nothing is listed against it.
func listed(name, prefix string, items []string, none string) Check {
	if len(items) == 0 {
		return Check{Name: name, Pass: true, Detail: none}
	}
	return Check{Name: name, Detail: prefix + strings.Join(items, "; ")}
}

// SignedOff is the governance gate's check alone, for placing in's agent
// at to, which may be more than one level up (a migration): the sign-offs
// a promotion to to needs, recorded since the agent reached its level.
func SignedOff(c Config, in Input, to authz.Level) (Check, error) {
	if err := c.Validate(); err != nil {
		return Check{}, err
	}
	if err := in.validate(); err != nil {
		return Check{}, err
	}
	if to <= in.Level || !to.Valid() {
		return Check{}, fmt.Errorf("maturity: agent %q is at %s: %s is not above it", in.Agent, in.Level, to)
	}
	return governance(c, in, to), nil
}

func governance(c Config, in Input, to authz.Level) Check {
	need := 1
	if to == authz.Principal {
		need = 2
	}
	type refusal struct{ signer, why string }
	var approvers []string
	var refused []refusal
	for _, s := range in.SignOffs {
		if s.Target != to {
			continue
		}
		var why string
		switch {
		case s.Signer == "":
			why = "no signer"
		case s.RecordedBy != s.Signer:
			why = "named by " + s.RecordedBy + ", not signed by the signer's own identity"
		case s.At.Before(in.LevelSince):
			why = "signed " + date(s.At) + ", before this level"
		case strings.TrimSpace(s.RiskAcceptance) == "":
			why = "no risk acceptance"
		case len(c.Authorities) > 0 && !slices.Contains(c.Authorities, s.Signer):
			why = "not an authority"
		case s.Signer == in.Agent:
			why = "the agent itself"
		case s.Signer == in.Owner:
			why = "the owner"
		}
		switch r := (refusal{s.Signer, why}); {
		case why == "":
			if !slices.Contains(approvers, s.Signer) {
				approvers = append(approvers, s.Signer)
			}
		case !slices.Contains(refused, r):
			refused = append(refused, r)
		}
	}
	var ignored []string
	for _, r := range refused {
		// A signer whose approval counts is not also listed for an earlier
		// or incomplete one.
		if !slices.Contains(approvers, r.signer) {
			ignored = append(ignored, fmt.Sprintf("%s (%s)", cmp.Or(r.signer, `""`), r.why))
		}
	}

	detail := fmt.Sprintf("%d approvers", len(approvers))
	if len(approvers) == 1 {
		detail = "1 approver"
	}
	if len(approvers) > 0 {
		detail += " (" + strings.Join(approvers, ", ") + ")"
	}
	detail += fmt.Sprintf(" for %s, needs %d other than the owner", to, need)
	if len(ignored) > 0 {
		detail += "; not counted: " + strings.Join(ignored, ", ")
	}
	return Check{Name: "sign-off", Pass: len(approvers) >= need, Detail: detail}
}

const day = 24 * time.Hour

// span writes d in days and hours, or in minutes below an hour, truncating.
func span(d time.Duration) string {
	switch {
	case d >= day:
		s := fmt.Sprintf("%dd", d/day)
		if h := d % day / time.Hour; h > 0 {
			s += fmt.Sprintf(" %dh", h)
		}
		return s
	case d >= time.Hour:
		return fmt.Sprintf("%dh", d/time.Hour)
	default:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
}

// ceil rounds d up to the unit span shows, so time still to go never reads
// as less than it is.
func ceil(d time.Duration) time.Duration {
	unit := time.Minute
	if d > time.Hour {
		unit = time.Hour
	}
	return (d + unit - 1).Truncate(unit)
}

// percent writes a fraction as a percentage with no more digits than it has.
func percent(f float64) string {
	return strconv.FormatFloat(math.Round(f*1e4)/1e2, 'f', -1, 64) + "%"
}

func date(t time.Time) string { return t.Format(time.DateOnly) }
