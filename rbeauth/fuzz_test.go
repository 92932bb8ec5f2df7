package rbeauth

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
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

// sampleStaple is a well-formed staple with arbitrary contents.
func sampleStaple(f *testing.F) []byte {
	s := &Staple{
		Bundle: []byte("bundle"), Block: 3, Version: 7, Digest: make([]byte, 48),
		BlockProof: tlog.RecordProof{{1}, {2}}, Opening: make([]byte, 48),
	}
	b, err := s.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	return b
}

func FuzzParseStaple(f *testing.F) {
	good := sampleStaple(f)
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add(append(append([]byte{}, good...), 0))
	f.Add([]byte("MZS1"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseStaple(data)
		if err != nil {
			if !errors.Is(err, ErrRegistrationMissing) {
				t.Fatalf("ParseStaple error %v does not wrap ErrRegistrationMissing", err)
			}
			return
		}
		// The encoding is canonical: what parses re-encodes to the input.
		again, err := s.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary of a parsed staple: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("staple does not round-trip:\n in  %x\n out %x", data, again)
		}
	})
}

// FuzzVerifyRegistration feeds arbitrary stapled bytes through the
// registry's offline checks (staple, bundle, checkpoint and membership
// parsing); every rejection must map to a verification sentinel.
func FuzzVerifyRegistration(f *testing.F) {
	_, vkey, err := note.GenerateKey(rand.Reader, "fuzz.test/log")
	if err != nil {
		f.Fatal(err)
	}
	policy, err := curator.NewPolicy("fuzz.test/log", vkey, nil, 0)
	if err != nil {
		f.Fatal(err)
	}
	crs, err := rbe.NewCeremony(4)
	if err != nil {
		f.Fatal(err)
	}
	reg, err := NewCuratorRegistry(policy, crs, &curator.Client{URL: "http://127.0.0.1:1"}, func() *curator.Checkpoint { return nil })
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sampleStaple(f))
	f.Add([]byte("MZS1\x00\x01x"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := reg.VerifyRegistration(context.Background(), RegistrationClaim{
			Token: "a.b.c", PeerIP: netip.MustParseAddr("198.18.0.1"), TLSPublicKey: []byte("key"), Bundle: data,
		})
		if err == nil {
			t.Fatal("an unsigned staple was accepted")
		}
		if Reason(err) == "other" {
			t.Fatalf("rejection %v maps to no verification sentinel", err)
		}
	})
}
