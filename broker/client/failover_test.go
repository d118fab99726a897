package client_test

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// changesOf is a WithOnChange that keeps every change, and next waits for
// the next one.
type changesOf chan client.Change

func (c changesOf) option() client.Option {
	return client.WithOnChange(func(ch client.Change) { c <- ch })
}

func (c changesOf) next(t *testing.T, what string, d time.Duration) client.Change {
	t.Helper()
	select {
	case ch := <-c:
		return ch
	case <-time.After(d):
		t.Fatalf("no change reported within %s: want %s", d, what)
		return client.Change{}
	}
}

// none fails t if a change is waiting.
func (c changesOf) none(t *testing.T) {
	t.Helper()
	select {
	case ch := <-c:
		t.Errorf("unexpected change %+v", ch)
	default:
	}
}

// twoReplicas starts replicas a and b on one store in the shared etcd
// cluster, and a relay to b that refuses connections until told to
// forward them: the agent cannot reach b until the test says so.
func twoReplicas(t *testing.T, f *brokertest.Fixture, window time.Duration) (a, b *brokertest.Broker, toB *relay) {
	t.Helper()
	prefix := "/failover-" + rand.Text() + "/"
	start := func(replica string) *brokertest.Broker {
		cfg := f.EtcdConfig(t, t.TempDir(), prefix, replica)
		cfg.Store.Etcd.ResumeWindow = window
		return f.Start(t, cfg)
	}
	a, b = start("a"), start("b")
	toB = newRelay(t, b.Addr)
	toB.refuse(true)
	return a, b, toB
}

// An agent given two replicas' addresses works on the first; when it
// stops, the agent carries on on the second without a restart, and its
// revocation watch resumes there: a revocation committed on b while the
// watch was down (a gone, b not yet reachable) reaches the agent, which
// drops that credential for that reason, and nothing else is reset.
func TestAgentFailsOverAndResumes(t *testing.T) {
	f := brokertest.Setup(t)
	a, b, toB := twoReplicas(t, f, 0)
	id := f.ID(t, "reader")
	a.Register(t, id, brokerv1.Level_LEVEL_INTERN, "reports-read")
	changes := make(changesOf, 16)
	ag := newAgentAt(t, f, client.Config{Addrs: []string{a.Addr, toB.addr()}}, id, changes.option())
	old := ag.credential(t, "reports-read") // from a: b is unreachable

	a.Stop() // ends the agent's watch; b is still out of reach
	revokeLineage(t, b, id)
	toB.refuse(false)

	// Reconnect backoff is 1 s, 2 s, 4 s…, plus gRPC's own.
	c := changes.next(t, "the revocation made while the watch was down", 30*time.Second)
	if c.Kind != client.Revoked || c.Accessor != old.GetAccessor() || c.Reason != "suspected compromise" {
		t.Fatalf("change %+v, want %s revoked (suspected compromise), heard when the watch resumed on b", c, old.GetAccessor())
	}
	if !strings.Contains(ag.logs.String(), "revocation watch resumed") {
		t.Errorf("the log does not say the watch resumed:\n%s", ag.logs)
	}
	next := ag.newCredential(t, "reports-read", old, 10*time.Second)
	if f.Dead(t, next.GetToken()) || !f.Dead(t, old.GetToken()) {
		t.Errorf("after failing over: the new credential known to Vault: %v, the revoked one dead: %v", !f.Dead(t, next.GetToken()), f.Dead(t, old.GetToken()))
	}
	changes.none(t)

	// Revocations on b reach the watch, now on b.
	revokeLineage(t, b, id)
	if c := changes.next(t, "a revocation on b", 5*time.Second); c.Kind != client.Revoked {
		t.Errorf("change %+v, want a revocation", c)
	}
}

// A watch down for longer than the resume window cannot resume: the
// broker says so (resumed unset), and the agent drops every credential it
// holds, the one revoked meanwhile among them, as a reset.
func TestAgentResetsPastResumeWindow(t *testing.T) {
	f := brokertest.Setup(t)
	const window = time.Second
	a, b, toB := twoReplicas(t, f, window)
	id := f.ID(t, "reader")
	a.Register(t, id, brokerv1.Level_LEVEL_INTERN, "reports-read")
	changes := make(changesOf, 16)
	ag := newAgentAt(t, f, client.Config{Addrs: []string{a.Addr, toB.addr()}}, id, changes.option())
	old := ag.credential(t, "reports-read")
	onB := b.Dial(t, id).Broker
	before := firstMark(t, onB, "").GetCursor()
	if m := firstMark(t, onB, before); !m.GetResumed() || m.GetCursor() != before {
		t.Fatalf("resuming after %s at once: first message %v, want it resumed there", before, m)
	}

	a.Stop()
	revokeLineage(t, b, id)
	devtest.WaitFor(t, 10*window, "the revocation's feed entry to be trimmed", func() bool {
		return !firstMark(t, onB, before).GetResumed()
	})
	toB.refuse(false)

	c := changes.next(t, "a reset", 30*time.Second)
	if c.Kind != client.Reset || c.Accessor != old.GetAccessor() {
		t.Fatalf("change %+v, want %s reset: the watch could not resume", c, old.GetAccessor())
	}
	ag.newCredential(t, "reports-read", old, 10*time.Second)
}

