package broker_test

// The broker under many agents at once (issue 7). TestLoad runs in make
// test; TestSoak, the same run longer and larger, in make soak. They check
// what must hold under load (the rate limits, a revocation reaching exactly
// its lineage's streams, nothing left behind at Close) and report latency
// without asserting it.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/attest/attesttest"
	"github.com/agentictrust/atf/broker"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// The rate limit of every level in a load run, and the lifetime callers ask
// for (short, so that the shared Vault sheds the tokens soon after).
const (
	loadBurst     = 2
	loadPerSecond = 1.0
	loadTTL       = 5 * time.Minute
	loadRole      = "reports-read"
)

// After a run, the process may hold this many more goroutines and this much
// more live heap than before it, besides what the runtime keeps of every
// goroutine it ran at once (their descriptors: under 1 KiB each): far less
// than one goroutine or a few kilobytes per connection, stream or agent.
const (
	leakGoroutines = 50
	leakHeap       = 32 << 20
	goroutineHeap  = 1 << 10
)

// loadSpec sizes a load run.
type loadSpec struct {
	// agents are registered; callers of them call at once, each with its own
	// SVID, mutual-TLS connection and revocation stream.
	agents, callers int
	// excess is how many requests past its burst a caller fires at once in
	// a round.
	excess int
	// duration is how long callers repeat their rounds; zero: one round.
	duration time.Duration
}

func TestLoad(t *testing.T) {
	runLoad(t, loadSpec{agents: 10_000, callers: 1_000, excess: 1})
}

// TestSoak is TestLoad with more agents and callers, calling for
// ATF_SOAK_DURATION (default 10m).
func TestSoak(t *testing.T) {
	if os.Getenv("ATF_SOAK") != "1" {
		t.Skip("soak test: minutes of load on the dev stack; run it with ATF_SOAK=1 (make soak)")
	}
	d := 10 * time.Minute
	if v := os.Getenv("ATF_SOAK_DURATION"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("ATF_SOAK_DURATION: %v", err)
		}
	}
	runLoad(t, loadSpec{agents: 50_000, callers: 2_000, excess: 2, duration: d})
}

// runLoad registers spec.agents and has spec.callers of them fetch
// credentials at once, through the real Vault, each holding a revocation
// stream open. A caller's round fires its burst and spec.excess more
// requests at once; between rounds it waits what RetryInfo said. Midway,
// an admin revokes the lineage of one caller, which has delegated to
// another.
//
// It checks that no agent got more credentials than its bucket allows and
// that every refusal was the rate limit's, with a RetryInfo of at most one
// token's time; that the revocation reached the two callers' streams with
// exactly the credentials and the grant revoked, and Vault, and no other
// stream, and that no stream ended early; and that goroutines and heap
// come back to where they were once everything is closed.
func runLoad(t *testing.T, spec loadSpec) {
	f := brokertest.Setup(t)
	start := time.Now()
	goroutines, heap := runtime.NumGoroutine(), liveHeap()
	var peakG int
	var peakHeap uint64
	// Everything the run makes belongs to the subtest, whose cleanups (the
	// broker's Stop among them) have run when it returns.
	t.Run("run", func(t *testing.T) {
		r := newLoadRun(t, f, spec)
		r.run(t)
		peakG, peakHeap = r.peakG, r.peakHeap
	})
	// Connections and streams wind down asynchronously after Close.
	deadline := time.Now().Add(30 * time.Second)
	for runtime.NumGoroutine() > goroutines+leakGoroutines && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	after, afterHeap := runtime.NumGoroutine(), liveHeap()
	t.Logf("goroutines: %d before, %d at the peak, %d after; heap: %s live before, %s at the peak, %s live after; %s in all",
		goroutines, peakG, after, mib(heap), mib(peakHeap), mib(afterHeap), time.Since(start).Round(time.Millisecond))
	if after > goroutines+leakGoroutines {
		var dump strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&dump, 1)
		t.Errorf("%d goroutines after the run, %d before: leaked\n%s", after, goroutines, dump.String())
	}
	if bound := heap + leakHeap + uint64(peakG)*goroutineHeap; afterHeap > bound {
		t.Errorf("live heap %s after the run, %s before (%s allowed): leaked", mib(afterHeap), mib(heap), mib(bound))
	}
}

