package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/broker/client"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

func newWhoAmI(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "whoami",
		Short:   "Show the identity the broker sees and the caller's registry standing",
		Example: "  atfctl whoami\n  atfctl whoami --svid agent.pem --svid-key agent.key --bundle bundle.pem -o json",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*brokerv1.WhoAmIResponse, error) {
				return c.Broker.WhoAmI(ctx, &brokerv1.WhoAmIRequest{})
			}, func(w *tabwriter.Writer, r *brokerv1.WhoAmIResponse) {
				fmt.Fprintf(w, "SPIFFE ID:\t%s\n", r.GetSpiffeId())
				fmt.Fprintf(w, "Authenticated with:\t%s\n", enumName(r.GetAuthMethod().String(), "AUTH_METHOD_"))
				fmt.Fprintf(w, "SVID expires:\t%s\n", ts(r.GetSvidExpiresAt()))
				if !r.GetRegistered() {
					fmt.Fprintf(w, "Registered:\tno (ask the platform team to register this SPIFFE ID)\n")
					return
				}
				fmt.Fprintf(w, "Registered:\tyes\n")
				fmt.Fprintf(w, "Status:\t%s\n", enumName(r.GetStatus().String(), "AGENT_STATUS_"))
				fmt.Fprintf(w, "Level:\t%s\n", enumName(r.GetLevel().String(), "LEVEL_"))
				fmt.Fprintf(w, "Roles:\t%s\n", strings.Join(r.GetRoles(), ", "))
			})
		},
	}
}

func newCreds(g *globals) *cobra.Command {
	creds := &cobra.Command{Use: "creds", Short: "Fetch credentials"}
	creds.AddCommand(credsFetch(g))
	return creds
}

