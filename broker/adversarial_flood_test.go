package broker_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// floodCalls is how many requests a flooding caller makes.
const floodCalls = 2000

// Refusals any SVID can repeat at will (an unregistered caller, a rate
// limit, the kill switch) do not write one audit record each: the first of
// a window is written, the rest counted and written as one aggregated
// record, also at shutdown. Every refusal is accounted for, exactly.
func TestAdversarialRefusalFlood(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Limits.Rate = map[string]config.RateLimit{"intern": {PerSecond: 1, Burst: 10}}
	b := f.Start(t, cfg)
	admin := b.Dial(t, f.Admin)
	stranger, intern, senior := f.ID(t, "stranger"), f.ID(t, "intern"), f.ID(t, "senior")
	b.Register(t, intern, brokerv1.Level_LEVEL_INTERN, "reports-read")
	b.Register(t, senior, brokerv1.Level_LEVEL_SENIOR, "reports-read")
	before := auditSeq(t, admin)

	flood := func(id string, conn brokerv1.BrokerServiceClient) map[codes.Code]int {
		codesSeen := map[codes.Code]int{}
		for range floodCalls {
			_, err := conn.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
			codesSeen[status.Code(err)]++
		}
		t.Logf("%s: %v", id, codesSeen)
		return codesSeen
	}
	start := time.Now()
	sc := flood("stranger", b.Dial(t, stranger).Broker)
	ic := flood("intern", b.Dial(t, intern).Broker)
	if _, err := admin.Response.Kill(t.Context(), &adminv1.KillRequest{Target: &adminv1.KillRequest_All{All: true}, Reason: "flood test"}); err != nil {
		t.Fatal(err)
	}
	kc := flood("senior", b.Dial(t, senior).Broker)
	elapsed := time.Since(start)
	if sc[codes.OK] != 0 || kc[codes.OK] != 0 || ic[codes.OK] > 10+int(elapsed.Seconds())+1 {
		t.Fatalf("issued: stranger %d, senior under the kill switch %d, intern %d", sc[codes.OK], kc[codes.OK], ic[codes.OK])
	}

	// While running: a handful of records, not thousands.
	during := auditSince(t, admin, before)
	for _, id := range []string{stranger.String(), intern.String(), senior.String()} {
		n := 0
		for _, r := range during {
			if r.GetActor() == id && strings.HasPrefix(r.GetKind(), "credential_") && r.GetKind() != "credential_issued" {
				n++
			}
		}
		// One record per kind and reason a window, and a window ending
		// during the flood: a few at most.
		if n > 8 {
			t.Errorf("%s: %d refusal records in the audit trail during the flood, want a handful", id, n)
		}
	}

	// At shutdown the counts are written; after a restart every refusal
	// is accounted for.
	b.Stop()
	b = f.Start(t, cfg)
	after := auditSince(t, b.Dial(t, f.Admin), before)
	for id, issued := range map[string]int{stranger.String(): sc[codes.OK], intern.String(): ic[codes.OK], senior.String(): kc[codes.OK]} {
		if got := accounted(after, id); got+issued != floodCalls {
			t.Errorf("%s: %d refusals accounted for in the audit trail and %d issued, want %d in all", id, got, issued, floodCalls)
		}
	}
}

