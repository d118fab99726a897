package verify_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/oauth/verify"
	"github.com/agentictrust/atf/oauth/verify/verifytest"
)

func TestUnknownKidRefetchesOnceThenRefuses(t *testing.T) {
	is := verifytest.NewIssuer(t)
	clk := verifytest.NewClock()
	v := newVerifier(t, is, func(c *verify.Config) { c.Now = clk.Now })
	ctx := context.Background()
	if _, err := v.Verify(ctx, is.Mint(tok{}, clk.Now())); err != nil {
		t.Fatal(err)
	}
	// A key published after the set was cached is found by one refetch,
	// once RefetchInterval has passed since the last fetch.
	is.AddKey("atf-oauth-2")
	if _, err := v.Verify(ctx, is.Mint(tok{Kid: "atf-oauth-2"}, clk.Now())); !errors.Is(err, verify.ErrInvalidToken) {
		t.Fatalf("new kid within the interval: %v", err)
	}
	clk.Add(verify.DefaultRefetchInterval)
	if _, err := v.Verify(ctx, is.Mint(tok{Kid: "atf-oauth-2"}, clk.Now())); err != nil {
		t.Fatalf("new kid: %v", err)
	}
	if n := is.JWKSFetches(); n != 2 {
		t.Fatalf("%d fetches, want 2 (first use, then the new kid)", n)
	}
	// A kid the issuer never published: one refetch, then refused, and
	// no other refetch within the interval.
	clk.Add(verify.DefaultRefetchInterval)
	for range 3 {
		_, err := v.Verify(ctx, is.Mint(tok{Kid: "never"}, clk.Now()))
		if !errors.Is(err, verify.ErrInvalidToken) || !strings.HasSuffix(err.Error(), "unknown kid") {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	if n := is.JWKSFetches(); n != 3 {
		t.Fatalf("%d fetches, want 3: one for the unknown kid", n)
	}
}

func TestForgedKidFloodIsRateLimited(t *testing.T) {
	is := verifytest.NewIssuer(t)
	clk := verifytest.NewClock()
	v := newVerifier(t, is, func(c *verify.Config) { c.Now = clk.Now })
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			_, err := v.Verify(ctx, is.Mint(tok{Kid: fmt.Sprintf("forged-%d", i)}, clk.Now()))
			if !errors.Is(err, verify.ErrInvalidToken) {
				t.Errorf("forged kid accepted: %v", err)
			}
		})
	}
	wg.Wait()
	if n := is.JWKSFetches(); n != 1 {
		t.Errorf("200 forged kids made %d fetches, want 1", n)
	}
	// Valid tokens still pass during the flood's interval.
	if _, err := v.Verify(ctx, is.Mint(tok{}, clk.Now())); err != nil {
		t.Errorf("valid token: %v", err)
	}
	clk.Add(verify.DefaultRefetchInterval)
	for i := range 50 {
		_, _ = v.Verify(ctx, is.Mint(tok{Kid: fmt.Sprintf("again-%d", i)}, clk.Now()))
	}
	if n := is.JWKSFetches(); n != 2 {
		t.Errorf("after one interval: %d fetches, want 2", n)
	}
}

func TestKeyRotation(t *testing.T) {
	is := verifytest.NewIssuer(t)
	clk := verifytest.NewClock()
	v := newVerifier(t, is, func(c *verify.Config) { c.Now = clk.Now })
	ctx := context.Background()
	old := is.Mint(tok{Iat: clk.Now(), Exp: clk.Now().Add(time.Hour)}, clk.Now())
	if _, err := v.Verify(ctx, old); err != nil {
		t.Fatal(err)
	}
	// Rotation with overlap: the new key is published, the old one stays.
	is.AddKey("atf-oauth-2")
	clk.Add(verify.DefaultRefetchInterval)
	fresh := is.Mint(tok{Kid: "atf-oauth-2", Iat: clk.Now(), Exp: clk.Now().Add(time.Hour)}, clk.Now())
	for name, token := range map[string]string{"old kid": old, "new kid": fresh} {
		if _, err := v.Verify(ctx, token); err != nil {
			t.Errorf("%s during the overlap: %v", name, err)
		}
	}
	// The old key is removed: once the cached set expires (max-age 300),
	// a token signed with it is refused.
	is.RemoveKey("atf-oauth-1")
	if _, err := v.Verify(ctx, old); err != nil {
		t.Errorf("old kid before the cache expires: %v", err)
	}
	clk.Add(301 * time.Second)
	if _, err := v.Verify(ctx, old); !errors.Is(err, verify.ErrInvalidToken) || !strings.HasSuffix(err.Error(), "unknown kid") {
		t.Errorf("removed kid after refresh: %v", err)
	}
	if _, err := v.Verify(ctx, fresh); err != nil {
		t.Errorf("new kid after refresh: %v", err)
	}
	// A kid reused for another key: a token verified before is refused.
	is.AddKey("atf-oauth-2")
	clk.Add(301 * time.Second)
	if _, err := v.Verify(ctx, fresh); !errors.Is(err, verify.ErrInvalidToken) || !strings.HasSuffix(err.Error(), "the key id names another key now") {
		t.Errorf("kid reused for another key: %v", err)
	}
}

