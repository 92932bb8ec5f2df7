package rbeauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
	"github.com/mazu-mesh/mazu-ztunnel/tunnel"
)

// mapDirectory is a Directory over fixed facts, for tests of pure logic.
type mapDirectory struct {
	pods map[netip.Addr]PodFacts
	mazu []Identity
}

func (d mapDirectory) PodAt(ip netip.Addr) (PodFacts, bool) {
	p, ok := d.pods[ip]
	return p, ok
}

func (d mapDirectory) MazuIdentity(id Identity) bool { return slices.Contains(d.mazu, id) }

func TestALPNMatchesTunnel(t *testing.T) {
	if ALPNRBE != tunnel.ALPNMazuRBE {
		t.Fatalf("rbeauth.ALPNRBE = %q, tunnel.ALPNMazuRBE = %q: the tunnel would refuse the negotiated protocol", ALPNRBE, tunnel.ALPNMazuRBE)
	}
}

func TestServerPath(t *testing.T) {
	mazuPod := PodFacts{Identity: Identity{"cluster.local", "a", "web"}, Mazu: true}
	stockPod := PodFacts{Identity: Identity{"cluster.local", "a", "legacy"}}
	tests := []struct {
		name    string
		offered []string
		compat  bool
		peer    PodFacts
		known   bool
		want    hbonePath
		wantErr error
	}{
		{"mazu client, strict", []string{ALPNRBE, ALPN}, false, mazuPod, true, pathRBE, nil},
		{"mazu client, compat", []string{ALPNRBE, ALPN}, true, mazuPod, true, pathRBE, nil},
		{"mazu client insisting on RBE", []string{ALPNRBE}, true, mazuPod, true, pathRBE, nil},
		{"stock client, strict", []string{ALPN}, false, stockPod, true, pathRBEOverH2, nil},
		{"stock client, compat", []string{ALPN}, true, stockPod, true, pathCA, nil},
		{"unknown address, compat", []string{ALPN}, true, PodFacts{}, false, pathCA, nil},
		{"mazu pod offering only h2, compat", []string{ALPN}, true, mazuPod, true, 0, ErrMazuPeerWithoutRBE},
		{"mazu pod offering only h2, strict", []string{ALPN}, false, mazuPod, true, pathRBEOverH2, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := serverPath(tt.offered, tt.compat, tt.peer, tt.known)
			if !errors.Is(err, tt.wantErr) || got != tt.want {
				t.Fatalf("serverPath = %v, %v; want %v, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestClientNegotiation(t *testing.T) {
	tests := []struct {
		name            string
		compat, dstMazu bool
		wantOffer       []string
		// paths for a server selecting ALPNRBE and for one selecting h2
		wantRBE, wantH2 hbonePath
	}{
		{"strict", false, false, []string{ALPNRBE, ALPN}, pathRBE, pathRBEOverH2},
		{"strict toward mazu", false, true, []string{ALPNRBE, ALPN}, pathRBE, pathRBEOverH2},
		{"compat toward mazu pod", true, true, []string{ALPNRBE}, pathRBE, pathRBEOverH2},
		{"compat toward other", true, false, []string{ALPNRBE, ALPN}, pathRBE, pathCA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			offer, caAllowed := clientOffer(tt.compat, tt.dstMazu)
			if !slices.Equal(offer, tt.wantOffer) {
				t.Errorf("offer = %v, want %v", offer, tt.wantOffer)
			}
			if got := clientPath(ALPNRBE, caAllowed); got != tt.wantRBE {
				t.Errorf("server selected %s: path %v, want %v", ALPNRBE, got, tt.wantRBE)
			}
			if got := clientPath(ALPN, caAllowed); got != tt.wantH2 {
				t.Errorf("server selected h2: path %v, want %v", got, tt.wantH2)
			}
		})
	}
}

func TestCheckCAPeer(t *testing.T) {
	web := Identity{"cluster.local", "shop", "web"}
	legacy := Identity{"cluster.local", "shop", "legacy"}
	waypoint := Identity{"cluster.local", "shop", "waypoint"}
	mazuIP, stockWebIP, legacyIP, elsewhere := netip.MustParseAddr("198.19.1.2"), netip.MustParseAddr("198.19.2.2"), netip.MustParseAddr("198.19.2.3"), netip.MustParseAddr("198.19.9.9")
	dir := mapDirectory{
		pods: map[netip.Addr]PodFacts{
			mazuIP:     {Identity: web, Mazu: true},
			stockWebIP: {Identity: web},
			legacyIP:   {Identity: legacy},
		},
		mazu: []Identity{web},
	}
	tests := []struct {
		name string
		ip   netip.Addr
		id   Identity
		ok   bool
	}{
		{"stock pod with its own identity", legacyIP, legacy, true},
		{"not-yet-migrated pod of a partly migrated identity", stockWebIP, web, true},
		{"address outside the cluster, identity not mazu", elsewhere, waypoint, true},
		{"mazu-enrolled pod", mazuIP, web, false},
		{"mazu-enrolled pod claiming another identity", mazuIP, legacy, false},
		{"stock pod claiming a mazu identity", legacyIP, web, false},
		{"unknown address claiming a mazu identity", elsewhere, web, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkCAPeer(dir, tt.ip, tt.id)
			if tt.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrMazuPeerWithoutRBE) {
				t.Fatalf("error = %v, want %v", err, ErrMazuPeerWithoutRBE)
			}
		})
	}
}

// testCA replaces istiod's CA in tests that run without istiod.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue signs a workload certificate as istiod does: one URI SAN, empty
// subject, client and server auth.
func (ca *testCA) issue(t *testing.T, id Identity) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs:        []*url.URL{id.URL()},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// stockConfig is configured as a stock ztunnel's: only Istio's roots,
// a URI SAN check and ALPN h2.
func stockConfig(ca *testCA, cert *tls.Certificate, server bool, expect Identity) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{ALPN},
		Certificates: []tls.Certificate{*cert},
	}
	if server {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = ca.pool
		return cfg
	}
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		opts := x509.VerifyOptions{Roots: ca.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return err
		}
		if id, err := PeerIdentity(cs); err != nil || id != expect {
			return errors.New("server identity is not the expected one")
		}
		return nil
	}
	return cfg
}

