package tunnel

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"
)

// testCA issues workload certificates with SPIFFE URI SANs.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(tb testing.TB) *testCA {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mazu test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) issue(tb testing.TB, id Identity) tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	u, err := url.Parse(string(id))
	if err != nil {
		tb.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		URIs:         []*url.URL{u},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// serverTLS returns an mTLS server config for id.
func (ca *testCA) serverTLS(tb testing.TB, id Identity) func() (*tls.Config, error) {
	cert := ca.issue(tb, id)
	conf := &tls.Config{
		Certificates:     []tls.Certificate{cert},
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        ca.pool,
		CurvePreferences: []tls.CurveID{tls.X25519},
	}
	return func() (*tls.Config, error) { return conf, nil }
}

// clientTLS returns a client config factory that presents src's certificate
// and requires the server to hold dst as a URI SAN.
func (ca *testCA) clientTLS(tb testing.TB) func(key PoolKey) (*tls.Config, error) {
	var mu sync.Mutex
	certs := map[Identity]tls.Certificate{}
	return func(key PoolKey) (*tls.Config, error) {
		src, dst := key.SrcIdentity, key.DstIdentity
		mu.Lock()
		cert, ok := certs[src]
		if !ok {
			cert = ca.issue(tb, src)
			certs[src] = cert
		}
		mu.Unlock()
		return &tls.Config{
			Certificates:       []tls.Certificate{cert},
			InsecureSkipVerify: true, // verified below: chain to the CA and exact SPIFFE SAN, no host name
			CurvePreferences:   []tls.CurveID{tls.X25519},
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("no server certificate")
				}
				opts := x509.VerifyOptions{Roots: ca.pool, Intermediates: x509.NewCertPool()}
				for _, c := range cs.PeerCertificates[1:] {
					opts.Intermediates.AddCert(c)
				}
				if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
					return err
				}
				if !slices.Contains(identities(cs.PeerCertificates), dst) {
					return fmt.Errorf("server identity %v, want %s", identities(cs.PeerCertificates), dst)
				}
				return nil
			},
		}, nil
	}
}

const (
	idClient = Identity("spiffe://cluster.local/ns/client/sa/default")
	idServer = Identity("spiffe://cluster.local/ns/server/sa/default")
)

// startEcho runs a TCP echo server on ln until the test ends.
func startEcho(tb testing.TB, ln net.Listener) {
	tb.Helper()
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
}

// hboneServer starts an HBONE server on ln with the given config tweaks.
func hboneServer(tb testing.TB, ca *testCA, ln net.Listener, cfg InboundConfig) *Server {
	tb.Helper()
	if cfg.TLSConfig == nil {
		cfg.TLSConfig = ca.serverTLS(tb, idServer)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return srv
}

func newTestPool(tb testing.TB, ca *testCA, cfg ClientConfig) *Pool {
	tb.Helper()
	if cfg.TLSConfig == nil {
		cfg.TLSConfig = ca.clientTLS(tb)
	}
	p, err := NewPool(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

func mustListen(tb testing.TB, addr string) net.Listener {
	tb.Helper()
	ln, err := Listen(context.Background(), addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

func apOf(ln net.Listener) netip.AddrPort { return addrPortOf(ln.Addr()) }
