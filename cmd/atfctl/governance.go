package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/broker/client"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

func newPolicy(g *globals) *cobra.Command {
	policy := &cobra.Command{Use: "policy", Short: "Manage the segmentation policy (admins)",
		Long: "Every change is a new, numbered version: list, show, diff and roll back any of them. A model or policy that\n" +
			"does not load is refused and the current one keeps serving."}
	policy.AddCommand(policyList(g), policyShow(g), policySet(g), policyTest(g), policyDiff(g), policyRollback(g))
	return policy
}

func policyList(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List policy versions, newest first",
		Example: "  atfctl policy list\n  atfctl policy list -o json",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.ListPoliciesResponse, error) {
				return c.Admin.ListPolicies(ctx, &adminv1.ListPoliciesRequest{})
			}, func(w *tabwriter.Writer, r *adminv1.ListPoliciesResponse) {
				fmt.Fprintln(w, "VERSION\tCREATED\tAUTHOR\tLINES\tCOMMENT")
				for _, v := range r.GetVersions() {
					cur := ""
					if v.GetCurrent() {
						cur = " (current)"
					}
					if v.GetRolledBackFrom() != 0 {
						cur += fmt.Sprintf(" (restores %d)", v.GetRolledBackFrom())
					}
					fmt.Fprintf(w, "%d%s\t%s\t%s\t%d\t%s\n", v.GetVersion(), cur, ts(v.GetCreatedAt()), v.GetAuthor(), v.GetPolicyLines(), v.GetComment())
				}
			})
		},
	}
}

func policyShow(g *globals) *cobra.Command {
	var version uint64
	var part string
	cmd := &cobra.Command{
		Use:     "show [--version N] [--part policy|model]",
		Short:   "Print a policy version's text (default: the current policy lines)",
		Example: "  atfctl policy show > policy.csv\n  atfctl policy show --version 3 --part model",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			r, err := c.Admin.GetPolicy(cmd.Context(), &adminv1.GetPolicyRequest{Version: version})
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.print(cmd.OutOrStdout(), r, nil)
			}
			text := r.GetPolicy()
			switch part {
			case "model":
				text = r.GetModel()
			case "policy":
			default:
				return usageError{fmt.Errorf("--part must be policy or model, not %q", part)}
			}
			_, err = io.WriteString(cmd.OutOrStdout(), text)
			return err
		},
	}
	cmd.Flags().Uint64Var(&version, "version", 0, "version to show (default current)")
	cmd.Flags().StringVar(&part, "part", "policy", "policy or model")
	return cmd
}

func policySet(g *globals) *cobra.Command {
	var modelFile, policyFile, comment string
	var expected uint64
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "set --policy FILE --comment TEXT [--model FILE] [--dry-run]",
		Short: "Check and apply a new policy (and optionally model) as the next version",
		Example: `  atfctl policy set --policy deploy/policy/policy.csv --comment "finance may read payroll"
  atfctl policy set --policy new.csv --comment "try" --dry-run
  atfctl policy set --policy new.csv --comment "reviewed in PR 42" --expect-version 7`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if policyFile == "" || comment == "" {
				return usageError{fmt.Errorf("--policy and --comment are required")}
			}
			req := &adminv1.SetPolicyRequest{Comment: comment, ExpectedVersion: expected, DryRun: dryRun}
			raw, err := os.ReadFile(policyFile)
			if err != nil {
				return usageError{err}
			}
			req.Policy = string(raw)
			if modelFile != "" {
				if raw, err = os.ReadFile(modelFile); err != nil {
					return usageError{err}
				}
				req.Model = string(raw)
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.SetPolicyResponse, error) {
				return c.Admin.SetPolicy(ctx, req)
			}, func(w *tabwriter.Writer, r *adminv1.SetPolicyResponse) {
				for _, warn := range r.GetWarnings() {
					fmt.Fprintf(w, "warning:\t%s\n", warn)
				}
				if dryRun {
					fmt.Fprintln(w, "Dry run:\tthe policy loads; nothing was changed")
					fmt.Fprintf(w, "Would revoke:\t%d grants, %d credentials (what it no longer allows)\n",
						r.GetSummary().GetGrantsRevoked(), r.GetSummary().GetCredentialsRevoked())
					return
				}
				fmt.Fprintf(w, "Version:\t%d (now current)\n", r.GetVersion().GetVersion())
				fmt.Fprintf(w, "Digest:\t%s\n", r.GetVersion().GetDigest())
				summaryTable(w, r.GetSummary())
			})
		},
	}
	cmd.Flags().StringVar(&policyFile, "policy", "", "policy file (CSV lines)")
	cmd.Flags().StringVar(&modelFile, "model", "", "model file; default: keep the current model")
	cmd.Flags().StringVar(&comment, "comment", "", "why the change, for the audit trail")
	cmd.Flags().Uint64Var(&expected, "expect-version", 0, "refuse unless the current version is this one")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "check only")
	return cmd
}

