package broker_test

// Benchmarks of docs/design.md §5's HA targets: replicas sharing one store
// in the dev stack's three-member etcd cluster, each figure against a
// baseline of the same run (the same broker on a bbolt file, one replica,
// raw etcd, a cold start). Like the others in this package, each iteration
// takes a fixed number of samples, so `-benchtime 1x` (make bench) is
// enough; they report and never fail on speed.

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clientv3 "go.etcd.io/etcd/client/v3"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/agentictrust/atf/broker"
	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/broker/store/kv"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

const (
	// haConcurrency is the load of the HA throughput phases.
	haConcurrency = 64
	// haPhase is how long one throughput phase issues (a time, not a
	// count: the kinds differ tenfold in speed); an iteration runs two
	// phases of each kind, alternating.
	haPhase = 8 * time.Second
	// haLatencySamples is how many sequential calls on each store one
	// iteration times.
	haLatencySamples = 200
	// haAgents is how many agents the load is spread over, each served by
	// every broker.
	haAgents = 8
	// haReplicas is how many replicas share the store in the widest phase.
	haReplicas = 3
	// haRevocationSamples is how many revocations one iteration of
	// BenchmarkHARevocationHeard times.
	haRevocationSamples = 100
	// haFailoverSamples is how many replicas one iteration of each
	// BenchmarkHAFailover variant loses.
	haFailoverSamples = 15
	// haHeardTarget is docs/design.md §5's bound on the p99 of a revocation
	// heard on another replica.
	haHeardTarget = 50 * time.Millisecond
)

