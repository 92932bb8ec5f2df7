package rbeauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"
	"time"
)

func FuzzParseToken(f *testing.F) {
	f.Add("eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ.eyJhdWQiOlsibWF6dSJdLCJleHAiOjF9.AAAA")
	f.Add("a.b.c")
	f.Add("..")
	f.Add(strings.Repeat("A", 100) + "." + strings.Repeat("B", 100) + ".")
	f.Fuzz(func(t *testing.T, token string) {
		parsed, err := parseToken(token)
		if err != nil {
			return
		}
		// A parsed token has three parts and a signing input that is the
		// first two joined by a dot.
		if strings.Count(token, ".") != 2 || !strings.HasPrefix(token, string(parsed.signed)) {
			t.Fatalf("parseToken accepted %q with signing input %q", token, parsed.signed)
		}
		_ = parsed.claims.checkTime(time.Now(), 0)
	})
}

func FuzzInspectCertificate(f *testing.F) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	id := Identity{TrustDomain: "cluster.local", Namespace: "ns", ServiceAccount: "sa"}
	der, err := NewCertificate(key, id, "header.payload.signature", time.Now().Add(time.Hour))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(der)
	f.Add(der[:len(der)/2])
	f.Fuzz(func(t *testing.T, der []byte) {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		facts, err := inspectCertificate(cert, time.Now())
		if err != nil {
			return
		}
		if facts.identity.TrustDomain == "" || facts.identity.Namespace == "" || facts.identity.ServiceAccount == "" {
			t.Fatalf("inspectCertificate accepted an incomplete identity %+v", facts.identity)
		}
	})
}

func FuzzParseJWKS(f *testing.F) {
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","kid":"a","x":"AAAA","y":"AAAA"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","kid":"b","n":"AQAB","e":"AQAB"}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		keys, err := parseJWKS(raw)
		if err != nil {
			return
		}
		for kid, key := range keys {
			if key == nil {
				t.Fatalf("parseJWKS returned a nil key for %q", kid)
			}
		}
	})
}

func FuzzParseIdentity(f *testing.F) {
	f.Add("spiffe://cluster.local/ns/default/sa/app")
	f.Add("spiffe://td/ns//sa/x")
	f.Add("http://x")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseIdentity(s)
		if err != nil {
			return
		}
		again, err := ParseIdentity(id.String())
		if err != nil || again != id {
			t.Fatalf("identity %q does not round-trip: %+v -> %q -> %+v, %v", s, id, id.String(), again, err)
		}
	})
}
