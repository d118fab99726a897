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
}
