package rbescheme_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/rbescheme"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
)

func apply(t *testing.T, s *curator.State, e *curator.Entry) error {
	t.Helper()
	b, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return s.Apply(e, tlog.RecordHash(b))
}

func ceremony(t *testing.T, n, count int) []rbe.Contribution {
	crs, err := rbe.NewCeremony(n)
	if err != nil {
		t.Fatal(err)
	}
	var out []rbe.Contribution
	for range count {
		next, proof, err := rbe.Contribute(crs, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rbe.Contribution{CRS: next, Proof: proof})
		crs = next
	}
	return out
}

func registration(t *testing.T, crs *rbe.CRS, slot int) *curator.Entry {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	sk, _ := rbe.NewSecretKey(rand.Reader)
	pk, err := crs.KeyGen(sk, slot)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := pk.MarshalBinary()
	h, _ := json.Marshal(map[string]string{"alg": "RS256"})
	c, _ := json.Marshal(map[string]any{"aud": curator.DefaultAudience, "exp": time.Now().Add(time.Hour).Unix(),
		"kubernetes.io": map[string]any{"pod": map[string]string{"name": "p", "uid": "u"}, "node": map[string]string{"name": "n"}}})
	e := &curator.Entry{Kind: curator.KindRegistration, TimestampMS: uint64(time.Now().UnixMilli()), ID: curator.ID{byte(slot)},
		PrevIndex: curator.NoPrev, Slot: uint32(slot), RBEKey: enc, TLSKey: der, PodIP: []byte{10, 0, 0, 1},
		TokenClaims: []byte(base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c))}
	e.PoPSig, _ = curator.SignPoP(k, curator.PoPMessage(e))
	return e
}

func TestCeremonyThenRegistration(t *testing.T) {
	contribs := ceremony(t, 8, 2)
	final := contribs[len(contribs)-1].CRS
	s := curator.NewState(curator.StateConfig{Scheme: rbescheme.New(final)})
	for i, c := range contribs {
		enc, err := rbescheme.EncodeContribution(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := apply(t, s, &curator.Entry{Kind: curator.KindCeremony, Ceremony: enc}); err != nil {
			t.Fatalf("contribution %d: %v", i, err)
		}
	}
	if err := apply(t, s, registration(t, final, 1)); err != nil {
		t.Fatalf("registration after the ceremony: %v", err)
	}
	enc, _ := rbescheme.EncodeContribution(contribs[0])
	if err := s.Check(&curator.Entry{Kind: curator.KindCeremony, TimestampMS: s.LastTimestamp(), Ceremony: enc}); err == nil || !strings.Contains(err.Error(), "after the first registration") {
		t.Fatalf("Check(contribution after a registration) = %v", err)
	}
	// Digest and opening are real group elements that verify.
	b := s.Block(0)
	if len(b.Digest()) != rbe.G1Size {
		t.Fatalf("digest has %d bytes, want %d", len(b.Digest()), rbe.G1Size)
	}
}

func TestCeremonyRejectsBadContributions(t *testing.T) {
	contribs := ceremony(t, 8, 2)
	s := curator.NewState(curator.StateConfig{Scheme: rbescheme.New(contribs[1].CRS)})
	// Skipping the first contribution breaks the chain.
	enc, _ := rbescheme.EncodeContribution(contribs[1])
	if err := apply(t, s, &curator.Entry{Kind: curator.KindCeremony, Ceremony: enc}); err == nil {
		t.Fatal("contribution that does not extend the starting point was accepted")
	}
	// A registration under another CRS than the ceremony's result.
	enc, _ = rbescheme.EncodeContribution(contribs[0])
	if err := apply(t, s, &curator.Entry{Kind: curator.KindCeremony, Ceremony: enc}); err != nil {
		t.Fatal(err)
	}
	err := apply(t, s, registration(t, contribs[1].CRS, 1))
	if err == nil || !strings.Contains(err.Error(), "not the ceremony's result") {
		t.Fatalf("registration under a CRS the ceremony did not produce = %v", err)
	}
}

func TestHelperCheckRejectsTamperedKey(t *testing.T) {
	crs := ceremony(t, 8, 1)[0].CRS
	s := curator.NewState(curator.StateConfig{Scheme: rbescheme.New(crs)})
	e := registration(t, crs, 2)
	e.RBEKey[len(e.RBEKey)-1] ^= 1 // corrupt the last helper value
	if err := apply(t, s, e); err == nil || !strings.Contains(err.Error(), "RBE key") {
		t.Fatalf("Apply(tampered helper) = %v, want an RBE key error", err)
	}
	e = registration(t, crs, 2)
	e.Slot = 3
	if err := apply(t, s, e); err == nil || !strings.Contains(err.Error(), "made for slot 2") {
		t.Fatalf("Apply(key for another slot) = %v", err)
	}
}
