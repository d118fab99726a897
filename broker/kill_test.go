package broker_test

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// The kill switch and session revocation (ResponseService) through the API,
// against real SPIRE-minted SVIDs and the real Vault of the shared dev
// stack.

const (
	// heldCredentials is how many live credentials a killed agent holds:
	// docs/design.md §5's kill switch target is for an agent with 100.
	heldCredentials = 100
	// vaultGrace bounds how long a test waits for Vault to confirm a
	// revocation the broker did not wait for.
	vaultGrace = 5 * time.Second
)

// killEnv is a broker with a security operator (who is not an admin), and
// the incident-response connections of its admin and its operator.
type killEnv struct {
	*delegEnv
	operator spiffeid.ID
	// response is the admin's, opResponse the operator's.
	response, opResponse adminv1.ResponseServiceClient
}

// newKillEnv starts a broker on cfg with a fresh security operator.
func newKillEnv(t *testing.T, f *brokertest.Fixture, cfg config.Config) *killEnv {
	t.Helper()
	op := f.ID(t, "operator")
	cfg.SecurityOperators = []string{op.String()}
	e := &killEnv{delegEnv: newDelegEnv(t, f, cfg), operator: op}
	e.dial(t)
	return e
}

func (e *killEnv) dial(t *testing.T) {
	t.Helper()
	e.response = e.b.Dial(t, e.f.Admin).Response
	e.opResponse = e.b.Dial(t, e.operator).Response
}

// restart stops the broker and starts another on the same store, and
// reconnects everyone to it.
func (e *killEnv) restart(t *testing.T, agents ...*delegAgent) {
	t.Helper()
	e.b.Stop()
	e.start(t)
	e.dial(t)
	e.redial(t, agents...)
}

// kill has the admin call Kill.
func (e *killEnv) kill(t *testing.T, req *adminv1.KillRequest) *adminv1.KillResponse {
	t.Helper()
	r, err := e.response.Kill(t.Context(), req)
	if err != nil {
		t.Fatalf("Kill(%v): %v", req, err)
	}
	return r
}

// agent returns the admin's view of id.
func (e *killEnv) agent(t *testing.T, id spiffeid.ID) *adminv1.Agent {
	t.Helper()
	r, err := e.admin.GetAgent(t.Context(), &adminv1.GetAgentRequest{SpiffeId: id.String()})
	if err != nil {
		t.Fatalf("GetAgent(%s): %v", id, err)
	}
	return r.GetAgent()
}

// killSwitch returns GetKillSwitch's answer to the admin, the agents it
// holds by SPIFFE ID.
func (e *killEnv) killSwitch(t *testing.T) (*adminv1.KillState, map[string]*adminv1.KillState) {
	t.Helper()
	r, err := e.response.GetKillSwitch(t.Context(), &adminv1.GetKillSwitchRequest{})
	if err != nil {
		t.Fatalf("GetKillSwitch: %v", err)
	}
	held := map[string]*adminv1.KillState{}
	for _, a := range r.GetAgents() {
		held[a.GetSpiffeId()] = a.GetKill()
	}
	return r.GetGlobal(), held
}

// audited returns the audit records of kind about subject.
func (e *killEnv) audited(t *testing.T, kind, subject string) []*adminv1.AuditRecord {
	t.Helper()
	return slices.DeleteFunc(e.query(t, &adminv1.QueryAuditRequest{Kind: kind}), func(rec *adminv1.AuditRecord) bool { return rec.GetSubject() != subject })
}

// query returns the audit records q selects, up to 1,000.
func (e *killEnv) query(t *testing.T, q *adminv1.QueryAuditRequest) []*adminv1.AuditRecord {
	t.Helper()
	q.PageSize = 1000
	r, err := e.admin.QueryAudit(t.Context(), q)
	if err != nil {
		t.Fatalf("QueryAudit(%v): %v", q, err)
	}
	return r.GetRecords()
}

// wantKilled fails t unless the admin sees id held by the kill switch,
// stopped by by for reason, with lineage root root ("" if stopped itself).
func (e *killEnv) wantKilled(t *testing.T, id spiffeid.ID, by spiffeid.ID, reason, root string) {
	t.Helper()
	a := e.agent(t, id)
	k := a.GetKill()
	if a.GetStatus() != brokerv1.AgentStatus_AGENT_STATUS_KILLED || k.GetReason() != reason || k.GetBy() != by.String() ||
		k.GetLineageRoot() != root || k.GetAt() == nil {
		t.Errorf("%s: status %s, kill %v; want KILLED by %s for %q, lineage root %q", id, a.GetStatus(), k, by, reason, root)
	}
}

