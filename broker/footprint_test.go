package broker_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// footprintMark is the key the meter writes under the store's prefix to
// mark where a measurement starts and ends; it is in no bucket.
const footprintMark = "footprint-mark"

// meter measures what a broker on a store in etcd writes there: every key
// put or deleted under the store's prefix between two marks, read from a
// watch, and the KV requests the cluster's members served meanwhile.
type meter struct {
	t       *testing.T
	cli     *clientv3.Client
	web     *http.Client
	members []string
	prefix  string
	// own counts the Range requests the meter made itself, which are not
	// the broker's.
	own int
}

func newMeter(t *testing.T, e *dev.Etcd, prefix string) *meter {
	cli, err := e.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	web, err := e.HTTPClient()
	if err != nil {
		t.Fatal(err)
	}
	return &meter{t: t, cli: cli, web: web, members: e.Endpoints, prefix: prefix}
}

// writes is what one measured stretch wrote to etcd under the prefix, and
// the KV requests it made.
type writes struct {
	// txns counts etcd revisions: one per transaction that wrote.
	txns          int
	puts, deletes int
	// bytes is the key and value of every put, what etcd's backend keeps
	// for each revision until it is compacted.
	bytes int
	// byFamily counts keys put or deleted by key family (a bucket, the
	// change feed).
	byFamily map[string]int
	// ranges and txnRequests are the Range and Txn requests the members
	// served, sent the bytes of their answers (the meter's own requests
	// during settle and mark add about a hundred bytes an operation).
	ranges, txnRequests, sent int
}

// family is the key family of a key under the prefix: its bucket (a
// bucket's keys are <prefix><bucket>\x00<key>, its sequence
// <prefix><bucket>\x01seq), or "feed", "leader" and "members" for the
// keys replicas keep to work together.
func family(key string) string {
	for _, f := range []string{"feed", "leader", "members"} {
		if strings.HasPrefix(key, f+"/") {
			return f
		}
	}
	if i := strings.IndexAny(key, "\x00\x01"); i >= 0 {
		if key[i] == '\x01' {
			return key[:i] + " (sequence)"
		}
		return key[:i]
	}
	return key
}

// revision is the cluster's current revision, read without a Range.
func (m *meter) revision() int64 {
	m.t.Helper()
	st, err := m.cli.Status(m.t.Context(), m.members[0])
	if err != nil {
		m.t.Fatal(err)
	}
	return st.Header.Revision
}

// settle waits until the cluster's revision has stood still for a while,
// so that what an operation set going in the background is counted with
// it.
func (m *meter) settle() {
	m.t.Helper()
	const still = 400 * time.Millisecond
	deadline := time.Now().Add(30 * time.Second)
	last, since := m.revision(), time.Now()
	for time.Since(since) < still {
		if time.Now().After(deadline) {
			m.t.Fatal("etcd kept being written to: nothing to measure against")
		}
		time.Sleep(50 * time.Millisecond)
		if r := m.revision(); r != last {
			last, since = r, time.Now()
		}
	}
}

// mark puts the mark key and returns its revision.
func (m *meter) mark() int64 {
	m.t.Helper()
	r, err := m.cli.Put(m.t.Context(), m.prefix+footprintMark, "")
	if err != nil {
		m.t.Fatal(err)
	}
	return r.Header.Revision
}

// served is what the members have served clients so far: KV Range and
// Txn requests, and bytes sent (every answer and watch event).
type served struct{ ranges, txns, sent int }

func (m *meter) served() served {
	m.t.Helper()
	var s [3]float64
	for _, ep := range m.members {
		families := scrapeWith(m.t, m.web, ep+"/metrics")
		for i, c := range []struct {
			name   string
			labels map[string]string
		}{
			{"grpc_server_handled_total", map[string]string{"grpc_service": "etcdserverpb.KV", "grpc_method": "Range", "grpc_code": "OK"}},
			{"grpc_server_handled_total", map[string]string{"grpc_service": "etcdserverpb.KV", "grpc_method": "Txn", "grpc_code": "OK"}},
			{"etcd_network_client_grpc_sent_bytes_total", nil},
		} {
			if v, ok := value(families, c.name, c.labels); ok {
				s[i] += v
			}
		}
	}
	return served{ranges: int(s[0]), txns: int(s[1]), sent: int(s[2])}
}

