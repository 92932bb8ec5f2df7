package rbeauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"sync"
	"time"
)

// KeySource fetches the raw JWKS document and OIDC discovery document of the
// cluster's service-account issuer. In production this is the API server
// (GET /openid/v1/jwks and /.well-known/openid-configuration).
type KeySource interface {
	JWKS(ctx context.Context) ([]byte, error)
	OpenIDConfiguration(ctx context.Context) ([]byte, error)
}

// IssuerKeys caches the service-account issuer's verification keys. A token
// signed with an unknown key id triggers a refetch, at most once per
// minRefresh, so that key rotation is picked up without letting bogus key
// ids hammer the API server.
type IssuerKeys struct {
	source     KeySource
	minRefresh time.Duration
	now        func() time.Time

	mu          sync.Mutex
	issuer      string
	keys        map[string]crypto.PublicKey
	lastFetch   time.Time
	fetchedOnce bool
}

// NewIssuerKeys returns a key cache over source.
func NewIssuerKeys(source KeySource) *IssuerKeys {
	return &IssuerKeys{source: source, minRefresh: 5 * time.Second, now: time.Now}
}

// Issuer returns the issuer URL from OIDC discovery.
func (k *IssuerKeys) Issuer(ctx context.Context) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.issuer != "" {
		return k.issuer, nil
	}
	raw, err := k.source.OpenIDConfiguration(ctx)
	if err != nil {
		return "", fmt.Errorf("%w: fetch OIDC discovery document: %v", ErrKubernetesUnavailable, err)
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil || doc.Issuer == "" {
		return "", fmt.Errorf("%w: OIDC discovery document has no issuer (err %v)", ErrKubernetesUnavailable, err)
	}
	k.issuer = doc.Issuer
	return k.issuer, nil
}

// Key returns the verification key with the given id, refetching the JWKS
// when the id is unknown.
func (k *IssuerKeys) Key(ctx context.Context, kid string) (crypto.PublicKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if key, ok := k.keys[kid]; ok {
		return key, nil
	}
	if k.fetchedOnce && k.now().Sub(k.lastFetch) < k.minRefresh {
		return nil, fmt.Errorf("%w: unknown key id %q (JWKS fetched %s ago)", ErrTokenSignature, kid, k.now().Sub(k.lastFetch).Round(time.Millisecond))
	}
	raw, err := k.source.JWKS(ctx)
	k.lastFetch, k.fetchedOnce = k.now(), true
	if err != nil {
		return nil, fmt.Errorf("%w: fetch JWKS: %v", ErrKubernetesUnavailable, err)
	}
	keys, err := parseJWKS(raw)
	if err != nil {
		return nil, err
	}
	k.keys = keys
	if key, ok := keys[kid]; ok {
		return key, nil
	}
	return nil, fmt.Errorf("%w: key id %q is not in the issuer's JWKS", ErrTokenSignature, kid)
}

type jwk struct {
	KeyType string `json:"kty"`
	KeyID   string `json:"kid"`
	Curve   string `json:"crv"`
	X       string `json:"x"`
	Y       string `json:"y"`
	N       string `json:"n"`
	E       string `json:"e"`
}

// parseJWKS decodes the EC P-256 and RSA keys of a JWK set. Keys of other
// types are skipped, because service-account tokens use only these.
func parseJWKS(raw []byte) (map[string]crypto.PublicKey, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(raw, &set); err != nil {
		return nil, fmt.Errorf("decode JWKS: %w", err)
	}
	keys := make(map[string]crypto.PublicKey, len(set.Keys))
	for _, k := range set.Keys {
		switch k.KeyType {
		case "EC":
			if k.Curve != "P-256" {
				continue
			}
			x, errX := base64.RawURLEncoding.DecodeString(k.X)
			y, errY := base64.RawURLEncoding.DecodeString(k.Y)
			if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
				return nil, fmt.Errorf("decode JWKS: EC key %q has invalid coordinates", k.KeyID)
			}
			// The uncompressed point encoding lets the standard library
			// check that the point is on the curve.
			point := append(append([]byte{4}, x...), y...)
			pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
			if err != nil {
				return nil, fmt.Errorf("decode JWKS: EC key %q: %w", k.KeyID, err)
			}
			keys[k.KeyID] = pub
		case "RSA":
			n, errN := base64.RawURLEncoding.DecodeString(k.N)
			e, errE := base64.RawURLEncoding.DecodeString(k.E)
			if errN != nil || errE != nil || len(e) == 0 || len(e) > 4 {
				return nil, fmt.Errorf("decode JWKS: RSA key %q has an invalid modulus or exponent", k.KeyID)
			}
			keys[k.KeyID] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		}
	}
	return keys, nil
}