// BenchmarkHAIssuance compares FetchCredential on replicas whose store is
// in etcd (three members, loopback, mutual TLS) with the same broker on a
// bbolt file, in the same run: sequential calls alternating between the
// two (p50, p99), then throughput phases of haPhase at haConcurrency on the
// bbolt broker, on one replica, and spread over haReplicas replicas,
// alternating. To show where the ceiling is, each etcd phase also reports
// the share of calls refused Unavailable and what etcd did: write
// transactions a second, the store's writes per transaction (two per
// issuance), the transactions that lost to a concurrent one and ran again,
// and the Range requests, per call; every phase, the CPU that etcd, Vault
// and this process (the brokers and the load) used, in cores.
func BenchmarkHAIssuance(b *testing.B) {
	f := brokertest.Setup(b)
	bolt := f.Start(b, benchConfig(b, f, f.Config(b, b.TempDir())))
	replicas := startReplicas(b, f, "/bench-"+rand.Text()+"/", haReplicas)
	conns := dialAgents(b, f, append([]*brokertest.Broker{bolt}, replicas...))
	m := newStackMeter(b, f)
	const onBolt, onOne, onAll = 0, 1, 2
	kinds := [3][][]brokerv1.BrokerServiceClient{onBolt: conns[:1], onOne: conns[1:2], onAll: conns[1:]}
	for _, bk := range conns { // every agent's anchors on every broker, TLS sessions
		if _, err := parallel(b.Context(), len(bk), len(bk), func(ctx context.Context, i int) error {
			_, err := bk[i].FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read"})
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
	var lat [2][]time.Duration // bbolt, etcd: sequential
	var phases [3]loadPhase
	var seq kv.EtcdStats // what the sequential etcd calls read
	for b.Loop() {
		before := kv.EtcdCounts()
		lat = alternate(b, lat, conns[0][0], conns[1][0])
		after := kv.EtcdCounts()
		seq.Recent += after.Recent - before.Recent
		seq.Behind += after.Behind - before.Behind
		seq.Stale += after.Stale - before.Stale
		for range 2 {
			for k, on := range kinds {
				phases[k] = phases[k].add(m.phase(b, on))
			}
		}
	}
	for k := range lat {
		slices.Sort(lat[k])
	}
	p50, p99 := [2]float64{}, [2]float64{}
	for k := range lat {
		p50[k], p99[k] = float64(percentile(lat[k], 0.50)), float64(percentile(lat[k], 0.99))
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(p50[0], "bolt-p50-ns")
	b.ReportMetric(p99[0], "bolt-p99-ns")
	b.ReportMetric(p50[1], "p50-ns")
	b.ReportMetric(p99[1], "p99-ns")
	b.ReportMetric(p50[1]/p50[0], "p50-ratio")
	b.ReportMetric(p99[1]/p99[0], "p99-ratio")
	// Per sequential etcd call: first reads served by a member (recent),
	// members behind this replica, recent snapshots found stale.
	b.ReportMetric(float64(seq.Recent)/float64(len(lat[1])), "recent/op")
	b.ReportMetric(float64(seq.Behind)/float64(len(lat[1])), "behind/op")
	b.ReportMetric(float64(seq.Stale)/float64(len(lat[1])), "stale/op")
	for k, name := range []string{"bolt", "r1", "r3"} {
		phases[k].report(b, name, k != onBolt)
	}
	b.ReportMetric(phases[onOne].rate()/phases[onBolt].rate(), "r1-vs-bolt")
	b.ReportMetric(phases[onAll].rate()/phases[onOne].rate(), "r3-vs-r1")
}

// BenchmarkHAIssuanceStages is BenchmarkIssuanceStages on one replica
// whose store is in the dev stack's etcd (three members): where its
// distance to the same broker on bbolt goes, stage by stage (the
// decision's store reads, the store record with its audit record).
func BenchmarkHAIssuanceStages(b *testing.B) {
	rec := tracetest.NewSpanRecorder()
	f := brokertest.Setup(b)
	cfg := benchConfig(b, f, f.EtcdConfig(b, b.TempDir(), "/bench-stages-"+rand.Text()+"/", "r0"))
	bk := f.StartWith(b, cfg, broker.WithTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))))
	issuanceStages(b, f, bk, rec)
}

// alternate times one sequential FetchCredential on bolt then on etcd,
// haLatencySamples times, so that drift in Vault touches both alike, and
// adds the times to lat.
func alternate(b *testing.B, lat [2][]time.Duration, bolt, etcd brokerv1.BrokerServiceClient) [2][]time.Duration {
	req := &brokerv1.FetchCredentialRequest{Role: "reports-read"}
	for range haLatencySamples {
		for k, c := range []brokerv1.BrokerServiceClient{bolt, etcd} {
			start := time.Now()
			if _, err := c.FetchCredential(b.Context(), req); err != nil {
				b.Fatal(err)
			}
			lat[k] = append(lat[k], time.Since(start))
		}
	}
	return lat
}

// startReplicas starts n replicas on one store under prefix in the
// fixture's etcd cluster, set for load.
func startReplicas(b *testing.B, f *brokertest.Fixture, prefix string, n int) []*brokertest.Broker {
	b.Helper()
	out := make([]*brokertest.Broker, n)
	for i := range out {
		out[i] = f.Start(b, benchConfig(b, f, f.EtcdConfig(b, b.TempDir(), prefix, "r"+strconv.Itoa(i))))
	}
	return out
}

// dialAgents registers haAgents Interns with every store of brokers (a
// broker's own, or the one its replicas share) and dials each on each
// broker: out[broker][agent].
func dialAgents(b *testing.B, f *brokertest.Fixture, brokers []*brokertest.Broker) [][]brokerv1.BrokerServiceClient {
	b.Helper()
	registered := map[string]bool{}
	out := make([][]brokerv1.BrokerServiceClient, len(brokers))
	for i, bk := range brokers {
		store := bk.Cfg.StorePath
		if e := bk.Cfg.Store.Etcd; e != nil {
			store = e.Prefix
		}
		for a := range haAgents {
			id := f.ID(b, "agent-"+strconv.Itoa(a))
			if !registered[store+id.String()] {
				bk.Register(b, id, brokerv1.Level_LEVEL_INTERN, "reports-read")
				registered[store+id.String()] = true
			}
			out[i] = append(out[i], bk.Dial(b, id).Broker)
		}
	}
	return out
}

// issueFor issues from haConcurrency callers for d, the i-th call on
// broker i modulo the brokers of on, for agent i / brokers modulo the
// agents, and returns what they did until the last call answered. A call
// refused Unavailable (a replica whose store transaction kept losing to
// other replicas' until store.etcd.timeout) is counted, not retried; any
// other error ends it.
func issueFor(ctx context.Context, on [][]brokerv1.BrokerServiceClient, d time.Duration) (loadPhase, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req := &brokerv1.FetchCredentialRequest{Role: "reports-read"}
	var next, issued, refused atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range haConcurrency {
		wg.Go(func() {
			for time.Since(start) < d && ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				_, err := on[i%len(on)][i/len(on)%len(on[0])].FetchCredential(ctx, req)
				switch {
				case err == nil:
					issued.Add(1)
				case status.Code(err) == codes.Unavailable && ctx.Err() == nil:
					refused.Add(1)
				default:
					cancel(err)
				}
			}
		})
	}
	wg.Wait()
	p := loadPhase{ops: int(issued.Load()), refused: int(refused.Load()), wall: time.Since(start)}
	return p, context.Cause(ctx)
}