// measure runs op and returns what it wrote and asked of etcd.
func (m *meter) measure(op func()) writes {
	m.t.Helper()
	m.settle()
	before, own := m.served(), m.own
	start := m.mark()
	op()
	m.settle()
	end := m.mark()
	after := m.served()
	w := m.between(start, end)
	w.ranges = after.ranges - before.ranges - (m.own - own)
	w.txnRequests = after.txns - before.txns
	w.sent = after.sent - before.sent
	return w
}

// between reads what was written under the prefix after revision start
// and before revision end.
func (m *meter) between(start, end int64) writes {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(m.t.Context(), 30*time.Second)
	defer cancel()
	w := writes{byFamily: map[string]int{}}
	revs := map[int64]bool{}
	for wr := range m.cli.Watch(ctx, m.prefix, clientv3.WithPrefix(), clientv3.WithRev(start+1)) {
		if err := wr.Err(); err != nil {
			m.t.Fatal(err)
		}
		for _, ev := range wr.Events {
			if ev.Kv.ModRevision >= end {
				return w
			}
			key := strings.TrimPrefix(string(ev.Kv.Key), m.prefix)
			if key == footprintMark { // another measurement's
				continue
			}
			revs[ev.Kv.ModRevision] = true
			w.txns = len(revs)
			w.byFamily[family(key)]++
			if ev.Type == clientv3.EventTypeDelete {
				w.deletes++
				continue
			}
			w.puts++
			w.bytes += len(ev.Kv.Key) + len(ev.Kv.Value)
		}
	}
	m.t.Fatalf("the watch ended before the end mark (revision %d)", end)
	return w
}

// count is how many keys of family bucket are in the store now.
func (m *meter) count(bucket string) int {
	m.t.Helper()
	m.own++
	r, err := m.cli.Get(m.t.Context(), m.prefix+bucket+"\x00", clientv3.WithRange(m.prefix+bucket+"\x01"), clientv3.WithCountOnly())
	if err != nil {
		m.t.Fatal(err)
	}
	return int(r.Count)
}

// atRest is what the store holds now, by key family: keys, and bytes of
// key and value.
func (m *meter) atRest() map[string][2]int {
	m.t.Helper()
	m.own++
	r, err := m.cli.Get(m.t.Context(), m.prefix, clientv3.WithPrefix())
	if err != nil {
		m.t.Fatal(err)
	}
	out := map[string][2]int{}
	for _, kv := range r.Kvs {
		key := strings.TrimPrefix(string(kv.Key), m.prefix)
		if key == footprintMark {
			continue
		}
		f := family(key)
		out[f] = [2]int{out[f][0] + 1, out[f][1] + len(kv.Key) + len(kv.Value)}
	}
	return out
}

// families lists a map's families in order, for stable output.
func families[V any](m map[string]V) []string {
	var fs []string
	for f := range m {
		fs = append(fs, f)
	}
	slices.Sort(fs)
	return fs
}

// footprintAgents is how many agents each measured operation is repeated
// for.
const footprintAgents = 10

// footprintRow is one measured operation, done n times.
type footprintRow struct {
	op string
	n  int
	w  writes
}

// footprintEnv is a broker on etcd with agents ready to be measured: a
// Senior who delegates, Interns who fetch and are delegated to, Juniors
// whose writes need approval, and the approver.
type footprintEnv struct {
	m        *meter
	admin    adminv1.AdminServiceClient
	approval adminv1.ApprovalServiceClient
	giver    brokerv1.BrokerServiceClient
	interns  []spiffeid.ID
	agents   []brokerv1.BrokerServiceClient // the Interns'
	juniors  []brokerv1.BrokerServiceClient
}