// fetchN has a fetch n credentials for role under its own authority, eight
// at a time.
func fetchN(t testing.TB, a delegAgent, role string, n int) []*brokerv1.Credential {
	t.Helper()
	creds := make([]*brokerv1.Credential, n)
	if _, err := parallel(t.Context(), n, 8, func(ctx context.Context, i int) error {
		var err error
		creds[i], err = a.fetch(ctx, role, "")
		return err
	}); err != nil {
		t.Fatalf("%s fetching %d %s credentials: %v", a.id, n, role, err)
	}
	return creds
}

// alive returns the accessors of the credentials Vault still accepts,
// asking 16 at a time.
func alive(t testing.TB, f *brokertest.Fixture, creds []*brokerv1.Credential) []string {
	t.Helper()
	var mu sync.Mutex
	var out []string
	_, _ = parallel(t.Context(), len(creds), 16, func(_ context.Context, i int) error {
		if !f.Dead(t, creds[i].GetToken()) {
			mu.Lock()
			out = append(out, creds[i].GetAccessor())
			mu.Unlock()
		}
		return nil
	})
	return out
}

// wantDeadNow fails t for every credential Vault still accepts.
func wantDeadNow(t *testing.T, f *brokertest.Fixture, what string, creds []*brokerv1.Credential) {
	t.Helper()
	if a := alive(t, f, creds); len(a) > 0 {
		t.Errorf("%d of %d %s are alive in Vault: %q", len(a), len(creds), what, a)
	}
}

// wantAliveNow fails t for every credential Vault does not accept.
func wantAliveNow(t *testing.T, f *brokertest.Fixture, what string, creds []*brokerv1.Credential) {
	t.Helper()
	if a := alive(t, f, creds); len(a) != len(creds) {
		t.Errorf("only %d of %d %s are alive in Vault", len(a), len(creds), what)
	}
}

// accessorsOf returns the credentials' accessors, sorted.
func accessorsOf(creds []*brokerv1.Credential) []string {
	out := make([]string, len(creds))
	for i, c := range creds {
		out[i] = c.GetAccessor()
	}
	slices.Sort(out)
	return out
}