// loadPhase is what throughput phases of one kind did, added up: the
// credentials issued, the calls refused Unavailable, the wall time, and
// the stack's usage meanwhile.
type loadPhase struct {
	ops, refused int
	wall         time.Duration
	use          usage
}

func (p loadPhase) add(q loadPhase) loadPhase {
	return loadPhase{ops: p.ops + q.ops, refused: p.refused + q.refused, wall: p.wall + q.wall, use: p.use.plus(q.use)}
}

func (p loadPhase) rate() float64 { return float64(p.ops) / p.wall.Seconds() }

// report reports the phases' throughput, CPU by component and, on etcd,
// the share of calls refused and etcd's transactions, as metrics named
// prefix-….
func (p loadPhase) report(b *testing.B, prefix string, etcd bool) {
	b.ReportMetric(p.rate(), prefix+"-ops/s")
	if p.use.cpuKnown {
		cores := func(d time.Duration) float64 { return d.Seconds() / p.wall.Seconds() }
		b.ReportMetric(cores(p.use.cpu[cpuEtcd]), prefix+"-etcd-cores")
		b.ReportMetric(cores(p.use.cpu[cpuVault]), prefix+"-vault-cores")
		b.ReportMetric(cores(p.use.cpu[cpuSelf]), prefix+"-atfd-cores")
	}
	if !etcd {
		return
	}
	b.ReportMetric(float64(p.refused)/float64(p.ops+p.refused), prefix+"-refused")
	writes := float64(p.use.revisions)
	b.ReportMetric(writes/p.wall.Seconds(), prefix+"-txn/s")
	// An issuance is two of the store's writes: its reservation in the
	// live counts, then its record (docs/scaling.md).
	b.ReportMetric(2*float64(p.ops)/writes, prefix+"-writes/txn")
	b.ReportMetric(p.use.conflicts/float64(p.ops+p.refused), prefix+"-conflicts/op")
	b.ReportMetric((p.use.ranges+p.use.prefetches)/float64(p.ops+p.refused), prefix+"-ranges/op")
	b.ReportMetric(p.use.recent/float64(p.ops+p.refused), prefix+"-recent/op")
	b.ReportMetric(p.use.behind/float64(p.ops+p.refused), prefix+"-behind/op")
	b.ReportMetric(p.use.stale/float64(p.ops+p.refused), prefix+"-stale/op")
}

// CPU users the stack meter tells apart.
const (
	cpuEtcd = iota
	cpuVault
	cpuSelf
)

// usage is what the stack has done, up to a point or between two: the
// etcd cluster's revisions (one per transaction that wrote), the Range
// requests its members answered, the brokers' transactions that lost to a
// concurrent write and their prefetches (one Txn of reads each;
// kv.EtcdCounts, which etcd's own counters cannot tell apart), and the
// CPU time of etcd's members, of Vault and of this process (the brokers
// and their load).
type usage struct {
	revisions                     int64
	ranges, conflicts, prefetches float64
	recent, behind, stale         float64
	cpu                           [3]time.Duration
	cpuKnown                      bool
}

