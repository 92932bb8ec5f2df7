// Package curatortest holds test helpers for the curator packages: a
// service-account token issuer for unit tests that do not need the
// Kubernetes API, and helpers that build registration requests.
package curatortest

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
)

// An Issuer mints RS256 tokens shaped like Kubernetes pod-bound
// service-account tokens, and acts as a TokenReviewer over its own pods.
type Issuer struct {
	key *rsa.PrivateKey
	kid string

	mu   sync.Mutex
	pods map[string]*Pod // by UID
}

// A Pod is a pod known to the issuer.
type Pod struct {
	Namespace, Name, UID, SA string
	Node                     string
	IP                       netip.Addr
	Deleted                  bool
}

// NewIssuer returns an issuer with a fresh 2048-bit RSA key.
func NewIssuer(tb testing.TB) *Issuer {
	tb.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	return &Issuer{key: k, kid: "test-key", pods: map[string]*Pod{}}
}

// JWKS returns the issuer's key set.
func (is *Issuer) JWKS() []byte {
	b, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "kid": is.kid, "alg": "RS256", "use": "sig",
		"n": base64.RawURLEncoding.EncodeToString(is.key.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(is.key.E)).Bytes()),
	}}})
	return b
}

// AddPod registers a pod with IP ip.
func (is *Issuer) AddPod(ns, name string, ip netip.Addr) *Pod {
	is.mu.Lock()
	defer is.mu.Unlock()
	p := &Pod{Namespace: ns, Name: name, UID: fmt.Sprintf("uid-%s-%s-%d", ns, name, len(is.pods)), SA: "default", Node: "node-1", IP: ip}
	is.pods[p.UID] = p
	return p
}

// DeletePod marks a pod deleted.
func (is *Issuer) DeletePod(p *Pod) {
	is.mu.Lock()
	defer is.mu.Unlock()
	p.Deleted = true
}

// Token mints a token for p with audience aud, valid for ttl from now.
func (is *Issuer) Token(p *Pod, aud string, now time.Time, ttl time.Duration) string {
	return is.sign(is.key, p, aud, now, ttl)
}

// ForgedToken mints a token with a key the issuer does not publish.
func (is *Issuer) ForgedToken(tb testing.TB, p *Pod, aud string, now time.Time) string {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	return is.sign(k, p, aud, now, 10*time.Minute)
}

func (is *Issuer) sign(k *rsa.PrivateKey, p *Pod, aud string, now time.Time, ttl time.Duration) string {
	hdr, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": is.kid})
	jti := make([]byte, 8)
	rand.Read(jti)
	claims, _ := json.Marshal(map[string]any{
		"iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:" + p.Namespace + ":" + p.SA,
		"aud": []string{aud}, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(ttl).Unix(),
		"jti": fmt.Sprintf("%x", jti),
		"kubernetes.io": map[string]any{
			"namespace":      p.Namespace,
			"pod":            map[string]string{"name": p.Name, "uid": p.UID},
			"node":           map[string]string{"name": p.Node, "uid": "node-uid-" + p.Node},
			"serviceaccount": map[string]string{"name": p.SA, "uid": "sa-uid"},
		},
	})
	input := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(claims)
	d := sha256.Sum256([]byte(input))
	sig, _ := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, d[:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// Review implements server.TokenReviewer the way the API server's
// TokenReview does for these tokens: signature, audience, expiry and a
// bound pod that still exists.
func (is *Issuer) Review(_ context.Context, token string) (*server.PodIdentity, error) {
	input, sig, err := curator.SplitToken(token)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", server.ErrUnauthorized, err)
	}
	jwks, _ := curator.ParseJWKS(is.JWKS())
	if err := jwks.Verify(input, sig); err != nil {
		return nil, fmt.Errorf("%w: %w", server.ErrUnauthorized, err)
	}
	c, err := curator.ParseTokenClaims(input)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", server.ErrUnauthorized, err)
	}
	if err := c.CheckClaims(curator.DefaultAudience, time.Now().Unix()); err != nil {
		return nil, fmt.Errorf("%w: %w", server.ErrUnauthorized, err)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	p, ok := is.pods[c.K8s.Pod.UID]
	if !ok || p.Deleted {
		return nil, fmt.Errorf("%w: pod %s has been deleted", server.ErrUnauthorized, c.K8s.Pod.Name)
	}
	return &server.PodIdentity{Namespace: p.Namespace, ServiceAccount: p.SA, PodName: p.Name, PodUID: p.UID,
		NodeName: p.Node, PodIPs: []netip.Addr{p.IP}}, nil
}

// A KeyMaker returns an RBE key for a slot, in the encoding the scheme
// under test expects.
type KeyMaker func(slot int) (pk, helpers []byte, err error)

// A Workload is a registrant: a TLS key and the RBE keys it made.
type Workload struct {
	TLS    ed25519.PrivateKey
	TLSDER []byte
	IP     netip.Addr
	Token  string
	// AgentToken is the node agent's own token, sent along for the
	// curator's node check.
	AgentToken string
}

// NewWorkload returns a workload with a fresh Ed25519 TLS key.
func NewWorkload(tb testing.TB, token string, ip netip.Addr) *Workload {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		tb.Fatal(err)
	}
	return &Workload{TLS: k, TLSDER: der, IP: ip, Token: token}
}