func credsFetch(g *globals) *cobra.Command {
	var (
		req             brokerv1.FetchCredentialRequest
		ttl             time.Duration
		tokenOnly, wait bool
	)
	cmd := &cobra.Command{
		Use:   "fetch --role ROLE",
		Short: "Fetch a short-lived Vault token for a role",
		Example: `  atfctl creds fetch --role reports-read
  export VAULT_TOKEN=$(atfctl creds fetch --role reports-read --token-only)
  atfctl creds fetch --role reports-read --ttl 5m --purpose "nightly summary" -o json
  atfctl creds fetch --role reports-write --justification "publish Q3 numbers" --wait`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.Role == "" {
				return usageError{fmt.Errorf("--role is required")}
			}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			c, err := g.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			r, err := fetchCredential(cmd, g, c, &req, wait)
			if err != nil {
				return err
			}
			cr := r.GetCredential()
			if tokenOnly {
				_, err := fmt.Fprintln(cmd.OutOrStdout(), cr.GetToken())
				return err
			}
			return g.print(cmd.OutOrStdout(), r, func(w *tabwriter.Writer) { credentialTable(w, cr) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Role, "role", "", "role to fetch a credential for (required)")
	f.DurationVar(&ttl, "ttl", 0, "requested lifetime; default and maximum: the role's and your level's")
	f.StringVar(&req.Purpose, "purpose", "", "why, for the audit trail")
	f.BoolVar(&tokenOnly, "token-only", false, "print only the token")
	f.StringVar(&req.GrantId, "grant", "", "act under a grant delegated to you")
	f.StringVar(&req.Justification, "justification", "", "why the action is needed, for the approver (Junior writes)")
	f.BoolVar(&wait, "wait", false, "if a human must approve, wait for the decision and then fetch")
	f.StringVar(&req.ApprovalId, "approval", "", "redeem this approved request")
	return cmd
}

// fetchCredential fetches a credential. When a human must approve it first,
// it prints the pending request and ends with exit code 8, or with wait
// follows the request until it is decided and then redeems it.
func fetchCredential(cmd *cobra.Command, g *globals, c *client.Conn, req *brokerv1.FetchCredentialRequest, wait bool) (*brokerv1.FetchCredentialResponse, error) {
	r, err := c.Broker.FetchCredential(cmd.Context(), req)
	ap := r.GetApproval()
	if err != nil || ap == nil {
		return r, err
	}
	if !wait {
		if err := g.print(cmd.OutOrStdout(), r, func(w *tabwriter.Writer) { printApproval(w, ap) }); err != nil {
			return nil, err
		}
		return nil, exitError{code: 8, msg: fmt.Sprintf("request waits for approval %s; redeem it with --approval %s once approved, or use --wait", ap.GetId(), ap.GetId())}
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "waiting for a human to approve request %s (expires %s)...\n", ap.GetId(), ts(ap.GetExpiresAt()))
	if err := waitApproval(cmd, c.Broker, ap.GetId()); err != nil {
		return nil, err
	}
	req.ApprovalId = ap.GetId()
	return c.Broker.FetchCredential(cmd.Context(), req)
}

func credentialTable(w *tabwriter.Writer, cr *brokerv1.Credential) {
	fmt.Fprintf(w, "Role:\t%s\n", cr.GetRole())
	fmt.Fprintf(w, "Token:\t%s\n", cr.GetToken())
	fmt.Fprintf(w, "Accessor:\t%s\n", cr.GetAccessor())
	fmt.Fprintf(w, "Policies:\t%s\n", strings.Join(cr.GetPolicies(), ", "))
	fmt.Fprintf(w, "Expires:\t%s (in %s)\n", ts(cr.GetExpiresAt()), time.Until(cr.GetExpiresAt().AsTime()).Round(time.Second))
	fmt.Fprintf(w, "Renewable:\t%t\n", cr.GetRenewable())
	fmt.Fprintf(w, "Level:\t%s\n", enumName(cr.GetLevel().String(), "LEVEL_"))
	fmt.Fprintf(w, "Vault:\t%s\n", cr.GetVaultAddress())
	fmt.Fprintf(w, "Decision:\t%s\n", cr.GetDecisionId())
	if cr.GetGrantId() != "" {
		fmt.Fprintf(w, "Grant:\t%s\n", cr.GetGrantId())
		fmt.Fprintf(w, "Chain:\t%s\n", strings.Join(cr.GetChain(), " → "))
	}
	if cr.GetLeaseId() != "" {
		fmt.Fprintf(w, "Lease:\t%s (ends %s)\n", cr.GetLeaseId(), ts(cr.GetLeaseExpiresAt()))
		for _, k := range slices.Sorted(maps.Keys(cr.GetSecret())) {
			fmt.Fprintf(w, "Secret %s:\t%s\n", k, cr.GetSecret()[k])
		}
	}
}

func newAgent(g *globals) *cobra.Command {
	agent := &cobra.Command{Use: "agent", Short: "Manage the agent registry (admins)"}
	agent.AddCommand(agentRegister(g), agentGet(g), agentList(g), agentUpdate(g), agentDeregister(g), agentHistory(g),
		agentPromote(g), agentMigrate(g), agentDemote(g), agentRollback(g), agentMaturity(g))
	return agent
}

func agentRegister(g *globals) *cobra.Command {
	var (
		owner, purpose, version, digest string
		roles                           []string
	)
	cmd := &cobra.Command{
		Use:   "register SPIFFE_ID --owner EMAIL --purpose TEXT --role ROLE...",
		Short: "Register an agent; it starts as an intern",
		Long: "Autonomy is earned: a new agent is an intern. One that earned a level elsewhere is placed there with\n" +
			"atfctl agent migrate once the sign-offs a promotion to that level needs are recorded. The ID of an\n" +
			"admin, approver, security operator or outcome reporter is refused: people are not agents.",
		Example: `  atfctl agent register spiffe://example.org/agents/reporter --owner alice@example.org --purpose "weekly reports" --role reports-read`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			r, err := c.Admin.RegisterAgent(cmd.Context(), &adminv1.RegisterAgentRequest{
				SpiffeId: args[0], Owner: owner, Purpose: purpose, Roles: roles, Version: version, ConfigDigest: digest,
			})
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), r, func(w *tabwriter.Writer) { agentTable(w, r.GetAgent()) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&owner, "owner", "", "accountable human, e.g. an email address (required)")
	f.StringVar(&purpose, "purpose", "", "what the agent is for (required)")
	f.StringSliceVar(&roles, "role", nil, "role in the agent's capability manifest (repeatable)")
	f.StringVar(&version, "version", "", "agent version")
	f.StringVar(&digest, "config-digest", "", "digest of the agent's configuration")
	return cmd
}

func agentGet(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "get SPIFFE_ID",
		Short:   "Show one agent",
		Example: "  atfctl agent get spiffe://example.org/agents/reporter -o json",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.GetAgentResponse, error) {
				return c.Admin.GetAgent(ctx, &adminv1.GetAgentRequest{SpiffeId: args[0]})
			}, func(w *tabwriter.Writer, r *adminv1.GetAgentResponse) { agentTable(w, r.GetAgent()) })
		},
	}
}