// TestEtcdFootprint measures, on the dev stack's three-member etcd
// cluster, what a broker on etcd writes there for each kind of operation
// (transactions, keys, bytes, audit records) and asks of it (Range and Txn
// requests), and what each kind of record weighs at rest, and fails when a
// figure exceeds the bound docs/scaling.md states. -v prints the tables
// docs/scaling.md quotes.
func TestEtcdFootprint(t *testing.T) {
	f := brokertest.Setup(t)
	prefix := "/footprint-" + rand.Text() + "/"
	approver := f.ID(t, "approver")
	cfg := f.EtcdConfig(t, t.TempDir(), prefix, "fp")
	cfg.HealthInterval = time.Hour // no health reads among the measured requests
	cfg.Approvals.Approvers = []string{approver.String()}
	b := f.Start(t, cfg)
	env := &footprintEnv{m: newMeter(t, f.Etcd(t), prefix), admin: b.Dial(t, f.Admin).Admin, approval: b.Dial(t, approver).Approvals}
	giver := f.ID(t, "giver")
	b.Register(t, giver, brokerv1.Level_LEVEL_SENIOR, "reports-read")
	env.giver = b.Dial(t, giver).Broker
	for i := range footprintAgents {
		id := f.ID(t, fmt.Sprintf("intern-%d", i))
		env.interns = append(env.interns, id)
		env.agents = append(env.agents, b.Dial(t, id).Broker)
		junior := f.ID(t, fmt.Sprintf("junior-%d", i))
		b.Register(t, junior, brokerv1.Level_LEVEL_JUNIOR, reportsRW...)
		env.juniors = append(env.juniors, b.Dial(t, junior).Broker)
	}
	m := env.m
	m.settle()
	start, inUse := m.mark(), m.inUse()
	rows := env.agentOps(t)
	rows = append(rows, env.grantOps(t)...)
	rows = append(rows, env.approvalOps(t)...)
	// What etcd's backend grew by for what was put: its own overhead per
	// revision kept (until compaction), on a member.
	all := m.between(start, m.mark())
	t.Logf("backend in use on %s grew %d bytes for %d bytes put in %d revisions (%.2f per byte put)",
		m.members[0], m.inUse()-inUse, all.bytes, all.txns, float64(m.inUse()-inUse)/float64(all.bytes))
	rest := m.atRest()
	// The behaviour baselines: one key per agent, which a replica writes
	// every 5 minutes (those that changed) and as it stops.
	b.Stop()
	perAgent := m.baselineBytes()
	t.Logf("baselines: %d bytes per agent", perAgent)
	logFootprint(t, rows, rest)
	checkFootprint(t, rows, rest)
	if bound := docTable(t, perKeyMarker)[baselinesRow]; len(bound) != 1 || float64(perAgent) > bound[0] {
		t.Errorf("an agent's baseline weighs %d bytes, above the bound %v for %q in %s", perAgent, bound, baselinesRow, scalingDoc)
	}
}

// baselinesRow is the row of docs/scaling.md's bounds per key for one
// agent's baseline (key and value).
const baselinesRow = "baselines, per agent"

// baselineBytes is the mean size of an agent's baseline key and value.
func (m *meter) baselineBytes() int {
	m.t.Helper()
	m.own++
	r, err := m.cli.Get(m.t.Context(), m.prefix+"baselines\x00", clientv3.WithPrefix())
	if err != nil || len(r.Kvs) == 0 {
		m.t.Fatalf("baselines: %v, %d keys", err, len(r.Kvs))
	}
	total := 0
	for _, kv := range r.Kvs {
		total += len(kv.Key) - len(m.prefix) + len(kv.Value)
	}
	return total / len(r.Kvs)
}

// inUse is the bytes a member's backend uses (etcd's db size less its
// free pages).
func (m *meter) inUse() int64 {
	m.t.Helper()
	st, err := m.cli.Status(m.t.Context(), m.members[0])
	if err != nil {
		m.t.Fatal(err)
	}
	return st.DbSizeInUse
}