// RegisterRequest builds a signed registration request for a reserved slot.
func (w *Workload) RegisterRequest(block, slot uint32, mk KeyMaker) (*server.KeyRequest, error) {
	pk, helpers, err := mk(int(slot))
	if err != nil {
		return nil, err
	}
	e := &curator.Entry{Kind: curator.KindRegistration, ID: curator.IDFromToken(w.Token), PrevIndex: curator.NoPrev,
		RBEKey: pk, RBEHelpers: helpers, TLSKey: w.TLSDER, PodIP: w.IP.AsSlice()}
	sig, err := curator.SignPoP(w.TLS, curator.PoPMessage(e))
	if err != nil {
		return nil, err
	}
	return &server.KeyRequest{Token: w.Token, AgentToken: w.AgentToken, Block: block, Slot: slot, RBEKey: pk, RBEHelpers: helpers,
		TLSKey: w.TLSDER, PodIP: w.IP.String(), PoPSig: sig}, nil
}

// ChangeRequest builds a rotation (to a new TLS key and RBE key) or a
// revocation of the workload's current entry prev, signed with the
// current TLS key. A rotation replaces w's TLS key.
func (w *Workload) ChangeRequest(kind curator.Kind, block, slot uint32, prev uint64, mk KeyMaker) (*server.KeyRequest, error) {
	id := curator.IDFromToken(w.Token)
	req := &server.KeyRequest{ID: &id, PrevIndex: prev, Block: block, Slot: slot, PodIP: w.IP.String()}
	e := &curator.Entry{Kind: kind, ID: id, PrevIndex: prev, PodIP: w.IP.AsSlice()}
	old := w.TLS
	if kind == curator.KindRotation {
		pk, helpers, err := mk(int(slot))
		if err != nil {
			return nil, err
		}
		nw := NewWorkload(nil, w.Token, w.IP)
		e.RBEKey, e.RBEHelpers = pk, helpers
		req.RBEKey, req.RBEHelpers = pk, helpers
		w.TLS, w.TLSDER = nw.TLS, nw.TLSDER
	}
	if kind == curator.KindRevocation {
		der, _ := x509.MarshalPKIXPublicKey(old.Public())
		w.TLSDER = der
	}
	e.TLSKey, req.TLSKey = w.TLSDER, w.TLSDER
	var err error
	if req.OldKeySig, err = curator.SignPoP(old, curator.PoPMessage(e)); err != nil {
		return nil, err
	}
	if kind == curator.KindRotation {
		if req.PoPSig, err = curator.SignPoP(w.TLS, curator.PoPMessage(e)); err != nil {
			return nil, err
		}
	}
	return req, nil
}