// A flood of outcome reports (1 KiB of detail each) is refused after the
// caller's limits.call_rate, with ResourceExhausted, and writes no more
// than it lets through; so is a flood of other agent API calls, and one
// caller cannot hold more than its share of streams.
func TestAdversarialCallFlood(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Limits.CallRate = map[string]config.RateLimit{"intern": {PerSecond: 1, Burst: 10}}
	b := f.Start(t, cfg)
	admin := b.Dial(t, f.Admin)
	intern, senior := f.ID(t, "intern"), f.ID(t, "senior")
	b.Register(t, intern, brokerv1.Level_LEVEL_INTERN, "reports-read")
	b.Register(t, senior, brokerv1.Level_LEVEL_SENIOR, "reports-read")
	before := auditSeq(t, admin)

	conn := b.Dial(t, intern).Broker
	detail := strings.Repeat("x", 1024)
	accepted, exhausted := 0, 0
	start := time.Now()
	for range floodCalls {
		_, err := conn.ReportOutcome(t.Context(), &brokerv1.ReportOutcomeRequest{Outcome: brokerv1.Outcome_OUTCOME_SUCCESS, Role: "reports-read", Detail: detail})
		switch status.Code(err) {
		case codes.OK:
			accepted++
		case codes.ResourceExhausted:
			exhausted++
		default:
			t.Fatalf("ReportOutcome: %v", err)
		}
	}
	most := 10 + int(time.Since(start).Seconds()) + 1
	if accepted > most || exhausted != floodCalls-accepted {
		t.Fatalf("accepted %d, refused %d (ResourceExhausted) of %d reports; want at most %d accepted", accepted, exhausted, floodCalls, most)
	}
	_, err := conn.ReportOutcome(t.Context(), &brokerv1.ReportOutcomeRequest{Outcome: brokerv1.Outcome_OUTCOME_SUCCESS})
	brokertest.WantCode(t, err, codes.ResourceExhausted, "call_rate", "intern agents may make 1 calls to the agent API")
	reported := 0
	for _, r := range auditSince(t, admin, before) {
		if r.GetKind() == "outcome_reported" && r.GetActor() == intern.String() {
			reported++
		}
	}
	if reported != accepted {
		t.Errorf("%d outcome_reported records, want %d (one per accepted report)", reported, accepted)
	}
	_, err = conn.Delegate(t.Context(), &brokerv1.DelegateRequest{Delegatee: senior.String(), Roles: []string{"reports-read"}})
	brokertest.WantCode(t, err, codes.ResourceExhausted, "call_rate")
	_, err = conn.WhoAmI(t.Context(), &brokerv1.WhoAmIRequest{})
	brokertest.WantCode(t, err, codes.ResourceExhausted, "call_rate")

	// Streams: MaxStreamsPerCaller each (the senior's calls are not rate
	// limited here), then ResourceExhausted.
	sconn := b.Dial(t, senior).Broker
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for i := range 17 {
		w, err := sconn.WatchRevocations(ctx, &brokerv1.WatchRevocationsRequest{})
		if err == nil {
			_, err = w.Header() // the stream is open once its headers come
		}
		if i < 16 && err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if i == 16 {
			// A refused stream ends with its status at the first receive.
			_, err = w.Recv()
			brokertest.WantCode(t, err, codes.ResourceExhausted, "streams open")
		}
	}
}

// auditSeq is the newest audit record's seq.
func auditSeq(t *testing.T, admin *client.Conn) uint64 {
	t.Helper()
	r, err := admin.Admin.VerifyAudit(t.Context(), &adminv1.VerifyAuditRequest{})
	if err != nil || !r.GetOk() {
		t.Fatalf("VerifyAudit = %v, %v", r, err)
	}
	return r.GetHeadSeq()
}

// auditSince is every audit record after seq.
func auditSince(t *testing.T, admin *client.Conn, seq uint64) []*adminv1.AuditRecord {
	t.Helper()
	var out []*adminv1.AuditRecord
	for {
		r, err := admin.Admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{AfterSeq: seq, PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r.GetRecords()...)
		if seq = r.GetNextAfterSeq(); seq == 0 {
			return out
		}
	}
}

// accounted is how many credential refusals of id recs account for: one
// per record of its own, count per aggregated record.
func accounted(recs []*adminv1.AuditRecord, id string) int {
	n := 0
	for _, r := range recs {
		switch kind := r.GetKind(); {
		case r.GetActor() != id:
		case strings.HasSuffix(kind, "_suppressed"):
			c, _ := strconv.Atoi(r.GetDetail()["count"])
			n += c
		case kind == "credential_denied", kind == "credential_limited", kind == "credential_failed":
			n++
		}
	}
	return n
}

