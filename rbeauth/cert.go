package rbeauth

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

// OIDTokenExtension identifies the non-critical certificate extension that
// carries the workload's pod-bound service-account token as an ASN.1
// UTF8String. It lies under the 2.25 arc (ITU-T X.667), whose arcs need no
// registration, with a random arc below 2^31 because Go's certificate parser
// rejects larger OID components.
//
// NOTE: X.667 expects a full 128-bit UUID under 2.25; a 31-bit random arc
// makes a clash unlikely but not negligible. A registered enterprise arc
// should replace it before the format is frozen.
var OIDTokenExtension = asn1.ObjectIdentifier{2, 25, 1045576376}

// certificateBackdate tolerates clock skew between nodes.
const certificateBackdate = time.Minute

// NewCertificate mints the workload's self-signed certificate: the SPIFFE
// URI SAN, the token in its extension, and a lifetime that ends with the
// token's. No CA signs it. Peers trust it only through the checks in
// Verifier.
func NewCertificate(key *ecdsa.PrivateKey, id Identity, token string, notAfter time.Time) ([]byte, error) {
	tokenDER, err := asn1.MarshalWithParams(token, "utf8")
	if err != nil {
		return nil, fmt.Errorf("mint certificate for %s: encode token: %w", id, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("mint certificate for %s: serial: %w", id, err)
	}
	now := time.Now()
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{},
		NotBefore:             now.Add(-certificateBackdate),
		NotAfter:              notAfter,
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		ExtraExtensions:       []pkix.Extension{{Id: OIDTokenExtension, Value: tokenDER}},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("mint certificate for %s: %w", id, err)
	}
	return der, nil
}

// certificateFacts holds the fields the verifier reads from a peer certificate.
type certificateFacts struct {
	identity Identity
	token    string
	// publicKey is the DER SubjectPublicKeyInfo, the TLS key that the
	// registration binds.
	publicKey []byte
}

// inspectCertificate checks the shape of a mazu workload certificate and
// extracts its identity, token and key. Possession of the key is already
// proven by the TLS handshake.
func inspectCertificate(cert *x509.Certificate, now time.Time) (*certificateFacts, error) {
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return nil, fmt.Errorf("%w: valid from %s to %s", ErrCertificateInvalid, cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if len(cert.URIs) != 1 {
		return nil, fmt.Errorf("%w: %d URI SANs, want exactly one SPIFFE identity", ErrCertificateInvalid, len(cert.URIs))
	}
	id, err := ParseIdentity(cert.URIs[0].String())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCertificateInvalid, err)
	}
	var token string
	found := false
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(OIDTokenExtension) {
			continue
		}
		if found {
			return nil, fmt.Errorf("%w: token extension appears twice", ErrCertificateInvalid)
		}
		found = true
		rest, err := asn1.UnmarshalWithParams(ext.Value, &token, "utf8")
		if err != nil || len(rest) != 0 {
			return nil, fmt.Errorf("%w: token extension is not a single UTF8String", ErrCertificateInvalid)
		}
	}
	if !found {
		return nil, fmt.Errorf("%w: no token extension (%s); the peer may be a CA-issued Istio workload", ErrCertificateInvalid, OIDTokenExtension)
	}
	return &certificateFacts{identity: id, token: token, publicKey: cert.RawSubjectPublicKeyInfo}, nil
}
