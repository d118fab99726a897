package vault_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/breaker"
	"github.com/agentictrust/atf/broker/vault"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
)

// clock stands still until the test moves it.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// The breaker against the real Vault, behind a proxy that answers 503 or
// late: failures further apart than the window, or with an answer between
// them, do not open it; failures in a row do, and then credentials and
// anchors fail fast without reaching Vault while revocations still go;
// after open_for one probe goes, and Vault's answer closes it.
func TestIssuerBreaker(t *testing.T) {
	const (
		timeout = 10 * time.Second
		openFor = 10 * time.Second
		create  = "/v1/auth/token/create/"
		revoke  = "/v1/auth/token/revoke-accessor"
	)
	s := devtest.Shared(t)
	proxy := brokertest.NewFaultProxy(t, strings.TrimPrefix(s.VaultAddr, "http://"))
	tok, err := s.BrokerVaultToken(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{now: time.Now()}
	is, err := vault.New(t.Context(), vault.Config{Address: proxy.URL(), Token: tok, Timeout: timeout, Now: clk.Now,
		Breaker: breaker.Config{Failures: 2, Window: time.Minute, OpenFor: openFor}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(is.Close)
	issue := func() error {
		_, err := is.Issue(t.Context(), vault.Request{Policies: []string{"demo-reports-read"}, TTL: time.Minute})
		return err
	}
	wantUnavailable := func(what string) {
		t.Helper()
		var open *vault.BreakerOpenError
		if err := issue(); !errors.Is(err, vault.ErrUnavailable) || errors.As(err, &open) {
			t.Fatalf("%s: %v, want ErrUnavailable from Vault", what, err)
		}
	}
	wantOpen := func(err error, retryAt time.Time) {
		t.Helper()
		var open *vault.BreakerOpenError
		if !errors.As(err, &open) || !errors.Is(err, vault.ErrUnavailable) || !open.RetryAt.Equal(retryAt) {
			t.Fatalf("got %v, want a BreakerOpenError (ErrUnavailable) retrying at %s", err, retryAt)
		}
	}

	// 1. Failures that are not in a row within the window leave it closed.
	proxy.Fail(503)
	wantUnavailable("first failure")
	clk.Advance(2 * time.Minute)
	wantUnavailable("a failure past the window")
	proxy.Fail(0)
	if _, err := is.Issue(t.Context(), vault.Request{Policies: []string{"root"}, TTL: time.Minute}); !errors.Is(err, vault.ErrRejected) {
		t.Fatalf("issuing root: %v, want ErrRejected", err)
	}
	proxy.Fail(503)
	wantUnavailable("a failure after an answer")
	if is.Stats().BreakerOpen {
		t.Fatal("the breaker opened on failures that were not in a row within the window")
	}

	// 2. A second failure in a row opens it: issuance fails fast and Vault
	// hears nothing, but revocations still reach it.
	wantUnavailable("second failure in a row")
	reached := proxy.Requests(create)
	retryAt := clk.Now().Add(openFor)
	wantOpen(issue(), retryAt)
	_, err = is.CreateAnchor(t.Context(), nil, "spiffe://atf.test/breaker", time.Hour, nil)
	wantOpen(err, retryAt)
	if n := proxy.Requests(create); n != reached {
		t.Errorf("%d creations reached Vault with the breaker open", n-reached)
	}
	revokes := proxy.Requests(revoke)
	if err := is.Revoke(t.Context(), "no-such-accessor"); !errors.Is(err, vault.ErrUnavailable) || proxy.Requests(revoke) != revokes+1 {
		t.Errorf("revoking with the breaker open: %v, %d requests; want Vault's 503, 1 request", err, proxy.Requests(revoke)-revokes)
	}
	if st := is.Stats(); !st.BreakerOpen || st.BreakerTrips != 1 {
		t.Errorf("stats = %+v, want open after 1 trip", st)
	}

	// 3. After open_for, one call probes (Vault answers it late); others
	// fail fast meanwhile, told to retry once the probe has had its time.
	proxy.Fail(0)
	proxy.Delay(3 * time.Second)
	clk.Advance(openFor)
	probe := make(chan error, 1)
	go func() { probe <- issue() }()
	devtest.WaitFor(t, 10*time.Second, "the probe to reach Vault", func() bool { return proxy.Requests(create) == reached+1 })
	wantOpen(issue(), clk.Now().Add(timeout))
	if err := <-probe; err != nil {
		t.Fatalf("probe: %v", err)
	}

	// 4. Vault answered: closed.
	proxy.Delay(0)
	if err := issue(); err != nil {
		t.Fatalf("issue with the breaker closed: %v", err)
	}
	if st := is.Stats(); st.BreakerOpen || st.BreakerTrips != 1 || proxy.Requests(create) != reached+2 {
		t.Errorf("stats = %+v, %d creations after opening; want closed after 1 trip, 2", st, proxy.Requests(create)-reached)
	}
}