// tlsPair runs one handshake from source to a listener in the server pod
// and an echo of one byte, and returns the client's connection state and
// each side's error.
func tlsPair(t *testing.T, serverPod, source *testbed.Pod, serverCfg, clientCfg *tls.Config) (tls.ConnectionState, error, error) {
	t.Helper()
	var ln net.Listener
	if err := serverPod.Do(func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(serverPod.IP.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serverDone := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			serverDone <- err
			return
		}
		defer conn.Close()
		tc := tls.Server(conn, serverCfg)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err = tc.HandshakeContext(ctx); err == nil {
			_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 1)
			if _, err = tc.Read(buf); err == nil {
				_, err = tc.Write(buf)
			}
		}
		serverDone <- err
	}()
	var raw net.Conn
	if err := source.Do(func() (err error) {
		raw, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, clientCfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	clientErr := tc.HandshakeContext(ctx)
	if clientErr == nil {
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		if _, clientErr = tc.Write([]byte{1}); clientErr == nil {
			_, clientErr = tc.Read(make([]byte, 1))
		}
	}
	state := tc.ConnectionState()
	tc.Close()
	return state, clientErr, <-serverDone
}

// compatFixture has a mazu client and server (RBE-registered), and a stock
// pod on the client's node, with a test CA standing in for istiod's.
type compatFixture struct {
	*fixture
	ca        *testCA
	stock     *testbed.Pod
	stockCert *tls.Certificate
	dir       mapDirectory
}

func newCompatFixture(t *testing.T, namespace string) *compatFixture {
	t.Helper()
	f := &compatFixture{fixture: newFixture(t, namespace), ca: newTestCA(t)}
	f.stock = testbed.NewPod(t, f.tb, f.nodeA, testbed.PodSpec{Namespace: namespace, Name: "legacy", ServiceAccount: "legacy"})
	f.stockCert = f.ca.issue(t, f.id(f.stock))
	f.dir = mapDirectory{
		pods: map[netip.Addr]PodFacts{
			f.client.pod.IP: {Identity: f.client.id, Mazu: true},
			f.server.pod.IP: {Identity: f.server.id, Mazu: true},
			f.stock.IP:      {Identity: f.id(f.stock)},
		},
		mazu: []Identity{f.client.id, f.server.id},
	}
	return f
}

func (f *compatFixture) id(p *testbed.Pod) Identity {
	return Identity{TrustDomain: testbed.TrustDomain, Namespace: p.Namespace, ServiceAccount: p.ServiceAccount}
}

func (f *compatFixture) compat(t *testing.T, reg prometheus.Registerer) (*Verifier, *Compat) {
	t.Helper()
	v, err := NewVerifier(VerifierOptions{Client: f.tb.Client(), TrustDomain: testbed.TrustDomain, Audience: testAudience, Registry: f.registry, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCompat(v, CompatOptions{Roots: func() (*x509.CertPool, error) { return f.ca.pool, nil }, Directory: f.dir, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return v, c
}

func constCert(c *tls.Certificate) CertificateFunc {
	return func(netip.Addr) (*tls.Certificate, error) { return c, nil }
}

func TestCompatServerAcceptsStockClientStrictRefuses(t *testing.T) {
	f := newCompatFixture(t, "compat-in")
	reg := prometheus.NewRegistry()
	_, compat := f.compat(t, reg)
	serverCA := f.ca.issue(t, f.server.id)
	client := stockConfig(f.ca, f.stockCert, false, f.server.id)

	state, clientErr, serverErr := tlsPair(t, f.server.pod, f.stock, compat.ServerConfig(constCert(&f.server.cert), constCert(serverCA)), client)
	if clientErr != nil || serverErr != nil {
		t.Fatalf("compat server refused a stock client: client %v, server %v", clientErr, serverErr)
	}
	if state.NegotiatedProtocol != ALPN {
		t.Errorf("negotiated %q, want %q", state.NegotiatedProtocol, ALPN)
	}
	if n := testutil.ToFloat64(compat.caHops.WithLabelValues("inbound", f.id(f.stock).String())); n != 1 {
		t.Errorf("mazu_ca_trusted_connections_total{inbound} = %v, want 1", n)
	}

	strict := newTestVerifier(t, f.tb, f.registry)
	_, clientErr, serverErr = tlsPair(t, f.server.pod, f.stock, strict.ServerConfig(constCert(&f.server.cert)), stockConfig(f.ca, f.stockCert, false, f.server.id))
	if clientErr == nil || serverErr == nil {
		t.Fatalf("strict server and stock client completed: client %v, server %v", clientErr, serverErr)
	}
	var unknown x509.UnknownAuthorityError
	if !errors.As(clientErr, &unknown) {
		t.Errorf("stock client error = %v, want an unknown authority (the RBE certificate)", clientErr)
	}
}

func TestCompatServerRefusesCAClientOfMazuIdentity(t *testing.T) {
	f := newCompatFixture(t, "compat-claim")
	reg := prometheus.NewRegistry()
	v, compat := f.compat(t, reg)
	serverCA := f.ca.issue(t, f.server.id)
	// A CA certificate for the mazu client's identity, used from the stock
	// pod's address, as a compromised istiod could issue.
	forged := f.ca.issue(t, f.client.id)
	_, _, serverErr := tlsPair(t, f.server.pod, f.stock, compat.ServerConfig(constCert(&f.server.cert), constCert(serverCA)), stockConfig(f.ca, forged, false, f.server.id))
	if !errors.Is(serverErr, ErrMazuPeerWithoutRBE) {
		t.Fatalf("server error = %v, want %v", serverErr, ErrMazuPeerWithoutRBE)
	}
	// The mazu client's own address offering only h2 is refused before the
	// handshake completes.
	_, _, serverErr = tlsPair(t, f.server.pod, f.client.pod, compat.ServerConfig(constCert(&f.server.cert), constCert(serverCA)), stockConfig(f.ca, forged, false, f.server.id))
	if !errors.Is(serverErr, ErrMazuPeerWithoutRBE) {
		t.Fatalf("server error for the mazu pod = %v, want %v", serverErr, ErrMazuPeerWithoutRBE)
	}
	if n := testutil.ToFloat64(v.results.WithLabelValues("rejected", "mazu_peer_without_rbe")); n != 2 {
		t.Errorf("rejections counted = %v, want 2", n)
	}
	if n := testutil.CollectAndCount(compat.caHops); n != 0 {
		t.Errorf("CA-trusted connections counted: %d series, want none", n)
	}
}

func TestCompatPeersUseRBE(t *testing.T) {
	f := newCompatFixture(t, "compat-rbe")
	_, serverCompat := f.compat(t, prometheus.NewRegistry())
	clientV, clientCompat := f.compat(t, prometheus.NewRegistry())
	serverCA := f.ca.issue(t, f.server.id)
	clientCA := f.ca.issue(t, f.client.id)
	clientCfg := clientCompat.ClientConfig(func() (*tls.Certificate, error) { return &f.client.cert, nil }, func() (*tls.Certificate, error) { return clientCA, nil }, f.server.pod.IP, []Identity{f.server.id})
	state, clientErr, serverErr := tlsPair(t, f.server.pod, f.client.pod, serverCompat.ServerConfig(constCert(&f.server.cert), constCert(serverCA)), clientCfg)
	if clientErr != nil || serverErr != nil {
		t.Fatalf("handshake failed: client %v, server %v", clientErr, serverErr)
	}
	if state.NegotiatedProtocol != ALPNRBE {
		t.Errorf("negotiated %q, want %q", state.NegotiatedProtocol, ALPNRBE)
	}
	if n := testutil.ToFloat64(clientV.results.WithLabelValues("accepted", "ok")); n != 1 {
		t.Errorf("client RBE verifications = %v, want 1", n)
	}
	if n := testutil.CollectAndCount(clientCompat.caHops) + testutil.CollectAndCount(serverCompat.caHops); n != 0 {
		t.Errorf("CA-trusted connections counted between mazu peers: %d series", n)
	}

	// A server at a mazu pod's address that selects h2 with a CA
	// certificate (a downgrade) fails: the client offered only ALPNRBE.
	_, clientErr, _ = tlsPair(t, f.server.pod, f.client.pod, stockConfig(f.ca, serverCA, true, Identity{}), clientCompat.ClientConfig(func() (*tls.Certificate, error) { return &f.client.cert, nil }, func() (*tls.Certificate, error) { return clientCA, nil }, f.server.pod.IP, []Identity{f.server.id}))
	if clientErr == nil {
		t.Fatal("compat client accepted a CA-only server at a mazu pod's address")
	}
}

func TestCompatClientTrustsStockServerStrictRefuses(t *testing.T) {
	f := newCompatFixture(t, "compat-out")
	// The stock pod serves; the mazu client dials it.
	stockID := f.id(f.stock)
	clientCA := f.ca.issue(t, f.client.id)
	rbe := func() (*tls.Certificate, error) { return &f.client.cert, nil }
	ca := func() (*tls.Certificate, error) { return clientCA, nil }

	_, compat := f.compat(t, prometheus.NewRegistry())
	state, clientErr, serverErr := tlsPair(t, f.stock, f.client.pod, stockConfig(f.ca, f.stockCert, true, Identity{}), compat.ClientConfig(rbe, ca, f.stock.IP, []Identity{stockID}))
	if clientErr != nil || serverErr != nil {
		t.Fatalf("compat client and stock server: client %v, server %v", clientErr, serverErr)
	}
	if state.NegotiatedProtocol != ALPN {
		t.Errorf("negotiated %q, want %q", state.NegotiatedProtocol, ALPN)
	}
	if state.PeerCertificates[0].URIs[0].String() != stockID.String() {
		t.Errorf("server identity = %v", state.PeerCertificates[0].URIs)
	}
	if n := testutil.ToFloat64(compat.caHops.WithLabelValues("outbound", stockID.String())); n != 1 {
		t.Errorf("mazu_ca_trusted_connections_total{outbound} = %v, want 1", n)
	}

	// The wrong expected identity fails even through the CA.
	_, clientErr, _ = tlsPair(t, f.stock, f.client.pod, stockConfig(f.ca, f.stockCert, true, Identity{}), compat.ClientConfig(rbe, ca, f.stock.IP, []Identity{f.server.id}))
	if !errors.Is(clientErr, ErrIdentityMismatch) {
		t.Errorf("client error for an unexpected identity = %v, want %v", clientErr, ErrIdentityMismatch)
	}

	strict := newTestVerifier(t, f.tb, f.registry)
	_, clientErr, _ = tlsPair(t, f.stock, f.client.pod, stockConfig(f.ca, f.stockCert, true, Identity{}), strict.ClientConfig(rbe, f.stock.IP, []Identity{stockID}))
	if !errors.Is(clientErr, ErrCertificateInvalid) {
		t.Fatalf("strict client error = %v, want %v", clientErr, ErrCertificateInvalid)
	}
}

func TestRootsFromFile(t *testing.T) {
	ca1, ca2 := newTestCA(t), newTestCA(t)
	path := t.TempDir() + "/root-cert.pem"
	write := func(ca *testCA, mod time.Time) {
		t.Helper()
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	trusts := func(pool *x509.CertPool, ca *testCA) bool {
		_, err := ca.cert.Verify(x509.VerifyOptions{Roots: pool})
		return err == nil
	}
	roots := RootsFromFile(path)
	if _, err := roots(); err == nil {
		t.Fatal("missing root file accepted")
	}
	write(ca1, time.Now().Add(-time.Hour))
	pool, err := roots()
	if err != nil {
		t.Fatal(err)
	}
	if !trusts(pool, ca1) || trusts(pool, ca2) {
		t.Fatal("first read does not contain exactly the first root")
	}
	// A rotated root takes effect once the file changes.
	write(ca2, time.Now())
	if pool, err = roots(); err != nil {
		t.Fatal(err)
	}
	if !trusts(pool, ca2) || trusts(pool, ca1) {
		t.Fatal("rotated root not picked up")
	}
	if err := os.WriteFile(path, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := roots(); err == nil {
		t.Fatal("a root file without PEM was accepted")
	}
}
