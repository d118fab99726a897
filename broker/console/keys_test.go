package console

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
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
	now := time.Now()
	ks := &keySet{url: srv.URL, hc: srv.Client(), now: func() time.Time { return now }}
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
	now = now.Add(refetchEvery + time.Second)
	if _, err := ks.VerifySignature(t.Context(), sign(k2, "two")); err != nil || fetches.Load() != 2 {
		t.Fatalf("a token of the rotated key after the interval: %v, %d fetches", err, fetches.Load())
	}
}