// An agent with 100 live credentials and 1,000 FetchCredential calls in
// flight is killed: once Kill returns, every credential it was ever handed
// is dead in Vault, nothing more is issued or delegated, the agent and the
// admin see it stopped, and the agent's revocation watch names every
// credential.
func TestKillSwitch(t *testing.T) {
	const (
		inFlight = 1000
		callers  = 32
		reason   = "exfiltration suspected"
	)
	f := brokertest.Setup(t)
	e := newKillEnv(t, f, f.Config(t, t.TempDir()))
	ctx := t.Context()
	agent := e.register(t, "agent", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	other := e.register(t, "other", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	held := fetchN(t, agent, "reports-read", heldCredentials)

	ws, err := agent.bc.WatchRevocations(ctx, &brokerv1.WatchRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ws.Header(); err != nil { // the watch is in place
		t.Fatalf("watch header: %v", err)
	}
	watch := follow(ws)
	before := vaultAccessorSet(t, f)

	var (
		mu       sync.Mutex
		raced    []*brokerv1.Credential // handed out during the race
		lateOK   []int                  // started after Kill returned, yet issued
		refusals = map[codes.Code]int{}
		oddMsgs  []string

		next, completed atomic.Int32
		killDone        atomic.Bool
		killed          = make(chan *adminv1.KillResponse, 1)
	)
	kill := func() {
		r, err := e.response.Kill(ctx, &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: agent.id.String()}, Reason: reason})
		if err != nil {
			t.Errorf("Kill: %v", err)
		}
		killDone.Store(true)
		killed <- r
	}
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < inFlight; i = int(next.Add(1) - 1) {
				late := killDone.Load()
				c, err := agent.fetch(ctx, "reports-read", "")
				mu.Lock()
				switch code := status.Code(err); {
				case err == nil && late:
					lateOK = append(lateOK, i)
					raced = append(raced, c)
				case err == nil:
					raced = append(raced, c)
				case code == codes.PermissionDenied:
					refusals[code]++
					// The gate, the store refusing the record or refusing
					// a new anchor: each says why.
					if msg := status.Convert(err).Message(); !strings.Contains(msg, "kill switch") && !strings.Contains(msg, "revoked") {
						oddMsgs = append(oddMsgs, msg)
					}
				default:
					refusals[code]++
					t.Errorf("call %d during the kill: %v", i, err)
				}
				mu.Unlock()
				if completed.Add(1) == inFlight/3 {
					go kill()
				}
			}
		})
	}
	wg.Wait()
	resp := <-killed
	if resp == nil {
		t.FailNow()
	}
	t.Logf("%d calls: %d credentials issued, refusals %v; kill: %v", inFlight, len(raced), refusals, resp.GetSummary())

	if len(lateOK) > 0 {
		t.Errorf("%d calls that started after Kill returned were issued a credential: %v", len(lateOK), lateOK)
	}
	if len(oddMsgs) > 0 {
		t.Errorf("%d refusals during the kill name neither the kill switch nor a revocation, e.g. %q", len(oddMsgs), oddMsgs[0])
	}
	if len(raced) == 0 || refusals[codes.PermissionDenied] == 0 {
		t.Fatalf("%d issued and %d refused during the kill: the race did not happen", len(raced), refusals[codes.PermissionDenied])
	}
	if !slices.Equal(resp.GetKilled(), []string{agent.id.String()}) {
		t.Errorf("killed = %q, want only %s", resp.GetKilled(), agent.id)
	}
	handedOut := append(slices.Clone(held), raced...)
	// A batch credential is recorded while Vault makes it: one recorded
	// before the kill committed, whose token Vault then refused (its
	// anchor revoked), was counted and named by the kill, and voided
	// after (docs/design.md §3.3). Those, and only those, are besides the
	// credentials handed out.
	var voided []string
	for _, r := range e.query(t, &adminv1.QueryAuditRequest{Kind: "credential_voided", Agent: agent.id.String()}) {
		voided = append(voided, r.GetSubject())
	}
	revoked := slices.Sorted(slices.Values(append(accessorsOf(handedOut), voided...)))
	if s := resp.GetSummary(); s.GetCredentialsRevoked() != int32(len(revoked)) || s.GetVaultPending() != 0 || s.GetVaultConfirmed() < 1 {
		t.Errorf("summary = %v; want %d credentials revoked (%d handed out, %d voided), all confirmed by Vault", s, len(revoked), len(handedOut), len(voided))
	}

	// Kill waits for Vault: what it revoked is dead the moment it returns.
	// That is every credential handed out, the race's included: the store
	// records a credential before the broker hands it out, and refuses the
	// record once the kill is committed, so any credential a call returned
	// was recorded before the commit and revoked by it.
	wantDeadNow(t, f, "credentials held before the kill", held)
	wantDeadNow(t, f, "credentials issued during the race", raced)

	// Vault also holds tokens the broker made for the agent but never
	// handed out: issued in Vault while the kill committed, then refused by
	// the store (or anchors refused likewise). Their calls revoke them
	// themselves, after Kill's commit and possibly after Kill returned, so
	// they alone may take a moment; poll them, within vaultGrace.
	given := map[string]bool{}
	for _, c := range handedOut {
		given[c.GetAccessor()] = true
	}
	root := f.Stack.VaultClient()
	var fresh []string
	for acc := range vaultAccessorSet(t, f) {
		if !before[acc] {
			fresh = append(fresh, acc)
		}
	}
	var unreturned []string
	_, _ = parallel(ctx, len(fresh), 16, func(ctx context.Context, i int) error {
		s, err := root.Auth().Token().LookupAccessorWithContext(ctx, fresh[i])
		if err != nil {
			return nil // revoked since the listing
		}
		meta, _ := s.TokenMetadata()
		if (meta["atf_agent"] == agent.id.String() || meta["atf_node"] == store.AgentNode(agent.id.String())) && !given[fresh[i]] {
			mu.Lock()
			unreturned = append(unreturned, fresh[i])
			mu.Unlock()
		}
		return nil
	})
	devtest.WaitFor(t, vaultGrace, "tokens made for the agent during the kill, never handed out, to die in Vault", func() bool {
		n, err := countDead(ctx, root, unreturned)
		return err == nil && n == len(unreturned)
	})

	_, err = agent.fetch(ctx, "reports-read", "")
	brokertest.WantCode(t, err, codes.PermissionDenied, "agent "+agent.id.String()+" is stopped by the kill switch", "only a security operator can release it")
	_, err = agent.delegate(ctx, other.id, "", time.Minute, 0, "reports-read")
	brokertest.WantCode(t, err, codes.PermissionDenied, "killed")

	e.wantKilled(t, agent.id, f.Admin, reason, "")
	who, err := agent.bc.WhoAmI(ctx, &brokerv1.WhoAmIRequest{})
	if err != nil || who.GetStatus() != brokerv1.AgentStatus_AGENT_STATUS_KILLED {
		t.Errorf("WhoAmI = %v, %v; want status KILLED", who, err)
	}
	global, stopped := e.killSwitch(t)
	if global != nil || len(stopped) != 1 || stopped[agent.id.String()].GetReason() != reason {
		t.Errorf("GetKillSwitch: global %v, agents %v; want only %s, for %q", global, stopped, agent.id, reason)
	}

	// The watch hears of every credential the kill revoked, in one event.
	r, ok := within(watch, streamWait)
	switch {
	case !ok:
		t.Fatalf("the agent's revocation watch heard nothing within %s of the kill", streamWait)
	case r.err != nil:
		t.Fatalf("the agent's revocation watch ended: %v", r.err)
	}
	got := slices.Sorted(slices.Values(r.msg.GetAccessors()))
	if !slices.Equal(got, revoked) || r.msg.GetReason() != reason {
		t.Errorf("revocation event: %d accessors, reason %q; want the %d handed out and %d voided, reason %q", len(got), r.msg.GetReason(), len(handedOut), len(voided), reason)
	}

	// Vault confirmed every revocation, the kill's and those of the calls
	// the store refused, so nothing is left in the revocation queue (which
	// the background revoker would otherwise retry only when next woken).
	// Only the store shows the queue; read it with the broker stopped (it
	// holds the file's lock).
	e.b.Stop()
	st, err := store.Open(e.cfg.StorePath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pending, err := st.PendingRevocations()
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	// A revocation may still be queued when the broker stops mid-drain (the
	// next start finishes it), but never one of a token Vault still knows.
	vc := e.f.Stack.VaultClient()
	for _, acc := range pending {
		if _, err := vc.Auth().Token().LookupAccessor(acc); err == nil {
			t.Errorf("queued revocation %s: the token is still alive in Vault", acc)
		}
	}
}

