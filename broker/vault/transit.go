package vault

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// TransitKey is a transit signing key as Vault describes it: the public
// key of each version still available, and the newest version.
type TransitKey struct {
	Type   string
	Latest int
	// Versions are the available versions, oldest first.
	Versions []KeyVersion
}

// KeyVersion is one version of a transit key.
type KeyVersion struct {
	Version int
	// PublicKey is PEM (PKIX).
	PublicKey string
	Created   time.Time
}

// ReadTransitKey reads the key name of the transit engine at mount
// (transit/keys/<name>): its type and its versions' public keys.
func (is *Issuer) ReadTransitKey(ctx context.Context, mount, name string) (TransitKey, error) {
	s, err := is.client.Logical().ReadWithContext(ctx, mount+"/keys/"+name)
	if err != nil {
		return TransitKey{}, classify("read transit key", err)
	}
	if s == nil || s.Data == nil {
		return TransitKey{}, fmt.Errorf("%w: read transit key: %s/keys/%s does not exist", ErrRejected, mount, name)
	}
	raw, err := json.Marshal(s.Data)
	if err != nil {
		return TransitKey{}, fmt.Errorf("%w: read transit key: %v", ErrRejected, err)
	}
	var data struct {
		Type   string `json:"type"`
		Latest int    `json:"latest_version"`
		Keys   map[string]struct {
			PublicKey    string    `json:"public_key"`
			CreationTime time.Time `json:"creation_time"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(raw, &data); err != nil {
		return TransitKey{}, fmt.Errorf("%w: read transit key: Vault's answer: %v", ErrRejected, err)
	}
	k := TransitKey{Type: data.Type, Latest: data.Latest}
	for v, kv := range data.Keys {
		n, err := strconv.Atoi(v)
		if err != nil || kv.PublicKey == "" {
			return TransitKey{}, fmt.Errorf("%w: read transit key %s: version %q has no public key: not a signing key", ErrRejected, name, v)
		}
		k.Versions = append(k.Versions, KeyVersion{Version: n, PublicKey: kv.PublicKey, Created: kv.CreationTime})
	}
	slices.SortFunc(k.Versions, func(a, b KeyVersion) int { return a.Version - b.Version })
	return k, nil
}

// RotateTransitKey adds a new version to the transit key name.
func (is *Issuer) RotateTransitKey(ctx context.Context, mount, name string) error {
	if _, err := is.client.Logical().WriteWithContext(ctx, mount+"/keys/"+name+"/rotate", nil); err != nil {
		return classify("rotate transit key", err)
	}
	return nil
}

// TransitSign signs input with version of the transit key name (ECDSA
// over SHA-256) and returns the raw JWS signature (R || S). Each call is
// one signature: nothing is cached or reused. It goes through the breaker,
// as an issuance does.
func (is *Issuer) TransitSign(ctx context.Context, mount, name string, version int, input []byte) ([]byte, error) {
	probe, err := is.admit()
	if err != nil {
		return nil, err
	}
	s, err := is.client.Logical().WriteWithContext(ctx, mount+"/sign/"+name, map[string]any{
		"input":                base64.StdEncoding.EncodeToString(input),
		"key_version":          version,
		"hash_algorithm":       "sha2-256",
		"marshaling_algorithm": "jws",
	})
	if err != nil {
		err = classify("transit sign", err)
		switch {
		case ctx.Err() != nil:
			is.abandoned(probe)
		case errors.Is(err, ErrUnavailable):
			is.failed(err)
		default:
			is.answered()
		}
		return nil, err
	}
	is.answered()
	sig, _ := s.Data["signature"].(string)
	// vault:v<version>:<base64url signature>
	parts := strings.SplitN(sig, ":", 3)
	if len(parts) != 3 || parts[1] != "v"+strconv.Itoa(version) {
		return nil, fmt.Errorf("%w: transit sign: Vault's signature is not of version %d", ErrRejected, version)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[2], "="))
	if err != nil || len(raw) != 64 {
		return nil, fmt.Errorf("%w: transit sign: Vault's signature is not a JWS ES256 signature", ErrRejected)
	}
	return raw, nil
}