func policyTest(g *globals) *cobra.Command {
	var role, level, policyFile, modelFile string
	cmd := &cobra.Command{
		Use:   "test SPIFFE_ID --role ROLE [--level L] [--policy FILE]",
		Short: "Decide a sample request without issuing anything, and explain it",
		Example: `  atfctl policy test spiffe://example.org/agents/reporter --role reports-write
  atfctl policy test spiffe://example.org/agents/reporter --role payroll-read --level senior --policy candidate.csv`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if role == "" {
				return usageError{fmt.Errorf("--role is required")}
			}
			req := &adminv1.TestPolicyRequest{SpiffeId: args[0], Role: role}
			if level != "" {
				lvl, err := parseLevel(level)
				if err != nil {
					return err
				}
				req.Level = lvl
			}
			for _, f := range []struct {
				path string
				dst  *string
			}{{policyFile, &req.Policy}, {modelFile, &req.Model}} {
				if f.path != "" {
					raw, err := os.ReadFile(f.path)
					if err != nil {
						return usageError{err}
					}
					*f.dst = string(raw)
				}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.TestPolicyResponse, error) {
				return c.Admin.TestPolicy(ctx, req)
			}, func(w *tabwriter.Writer, r *adminv1.TestPolicyResponse) {
				d := r.GetDecision()
				fmt.Fprintf(w, "Outcome:\t%s\n", enumName(d.GetOutcome().String(), "OUTCOME_"))
				fmt.Fprintf(w, "Reason:\t%s\n", d.GetReason())
				fmt.Fprintf(w, "Message:\t%s\n", d.GetMessage())
				fmt.Fprintf(w, "Request:\t%s %s role, %s data, at level %s\n", d.GetClass(), role, d.GetClassification(), enumName(d.GetLevel().String(), "LEVEL_"))
				for _, m := range d.GetMatchedPolicy() {
					fmt.Fprintf(w, "Matched:\t%s\n", m)
				}
				if d.GetMaturityRule() != "" {
					fmt.Fprintf(w, "Maturity rule:\t%s\n", d.GetMaturityRule())
				}
				if d.GetTtl() != nil {
					fmt.Fprintf(w, "TTL:\t%s\n", d.GetTtl().AsDuration())
				}
				fmt.Fprintf(w, "Policy version:\t%d\n", d.GetPolicyVersion())
			})
		},
	}
	cmd.Flags().StringVar(&role, "role", "", "role to decide (required)")
	cmd.Flags().StringVar(&level, "level", "", "decide as if the agent had this level")
	cmd.Flags().StringVar(&policyFile, "policy", "", "decide against this candidate policy instead of the current one")
	cmd.Flags().StringVar(&modelFile, "model", "", "candidate model (with --policy)")
	return cmd
}

func policyDiff(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "diff FROM [TO]",
		Short:   "Show the policy lines added and removed between two versions (TO default: current)",
		Example: "  atfctl policy diff 3\n  atfctl policy diff 3 5",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var versions [2]uint64
			for i, a := range args {
				if _, err := fmt.Sscan(a, &versions[i]); err != nil || versions[i] == 0 {
					return usageError{fmt.Errorf("version %q is not a positive number", a)}
				}
			}
			c, err := g.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			var texts [2]*adminv1.GetPolicyResponse
			for i, v := range versions {
				if texts[i], err = c.Admin.GetPolicy(cmd.Context(), &adminv1.GetPolicyRequest{Version: v}); err != nil {
					return err
				}
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "--- version %d\n+++ version %d\n", texts[0].GetVersion().GetVersion(), texts[1].GetVersion().GetVersion())
			if texts[0].GetModel() != texts[1].GetModel() {
				fmt.Fprintln(out, "! the model differs (atfctl policy show --part model)")
			}
			for _, l := range diffLines(texts[0].GetPolicy(), texts[1].GetPolicy()) {
				fmt.Fprintln(out, l)
			}
			return nil
		},
	}
}

