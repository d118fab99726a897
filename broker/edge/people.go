package edge

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/fault"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// People verifies the ID tokens people present after `atfctl login`
// (*console.People): Issued picks them out from JWT-SVIDs by their
// issuer, Verify checks one.
type People interface {
	Issued(token string) bool
	Verify(ctx context.Context, token string) (attest.Identity, error)
}

// Who, by console role, may call each method as a person
// (docs/console.md, Who may do what): what the console lets them do, no
// more. nil: no person, whatever their roles; the method is for
// automation with an SVID (a SPIFFE ID in atfd's configuration). A method
// missing here is refused to every person too; the agents' own service
// (BrokerService) is: people are not agents.
var (
	anyRole    = config.ConsoleRoles
	admins     = []string{config.ConsoleAdmin}
	responders = []string{config.ConsoleSecurityOperator, config.ConsoleAdmin}

	peopleRules = map[string][]string{
		adminv1.AdminService_GetAgent_FullMethodName:         anyRole,
		adminv1.AdminService_ListAgents_FullMethodName:       anyRole,
		adminv1.AdminService_ListAgentHistory_FullMethodName: anyRole,
		adminv1.AdminService_GetLineage_FullMethodName:       anyRole,
		adminv1.AdminService_GetPolicy_FullMethodName:        anyRole,
		adminv1.AdminService_ListPolicies_FullMethodName:     anyRole,
		adminv1.AdminService_QueryAudit_FullMethodName:       anyRole,
		adminv1.AdminService_VerifyAudit_FullMethodName:      anyRole,
		adminv1.AdminService_WatchEvents_FullMethodName:      anyRole,
		adminv1.AdminService_SetPolicy_FullMethodName:        admins,
		adminv1.AdminService_RollbackPolicy_FullMethodName:   admins,
		adminv1.AdminService_TestPolicy_FullMethodName:       admins,
		adminv1.AdminService_RevokeLineage_FullMethodName:    responders,
		adminv1.AdminService_RegisterAgent_FullMethodName:    nil,
		adminv1.AdminService_UpdateAgent_FullMethodName:      nil,
		adminv1.AdminService_DeregisterAgent_FullMethodName:  nil,
		adminv1.AdminService_Backup_FullMethodName:           nil,
		adminv1.AdminService_GetConformance_FullMethodName:   nil,

		adminv1.MaturityService_EvaluatePromotion_FullMethodName: anyRole,
		adminv1.MaturityService_GetMaturity_FullMethodName:       anyRole,
		adminv1.MaturityService_ListIncidents_FullMethodName:     anyRole,
		adminv1.MaturityService_RecordSignOff_FullMethodName:     admins,
		adminv1.MaturityService_Promote_FullMethodName:           nil,
		adminv1.MaturityService_Demote_FullMethodName:            nil,
		adminv1.MaturityService_RollbackLevel_FullMethodName:     nil,
		adminv1.MaturityService_MigrateAgent_FullMethodName:      nil,
		adminv1.MaturityService_RecordEvidence_FullMethodName:    nil,
		adminv1.MaturityService_OpenIncident_FullMethodName:      nil,
		adminv1.MaturityService_UpdateIncident_FullMethodName:    nil,
		adminv1.MaturityService_CloseIncident_FullMethodName:     nil,

		adminv1.ResponseService_GetKillSwitch_FullMethodName:  anyRole,
		adminv1.ResponseService_Kill_FullMethodName:           responders,
		adminv1.ResponseService_Release_FullMethodName:        {config.ConsoleSecurityOperator},
		adminv1.ResponseService_RevokeSessions_FullMethodName: nil,

		adminv1.ApprovalService_ListApprovals_FullMethodName:  anyRole,
		adminv1.ApprovalService_DecideApproval_FullMethodName: {config.ConsoleApprover},
	}
)

// PeopleRoles are the console roles that may call method as a person
// (nil: no person): the console allows each of its acts by the rule of
// the gRPC method the act calls, so that the console and the command line
// cannot differ.
func PeopleRoles(method string) []string { return peopleRules[method] }

// personRefused is why h may not call method (nil: they may).
func personRefused(method string, h *attest.Human) error {
	who := h.Principal()
	if h.Name != "" {
		who += " (" + h.Name + ")"
	}
	roles, ok := peopleRules[method]
	switch {
	case !ok || roles == nil:
		return fault.New(fault.Denied, "%s is a person: %s is for agents and automation with an SVID, not for people signed in with atfctl login "+
			"(to call it with your SVID, give --svid or --workload-api, or run 'atfctl logout')", who, method)
	case slices.ContainsFunc(roles, h.Has):
		return nil
	case len(h.Roles) == 0:
		return fault.New(fault.Denied, "%s holds no console role: none of their groups maps to one in atfd's configuration (console.roles)", who)
	}
	return fault.New(fault.Denied, "%s may not call %s: it needs the console role %s, and they hold %s (console.roles in atfd's configuration)",
		who, method, strings.Join(roles, " or "), strings.Join(h.Roles, ", "))
}

// dangerous says whether req to method is an act that needs a fresh
// authentication from a person, as in the console: the global kill
// switch, releasing everyone, a policy change (not its dry run). For a
// stream, req is nil: the method alone says.
func dangerous(method string, req any) bool {
	switch r := req.(type) {
	case *adminv1.KillRequest:
		return r.GetAll()
	case *adminv1.ReleaseRequest:
		return r.GetAll()
	case *adminv1.SetPolicyRequest:
		return !r.GetDryRun()
	}
	return method == adminv1.AdminService_SetPolicy_FullMethodName || method == adminv1.AdminService_RollbackPolicy_FullMethodName
}

// fresh refuses a person a dangerous act if they authenticated at the
// provider longer than ReauthAfter ago.
func (e *Edge) fresh(ctx context.Context, method string, req any) error {
	h := Human(ctx)
	if h == nil || !dangerous(method, req) {
		return nil
	}
	if h.AuthTime.IsZero() {
		return fault.New(fault.Denied, "this act needs a recent sign-in, and your OpenID provider did not say when you signed in (no auth_time in the ID token)")
	}
	if age := e.cfg.Now().Sub(h.AuthTime); age > e.cfg.ReauthAfter {
		return fault.New(fault.Denied, "this act needs a sign-in less than %s old (console.reauth_after), and yours is %s old: "+
			"run 'atfctl login' again, then repeat it", e.cfg.ReauthAfter, age.Round(time.Second))
	}
	return nil
}
