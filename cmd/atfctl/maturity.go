package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/agentictrust/atf/broker/client"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// The maturity lifecycle: promotion through the five gates, demotion, level
// rollback, and the records the gates read (outcomes, evidence, sign-offs,
// incidents).

func agentPromote(g *globals) *cobra.Command {
	var reason string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "promote SPIFFE_ID --reason TEXT [--dry-run]",
		Short: "Move an agent up one level if every promotion gate passes",
		Long: "The five gates are performance (time at level, success rate, availability), security and business\n" +
			"(evidence recorded for the next level), incidents, and governance (a sign-off by someone other than the\n" +
			"owner). --dry-run prints every check and changes nothing; without it a failing gate refuses (exit 6) and\n" +
			"the message lists the failing checks.",
		Example: `  atfctl agent promote spiffe://example.org/agents/reporter --dry-run
  atfctl agent promote spiffe://example.org/agents/reporter --reason "gates passed, CAB-42"`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" && !dryRun {
				return usageError{fmt.Errorf("--reason is required (or --dry-run)")}
			}
			c, err := g.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			if dryRun {
				r, err := c.Maturity.EvaluatePromotion(cmd.Context(), &adminv1.EvaluatePromotionRequest{SpiffeId: args[0]})
				if err != nil {
					return err
				}
				return g.print(cmd.OutOrStdout(), r, func(w *tabwriter.Writer) { reportTable(w, r.GetReport()) })
			}
			r, err := c.Maturity.Promote(cmd.Context(), &adminv1.PromoteRequest{SpiffeId: args[0], Reason: reason})
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), r, func(w *tabwriter.Writer) {
				reportTable(w, r.GetReport())
				fmt.Fprintf(w, "Promoted:\t%s is now %s (revision %d)\n", r.GetAgent().GetSpiffeId(), levelName(r.GetAgent().GetLevel()), r.GetAgent().GetRevision())
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required unless --dry-run; kept in the agent's history)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only evaluate the gates and print the report")
	return cmd
}

func agentMigrate(g *globals) *cobra.Command {
	var reason, level string
	cmd := &cobra.Command{
		Use:   "migrate SPIFFE_ID --level junior|senior|principal --reason TEXT",
		Short: "Place an agent that earned its autonomy elsewhere at a higher level, on the sign-offs a promotion there needs",
		Long: "A migration skips the performance, security, business and incident gates (the agent's record is\n" +
			"elsewhere) but not governance: the sign-offs a promotion to --level needs must be recorded, each by its\n" +
			"signer (atfctl signoff add ... --target LEVEL): one for junior and senior, two for principal. The\n" +
			"agent's history and the audit trail record a migration and who signed it off. A failing check refuses (exit 6).",
		Example: `  atfctl signoff add spiffe://example.org/agents/planner --target senior --risk "ran as senior at the old broker for a year"
  atfctl agent migrate spiffe://example.org/agents/planner --level senior --reason "migrated from broker-eu, CAB-77"`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" {
				return usageError{fmt.Errorf("--reason is required")}
			}
			to, err := parseTarget(level)
			if err != nil || to == brokerv1.Level_LEVEL_UNSPECIFIED {
				return usageError{fmt.Errorf("--level must be junior, senior or principal, not %q", level)}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.MigrateAgentResponse, error) {
				return c.Maturity.MigrateAgent(ctx, &adminv1.MigrateAgentRequest{SpiffeId: args[0], Level: to, Reason: reason})
			}, func(w *tabwriter.Writer, r *adminv1.MigrateAgentResponse) {
				fmt.Fprintf(w, "Sign-off:	%s\n", r.GetSignOff().GetDetail())
				fmt.Fprintf(w, "Migrated:	%s is now %s (revision %d)\n", r.GetAgent().GetSpiffeId(), levelName(r.GetAgent().GetLevel()), r.GetAgent().GetRevision())
			})
		},
	}
	cmd.Flags().StringVar(&level, "level", "", "the level to place the agent at (required)")
	cmd.Flags().StringVar(&reason, "reason", "", "where it earned the level (required; kept in the agent's history)")
	return cmd
}

