package rbeauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/netip"
	"testing"
	"time"

	bls12381 "github.com/cloudflare/circl/ecc/bls12381"

	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// addrConn reports the pod addresses for a loopback connection, so that
// the verifier checks the pods' IPs while the bytes stay on 127.0.0.1.
type addrConn struct {
	net.Conn
	local, remote net.Addr
}

func (c addrConn) LocalAddr() net.Addr  { return c.local }
func (c addrConn) RemoteAddr() net.Addr { return c.remote }

// handshakeBench accepts loopback connections with serverCfg and runs one
// full TLS handshake per iteration from clientCfg, waiting for both sides.
type handshakeBench struct {
	ln      net.Listener
	results chan error
}

func startHandshakeServer(b *testing.B, serverCfg *tls.Config, serverIP, clientIP netip.Addr) *handshakeBench {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hb := &handshakeBench{ln: ln, results: make(chan error, 1)}
	go func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			conn := addrConn{Conn: raw,
				local:  &net.TCPAddr{IP: serverIP.AsSlice(), Port: 15008},
				remote: &net.TCPAddr{IP: clientIP.AsSlice(), Port: 40000},
			}
			tc := tls.Server(conn, serverCfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			hb.results <- tc.HandshakeContext(ctx)
			cancel()
			tc.Close()
		}
	}()
	b.Cleanup(func() { ln.Close() })
	return hb
}

