package threat

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
)

// craftCertificate self-signs a certificate with key for the URI SANs uris,
// carrying the extra extensions exts, valid until notAfter. It builds the
// malformed variants of a workload certificate, which
// rbeauth.NewCertificate does not make.
func craftCertificate(t *testing.T, key *ecdsa.PrivateKey, uris []*url.URL, exts []pkix.Extension, notAfter time.Time) []byte {
	t.Helper()
	template := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		URIs: uris, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, ExtraExtensions: exts,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("craft a certificate: %v", err)
	}
	return der
}

// tokenExtension is the token certificate extension with value as its
// DER contents.
func tokenExtension(value []byte) pkix.Extension {
	return pkix.Extension{Id: rbeauth.OIDTokenExtension, Value: value}
}

func utf8DER(t *testing.T, s string) []byte {
	t.Helper()
	b, err := asn1.MarshalWithParams(s, "utf8")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAttackMalformedPeerInputs sends malformed certificates, token
// extensions and proof bundles to an agent's HBONE port over real TLS
// handshakes.
//
// Attack: a peer at a registered workload's IP, with its token, key and
// staple, presents broken variants of each, looking for a parser that
// panics or accepts.
//
// Defence: the verifier checks the certificate's shape and the encodings of
// the token and the staple before anything else, and rejects each variant
// with its reason (certificate_invalid, token_malformed,
// registration_missing). Go's TLS stack rejects a certificate that does not
// parse. The agent keeps serving: the genuine identity is accepted
// afterwards and genuine traffic still flows.
func TestAttackMalformedPeerInputs(t *testing.T) {
	privtest.Require(t)
	m := sharedMesh(t)
	s := newVictimSetup(t, m, "malformed")
	prober := newBarePod(t, m, nil, testbedPodSpec(s.ns, "prober"))
	mi := newManagedIdentity(t, m, prober)
	genuine := mi.certificate(t)
	staple := genuine.SignedCertificateTimestamps[0]
	key := genuine.PrivateKey.(*ecdsa.PrivateKey)
	token, _ := certificateToken(t, genuine)
	id := podIdentity(prober)
	target := hboneAddr(s.web)
	expectProbeAccepted(t, m.agents[1], prober, target, genuine)

	future := time.Now().Add(10 * time.Minute)
	spiffe := []*url.URL{id.URL()}
	tokenExt := tokenExtension(utf8DER(t, token))
	withToken := func(tok string) []byte {
		return craftCertificate(t, key, spiffe, []pkix.Extension{tokenExtension(utf8DER(t, tok))}, future)
	}
	other, _ := url.Parse("spiffe://" + id.TrustDomain + "/ns/other/sa/other")
	web, _ := url.Parse("https://web.example/")
	certificates := []struct {
		name   string
		der    []byte
		reason string
	}{
		{"no token extension", craftCertificate(t, key, spiffe, nil, future), "certificate_invalid"},
		// Go's certificate parser rejects duplicate extensions, so the TLS
		// stack rejects this one before the verifier is called.
		{"token extension twice", craftCertificate(t, key, spiffe, []pkix.Extension{tokenExt, tokenExt}, future), ""},
		{"token extension not a UTF8String", craftCertificate(t, key, spiffe, []pkix.Extension{tokenExtension([]byte{0x04, 0x03, 'a', '.', 'b'})}, future), "certificate_invalid"},
		{"token extension with trailing bytes", craftCertificate(t, key, spiffe, []pkix.Extension{tokenExtension(append(utf8DER(t, token), 0))}, future), "certificate_invalid"},
		{"two URI SANs", craftCertificate(t, key, append(spiffe, other), []pkix.Extension{tokenExt}, future), "certificate_invalid"},
		{"URI SAN not SPIFFE", craftCertificate(t, key, []*url.URL{web}, []pkix.Extension{tokenExt}, future), "certificate_invalid"},
		{"expired", craftCertificate(t, key, spiffe, []pkix.Extension{tokenExt}, time.Now().Add(-time.Minute)), "certificate_invalid"},
		{"token of two parts", withToken("e30.e30"), "token_malformed"},
		{"token header not base64url", withToken("!!!." + strings.SplitN(token, ".", 2)[1]), "token_malformed"},
		{"token claims not JSON", withToken("e30.bm90IGpzb24.c2ln"), "token_malformed"},
		{"token beyond 16 KiB", withToken(strings.Repeat("a", 17<<10) + ".e30.c2ln"), "token_malformed"},
	}
	certificates = append(certificates, struct {
		name   string
		der    []byte
		reason string
	}{"DER that does not parse", []byte("\x30\x03\x02\x01"), ""})
	for _, c := range certificates {
		t.Run("certificate "+c.name, func(t *testing.T) {
			cert := tls.Certificate{Certificate: [][]byte{c.der}, PrivateKey: key}
			if c.reason != "" {
				expectProbeRejected(t, m.agents[1], prober, target, cert, staple, rbeALPN, c.reason)
				return
			}
			before := m.agents[1].accepted(t)
			res := probeHBONE(t, prober, target, cert, staple, rbeALPN)
			if res.Connected {
				t.Fatal("the server let the connection through")
			}
			t.Logf("rejected by the TLS stack: %v", res.Err)
			if after := m.agents[1].accepted(t); after != before {
				t.Fatalf("web's agent counted %v accepted peers during the probe", after-before)
			}
		})
	}

	parsed, err := rbeauth.ParseStaple(staple)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := curator.ParseBundle(parsed.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	// withStaple and withBundle encode the genuine staple with one field
	// changed.
	withStaple := func(change func(s *rbeauth.Staple)) []byte {
		changed := *parsed
		change(&changed)
		raw, err := changed.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	withBundle := func(change func(b *curator.Bundle)) []byte {
		changed := *bundle
		change(&changed)
		raw, err := changed.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return withStaple(func(s *rbeauth.Staple) { s.Bundle = raw })
	}
	random := make([]byte, 300)
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	staples := []struct {
		name   string
		sct    [][]byte
		reason []string
	}{
		{"none", nil, []string{"registration_missing"}},
		{"two", [][]byte{staple, staple}, []string{"registration_missing"}},
		{"random bytes", [][]byte{random}, []string{"registration_missing"}},
		{"random bytes after the magic", [][]byte{append([]byte("MZS1"), random...)}, []string{"registration_missing"}},
		{"truncated", [][]byte{staple[:len(staple)/2]}, []string{"registration_missing"}},
		{"trailing byte", [][]byte{append(append([]byte{}, staple...), 0)}, []string{"registration_missing"}},
		{"bundle of random bytes", [][]byte{withStaple(func(s *rbeauth.Staple) { s.Bundle = random })}, []string{"registration_missing"}},
		{"checkpoint of random bytes", [][]byte{withBundle(func(b *curator.Bundle) { b.Checkpoint = random })}, []string{"registration_missing", "checkpoint_quorum"}},
		{"entry index beyond the tree", [][]byte{withBundle(func(b *curator.Bundle) { b.Index = 1 << 40 })}, []string{"registration_missing"}},
		{"state entry of random bytes", [][]byte{withBundle(func(b *curator.Bundle) { b.StateEntry = random })}, []string{"registration_missing"}},
		{"digest not a curve point", [][]byte{withStaple(func(s *rbeauth.Staple) { s.Digest = random[:48] })}, []string{"registration_missing"}},
		{"opening not a curve point", [][]byte{withStaple(func(s *rbeauth.Staple) { s.Opening = random[:48] })}, []string{"registration_missing"}},
	}
	for _, c := range staples {
		t.Run("staple "+c.name, func(t *testing.T) {
			cert := genuine
			cert.SignedCertificateTimestamps = c.sct
			expectProbeRejected(t, m.agents[1], prober, target, cert, nil, rbeALPN, c.reason...)
		})
	}

	if ok, why := m.agents[1].agent.Ready(); !ok {
		t.Fatalf("web's agent is not ready after the malformed handshakes: %s", why)
	}
	expectProbeAccepted(t, m.agents[1], prober, target, genuine)
	expectOK(t, s.client, webURL(s.web), 2, "hello from web")
}
