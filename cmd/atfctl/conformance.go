package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/agentictrust/atf/broker/client"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

func newConformance(g *globals) *cobra.Command {
	var level, organization string
	cmd := &cobra.Command{
		Use:   "conformance [--level L] [--organization NAME] [-o table|json|markdown]",
		Short: "Assess the running broker against the ATF conformance requirements (admins)",
		Long: `atfd assesses itself, from its configuration and its registry, against the 25
core requirements of the ATF conformance specification (I-1..I-5, B-1..B-5,
D-1..D-5, S-1..S-5, R-1..R-5) and answers with an ATF Compatible
self-assessment statement in the spec's template: requirements met per element
(X/5) and overall, the target maturity level, and for each requirement its
status (met, partial, not met), the spec's obligation at the target level
(MUST, SHOULD, MAY), the evidence (feature, setting and value, registry counts),
why it is not fully met, and what stays the operator's job.

The target level decides the obligations; by default it is the highest level
of any active agent. Switch a feature off in atfd's configuration (audit.file,
limits.rate, notifications.webhook, ...) and the statement says so.

Output: a table for people (default), -o json (the API's answer), or
-o markdown, to publish or attach to an audit.`,
		Example: `  atfctl conformance
  atfctl conformance --level senior --organization "Example Corp"
  atfctl conformance -o markdown > atf-conformance.md
  atfctl conformance -o json | jq '.statement.unmet_must'`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &adminv1.GetConformanceRequest{Organization: organization}
			if level != "" {
				l, err := parseLevel(level)
				if err != nil {
					return err
				}
				req.TargetLevel = l
			}
			// markdown is this command's own format: the call is made as
			// for a table, and the table function writes markdown.
			local := *g
			write := conformanceTable
			switch g.output {
			case "table", "json":
			case "markdown":
				local.output = "table"
				write = func(w *tabwriter.Writer, st *adminv1.ConformanceStatement) { conformanceMarkdown(w, st) }
			default:
				return usageError{fmt.Errorf("--output must be table, json or markdown, not %q", g.output)}
			}
			return call(cmd, &local, func(ctx context.Context, c *client.Conn) (*adminv1.GetConformanceResponse, error) {
				return c.Admin.GetConformance(ctx, req)
			}, func(w *tabwriter.Writer, r *adminv1.GetConformanceResponse) { write(w, r.GetStatement()) })
		},
	}
	cmd.Flags().StringVar(&level, "level", "", "target maturity level: intern, junior, senior or principal (default: the highest level of any active agent)")
	cmd.Flags().StringVar(&organization, "organization", "", "the organization named in the statement")
	return cmd
}

func statusName(s adminv1.ConformanceStatus) string {
	return strings.ReplaceAll(enumName(s.String(), "CONFORMANCE_STATUS_"), "_", " ")
}