func (hb *handshakeBench) run(b *testing.B, clientCfg *tls.Config) {
	b.Helper()
	raw, err := net.Dial("tcp", hb.ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	tc := tls.Client(raw, clientCfg)
	clientErr := tc.Handshake()
	serverErr := <-hb.results
	tc.Close()
	if clientErr != nil || serverErr != nil {
		b.Fatalf("handshake failed: client %v, server %v", clientErr, serverErr)
	}
}

// staticCA is a plain mTLS setup: one CA signs both leaves.
type staticCA struct {
	server, client *tls.Config
}

func newStaticCA(b *testing.B) *staticCA {
	b.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	caTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		b.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	leaf := func(serial int64, usage x509.ExtKeyUsage) tls.Certificate {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		template := &x509.Certificate{
			SerialNumber: big.NewInt(serial), DNSNames: []string{"server.bench.test"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, template, ca, &key.PublicKey, caKey)
		if err != nil {
			b.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	server := baseConfig()
	server.Certificates = []tls.Certificate{leaf(2, x509.ExtKeyUsageServerAuth)}
	server.ClientAuth = tls.RequireAndVerifyClientCert
	server.ClientCAs = pool
	client := baseConfig()
	client.Certificates = []tls.Certificate{leaf(3, x509.ExtKeyUsageClientAuth)}
	client.RootCAs = pool
	client.ServerName = "server.bench.test"
	return &staticCA{server: server, client: client}
}

// BenchmarkHandshake compares, in one run, a full TLS 1.3 handshake with
// ECDSA P-256 keys over loopback between two goroutines of this process:
//
//   - plain-mtls: a static CA, chain verification on both sides;
//   - mazu-warm: both verifiers have the peer's verdict cached;
//   - mazu-cold-server: the server verifies the client from scratch;
//   - mazu-cold: both sides verify from scratch (token signature, bundle
//     and cosignatures, key derivation and the RBE membership pairing);
//
// and membership, one RBE membership check (a product of two pairings with
// prepared G2 points), and multi-pairing, one generic two-pair product
// (circl's ProdPairFrac), the unit in which the cold goal is stated.
// Both ends run in this process, so each handshake's time is the CPU of
// both sides. The liveness caches (TokenReview, pod lookup) stay warm in
// every variant; they refresh once per 10 s. The CRS has block size 16.
// handshakeSetup is the state both handshake benchmarks share.
type handshakeSetup struct {
	mazuServer, mazuClient *tls.Config
	plain                  *staticCA
	a, bn                  *meshNode
	serverIP, clientIP     netip.Addr
	// membership runs one RBE membership check on the client's staple.
	membership func() error
	// multiPairing runs one generic two-pair multi-pairing (circl's
	// ProdPairFrac), the unit of the cold-handshake goal.
	multiPairing func()
}

func newHandshakeSetup(b *testing.B) *handshakeSetup {
	b.Helper()
	tb := testbed.Get(b)
	mesh := startMesh(b, tb, nil)
	// The node agent builds the fixed-base tables at start; so does the
	// benchmark, so that key derivation costs what it costs on a node.
	mesh.CRS.Precompute()
	a := newMeshNode(b, tb, mesh, testbed.NewNode(b, tb, "bench-a"))
	bn := newMeshNode(b, tb, mesh, testbed.NewNode(b, tb, "bench-b"))
	clientPod := testbed.NewPod(b, tb, a.node, testbed.PodSpec{Namespace: "bench", Name: "client", ServiceAccount: "client"})
	serverPod := testbed.NewPod(b, tb, bn.node, testbed.PodSpec{Namespace: "bench", Name: "server", ServiceAccount: "server"})
	register(b, tb, a.workloads, clientPod)
	server := register(b, tb, bn.workloads, serverPod)
	// Restaple the client at the latest checkpoint, so that no variant
	// needs the online check for a staple older than the node's.
	a.workloads.mu.Lock()
	clientWL := a.workloads.pods[clientPod.UID]
	a.workloads.mu.Unlock()
	if err := a.workloads.restaple(context.Background(), clientWL); err != nil {
		b.Fatal(err)
	}
	client := currentIdentity(b, a.workloads, clientPod)
	a.view.refresh(b)
	bn.view.refresh(b)

	st, err := ParseStaple(client.cert.SignedCertificateTimestamps[0])
	if err != nil {
		b.Fatal(err)
	}
	var digest rbe.Digest
	if err := digest.UnmarshalBinary(st.Digest); err != nil {
		b.Fatal(err)
	}
	var opening rbe.Opening
	if err := opening.UnmarshalBinary(st.Opening); err != nil {
		b.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(client.cert.Certificate[0])
	if err != nil {
		b.Fatal(err)
	}
	clientWL.mu.Lock()
	slot := int(clientWL.slot)
	clientWL.mu.Unlock()
	pk, err := DerivePublicPoint(mesh.CRS, client.token, clientPod.IP.AsSlice(), leaf.RawSubjectPublicKeyInfo, slot)
	if err != nil {
		b.Fatal(err)
	}
	membership := func() error { return mesh.CRS.VerifyMembership(digest, slot, pk, opening) }
	if err := membership(); err != nil {
		b.Fatal(err)
	}
	var q2 bls12381.G2
	var k bls12381.Scalar
	k.SetUint64(7)
	q2.ScalarMult(&k, bls12381.G2Generator())
	multiPairing := func() {
		bls12381.ProdPairFrac([]*bls12381.G1{pk, pk}, []*bls12381.G2{bls12381.G2Generator(), &q2}, []int{1, -1})
	}

	return &handshakeSetup{
		mazuServer: bn.verifier.ServerConfig(func(netip.Addr) (*tls.Certificate, error) { return &server.cert, nil }),
		mazuClient: a.verifier.ClientConfig(func() (*tls.Certificate, error) { return &client.cert, nil }, serverPod.IP, []Identity{server.id}),
		plain:      newStaticCA(b),
		a:          a, bn: bn,
		serverIP: serverPod.IP, clientIP: clientPod.IP,
		membership: membership, multiPairing: multiPairing,
	}
}

func forgetAll(v *Verifier) { v.verified.remove(func(verifiedKey, verifiedPeer) bool { return true }) }

// BenchmarkHandshake compares, in one run, a full TLS 1.3 handshake with
// ECDSA P-256 keys over loopback between two goroutines of this process:
//
//   - plain-mtls: a static CA, chain verification on both sides;
//   - mazu-warm: both verifiers have the peer's verdict cached;
//   - mazu-cold-server: the server verifies the client from scratch;
//   - mazu-cold: both sides verify from scratch (token signature, bundle
//     and cosignatures, key derivation and the RBE membership pairing);
//
// and membership, one RBE membership check (a product of two pairings with
// prepared G2 points), and multi-pairing, one generic two-pair product
// (circl's ProdPairFrac), the unit in which the cold goal is stated.
// Both ends run in this process, so each handshake's time is the CPU of
// both sides. The liveness caches (TokenReview, pod lookup) stay warm in
// every variant; they refresh once per 10 s. The CRS has block size 16.
func BenchmarkHandshake(b *testing.B) {
	s := newHandshakeSetup(b)
	b.Run("plain-mtls", func(b *testing.B) {
		hb := startHandshakeServer(b, s.plain.server, s.serverIP, s.clientIP)
		b.ReportAllocs()
		for b.Loop() {
			hb.run(b, s.plain.client)
		}
	})
	b.Run("mazu-warm", func(b *testing.B) {
		hb := startHandshakeServer(b, s.mazuServer, s.serverIP, s.clientIP)
		hb.run(b, s.mazuClient)
		calls := s.a.registry.calls.Load() + s.bn.registry.calls.Load()
		b.ReportAllocs()
		for b.Loop() {
			hb.run(b, s.mazuClient)
		}
		if n := s.a.registry.calls.Load() + s.bn.registry.calls.Load(); n != calls {
			b.Fatalf("warm handshakes called the registry %d times", n-calls)
		}
	})
	b.Run("mazu-cold-server", func(b *testing.B) {
		hb := startHandshakeServer(b, s.mazuServer, s.serverIP, s.clientIP)
		b.ReportAllocs()
		for b.Loop() {
			forgetAll(s.bn.verifier)
			hb.run(b, s.mazuClient)
		}
	})
	b.Run("mazu-cold", func(b *testing.B) {
		hb := startHandshakeServer(b, s.mazuServer, s.serverIP, s.clientIP)
		b.ReportAllocs()
		for b.Loop() {
			forgetAll(s.a.verifier)
			forgetAll(s.bn.verifier)
			hb.run(b, s.mazuClient)
		}
	})
	b.Run("membership", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := s.membership(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("multi-pairing", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			s.multiPairing()
		}
	})
}

// BenchmarkHandshakeInterleaved runs the variants of BenchmarkHandshake in
// turn within each iteration, so that they share the machine's load, and
// reports each variant's mean time and the ratios of the goals: warm/plain,
// cold-server/(plain+MP) and cold/(plain+2·MP), where MP is one generic
// two-pair multi-pairing. It also reports the cold ratios against this
// package's own membership check (M). On a shared machine these ratios are
// steadier than ratios of separate sub-benchmarks.
func BenchmarkHandshakeInterleaved(b *testing.B) {
	s := newHandshakeSetup(b)
	plainServer := startHandshakeServer(b, s.plain.server, s.serverIP, s.clientIP)
	mazuServer := startHandshakeServer(b, s.mazuServer, s.serverIP, s.clientIP)
	var plain, warm, coldServer, cold, membership, multiPairing time.Duration
	timed := func(total *time.Duration, fn func()) {
		start := time.Now()
		fn()
		*total += time.Since(start)
	}
	mazuServer.run(b, s.mazuClient)
	n := 0
	for b.Loop() {
		n++
		timed(&plain, func() { plainServer.run(b, s.plain.client) })
		timed(&warm, func() { mazuServer.run(b, s.mazuClient) })
		forgetAll(s.bn.verifier)
		timed(&coldServer, func() { mazuServer.run(b, s.mazuClient) })
		forgetAll(s.a.verifier)
		forgetAll(s.bn.verifier)
		timed(&cold, func() { mazuServer.run(b, s.mazuClient) })
		timed(&membership, func() {
			if err := s.membership(); err != nil {
				b.Fatal(err)
			}
		})
		timed(&multiPairing, s.multiPairing)
	}
	mean := func(d time.Duration) float64 { return float64(d) / float64(n) / 1e6 }
	b.ReportMetric(mean(plain), "plain-ms")
	b.ReportMetric(mean(warm), "warm-ms")
	b.ReportMetric(mean(coldServer), "cold-server-ms")
	b.ReportMetric(mean(cold), "cold-ms")
	b.ReportMetric(mean(membership), "membership-ms")
	b.ReportMetric(mean(multiPairing), "multipairing-ms")
	b.ReportMetric(float64(warm)/float64(plain), "warm/plain")
	b.ReportMetric(float64(coldServer)/float64(plain+membership), "cold-server/(plain+M)")
	b.ReportMetric(float64(cold)/float64(plain+2*membership), "cold/(plain+2M)")
	b.ReportMetric(float64(coldServer)/float64(plain+multiPairing), "cold-server/(plain+MP)")
	b.ReportMetric(float64(cold)/float64(plain+2*multiPairing), "cold/(plain+2MP)")
}
