package broker_test

import (
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// A stream's request is validated like a unary one: a malformed approval
// id is the caller's mistake, refused before the handler looks it up.
func TestStreamRequestValidated(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_JUNIOR, "reports-read")
	conn := b.Dial(t, agent)
	for _, tt := range []struct {
		id   string
		code codes.Code
		want []string
	}{
		{"../0123456789abcdef0123456789abcdef", codes.InvalidArgument, []string{"invalid request", "approval_id", "does not match regex pattern"}},
		{"", codes.InvalidArgument, []string{"invalid request", "approval_id"}},
		{"0123456789abcdef0123456789abcdef", codes.NotFound, nil},
	} {
		s, err := conn.Broker.WaitApproval(t.Context(), &brokerv1.WaitApprovalRequest{ApprovalId: tt.id})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Recv()
		brokertest.WantCode(t, err, tt.code, tt.want...)
	}
}