// loadRun is one run of runLoad.
type loadRun struct {
	spec    loadSpec
	f       *brokertest.Fixture
	b       *brokertest.Broker
	admin   adminv1.AdminServiceClient
	callers []*loadCaller
	// root has delegated to delegatee under grant; root's lineage is the
	// one revoked.
	root, delegatee *loadCaller
	grant           string
	grantCred       *brokerv1.Credential
	// heard is what the revocation's streams must hear.
	heard    map[*loadCaller]*brokerv1.WatchRevocationsResponse
	peakG    int
	peakHeap uint64
}

// loadCaller is one calling agent. The counts are guarded by mu; the
// stream's fields are written by its goroutine and read once it has ended.
type loadCaller struct {
	id   spiffeid.ID
	cert tls.Certificate
	conn *grpc.ClientConn
	bc   brokerv1.BrokerServiceClient

	mu sync.Mutex
	// first is when its first request left, last when its last answer came.
	first, last     time.Time
	issued, limited int
	latIssued       []time.Duration
	latLimited      []time.Duration
	// creds keeps what it was issued, for the revocation's parties only.
	keep  bool
	creds []*brokerv1.Credential

	cancelStream context.CancelFunc
	events       []*brokerv1.WatchRevocationsResponse
	streamErr    error
	heard        chan struct{} // closed at the first event, heardAt
	heardAt      time.Time
	ended        chan struct{} // closed when the stream ends
}

// newLoadRun registers the agents, starts the broker, connects the callers
// with their streams open and sets up the delegation.
func newLoadRun(t *testing.T, f *brokertest.Fixture, spec loadSpec) *loadRun {
	ctx := t.Context()
	adv := attesttest.New(t, "load.test")
	dir := t.TempDir()
	cfg := advConfig(t, f, adv, dir)
	rate := config.RateLimit{Burst: loadBurst, PerSecond: loadPerSecond}
	cfg.Limits.Rate = map[string]config.RateLimit{"intern": rate, "junior": rate, "senior": rate, "principal": rate}
	// The broker sends Vault every issuance at once, and the dev stack's
	// Vault shares two cores with a thousand callers under -race: calls
	// queue there for seconds, which the fixture's 2 s would count as an
	// outage (and open the breaker).
	cfg.Vault.Timeout = 30 * time.Second
	// Every caller connects from loopback: one IP address holds them all.
	cfg.Limits.MaxConnectionsPerIP = spec.callers + 16
	// The fixture's open policy, for the load trust domain too.
	pol, err := os.OpenFile(cfg.Policy.PolicyFile, os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = fmt.Fprintf(pol, "g, %s/*, group:all\n", adv.TD.IDString())
		err = errors.Join(err, pol.Close())
	}
	if err != nil {
		t.Fatal(err)
	}
	r := &loadRun{spec: spec, f: f, callers: make([]*loadCaller, spec.callers)}
	ids := make([]spiffeid.ID, spec.agents)
	for i := range ids {
		ids[i] = spiffeid.RequireFromSegments(adv.TD, "agents", fmt.Sprintf("a%06d", i))
	}
	// Callers are spread over the registry; the first is the root.
	callerAt := func(k int) int { return k * spec.agents / spec.callers }

	// Errors only: the callers' request logs would cost more than the
	// requests.
	r.b = f.StartWith(t, cfg, broker.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))))
	r.admin = r.b.Dial(t, f.Admin).Admin
	// Registrations share the store's commits when they come together.
	start := time.Now()
	if _, err := parallel(ctx, spec.agents, 64, func(ctx context.Context, i int) error {
		_, err := r.admin.RegisterAgent(ctx, &adminv1.RegisterAgentRequest{SpiffeId: ids[i].String(), Owner: "load@example.org",
			Purpose: "load test", Roles: []string{loadRole}})
		return err
	}); err != nil {
		t.Fatalf("register: %v", err)
	}
	r.b.Place(t, ids[callerAt(0)], brokerv1.Level_LEVEL_SENIOR) // may delegate
	registered := time.Since(start)

	start = time.Now()
	for k := range r.callers {
		id := ids[callerAt(k)]
		r.callers[k] = &loadCaller{id: id, cert: adv.X509(t, id).TLS(), heard: make(chan struct{}), ended: make(chan struct{})}
	}
	minted := time.Since(start)

	start = time.Now()
	base := clientTLS(t, r.b)
	for _, c := range r.callers {
		tc := base.Clone()
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c.cert, nil }
		if c.conn, err = grpc.NewClient(r.b.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tc))); err != nil {
			t.Fatal(err)
		}
		c.bc = brokerv1.NewBrokerServiceClient(c.conn)
	}
	// Closing twice is harmless: finish closes them first, when all goes well.
	t.Cleanup(func() {
		for _, c := range r.callers {
			if c.conn != nil {
				c.conn.Close()
			}
		}
	})
	// Opening the streams makes the TLS handshakes.
	if _, err := parallel(ctx, len(r.callers), 32, func(_ context.Context, k int) error {
		return r.callers[k].watch()
	}); err != nil {
		t.Fatalf("open revocation streams: %v", err)
	}
	t.Logf("%d agents registered in %s (AdminService, 64 calls at a time); %d callers' SVIDs minted in %s; "+
		"their %d connections and revocation streams open in %s",
		spec.agents, registered.Round(time.Millisecond), spec.callers, minted.Round(time.Millisecond),
		spec.callers, time.Since(start).Round(time.Millisecond))

	// The root delegates to the second caller, which fetches under the grant
	// (from its own bucket).
	r.root, r.delegatee = r.callers[0], r.callers[1]
	r.root.keep, r.delegatee.keep = true, true
	g, err := r.root.bc.Delegate(ctx, &brokerv1.DelegateRequest{Delegatee: r.delegatee.id.String(), Roles: []string{loadRole}, Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatalf("delegate: %v", err)
	}
	r.grant = g.GetGrant().GetId()
	if r.grantCred, _, err = r.delegatee.fetch(ctx, r.grant); r.grantCred == nil {
		t.Fatalf("fetch under the grant: %v, or rate-limited", err)
	}
	return r
}

