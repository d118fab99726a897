package verify_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/oauth/verify"
	"github.com/agentictrust/atf/oauth/verify/verifytest"
)

// subscribe runs v.Subscribe until the test ends and returns the
// Last-Event-ID of its first connection.
func subscribe(t *testing.T, is *verifytest.Issuer, v *verify.Verifier) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Subscribe(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Subscribe = %v, want context.Canceled", err)
		}
	})
	return is.NextConnect(t)
}

// waitFor polls cond until it holds, for up to 5 s.
func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: still %v after 5 s", what, err)
}

func isStatus(err error, want error) error {
	if !errors.Is(err, want) {
		return fmt.Errorf("err %v, want %v", err, want)
	}
	return nil
}

// toolServer is a resource server behind the middleware.
func toolServer(t *testing.T, v *verify.Verifier) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(v.Middleware("tools.call")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := verify.ClaimsFrom(r.Context())
		fmt.Fprintf(w, "hello %s, depth %d", c.Subject, c.Depth())
	})))
	t.Cleanup(srv.Close)
	return srv
}

func call(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate")
}

func TestPushRevocationRefusesNextRequest(t *testing.T) {
	for _, tt := range []struct {
		name  string
		event func(jti string) map[string]any
	}{
		{"jti", func(jti string) map[string]any { return map[string]any{"jtis": []string{jti}} }},
		{"lineage node", func(string) map[string]any { return map[string]any{"nodes": []string{"grant:g-ab"}} }},
		{"agent", func(string) map[string]any { return map[string]any{"agents": []string{agentC}} }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			is := verifytest.NewIssuer(t)
			applied := make(chan verify.Revocation, 1)
			v := newVerifier(t, is, func(c *verify.Config) {
				c.Push = &verify.Push{OnRevoked: func(r verify.Revocation) { applied <- r }}
			})
			srv := toolServer(t, v)
			if id := subscribe(t, is, v); id != "" {
				t.Errorf("first subscription sent Last-Event-ID %q", id)
			}
			token := is.MintAfter(2*time.Second, tok{JTI: "j-revoked", Act: []string{agentB, agentA}})
			other := is.MintAfter(2*time.Second, tok{JTI: "j-other", Sub: agentB, Lineage: []string{"agent:" + agentB}})
			waitFor(t, "token accepted once subscribed", func() error {
				if code, _ := call(t, srv.URL, token); code != http.StatusOK {
					return fmt.Errorf("status %d", code)
				}
				return nil
			})
			ev := tt.event("j-revoked")
			ev["reason"], ev["time"] = "test", time.Now().Add(3*time.Second).Format(time.RFC3339Nano)
			is.Send("revoked", "1", ev)
			r := <-applied
			if r.Reason != "test" || r.Received.IsZero() {
				t.Errorf("OnRevoked got %+v", r)
			}
			code, www := call(t, srv.URL, token)
			if code != http.StatusUnauthorized || www != `Bearer error="invalid_token", error_description="verify: invalid token: revoked", scope="tools.call"` {
				t.Errorf("revoked token: %d %s", code, www)
			}
			if code, _ := call(t, srv.URL, other); code != http.StatusOK {
				t.Errorf("unrelated token: %d", code)
			}
			// A token from a decision after the revocation is not refused
			// for the agent or the node; a revoked jti stays revoked.
			later := is.MintAfter(5*time.Second, tok{JTI: "j-later", Act: []string{agentB, agentA}})
			if code, _ := call(t, srv.URL, later); code != http.StatusOK {
				t.Errorf("token issued after the revocation: %d", code)
			}
		})
	}
}

func TestPushResetFailsClosed(t *testing.T) {
	is := verifytest.NewIssuer(t)
	v := newVerifier(t, is, func(c *verify.Config) { c.Push = &verify.Push{} })
	srv := toolServer(t, v)
	// Before any subscription, nothing is known: refuse.
	before := is.MintAfter(2*time.Second, tok{})
	if _, err := v.Verify(context.Background(), before); !errors.Is(err, verify.ErrRevocationUnknown) {
		t.Fatalf("before subscribing: %v", err)
	}
	subscribe(t, is, v)
	waitFor(t, "accepted once subscribed", func() error {
		_, err := v.Verify(context.Background(), before)
		return err
	})
	is.Send("reset", "2", map[string]any{"time": time.Now().Add(3 * time.Second).Format(time.RFC3339Nano)})
	waitFor(t, "refused after reset", func() error {
		_, err := v.Verify(context.Background(), before)
		return isStatus(err, verify.ErrRevocationUnknown)
	})
	code, _ := call(t, srv.URL, before)
	if code != http.StatusServiceUnavailable {
		t.Errorf("middleware after reset: %d, want 503", code)
	}
	if _, err := v.Verify(context.Background(), is.MintAfter(5*time.Second, tok{})); err != nil {
		t.Errorf("token issued after the reset: %v", err)
	}
}

