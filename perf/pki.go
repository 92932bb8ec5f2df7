package perf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"time"
)

// Identities the proxies present. Both sides of every TLS and HBONE variant
// use certificates from one ECDSA P-256 CA made for the run.
const (
	clientID = "spiffe://cluster.local/ns/perf/sa/client"
	serverID = "spiffe://cluster.local/ns/perf/sa/server"
)

// PKI is the run's CA and the two leaf certificates, PEM encoded so that
// child processes receive them in their configuration.
type PKI struct {
	CAPEM         string `json:"ca"`
	ClientCertPEM string `json:"client_cert"`
	ClientKeyPEM  string `json:"client_key"`
	ServerCertPEM string `json:"server_cert"`
	ServerKeyPEM  string `json:"server_key"`
}

// NewPKI creates a CA and issues the client and server leaves.
func NewPKI() (*PKI, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mazu-perf CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	p := &PKI{CAPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))}
	issue := func(id string, serial int64) (string, string, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", "", fmt.Errorf("generate key for %s: %w", id, err)
		}
		u, err := url.Parse(id)
		if err != nil {
			return "", "", fmt.Errorf("parse identity %s: %w", id, err)
		}
		leaf := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(48 * time.Hour),
			URIs:         []*url.URL{u},
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
		if err != nil {
			return "", "", fmt.Errorf("issue certificate for %s: %w", id, err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return "", "", fmt.Errorf("encode key for %s: %w", id, err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})), nil
	}
	if p.ClientCertPEM, p.ClientKeyPEM, err = issue(clientID, 2); err != nil {
		return nil, err
	}
	if p.ServerCertPEM, p.ServerKeyPEM, err = issue(serverID, 3); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *PKI) pool() (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(p.CAPEM)) {
		return nil, errors.New("parse CA PEM: no certificate found")
	}
	return pool, nil
}

// ServerTLS returns the mTLS server configuration: the server leaf, a
// required client certificate from the CA, X25519 only so that runs compare
// like for like.
func (p *PKI) ServerTLS() (*tls.Config, error) {
	cert, err := tls.X509KeyPair([]byte(p.ServerCertPEM), []byte(p.ServerKeyPEM))
	if err != nil {
		return nil, fmt.Errorf("load server key pair: %w", err)
	}
	pool, err := p.pool()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates:     []tls.Certificate{cert},
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        pool,
		MinVersion:       tls.VersionTLS13,
		CurvePreferences: []tls.CurveID{tls.X25519},
	}, nil
}

// ClientTLS returns the mTLS client configuration: it presents the client
// leaf and requires the server's chain to reach the CA and carry serverID as
// a URI SAN (SPIFFE identities have no host name to check).
func (p *PKI) ClientTLS() (*tls.Config, error) {
	cert, err := tls.X509KeyPair([]byte(p.ClientCertPEM), []byte(p.ClientKeyPEM))
	if err != nil {
		return nil, fmt.Errorf("load client key pair: %w", err)
	}
	pool, err := p.pool()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // VerifyConnection checks the chain and the SPIFFE SAN
		MinVersion:         tls.VersionTLS13,
		CurvePreferences:   []tls.CurveID{tls.X25519},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("verify server: no certificate")
			}
			opts := x509.VerifyOptions{Roots: pool, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
				return fmt.Errorf("verify server chain: %w", err)
			}
			ok := slices.ContainsFunc(cs.PeerCertificates[0].URIs, func(u *url.URL) bool { return u.String() == serverID })
			if !ok {
				return fmt.Errorf("verify server: identity %s missing", serverID)
			}
			return nil
		},
	}, nil
}
