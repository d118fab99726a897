package verify

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// fetchTimeout bounds one fetch of the JWK Set.
const fetchTimeout = 10 * time.Second

// staleWait is how long a request whose key is in a set past its expiry
// (but within KeysStaleFor) waits for the refresh before it is served
// from that set: an issuer that does not answer costs each request at
// most this, not the whole fetchTimeout.
const staleWait = time.Second

// maxJWKSSize bounds the JWK Set read.
const maxJWKSSize = 1 << 20

// keySet is one fetched JWK Set.
type keySet struct {
	keys    map[string]*ecdsa.PublicKey
	expires time.Time // when it should be fetched again
}

// keyCache holds the issuer's keys. Lookups of a known kid in a fresh set
// take no lock; fetches run one at a time, rate-limited, apart from the
// requests waiting for them (which a caller giving up does not cancel).
type keyCache struct {
	url      string
	client   *http.Client
	now      func() time.Time
	refetch  time.Duration
	staleFor time.Duration
	log      *slog.Logger

	set         atomic.Pointer[keySet]
	mu          sync.Mutex
	lastAttempt time.Time     // guarded by mu
	inflight    chan struct{} // guarded by mu; closed when the fetch ends
}

func newKeyCache(cfg Config) *keyCache {
	k := &keyCache{url: cfg.JWKSURL, client: cfg.Client, now: cfg.Now, refetch: cfg.RefetchInterval,
		staleFor: cfg.KeysStaleFor, log: cfg.Logger}
	if k.refetch == 0 {
		k.refetch = DefaultRefetchInterval
	}
	if k.staleFor == 0 {
		k.staleFor = DefaultKeysStaleFor
	}
	return k
}

// key returns the key named kid.
func (k *keyCache) key(ctx context.Context, kid string) (*ecdsa.PublicKey, error) {
	if s := k.set.Load(); s != nil && k.now().Before(s.expires) {
		if key, ok := s.keys[kid]; ok {
			return key, nil
		}
	}
	return k.fetchFor(ctx, kid)
}

// fetchFor fetches the JWK Set, unless another caller just did or one was
// attempted less than refetch ago, and looks kid up in what is then held.
// A set that could not be refreshed is used up to staleFor past its expiry.
func (k *keyCache) fetchFor(ctx context.Context, kid string) (*ecdsa.PublicKey, error) {
	k.mu.Lock()
	now := k.now()
	s := k.set.Load()
	_, known := lookup(s, kid)
	wait := k.inflight
	if wait == nil && !(known && now.Before(s.expires)) && now.Sub(k.lastAttempt) >= k.refetch {
		k.lastAttempt = now
		wait = make(chan struct{})
		k.inflight = wait
		go k.refresh(wait)
	}
	k.mu.Unlock()
	if wait != nil {
		var stale <-chan time.Time
		if known && now.Before(s.expires.Add(k.staleFor)) {
			t := time.NewTimer(staleWait)
			defer t.Stop()
			stale = t.C
		}
		select {
		case <-wait:
			s = k.set.Load()
		case <-stale:
		case <-ctx.Done():
		}
	}
	switch key, ok := lookup(s, kid); {
	case s == nil:
		return nil, fmt.Errorf("%w: the issuer's keys could not be fetched", ErrInvalidToken)
	case !now.Before(s.expires.Add(k.staleFor)):
		return nil, fmt.Errorf("%w: the issuer's keys could not be refreshed for %s", ErrInvalidToken, k.staleFor)
	case !ok:
		return nil, fmt.Errorf("%w: unknown kid", ErrInvalidToken)
	default:
		return key, nil
	}
}

// refresh fetches the set, bounded by fetchTimeout only, then closes done.
func (k *keyCache) refresh(done chan struct{}) {
	fetched, err := k.fetch(context.Background())
	if err != nil {
		k.log.Warn("verify: fetching the JWK Set failed", slog.String("url", k.url), slog.Any("error", err))
	} else {
		k.set.Store(fetched)
	}
	k.mu.Lock()
	k.inflight = nil
	k.mu.Unlock()
	close(done)
}

func lookup(s *keySet, kid string) (*ecdsa.PublicKey, bool) {
	if s == nil {
		return nil, false
	}
	key, ok := s.keys[kid]
	return key, ok
}

// fetch gets and parses the JWK Set.
func (k *keyCache) fetch(ctx context.Context) (*keySet, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSSize+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxJWKSSize {
		return nil, fmt.Errorf("JWK Set over %d bytes", maxJWKSSize)
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return nil, err
	}
	return &keySet{keys: keys, expires: k.now().Add(cacheTTL(resp.Header.Get("Cache-Control")))}, nil
}

// cacheTTL reads max-age from a Cache-Control header, within
// [MinCacheTTL, MaxCacheTTL].
func cacheTTL(cc string) time.Duration {
	ttl := DefaultCacheTTL
	for d := range strings.SplitSeq(cc, ",") {
		d = strings.ToLower(strings.TrimSpace(d))
		if d == "no-store" || d == "no-cache" {
			return MinCacheTTL
		}
		if v, ok := strings.CutPrefix(d, "max-age="); ok {
			if n, err := strconv.Atoi(strings.Trim(v, `"`)); err == nil && n >= 0 {
				ttl = time.Duration(n) * time.Second
			}
		}
	}
	return min(max(ttl, MinCacheTTL), MaxCacheTTL)
}

type jwk struct {
	Kty, Crv, X, Y, Kid, Alg, Use string
}

// parseJWKS returns the ES256 signing keys of a JWK Set by kid. Keys of
// other types are skipped: a token naming one is refused as naming an
// unknown kid.
func parseJWKS(body []byte) (map[string]*ecdsa.PublicKey, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, errors.New("JWK Set is not JSON")
	}
	keys := map[string]*ecdsa.PublicKey{}
	for _, j := range set.Keys {
		if j.Kty != "EC" || j.Crv != "P-256" || j.Kid == "" || (j.Alg != "" && j.Alg != "ES256") || (j.Use != "" && j.Use != "sig") {
			continue
		}
		x, errX := base64.RawURLEncoding.DecodeString(j.X)
		y, errY := base64.RawURLEncoding.DecodeString(j.Y)
		if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
			return nil, fmt.Errorf("key %q: bad coordinates", j.Kid)
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil, fmt.Errorf("key %q: %v", j.Kid, err)
		}
		keys[j.Kid] = pub
	}
	return keys, nil
}