// each runs op for every agent i, failing the test on an error.
func each(t *testing.T, op func(i int) error) func() {
	return func() {
		for i := range footprintAgents {
			if err := op(i); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// agentOps measures registrations, issuances and a refusal.
func (e *footprintEnv) agentOps(t *testing.T) []footprintRow {
	ctx := t.Context()
	fetch := func(role string) func(i int) error {
		return func(i int) error {
			_, err := e.agents[i].FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: role})
			return err
		}
	}
	register := func(i int) error {
		_, err := e.admin.RegisterAgent(ctx, &adminv1.RegisterAgentRequest{SpiffeId: e.interns[i].String(), Owner: "owner@example.org",
			Purpose: "Summarise the quarterly reports", Roles: reportsRW})
		return err
	}
	refused := func(i int) error {
		_, err := e.agents[i].FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-write"})
		if status.Code(err) != codes.PermissionDenied {
			return fmt.Errorf("an Intern's write = %v, want PermissionDenied", err)
		}
		return nil
	}
	return []footprintRow{
		{"register an agent", footprintAgents, e.m.measure(each(t, register))},
		{"an agent's first issuance", footprintAgents, e.m.measure(each(t, fetch("reports-read")))},
		{"issuance", footprintAgents, e.m.measure(each(t, fetch("reports-read")))},
		{"refused request", footprintAgents, e.m.measure(each(t, refused))},
	}
}

// grantOps measures delegations, issuances under grants and lineage
// revocations, of one credential and of lineageWide.
func (e *footprintEnv) grantOps(t *testing.T) []footprintRow {
	ctx := t.Context()
	grants := make([]string, footprintAgents+1)
	delegate := func(i int) error {
		g, err := e.giver.Delegate(ctx, &brokerv1.DelegateRequest{Delegatee: e.interns[i%footprintAgents].String(), Roles: []string{"reports-read"}, Ttl: durationpb.New(10 * time.Minute)})
		grants[i] = g.GetGrant().GetId()
		return err
	}
	under := func(i int) error {
		_, err := e.agents[i].FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read", GrantId: grants[i]})
		return err
	}
	revoke := func(i int) error {
		if _, err := e.admin.RevokeLineage(ctx, &adminv1.RevokeLineageRequest{Root: &adminv1.RevokeLineageRequest_GrantId{GrantId: grants[i]}, Reason: "footprint"}); err != nil {
			return err
		}
		// Counted with the revocation: Vault's confirmation empties the queue.
		devtest.WaitFor(t, 10*time.Second, "the revocation queue to empty", func() bool { return e.m.count("revocations") == 0 })
		return nil
	}
	rows := []footprintRow{
		{"delegation (a grant)", footprintAgents, e.m.measure(each(t, delegate))},
		{"issuance under a grant", footprintAgents, e.m.measure(each(t, under))},
		{"lineage revocation, 1 credential", footprintAgents, e.m.measure(each(t, revoke))},
	}
	// One wide lineage: a grant with lineageWide credentials under it.
	wide := footprintAgents
	if err := delegate(wide); err != nil {
		t.Fatal(err)
	}
	for range lineageWide {
		if _, err := e.agents[0].FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read", GrantId: grants[wide]}); err != nil {
			t.Fatal(err)
		}
	}
	return append(rows, footprintRow{fmt.Sprintf("lineage revocation, %d credentials", lineageWide), 1, e.m.measure(func() {
		if err := revoke(wide); err != nil {
			t.Fatal(err)
		}
	})})
}

// lineageWide is how many credentials the wide lineage revocation ends.
const lineageWide = 20

// approvalOps measures a Junior's write: its request, the approver's
// decision and the approved issuance.
func (e *footprintEnv) approvalOps(t *testing.T) []footprintRow {
	ctx := t.Context()
	ids := make([]string, footprintAgents)
	request := func(i int) error {
		r, err := e.juniors[i].FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-write", Justification: "quarterly close"})
		ids[i] = r.GetApproval().GetId()
		if err == nil && ids[i] == "" {
			err = fmt.Errorf("a Junior's write was answered %v, want a pending approval", r)
		}
		return err
	}
	decide := func(i int) error {
		_, err := e.approval.DecideApproval(ctx, &adminv1.DecideApprovalRequest{ApprovalId: ids[i], Verdict: adminv1.Verdict_VERDICT_APPROVE, Reason: "ticket reviewed"})
		return err
	}
	redeem := func(i int) error {
		_, err := e.juniors[i].FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-write", ApprovalId: ids[i]})
		return err
	}
	return []footprintRow{
		{"approval request", footprintAgents, e.m.measure(each(t, request))},
		{"approval decision", footprintAgents, e.m.measure(each(t, decide))},
		{"approved issuance", footprintAgents, e.m.measure(each(t, redeem))},
	}
}