// diffLines lists rule lines only in a ("- ") or only in b ("+ "). Order
// does not matter to the default effect, so a set difference is the honest
// answer; comments and blank lines are ignored.
func diffLines(a, b string) []string {
	set := func(text string) (map[string]bool, []string) {
		m, order := map[string]bool{}, []string{}
		for _, l := range strings.Split(text, "\n") {
			l = strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(l), ",", ", ")), " ")
			if l == "" || strings.HasPrefix(l, "#") || m[l] {
				continue
			}
			m[l] = true
			order = append(order, l)
		}
		return m, order
	}
	am, ao := set(a)
	bm, bo := set(b)
	var out []string
	for _, l := range ao {
		if !bm[l] {
			out = append(out, "- "+l)
		}
	}
	for _, l := range bo {
		if !am[l] {
			out = append(out, "+ "+l)
		}
	}
	return out
}

func policyRollback(g *globals) *cobra.Command {
	var comment string
	var expected uint64
	cmd := &cobra.Command{
		Use:     "rollback VERSION --comment TEXT",
		Short:   "Make an earlier version current again (as a new version)",
		Example: `  atfctl policy rollback 4 --comment "version 5 locked out the finance bots"`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v uint64
			if _, err := fmt.Sscan(args[0], &v); err != nil || v == 0 {
				return usageError{fmt.Errorf("version %q is not a positive number", args[0])}
			}
			if comment == "" {
				return usageError{fmt.Errorf("--comment is required")}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.RollbackPolicyResponse, error) {
				return c.Admin.RollbackPolicy(ctx, &adminv1.RollbackPolicyRequest{Version: v, Comment: comment, ExpectedVersion: expected})
			}, func(w *tabwriter.Writer, r *adminv1.RollbackPolicyResponse) {
				fmt.Fprintf(w, "Version:\t%d (restores %d, now current)\n", r.GetVersion().GetVersion(), v)
				summaryTable(w, r.GetSummary())
			})
		},
	}
	cmd.Flags().StringVar(&comment, "comment", "", "why, for the audit trail")
	cmd.Flags().Uint64Var(&expected, "expect-version", 0, "refuse unless the current version is this one")
	return cmd
}

func newApprovals(g *globals) *cobra.Command {
	ap := &cobra.Command{Use: "approvals", Short: "Decide Junior agents' write requests (approvers)"}
	var status, agent string
	list := &cobra.Command{
		Use:     "list [--status pending|approved|denied|expired|redeemed|cancelled] [--agent ID]",
		Short:   "List approval requests, newest first (default: pending)",
		Example: "  atfctl approvals list\n  atfctl approvals list --status redeemed -o json",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, ok := brokerv1.ApprovalStatus_value["APPROVAL_STATUS_"+strings.ToUpper(status)]
			if !ok || status == "" {
				return usageError{fmt.Errorf("--status %q: want pending, approved, denied, expired, redeemed or cancelled", status)}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.ListApprovalsResponse, error) {
				return c.Approvals.ListApprovals(ctx, &adminv1.ListApprovalsRequest{Status: brokerv1.ApprovalStatus(st), Agent: agent})
			}, func(w *tabwriter.Writer, r *adminv1.ListApprovalsResponse) {
				fmt.Fprintln(w, "ID\tAGENT\tROLE\tCLASS\tSTATUS\tEXPIRES\tJUSTIFICATION")
				for _, a := range r.GetApprovals() {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.GetId(), a.GetAgentId(), a.GetRole(), a.GetClass(),
						enumName(a.GetStatus().String(), "APPROVAL_STATUS_"), ts(a.GetExpiresAt()), a.GetJustification())
				}
			})
		},
	}
	list.Flags().StringVar(&status, "status", "pending", "status to list")
	list.Flags().StringVar(&agent, "agent", "", "only this agent's requests")
	ap.AddCommand(list, decide(g, adminv1.Verdict_VERDICT_APPROVE), decide(g, adminv1.Verdict_VERDICT_DENY))
	return ap
}