func agentList(g *globals) *cobra.Command {
	var (
		pageSize int32
		all      bool
	)
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List registered agents, one page at a time",
		Example: "  atfctl agent list\n  atfctl agent list --all -o json",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			out := &adminv1.ListAgentsResponse{}
			token := ""
			for {
				r, err := c.Admin.ListAgents(cmd.Context(), &adminv1.ListAgentsRequest{PageSize: pageSize, PageToken: token, IncludeDeregistered: all})
				if err != nil {
					return err
				}
				out.Agents = append(out.Agents, r.GetAgents()...)
				if token = r.GetNextPageToken(); token == "" {
					break
				}
			}
			return g.print(cmd.OutOrStdout(), out, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "SPIFFE ID\tLEVEL\tSTATUS\tOWNER\tROLES\tLIVE")
				for _, a := range out.GetAgents() {
					live := "?"
					if a.LiveCredentials != nil {
						live = strconv.Itoa(int(a.GetLiveCredentials()))
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", a.GetSpiffeId(), enumName(a.GetLevel().String(), "LEVEL_"),
						enumName(a.GetStatus().String(), "AGENT_STATUS_"), a.GetOwner(), strings.Join(a.GetRoles(), ","), live)
				}
			})
		},
	}
	cmd.Flags().Int32Var(&pageSize, "page-size", 100, "agents fetched per request")
	cmd.Flags().BoolVar(&all, "all", false, "include deregistered agents")
	return cmd
}

func agentUpdate(g *globals) *cobra.Command {
	var (
		owner, purpose, level, version, digest string
		roles                                  []string
		revision                               uint64
	)
	cmd := &cobra.Command{
		Use:     "update SPIFFE_ID [flags]",
		Short:   "Change an agent's registration; only the flags given change",
		Example: "  atfctl agent update spiffe://example.org/agents/reporter --role reports-read --role reports-write --level senior",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &adminv1.UpdateAgentRequest{SpiffeId: args[0], ExpectedRevision: revision}
			fl := cmd.Flags()
			if fl.Changed("owner") {
				req.Owner = &owner
			}
			if fl.Changed("purpose") {
				req.Purpose = &purpose
			}
			if fl.Changed("role") {
				req.Roles = &adminv1.RoleList{Roles: roles}
			}
			if fl.Changed("level") {
				lvl, err := parseLevel(level)
				if err != nil {
					return err
				}
				req.Level = &lvl
			}
			if fl.Changed("version") {
				req.Version = &version
			}
			if fl.Changed("config-digest") {
				req.ConfigDigest = &digest
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.UpdateAgentResponse, error) {
				return c.Admin.UpdateAgent(ctx, req)
			}, func(w *tabwriter.Writer, r *adminv1.UpdateAgentResponse) { agentTable(w, r.GetAgent()) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&owner, "owner", "", "accountable human")
	f.StringVar(&purpose, "purpose", "", "what the agent is for")
	f.StringSliceVar(&roles, "role", nil, "replace the capability manifest (repeatable; --role= empties it)")
	f.StringVar(&level, "level", "", "maturity level")
	f.StringVar(&version, "version", "", "agent version")
	f.StringVar(&digest, "config-digest", "", "digest of the agent's configuration")
	f.Uint64Var(&revision, "revision", 0, "apply only if the agent is at this revision")
	return cmd
}

func agentDeregister(g *globals) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:     "deregister SPIFFE_ID --reason TEXT",
		Short:   "Deregister an agent and revoke its live credentials",
		Example: `  atfctl agent deregister spiffe://example.org/agents/reporter --reason "replaced by v2"`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" {
				return usageError{fmt.Errorf("--reason is required")}
			}
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.DeregisterAgentResponse, error) {
				return c.Admin.DeregisterAgent(ctx, &adminv1.DeregisterAgentRequest{SpiffeId: args[0], Reason: reason})
			}, func(w *tabwriter.Writer, r *adminv1.DeregisterAgentResponse) {
				agentTable(w, r.GetAgent())
				fmt.Fprintf(w, "Credentials revoked:\t%d\n", r.GetCredentialsRevoked())
				fmt.Fprintf(w, "Revocations pending:\t%d\n", r.GetRevocationsPending())
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; kept in the agent's history)")
	return cmd
}

