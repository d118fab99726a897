package attest

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// maxVerifiedChains bounds the chains a Verifier remembers: a few per
// live workload (an SVID rotates every half of its lifetime).
const maxVerifiedChains = 16384

// verifiedChains remembers the X.509-SVID chains VerifyX509 accepted, so
// that the calls of one connection (or of one SVID over several) pay the
// signature checks once. What is remembered is a chain's exact bytes and,
// for each path x509 verification built from it, the authority it ends in
// and the window in which every certificate on it is valid. A remembered
// chain passes again only within that window and only while that
// authority is still in its trust domain's bundle, read from the bundle
// source on every call: an SVID that expires, or whose authority leaves
// the bundle, is refused at its next call, as before. Everything else
// x509svid.Verify checks depends on the chain's bytes alone.
type verifiedChains struct {
	mu     sync.Mutex
	chains map[[sha256.Size]byte][]verifiedPath
}

// verifiedPath is one verified path of a chain: the authority it ends in
// and when all of its certificates are valid.
type verifiedPath struct {
	root                *x509.Certificate
	notBefore, notAfter time.Time
}

// chainKey identifies a presented chain by its certificates' bytes.
func chainKey(chain []*x509.Certificate) [sha256.Size]byte {
	h := sha256.New()
	var n [8]byte
	for _, c := range chain {
		binary.BigEndian.PutUint64(n[:], uint64(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// still says whether the chain of key was verified before and still holds
// at now: one of its paths is valid at now and ends in an authority the
// bundle of td still has.
func (v *verifiedChains) still(key [sha256.Size]byte, td spiffeid.TrustDomain, bundles x509bundle.Source, now time.Time) bool {
	v.mu.Lock()
	paths := v.chains[key]
	v.mu.Unlock()
	if len(paths) == 0 {
		return false
	}
	bundle, err := bundles.GetX509BundleForTrustDomain(td)
	if err != nil {
		return false
	}
	for _, p := range paths {
		if !now.Before(p.notBefore) && !now.After(p.notAfter) && bundle.HasX509Authority(p.root) {
			return true
		}
	}
	return false
}

// add remembers the chain of key, verified at now along paths. When full,
// it forgets the chains whose paths have all expired and, if that is not
// enough, an eighth of the rest at random: a forgotten chain is only
// verified again, and a caller filling the memory with chains of its own
// (extra certificates make new keys) pays a sweep per 2,048 chains, not
// one per chain.
func (v *verifiedChains) add(key [sha256.Size]byte, paths [][]*x509.Certificate, now time.Time) {
	kept := make([]verifiedPath, 0, len(paths))
	for _, path := range paths {
		if len(path) == 0 {
			continue
		}
		p := verifiedPath{root: path[len(path)-1], notBefore: path[0].NotBefore, notAfter: path[0].NotAfter}
		for _, c := range path[1:] {
			if c.NotBefore.After(p.notBefore) {
				p.notBefore = c.NotBefore
			}
			if c.NotAfter.Before(p.notAfter) {
				p.notAfter = c.NotAfter
			}
		}
		kept = append(kept, p)
	}
	if len(kept) == 0 {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.chains == nil {
		v.chains = map[[sha256.Size]byte][]verifiedPath{}
	}
	if len(v.chains) >= maxVerifiedChains {
		for k, ps := range v.chains {
			if expired(ps, now) {
				delete(v.chains, k)
			}
		}
		for k := range v.chains { // map order: at random
			if len(v.chains) <= maxVerifiedChains-maxVerifiedChains/8 {
				break
			}
			delete(v.chains, k)
		}
	}
	v.chains[key] = kept
}

// expired says whether every path of a chain has expired at now.
func expired(paths []verifiedPath, now time.Time) bool {
	for _, p := range paths {
		if !now.After(p.notAfter) {
			return false
		}
	}
	return true
}