func TestJWKSCacheControlBoundsAndStaleKeys(t *testing.T) {
	is := verifytest.NewIssuer(t)
	clk := verifytest.NewClock()
	v := newVerifier(t, is, func(c *verify.Config) { c.Now = clk.Now; c.KeysStaleFor = 10 * time.Minute })
	ctx := context.Background()
	is.SetCacheControl("no-store") // MinCacheTTL
	if _, err := v.Verify(ctx, is.Mint(tok{}, clk.Now())); err != nil {
		t.Fatal(err)
	}
	clk.Add(verify.MinCacheTTL - time.Second)
	_, _ = v.Verify(ctx, is.Mint(tok{}, clk.Now()))
	if n := is.JWKSFetches(); n != 1 {
		t.Fatalf("%d fetches within MinCacheTTL, want 1", n)
	}
	clk.Add(2 * time.Second)
	_, _ = v.Verify(ctx, is.Mint(tok{}, clk.Now()))
	if n := is.JWKSFetches(); n != 2 {
		t.Fatalf("%d fetches after MinCacheTTL, want 2", n)
	}
	// The issuer goes away: cached keys serve until KeysStaleFor past
	// their expiry, then tokens are refused.
	is.Close()
	clk.Add(verify.MinCacheTTL + time.Minute)
	if _, err := v.Verify(ctx, is.Mint(tok{}, clk.Now())); err != nil {
		t.Errorf("stale keys within KeysStaleFor: %v", err)
	}
	clk.Add(10 * time.Minute)
	_, err := v.Verify(ctx, is.Mint(tok{}, clk.Now()))
	if !errors.Is(err, verify.ErrInvalidToken) || !strings.Contains(err.Error(), "could not be refreshed for 10m0s") {
		t.Errorf("keys past KeysStaleFor: %v", err)
	}
}

// An issuer that stops answering its JWK Set does not hold up requests
// whose key is cached: once the set is past its max-age, each waits at
// most a second for the refresh, then is served from the stale set
// (within KeysStaleFor); a request that gives up does not cancel the
// refresh the others wait for.
func TestHangingJWKSDoesNotHoldUpRequests(t *testing.T) {
	is := verifytest.NewIssuer(t)
	clk := verifytest.NewClock()
	v := newVerifier(t, is, func(c *verify.Config) { c.Now = clk.Now; c.KeysStaleFor = 10 * time.Minute })
	if _, err := v.Verify(context.Background(), is.Mint(tok{}, clk.Now())); err != nil {
		t.Fatal(err)
	}
	release := is.HangJWKS()
	clk.Add(301 * time.Second) // past max-age 300
	start := time.Now()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := v.Verify(context.Background(), is.Mint(tok{}, clk.Now())); err != nil {
				t.Errorf("cached kid while the issuer hangs: %v", err)
			}
		})
	}
	wg.Wait()
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("20 requests took %s while the JWK Set hung, want about a second", took)
	}
	if n := is.JWKSFetches(); n != 2 {
		t.Errorf("%d fetches, want 2: the first and one refresh for all", n)
	}
	// A caller that gives up leaves the refresh running; once the issuer
	// answers, a removed key is refused.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _ = v.Verify(ctx, is.Mint(tok{}, clk.Now()))
	is.RemoveKey(verifytest.FirstKid)
	is.AddKey("atf-oauth-2")
	release()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := v.Verify(context.Background(), is.Mint(tok{}, clk.Now()))
		if err != nil && strings.HasSuffix(err.Error(), "unknown kid") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the removed key still verifies after the issuer answered: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
