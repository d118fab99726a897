package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/agentictrust/atf/broker/client"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

func newKill(g *globals) *cobra.Command {
	var (
		reason               string
		all, lineage, forced bool
	)
	cmd := &cobra.Command{
		Use:   "kill (SPIFFE_ID [--lineage] | --all) --reason TEXT [--forced]",
		Short: "Stop an agent (or every agent) at once: its credentials die in Vault, nothing more is issued (admins, security operators)",
		Long: "The kill switch survives restarts; only a security operator can release it (atfctl unkill). By default the\n" +
			"answer waits briefly for Vault to confirm the revocations; --forced answers as soon as the broker has committed\n" +
			"the stop and leaves Vault to the durable revocation queue.",
		Example: `  atfctl kill spiffe://example.org/agents/planner --reason "exfiltration suspected (INC-9)"
  atfctl kill spiffe://example.org/agents/planner --lineage --reason "and everything it delegated to"
  atfctl kill --all --reason "SEV-1: stop every agent"`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &adminv1.KillRequest{Reason: reason, Lineage: lineage, Forced: forced}
			switch {
			case reason == "":
				return usageError{fmt.Errorf("--reason is required")}
			case all && len(args) == 0 && !lineage:
				req.Target = &adminv1.KillRequest_All{All: true}
			case !all && len(args) == 1:
				req.Target = &adminv1.KillRequest_AgentId{AgentId: args[0]}
			default:
				return usageError{fmt.Errorf("name one SPIFFE ID, or --all (without --lineage)")}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.KillResponse, error) {
				return c.Response.Kill(ctx, req)
			}, func(w *tabwriter.Writer, r *adminv1.KillResponse) {
				fmt.Fprintf(w, "Stopped:\t%s\n", strings.Join(r.GetKilled(), ", "))
				summaryTable(w, r.GetSummary())
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; kept in the audit trail)")
	cmd.Flags().BoolVar(&all, "all", false, "every agent: the global switch")
	cmd.Flags().BoolVar(&lineage, "lineage", false, "also stop every agent holding a grant below this one")
	cmd.Flags().BoolVar(&forced, "forced", false, "answer without waiting for Vault's confirmation")
	return cmd
}

func newUnkill(g *globals) *cobra.Command {
	var reason string
	var all bool
	cmd := &cobra.Command{
		Use:   "unkill (SPIFFE_ID | --all) --reason TEXT",
		Short: "Release the kill switch from an agent, or the global one (security operators)",
		Example: `  atfctl unkill spiffe://example.org/agents/planner --reason "INC-9 closed, RCA done"
  atfctl unkill --all --reason "SEV-1 mitigated"`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &adminv1.ReleaseRequest{Reason: reason}
			switch {
			case reason == "":
				return usageError{fmt.Errorf("--reason is required")}
			case all && len(args) == 0:
				req.Target = &adminv1.ReleaseRequest_All{All: true}
			case !all && len(args) == 1:
				req.Target = &adminv1.ReleaseRequest_AgentId{AgentId: args[0]}
			default:
				return usageError{fmt.Errorf("name one SPIFFE ID, or --all")}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.ReleaseResponse, error) {
				return c.Response.Release(ctx, req)
			}, func(w *tabwriter.Writer, r *adminv1.ReleaseResponse) { fmt.Fprintln(w, "Released.") })
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; kept in the audit trail)")
	cmd.Flags().BoolVar(&all, "all", false, "release the global switch")
	return cmd
}

func newKilled(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "killed",
		Short:   "Show the global kill switch and the agents the kill switch holds",
		Example: "  atfctl killed\n  atfctl killed -o json",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.GetKillSwitchResponse, error) {
				return c.Response.GetKillSwitch(ctx, &adminv1.GetKillSwitchRequest{})
			}, func(w *tabwriter.Writer, r *adminv1.GetKillSwitchResponse) {
				if gk := r.GetGlobal(); gk != nil {
					fmt.Fprintf(w, "GLOBAL SWITCH SET\t%s by %s: %s\n", ts(gk.GetAt()), gk.GetBy(), gk.GetReason())
				}
				fmt.Fprintln(w, "AGENT\tSINCE\tBY\tREASON\tLINEAGE OF")
				for _, a := range r.GetAgents() {
					k := a.GetKill()
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", a.GetSpiffeId(), ts(k.GetAt()), k.GetBy(), k.GetReason(), k.GetLineageRoot())
				}
			})
		},
	}
}
