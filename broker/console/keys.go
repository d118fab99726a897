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

// refetchEvery bounds how often a token that no key verifies may make
// atfd fetch the provider's key set again.
const refetchEvery = 30 * time.Second

// keySet is the provider's signing keys, for the ID tokens people present
// on the gRPC API (atfctl login): anybody can send one, so a token that
// none of the keys verifies fetches the key set again at most once per
// refetchEvery (go-oidc's RemoteKeySet fetches again for every such
// token, which would let anyone make atfd hammer the provider, and wait
// on it). A provider that rotated its keys is heard at the first token
// of the new key after that.
type keySet struct {
	url string
	hc  *http.Client
	now func() time.Time

	mu      sync.Mutex
	keys    *oidc.StaticKeySet
	fetched time.Time // the last fetch's start
	failed  error     // why it failed, if it did
}

// VerifySignature implements oidc.KeySet.
func (k *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	k.mu.Lock()
	keys := k.keys
	k.mu.Unlock()
	if keys != nil {
		if payload, err := keys.VerifySignature(ctx, jwt); err == nil {
			return payload, nil
		}
	}
	if err := k.refetch(ctx); err != nil {
		return nil, err
	}
	k.mu.Lock()
	keys = k.keys
	k.mu.Unlock()
	return keys.VerifySignature(ctx, jwt)
}

// refetch fetches the key set, unless it was fetched less than
// refetchEvery ago.
func (k *keySet) refetch(ctx context.Context) error {
	k.mu.Lock()
	if since := k.now().Sub(k.fetched); !k.fetched.IsZero() && since < refetchEvery {
		defer k.mu.Unlock()
		if k.failed != nil {
			return fmt.Errorf("the provider's key set could not be fetched %s ago: %w", since.Round(time.Second), k.failed)
		}
		return fmt.Errorf("no key of the provider verifies it (its key set was fetched %s ago)", since.Round(time.Second))
	}
	k.fetched = k.now()
	k.mu.Unlock()
	keys, err := k.fetch(ctx)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.failed = err; err != nil {
		return fmt.Errorf("fetching the provider's key set: %w", err)
	}
	k.keys = keys
	return nil
}

func (k *keySet) fetch(ctx context.Context) (*oidc.StaticKeySet, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
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
