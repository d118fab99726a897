package verify

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"sync"
	"time"
)

// maxSeen bounds the tokens whose verified signature is remembered.
const maxSeen = 8192

// seen remembers the tokens whose signature verified, by their SHA-256,
// so that a token presented again costs a hash and a map lookup instead of
// an ECDSA verification (docs/oauth-verifier.md, "Cost"). Only the
// signature is remembered: claims' times, the key's presence in the JWK
// Set and revocation are checked again on every request. Only valid tokens
// enter, so forged ones cannot fill it.
type seen struct {
	mu sync.RWMutex
	m  map[[sha256.Size]byte]seenToken
}

type seenToken struct {
	kid    string
	key    *ecdsa.PublicKey
	claims *Claims
}

func (s *seen) get(sum [sha256.Size]byte) (seenToken, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.m[sum]
	return e, ok
}

// add remembers a verified token; when full, it forgets expired tokens,
// and everything if that is not enough.
func (s *seen) add(sum [sha256.Size]byte, e seenToken, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil || len(s.m) >= maxSeen {
		for k, old := range s.m {
			if now.After(old.claims.Expiry) {
				delete(s.m, k)
			}
		}
		if s.m == nil || len(s.m) >= maxSeen {
			s.m = make(map[[sha256.Size]byte]seenToken)
		}
	}
	s.m[sum] = e
}
