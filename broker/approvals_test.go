package broker_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/broker/notify"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Human approval of Junior writes, the notifications that go with it, and
// the rate and live-credential limits, through the API against the real
// SPIRE and Vault of the shared dev stack.

// streamWait bounds how long a test waits for a stream or a webhook to say
// something it must say.
const streamWait = 10 * time.Second

var approvalID = regexp.MustCompile(`^[0-9a-f]{32}$`)

// approvalEnv is a broker with approvers, and the first approver's
// connection to it.
type approvalEnv struct {
	*delegEnv
	approver  spiffeid.ID
	approvals adminv1.ApprovalServiceClient
}

// newApprovalEnv starts a broker on cfg whose approvers are a fresh
// approver and more.
func newApprovalEnv(t *testing.T, f *brokertest.Fixture, cfg config.Config, more ...spiffeid.ID) *approvalEnv {
	t.Helper()
	approver := f.ID(t, "approver")
	cfg.Approvals.Approvers = []string{approver.String()}
	for _, id := range more {
		cfg.Approvals.Approvers = append(cfg.Approvals.Approvers, id.String())
	}
	e := newDelegEnv(t, f, cfg)
	return &approvalEnv{delegEnv: e, approver: approver, approvals: e.b.Dial(t, approver).Approvals}
}

// agent registers id and connects it to the broker.
func (e *approvalEnv) agent(t *testing.T, id spiffeid.ID, level brokerv1.Level, roles ...string) delegAgent {
	t.Helper()
	e.b.Register(t, id, level, roles...)
	return delegAgent{id: id, bc: e.b.Dial(t, id).Broker}
}

// decide has the approver decide id.
func (e *approvalEnv) decide(t *testing.T, id string, verdict adminv1.Verdict, reason string) *brokerv1.Approval {
	t.Helper()
	r, err := e.approvals.DecideApproval(t.Context(), &adminv1.DecideApprovalRequest{ApprovalId: id, Verdict: verdict, Reason: reason})
	if err != nil {
		t.Fatalf("%s deciding %s: %v", verdict, id, err)
	}
	return r.GetApproval()
}

// listed returns the approvals the approver sees in status st for agent.
func (e *approvalEnv) listed(t *testing.T, st brokerv1.ApprovalStatus, agent spiffeid.ID) []*brokerv1.Approval {
	t.Helper()
	r, err := e.approvals.ListApprovals(t.Context(), &adminv1.ListApprovalsRequest{Status: st, Agent: agent.String()})
	if err != nil {
		t.Fatalf("ListApprovals: %v", err)
	}
	return r.GetApprovals()
}

// requestWrite asks for reports-write as a Junior and returns the pending
// request the answer carries instead of a credential.
func (a delegAgent) requestWrite(t *testing.T, justification string) *brokerv1.Approval {
	t.Helper()
	r, err := a.bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-write", Justification: justification})
	if err != nil {
		t.Fatalf("%s asking for reports-write: %v", a.id, err)
	}
	if r.GetCredential() != nil {
		t.Fatalf("a Junior write was issued without approval: %v", r.GetCredential().GetAccessor())
	}
	ap := r.GetApproval()
	if ap.GetStatus() != brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING || !approvalID.MatchString(ap.GetId()) {
		t.Fatalf("answer to a Junior write = %v, want a pending approval with an id", ap)
	}
	return ap
}

// redeem fetches role with approval id.
func (a delegAgent) redeem(ctx context.Context, role, id string) (*brokerv1.Credential, error) {
	r, err := a.bc.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: role, ApprovalId: id})
	return r.GetCredential(), err
}

// streamed is one result of a stream's Recv.
type streamed[T any] struct {
	msg *T
	err error
}

