package edge

import (
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/broker/config"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Every method of the admin services says which console roles may call
// it as a person, so that a new method is a decision, never an opening;
// the agents' service is refused to every person.
func TestPeopleRulesComplete(t *testing.T) {
	all := func(d grpc.ServiceDesc) []string {
		var out []string
		for _, m := range d.Methods {
			out = append(out, "/"+d.ServiceName+"/"+m.MethodName)
		}
		for _, s := range d.Streams {
			out = append(out, "/"+d.ServiceName+"/"+s.StreamName)
		}
		return out
	}
	methods := 0
	for _, d := range []grpc.ServiceDesc{adminv1.AdminService_ServiceDesc, adminv1.MaturityService_ServiceDesc,
		adminv1.ResponseService_ServiceDesc, adminv1.ApprovalService_ServiceDesc} {
		for _, m := range all(d) {
			methods++
			if _, ok := peopleRules[m]; !ok {
				t.Errorf("%s has no rule for people (peopleRules)", m)
			}
		}
	}
	admin := &attest.Human{Issuer: "https://op", Subject: "a", Roles: config.ConsoleRoles}
	for _, m := range all(brokerv1.BrokerService_ServiceDesc) {
		if err := personRefused(m, admin); err == nil || !strings.Contains(err.Error(), "is a person") {
			t.Errorf("%s as a person holding every role: %v, want refused", m, err)
		}
	}
	if len(peopleRules) != methods {
		t.Errorf("peopleRules has %d methods; one of them is no method of the admin services", len(peopleRules))
	}
	// What the console does not do, people may not do here either.
	for _, m := range []string{adminv1.AdminService_Backup_FullMethodName, adminv1.AdminService_RegisterAgent_FullMethodName,
		adminv1.MaturityService_MigrateAgent_FullMethodName, adminv1.MaturityService_Promote_FullMethodName, adminv1.ResponseService_RevokeSessions_FullMethodName} {
		if err := personRefused(m, admin); err == nil || !strings.Contains(err.Error(), "is a person") {
			t.Errorf("%s as a person holding every role: %v, want refused", m, err)
		}
	}
}

// The acts that need a fresh sign-in from a person: the global kill
// switch, releasing everyone, a policy change but not its dry run; for a
// stream the method alone says.
func TestDangerous(t *testing.T) {
	for _, tt := range []struct {
		method string
		req    any
		want   bool
	}{
		{adminv1.ResponseService_Kill_FullMethodName, &adminv1.KillRequest{Target: &adminv1.KillRequest_All{All: true}}, true},
		{adminv1.ResponseService_Kill_FullMethodName, &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: "spiffe://td/a"}}, false},
		{adminv1.ResponseService_Release_FullMethodName, &adminv1.ReleaseRequest{Target: &adminv1.ReleaseRequest_All{All: true}}, true},
		{adminv1.AdminService_SetPolicy_FullMethodName, &adminv1.SetPolicyRequest{}, true},
		{adminv1.AdminService_SetPolicy_FullMethodName, &adminv1.SetPolicyRequest{DryRun: true}, false},
		{adminv1.AdminService_RollbackPolicy_FullMethodName, &adminv1.RollbackPolicyRequest{}, true},
		{adminv1.AdminService_SetPolicy_FullMethodName, nil, true},
		{adminv1.AdminService_WatchEvents_FullMethodName, nil, false},
	} {
		if got := dangerous(tt.method, tt.req); got != tt.want {
			t.Errorf("dangerous(%s, %v) = %v, want %v", tt.method, tt.req, got, tt.want)
		}
	}
}
