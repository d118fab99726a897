package console

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
)

const (
	// refetchEvery bounds how often a token that no key verifies may make
	// atfd fetch the provider's key set again, after a fetch that worked.
	refetchEvery = 30 * time.Second
	// retryFetchAfter is how soon a fetch that failed may be tried again.
	retryFetchAfter = 2 * time.Second
	// fetchTimeout bounds one fetch.
	fetchTimeout = 10 * time.Second
)

// keySet is the provider's signing keys, for the ID tokens people present
// on the gRPC API (atfctl login): anybody can send one, so a token that
// none of the keys verifies fetches the key set again at most once per
// refetchEvery after a fetch that worked (go-oidc's RemoteKeySet fetches
// again for every such token, which would let anyone make atfd hammer the
// provider, and wait on it). A fetch runs on its own: callers at the same
// time wait for it together, and one that gives up cancels nothing. A
// fetch that failed may be tried again after retryFetchAfter. A provider
// that rotated its keys is heard at the first token of the new key past
// the interval.
type keySet struct {
	url string
	hc  *http.Client
	now func() time.Time

	mu      sync.Mutex
	keys    *oidc.StaticKeySet
	fetched time.Time     // when the last fetch ended
	failed  error         // why it failed, if it did
	pending chan struct{} // closed when the fetch under way ends; nil if none
}

// VerifySignature implements oidc.KeySet.
func (k *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	if keys := k.current(); keys != nil {
		if payload, err := keys.VerifySignature(ctx, jwt); err == nil {
			return payload, nil
		}
	}
	if err := k.refetch(ctx); err != nil {
		return nil, err
	}
	return k.current().VerifySignature(ctx, jwt)
}

func (k *keySet) current() *oidc.StaticKeySet {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.keys
}

// refetch fetches the key set, or waits for the fetch under way, unless
// the last fetch is too recent to try again.
func (k *keySet) refetch(ctx context.Context) error {
	k.mu.Lock()
	done := k.pending
	if done == nil {
		since := k.now().Sub(k.fetched)
		switch {
		case k.fetched.IsZero():
		case k.failed != nil && since < retryFetchAfter:
			k.mu.Unlock()
			return fmt.Errorf("the provider's key set could not be fetched %s ago: %w", since.Round(time.Millisecond), k.failed)
		case k.failed == nil && since < refetchEvery:
			k.mu.Unlock()
			return fmt.Errorf("no key of the provider verifies it (its key set was fetched %s ago)", since.Round(time.Second))
		}
		done = make(chan struct{})
		k.pending = done
		go k.fetchNow(done)
	}
	k.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.failed != nil {
		return fmt.Errorf("fetching the provider's key set: %w", k.failed)
	}
	return nil
}

// fetchNow fetches the key set, apart from any caller, and closes done.
func (k *keySet) fetchNow(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
	defer cancel()
	keys, err := k.fetch(ctx)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.fetched, k.failed, k.pending = k.now(), err, nil
	if err == nil {
		k.keys = keys
	}
	close(done)
}

func (k *keySet) fetch(ctx context.Context) (*oidc.StaticKeySet, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := k.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", k.url, resp.Status)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&set); err != nil {
		return nil, fmt.Errorf("%s: %w", k.url, err)
	}
	out := &oidc.StaticKeySet{}
	for _, key := range set.Keys {
		if key.Valid() && key.IsPublic() && (key.Use == "" || key.Use == "sig") {
			out.PublicKeys = append(out.PublicKeys, crypto.PublicKey(key.Key))
		}
	}
	if len(out.PublicKeys) == 0 {
		return nil, errors.New(k.url + " holds no public signing key")
	}
	return out, nil
}