func agentDemote(g *globals) *cobra.Command {
	var reason string
	var levels int32
	cmd := &cobra.Command{
		Use:   "demote SPIFFE_ID --reason TEXT [--levels N]",
		Short: "Move an agent down (never below intern) and revoke at once what the new level may not hold",
		Example: `  atfctl agent demote spiffe://example.org/agents/reporter --reason "wrote outside its purpose (INC-12)"
  atfctl agent demote spiffe://example.org/agents/planner --levels 2 --reason "back to supervised work"`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" {
				return usageError{fmt.Errorf("--reason is required")}
			}
			if levels < 1 || levels > 3 {
				return usageError{fmt.Errorf("--levels must be 1, 2 or 3, not %d", levels)}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.DemoteResponse, error) {
				return c.Maturity.Demote(ctx, &adminv1.DemoteRequest{SpiffeId: args[0], Reason: reason, Levels: levels})
			}, func(w *tabwriter.Writer, r *adminv1.DemoteResponse) {
				fmt.Fprintf(w, "Level:\t%s (revision %d)\n", levelName(r.GetAgent().GetLevel()), r.GetAgent().GetRevision())
				summaryTable(w, r.GetSummary())
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; kept in the agent's history)")
	cmd.Flags().Int32Var(&levels, "levels", 1, "how many levels down")
	return cmd
}

func agentRollback(g *globals) *cobra.Command {
	var reason string
	var revision uint64
	cmd := &cobra.Command{
		Use:   "rollback SPIFFE_ID --revision N --reason TEXT",
		Short: "Restore the lower level an agent had at an earlier revision (see agent history), as a new change",
		Long: "A rollback only lowers: a higher level is regained through the gates (agent promote) or, with its\n" +
			"sign-offs, a migration (agent migrate).",
		Example: `  atfctl agent history spiffe://example.org/agents/reporter
  atfctl agent rollback spiffe://example.org/agents/reporter --revision 3 --reason "demotion of revision 4 was a mistake"`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if revision == 0 || reason == "" {
				return usageError{fmt.Errorf("--revision and --reason are required")}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.RollbackLevelResponse, error) {
				return c.Maturity.RollbackLevel(ctx, &adminv1.RollbackLevelRequest{SpiffeId: args[0], Revision: revision, Reason: reason})
			}, func(w *tabwriter.Writer, r *adminv1.RollbackLevelResponse) {
				fmt.Fprintf(w, "Level:\t%s (of revision %d; now revision %d)\n", levelName(r.GetAgent().GetLevel()), revision, r.GetAgent().GetRevision())
				summaryTable(w, r.GetSummary())
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; kept in the agent's history)")
	cmd.Flags().Uint64Var(&revision, "revision", 0, "the revision whose level to restore (required)")
	return cmd
}

func agentMaturity(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "maturity SPIFFE_ID",
		Short:   "Show what the promotion gates read: outcomes, evidence, sign-offs, incidents, breaker and baseline",
		Example: "  atfctl agent maturity spiffe://example.org/agents/reporter\n  atfctl agent maturity spiffe://example.org/agents/reporter -o json",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.GetMaturityResponse, error) {
				return c.Maturity.GetMaturity(ctx, &adminv1.GetMaturityRequest{SpiffeId: args[0]})
			}, func(w *tabwriter.Writer, r *adminv1.GetMaturityResponse) { maturityTable(w, r) })
		},
	}
}