func obligationName(o adminv1.Obligation) string {
	return strings.TrimPrefix(o.String(), "OBLIGATION_")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// targetText is the target level, saying where it came from.
func targetText(st *adminv1.ConformanceStatement) string {
	l := levelName(st.GetTargetLevel())
	if st.GetTargetLevelDerived() {
		return l + " (the highest level of any active agent; --level to choose)"
	}
	return l
}

// score is "X/5 requirements met", with the partially met ones.
func score(met, partial, total int32) string {
	s := fmt.Sprintf("%d/%d requirements met", met, total)
	if partial > 0 {
		s += fmt.Sprintf(" (%d partially)", partial)
	}
	return s
}

// conformanceTable prints the statement in the spec's template, then each
// requirement with its evidence, gaps and the operator's part.
func conformanceTable(w *tabwriter.Writer, st *adminv1.ConformanceStatement) {
	fmt.Fprintf(w, "Organization:\t%s\n", orDash(st.GetOrganization()))
	fmt.Fprintf(w, "Implementation:\t%s\n", st.GetImplementation())
	fmt.Fprintf(w, "ATF Version:\t%s\n", st.GetAtfVersion())
	fmt.Fprintf(w, "Target Maturity Level:\t%s\n", targetText(st))
	fmt.Fprintf(w, "Assessment Date:\t%s\n\n", ts(st.GetAssessedAt()))
	for i, e := range st.GetElements() {
		fmt.Fprintf(w, "Element %d - %s:\t%s\n", i+1, e.GetName(), score(e.GetMet(), e.GetPartial(), e.GetTotal()))
	}
	fmt.Fprintf(w, "Overall:\t%s\n", score(st.GetMet(), st.GetPartial(), st.GetTotal()))
	fmt.Fprintf(w, "MUST at %s, not fully met:\t%s\n\n", levelName(st.GetTargetLevel()), orDash(strings.Join(st.GetUnmetMust(), ", ")))
	fmt.Fprintf(w, "ID\tREQUIREMENT\tSTATUS\t%s\tEVIDENCE\n", strings.ToUpper(levelName(st.GetTargetLevel())))
	for _, e := range st.GetElements() {
		for _, r := range e.GetRequirements() {
			lines := slices.Clone(r.GetEvidence())
			for _, g := range r.GetGaps() {
				lines = append(lines, "gap: "+g)
			}
			if op := r.GetOperatorScope(); op != "" {
				lines = append(lines, "operator: "+op)
			}
			first := "-"
			if len(lines) > 0 {
				first = lines[0]
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.GetId(), r.GetName(), statusName(r.GetStatus()), obligationName(r.GetObligation()), first)
			for _, l := range lines[1:] {
				fmt.Fprintf(w, "\t\t\t\t%s\n", l)
			}
		}
	}
	fmt.Fprintln(w, "\nNotes:")
	for _, n := range st.GetNotes() {
		fmt.Fprintf(w, "- %s\n", n)
	}
}

// conformanceMarkdown writes the statement as a markdown document: the
// template as a table, then a table per element.
func conformanceMarkdown(w io.Writer, st *adminv1.ConformanceStatement) {
	level := levelName(st.GetTargetLevel())
	fmt.Fprintf(w, "# ATF conformance statement\n\n")
	fmt.Fprintf(w, "| | |\n|---|---|\n")
	for _, kv := range [][2]string{
		{"Organization", orDash(st.GetOrganization())},
		{"Implementation", st.GetImplementation()},
		{"ATF Version", st.GetAtfVersion()},
		{"Target Maturity Level", targetText(st)},
		{"Assessment Date", ts(st.GetAssessedAt())},
	} {
		fmt.Fprintf(w, "| %s | %s |\n", kv[0], cell(kv[1]))
	}
	fmt.Fprintf(w, "\n| Element | Requirements met | Partially met |\n|---|---|---|\n")
	for i, e := range st.GetElements() {
		fmt.Fprintf(w, "| %d - %s | %d/%d | %d |\n", i+1, e.GetName(), e.GetMet(), e.GetTotal(), e.GetPartial())
	}
	fmt.Fprintf(w, "| **Overall** | **%d/%d** | %d |\n\n", st.GetMet(), st.GetTotal(), st.GetPartial())
	fmt.Fprintf(w, "MUST requirements at %s not fully met: %s\n", level, orDash(strings.Join(st.GetUnmetMust(), ", ")))
	for i, e := range st.GetElements() {
		fmt.Fprintf(w, "\n## Element %d - %s (\"%s\")\n\n", i+1, e.GetName(), e.GetQuestion())
		fmt.Fprintf(w, "| # | Requirement | Status | Obligation (%s) | Evidence | Not met because | Operator's job |\n|---|---|---|---|---|---|---|\n", level)
		for _, r := range e.GetRequirements() {
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", r.GetId(), cell(r.GetName()), statusName(r.GetStatus()),
				obligationName(r.GetObligation()), cells(r.GetEvidence()), cells(r.GetGaps()), cell(r.GetOperatorScope()))
		}
	}
	fmt.Fprintf(w, "\n## Notes\n\n")
	for _, n := range st.GetNotes() {
		fmt.Fprintf(w, "- %s\n", n)
	}
}

// cell makes s safe inside a markdown table cell.
func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

// cells joins items into one cell, one per line.
func cells(items []string) string {
	out := make([]string, len(items))
	for i, s := range items {
		out[i] = cell(s)
	}
	return strings.Join(out, "<br>")
}