func (u usage) plus(v usage) usage {
	out := usage{revisions: u.revisions + v.revisions, ranges: u.ranges + v.ranges, conflicts: u.conflicts + v.conflicts,
		prefetches: u.prefetches + v.prefetches, recent: u.recent + v.recent, behind: u.behind + v.behind, stale: u.stale + v.stale, cpuKnown: v.cpuKnown}
	for i := range out.cpu {
		out.cpu[i] = u.cpu[i] + v.cpu[i]
	}
	return out
}

func (u usage) minus(v usage) usage {
	out := usage{revisions: u.revisions - v.revisions, ranges: u.ranges - v.ranges, conflicts: u.conflicts - v.conflicts,
		prefetches: u.prefetches - v.prefetches, recent: u.recent - v.recent, behind: u.behind - v.behind, stale: u.stale - v.stale, cpuKnown: u.cpuKnown && v.cpuKnown}
	for i := range out.cpu {
		out.cpu[i] = u.cpu[i] - v.cpu[i]
	}
	return out
}

// stackMeter reads usage from the fixture's etcd cluster, its members'
// metrics and /proc.
type stackMeter struct {
	f   *brokertest.Fixture
	e   *dev.Etcd
	cli *clientv3.Client
	web *http.Client
}

func newStackMeter(b *testing.B, f *brokertest.Fixture) *stackMeter {
	b.Helper()
	e := f.Etcd(b)
	cli, err := e.Client()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cli.Close() })
	web, err := e.HTTPClient()
	if err != nil {
		b.Fatal(err)
	}
	return &stackMeter{f: f, e: e, cli: cli, web: web}
}

// phase issues for haPhase spread over on and returns what it did.
func (m *stackMeter) phase(b *testing.B, on [][]brokerv1.BrokerServiceClient) loadPhase {
	before := m.now(b)
	p, err := issueFor(b.Context(), on, haPhase)
	if err != nil {
		b.Fatal(err)
	}
	p.use = m.now(b).minus(before)
	return p
}

func (m *stackMeter) now(b *testing.B) usage {
	b.Helper()
	st, err := m.cli.Status(b.Context(), m.e.Endpoints[0])
	if err != nil {
		b.Fatal(err)
	}
	u := usage{revisions: st.Header.Revision}
	for _, ep := range m.e.Endpoints {
		families := scrapeWith(b, m.web, ep+"/metrics")
		handled := func(method string) float64 {
			v, _ := value(families, "grpc_server_handled_total", map[string]string{"grpc_service": "etcdserverpb.KV", "grpc_method": method, "grpc_code": "OK"})
			return v
		}
		u.ranges += handled("Range")
	}
	counts := kv.EtcdCounts()
	u.conflicts, u.prefetches = float64(counts.Conflicts), float64(counts.Prefetches)
	u.recent, u.behind, u.stale = float64(counts.Recent), float64(counts.Behind), float64(counts.Stale)
	pids := m.f.Stack.PIDs()
	u.cpuKnown = true
	for i := range m.e.Endpoints {
		d, ok := procCPU(pids[m.e.MemberName(i)])
		u.cpu[cpuEtcd] += d
		u.cpuKnown = u.cpuKnown && ok
	}
	d, ok := procCPU(pids["vault"])
	u.cpu[cpuVault] = d
	var ru syscall.Rusage
	err = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	u.cpu[cpuSelf] = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	u.cpuKnown = u.cpuKnown && ok && err == nil
	return u
}

// procCPU is the CPU time (user and system) process pid has used, read
// from /proc (Linux); false where there is none.
func procCPU(pid int) (time.Duration, bool) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil || pid == 0 {
		return 0, false
	}
	// The command, field 2, is in parentheses and may hold spaces; utime
	// and stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on
	// Linux).
	_, rest, ok := strings.Cut(string(stat), ") ")
	fields := strings.Fields(rest)
	if !ok || len(fields) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(utime+stime) * (time.Second / 100), true
}

