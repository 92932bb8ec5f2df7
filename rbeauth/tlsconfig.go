package rbeauth

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// ALPN is the protocol HBONE negotiates, as ztunnel does.
const ALPN = "h2"

// verifyTimeout bounds the Kubernetes and registry calls one handshake may
// make on a cold cache.
const verifyTimeout = 5 * time.Second

// CertificateFunc returns the certificate of the local workload at addr,
// with its current proof bundle in SignedCertificateTimestamps.
type CertificateFunc func(local netip.Addr) (*tls.Certificate, error)

// baseConfig holds the settings both ends share. TLS 1.3 only and ALPN h2
// follow ztunnel. Session resumption is off, as in ztunnel, so every
// connection runs a full handshake and VerifyConnection.
//
// NOTE: Go does not let a program choose TLS 1.3 cipher suites. ztunnel
// offers only AES-256-GCM and AES-128-GCM; Go also offers ChaCha20-Poly1305
// but prefers AES-GCM on CPUs with AES instructions, so mazu-to-mazu and
// mazu-to-ztunnel connections negotiate AES-GCM there.
func baseConfig() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             []string{ALPN},
		SessionTicketsDisabled: true,
	}
}

// ServerConfig returns the strict-mode HBONE server configuration: RBE
// only. Each connection gets its own configuration so that the verifier has
// the client's address and the certificate matches the local workload the
// client dialled. It selects ALPNRBE when the client offers it, and "h2"
// otherwise, still with RBE, so a peer that trusts only the Istio CA fails.
func (v *Verifier) ServerConfig(getCert CertificateFunc) *tls.Config {
	return v.serverConfig(nil, getCert, nil)
}

// ClientConfig returns the strict-mode configuration for one HBONE
// connection from the local workload whose certificate cert returns, to
// peerIP, which must prove one of the expected identities with RBE. It
// offers ALPNRBE before "h2".
func (v *Verifier) ClientConfig(cert func() (*tls.Certificate, error), peerIP netip.Addr, expected []Identity) *tls.Config {
	return v.clientConfig(nil, cert, nil, peerIP, expected)
}

// PeerIdentity returns the identity of a peer that a configuration from this
// package has verified.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.PeerCertificates) == 0 || len(cs.PeerCertificates[0].URIs) != 1 {
		return Identity{}, fmt.Errorf("%w: no single SPIFFE URI SAN", ErrCertificateInvalid)
	}
	return ParseIdentity(cs.PeerCertificates[0].URIs[0].String())
}

func addrOf(a net.Addr) (netip.Addr, error) {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("parse address %s: %w", a, err)
	}
	return ap.Addr().Unmap(), nil
}