// follow receives s's messages on a channel until the stream ends, so that
// a test can wait for the next one with a deadline.
func follow[T any](s grpc.ServerStreamingClient[T]) <-chan streamed[T] {
	ch := make(chan streamed[T], 64)
	go func() {
		defer close(ch)
		for {
			m, err := s.Recv()
			ch <- streamed[T]{m, err}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

// within waits up to d for the stream's next message or its end; ok is
// false if neither came.
func within[T any](ch <-chan streamed[T], d time.Duration) (r streamed[T], ok bool) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case r, open := <-ch:
		if !open {
			return streamed[T]{err: io.EOF}, true
		}
		return r, true
	case <-timer.C:
		return r, false
	}
}

// waitApproval opens a's WaitApproval stream on id, closed when t ends.
func (a delegAgent) waitApproval(t *testing.T, id string) <-chan streamed[brokerv1.WaitApprovalResponse] {
	t.Helper()
	s, err := a.bc.WaitApproval(t.Context(), &brokerv1.WaitApprovalRequest{ApprovalId: id})
	if err != nil {
		t.Fatalf("WaitApproval: %v", err)
	}
	return follow(s)
}

// wantWaitStatus fails t unless the wait stream's next message shows want.
func wantWaitStatus(t *testing.T, ch <-chan streamed[brokerv1.WaitApprovalResponse], want brokerv1.ApprovalStatus) *brokerv1.Approval {
	t.Helper()
	r, ok := within(ch, streamWait)
	switch {
	case !ok:
		t.Fatalf("WaitApproval sent nothing within %s; want %s", streamWait, want)
	case r.err != nil:
		t.Fatalf("WaitApproval ended with %v; want %s", r.err, want)
	case r.msg.GetApproval().GetStatus() != want:
		t.Fatalf("WaitApproval sent %s, want %s", r.msg.GetApproval().GetStatus(), want)
	}
	return r.msg.GetApproval()
}

// wantWaitEnd reports an error unless the wait stream ends cleanly, now
// that the request reached status.
func wantWaitEnd(t *testing.T, ch <-chan streamed[brokerv1.WaitApprovalResponse], status string) {
	t.Helper()
	switch r, ok := within(ch, 3*time.Second); {
	case !ok:
		t.Errorf("WaitApproval is still open 3s after the request was %s; it must end once the request is decided", status)
	case r.err == nil:
		t.Errorf("WaitApproval sent %v after %s; want the stream's end", r.msg.GetApproval().GetStatus(), status)
	case !errors.Is(r.err, io.EOF):
		t.Errorf("WaitApproval ended with %v after %s; want a clean end", r.err, status)
	}
}

// The whole flow against the real Vault: a Junior's write waits, the
// agent's wait stream follows it, an approver approves, and the agent
// redeems the approval once for a token Vault lets write; nobody else, and
// no other role, redeems it.
func TestApprovals(t *testing.T) {
	f := brokertest.Setup(t)
	self, delegator := f.ID(t, "self-approver"), f.ID(t, "delegating-approver")
	// self and delegator were agents before the configuration made them
	// approvers too: an approver is never registered as an agent.
	cfg := f.Config(t, t.TempDir())
	before := f.Start(t, cfg)
	before.Register(t, self, brokerv1.Level_LEVEL_JUNIOR, reportsRW...)
	before.Register(t, delegator, brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	before.Stop()
	e := newApprovalEnv(t, f, cfg, self, delegator)

	t.Run("approve and redeem", func(t *testing.T) {
		t.Parallel()
		junior := e.agent(t, f.ID(t, "junior"), brokerv1.Level_LEVEL_JUNIOR, reportsRW...)
		other := e.agent(t, f.ID(t, "other-junior"), brokerv1.Level_LEVEL_JUNIOR, reportsRW...)

		before := time.Now()
		ap := junior.requestWrite(t, "Q3 close; questions to alice@example.org")
		after := time.Now()
		if ap.GetAgentId() != junior.id.String() || ap.GetRole() != "reports-write" || ap.GetClass() != "write" ||
			ap.GetLevel() != brokerv1.Level_LEVEL_JUNIOR || ap.GetDecisionId() == "" {
			t.Errorf("pending approval = %v", ap)
		}
		created := ap.GetCreatedAt().AsTime()
		if created.Before(before.Add(-time.Second)) || created.After(after.Add(time.Second)) {
			t.Errorf("created at %s, want between %s and %s", created, before, after)
		}
		if d := ap.GetExpiresAt().AsTime().Sub(created); d != time.Hour {
			t.Errorf("a pending request expires %s after it is made, want pending_ttl (1h)", d)
		}
		if j := ap.GetJustification(); strings.Contains(j, "alice@example.org") || !strings.Contains(j, "[REDACTED:email]") || !strings.Contains(j, "Q3 close") {
			t.Errorf("justification = %q, want the e-mail address redacted and the rest kept", j)
		}
		audited, err := e.admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "approval_requested", Agent: junior.id.String()})
		if err != nil || len(audited.GetRecords()) != 1 {
			t.Fatalf("approval_requested records = %v, %v; want one", audited.GetRecords(), err)
		}
		if rec := audited.GetRecords()[0]; rec.GetSubject() != ap.GetId() || rec.GetDetail()["decision"] != "pending" || strings.Contains(rec.GetDetail()["justification"], "alice@") {
			t.Errorf("approval_requested record = %v", rec)
		}

		wait := junior.waitApproval(t, ap.GetId())
		wantWaitStatus(t, wait, brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING)

		_, err = junior.redeem(t.Context(), "reports-write", ap.GetId())
		brokertest.WantCode(t, err, codes.FailedPrecondition, "approval cannot be redeemed", ap.GetId(), "still waits for an approver")

		pending := e.listed(t, brokerv1.ApprovalStatus_APPROVAL_STATUS_UNSPECIFIED, junior.id)
		if len(pending) != 1 || pending[0].GetId() != ap.GetId() || pending[0].GetStatus() != brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING {
			t.Fatalf("the approver lists %v, want the pending request %s", pending, ap.GetId())
		}

		decidedAt := time.Now()
		got := e.decide(t, ap.GetId(), adminv1.Verdict_VERDICT_APPROVE, "reviewed the change ticket")
		if got.GetStatus() != brokerv1.ApprovalStatus_APPROVAL_STATUS_APPROVED || got.GetDecidedBy() != e.approver.String() ||
			got.GetReason() != "reviewed the change ticket" || got.GetDecidedAt() == nil {
			t.Errorf("approved request = %v", got)
		}
		// Once approved, it may be redeemed for redeem_within (15m).
		if d := got.GetExpiresAt().AsTime().Sub(decidedAt); d < 15*time.Minute-time.Second || d > 15*time.Minute+time.Second {
			t.Errorf("an approved request may be redeemed for %s, want redeem_within (15m)", d)
		}
		st := wantWaitStatus(t, wait, brokerv1.ApprovalStatus_APPROVAL_STATUS_APPROVED)
		if st.GetDecidedBy() != e.approver.String() {
			t.Errorf("the wait stream's approval names %q as its approver", st.GetDecidedBy())
		}
		wantWaitEnd(t, wait, "approved")

		// Refused redemptions leave the approval redeemable. Another agent is
		// refused as for an unknown approval, and learns nothing of this one.
		_, err = other.redeem(t.Context(), "reports-write", ap.GetId())
		brokertest.WantCode(t, err, codes.FailedPrecondition, "approval cannot be redeemed", ap.GetId())
		if msg := status.Convert(err).Message(); strings.Contains(msg, "reports-write") || strings.Contains(msg, junior.id.String()) {
			t.Errorf("another agent redeeming is told %q, which describes the approval", msg)
		}
		_, err = junior.redeem(t.Context(), "reports-read", ap.GetId())
		brokertest.WantCode(t, err, codes.FailedPrecondition, "approval cannot be redeemed", `is for role "reports-write"`)

		cred, err := junior.redeem(t.Context(), "reports-write", ap.GetId())
		if err != nil {
			t.Fatalf("redeeming the approval: %v", err)
		}
		if cred.GetRole() != "reports-write" || !slices.Equal(cred.GetPolicies(), []string{"demo-reports-write"}) || cred.GetLevel() != brokerv1.Level_LEVEL_JUNIOR {
			t.Errorf("redeemed credential = role %q, policies %q, level %s", cred.GetRole(), cred.GetPolicies(), cred.GetLevel())
		}
		if d := time.Until(cred.GetExpiresAt().AsTime()); d > 10*time.Minute+time.Second {
			t.Errorf("redeemed credential lives %s, want at most the role's 10m", d)
		}
		if _, err := f.VaultAs(t, cred.GetToken()).Logical().WriteWithContext(t.Context(), "secret/data/demo/reports",
			map[string]any{"data": map[string]any{"x": "y"}}); err != nil {
			t.Errorf("the redeemed credential cannot write: %v", err)
		}

		_, err = junior.redeem(t.Context(), "reports-write", ap.GetId())
		brokertest.WantCode(t, err, codes.FailedPrecondition, "approval cannot be redeemed", "redeemed")
		redeemed := e.listed(t, brokerv1.ApprovalStatus_APPROVAL_STATUS_REDEEMED, junior.id)
		if len(redeemed) != 1 || redeemed[0].GetRedeemedDecisionId() != cred.GetDecisionId() {
			t.Errorf("redeemed approvals = %v, want %s redeemed by decision %s", redeemed, ap.GetId(), cred.GetDecisionId())
		}
	})

	t.Run("deny", func(t *testing.T) {
		t.Parallel()
		junior := e.agent(t, f.ID(t, "junior"), brokerv1.Level_LEVEL_JUNIOR, reportsRW...)
		ap := junior.requestWrite(t, "rewrite the summary")
		wait := junior.waitApproval(t, ap.GetId())
		wantWaitStatus(t, wait, brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING)

		e.decide(t, ap.GetId(), adminv1.Verdict_VERDICT_DENY, "no ticket")
		st := wantWaitStatus(t, wait, brokerv1.ApprovalStatus_APPROVAL_STATUS_DENIED)
		if st.GetReason() != "no ticket" || st.GetDecidedBy() != e.approver.String() {
			t.Errorf("denied approval = %v", st)
		}
		wantWaitEnd(t, wait, "denied")

		_, err := junior.redeem(t.Context(), "reports-write", ap.GetId())
		brokertest.WantCode(t, err, codes.FailedPrecondition, "approval cannot be redeemed", "denied")
		_, err = e.approvals.DecideApproval(t.Context(), &adminv1.DecideApprovalRequest{ApprovalId: ap.GetId(), Verdict: adminv1.Verdict_VERDICT_APPROVE, Reason: "changed my mind"})
		brokertest.WantCode(t, err, codes.FailedPrecondition, ap.GetId(), "denied, not pending")
	})

	t.Run("the requester may not decide", func(t *testing.T) {
		t.Parallel()
		// The requester is an approver itself.
		me := delegAgent{id: self, bc: e.b.Dial(t, self).Broker}
		ap := me.requestWrite(t, "")
		_, err := e.b.Dial(t, self).Approvals.DecideApproval(t.Context(), &adminv1.DecideApprovalRequest{ApprovalId: ap.GetId(), Verdict: adminv1.Verdict_VERDICT_APPROVE, Reason: "trust me"})
		brokertest.WantCode(t, err, codes.PermissionDenied, self.String()+" may not decide approval "+ap.GetId(), "part of the request")
		if l := e.listed(t, brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING, self); len(l) != 1 || l[0].GetId() != ap.GetId() {
			t.Errorf("pending approvals of %s = %v, want %s still waiting for someone else", self, l, ap.GetId())
		}

		// Neither an admin nor an agent is an approver.
		_, err = e.b.Dial(t, f.Admin).Approvals.ListApprovals(t.Context(), &adminv1.ListApprovalsRequest{})
		brokertest.WantCode(t, err, codes.PermissionDenied, f.Admin.String()+" is not an approver", "approvals.approvers")
		other := e.agent(t, f.ID(t, "junior"), brokerv1.Level_LEVEL_JUNIOR, reportsRW...)
		_, err = e.b.Dial(t, other.id).Approvals.DecideApproval(t.Context(), &adminv1.DecideApprovalRequest{ApprovalId: ap.GetId(), Verdict: adminv1.Verdict_VERDICT_APPROVE, Reason: "x"})
		brokertest.WantCode(t, err, codes.PermissionDenied, other.id.String()+" is not an approver")
	})

	t.Run("a delegator up the chain may not decide", func(t *testing.T) {
		t.Parallel()
		// A Junior acting under a Senior approver's grant: the write waits
		// for approval, and the delegator is part of the request.
		up := delegAgent{id: delegator, bc: e.b.Dial(t, delegator).Broker}
		down := e.agent(t, f.ID(t, "delegatee"), brokerv1.Level_LEVEL_JUNIOR, reportsRW...)
		g := up.mustDelegate(t, down.id, "", 10*time.Minute, 0, "reports-write")
		r, err := down.bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-write", GrantId: g.GetId()})
		if err != nil || r.GetApproval().GetStatus() != brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING {
			t.Fatalf("a Junior's write under a grant = %v, %v; want a pending approval", r, err)
		}
		ap := r.GetApproval()
		if !slices.Equal(ap.GetChain(), []string{delegator.String(), down.id.String()}) || ap.GetGrantId() != g.GetId() {
			t.Errorf("approval under a grant = %v, want chain [%s %s]", ap, delegator, down.id)
		}
		_, err = e.b.Dial(t, delegator).Approvals.DecideApproval(t.Context(), &adminv1.DecideApprovalRequest{ApprovalId: ap.GetId(), Verdict: adminv1.Verdict_VERDICT_APPROVE, Reason: "mine"})
		brokertest.WantCode(t, err, codes.PermissionDenied, delegator.String()+" may not decide approval "+ap.GetId(), "part of the request")

		// Another approver may; the approval is redeemed under the grant only.
		e.decide(t, ap.GetId(), adminv1.Verdict_VERDICT_APPROVE, "ok")
		_, err = down.redeem(t.Context(), "reports-write", ap.GetId())
		brokertest.WantCode(t, err, codes.FailedPrecondition, "approval cannot be redeemed", "under grant")
		rr, err := down.bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-write", GrantId: g.GetId(), ApprovalId: ap.GetId()})
		if err != nil {
			t.Fatalf("redeeming under the grant: %v", err)
		}
		if c := rr.GetCredential(); !slices.Equal(c.GetChain(), ap.GetChain()) || c.GetGrantId() != g.GetId() {
			t.Errorf("credential = chain %q, grant %q", c.GetChain(), c.GetGrantId())
		}
	})

	t.Run("deregistration cancels pending requests", func(t *testing.T) {
		t.Parallel()
		junior := e.agent(t, f.ID(t, "junior"), brokerv1.Level_LEVEL_JUNIOR, reportsRW...)
		ap := junior.requestWrite(t, "")
		if _, err := e.admin.DeregisterAgent(t.Context(), &adminv1.DeregisterAgentRequest{SpiffeId: junior.id.String(), Reason: "retired"}); err != nil {
			t.Fatal(err)
		}
		// The proto's APPROVAL_STATUS_CANCELLED: "the agent was deregistered
		// or its lineage revoked". Approvers are not left to decide it.
		if l := e.listed(t, brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING, junior.id); len(l) != 0 {
			t.Errorf("the approver still lists %d pending requests of a deregistered agent", len(l))
		}
		if l := e.listed(t, brokerv1.ApprovalStatus_APPROVAL_STATUS_CANCELLED, junior.id); len(l) != 1 || l[0].GetId() != ap.GetId() {
			t.Errorf("cancelled approvals of the deregistered agent = %v, want %s", l, ap.GetId())
		}
		_, err := e.approvals.DecideApproval(t.Context(), &adminv1.DecideApprovalRequest{ApprovalId: ap.GetId(), Verdict: adminv1.Verdict_VERDICT_APPROVE, Reason: "ok"})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("approving a deregistered agent's request: %v, want FailedPrecondition", err)
		}
		// Whatever the approval's state, nothing is issued.
		_, err = junior.redeem(t.Context(), "reports-write", ap.GetId())
		brokertest.WantCode(t, err, codes.PermissionDenied, "deregistered")
	})

	t.Run("concurrent redemptions issue once", func(t *testing.T) {
		t.Parallel()
		junior := e.agent(t, f.ID(t, "junior"), brokerv1.Level_LEVEL_JUNIOR, reportsRW...)
		ap := junior.requestWrite(t, "")
		e.decide(t, ap.GetId(), adminv1.Verdict_VERDICT_APPROVE, "ok")

		const n = 10
		start := make(chan struct{})
		var (
			mu    sync.Mutex
			creds []*brokerv1.Credential
			errs  []error
			wg    sync.WaitGroup
		)
		for range n {
			wg.Go(func() {
				<-start
				c, err := junior.redeem(t.Context(), "reports-write", ap.GetId())
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
				} else {
					creds = append(creds, c)
				}
			})
		}
		close(start)
		wg.Wait()
		if len(creds) != 1 || len(errs) != n-1 {
			t.Fatalf("%d redemptions succeeded and %d failed (%v); want 1 and %d", len(creds), len(errs), errs, n-1)
		}
		for _, err := range errs {
			brokertest.WantCode(t, err, codes.FailedPrecondition, "approval cannot be redeemed", "redeemed")
		}

		r, err := e.admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "credential_issued", Agent: junior.id.String()})
		if err != nil {
			t.Fatal(err)
		}
		var issued []string
		for _, rec := range r.GetRecords() {
			if rec.GetDetail()["approval_id"] == ap.GetId() {
				issued = append(issued, rec.GetSubject())
			}
		}
		if !slices.Equal(issued, []string{creds[0].GetAccessor()}) {
			t.Errorf("audit trail has issuances %q under approval %s, want only %s", issued, ap.GetId(), creds[0].GetAccessor())
		}
	})
}