func decide(g *globals, v adminv1.Verdict) *cobra.Command {
	verb := enumName(v.String(), "VERDICT_")
	var reason string
	cmd := &cobra.Command{
		Use:     verb + " APPROVAL_ID --reason TEXT",
		Short:   strings.ToUpper(verb[:1]) + verb[1:] + " a pending request",
		Example: fmt.Sprintf("  atfctl approvals %s 3f2a...c9 --reason \"ticket OPS-123\"", verb),
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" {
				return usageError{fmt.Errorf("--reason is required")}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.DecideApprovalResponse, error) {
				return c.Approvals.DecideApproval(ctx, &adminv1.DecideApprovalRequest{ApprovalId: args[0], Verdict: v, Reason: reason})
			}, func(w *tabwriter.Writer, r *adminv1.DecideApprovalResponse) {
				a := r.GetApproval()
				fmt.Fprintf(w, "Approval:\t%s\n", a.GetId())
				fmt.Fprintf(w, "Status:\t%s\n", enumName(a.GetStatus().String(), "APPROVAL_STATUS_"))
				fmt.Fprintf(w, "Agent:\t%s\n", a.GetAgentId())
				fmt.Fprintf(w, "Role:\t%s\n", a.GetRole())
				if sc := a.GetScopes(); len(sc) > 0 {
					fmt.Fprintf(w, "Scopes:\t%s\n", strings.Join(sc, " "))
				}
				if v == adminv1.Verdict_VERDICT_APPROVE {
					fmt.Fprintf(w, "Redeem by:\t%s\n", ts(a.GetExpiresAt()))
				}
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit trail (required)")
	return cmd
}

func newAudit(g *globals) *cobra.Command {
	au := &cobra.Command{Use: "audit", Short: "Query and verify the tamper-evident audit trail (admins)"}
	au.AddCommand(auditQuery(g), auditVerify(g))
	return au
}

func auditQuery(g *globals) *cobra.Command {
	var (
		f            adminv1.QueryAuditRequest
		since, until string
		limit        int
	)
	cmd := &cobra.Command{
		Use:   "query [--agent ID] [--role R] [--decision allow|deny|pending|limited] [--kind K] [--since T] [--until T]",
		Short: "List audit records, oldest first",
		Example: `  atfctl audit query --agent spiffe://example.org/agents/reporter --decision deny
  atfctl audit query --kind policy_updated --since 24h -o json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, t := range []struct {
				in  string
				dst **timestamppb.Timestamp
			}{{since, &f.Since}, {until, &f.Until}} {
				if t.in == "" {
					continue
				}
				at, err := parseWhen(t.in)
				if err != nil {
					return usageError{err}
				}
				*t.dst = timestamppb.New(at)
			}
			c, err := g.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			all, err := queryAudit(cmd.Context(), c.Admin, &f, limit)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), all, func(w *tabwriter.Writer) { auditRows(w, all.GetRecords()) })
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.Agent, "agent", "", "records by or about this agent")
	fl.StringVar(&f.Role, "role", "", "records about this role")
	fl.StringVar(&f.Decision, "decision", "", "allow, deny, pending or limited")
	fl.StringVar(&f.Kind, "kind", "", "record kind, e.g. credential_issued")
	fl.StringVar(&since, "since", "", "RFC 3339 time or a duration ago (e.g. 24h)")
	fl.StringVar(&until, "until", "", "RFC 3339 time or a duration ago")
	fl.IntVar(&limit, "limit", 1000, "at most this many records")
	return cmd
}

// queryAudit pages through the records req selects, up to limit of them.
func queryAudit(ctx context.Context, admin adminv1.AdminServiceClient, req *adminv1.QueryAuditRequest, limit int) (*adminv1.QueryAuditResponse, error) {
	all := &adminv1.QueryAuditResponse{}
	for len(all.Records) < limit {
		req.PageSize = int32(min(1000, limit-len(all.Records)))
		r, err := admin.QueryAudit(ctx, req)
		if err != nil {
			return nil, err
		}
		all.Records = append(all.Records, r.GetRecords()...)
		all.NextAfterSeq = r.GetNextAfterSeq()
		if r.GetNextAfterSeq() == 0 {
			break
		}
		req.AfterSeq = r.GetNextAfterSeq()
	}
	return all, nil
}

func auditRows(w *tabwriter.Writer, records []*adminv1.AuditRecord) {
	fmt.Fprintln(w, "SEQ\tTIME\tKIND\tACTOR\tSUBJECT\tDECISION\tWHY")
	for _, r := range records {
		d := r.GetDetail()
		why := d["message"]
		if why == "" {
			why = d["reason"]
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.GetSeq(), ts(r.GetTime()), r.GetKind(), r.GetActor(), r.GetSubject(), d["decision"], why)
	}
}

func auditVerify(g *globals) *cobra.Command {
	var expect string
	cmd := &cobra.Command{
		Use:   "verify [--expect SEQ:HASH]",
		Short: "Check the audit trail's hash chain; --expect also catches a cut-off tail",
		Long: "Verify recomputes every record's hash and link. It detects an edited, inserted or removed record. A trail\n" +
			"cut off at the end still verifies, so keep the printed head (SEQ:HASH) elsewhere and pass it later as\n" +
			"--expect: the record must still be there, unchanged.",
		Example: "  atfctl audit verify\n  atfctl audit verify --expect 1042:9f86d0...",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var seq uint64
			var hash string
			if expect != "" {
				seqText, h, ok := strings.Cut(expect, ":")
				if _, err := fmt.Sscan(seqText, &seq); !ok || err != nil || seq == 0 || h == "" {
					return usageError{fmt.Errorf("--expect %q is not SEQ:HASH", expect)}
				}
				hash = h
			}
			c, err := g.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			r, err := c.Admin.VerifyAudit(cmd.Context(), &adminv1.VerifyAuditRequest{})
			if err != nil {
				return err
			}
			if r.GetOk() && expect != "" {
				if msg := checkExpected(cmd, c.Admin, seq, hash); msg != "" {
					r.Ok, r.Error = false, msg
				}
			}
			if err := g.print(cmd.OutOrStdout(), r, func(w *tabwriter.Writer) { verifyTable(w, r) }); err != nil {
				return err
			}
			if !r.GetOk() {
				return exitError{code: 1, msg: "audit trail verification failed: " + r.GetError()}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&expect, "expect", "", "a head printed by an earlier verify, as SEQ:HASH")
	return cmd
}

func verifyTable(w *tabwriter.Writer, r *adminv1.VerifyAuditResponse) {
	fmt.Fprintf(w, "Records:\t%d\n", r.GetRecords())
	fmt.Fprintf(w, "Head:\t%d:%s\n", r.GetHeadSeq(), r.GetHeadHash())
	if r.GetOk() {
		fmt.Fprintln(w, "Result:\tok, the chain is intact")
	} else {
		fmt.Fprintf(w, "Result:\tBROKEN: %s\n", r.GetError())
	}
}

// checkExpected returns what is wrong if record seq is no longer in the
// trail with this hash.
func checkExpected(cmd *cobra.Command, admin adminv1.AdminServiceClient, seq uint64, hash string) string {
	r, err := admin.QueryAudit(cmd.Context(), &adminv1.QueryAuditRequest{AfterSeq: seq - 1, PageSize: 1})
	if err != nil {
		return fmt.Sprintf("reading record %d: %v", seq, err)
	}
	if len(r.GetRecords()) == 0 || r.GetRecords()[0].GetSeq() != seq {
		return fmt.Sprintf("record %d is gone: the trail was cut off", seq)
	}
	if r.GetRecords()[0].GetHash() != hash {
		return fmt.Sprintf("record %d has a different hash than expected: the trail was rewritten from there", seq)
	}
	return ""
}

// parseWhen reads an RFC 3339 time or a duration before now.
func parseWhen(s string) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return t, fmt.Errorf("%q is neither an RFC 3339 time nor a duration", s)
	}
	return t, nil
}

func newEvents(g *globals) *cobra.Command {
	ev := &cobra.Command{Use: "events", Short: "Follow notifications (admins)"}
	ev.AddCommand(&cobra.Command{
		Use:     "watch",
		Short:   "Stream approval requests, write issuances and policy changes as they happen",
		Example: "  atfctl events watch\n  atfctl events watch -o json | jq .event.summary",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return follow(cmd, g, "events", func(ctx context.Context, c *client.Conn) (grpc.ServerStreamingClient[adminv1.WatchEventsResponse], error) {
				return c.Admin.WatchEvents(ctx, &adminv1.WatchEventsRequest{})
			}, func(w *tabwriter.Writer, r *adminv1.WatchEventsResponse) {
				e := r.GetEvent()
				fmt.Fprintf(w, "%s\t%s\t%s\n", ts(e.GetTime()), e.GetKind(), e.GetSummary())
			})
		},
	})
	return ev
}