// On one broker (bbolt), a watch whose connection broke resumes: a
// revocation made meanwhile arrives as such. After a restart it cannot:
// the agent resets.
func TestAgentResumesOnOneBroker(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	b := f.Start(t, cfg)
	id := f.ID(t, "reader")
	b.Register(t, id, brokerv1.Level_LEVEL_INTERN, "reports-read")
	r := newRelay(t, b.Addr)
	changes := make(changesOf, 16)
	ag := newAgent(t, f, r.addr(), id, changes.option())
	old := ag.credential(t, "reports-read")

	r.refuse(true)
	r.cut()
	revokeLineage(t, b, id)
	r.refuse(false)
	c := changes.next(t, "the revocation made while the connection was cut", 30*time.Second)
	if c.Kind != client.Revoked || c.Accessor != old.GetAccessor() || c.Reason != "suspected compromise" {
		t.Fatalf("change %+v, want %s revoked (suspected compromise)", c, old.GetAccessor())
	}
	next := ag.newCredential(t, "reports-read", old, 10*time.Second)

	b.Stop()
	b = f.Start(t, cfg)
	r.to(b.Addr)
	c = changes.next(t, "a reset after the restart", 30*time.Second)
	if c.Kind != client.Reset || c.Accessor != next.GetAccessor() {
		t.Fatalf("change %+v, want %s reset: a restarted broker cannot resume the watch", c, next.GetAccessor())
	}
	// The broker's graceful stop waits (up to 5 s) for open watches;
	// closing the agent first ends its watch.
	ag.Close()
}

// firstMark opens a revocation watch on bc, resuming after cursor if it
// is set, and returns its first message, a mark.
func firstMark(t *testing.T, bc brokerv1.BrokerServiceClient, cursor string) *brokerv1.WatchRevocationsResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	w, err := bc.WatchRevocations(ctx, &brokerv1.WatchRevocationsRequest{ResumeAfter: cursor, Marks: true})
	if err != nil {
		t.Fatal(err)
	}
	m, err := w.Recv()
	if err != nil {
		t.Fatalf("the watch's first message: %v", err)
	}
	if len(m.GetAccessors())+len(m.GetGrantIds()) > 0 || m.GetCursor() == "" {
		t.Fatalf("the watch's first message is %v, want a mark", m)
	}
	return m
}

// With the etcd leader gone, both replicas carry on once the others elect
// a new one: the agent, watching on a, hears a revocation made on b (a's
// watch of the change feed moves to a live member and resumes), and
// fetches anew.
func TestAgentKeepsOnWhenEtcdLeaderGoes(t *testing.T) {
	f := brokertest.Setup(t)
	e, err := f.Stack.StartEtcd(t.Context(), 3)
	if err != nil {
		t.Fatal(err)
	}
	start := func(replica string) *brokertest.Broker {
		return f.Start(t, f.EtcdConfigOn(t, e, t.TempDir(), "/leader/", replica))
	}
	a, b := start("a"), start("b")
	id := f.ID(t, "reader")
	a.Register(t, id, brokerv1.Level_LEVEL_INTERN, "reports-read")
	changes := make(changesOf, 16)
	ag := newAgentAt(t, f, client.Config{Addrs: []string{a.Addr, b.Addr}}, id, changes.option())
	old := ag.credential(t, "reports-read")

	stopLeader(t, f, e)
	revokeLineage(t, b, id)
	if c := changes.next(t, "the revocation made on b", 30*time.Second); c.Kind != client.Revoked || c.Accessor != old.GetAccessor() {
		t.Fatalf("change %+v, want %s revoked", c, old.GetAccessor())
	}
	next := ag.newCredential(t, "reports-read", old, 10*time.Second)
	if f.Dead(t, next.GetToken()) {
		t.Error("Vault does not know the credential fetched without the old etcd leader")
	}
}

// stopLeader stops the leader of e and waits until the other members have
// elected another.
func stopLeader(t *testing.T, f *brokertest.Fixture, e *dev.Etcd) {
	t.Helper()
	if _, err := f.Stack.StopEtcdLeader(t.Context(), e); err != nil {
		t.Fatal(err)
	}
}