// watch opens the caller's revocation stream and follows it until it ends.
func (c *loadCaller) watch() error {
	ctx, cancel := context.WithCancel(context.Background())
	c.cancelStream = cancel
	st, err := c.bc.WatchRevocations(ctx, &brokerv1.WatchRevocationsRequest{})
	if err == nil {
		_, err = st.Header() // the watch is in place
	}
	if err != nil {
		cancel()
		close(c.ended)
		return fmt.Errorf("%s: %w", c.id, err)
	}
	go func() {
		defer close(c.ended)
		for {
			ev, err := st.Recv()
			if err != nil {
				c.streamErr = err
				return
			}
			if c.events = append(c.events, ev); len(c.events) == 1 {
				c.heardAt = time.Now()
				close(c.heard)
			}
		}
	}()
	return nil
}

// fetch asks for a credential, under grant if set, and counts the answer:
// a credential, or a rate-limit refusal saying how long to wait, or an
// error for anything else.
func (c *loadCaller) fetch(ctx context.Context, grant string) (*brokerv1.Credential, time.Duration, error) {
	start := time.Now()
	resp, err := c.bc.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: loadRole, GrantId: grant, Ttl: durationpb.New(loadTTL)})
	end := time.Now()
	var wait time.Duration
	if err != nil {
		if wait, err = rateLimited(err); err != nil {
			return nil, 0, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.first.IsZero() || start.Before(c.first) {
		c.first = start
	}
	if end.After(c.last) {
		c.last = end
	}
	if wait > 0 {
		c.limited++
		c.latLimited = append(c.latLimited, end.Sub(start))
		return nil, wait, nil
	}
	c.issued++
	c.latIssued = append(c.latIssued, end.Sub(start))
	if c.keep {
		c.creds = append(c.creds, resp.GetCredential())
	}
	return resp.GetCredential(), 0, nil
}

// round fires the caller's burst and excess more requests at once, and
// returns the longest RetryInfo of their refusals.
func (c *loadCaller) round(ctx context.Context, excess int) (time.Duration, error) {
	waits, errs := make([]time.Duration, loadBurst+excess), make([]error, loadBurst+excess)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() { _, waits[i], errs[i] = c.fetch(ctx, "") })
	}
	wg.Wait()
	return slices.Max(waits), errors.Join(errs...)
}