// A request nobody decides expires: the wait stream says so and ends, and
// it can be neither decided nor redeemed; an approved one not redeemed in
// time expires too.
func TestApprovalExpires(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Approvals.PendingTTL, cfg.Approvals.RedeemWithin = 2*time.Second, 2*time.Second
	e := newApprovalEnv(t, f, cfg)
	junior := e.agent(t, f.ID(t, "junior"), brokerv1.Level_LEVEL_JUNIOR, reportsRW...)

	ap := junior.requestWrite(t, "")
	if d := ap.GetExpiresAt().AsTime().Sub(ap.GetCreatedAt().AsTime()); d != 2*time.Second {
		t.Errorf("expires %s after it is made, want pending_ttl (2s)", d)
	}
	late := junior.requestWrite(t, "")
	e.decide(t, late.GetId(), adminv1.Verdict_VERDICT_APPROVE, "go ahead")

	wait := junior.waitApproval(t, ap.GetId())
	wantWaitStatus(t, wait, brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING)
	wantWaitStatus(t, wait, brokerv1.ApprovalStatus_APPROVAL_STATUS_EXPIRED)
	wantWaitEnd(t, wait, "expired")

	_, err := e.approvals.DecideApproval(t.Context(), &adminv1.DecideApprovalRequest{ApprovalId: ap.GetId(), Verdict: adminv1.Verdict_VERDICT_APPROVE, Reason: "sorry, late"})
	brokertest.WantCode(t, err, codes.FailedPrecondition, ap.GetId(), "expired")
	_, err = junior.redeem(t.Context(), "reports-write", ap.GetId())
	brokertest.WantCode(t, err, codes.FailedPrecondition, "approval cannot be redeemed", "expired")

	devtest.WaitFor(t, streamWait, "the approved request to expire unredeemed", func() bool {
		return len(e.listed(t, brokerv1.ApprovalStatus_APPROVAL_STATUS_EXPIRED, junior.id)) == 2
	})
	_, err = junior.redeem(t.Context(), "reports-write", late.GetId())
	brokertest.WantCode(t, err, codes.FailedPrecondition, "approval cannot be redeemed", "expired")
}

