package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/broker/client"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

var grantID = regexp.MustCompile(`^[0-9a-f]{32}$`)

func newDelegate(g *globals) *cobra.Command {
	var (
		to, parent string
		roles      []string
		scopes     []string
		ttl        time.Duration
		maxDepth   int32
	)
	cmd := &cobra.Command{
		Use:   "delegate --to SPIFFE_ID --role ROLE... [--scope ROLE=SCOPE,...] [--ttl 10m] [--max-depth N]",
		Short: "Give another agent a narrower slice of your authority",
		Example: `  atfctl delegate --to spiffe://example.org/agents/helper --role reports-read --ttl 10m
  atfctl delegate --to spiffe://example.org/agents/sub --role reports-read --parent 3f2a... --max-depth 0
  atfctl delegate --to spiffe://example.org/agents/helper --role mcp-tools --scope mcp-tools=tools.list`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to == "" || len(roles) == 0 {
				return usageError{fmt.Errorf("--to and at least one --role are required")}
			}
			var rs []*brokerv1.RoleScopes
			for _, sc := range scopes {
				role, list, ok := strings.Cut(sc, "=")
				if !ok || role == "" || list == "" {
					return usageError{fmt.Errorf("--scope %q must be ROLE=SCOPE[,SCOPE...], such as mcp-tools=tools.list", sc)}
				}
				rs = append(rs, &brokerv1.RoleScopes{Role: role, Scopes: strings.Split(list, ",")})
			}
			c, err := g.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			r, err := c.Broker.Delegate(cmd.Context(), &brokerv1.DelegateRequest{
				Delegatee: to, Roles: roles, Ttl: durationpb.New(ttl), MaxDepth: maxDepth, ParentGrantId: parent, Scopes: rs,
			})
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), r, func(w *tabwriter.Writer) { grantTable(w, r.GetGrant()) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "the agent to delegate to (required)")
	f.StringSliceVar(&roles, "role", nil, "role to delegate (repeatable; required)")
	f.StringArrayVar(&scopes, "scope", nil, "narrow an access-token role (kind jwt) to some of its scopes: ROLE=SCOPE,SCOPE (repeatable, once per role)")
	f.DurationVar(&ttl, "ttl", time.Hour, "how long the grant lives")
	f.Int32Var(&maxDepth, "max-depth", 0, "how many further hops the delegatee may re-delegate")
	f.StringVar(&parent, "parent", "", "delegate from a grant you hold instead of your own authority")
	return cmd
}

func newRevoke(g *globals) *cobra.Command {
	revoke := &cobra.Command{Use: "revoke", Short: "Revoke grants, lineages and sessions"}
	var reason string
	grant := &cobra.Command{
		Use:     "grant GRANT_ID --reason TEXT",
		Short:   "Revoke a grant you gave (or one below it) and everything under it",
		Example: `  atfctl revoke grant 3f2a9c... --reason "task finished"`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" {
				return usageError{fmt.Errorf("--reason is required")}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*brokerv1.RevokeGrantResponse, error) {
				return c.Broker.RevokeGrant(ctx, &brokerv1.RevokeGrantRequest{GrantId: args[0], Reason: reason})
			}, func(w *tabwriter.Writer, r *brokerv1.RevokeGrantResponse) { summaryTable(w, r.GetSummary()) })
		},
	}
	grant.Flags().StringVar(&reason, "reason", "", "why (required; kept in the audit trail)")
	var lreason string
	lineage := &cobra.Command{
		Use:   "lineage (SPIFFE_ID | GRANT_ID) --reason TEXT",
		Short: "Revoke everything below an agent or a grant, in the broker and in Vault (admins)",
		Example: `  atfctl revoke lineage spiffe://example.org/agents/planner --reason "prompt injection suspected"
  atfctl revoke lineage 3f2a9c... --reason "compromised sub-agent"`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if lreason == "" {
				return usageError{fmt.Errorf("--reason is required")}
			}
			req := &adminv1.RevokeLineageRequest{Reason: lreason}
			if grantID.MatchString(args[0]) {
				req.Root = &adminv1.RevokeLineageRequest_GrantId{GrantId: args[0]}
			} else {
				req.Root = &adminv1.RevokeLineageRequest_AgentId{AgentId: args[0]}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.RevokeLineageResponse, error) {
				return c.Admin.RevokeLineage(ctx, req)
			}, func(w *tabwriter.Writer, r *adminv1.RevokeLineageResponse) { summaryTable(w, r.GetSummary()) })
		},
	}
	lineage.Flags().StringVar(&lreason, "reason", "", "why (required; kept in the audit trail)")
	var sreason string
	sessions := &cobra.Command{
		Use:     "sessions SPIFFE_ID --reason TEXT",
		Short:   "Revoke every live credential of an agent without blocking it (admins, security operators)",
		Example: `  atfctl revoke sessions spiffe://example.org/agents/planner --reason "rotate after incident INC-7"`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if sreason == "" {
				return usageError{fmt.Errorf("--reason is required")}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.RevokeSessionsResponse, error) {
				return c.Response.RevokeSessions(ctx, &adminv1.RevokeSessionsRequest{AgentId: args[0], Reason: sreason})
			}, func(w *tabwriter.Writer, r *adminv1.RevokeSessionsResponse) { summaryTable(w, r.GetSummary()) })
		},
	}
	sessions.Flags().StringVar(&sreason, "reason", "", "why (required; kept in the audit trail)")
	revoke.AddCommand(grant, lineage, sessions)
	return revoke
}