// The switch holds across a restart, and only a security operator releases
// it, with a reason that the history and the audit trail keep. Revoked
// credentials stay revoked; new ones are issued again.
func TestKillSurvivesRestartAndOnlyAnOperatorReleases(t *testing.T) {
	const (
		killReason    = "prompt injection suspected"
		releaseReason = "investigated: false positive"
	)
	f := brokertest.Setup(t)
	e := newKillEnv(t, f, f.Config(t, t.TempDir()))
	agent := e.register(t, "agent", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	before := fetchN(t, agent, "reports-read", 3)
	e.kill(t, &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: agent.id.String()}, Reason: killReason})
	wantDeadNow(t, f, "credentials of the killed agent", before)

	e.restart(t, &agent)
	_, err := agent.fetch(t.Context(), "reports-read", "")
	brokertest.WantCode(t, err, codes.PermissionDenied, "stopped by the kill switch")
	e.wantKilled(t, agent.id, f.Admin, killReason, "")
	if _, stopped := e.killSwitch(t); stopped[agent.id.String()] == nil {
		t.Errorf("after the restart GetKillSwitch does not list %s: %v", agent.id, stopped)
	}

	release := &adminv1.ReleaseRequest{Target: &adminv1.ReleaseRequest_AgentId{AgentId: agent.id.String()}, Reason: releaseReason}
	_, err = e.b.Dial(t, agent.id).Response.Release(t.Context(), release)
	brokertest.WantCode(t, err, codes.PermissionDenied, agent.id.String()+" is neither a broker admin nor a security operator")
	_, err = e.response.Release(t.Context(), release)
	brokertest.WantCode(t, err, codes.PermissionDenied, "only a security operator may release the kill switch", f.Admin.String()+" is not one")
	_, err = agent.fetch(t.Context(), "reports-read", "")
	brokertest.WantCode(t, err, codes.PermissionDenied, "stopped by the kill switch")

	if _, err := e.opResponse.Release(t.Context(), release); err != nil {
		t.Fatalf("the operator releasing: %v", err)
	}
	wantAliveNow(t, f, "credentials issued after the release", []*brokerv1.Credential{agent.mustFetch(t, "reports-read", "")})
	wantDeadNow(t, f, "credentials revoked by the kill", before)
	if a := e.agent(t, agent.id); a.GetStatus() != brokerv1.AgentStatus_AGENT_STATUS_ACTIVE || a.GetKill() != nil {
		t.Errorf("after the release: status %s, kill %v", a.GetStatus(), a.GetKill())
	}
	if _, stopped := e.killSwitch(t); len(stopped) != 0 {
		t.Errorf("after the release GetKillSwitch lists %v", stopped)
	}
	_, err = e.opResponse.Release(t.Context(), release)
	brokertest.WantCode(t, err, codes.FailedPrecondition, "agent "+agent.id.String()+" is not stopped by the kill switch")

	h, err := e.admin.ListAgentHistory(t.Context(), &adminv1.ListAgentHistoryRequest{SpiffeId: agent.id.String()})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, c := range h.GetChanges() {
		actions = append(actions, c.GetAction())
		switch c.GetAction() {
		case store.ActionKill:
			if c.GetReason() != killReason || c.GetActor() != f.Admin.String() || c.GetAgent().GetStatus() != brokerv1.AgentStatus_AGENT_STATUS_KILLED {
				t.Errorf("kill in the history = %v", c)
			}
		case store.ActionRelease:
			if c.GetReason() != releaseReason || c.GetActor() != e.operator.String() || c.GetAgent().GetStatus() != brokerv1.AgentStatus_AGENT_STATUS_ACTIVE {
				t.Errorf("release in the history = %v", c)
			}
		}
	}
	if !slices.Equal(actions, []string{store.ActionRegister, store.ActionMigrate, store.ActionKill, store.ActionRelease}) {
		t.Errorf("history = %q, want register, migrate (its placement), kill, release", actions)
	}

	killedRecs := e.audited(t, "agent_killed", agent.id.String())
	if len(killedRecs) != 1 || killedRecs[0].GetActor() != f.Admin.String() || killedRecs[0].GetDetail()["reason"] != killReason ||
		killedRecs[0].GetDetail()["decision"] != "deny" {
		t.Errorf("agent_killed records = %v, want one by the admin for %q", killedRecs, killReason)
	}
	released := e.audited(t, "agent_released", agent.id.String())
	if len(released) != 1 || released[0].GetActor() != e.operator.String() || released[0].GetDetail()["reason"] != releaseReason {
		t.Errorf("agent_released records = %v, want one by the operator for %q", released, releaseReason)
	}
}

