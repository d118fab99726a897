package broker_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