// logFootprint logs the per-operation and at-rest tables, as Markdown.
func logFootprint(t *testing.T, rows []footprintRow, rest map[string][2]int) {
	var b strings.Builder
	b.WriteString("\n| operation | etcd txns | keys put | keys deleted | bytes put | audit records | Range requests | Txn requests | bytes read |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		per := func(v int) string { return strconv.FormatFloat(float64(v)/float64(r.n), 'f', 0, 64) }
		if r.n > 1 {
			per = func(v int) string { return strconv.FormatFloat(float64(v)/float64(r.n), 'f', 1, 64) }
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.op, per(r.w.txns), per(r.w.puts), per(r.w.deletes), per(r.w.bytes),
			per(r.w.byFamily["audit"]), per(r.w.ranges), per(r.w.txnRequests), per(r.w.sent))
	}
	b.WriteString("\nkeys written by family:\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "%s (x%d):", r.op, r.n)
		for _, f := range families(r.w.byFamily) {
			fmt.Fprintf(&b, " %s %d", f, r.w.byFamily[f])
		}
		b.WriteString("\n")
	}
	b.WriteString("\n| key family | keys | bytes | bytes per key |\n|---|---|---|---|\n")
	for _, f := range families(rest) {
		fmt.Fprintf(&b, "| %s | %d | %d | %d |\n", f, rest[f][0], rest[f][1], rest[f][1]/rest[f][0])
	}
	t.Log(b.String())
}

// scalingDoc holds the bounds TestEtcdFootprint checks, each table after
// a marker line.
const (
	scalingDoc    = "../docs/scaling.md"
	perOpMarker   = "<!-- bounds per operation: TestEtcdFootprint -->"
	perKeyMarker  = "<!-- bounds per key: TestEtcdFootprint -->"
	boundsColumns = 5 // boundNames
)

// boundNames are the columns of the bounds per operation.
var boundNames = []string{"etcd txns", "keys written", "bytes put", "Range requests", "bytes read"}

// docTable reads the Markdown table after marker in docs/scaling.md: its
// first column, and the numbers in the others.
func docTable(t *testing.T, marker string) map[string][]float64 {
	t.Helper()
	raw, err := os.ReadFile(scalingDoc)
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(raw), marker+"\n")
	if !ok {
		t.Fatalf("%s: no line %s", scalingDoc, marker)
	}
	out := map[string][]float64{}
	for i, line := range strings.Split(after, "\n") {
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(strings.Trim(line, "| "), "|")
		if i < 2 { // the header and its rule
			continue
		}
		var nums []float64
		for _, c := range cells[1:] {
			v, err := strconv.ParseFloat(strings.ReplaceAll(strings.TrimSpace(c), ",", ""), 64)
			if err != nil {
				t.Fatalf("%s, table after %s: %q: %v", scalingDoc, marker, line, err)
			}
			nums = append(nums, v)
		}
		out[strings.TrimSpace(cells[0])] = nums
	}
	if len(out) == 0 {
		t.Fatalf("%s: no table after %s", scalingDoc, marker)
	}
	return out
}

// checkFootprint fails on a figure above the bound docs/scaling.md states
// for it, and on an operation or key family it states none for.
func checkFootprint(t *testing.T, rows []footprintRow, rest map[string][2]int) {
	ops := docTable(t, perOpMarker)
	for _, r := range rows {
		bound, ok := ops[r.op]
		if !ok || len(bound) != boundsColumns {
			t.Errorf("%s states no bounds for %q (%s)", scalingDoc, r.op, strings.Join(boundNames, ", "))
			continue
		}
		delete(ops, r.op)
		for i, got := range []int{r.w.txns, r.w.puts + r.w.deletes, r.w.bytes, r.w.ranges, r.w.sent} {
			if per := float64(got) / float64(r.n); per > bound[i] {
				t.Errorf("%s: %s %v, above the bound %v in %s", r.op, boundNames[i], per, bound[i], scalingDoc)
			}
		}
	}
	for op := range ops {
		t.Errorf("%s bounds %q, which the test does not measure", scalingDoc, op)
	}
	keys := docTable(t, perKeyMarker)
	for _, f := range families(rest) {
		bound, ok := keys[f]
		if !ok || len(bound) != 1 {
			t.Errorf("%s states no bound on the bytes of a key of family %q", scalingDoc, f)
			continue
		}
		if per := rest[f][1] / rest[f][0]; float64(per) > bound[0] {
			t.Errorf("a key of family %s weighs %d bytes, above the bound %v in %s", f, per, bound[0], scalingDoc)
		}
	}
}