func newEvidence(g *globals) *cobra.Command {
	ev := &cobra.Command{Use: "evidence", Short: "Record the security and business evidence the promotion gates read (admins)"}
	var kind, reference, target string
	add := &cobra.Command{
		Use:   "add SPIFFE_ID --kind KIND --reference REF [--target LEVEL]",
		Short: "Record a piece of evidence for an agent's promotion (default: to its next level)",
		Long: "Kinds: vulnerability_assessment, code_review, configuration_audit, pen_test, adversarial_test (security\n" +
			"gate); metrics_baseline, improvement, roi, stakeholder_signoff (business gate). Only evidence recorded\n" +
			"since the agent reached its level counts.",
		Example: `  atfctl evidence add spiffe://example.org/agents/reporter --kind code_review --reference https://git.example.org/pr/42
  atfctl evidence add spiffe://example.org/agents/reporter --kind pen_test --reference SEC-7 --target senior`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if kind == "" || reference == "" {
				return usageError{fmt.Errorf("--kind and --reference are required")}
			}
			to, err := parseTarget(target)
			if err != nil {
				return err
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.RecordEvidenceResponse, error) {
				return c.Maturity.RecordEvidence(ctx, &adminv1.RecordEvidenceRequest{SpiffeId: args[0], Kind: kind, Reference: reference, Target: to})
			}, func(w *tabwriter.Writer, r *adminv1.RecordEvidenceResponse) {
				e := r.GetEvidence()
				fmt.Fprintf(w, "Evidence:\t%s for %s\n", e.GetKind(), levelName(e.GetTarget()))
				fmt.Fprintf(w, "Reference:\t%s\n", e.GetReference())
				fmt.Fprintf(w, "Recorded:\t%s by %s\n", ts(e.GetAt()), e.GetRecordedBy())
			})
		},
	}
	add.Flags().StringVar(&kind, "kind", "", "what the evidence shows (required; see --help)")
	add.Flags().StringVar(&reference, "reference", "", "where it is: a report's URL, a ticket (required)")
	add.Flags().StringVar(&target, "target", "", "the level the promotion is to (default: the agent's next)")
	ev.AddCommand(add)
	return ev
}

func newSignOff(g *globals) *cobra.Command {
	so := &cobra.Command{Use: "signoff", Short: "Record your sign-off of an agent's promotion, which the governance gate reads (admins)"}
	var risk, target string
	add := &cobra.Command{
		Use:   "add SPIFFE_ID --risk TEXT [--target LEVEL]",
		Short: "Record your own approval of an agent's promotion and the risk you accept",
		Long: "The signer is you: the SVID atfctl calls with (--svid). Nobody signs for someone else; each person\n" +
			"signs with their own. The governance gate counts sign-offs since the agent reached its level, by someone\n" +
			"other than the agent and its owner (and, if atfd names maturity.authorities, by one of them): one for\n" +
			"junior and senior, two distinct people for principal.",
		Example: `  atfctl --svid bob.pem --svid-key bob-key.pem signoff add spiffe://example.org/agents/reporter --risk "may publish reports unreviewed"`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if risk == "" {
				return usageError{fmt.Errorf("--risk is required")}
			}
			to, err := parseTarget(target)
			if err != nil {
				return err
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.RecordSignOffResponse, error) {
				return c.Maturity.RecordSignOff(ctx, &adminv1.RecordSignOffRequest{SpiffeId: args[0], RiskAcceptance: risk, Target: to})
			}, func(w *tabwriter.Writer, r *adminv1.RecordSignOffResponse) {
				s := r.GetSignOff()
				fmt.Fprintf(w, "Sign-off:\t%s for %s\n", s.GetSigner(), levelName(s.GetTarget()))
				fmt.Fprintf(w, "Risk accepted:\t%s\n", s.GetRiskAcceptance())
				fmt.Fprintf(w, "Recorded:\t%s by %s\n", ts(s.GetAt()), s.GetRecordedBy())
			})
		},
	}
	add.Flags().StringVar(&risk, "risk", "", "the risk you accept (required)")
	add.Flags().StringVar(&target, "target", "", "the level the promotion is to (default: the agent's next)")
	so.AddCommand(add)
	return so
}

func newIncident(g *globals) *cobra.Command {
	inc := &cobra.Command{Use: "incident", Short: "Open, update, close and list incidents involving agents (admins)",
		Long: "An incident severe enough for the agent's level (by default critical; high at principal) demotes the\n" +
			"agent at once. A high or critical incident blocks promotion while open; a closed one needs a root-cause analysis."}
	inc.AddCommand(incidentOpen(g), incidentUpdate(g), incidentClose(g), incidentList(g))
	return inc
}

func incidentOpen(g *globals) *cobra.Command {
	var severity, summary string
	cmd := &cobra.Command{
		Use:     "open SPIFFE_ID --severity low|medium|high|critical --summary TEXT",
		Short:   "Open an incident; it demotes the agent if severe enough for its level",
		Example: `  atfctl incident open spiffe://example.org/agents/reporter --severity critical --summary "published draft numbers"`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkSeverity(severity); err != nil {
				return err
			}
			if summary == "" {
				return usageError{fmt.Errorf("--summary is required")}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.OpenIncidentResponse, error) {
				return c.Maturity.OpenIncident(ctx, &adminv1.OpenIncidentRequest{SpiffeId: args[0], Severity: severity, Summary: summary})
			}, func(w *tabwriter.Writer, r *adminv1.OpenIncidentResponse) {
				incidentChangeTable(w, r.GetIncident(), r.GetDemoted())
			})
		},
	}
	cmd.Flags().StringVar(&severity, "severity", "", "low, medium, high or critical (required)")
	cmd.Flags().StringVar(&summary, "summary", "", "what happened (required)")
	return cmd
}