// Kill's refusals: who may call it, and what it needs.
func TestKillRefusals(t *testing.T) {
	f := brokertest.Setup(t)
	e := newKillEnv(t, f, f.Config(t, t.TempDir()))
	agent := e.register(t, "agent", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	victim := e.register(t, "victim", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	byAgent := e.b.Dial(t, agent.id).Response
	target := func(id spiffeid.ID) *adminv1.KillRequest_AgentId {
		return &adminv1.KillRequest_AgentId{AgentId: id.String()}
	}
	for _, tt := range []struct {
		name  string
		as    adminv1.ResponseServiceClient
		req   *adminv1.KillRequest
		code  codes.Code
		parts []string
	}{
		{"an agent", byAgent, &adminv1.KillRequest{Target: target(victim.id), Reason: "x"},
			codes.PermissionDenied, []string{agent.id.String() + " is neither a broker admin nor a security operator"}},
		{"an agent, everyone", byAgent, &adminv1.KillRequest{Target: &adminv1.KillRequest_All{All: true}, Reason: "x"},
			codes.PermissionDenied, []string{"neither a broker admin nor a security operator"}},
		{"unknown agent", e.response, &adminv1.KillRequest{Target: target(f.ID(t, "nobody")), Reason: "x"},
			codes.NotFound, []string{f.ID(t, "nobody").String()}},
		{"no reason", e.response, &adminv1.KillRequest{Target: target(victim.id)},
			codes.InvalidArgument, []string{"reason"}},
		{"no target", e.response, &adminv1.KillRequest{Reason: "x"},
			codes.InvalidArgument, []string{"target"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.as.Kill(t.Context(), tt.req)
			brokertest.WantCode(t, err, tt.code, tt.parts...)
		})
	}
	// None of them stopped anyone.
	agent.mustFetch(t, "reports-read", "")
	victim.mustFetch(t, "reports-read", "")
	// A security operator may stop an agent as an admin may.
	if _, err := e.opResponse.Kill(t.Context(), &adminv1.KillRequest{Target: target(victim.id), Reason: "operator's call"}); err != nil {
		t.Fatalf("the operator killing: %v", err)
	}
	e.wantKilled(t, victim.id, e.operator, "operator's call", "")
}

// A (Senior) delegates to B (Senior), who delegates to C. Killing A with
// its lineage stops all three and everything they hold; without, only A is
// stopped, but the grants below A and what was issued under them are
// revoked, while B and C keep their own authority.
func TestKillLineage(t *testing.T) {
	const reason = "compromised orchestrator"
	f := brokertest.Setup(t)
	e := newKillEnv(t, f, f.Config(t, t.TempDir()))
	type lineage struct {
		a, b, c   delegAgent
		ab, bc    *brokerv1.Grant
		own, down map[string]*brokerv1.Credential // own authority; under the grants
	}
	setup := func(t *testing.T) lineage {
		l := lineage{
			a: e.register(t, "a", brokerv1.Level_LEVEL_SENIOR, reportsRW...),
			b: e.register(t, "b", brokerv1.Level_LEVEL_SENIOR, reportsRW...),
			c: e.register(t, "c", brokerv1.Level_LEVEL_SENIOR, reportsRW...),
		}
		l.ab = l.a.mustDelegate(t, l.b.id, "", time.Hour, 1, reportsRW...)
		l.bc = l.b.mustDelegate(t, l.c.id, l.ab.GetId(), 50*time.Minute, 0, reportsRW...)
		l.own = map[string]*brokerv1.Credential{
			"A's own": l.a.mustFetch(t, "reports-read", ""),
			"B's own": l.b.mustFetch(t, "reports-read", ""),
			"C's own": l.c.mustFetch(t, "reports-read", ""),
		}
		l.down = map[string]*brokerv1.Credential{
			"B under A→B": l.b.mustFetch(t, "reports-write", l.ab.GetId()),
			"C under B→C": l.c.mustFetch(t, "reports-write", l.bc.GetId()),
		}
		return l
	}
	creds := func(m map[string]*brokerv1.Credential, names ...string) []*brokerv1.Credential {
		var out []*brokerv1.Credential
		for _, n := range names {
			out = append(out, m[n])
		}
		return out
	}

	t.Run("with lineage", func(t *testing.T) {
		l := setup(t)
		r := e.kill(t, &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: l.a.id.String()}, Lineage: true, Reason: reason})
		want := []string{l.a.id.String(), l.b.id.String(), l.c.id.String()}
		if got := slices.Sorted(slices.Values(r.GetKilled())); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
			t.Errorf("killed = %q, want %q", r.GetKilled(), want)
		}
		if s := r.GetSummary(); s.GetGrantsRevoked() != 2 || s.GetCredentialsRevoked() != 5 || s.GetVaultPending() != 0 {
			t.Errorf("summary = %v; want 2 grants and 5 credentials revoked, none pending", s)
		}
		wantDeadNow(t, f, "credentials in the killed lineage", slices.Collect(maps.Values(l.own)))
		wantDeadNow(t, f, "credentials under the grants", slices.Collect(maps.Values(l.down)))
		e.wantKilled(t, l.a.id, f.Admin, reason, "")
		e.wantKilled(t, l.b.id, f.Admin, reason, l.a.id.String())
		e.wantKilled(t, l.c.id, f.Admin, reason, l.a.id.String())
		for _, who := range []delegAgent{l.a, l.b, l.c} {
			_, err := who.fetch(t.Context(), "reports-read", "")
			brokertest.WantCode(t, err, codes.PermissionDenied, who.id.String()+" is stopped by the kill switch")
		}
		_, stopped := e.killSwitch(t)
		for _, id := range want {
			if stopped[id] == nil {
				t.Errorf("GetKillSwitch does not list %s", id)
			}
		}
	})

	t.Run("without lineage", func(t *testing.T) {
		l := setup(t)
		r := e.kill(t, &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: l.a.id.String()}, Reason: reason})
		if !slices.Equal(r.GetKilled(), []string{l.a.id.String()}) {
			t.Errorf("killed = %q, want only A", r.GetKilled())
		}
		if s := r.GetSummary(); s.GetGrantsRevoked() != 2 || s.GetCredentialsRevoked() != 3 || s.GetVaultPending() != 0 {
			t.Errorf("summary = %v; want 2 grants and 3 credentials (A's own and those under the grants) revoked", s)
		}
		wantDeadNow(t, f, "credentials of A and under its grants", append(creds(l.own, "A's own"), slices.Collect(maps.Values(l.down))...))
		wantAliveNow(t, f, "own credentials of B and C", creds(l.own, "B's own", "C's own"))
		e.wantKilled(t, l.a.id, f.Admin, reason, "")
		for _, who := range []delegAgent{l.b, l.c} {
			if a := e.agent(t, who.id); a.GetStatus() != brokerv1.AgentStatus_AGENT_STATUS_ACTIVE || a.GetKill() != nil {
				t.Errorf("%s: status %s, kill %v; want ACTIVE", who.id, a.GetStatus(), a.GetKill())
			}
		}
		_, err := l.b.fetch(t.Context(), "reports-write", l.ab.GetId())
		brokertest.WantCode(t, err, codes.PermissionDenied, "grant revoked: grant "+l.ab.GetId())
		_, err = l.c.fetch(t.Context(), "reports-write", l.bc.GetId())
		brokertest.WantCode(t, err, codes.PermissionDenied, "grant revoked")
		wantAliveNow(t, f, "credentials B and C fetch on their own authority", []*brokerv1.Credential{
			l.b.mustFetch(t, "reports-write", ""), l.c.mustFetch(t, "reports-read", ""),
		})
	})
}