// rateLimited returns the RetryInfo delay of a rate-limit refusal, or says
// why err is none.
func rateLimited(err error) (time.Duration, error) {
	quota, retry := limitDetails(err)
	if status.Code(err) != codes.ResourceExhausted || len(quota.GetViolations()) != 1 || quota.GetViolations()[0].GetSubject() != "rate" || retry == nil {
		return 0, fmt.Errorf("want a rate-limit refusal with RetryInfo, got %w", err)
	}
	// At most the time one token takes to come back.
	if d := retry.GetRetryDelay().AsDuration(); d > 0 && d <= time.Duration(float64(time.Second)/loadPerSecond) {
		return d, nil
	}
	return 0, fmt.Errorf("RetryInfo %s, want within one token's time: %w", retry.GetRetryDelay().AsDuration(), err)
}

// run runs the callers' rounds and revokes the root's lineage once half of
// them have finished their first, then checks and reports.
func (r *loadRun) run(t *testing.T) {
	ctx := t.Context()
	var errs loadErrors
	half, rootFirst, revoked := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var firsts atomic.Int64
	revokedOnce := sync.OnceFunc(func() { close(revoked) })
	defer revokedOnce() // lets the root finish if the revocation fails
	stopSampling := r.sample()
	defer stopSampling()
	start := time.Now()
	var wg sync.WaitGroup
	for k, c := range r.callers {
		wg.Go(func() {
			firstDone := sync.OnceFunc(func() {
				if k == 0 {
					close(rootFirst)
				}
				if int(firsts.Add(1)) == max(len(r.callers)/2, 1) {
					close(half)
				}
			})
			defer firstDone()
			until := start.Add(r.spec.duration)
			for {
				wait, err := c.round(ctx, r.spec.excess)
				if err != nil {
					errs.add(c.id, err)
					return
				}
				firstDone()
				if c == r.root {
					<-revoked // its credentials so far are the ones to be revoked
				}
				if !time.Now().Add(wait).Before(until) {
					return
				}
				// As a client should: back off as long as it was told.
				select {
				case <-time.After(wait):
				case <-ctx.Done():
					return
				}
			}
		})
	}
	<-half
	<-rootFirst
	r.revoke(t)
	revokedOnce()
	wg.Wait()
	wall := time.Since(start)
	stopSampling()
	errs.report(t)

	// No agent got more than its bucket allows over its calls: its burst and
	// what refilled between its first request and its last answer.
	var issued, limited int
	var latIssued, latLimited []time.Duration
	for _, c := range r.callers {
		issued, limited = issued+c.issued, limited+c.limited
		latIssued, latLimited = append(latIssued, c.latIssued...), append(latLimited, c.latLimited...)
		if allowed := loadBurst + int(loadPerSecond*c.last.Sub(c.first).Seconds()); c.issued > allowed {
			t.Errorf("%s was issued %d credentials in %s; its bucket allows %d", c.id, c.issued, c.last.Sub(c.first), allowed)
		}
	}
	all := slices.Concat(latIssued, latLimited)
	for _, l := range [][]time.Duration{latIssued, latLimited, all} {
		slices.Sort(l)
	}
	t.Logf("%d requests from %d callers in %s: %d issued, %d rate-limited; FetchCredential p50/p99: issued %s/%s, limited %s/%s, all %s/%s",
		len(all), len(r.callers), wall.Round(time.Millisecond), issued, limited,
		pct(latIssued, 0.5), pct(latIssued, 0.99), pct(latLimited, 0.5), pct(latLimited, 0.99), pct(all, 0.5), pct(all, 0.99))
	r.finish(t)
}

