// Command atfctl is the ATF broker's CLI, for agents (whoami, creds) and
// for the platform team (agent registry).
//
// The caller's identity is its SPIFFE SVID, from the Workload API socket
// ($SPIFFE_ENDPOINT_SOCKET) or from files (--svid, --svid-key, --bundle),
// or a person's sign-in through OpenID Connect (atfctl login).
//
// Exit codes: 0 success, 1 other error, 2 usage error, 3 unauthenticated or
// permission denied, 4 not found, 5 broker or Vault unavailable, 6 invalid
// argument or failed precondition, 7 a limit was hit (retry later), 8 a
// credential request waits for approval (creds fetch without --wait), 9 a
// credential was revoked or the agent killed (exec and sidecar stop). exec
// otherwise exits with its command's status.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	err := newRoot().ExecuteContext(ctx)
	if msg := message(err); err != nil && msg != "" {
		fmt.Fprintln(os.Stderr, "atfctl:", msg)
	}
	stop()
	os.Exit(exitCode(err))
}

type usageError struct{ error }

// exitError ends atfctl with its own code and message, for outcomes that
// are not gRPC errors (a broken audit chain, a request left pending).
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	st, ok := status.FromError(err)
	if !ok {
		return 1
	}
	switch st.Code() {
	case codes.Unauthenticated, codes.PermissionDenied:
		return 3
	case codes.NotFound:
		return 4
	case codes.Unavailable, codes.DeadlineExceeded:
		return 5
	case codes.InvalidArgument, codes.FailedPrecondition, codes.AlreadyExists:
		return 6
	case codes.ResourceExhausted:
		return 7
	}
	return 1
}

func message(err error) string {
	if st, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s: %s", st.Code(), st.Message())
	}
	return err.Error()
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "atfctl",
		Short: "Operate the ATF broker and fetch agent credentials",
		Long: `atfctl talks to atfd, the ATF broker. Agents use it to fetch short-lived Vault
credentials; the platform team uses it to manage the agent registry.

Identity comes from the caller's SPIFFE SVID: from the SPIRE Workload API
($SPIFFE_ENDPOINT_SOCKET or --workload-api), or from files (--svid, --svid-key,
--bundle). A person may instead sign in with 'atfctl login' (their company's
OpenID provider); the commands then act as them until 'atfctl logout'.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	g.register(root)
	root.AddCommand(newWhoAmI(g), newCreds(g), newAgent(g), newDelegate(g), newRevoke(g), newLineage(g), newWatch(g),
		newPolicy(g), newApprovals(g), newAudit(g), newEvents(g), newKill(g), newUnkill(g), newKilled(g), newConformance(g),
		newEvidence(g), newSignOff(g), newIncident(g), newOutcome(g), newAdmin(g), newExec(g), newSidecar(g), newLogin(g), newLogout(g))
	return root
}
