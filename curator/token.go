package curator

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
)

// DefaultAudience is the token audience reserved for the curator.
const DefaultAudience = "mazu-curator"

// TokenClaims are the claims of a Kubernetes pod-bound service-account
// token that the curator and witnesses check. None of them is secret.
type TokenClaims struct {
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"`
	Audience  audience `json:"aud"`
	Expiry    int64    `json:"exp"`
	IssuedAt  int64    `json:"iat"`
	NotBefore int64    `json:"nbf"`
	JTI       string   `json:"jti"`
	K8s       struct {
		Namespace string `json:"namespace"`
		Node      *ref   `json:"node"`
		Pod       *ref   `json:"pod"`
		SA        *ref   `json:"serviceaccount"`
	} `json:"kubernetes.io"`
}

type ref struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		*a = audience{s}
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return err
	}
	*a = l
	return nil
}

type jwsHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

// SplitToken splits a compact JWS into its signing input (header "."
// payload) and its signature part.
func SplitToken(token string) (signingInput, signature string, err error) {
	i := strings.LastIndexByte(token, '.')
	if i < 0 || strings.Count(token, ".") != 2 {
		return "", "", errors.New("invalid token: want a compact JWS of three dot-separated parts")
	}
	return token[:i], token[i+1:], nil
}

// ParseTokenClaims decodes the claims of a JWS signing input without
// verifying anything.
func ParseTokenClaims(signingInput string) (*TokenClaims, error) {
	_, payload, ok := strings.Cut(signingInput, ".")
	if !ok {
		return nil, errors.New("invalid token: missing payload")
	}
	b, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return nil, fmt.Errorf("invalid token payload: %w", err)
	}
	var c TokenClaims
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("invalid token claims: %w", err)
	}
	return &c, nil
}

// CheckClaims applies the rules every logged token must meet at time
// nowUnix: the audience, the pod binding, the node claim and the validity
// period.
func (c *TokenClaims) CheckClaims(aud string, nowUnix int64) error {
	switch {
	case !slices.Contains(c.Audience, aud):
		return fmt.Errorf("token audience %q lacks %q: request the token with audience %s", []string(c.Audience), aud, aud)
	case c.K8s.Pod == nil || c.K8s.Pod.UID == "":
		return errors.New("token is not bound to a pod: use a projected or TokenRequest token bound to the pod")
	case c.K8s.Node == nil || c.K8s.Node.Name == "":
		return errors.New("token has no node claim: request it for a pod scheduled to a node, from an API server that adds node claims")
	case c.Expiry == 0 || nowUnix >= c.Expiry:
		return fmt.Errorf("token expired at unix time %d (now %d): request a fresh token", c.Expiry, nowUnix)
	case c.NotBefore != 0 && nowUnix < c.NotBefore:
		return fmt.Errorf("token not valid before unix time %d (now %d)", c.NotBefore, nowUnix)
	}
	return nil
}

// A JWKS is a set of service-account issuer public keys, as served at the
// issuer's /openid/v1/jwks. It is parsed here with the standard library
// because no approved dependency provides JOSE.
type JWKS struct {
	keys map[string]crypto.PublicKey
}

// ParseJWKS parses a JSON Web Key Set with RSA and P-256 keys.
func ParseJWKS(b []byte) (*JWKS, error) {
	var set struct {
		Keys []struct {
			Kty, Kid, Crv, N, E, X, Y string
		} `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("parse JWKS: %w", err)
	}
	j := &JWKS{keys: map[string]crypto.PublicKey{}}
	dec := base64.RawURLEncoding.DecodeString
	for _, k := range set.Keys {
		switch k.Kty {
		case "RSA":
			n, err1 := dec(k.N)
			e, err2 := dec(k.E)
			if err1 != nil || err2 != nil || len(e) > 4 {
				return nil, fmt.Errorf("parse JWKS: invalid RSA key %q", k.Kid)
			}
			j.keys[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		case "EC":
			x, err1 := dec(k.X)
			y, err2 := dec(k.Y)
			if err1 != nil || err2 != nil || k.Crv != "P-256" {
				return nil, fmt.Errorf("parse JWKS: invalid or unsupported EC key %q", k.Kid)
			}
			pub := &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
			j.keys[k.Kid] = pub
		}
	}
	if len(j.keys) == 0 {
		return nil, errors.New("parse JWKS: no RSA or P-256 keys")
	}
	return j, nil
}

var errTokenSignature = errors.New("invalid token signature")

// Verify checks the JWS signature (RS256 or ES256) of signingInput.
func (j *JWKS) Verify(signingInput, signature string) error {
	hdr, _, _ := strings.Cut(signingInput, ".")
	hb, err := base64.RawURLEncoding.DecodeString(hdr)
	var h jwsHeader
	if err != nil || json.Unmarshal(hb, &h) != nil {
		return errTokenSignature
	}
	sig, err := base64.RawURLEncoding.DecodeString(signature)
	if err != nil {
		return errTokenSignature
	}
	key, ok := j.keys[h.Kid]
	if !ok {
		return fmt.Errorf("token key ID %q not in the issuer JWKS", h.Kid)
	}
	d := sha256.Sum256([]byte(signingInput))
	switch key := key.(type) {
	case *rsa.PublicKey:
		if h.Alg != "RS256" || rsa.VerifyPKCS1v15(key, crypto.SHA256, d[:], sig) != nil {
			return errTokenSignature
		}
	case *ecdsa.PublicKey:
		if h.Alg != "ES256" || len(sig) != 64 {
			return errTokenSignature
		}
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		if !ecdsa.Verify(key, d[:], r, s) {
			return errTokenSignature
		}
	}
	return nil
}