func incidentUpdate(g *globals) *cobra.Command {
	var severity, note string
	cmd := &cobra.Command{
		Use:   "update INCIDENT_ID [--severity S] [--note TEXT]",
		Short: "Change an open incident's severity or add a note; raising it far enough demotes the agent",
		Example: `  atfctl incident update 3f2a...c9 --severity critical --note "customer data confirmed exposed"
  atfctl incident update 3f2a...c9 --note "vendor contacted"`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if severity == "" && note == "" {
				return usageError{fmt.Errorf("--severity or --note is required")}
			}
			if severity != "" {
				if err := checkSeverity(severity); err != nil {
					return err
				}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.UpdateIncidentResponse, error) {
				return c.Maturity.UpdateIncident(ctx, &adminv1.UpdateIncidentRequest{IncidentId: args[0], Severity: severity, Note: note})
			}, func(w *tabwriter.Writer, r *adminv1.UpdateIncidentResponse) {
				incidentChangeTable(w, r.GetIncident(), r.GetDemoted())
			})
		},
	}
	cmd.Flags().StringVar(&severity, "severity", "", "the new severity")
	cmd.Flags().StringVar(&note, "note", "", "a note appended to the summary")
	return cmd
}

func incidentClose(g *globals) *cobra.Command {
	var rca string
	cmd := &cobra.Command{
		Use:     "close INCIDENT_ID --rca TEXT",
		Short:   "Close an incident with its root-cause analysis",
		Example: `  atfctl incident close 3f2a...c9 --rca "prompt injection through a shared document; input filter added"`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if rca == "" {
				return usageError{fmt.Errorf("--rca is required")}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.CloseIncidentResponse, error) {
				return c.Maturity.CloseIncident(ctx, &adminv1.CloseIncidentRequest{IncidentId: args[0], Rca: rca})
			}, func(w *tabwriter.Writer, r *adminv1.CloseIncidentResponse) { incidentTable(w, r.GetIncident()) })
		},
	}
	cmd.Flags().StringVar(&rca, "rca", "", "the root-cause analysis, or where it lives (required)")
	return cmd
}

func incidentList(g *globals) *cobra.Command {
	var agent string
	var openOnly bool
	cmd := &cobra.Command{
		Use:     "list [--agent SPIFFE_ID] [--open]",
		Short:   "List incidents, oldest first",
		Example: "  atfctl incident list --open\n  atfctl incident list --agent spiffe://example.org/agents/reporter -o json",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.ListIncidentsResponse, error) {
				return c.Maturity.ListIncidents(ctx, &adminv1.ListIncidentsRequest{SpiffeId: agent, OpenOnly: openOnly})
			}, func(w *tabwriter.Writer, r *adminv1.ListIncidentsResponse) { incidentRows(w, r.GetIncidents()) })
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "only this agent's incidents")
	cmd.Flags().BoolVar(&openOnly, "open", false, "only open incidents")
	return cmd
}

// checkSeverity refuses a --severity the broker does not know.
func checkSeverity(s string) error {
	if !slices.Contains([]string{"low", "medium", "high", "critical"}, s) {
		return usageError{fmt.Errorf("--severity must be low, medium, high or critical, not %q", s)}
	}
	return nil
}

