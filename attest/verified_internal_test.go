package attest

import (
	"crypto/x509"
	"math/big"
	"testing"
	"time"

	"github.com/agentictrust/atf/attest/attesttest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// A remembered path is valid only while every certificate on it is (the
// latest NotBefore, the earliest NotAfter), and the memory stays bounded:
// expired chains go first, then others.
func TestVerifiedChainsWindowAndBound(t *testing.T) {
	now := time.Now()
	cert := func(serial int64, from, to time.Duration) *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(serial), Raw: big.NewInt(serial).Bytes(), NotBefore: now.Add(from), NotAfter: now.Add(to)}
	}
	leaf, mid, root := cert(1, -time.Hour, time.Hour), cert(2, -time.Minute, 10*time.Minute), cert(3, -24*time.Hour, 24*time.Hour)
	var v verifiedChains
	key := chainKey([]*x509.Certificate{leaf, mid})
	v.add(key, [][]*x509.Certificate{{leaf, mid, root}}, now)
	p := v.chains[key]
	if len(p) != 1 || p[0].root != root || !p[0].notBefore.Equal(mid.NotBefore) || !p[0].notAfter.Equal(mid.NotAfter) {
		t.Fatalf("remembered %+v; want the root and the intermediate's window", p)
	}
	if chainKey([]*x509.Certificate{leaf}) == key || chainKey([]*x509.Certificate{mid, leaf}) == key {
		t.Fatal("different chains share a key")
	}

	v = verifiedChains{}
	for i := range maxVerifiedChains {
		c := cert(int64(100+i), -time.Hour, time.Hour)
		if i == 0 {
			c = cert(int64(100+i), -time.Hour, -time.Minute) // expired
		}
		v.add(chainKey([]*x509.Certificate{c}), [][]*x509.Certificate{{c, root}}, now)
	}
	expiredKey := chainKey([]*x509.Certificate{cert(100, -time.Hour, -time.Minute)})
	if _, ok := v.chains[expiredKey]; !ok || len(v.chains) != maxVerifiedChains {
		t.Fatalf("%d chains remembered; want %d, the expired one among them", len(v.chains), maxVerifiedChains)
	}
	extra := cert(1, -time.Hour, 2*time.Hour)
	v.add(chainKey([]*x509.Certificate{extra}), [][]*x509.Certificate{{extra, root}}, now)
	kept := maxVerifiedChains - maxVerifiedChains/8 + 1
	if _, ok := v.chains[expiredKey]; ok || len(v.chains) != kept {
		t.Fatalf("full: %d chains remembered, expired one kept %v; want it forgotten, an eighth swept, %d kept", len(v.chains), ok, kept)
	}
	if _, ok := v.chains[chainKey([]*x509.Certificate{extra})]; !ok {
		t.Fatal("the chain added when full is not remembered")
	}
	for range 3 {
		c := cert(int64(2*maxVerifiedChains+len(v.chains)), -time.Hour, time.Hour)
		v.add(chainKey([]*x509.Certificate{c, extra}), [][]*x509.Certificate{{c, root}}, now)
		if len(v.chains) > maxVerifiedChains {
			t.Fatalf("%d chains remembered; bound %d", len(v.chains), maxVerifiedChains)
		}
	}
}

// VerifyX509 remembers the chains it verified, one entry per distinct
// chain, and answers a remembered one from memory.
func TestVerifyX509UsesMemory(t *testing.T) {
	a := attesttest.New(t, "atf.test")
	v, err := New(Config{TrustDomains: []spiffeid.TrustDomain{a.TD}, X509Bundles: a.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	sv := a.X509(t, spiffeid.RequireFromPath(a.TD, "/agents/memory"))
	for range 3 {
		if _, err := v.VerifyX509(sv.Chain); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(v.seen.chains); n != 1 {
		t.Fatalf("%d chains remembered after verifying one three times, want 1", n)
	}
	if !v.seen.still(chainKey(sv.Chain), a.TD, a.Bundle(), time.Now()) {
		t.Fatal("the verified chain is not answered from memory")
	}
	if _, err := v.VerifyX509(append(sv.Chain[:1:1], a.CA)); err != nil {
		t.Fatal(err)
	}
	if n := len(v.seen.chains); n != 2 {
		t.Fatalf("%d chains remembered, want 2: a chain with one more certificate is another chain", n)
	}
}