// BenchmarkHARevocationHeard times, for an agent watching its revocations
// on replica a and on replica b at once, the revocation of its lineage
// (one credential) made on a: from its commit (the call's start plus the
// commit duration it reports, so a little early) until each watch hears
// the credential revoked. Each sample is a fresh agent: the revocation
// lists an agent's credentials, revoked ones included, until
// store_retention drops them. The baseline, in the same run on the same
// cluster, is what the path from a commit to another replica is built on:
// a Put through one etcd client heard by a watch of another, from the
// Put's call.
func BenchmarkHARevocationHeard(b *testing.B) {
	f := brokertest.Setup(b)
	replicas := startReplicas(b, f, "/bench-"+rand.Text()+"/", 2)
	admin := replicas[0].Dial(b, f.Admin).Admin
	raw := newRawFeed(b, f.Etcd(b))
	var same, other, rawLat []time.Duration
	n := 0
	for b.Loop() {
		for range haRevocationSamples {
			n++
			s, o := heardAcross(b, f, admin, replicas[0], replicas[1], f.ID(b, "watched-"+strconv.Itoa(n)))
			same, other = append(same, s), append(other, o)
			rawLat = append(rawLat, raw.putHeard(b))
		}
	}
	for _, l := range [][]time.Duration{same, other, rawLat} {
		slices.Sort(l)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(percentileMS(other, 0.50), "other-p50-ms")
	b.ReportMetric(percentileMS(other, 0.99), "other-p99-ms")
	b.ReportMetric(percentileMS(same, 0.50), "same-p50-ms")
	b.ReportMetric(percentileMS(same, 0.99), "same-p99-ms")
	b.ReportMetric(percentileMS(rawLat, 0.50), "raw-p50-ms")
	b.ReportMetric(percentileMS(rawLat, 0.99), "raw-p99-ms")
	b.ReportMetric(float64(percentile(other, 0.99))/float64(haHeardTarget), "other-p99-vs-50ms")
	b.ReportMetric(percentileMS(other, 0.99)/percentileMS(same, 0.99), "other-vs-same")
	b.ReportMetric(percentileMS(other, 0.99)/percentileMS(rawLat, 0.99), "other-vs-raw")
	b.ReportMetric(percentileMS(other, 0.50)/percentileMS(rawLat, 0.50), "other-p50-vs-raw")
}

// heardAcross registers agent, has it watch on a and on other and fetch
// a credential on a, revokes its lineage on a, and returns the times from
// the commit until the watch on a and the one on other heard it.
func heardAcross(b *testing.B, f *brokertest.Fixture, admin adminv1.AdminServiceClient, a, other *brokertest.Broker, agent spiffeid.ID) (same, across time.Duration) {
	b.Helper()
	a.Register(b, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	here, there := heardOn(b, a, agent), heardOn(b, other, agent)
	r, err := a.Dial(b, agent).Broker.FetchCredential(b.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"})
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	resp, err := admin.RevokeLineage(b.Context(), &adminv1.RevokeLineageRequest{
		Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: agent.String()}, Reason: "benchmark"})
	if err != nil {
		b.Fatal(err)
	}
	committed := start.Add(resp.GetSummary().GetCommitDuration().AsDuration())
	acc := r.GetCredential().GetAccessor()
	return awaitHeard(b, here, acc).Sub(committed), awaitHeard(b, there, acc).Sub(committed)
}

// heard is a revocation event and when the watch delivered it.
type heard struct {
	ev *brokerv1.WatchRevocationsResponse
	at time.Time
}

// heardOn opens id's revocation watch on r and returns its events, each
// stamped as it arrives; the channel closes when the watch ends.
func heardOn(b *testing.B, r *brokertest.Broker, id spiffeid.ID) <-chan heard {
	w, ctx := watchOn(b, r, id), b.Context()
	ch := make(chan heard, 64)
	go func() {
		defer close(ch)
		for {
			ev, err := w.Recv()
			if err != nil {
				return
			}
			select {
			case ch <- heard{ev: ev, at: time.Now()}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

// awaitHeard is when the watch of ch delivered the revocation of accessor,
// skipping other events; it fails b after ten seconds.
func awaitHeard(b *testing.B, ch <-chan heard, accessor string) time.Time {
	b.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case h, ok := <-ch:
			if !ok {
				b.Fatal("the revocation watch ended")
			}
			if slices.Contains(h.ev.GetAccessors(), accessor) {
				return h.at
			}
		case <-timeout:
			b.Fatalf("the revocation of %s not heard within 10 s", accessor)
		}
	}
}

// rawFeed is the raw baseline of a change heard across etcd: one client
// puts, another watches the key's prefix.
type rawFeed struct {
	put    *clientv3.Client
	events clientv3.WatchChan
	key    string
}

func newRawFeed(b *testing.B, e *dev.Etcd) *rawFeed {
	b.Helper()
	var clis [2]*clientv3.Client
	for i := range clis {
		c, err := e.Client()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		clis[i] = c
	}
	prefix := "/bench-raw-" + rand.Text() + "/"
	events := clis[1].Watch(b.Context(), prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if wr := <-events; !wr.Created {
		b.Fatalf("the raw watch did not start: %v", wr.Err())
	}
	return &rawFeed{put: clis[0], events: events, key: prefix + "change"}
}

// putHeard puts a change and returns the time from the Put's call until
// the watch delivered it.
func (r *rawFeed) putHeard(b *testing.B) time.Duration {
	b.Helper()
	start := time.Now()
	if _, err := r.put.Put(b.Context(), r.key, start.String()); err != nil {
		b.Fatal(err)
	}
	select {
	case wr := <-r.events:
		if err := wr.Err(); err != nil || len(wr.Events) == 0 {
			b.Fatalf("the raw watch: %v", err)
		}
		return time.Since(start)
	case <-time.After(10 * time.Second):
		b.Fatal("the raw Put not heard within 10 s")
		return 0
	}
}

// replica is a replica behind a TCP proxy, through which the agent reaches
// it: cutting the proxy drops its connections as a crash of the replica's
// host process would, the replica itself still running.
type replica struct {
	b *brokertest.Broker
	p *devtest.Proxy
}

// BenchmarkHAFailover times an agent's failover: issuing back to back
// through a client given two replicas' addresses (Config.Addrs, gRPC's
// pick_first), the one serving it is lost, and the time runs until the
// agent's next credential from the other. Lost is either stopped (Stop: a
// graceful stop, as in a rolling update) or crashed (its connections
// dropped and new ones refused, as when its process dies). failed-calls
// counts the agent's calls that failed meanwhile (Unavailable, to be
// retried); any other error fails the benchmark. The baseline, per sample
// on the replica taking over, is a fresh agent's first credential there on
// a new connection: the mutual TLS handshake and the agent's first anchors
// in Vault, which a failover also pays.
func BenchmarkHAFailover(b *testing.B) {
	f := brokertest.Setup(b)
	prefix := "/bench-" + rand.Text() + "/"
	started := 0
	start := func() replica {
		started++
		bk := f.Start(b, benchConfig(b, f, f.EtcdConfig(b, b.TempDir(), prefix, "r"+strconv.Itoa(started))))
		return replica{b: bk, p: devtest.NewProxy(b, bk.Addr)}
	}
	cur := start()
	agent := f.ID(b, "agent")
	cur.b.Register(b, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	for _, crash := range []bool{false, true} {
		b.Run(map[bool]string{false: "stopped", true: "crashed"}[crash], func(b *testing.B) {
			var took, cold []time.Duration
			failed := 0
			for b.Loop() {
				for range haFailoverSamples {
					next := start()
					d, n := failOver(b, f, agent, cur, next, crash)
					took, failed = append(took, d), failed+n
					fresh := f.ID(b, "cold-"+strconv.Itoa(started))
					next.b.Register(b, fresh, brokerv1.Level_LEVEL_INTERN, "reports-read")
					cold = append(cold, coldCredential(b, f, next, fresh))
					cur = next
				}
			}
			slices.Sort(took)
			slices.Sort(cold)
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(percentileMS(took, 0.50), "p50-ms")
			b.ReportMetric(percentileMS(took, 0.99), "p99-ms")
			b.ReportMetric(percentileMS(cold, 0.50), "cold-p50-ms")
			b.ReportMetric(percentileMS(cold, 0.99), "cold-p99-ms")
			b.ReportMetric(percentileMS(took, 0.99)/percentileMS(cold, 0.99), "p99-vs-cold")
			b.ReportMetric(float64(failed)/float64(len(took)), "failed-calls")
		})
	}
}

// failOver has agent fetch back to back through a new connection given
// cur's and next's addresses, in that order, loses cur once the agent is
// served there, and returns the time from the loss until a credential came
// from next, and the calls that failed in between.
func failOver(b *testing.B, f *brokertest.Fixture, agent spiffeid.ID, cur, next replica, crash bool) (time.Duration, int) {
	b.Helper()
	conn := dialReplicas(b, f, agent, cur.p.Addr, next.p.Addr)
	defer conn.Close()
	serving, done := make(chan struct{}), make(chan failoverResult, 1)
	go func() { done <- fetchUntil(b.Context(), conn, cur.p.Addr, next.p.Addr, serving) }()
	select {
	case <-serving:
	case r := <-done:
		b.Fatalf("the agent was not served by the first replica: %v", r.err)
	}
	lost := time.Now()
	stopped := make(chan struct{})
	go func() {
		if crash {
			cur.p.Cut()
		}
		cur.b.Stop()
		close(stopped)
	}()
	r := <-done
	<-stopped
	if r.err != nil {
		b.Fatal(r.err)
	}
	return r.at.Sub(lost), r.failed
}

// failoverResult is when the agent got its first credential from the
// replica taking over, and how many calls failed before.
type failoverResult struct {
	at     time.Time
	failed int
	err    error
}

// fetchUntil fetches through conn until a credential comes from to,
// closing serving once one came from from; a call that fails otherwise
// than Unavailable, or two minutes without one from to, end it with an
// error.
func fetchUntil(ctx context.Context, conn *client.Conn, from, to string, serving chan<- struct{}) failoverResult {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req := &brokerv1.FetchCredentialRequest{Role: "reports-read"}
	var once sync.Once
	failed := 0
	for {
		var p peer.Peer
		_, err := conn.Broker.FetchCredential(ctx, req, grpc.Peer(&p))
		at := time.Now()
		addr := ""
		if p.Addr != nil {
			addr = p.Addr.String()
		}
		switch {
		case err == nil && addr == to:
			return failoverResult{at: at, failed: failed}
		case err == nil && addr == from:
			once.Do(func() { close(serving) })
		case err == nil:
			return failoverResult{err: fmt.Errorf("a credential from %q, neither replica", addr)}
		case status.Code(err) == codes.Unavailable && ctx.Err() == nil:
			failed++
		default:
			return failoverResult{failed: failed, err: fmt.Errorf("a call during the failover: %w", err)}
		}
	}
}

// dialReplicas connects as id to the replicas at addrs, in that order.
func dialReplicas(b *testing.B, f *brokertest.Fixture, id spiffeid.ID, addrs ...string) *client.Conn {
	b.Helper()
	s := f.SVID(b, id)
	c, err := client.Dial(b.Context(), client.Config{Addrs: addrs, BrokerID: f.Stack.BrokerID.String(),
		SVIDFile: s.CertPath, SVIDKeyFile: s.KeyPath, BundleFile: s.BundlePath})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// coldCredential is the time from dialing r as id, registered but never
// served there, to its first credential.
func coldCredential(b *testing.B, f *brokertest.Fixture, r replica, id spiffeid.ID) time.Duration {
	b.Helper()
	f.SVID(b, id) // minted before the clock starts
	start := time.Now()
	conn := dialReplicas(b, f, id, r.p.Addr)
	defer conn.Close()
	if _, err := conn.Broker.FetchCredential(b.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}
