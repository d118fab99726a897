package broker_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// A watch that asks for marks starts with one, and every event carries a
// cursor. A watch resumed after a cursor hears first what came after it;
// resumed after the last, only what follows. A cursor the broker did not
// give, or gave before it restarted, cannot resume (resumed unset, and the
// watch runs from now); one too long is refused.
func TestWatchResumes(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	b := f.Start(t, cfg)
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	bc := b.Dial(t, agent).Broker
	open := func(cursor string) (brokerv1.BrokerService_WatchRevocationsClient, *brokerv1.WatchRevocationsResponse) {
		t.Helper()
		w, err := bc.WatchRevocations(t.Context(), &brokerv1.WatchRevocationsRequest{ResumeAfter: cursor, Marks: true})
		if err != nil {
			t.Fatal(err)
		}
		m := recvWithin(t, w, 5*time.Second)
		if len(m.GetAccessors())+len(m.GetGrantIds()) > 0 || m.GetCursor() == "" {
			t.Fatalf("first message after %q = %v, want a mark", cursor, m)
		}
		return w, m
	}
	revoke := func() (accessor string) {
		t.Helper()
		c, err := bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Dial(t, f.Admin).Admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{
			Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: agent.String()}, Reason: "resume test"}); err != nil {
			t.Fatal(err)
		}
		return c.GetCredential().GetAccessor()
	}

	w, m := open("")
	start := m.GetCursor()
	if m.GetResumed() {
		t.Errorf("a watch that did not ask to resume says it did: %v", m)
	}
	acc := revoke()
	ev := recvWithin(t, w, 5*time.Second)
	if !slices.Contains(ev.GetAccessors(), acc) || ev.GetCursor() == "" || ev.GetCursor() == start {
		t.Fatalf("event %v, want %s revoked, with a cursor of its own", ev, acc)
	}

	w, m = open(start)
	if !m.GetResumed() || m.GetCursor() != start {
		t.Fatalf("resuming after %s: first message %v, want a mark resumed there", start, m)
	}
	if got := recvWithin(t, w, 5*time.Second); !slices.Contains(got.GetAccessors(), acc) || got.GetCursor() != ev.GetCursor() {
		t.Fatalf("resumed after %s, heard %v; want the revocation made since, %v", start, got, ev)
	}

	w, m = open(ev.GetCursor())
	if !m.GetResumed() {
		t.Fatalf("resuming after the last event: %v, want resumed", m)
	}
	if acc2 := revoke(); !slices.Contains(recvWithin(t, w, 5*time.Second).GetAccessors(), acc2) {
		t.Errorf("resumed after the last event, the next message is not the next revocation (%s)", acc2)
	}

	epoch, _, _ := strings.Cut(start, ".")
	for _, cursor := range []string{"garbage", "m0.1", epoch + ".-1", epoch + ".99999999"} {
		if _, m := open(cursor); m.GetResumed() {
			t.Errorf("resuming after %q: %v, want not resumed", cursor, m)
		}
	}
	w, err := bc.WatchRevocations(t.Context(), &brokerv1.WatchRevocationsRequest{ResumeAfter: strings.Repeat("x", 129)})
	if err == nil {
		_, err = w.Recv()
	}
	brokertest.WantCode(t, err, codes.InvalidArgument, "resume_after")

	b.Stop()
	b = f.Start(t, cfg)
	bc = b.Dial(t, agent).Broker
	if _, m := open(ev.GetCursor()); m.GetResumed() {
		t.Errorf("resuming after a restart: %v, want not resumed", m)
	}
}