// hookPost is one notification the test webhook received.
type hookPost struct {
	ID      string            `json:"id"`
	Kind    string            `json:"kind"`
	Agent   string            `json:"agent"`
	Role    string            `json:"role"`
	Summary string            `json:"summary"`
	Text    string            `json:"text"`
	Detail  map[string]string `json:"detail"`

	body        []byte
	signature   string
	contentType string
}

// webhook serves an endpoint that hands every POST to the returned
// channel, and writes its URL to a file in dir for url_file.
func webhook(t *testing.T, dir string) (urlFile string, posts <-chan hookPost) {
	t.Helper()
	ch := make(chan hookPost, 64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil || r.Method != http.MethodPost {
			http.Error(w, "want a POST", http.StatusBadRequest)
			return
		}
		p := hookPost{body: body, signature: r.Header.Get(notify.SignatureHeader), contentType: r.Header.Get("Content-Type")}
		if err := json.Unmarshal(body, &p); err != nil {
			http.Error(w, "want JSON", http.StatusBadRequest)
			return
		}
		ch <- p
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	urlFile = filepath.Join(dir, "webhook-url")
	if err := os.WriteFile(urlFile, []byte(srv.URL+"/hooks/atf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return urlFile, ch
}

// nextPost fails t unless the webhook's next POST, signed with secret, is
// of kind.
func nextPost(t *testing.T, posts <-chan hookPost, secret []byte, kind string) hookPost {
	t.Helper()
	var p hookPost
	select {
	case p = <-posts:
	case <-time.After(streamWait):
		t.Fatalf("the webhook got no %s notification within %s", kind, streamWait)
	}
	if p.Kind != kind {
		t.Fatalf("the webhook got %s (%s), want %s next", p.Kind, p.Summary, kind)
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(p.body)
	if want := "sha256=" + hex.EncodeToString(mac.Sum(nil)); !hmac.Equal([]byte(p.signature), []byte(want)) {
		t.Errorf("%s: %s = %q does not verify (want %q)", kind, notify.SignatureHeader, p.signature, want)
	}
	if p.contentType != "application/json" || p.ID == "" || p.Text != p.Summary {
		t.Errorf("%s: content type %q, id %q, text %q; want JSON with an id and text equal to the summary", kind, p.contentType, p.ID, p.Text)
	}
	return p
}

// nextEvent fails t unless the event stream's next event is the one the
// webhook got.
func nextEvent(t *testing.T, events <-chan streamed[adminv1.WatchEventsResponse], want hookPost) {
	t.Helper()
	r, ok := within(events, streamWait)
	switch {
	case !ok:
		t.Fatalf("WatchEvents sent nothing within %s; want %s", streamWait, want.Kind)
	case r.err != nil:
		t.Fatalf("WatchEvents ended with %v; want %s", r.err, want.Kind)
	}
	ev := r.msg.GetEvent()
	if ev.GetId() != want.ID || ev.GetKind() != want.Kind || ev.GetAgent() != want.Agent || ev.GetRole() != want.Role ||
		ev.GetSummary() != want.Summary || ev.GetTime() == nil {
		t.Errorf("WatchEvents sent %v, want the webhook's %s event %s", ev, want.Kind, want.ID)
	}
}

// Approval requests, decisions and Senior write issuances reach the signed
// webhook and admins' event streams, in order; reads notify nobody.
func TestNotifications(t *testing.T) {
	f := brokertest.Setup(t)
	dir := t.TempDir()
	cfg := f.Config(t, dir)
	urlFile, posts := webhook(t, dir)
	secret := []byte("webhook-signing-key")
	cfg.Notifications.Webhook.URLFile = urlFile
	cfg.Notifications.Webhook.SecretFile = filepath.Join(dir, "webhook-secret")
	if err := os.WriteFile(cfg.Notifications.Webhook.SecretFile, append(secret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newApprovalEnv(t, f, cfg)
	junior := e.agent(t, f.ID(t, "junior"), brokerv1.Level_LEVEL_JUNIOR, reportsRW...)
	senior := e.agent(t, f.ID(t, "senior"), brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	// Their placements above Intern are migrations, notified as such.
	for _, a := range []delegAgent{junior, senior} {
		if p := nextPost(t, posts, secret, "agent_migrated"); p.Agent != a.id.String() || !strings.Contains(p.Summary, "sign-off: 1 approver") {
			t.Errorf("agent_migrated notification = %+v, want %s's placement and its sign-off", p, a.id)
		}
	}

	s, err := e.admin.WatchEvents(t.Context(), &adminv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The header says the watch is in place.
	if _, err := s.Header(); err != nil {
		t.Fatalf("WatchEvents header: %v", err)
	}
	events := follow(s)
	// Events are for admins only.
	if ns, err := e.b.Dial(t, senior.id).Admin.WatchEvents(t.Context(), &adminv1.WatchEventsRequest{}); err == nil {
		_, err = ns.Recv()
		brokertest.WantCode(t, err, codes.PermissionDenied, "is not a broker admin")
	}

	ap := junior.requestWrite(t, "")
	p := nextPost(t, posts, secret, "approval_requested")
	if p.Agent != junior.id.String() || p.Role != "reports-write" || p.Detail["approval_id"] != ap.GetId() ||
		!strings.Contains(p.Summary, ap.GetId()) || !strings.Contains(p.Summary, "atfctl approvals approve "+ap.GetId()) {
		t.Errorf("approval_requested notification = %+v", p)
	}
	nextEvent(t, events, p)

	// A read notifies nobody: the next notification is the write's.
	senior.mustFetch(t, "reports-read", "")
	cred := senior.mustFetch(t, "reports-write", "")
	p = nextPost(t, posts, secret, "write_issued")
	if p.Agent != senior.id.String() || p.Role != "reports-write" || p.Detail["accessor"] != cred.GetAccessor() ||
		p.Detail["decision_id"] != cred.GetDecisionId() || !strings.Contains(p.Summary, "senior agent "+senior.id.String()) {
		t.Errorf("write_issued notification = %+v", p)
	}
	if strings.Contains(string(p.body), cred.GetToken()) {
		t.Error("the write_issued notification carries the token")
	}
	nextEvent(t, events, p)

	e.decide(t, ap.GetId(), adminv1.Verdict_VERDICT_APPROVE, "fine")
	p = nextPost(t, posts, secret, "approval_approved")
	if p.Detail["approval_id"] != ap.GetId() || p.Detail["approver"] != e.approver.String() || p.Agent != junior.id.String() {
		t.Errorf("approval_approved notification = %+v", p)
	}
	nextEvent(t, events, p)
}

// wantLimited fails t unless err is limit: ResourceExhausted with parts in
// its message, a QuotaFailure on limit and a positive RetryInfo, which it
// returns.
func wantLimited(t *testing.T, err error, limit string, parts ...string) time.Duration {
	t.Helper()
	brokertest.WantCode(t, err, codes.ResourceExhausted, append(parts, "; retry in ")...)
	quota, retry := limitDetails(err)
	if v := quota.GetViolations(); len(v) != 1 || v[0].GetSubject() != limit || !strings.Contains(v[0].GetDescription(), parts[0]) {
		t.Errorf("QuotaFailure = %v, want one violation of %s", quota, limit)
	}
	if retry.GetRetryDelay().AsDuration() <= 0 {
		t.Fatalf("RetryInfo = %v, want a positive delay", retry)
	}
	return retry.GetRetryDelay().AsDuration()
}

// limitDetails returns the QuotaFailure and RetryInfo of a limit refusal
// (nil where absent).
func limitDetails(err error) (quota *errdetails.QuotaFailure, retry *errdetails.RetryInfo) {
	for _, d := range status.Convert(err).Details() {
		switch d := d.(type) {
		case *errdetails.QuotaFailure:
			quota = d
		case *errdetails.RetryInfo:
			retry = d
		}
	}
	return quota, retry
}

// The rate limit is a token bucket per agent by level; a limited request is
// refused with when to retry, and audited.
func TestLimitRate(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Limits.Rate = map[string]config.RateLimit{"intern": {PerSecond: 0.5, Burst: 2}}
	e := newDelegEnv(t, f, cfg)
	intern := e.register(t, "intern", brokerv1.Level_LEVEL_INTERN, "reports-read")
	senior := e.register(t, "senior", brokerv1.Level_LEVEL_SENIOR, "reports-read")

	intern.mustFetch(t, "reports-read", "")
	intern.mustFetch(t, "reports-read", "")
	_, err := intern.fetch(t.Context(), "reports-read", "")
	retry := wantLimited(t, err, "rate", "rate limit: intern agents may make 0.5 credential requests per second (burst 2)")
	if retry > 2*time.Second {
		t.Errorf("retry in %s, want at most one token's time (2s)", retry)
	}
	// A level the map leaves out is not limited, and buckets are per agent.
	for range 3 {
		senior.mustFetch(t, "reports-read", "")
	}

	r, err := e.admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Agent: intern.id.String(), Decision: "limited"})
	if err != nil {
		t.Fatal(err)
	}
	if recs := r.GetRecords(); len(recs) != 1 || recs[0].GetKind() != "credential_limited" || recs[0].GetSubject() != "reports-read" ||
		recs[0].GetDetail()["limit"] != "rate" || !strings.Contains(recs[0].GetDetail()["message"], "rate limit") {
		t.Errorf("limited records of the intern = %v, want one credential_limited by rate", recs)
	}
}

// Live credentials per agent are bounded, counted across a restart, and
// freed by revoking the agent's lineage.
func TestLimitLivePerAgent(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Limits.MaxLivePerAgent = 2
	e := newDelegEnv(t, f, cfg)
	agent := e.register(t, "agent", brokerv1.Level_LEVEL_INTERN, "reports-read")
	other := e.register(t, "other", brokerv1.Level_LEVEL_INTERN, "reports-read")
	tokens := map[string]string{
		"first":  agent.mustFetch(t, "reports-read", "").GetToken(),
		"second": agent.mustFetch(t, "reports-read", "").GetToken(),
	}
	limited := "limit live_per_agent: agent " + agent.id.String() + " already holds 2 live credentials"
	_, err := agent.fetch(t.Context(), "reports-read", "")
	// Retry when the first of them expires: in about the role's 30m.
	if retry := wantLimited(t, err, "live_per_agent", limited); retry < 29*time.Minute || retry > 30*time.Minute {
		t.Errorf("retry in %s, want when the first credential expires (30m)", retry)
	}
	other.mustFetch(t, "reports-read", "")

	e.b.Stop()
	e.start(t)
	e.redial(t, &agent)
	_, err = agent.fetch(t.Context(), "reports-read", "")
	wantLimited(t, err, "live_per_agent", limited)

	r, err := e.admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: agent.id.String()}, Reason: "free the slots"})
	if err != nil {
		t.Fatal(err)
	}
	if r.GetSummary().GetCredentialsRevoked() != 2 {
		t.Errorf("revoked %d credentials, want 2", r.GetSummary().GetCredentialsRevoked())
	}
	e.wantDead(t, tokens)
	agent.mustFetch(t, "reports-read", "")
}

// Live credentials per role count every agent's.
func TestLimitLivePerRole(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Limits.MaxLivePerRole = 2
	e := newDelegEnv(t, f, cfg)
	x := e.register(t, "x", brokerv1.Level_LEVEL_SENIOR, "reports-read", "payroll-read")
	y := e.register(t, "y", brokerv1.Level_LEVEL_INTERN, "reports-read")

	x.mustFetch(t, "reports-read", "")
	y.mustFetch(t, "reports-read", "")
	for _, a := range []delegAgent{x, y} {
		_, err := a.fetch(t.Context(), "reports-read", "")
		wantLimited(t, err, "live_per_role", "limit live_per_role: role reports-read already holds 2 live credentials")
	}
	x.mustFetch(t, "payroll-read", "")
}

// Live credentials per lineage count everything issued under one root
// agent's authority: its own and its delegatees' under its grants.
func TestLimitLivePerLineage(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Limits.MaxLivePerLineage = 2
	e := newDelegEnv(t, f, cfg)
	a := e.register(t, "a", brokerv1.Level_LEVEL_SENIOR, "reports-read")
	b := e.register(t, "b", brokerv1.Level_LEVEL_SENIOR, "reports-read")
	g := a.mustDelegate(t, b.id, "", 10*time.Minute, 0, "reports-read")

	a.mustFetch(t, "reports-read", "")
	b.mustFetch(t, "reports-read", g.GetId())
	limited := "limit live_per_lineage: the lineage of " + a.id.String() + " already holds 2 live credentials"
	_, err := b.fetch(t.Context(), "reports-read", g.GetId())
	wantLimited(t, err, "live_per_lineage", limited)
	_, err = a.fetch(t.Context(), "reports-read", "")
	wantLimited(t, err, "live_per_lineage", limited)
	// On its own authority, B is its own lineage.
	b.mustFetch(t, "reports-read", "")
}

// An approval is bound to the request the approver saw: redeemed without a
// lifetime it gives the approved one, never the role's longer one, and a
// redemption asking for another lifetime is refused (and gives the
// approval back, so that it redeems as approved).
func TestApprovalBoundToTheApprovedRequest(t *testing.T) {
	f := brokertest.Setup(t)
	e := newApprovalEnv(t, f, f.Config(t, t.TempDir()))
	ctx := t.Context()
	junior := e.agent(t, f.ID(t, "bound-junior"), brokerv1.Level_LEVEL_JUNIOR, reportsRW...)
	ask := func() *brokerv1.Approval {
		t.Helper()
		r, err := junior.bc.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-write", Ttl: durationpb.New(time.Minute), Justification: "one minute"})
		if err != nil || r.GetApproval() == nil || r.GetApproval().GetTtl().AsDuration() != time.Minute {
			t.Fatalf("asking for a one-minute write: %v, %v", r, err)
		}
		e.decide(t, r.GetApproval().GetId(), adminv1.Verdict_VERDICT_APPROVE, "one minute is fine")
		return r.GetApproval()
	}
	lifetime := func(c *brokerv1.Credential) time.Duration {
		return c.GetExpiresAt().AsTime().Sub(c.GetIssuedAt().AsTime())
	}

	first := ask()
	c, err := junior.redeem(ctx, "reports-write", first.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if d := lifetime(c); d > time.Minute {
		t.Errorf("redeemed without a ttl: lives %s, want the approved minute", d)
	}

	second := ask()
	_, err = junior.bc.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-write", ApprovalId: second.GetId(), Ttl: durationpb.New(10 * time.Minute)})
	brokertest.WantCode(t, err, codes.FailedPrecondition, "approval "+second.GetId()+" was given for a lifetime of 1m0s, not 10m0s")
	c, err = junior.redeem(ctx, "reports-write", second.GetId())
	if err != nil {
		t.Fatalf("redeeming as approved after a refused redemption: %v", err)
	}
	if d := lifetime(c); d > time.Minute {
		t.Errorf("redeemed as approved: lives %s, want the approved minute", d)
	}

	// A request longer than the role allows is approved at the role's
	// ten minutes; the client redeems by sending its request again, as
	// broker/client does, and gets those ten minutes.
	long := durationpb.New(30 * time.Minute)
	r, err := junior.bc.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-write", Ttl: long, Justification: "as long as allowed"})
	if err != nil || r.GetApproval().GetTtl().AsDuration() != 10*time.Minute {
		t.Fatalf("asking for 30 minutes: %v, %v; want an approval for the role's 10", r, err)
	}
	e.decide(t, r.GetApproval().GetId(), adminv1.Verdict_VERDICT_APPROVE, "fine")
	again, err := junior.bc.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-write", Ttl: long, ApprovalId: r.GetApproval().GetId()})
	if err != nil {
		t.Fatalf("redeeming with the request as it was made: %v", err)
	}
	if d := lifetime(again.GetCredential()); d > 10*time.Minute {
		t.Errorf("redeemed: lives %s, want at most the approved 10 minutes", d)
	}
}