// An error tells the caller only what it is entitled to know: whether
// another SPIFFE ID is registered, killed or unknown, who the parties of a
// grant it is no party to are, whether such a grant exists, or that the
// kill switch is on, are the audit trail's and the log's. And a caller's
// x-request-id never becomes the id the trail knows its request by.
func TestAdversarialOracles(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	admin := b.Dial(t, f.Admin)
	ids := map[string]spiffeid.ID{}
	for _, name := range []string{"intern", "prober", "killed", "unknown", "giver", "taker"} {
		ids[name] = f.ID(t, name)
	}
	b.Register(t, ids["intern"], brokerv1.Level_LEVEL_INTERN, "reports-read")
	for _, name := range []string{"prober", "killed", "giver", "taker"} {
		b.Register(t, ids[name], brokerv1.Level_LEVEL_SENIOR, "reports-read")
	}
	if _, err := admin.Response.Kill(t.Context(), &adminv1.KillRequest{Target: &adminv1.KillRequest_AgentId{AgentId: ids["killed"].String()}, Reason: "oracle test"}); err != nil {
		t.Fatal(err)
	}
	g, err := b.Dial(t, ids["giver"]).Broker.Delegate(t.Context(), &brokerv1.DelegateRequest{Delegatee: ids["taker"].String(), Roles: []string{"reports-read"}, Ttl: durationpb.New(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	grant, missing := g.GetGrant().GetId(), "0123456789abcdef0123456789abcdef"

	// Registered but killed, or never registered: the same answer.
	for _, who := range []string{"intern", "prober"} {
		c := b.Dial(t, ids[who]).Broker
		delegate := func(to spiffeid.ID) error {
			_, err := c.Delegate(t.Context(), &brokerv1.DelegateRequest{Delegatee: to.String(), Roles: []string{"reports-read"}, Ttl: durationpb.New(time.Minute)})
			return err
		}
		sameAnswer(t, who+" delegating to a killed and to an unknown ID", delegate(ids["killed"]), delegate(ids["unknown"]),
			ids["killed"].String(), ids["unknown"].String())
	}

	// A grant one is no party to: as if it did not exist, parties unnamed.
	prober := b.Dial(t, ids["prober"]).Broker
	fetch := func(grantID string) error {
		_, err := prober.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read", GrantId: grantID})
		return err
	}
	revoke := func(grantID string) error {
		_, err := prober.RevokeGrant(t.Context(), &brokerv1.RevokeGrantRequest{GrantId: grantID, Reason: "oracle test"})
		return err
	}
	extend := func(grantID string) error {
		_, err := prober.Delegate(t.Context(), &brokerv1.DelegateRequest{Delegatee: ids["intern"].String(), Roles: []string{"reports-read"},
			Ttl: durationpb.New(time.Minute), ParentGrantId: grantID})
		return err
	}
	for name, call := range map[string]func(string) error{"FetchCredential": fetch, "RevokeGrant": revoke, "Delegate": extend} {
		err := call(grant)
		sameAnswer(t, name+" under another's grant and a missing one", err, call(missing), grant, missing)
		for _, party := range []string{"giver", "taker"} {
			if err != nil && strings.Contains(err.Error(), ids[party].String()) {
				t.Errorf("%s under another's grant names its %s: %v", name, party, err)
			}
		}
	}

	// An unknown SVID is not told the kill switch is on.
	if _, err := admin.Response.Kill(t.Context(), &adminv1.KillRequest{Target: &adminv1.KillRequest_All{All: true}, Reason: "oracle test"}); err != nil {
		t.Fatal(err)
	}
	_, err = b.Dial(t, ids["unknown"]).Broker.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
	brokertest.WantCode(t, err, codes.PermissionDenied, "not a registered agent")
	if strings.Contains(err.Error(), "kill") {
		t.Errorf("an unknown SVID is told about the kill switch: %v", err)
	}
}

// A caller-chosen x-request-id is kept as client_request_id; the audit
// record's request_id is the broker's own, also in the answer's header.
func TestAdversarialCallerChosenRequestID(t *testing.T) {
	f := brokertest.Setup(t)
	b := f.Start(t, f.Config(t, t.TempDir()))
	admin := b.Dial(t, f.Admin)
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_SENIOR, "reports-read")
	var header metadata.MD
	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-request-id", "evil")
	if _, err := b.Dial(t, agent).Broker.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read"}, grpc.Header(&header)); err != nil {
		t.Fatal(err)
	}
	r, err := admin.Admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{Kind: "credential_issued", Agent: agent.String()})
	if err != nil || len(r.GetRecords()) != 1 {
		t.Fatalf("QueryAudit = %v, %v; want one issuance", r, err)
	}
	d := r.GetRecords()[0].GetDetail()
	if d["request_id"] == "evil" || len(d["request_id"]) != 32 || d["client_request_id"] != "evil" {
		t.Errorf("request_id %q, client_request_id %q; want a broker-made id and the caller's apart", d["request_id"], d["client_request_id"])
	}
	if got := header.Get("x-request-id"); len(got) != 1 || got[0] != d["request_id"] {
		t.Errorf("the answer's x-request-id = %v, want the record's %q", got, d["request_id"])
	}
}

// sameAnswer fails unless a and b are the same status once their own IDs
// (idA, idB) are taken out.
func sameAnswer(t *testing.T, what string, a, b error, idA, idB string) {
	t.Helper()
	sa, sb := status.Convert(a), status.Convert(b)
	ma, mb := strings.ReplaceAll(sa.Message(), idA, "ID"), strings.ReplaceAll(sb.Message(), idB, "ID")
	if a == nil || sa.Code() != sb.Code() || ma != mb {
		t.Errorf("%s: answers differ (or none refused):\n  %s: %s\n  %s: %s", what, sa.Code(), sa.Message(), sb.Code(), sb.Message())
	}
}