func newLineage(g *globals) *cobra.Command {
	lineage := &cobra.Command{Use: "lineage", Short: "Inspect delegation lineages (admins)"}
	lineage.AddCommand(&cobra.Command{
		Use:     "show (SPIFFE_ID | GRANT_ID)",
		Short:   "Draw the tree of grants and live credentials below an agent or a grant",
		Example: "  atfctl lineage show spiffe://example.org/agents/planner",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &adminv1.GetLineageRequest{}
			if grantID.MatchString(args[0]) {
				req.Root = &adminv1.GetLineageRequest_GrantId{GrantId: args[0]}
			} else {
				req.Root = &adminv1.GetLineageRequest_AgentId{AgentId: args[0]}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.GetLineageResponse, error) {
				return c.Admin.GetLineage(ctx, req)
			}, func(w *tabwriter.Writer, r *adminv1.GetLineageResponse) { drawLineage(w, args[0], r) })
		},
	})
	return lineage
}

func newWatch(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "watch",
		Short:   "Print revocations of your credentials and grants as they happen",
		Example: "  atfctl watch -o json",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return follow(cmd, g, "revocations", func(ctx context.Context, c *client.Conn) (grpc.ServerStreamingClient[brokerv1.WatchRevocationsResponse], error) {
				return c.Broker.WatchRevocations(ctx, &brokerv1.WatchRevocationsRequest{})
			}, func(w *tabwriter.Writer, ev *brokerv1.WatchRevocationsResponse) {
				fmt.Fprintf(w, "%s\trevoked: %d credential(s) %s, grant(s) %s: %s\n", ts(ev.GetTime()), len(ev.GetAccessors()),
					strings.Join(ev.GetAccessors(), ","), strings.Join(ev.GetGrantIds(), ","), ev.GetReason())
			})
		},
	}
}

// drawLineage prints the grants as a tree under root, with each grant's
// live credentials.
func drawLineage(w *tabwriter.Writer, root string, r *adminv1.GetLineageResponse) {
	children := map[string][]*brokerv1.Grant{}
	ids := map[string]bool{}
	for _, gr := range r.GetGrants() {
		ids[gr.GetId()] = true
	}
	var tops []*brokerv1.Grant
	for _, gr := range r.GetGrants() {
		if ids[gr.GetParentGrantId()] {
			children[gr.GetParentGrantId()] = append(children[gr.GetParentGrantId()], gr)
		} else {
			tops = append(tops, gr)
		}
	}
	creds := map[string][]*adminv1.LiveCredential{}
	for _, c := range r.GetCredentials() {
		creds[c.GetGrantId()] = append(creds[c.GetGrantId()], c)
	}
	fmt.Fprintln(w, root)
	printCreds := func(indent string, cs []*adminv1.LiveCredential) {
		for _, c := range cs {
			fmt.Fprintf(w, "%s• credential %s  %s  %s  expires %s\n", indent, c.GetAccessor(), c.GetAgentId(), c.GetRole(), ts(c.GetExpiresAt()))
		}
	}
	if !grantID.MatchString(root) {
		printCreds("  ", creds[""])
	}
	var draw func(indent string, gs []*brokerv1.Grant)
	draw = func(indent string, gs []*brokerv1.Grant) {
		for _, gr := range gs {
			state := "live until " + ts(gr.GetExpiresAt())
			if gr.GetRevokedAt() != nil {
				state = "REVOKED " + ts(gr.GetRevokedAt())
			} else if gr.GetExpiresAt().AsTime().Before(time.Now()) {
				state = "expired"
			}
			fmt.Fprintf(w, "%s└─ grant %s  %s → %s  [%s]  %s\n", indent, gr.GetId(), gr.GetDelegator(), gr.GetDelegatee(), strings.Join(gr.GetRoles(), ","), state)
			printCreds(indent+"     ", creds[gr.GetId()])
			draw(indent+"   ", children[gr.GetId()])
		}
	}
	draw("  ", tops)
}

func grantTable(w *tabwriter.Writer, gr *brokerv1.Grant) {
	fmt.Fprintf(w, "Grant:\t%s\n", gr.GetId())
	if gr.GetParentGrantId() != "" {
		fmt.Fprintf(w, "Parent grant:\t%s\n", gr.GetParentGrantId())
	}
	fmt.Fprintf(w, "Delegator:\t%s\n", gr.GetDelegator())
	fmt.Fprintf(w, "Delegatee:\t%s\n", gr.GetDelegatee())
	fmt.Fprintf(w, "Roles:\t%s\n", strings.Join(gr.GetRoles(), ", "))
	for _, rs := range gr.GetScopes() {
		fmt.Fprintf(w, "Scopes of %s:\t%s\n", rs.GetRole(), strings.Join(rs.GetScopes(), " "))
	}
	fmt.Fprintf(w, "Expires:\t%s\n", ts(gr.GetExpiresAt()))
	fmt.Fprintf(w, "Depth:\t%d (may re-delegate %d more)\n", gr.GetDepth(), gr.GetMaxDepth())
}

func summaryTable(w *tabwriter.Writer, s *brokerv1.RevocationSummary) {
	fmt.Fprintf(w, "Grants revoked:\t%d\n", s.GetGrantsRevoked())
	fmt.Fprintf(w, "Credentials revoked:\t%d\n", s.GetCredentialsRevoked())
	fmt.Fprintf(w, "Vault confirmed:\t%d\n", s.GetVaultConfirmed())
	fmt.Fprintf(w, "Vault pending:\t%d (retried until Vault confirms)\n", s.GetVaultPending())
	fmt.Fprintf(w, "Committed in:\t%s\n", s.GetCommitDuration().AsDuration())
	fmt.Fprintf(w, "Total:\t%s\n", s.GetTotalDuration().AsDuration())
}