func TestPushResetFallsBackToIntrospection(t *testing.T) {
	is := verifytest.NewIssuer(t)
	v := newVerifier(t, is, func(c *verify.Config) {
		c.Push = &verify.Push{IntrospectionURL: is.URL() + "/oauth2/introspect"}
	})
	good := is.MintAfter(2*time.Second, tok{JTI: "j-good"})
	bad := is.MintAfter(2*time.Second, tok{JTI: "j-bad"})
	keep := is.MintAfter(2*time.Second, tok{JTI: "j-keep"})
	is.SetActive(func(token string) bool { return token == good || token == keep })
	subscribe(t, is, v)
	is.Send("reset", "3", map[string]any{"time": time.Now().Add(3 * time.Second).Format(time.RFC3339Nano)})
	waitFor(t, "bad token refused by introspection", func() error {
		_, err := v.Verify(context.Background(), bad)
		if err == nil || !strings.Contains(err.Error(), "not active (introspection)") {
			return fmt.Errorf("err %v", err)
		}
		return nil
	})
	for _, token := range []string{good, keep} {
		if _, err := v.Verify(context.Background(), token); err != nil {
			t.Errorf("active token: %v", err)
		}
	}
	// Found active while the stream is up, the good token is not
	// introspected again: a later revocation comes by the stream.
	n := is.Introspections()
	if _, err := v.Verify(context.Background(), good); err != nil || is.Introspections() != n {
		t.Errorf("good token again: %v, %d introspections, want %d", err, is.Introspections(), n)
	}
	is.Send("revoked", "4", map[string]any{"jtis": []string{"j-good"}})
	waitFor(t, "good token revoked by the stream", func() error {
		_, err := v.Verify(context.Background(), good)
		return isStatus(err, verify.ErrInvalidToken)
	})
	// A new reset makes a cleared token suspect again: introspected, and
	// the issuer now says it is not active.
	is.SetActive(func(string) bool { return false })
	is.Send("reset", "5", map[string]any{"time": time.Now().Add(3 * time.Second).Format(time.RFC3339Nano)})
	waitFor(t, "cleared token introspected again after the second reset", func() error {
		_, err := v.Verify(context.Background(), keep)
		if err == nil || !strings.Contains(err.Error(), "not active (introspection)") {
			return fmt.Errorf("err %v", err)
		}
		return nil
	})
}

func TestPushStreamDownFailsClosedThenResumes(t *testing.T) {
	is := verifytest.NewIssuer(t)
	v := newVerifier(t, is, func(c *verify.Config) { c.Push = &verify.Push{MaxSilence: 300 * time.Millisecond} })
	subscribe(t, is, v)
	token := is.MintAfter(2*time.Second, tok{})
	is.Send("ping", "7", map[string]any{})
	waitFor(t, "accepted", func() error { _, err := v.Verify(context.Background(), token); return err })
	// The issuer stops answering: the stream is dropped and refused.
	is.Refuse(true)
	is.DropStream()
	waitFor(t, "refused while the stream is down", func() error {
		_, err := v.Verify(context.Background(), token)
		return isStatus(err, verify.ErrRevocationUnknown)
	})
	// Back: the verifier resumes from the last event id, no reset needed.
	is.Refuse(false)
	if id := is.NextConnect(t); id != "7" {
		t.Errorf("resumed with Last-Event-ID %q, want 7", id)
	}
	waitFor(t, "accepted after resuming", func() error { _, err := v.Verify(context.Background(), token); return err })
}

// An event that cannot be read may be any revocation: it counts as a reset.
func TestPushUnreadableEventFailsClosed(t *testing.T) {
	is := verifytest.NewIssuer(t)
	v := newVerifier(t, is, func(c *verify.Config) { c.Push = &verify.Push{} })
	subscribe(t, is, v)
	token := is.MintAfter(2*time.Second, tok{})
	waitFor(t, "accepted", func() error { _, err := v.Verify(context.Background(), token); return err })
	is.Send("revoked", "4", "not an object")
	waitFor(t, "refused after an unreadable revocation", func() error {
		_, err := v.Verify(context.Background(), token)
		return isStatus(err, verify.ErrRevocationUnknown)
	})
}