func newOutcome(g *globals) *cobra.Command {
	oc := &cobra.Command{Use: "outcome", Short: "Report how an agent's actions went, for its promotion gates and circuit breaker"}
	var outcome, role, decision, detail, agent string
	report := &cobra.Command{
		Use:   "report --outcome success|failure|rejected|error [--agent SPIFFE_ID] [--role R] [--decision ID] [--detail TEXT]",
		Short: "Report the outcome of an action: your own (agents) or an agent's (--agent: admins, approvers, outcome reporters)",
		Long: "success: the action did what was intended; failure: it did not; rejected: a human turned the\n" +
			"recommendation down; error: the agent failed to answer at all. Failures and errors count against the\n" +
			"agent's circuit breaker. An agent's report of its own success is self-reported: the performance gate\n" +
			"counts it at maturity.self_reported_weight (default nothing); reports on an agent's work by an admin,\n" +
			"an approver or a listed outcome reporter (--agent) count in full.",
		Example: `  atfctl outcome report --outcome success --role reports-write --decision 3f2a...c9
  atfctl outcome report --outcome failure --detail "report job timed out"
  atfctl outcome report --agent spiffe://example.org/agents/reporter --outcome success --detail "Q3 report checked, correct"`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, ok := brokerv1.Outcome_value["OUTCOME_"+strings.ToUpper(outcome)]
			if !ok || v == 0 {
				return usageError{fmt.Errorf("--outcome must be success, failure, rejected or error, not %q", outcome)}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*brokerv1.ReportOutcomeResponse, error) {
				return c.Broker.ReportOutcome(ctx, &brokerv1.ReportOutcomeRequest{Outcome: brokerv1.Outcome(v), Role: role, DecisionId: decision, Detail: detail, AgentId: agent})
			}, func(w *tabwriter.Writer, r *brokerv1.ReportOutcomeResponse) {
				fmt.Fprintf(w, "Recorded:\t%s\n", outcome)
			})
		},
	}
	report.Flags().StringVar(&outcome, "outcome", "", "success, failure, rejected or error (required)")
	report.Flags().StringVar(&role, "role", "", "the role the action used")
	report.Flags().StringVar(&decision, "decision", "", "the decision ID of the credential the action used")
	report.Flags().StringVar(&detail, "detail", "", "what happened, for people")
	report.Flags().StringVar(&agent, "agent", "", "the agent whose work this is, if not yours")
	oc.AddCommand(report)
	return oc
}

// parseTarget reads --target: a level, or "" for the agent's next.
func parseTarget(s string) (brokerv1.Level, error) {
	if s == "" {
		return brokerv1.Level_LEVEL_UNSPECIFIED, nil
	}
	l, err := parseLevel(s)
	if err != nil || l == brokerv1.Level_LEVEL_INTERN {
		return 0, usageError{fmt.Errorf("--target must be junior, senior or principal, not %q", s)}
	}
	return l, nil
}

func levelName(l brokerv1.Level) string { return enumName(l.String(), "LEVEL_") }