// The global switch stops every agent, registered before or after it, and
// kills their credentials; it survives a restart, and only a security
// operator lifts it.
func TestGlobalKill(t *testing.T) {
	const reason = "Vault policy breach, stop everything"
	f := brokertest.Setup(t)
	e := newKillEnv(t, f, f.Config(t, t.TempDir()))
	x := e.register(t, "x", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	y := e.register(t, "y", brokerv1.Level_LEVEL_INTERN, "reports-read")
	g := x.mustDelegate(t, y.id, "", time.Hour, 0, "reports-read")
	creds := append(fetchN(t, x, "reports-read", 3), fetchN(t, y, "reports-read", 3)...)
	creds = append(creds, y.mustFetch(t, "reports-read", g.GetId()))

	r, err := e.opResponse.Kill(t.Context(), &adminv1.KillRequest{Target: &adminv1.KillRequest_All{All: true}, Reason: reason})
	if err != nil {
		t.Fatalf("Kill(all): %v", err)
	}
	if s := r.GetSummary(); !slices.Equal(r.GetKilled(), []string{"*"}) || s.GetCredentialsRevoked() != int32(len(creds)) || s.GetGrantsRevoked() != 1 || s.GetVaultPending() != 0 {
		t.Errorf("Kill(all) = killed %q, summary %v; want *, %d credentials and 1 grant revoked", r.GetKilled(), s, len(creds))
	}
	wantDeadNow(t, f, "credentials of both agents", creds)
	late := e.register(t, "late", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	refused := func() {
		t.Helper()
		for _, who := range []delegAgent{x, y, late} {
			_, err := who.fetch(t.Context(), "reports-read", "")
			brokertest.WantCode(t, err, codes.PermissionDenied, "the global kill switch stops every agent", "only a security operator can release it")
		}
		_, err := x.delegate(t.Context(), y.id, "", time.Minute, 0, "reports-read")
		brokertest.WantCode(t, err, codes.PermissionDenied, "global kill switch")
	}
	refused()
	if global, _ := e.killSwitch(t); global.GetReason() != reason || global.GetBy() != e.operator.String() {
		t.Errorf("GetKillSwitch: global = %v, want set by the operator for %q", global, reason)
	}
	if recs := e.audited(t, "global_kill", "*"); len(recs) != 1 || recs[0].GetDetail()["reason"] != reason {
		t.Errorf("global_kill records = %v", recs)
	}

	e.restart(t, &x, &y, &late)
	refused()
	if global, _ := e.killSwitch(t); global.GetReason() != reason {
		t.Errorf("after the restart GetKillSwitch: global = %v", global)
	}

	release := &adminv1.ReleaseRequest{Target: &adminv1.ReleaseRequest_All{All: true}, Reason: "breach contained"}
	_, err = e.response.Release(t.Context(), release)
	brokertest.WantCode(t, err, codes.PermissionDenied, "only a security operator may release the kill switch")
	refused()
	if _, err := e.opResponse.Release(t.Context(), release); err != nil {
		t.Fatalf("the operator releasing the global switch: %v", err)
	}
	wantAliveNow(t, f, "credentials issued after the release", []*brokerv1.Credential{
		x.mustFetch(t, "reports-read", ""), y.mustFetch(t, "reports-read", ""), late.mustFetch(t, "reports-read", ""),
	})
	if global, _ := e.killSwitch(t); global != nil {
		t.Errorf("after the release GetKillSwitch: global = %v", global)
	}
	_, err = e.opResponse.Release(t.Context(), release)
	brokertest.WantCode(t, err, codes.FailedPrecondition, "the global kill switch is not set")
}

// A forced kill answers once the broker has committed it, without waiting
// for Vault: the broker refuses at once, and Vault catches up from the
// revocation queue within moments.
func TestKillForced(t *testing.T) {
	f := brokertest.Setup(t)
	e := newKillEnv(t, f, f.Config(t, t.TempDir()))
	agent := e.register(t, "agent", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	held := fetchN(t, agent, "reports-read", heldCredentials)

	r := e.kill(t, &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: agent.id.String()}, Forced: true, Reason: "forced"})
	_, err := agent.fetch(t.Context(), "reports-read", "")
	brokertest.WantCode(t, err, codes.PermissionDenied, "stopped by the kill switch")
	s := r.GetSummary()
	if s.GetCredentialsRevoked() != heldCredentials || s.GetVaultConfirmed()+s.GetVaultPending() < 1 {
		t.Errorf("summary = %v; want %d credentials revoked and something queued for Vault", s, heldCredentials)
	}
	t.Logf("forced kill: %v", s)
	devtest.WaitFor(t, vaultGrace, "the forced kill's revocations to reach Vault", func() bool { return len(alive(t, f, held)) == 0 })
}

// RevokeSessions kills every live credential of an agent in Vault, its own
// and those under grants it holds, without stopping it; only admins and
// security operators may call it.
func TestRevokeSessions(t *testing.T) {
	const reason = "rotate after laptop loss"
	f := brokertest.Setup(t)
	e := newKillEnv(t, f, f.Config(t, t.TempDir()))
	agent := e.register(t, "agent", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	delegator := e.register(t, "delegator", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	g := delegator.mustDelegate(t, agent.id, "", time.Hour, 0, "reports-read")
	creds := append(fetchN(t, agent, "reports-read", 10), agent.mustFetch(t, "reports-read", g.GetId()))
	bystander := delegator.mustFetch(t, "reports-read", "")

	req := &adminv1.RevokeSessionsRequest{AgentId: agent.id.String(), Reason: reason}
	_, err := e.b.Dial(t, agent.id).Response.RevokeSessions(t.Context(), req)
	brokertest.WantCode(t, err, codes.PermissionDenied, agent.id.String()+" is neither a broker admin nor a security operator")
	wantAliveNow(t, f, "credentials after a refused RevokeSessions", creds)

	r, err := e.response.RevokeSessions(t.Context(), req)
	if err != nil {
		t.Fatalf("RevokeSessions: %v", err)
	}
	if s := r.GetSummary(); s.GetCredentialsRevoked() != int32(len(creds)) || s.GetGrantsRevoked() != 0 || s.GetVaultPending() != 0 {
		t.Errorf("summary = %v; want %d credentials revoked, no grant, none pending", s, len(creds))
	}
	wantDeadNow(t, f, "credentials after RevokeSessions", creds)
	wantAliveNow(t, f, "the delegator's own credential", []*brokerv1.Credential{bystander})

	// Not stopped: it fetches again, on its own authority and under the grant.
	if a := e.agent(t, agent.id); a.GetStatus() != brokerv1.AgentStatus_AGENT_STATUS_ACTIVE || a.GetKill() != nil {
		t.Errorf("after RevokeSessions: status %s, kill %v", a.GetStatus(), a.GetKill())
	}
	again := []*brokerv1.Credential{agent.mustFetch(t, "reports-read", ""), agent.mustFetch(t, "reports-read", g.GetId())}
	wantAliveNow(t, f, "credentials fetched after RevokeSessions", again)

	// A security operator may revoke sessions too.
	if r, err := e.opResponse.RevokeSessions(t.Context(), req); err != nil || r.GetSummary().GetCredentialsRevoked() != int32(len(again)) {
		t.Fatalf("the operator's RevokeSessions = %v, %v; want %d revoked", r.GetSummary(), err, len(again))
	}
	wantDeadNow(t, f, "credentials after the operator's RevokeSessions", again)
}

// Killing a Junior cancels its pending approval: the wait stream says so
// and ends, the approver lists it cancelled, and it stays cancelled after
// a release.
func TestKillCancelsPendingApproval(t *testing.T) {
	const reason = "suspicious write requests"
	f := brokertest.Setup(t)
	approver := f.ID(t, "approver")
	cfg := f.Config(t, t.TempDir())
	cfg.Approvals.Approvers = []string{approver.String()}
	e := newKillEnv(t, f, cfg)
	approvals := e.b.Dial(t, approver).Approvals
	junior := e.register(t, "junior", brokerv1.Level_LEVEL_JUNIOR, reportsRW...)
	ap := junior.requestWrite(t, "update the Q3 report")
	wait := junior.waitApproval(t, ap.GetId())
	wantWaitStatus(t, wait, brokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING)

	e.kill(t, &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: junior.id.String()}, Reason: reason})
	st := wantWaitStatus(t, wait, brokerv1.ApprovalStatus_APPROVAL_STATUS_CANCELLED)
	if st.GetReason() != reason || st.GetDecidedBy() != f.Admin.String() {
		t.Errorf("cancelled approval = %v, want cancelled by the admin for %q", st, reason)
	}
	wantWaitEnd(t, wait, "cancelled")
	l, err := approvals.ListApprovals(t.Context(), &adminv1.ListApprovalsRequest{Status: brokerv1.ApprovalStatus_APPROVAL_STATUS_CANCELLED, Agent: junior.id.String()})
	if err != nil || len(l.GetApprovals()) != 1 || l.GetApprovals()[0].GetId() != ap.GetId() {
		t.Errorf("cancelled approvals = %v, %v; want %s", l.GetApprovals(), err, ap.GetId())
	}
	_, err = approvals.DecideApproval(t.Context(), &adminv1.DecideApprovalRequest{ApprovalId: ap.GetId(), Verdict: adminv1.Verdict_VERDICT_APPROVE, Reason: "late"})
	brokertest.WantCode(t, err, codes.FailedPrecondition, "cancelled, not pending")

	if _, err := e.opResponse.Release(t.Context(), &adminv1.ReleaseRequest{Target: &adminv1.ReleaseRequest_AgentId{AgentId: junior.id.String()}, Reason: "cleared"}); err != nil {
		t.Fatal(err)
	}
	_, err = junior.redeem(t.Context(), "reports-write", ap.GetId())
	brokertest.WantCode(t, err, codes.FailedPrecondition, "approval cannot be redeemed", "cancelled")
}