// revoke revokes the root's lineage as the admin and waits for its two
// streams to hear.
func (r *loadRun) revoke(t *testing.T) {
	t.Helper()
	start := time.Now()
	resp, err := r.admin.RevokeLineage(t.Context(), &adminv1.RevokeLineageRequest{Root: &adminv1.RevokeLineageRequest_AgentId{AgentId: r.root.id.String()}, Reason: "load test"})
	if err != nil {
		t.Errorf("revoke lineage: %v", err)
		return
	}
	answered := time.Since(start)
	// The root waits for the revocation: its credentials so far are the
	// ones revoked.
	r.root.mu.Lock()
	revoked := append(slices.Clone(r.root.creds), r.grantCred)
	r.root.mu.Unlock()
	r.heard = map[*loadCaller]*brokerv1.WatchRevocationsResponse{
		r.root:      {Accessors: accessorsOf(revoked[:len(revoked)-1])},
		r.delegatee: {GrantIds: []string{r.grant}, Accessors: []string{r.grantCred.GetAccessor()}},
	}
	sum := resp.GetSummary()
	if sum.GetGrantsRevoked() != 1 || int(sum.GetCredentialsRevoked()) != len(revoked) || sum.GetVaultPending() != 0 {
		t.Errorf("revocation summary %v, want 1 grant and %d credentials, none pending in Vault", sum, len(revoked))
	}
	var heard [2]time.Duration
	for i, c := range []*loadCaller{r.root, r.delegatee} {
		select {
		case <-c.heard:
			heard[i] = c.heardAt.Sub(start)
		case <-time.After(30 * time.Second):
			t.Errorf("%s's revocation stream heard nothing", c.id)
			return
		}
	}
	t.Logf("revocation of one lineage (%d credentials, 1 grant) among %d streams: heard by its two streams after %s and %s, "+
		"answered after %s (store commit %s, broker total %s)",
		sum.GetCredentialsRevoked(), len(r.callers), heard[0].Round(time.Millisecond), heard[1].Round(time.Millisecond),
		answered.Round(time.Millisecond), sum.GetCommitDuration().AsDuration().Round(time.Millisecond), sum.GetTotalDuration().AsDuration().Round(time.Millisecond))
	// Vault confirmed before the answer.
	for _, cr := range revoked {
		if !r.f.Dead(t, cr.GetToken()) {
			t.Errorf("credential %s of the revoked lineage is alive in Vault", cr.GetAccessor())
		}
	}
}

// finish closes the streams, the connections and the broker, and checks
// what each stream heard: the root its credentials, the delegatee the
// grant and the one credential under it, the others nothing.
func (r *loadRun) finish(t *testing.T) {
	// The delegatee's own credentials, outside the grant, are untouched.
	if cr := r.delegatee.creds[len(r.delegatee.creds)-1]; cr.GetGrantId() != "" || r.f.Dead(t, cr.GetToken()) {
		t.Errorf("the delegatee's last credential (grant %q) is dead in Vault", cr.GetGrantId())
	}
	for _, c := range r.callers {
		c.cancelStream()
		<-c.ended
		c.conn.Close()
	}
	r.b.Stop()

	heard := 0
	for _, c := range r.callers {
		if status.Code(c.streamErr) != codes.Canceled {
			t.Errorf("%s's revocation stream ended early: %v", c.id, c.streamErr)
		}
		w, ok := r.heard[c]
		if !ok {
			heard += len(c.events)
			continue
		}
		if len(c.events) != 1 || !sameSet(c.events[0].GetAccessors(), w.GetAccessors()) || !sameSet(c.events[0].GetGrantIds(), w.GetGrantIds()) {
			t.Errorf("%s heard %v, want one event revoking grants %v and credentials %v", c.id, c.events, w.GetGrantIds(), w.GetAccessors())
		}
	}
	if heard > 0 {
		t.Errorf("streams outside the revoked lineage heard %d events", heard)
	}
}

// sample records the peak goroutines and heap until stopped; stop returns
// once they are recorded.
func (r *loadRun) sample() (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			r.peakG, r.peakHeap = max(r.peakG, runtime.NumGoroutine()), max(r.peakHeap, m.HeapAlloc)
			select {
			case <-tick.C:
			case <-quit:
				return
			}
		}
	}()
	return sync.OnceFunc(func() {
		close(quit)
		<-done
	})
}

// loadErrors collects the callers' failures, reporting a few.
type loadErrors struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (e *loadErrors) add(id spiffeid.ID, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n++; len(e.first) < 5 {
		e.first = append(e.first, fmt.Sprintf("%s: %v", id, err))
	}
}

func (e *loadErrors) report(t *testing.T) {
	t.Helper()
	if e.n > 0 {
		t.Errorf("%d callers failed, first:\n%s", e.n, strings.Join(e.first, "\n"))
	}
}

func sameSet(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

// pct is percentile, rounded for a report; 0 for no samples.
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return percentile(sorted, p).Round(10 * time.Microsecond)
}

// liveHeap is the heap in use after two collections (sync.Pools keep
// what they hold through one).
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
