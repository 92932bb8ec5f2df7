package rbeauth

import (
	"context"
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

// ServerConfig returns the HBONE server configuration. Each connection gets
// its own configuration so that the verifier has the client's address and
// the certificate matches the local workload the client dialled.
func (v *Verifier) ServerConfig(getCert CertificateFunc) *tls.Config {
	cfg := baseConfig()
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		peerIP, err := addrOf(hello.Conn.RemoteAddr())
		if err != nil {
			return nil, err
		}
		localIP, err := addrOf(hello.Conn.LocalAddr())
		if err != nil {
			return nil, err
		}
		cert, err := getCert(localIP)
		if err != nil {
			return nil, fmt.Errorf("server certificate for %s: %w", localIP, err)
		}
		conn := baseConfig()
		conn.Certificates = []tls.Certificate{*cert}
		// The client presents a self-signed certificate; VerifyConnection
		// does every check.
		conn.ClientAuth = tls.RequireAnyClientCert
		conn.VerifyConnection = func(cs tls.ConnectionState) error {
			ctx, cancel := context.WithTimeout(context.Background(), verifyTimeout)
			defer cancel()
			_, err := v.VerifyPeer(ctx, cs, peerIP, nil)
			return err
		}
		return conn, nil
	}
	return cfg
}

// ClientConfig returns the configuration for one HBONE connection from the
// local workload whose certificate cert returns, to peerIP, which must prove
// one of the expected identities.
func (v *Verifier) ClientConfig(cert func() (*tls.Certificate, error), peerIP netip.Addr, expected []Identity) *tls.Config {
	cfg := baseConfig()
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert() }
	// There is no CA chain to check: VerifyConnection does every check. No
	// server name is sent, as in ztunnel.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		ctx, cancel := context.WithTimeout(context.Background(), verifyTimeout)
		defer cancel()
		_, err := v.VerifyPeer(ctx, cs, peerIP, expected)
		return err
	}
	return cfg
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
