package rbeauth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// This file verifies service-account tokens locally. It handles the two JWS
// algorithms kube-apiserver signs service-account tokens with (ES256 for EC
// keys, RS256 for RSA keys) and nothing else. It is written here rather than
// taken from a JOSE library because the project's dependency set has none,
// and these two algorithms need only the standard library.

// Claims are the parts of a Kubernetes service-account token that the
// verifier uses.
type Claims struct {
	Issuer     string    `json:"iss"`
	Subject    string    `json:"sub"`
	Audience   audience  `json:"aud"`
	Expiry     int64     `json:"exp"`
	NotBefore  int64     `json:"nbf"`
	IssuedAt   int64     `json:"iat"`
	ID         string    `json:"jti"`
	Kubernetes k8sClaims `json:"kubernetes.io"`
}

type k8sClaims struct {
	Namespace      string     `json:"namespace"`
	Pod            *objectRef `json:"pod"`
	Node           *objectRef `json:"node"`
	ServiceAccount objectRef  `json:"serviceaccount"`
}

type objectRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// audience accepts the JWT "aud" claim as a string or a list.
type audience []string

func (a *audience) UnmarshalJSON(data []byte) error {
	var one string
	if err := json.Unmarshal(data, &one); err == nil {
		*a = audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(data, &many); err != nil {
		return fmt.Errorf("aud claim is neither a string nor a list of strings: %w", err)
	}
	*a = many
	return nil
}

// Contains reports whether want is one of the audiences.
func (a audience) Contains(want string) bool {
	for _, v := range a {
		if v == want {
			return true
		}
	}
	return false
}

// PodName returns the name of the pod the token is bound to, or "".
func (c *Claims) PodName() string {
	if c.Kubernetes.Pod == nil {
		return ""
	}
	return c.Kubernetes.Pod.Name
}

// PodUID returns the UID of the pod the token is bound to, or "".
func (c *Claims) PodUID() string {
	if c.Kubernetes.Pod == nil {
		return ""
	}
	return c.Kubernetes.Pod.UID
}

type jwsHeader struct {
	Algorithm string `json:"alg"`
	KeyID     string `json:"kid"`
}

// parsedToken is a compact JWS split into its parts, not yet verified.
type parsedToken struct {
	header    jwsHeader
	claims    Claims
	signed    []byte // header.payload, the signing input
	signature []byte
}

// maxTokenSize bounds what the parser accepts. Service-account tokens are
// about 1 KiB; this leaves room for long names while keeping a hostile
// certificate from making the verifier decode megabytes.
const maxTokenSize = 16 << 10

func parseToken(token string) (*parsedToken, error) {
	if len(token) > maxTokenSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTokenMalformed, len(token), maxTokenSize)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: %d dot-separated parts, want 3 (compact JWS)", ErrTokenMalformed, len(parts))
	}
	headerJSON, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, fmt.Errorf("%w: header is not base64url: %v", ErrTokenMalformed, err)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("%w: payload is not base64url: %v", ErrTokenMalformed, err)
	}
	signature, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, fmt.Errorf("%w: signature is not base64url: %v", ErrTokenMalformed, err)
	}
	t := &parsedToken{signed: []byte(parts[0] + "." + parts[1]), signature: signature}
	if err := json.Unmarshal(headerJSON, &t.header); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrTokenMalformed, err)
	}
	if err := json.Unmarshal(payload, &t.claims); err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrTokenMalformed, err)
	}
	return t, nil
}

// verifySignature checks the JWS signature with key, which must match the
// header's algorithm.
func (t *parsedToken) verifySignature(key crypto.PublicKey) error {
	digest := sha256.Sum256(t.signed)
	switch t.header.Algorithm {
	case "ES256":
		pub, ok := key.(*ecdsa.PublicKey)
		if !ok || pub.Curve.Params().BitSize != 256 {
			return fmt.Errorf("%w: ES256 token but key %q is not a P-256 key", ErrTokenSignature, t.header.KeyID)
		}
		if len(t.signature) != 64 {
			return fmt.Errorf("%w: ES256 signature is %d bytes, want 64", ErrTokenSignature, len(t.signature))
		}
		r := new(big.Int).SetBytes(t.signature[:32])
		s := new(big.Int).SetBytes(t.signature[32:])
		if !ecdsa.Verify(pub, digest[:], r, s) {
			return fmt.Errorf("%w: ES256 signature does not verify with key %q", ErrTokenSignature, t.header.KeyID)
		}
		return nil
	case "RS256":
		pub, ok := key.(*rsa.PublicKey)
		if !ok {
			return fmt.Errorf("%w: RS256 token but key %q is not an RSA key", ErrTokenSignature, t.header.KeyID)
		}
		if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], t.signature); err != nil {
			return fmt.Errorf("%w: RS256 signature does not verify with key %q", ErrTokenSignature, t.header.KeyID)
		}
		return nil
	default:
		return fmt.Errorf("%w: algorithm %q is not supported (want ES256 or RS256)", ErrTokenSignature, t.header.Algorithm)
	}
}

// checkTime checks expiry and not-before against now, allowing skew.
func (c *Claims) checkTime(now time.Time, skew time.Duration) error {
	if c.Expiry == 0 {
		return fmt.Errorf("%w: token has no exp claim", ErrTokenExpired)
	}
	if exp := time.Unix(c.Expiry, 0); now.After(exp.Add(skew)) {
		return fmt.Errorf("%w: expired at %s", ErrTokenExpired, exp.UTC().Format(time.RFC3339))
	}
	if c.NotBefore != 0 {
		if nbf := time.Unix(c.NotBefore, 0); now.Add(skew).Before(nbf) {
			return fmt.Errorf("%w: not valid before %s", ErrTokenExpired, nbf.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

var errNoPodClaim = errors.New("token is not bound to a pod")