// reportTable prints every check of a promotion report, then the verdict.
func reportTable(w *tabwriter.Writer, r *adminv1.PromotionReport) {
	fmt.Fprintf(w, "Promotion:\t%s → %s\n\n", levelName(r.GetFrom()), levelName(r.GetTo()))
	fmt.Fprintln(w, "GATE\tCHECK\tRESULT\tDETAIL")
	for _, gate := range r.GetGates() {
		for _, c := range gate.GetChecks() {
			result := "FAIL"
			if c.GetPass() {
				result = "pass"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", gate.GetName(), c.GetName(), result, c.GetDetail())
		}
	}
	verdict := "no"
	if r.GetPromotable() {
		verdict = "yes"
	}
	fmt.Fprintf(w, "\nPromotable:\t%s\n", verdict)
}

func outcomeText(o *adminv1.OutcomeCounts) string {
	return fmt.Sprintf("%d success, %d failure, %d rejected, %d errors", o.GetSuccess(), o.GetFailure(), o.GetRejected(), o.GetErrors())
}

// breakerText is a circuit breaker's state and, while open, until when.
func breakerText(b *adminv1.Breaker) string {
	if b.GetOpenUntil() == nil {
		return b.GetState()
	}
	return b.GetState() + " until " + ts(b.GetOpenUntil())
}

func maturityTable(w *tabwriter.Writer, r *adminv1.GetMaturityResponse) {
	a := r.GetAgent()
	fmt.Fprintf(w, "SPIFFE ID:\t%s\n", a.GetSpiffeId())
	fmt.Fprintf(w, "Level:\t%s since %s\n", levelName(a.GetLevel()), ts(r.GetLevelSince()))
	fmt.Fprintf(w, "Outcomes:\t%s (reported by others, at this level)\n", outcomeText(r.GetOutcomes()))
	fmt.Fprintf(w, "Self-reported:\t%s (by the agent, at this level)\n", outcomeText(r.GetSelfReported()))
	fmt.Fprintf(w, "Breaker:\t%s\n", breakerText(r.GetBreaker()))
	fmt.Fprintf(w, "Baseline:\t%s\n", baselineText(r.GetBaseline()))
	fmt.Fprintf(w, "Evidence:\t%d\n", len(r.GetEvidence()))
	fmt.Fprintf(w, "Sign-offs:\t%d\n", len(r.GetSignOffs()))
	fmt.Fprintf(w, "Incidents:\t%d\n", len(r.GetIncidents()))
	if ev := r.GetEvidence(); len(ev) > 0 {
		fmt.Fprintln(w, "\nEVIDENCE\tTARGET\tREFERENCE\tRECORDED BY\tAT")
		for _, e := range ev {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", e.GetKind(), levelName(e.GetTarget()), e.GetReference(), e.GetRecordedBy(), ts(e.GetAt()))
		}
	}
	if sos := r.GetSignOffs(); len(sos) > 0 {
		fmt.Fprintln(w, "\nSIGNER\tTARGET\tRISK ACCEPTED\tRECORDED BY\tAT")
		for _, s := range sos {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", s.GetSigner(), levelName(s.GetTarget()), s.GetRiskAcceptance(), s.GetRecordedBy(), ts(s.GetAt()))
		}
	}
	if incs := r.GetIncidents(); len(incs) > 0 {
		fmt.Fprintln(w)
		incidentRows(w, incs)
	}
}

// baselineText summarises a behaviour baseline in one line.
func baselineText(b *adminv1.Baseline) string {
	if b == nil {
		return "none yet"
	}
	if !b.GetFormed() {
		return fmt.Sprintf("forming: %d events since %s", b.GetEvents(), ts(b.GetSince()))
	}
	roles := make([]string, 0, len(b.GetRoles()))
	for r, n := range b.GetRoles() {
		roles = append(roles, fmt.Sprintf("%s %d", r, n))
	}
	slices.Sort(roles)
	return fmt.Sprintf("formed from %d events since %s: %.2f requests/minute, %.1f%% denied, %d delegations, roles: %s",
		b.GetEvents(), ts(b.GetSince()), b.GetRatePerMinute(), b.GetDenialRatio()*100, b.GetDelegations(), strings.Join(roles, ", "))
}

func incidentTable(w *tabwriter.Writer, in *adminv1.Incident) {
	fmt.Fprintf(w, "Incident:\t%s\n", in.GetId())
	fmt.Fprintf(w, "Agent:\t%s (%s when opened)\n", in.GetSpiffeId(), levelName(in.GetLevel()))
	fmt.Fprintf(w, "Severity:\t%s\n", in.GetSeverity())
	fmt.Fprintf(w, "Summary:\t%s\n", in.GetSummary())
	fmt.Fprintf(w, "Opened:\t%s by %s\n", ts(in.GetOpenedAt()), in.GetOpenedBy())
	if in.GetClosedAt() != nil {
		fmt.Fprintf(w, "Closed:\t%s by %s\n", ts(in.GetClosedAt()), in.GetClosedBy())
		fmt.Fprintf(w, "RCA:\t%s\n", in.GetRca())
	}
}

// incidentChangeTable prints an opened or updated incident and, if it
// demoted the agent, the agent's new level.
func incidentChangeTable(w *tabwriter.Writer, in *adminv1.Incident, demoted *adminv1.Agent) {
	incidentTable(w, in)
	if demoted != nil {
		fmt.Fprintf(w, "Demoted to:\t%s (revision %d)\n", levelName(demoted.GetLevel()), demoted.GetRevision())
	}
}

func incidentRows(w *tabwriter.Writer, incs []*adminv1.Incident) {
	fmt.Fprintln(w, "INCIDENT\tAGENT\tSEVERITY\tLEVEL\tOPENED\tCLOSED\tSUMMARY")
	for _, in := range incs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", in.GetId(), in.GetSpiffeId(), in.GetSeverity(), levelName(in.GetLevel()),
			ts(in.GetOpenedAt()), ts(in.GetClosedAt()), in.GetSummary())
	}
}