func agentHistory(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "history SPIFFE_ID",
		Short:   "Show every recorded change to an agent",
		Example: "  atfctl agent history spiffe://example.org/agents/reporter",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call(cmd, g, func(ctx context.Context, c *client.Conn) (*adminv1.ListAgentHistoryResponse, error) {
				return c.Admin.ListAgentHistory(ctx, &adminv1.ListAgentHistoryRequest{SpiffeId: args[0]})
			}, func(w *tabwriter.Writer, r *adminv1.ListAgentHistoryResponse) {
				fmt.Fprintln(w, "REV\tTIME\tACTOR\tACTION\tLEVEL\tREASON")
				for _, ch := range r.GetChanges() {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\n", ch.GetRevision(), ts(ch.GetTime()), ch.GetActor(), ch.GetAction(),
						enumName(ch.GetAgent().GetLevel().String(), "LEVEL_"), ch.GetReason())
				}
			})
		},
	}
}

func agentTable(w *tabwriter.Writer, a *adminv1.Agent) {
	fmt.Fprintf(w, "SPIFFE ID:\t%s\n", a.GetSpiffeId())
	fmt.Fprintf(w, "Status:\t%s\n", enumName(a.GetStatus().String(), "AGENT_STATUS_"))
	if k := a.GetKill(); k != nil {
		fmt.Fprintf(w, "Killed:\t%s by %s: %s\n", ts(k.GetAt()), k.GetBy(), k.GetReason())
	}
	if b := a.GetBreaker(); b.GetState() != "" && b.GetState() != "closed" {
		fmt.Fprintf(w, "Breaker:\t%s\n", breakerText(b))
	}
	fmt.Fprintf(w, "Level:\t%s\n", enumName(a.GetLevel().String(), "LEVEL_"))
	fmt.Fprintf(w, "Owner:\t%s\n", a.GetOwner())
	fmt.Fprintf(w, "Purpose:\t%s\n", a.GetPurpose())
	fmt.Fprintf(w, "Roles:\t%s\n", strings.Join(a.GetRoles(), ", "))
	if a.GetVersion() != "" || a.GetConfigDigest() != "" {
		fmt.Fprintf(w, "Version:\t%s %s\n", a.GetVersion(), a.GetConfigDigest())
	}
	fmt.Fprintf(w, "Updated:\t%s by %s (revision %d)\n", ts(a.GetUpdatedAt()), a.GetUpdatedBy(), a.GetRevision())
}

func parseLevel(s string) (brokerv1.Level, error) {
	v, ok := brokerv1.Level_value["LEVEL_"+strings.ToUpper(s)]
	if !ok || v == 0 {
		return 0, usageError{fmt.Errorf("--level must be intern, junior, senior or principal, not %q", s)}
	}
	return brokerv1.Level(v), nil
}

func enumName(s, prefix string) string { return strings.ToLower(strings.TrimPrefix(s, prefix)) }

func ts(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().Local().Format(time.RFC3339)
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s takes %d argument(s), got %d; see --help", cmd.CommandPath(), n, len(args))}
		}
		return nil
	}
}

// waitApproval follows an approval request until it is decided.
func waitApproval(cmd *cobra.Command, b brokerv1.BrokerServiceClient, id string) error {
	stream, err := b.WaitApproval(cmd.Context(), &brokerv1.WaitApprovalRequest{ApprovalId: id})
	if err != nil {
		return err
	}
	for {
		r, err := stream.Recv()
		if err != nil {
			return err
		}
		switch ap := r.GetApproval(); ap.GetStatus() {
		case brokerv1.ApprovalStatus_APPROVAL_STATUS_APPROVED:
			fmt.Fprintf(cmd.ErrOrStderr(), "approved by %s: %s\n", ap.GetDecidedBy(), ap.GetReason())
			return nil
		case brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING:
		default:
			return exitError{code: 3, msg: fmt.Sprintf("approval %s is %s: %s", id, enumName(ap.GetStatus().String(), "APPROVAL_STATUS_"), ap.GetReason())}
		}
	}
}

func printApproval(w *tabwriter.Writer, ap *brokerv1.Approval) {
	fmt.Fprintf(w, "Status:\t%s\n", enumName(ap.GetStatus().String(), "APPROVAL_STATUS_"))
	fmt.Fprintf(w, "Approval:\t%s\n", ap.GetId())
	fmt.Fprintf(w, "Role:\t%s (%s, %s data)\n", ap.GetRole(), ap.GetClass(), ap.GetClassification())
	if sc := ap.GetScopes(); len(sc) > 0 {
		fmt.Fprintf(w, "Scopes:\t%s\n", strings.Join(sc, " "))
	}
	fmt.Fprintf(w, "Expires:\t%s\n", ts(ap.GetExpiresAt()))
}
