package console

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Tokens that no key verifies fetch the provider's key set again at most
// once per refetchEvery, whoever sends them; a key the provider rotated
// in is fetched at the first token of it after that.
func TestKeySetRefetchBounded(t *testing.T) {
	newKey := func(kid string) (*ecdsa.PrivateKey, jose.JSONWebKey) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k, jose.JSONWebKey{Key: &k.PublicKey, KeyID: kid, Algorithm: "ES256", Use: "sig"}
	}
	k1, j1 := newKey("one")
	k2, j2 := newKey("two")
	var fetches atomic.Int32
	published := atomic.Value{}
	published.Store(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{j1}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		_ = json.NewEncoder(w).Encode(published.Load())
	}))
	defer srv.Close()
	start := time.Now()
	var offset atomic.Int64
	ks := &keySet{url: srv.URL, hc: srv.Client(), now: func() time.Time { return start.Add(time.Duration(offset.Load())) }}
	sign := func(k *ecdsa.PrivateKey, kid string) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithHeader("kid", kid))
		if err != nil {
			t.Fatal(err)
		}
		jws, err := s.Sign([]byte(`{"iss":"https://op.example"}`))
		if err != nil {
			t.Fatal(err)
		}
		c, _ := jws.CompactSerialize()
		return c
	}
	if _, err := ks.VerifySignature(t.Context(), sign(k1, "one")); err != nil || fetches.Load() != 1 {
		t.Fatalf("a token of the published key: %v, %d fetches; want verified, 1 fetch", err, fetches.Load())
	}
	forger, _ := newKey("one")
	for range 50 {
		if _, err := ks.VerifySignature(t.Context(), sign(forger, "one")); err == nil {
			t.Fatal("a forged token verified")
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("50 forged tokens fetched the key set %d times in all; want none within %s of the last fetch", n, refetchEvery)
	}
	// The provider rotates to a second key: its tokens verify once the
	// interval has passed.
	published.Store(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{j1, j2}})
	if _, err := ks.VerifySignature(t.Context(), sign(k2, "two")); err == nil {
		t.Fatal("a token of a key not fetched yet verified within the interval")
	}
	offset.Add(int64(refetchEvery + time.Second))
	if _, err := ks.VerifySignature(t.Context(), sign(k2, "two")); err != nil || fetches.Load() != 2 {
		t.Fatalf("a token of the rotated key after the interval: %v, %d fetches", err, fetches.Load())
	}
}

// A fetch is the provider's business alone: a caller that gives up at
// once cancels nothing (so nobody can lock people out by cancelling), the
// callers at the same moment share one fetch, and a fetch that failed may
// be tried again after retryFetchAfter, not refetchEvery.
func TestKeySetFetchShared(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var fetches atomic.Int32
	var down atomic.Bool
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		<-release
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "k", Algorithm: "ES256", Use: "sig"}}})
	}))
	defer srv.Close()
	start := time.Now()
	var offset atomic.Int64
	ks := &keySet{url: srv.URL, hc: srv.Client(), now: func() time.Time { return start.Add(time.Duration(offset.Load())) }}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, nil)
	if err != nil {
		t.Fatal(err)
	}
	jws, _ := signer.Sign([]byte(`{}`))
	token, _ := jws.CompactSerialize()

	gone, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := ks.VerifySignature(gone, token); err == nil {
		t.Fatal("a caller that gave up was answered")
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := ks.VerifySignature(t.Context(), token)
			errs <- err
		})
	}
	time.Sleep(50 * time.Millisecond) // all waiting on the fetch the first caller started
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a caller waiting on the shared fetch: %v", err)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches; want the one the cancelled caller started, shared", n)
	}

	// The provider goes down and rotates: a failed fetch may be tried again
	// after retryFetchAfter.
	down.Store(true)
	offset.Add(int64(refetchEvery + time.Second))
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s2, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: other}, nil)
	jws2, _ := s2.Sign([]byte(`{}`))
	unknown, _ := jws2.CompactSerialize()
	if _, err := ks.VerifySignature(t.Context(), unknown); err == nil || fetches.Load() != 2 {
		t.Fatalf("a token of an unknown key with the provider down: %v, %d fetches", err, fetches.Load())
	}
	if _, err := ks.VerifySignature(t.Context(), unknown); err == nil || fetches.Load() != 2 {
		t.Fatalf("right after a failed fetch: %v, %d fetches; want refused without a fetch", err, fetches.Load())
	}
	down.Store(false)
	offset.Add(int64(retryFetchAfter + time.Millisecond))
	if _, err := ks.VerifySignature(t.Context(), token); err != nil {
		t.Fatalf("a token of the known key, provider back: %v", err)
	}
	if _, err := ks.VerifySignature(t.Context(), unknown); err == nil || fetches.Load() != 3 {
		t.Fatalf("an unknown key after retryFetchAfter: %v, %d fetches; want one more fetch, still refused", err, fetches.Load())
	}
}
