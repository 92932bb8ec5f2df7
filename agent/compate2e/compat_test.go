package compate2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/mazu-mesh/mazu-ztunnel/agent"
	"github.com/mazu-mesh/mazu-ztunnel/internal/istioca"
	"github.com/mazu-mesh/mazu-ztunnel/internal/meshtest"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
	"github.com/mazu-mesh/mazu-ztunnel/tunnel"
)

func spiffe(p *testbed.Pod) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", testbed.TrustDomain, p.Namespace, p.ServiceAccount)
}

// istiodCertificate obtains a certificate from the real istiod for the
// identity of pod, authenticated with a token bound to tokenPod, as a stock
// Istio workload (or an attacker holding that pod's token) would.
func istiodCertificate(t *testing.T, tb *testbed.Testbed, ca *istioca.Client, tokenPod *testbed.Pod) *tls.Certificate {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	token, err := tb.RequestToken(ctx, tokenPod, rbeauth.IstioCAAudience, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.Sign(ctx, token, key, spiffe(tokenPod), time.Hour)
	if err != nil {
		t.Fatalf("istiod CreateCertificate for %s: %v", spiffe(tokenPod), err)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert
}

// verifyIstioChain is the check a stock ztunnel, waypoint or sidecar makes:
// a chain to Istio's root for the key usage, then the URI SAN.
func verifyIstioChain(cs tls.ConnectionState, roots *x509.CertPool, usage x509.ExtKeyUsage, sanOK func(string) bool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no peer certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return err
	}
	for _, u := range cs.PeerCertificates[0].URIs {
		if sanOK(u.String()) {
			return nil
		}
	}
	return fmt.Errorf("peer URI SANs %v not accepted", cs.PeerCertificates[0].URIs)
}

// stockClientTLS is configured as a stock ztunnel's outbound side.
func stockClientTLS(roots *x509.CertPool, cert *tls.Certificate, expected string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
		Certificates: []tls.Certificate{*cert}, InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyIstioChain(cs, roots, x509.ExtKeyUsageServerAuth, func(s string) bool { return s == expected })
		},
	}
}

// stockServerTLS is configured as a stock ztunnel's inbound side.
func stockServerTLS(roots *x509.CertPool, cert *tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
		Certificates: []tls.Certificate{*cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: roots,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyIstioChain(cs, roots, x509.ExtKeyUsageClientAuth, func(s string) bool {
				return strings.HasPrefix(s, "spiffe://"+testbed.TrustDomain+"/")
			})
		},
	}
}

// stockGet sends one HTTP request through HBONE from inside pod, with a
// stock peer's TLS configuration, to the application port of dst.
func stockGet(pod *testbed.Pod, conf *tls.Config, dst netip.Addr, expected string) (string, error) {
	pool, err := tunnel.NewPool(tunnel.ClientConfig{
		TLSConfig: func(tunnel.PoolKey) (*tls.Config, error) { return conf.Clone(), nil },
		Dial: func(ctx context.Context, key tunnel.PoolKey) (net.Conn, error) {
			var c net.Conn
			err := pod.Do(func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, "tcp", key.Addr.String())
				return err
			})
			return c, err
		},
	})
	if err != nil {
		return "", err
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := tunnel.PoolKey{SrcIdentity: tunnel.Identity(spiffe(pod)), DstIdentity: tunnel.Identity(expected), Addr: netip.AddrPortFrom(dst, agent.HBONEPort)}
	stream, err := pool.Connect(ctx, key, &tunnel.ConnectRequest{Authority: netip.AddrPortFrom(dst, 8080).String()})
	if err != nil {
		return "", err
	}
	defer stream.Close()
	if _, err := io.WriteString(stream, "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	// Half-close, as a client done sending does, so the stream ends cleanly.
	if err := stream.CloseWrite(); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(stream), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(body), nil
}

// serveStockHBONE runs, inside pod, an HBONE server configured as a stock
// ztunnel's and an HTTP application on port 8080, until the test ends.
func serveStockHBONE(t *testing.T, pod *testbed.Pod, conf *tls.Config) {
	t.Helper()
	listen := func(port int) net.Listener {
		var ln net.Listener
		if err := pod.Do(func() (err error) {
			ln, err = net.Listen("tcp", netip.AddrPortFrom(pod.IP, uint16(port)).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return ln
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "hello from %s", pod.Name) })}
	go app.Serve(listen(8080))
	srv, err := tunnel.NewServer(tunnel.InboundConfig{
		TLSConfig: func() (*tls.Config, error) { return conf, nil },
		DialUpstream: func(ctx context.Context, _ netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			var c net.Conn
			err := pod.Do(func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, "tcp", dst.String())
				return err
			})
			return c, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(listen(agent.HBONEPort))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = app.Shutdown(ctx)
	})
}

func writeToken(t *testing.T, tb *testbed.Testbed, pod *testbed.Pod) string {
	t.Helper()
	token, err := tb.RequestToken(context.Background(), pod, rbeauth.IstioCAAudience, 12*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "istio-token")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCompatModeWithIstiod runs a compat agent and a strict agent against
// a real istiod, plus stock peers configured as Istio's ztunnel: they
// trust only istiod's root, check URI SANs and speak ALPN h2.
func TestCompatModeWithIstiod(t *testing.T) {
	tb := testbed.Get(t)
	if tb.IstiodCAAddr() == "" {
		t.Skip("istiod not started (MAZU_TESTBED_NO_ISTIOD is set)")
	}
	ctx := context.Background()
	rootsPEM := rootCert(t, tb, testbed.IstioNamespace)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootsPEM)
	rootFile := filepath.Join(t.TempDir(), "root-cert.pem")
	if err := os.WriteFile(rootFile, rootsPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	ca, err := istioca.Dial(tb.IstiodCAAddr(), rootsPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ca.Close() })

	mesh, err := meshtest.StartCurator(ctx, meshtest.CuratorOptions{Client: tb.Client(), Dir: t.TempDir(), Witnesses: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mesh.Stop() })
	cni := buildCNI(t)
	nodeA := testbed.NewNode(t, tb, "compat-a")
	nodeS := testbed.NewNode(t, tb, "strict-s")
	nodeX := testbed.NewNode(t, tb, "stock-x")
	// The agent authenticates to istiod as ztunnel does: with its own pod's
	// istio-ca token, impersonating each workload.
	agentPod := testbed.NewPod(t, tb, nodeA, testbed.PodSpec{Namespace: testbed.IstioNamespace, Name: "mazu-ztunnel-a", ServiceAccount: "mazu-ztunnel"})
	compatAgent := startAgent(t, tb, mesh, nodeA, &agent.CompatConfig{
		CAAddress: tb.IstiodCAAddr(), RootCertFile: rootFile, CertValidity: time.Hour,
		NodeTokenFile: writeToken(t, tb, agentPod), ClusterID: "Kubernetes",
	})
	strictAgent := startAgent(t, tb, mesh, nodeS, nil)
	createNamespace(t, tb, "compat", map[string]string{agent.DataplaneModeLabel: "ambient"})
	createNamespace(t, tb, "legacy", nil)

	port := []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	web := testbed.NewPod(t, tb, nodeA, testbed.PodSpec{Namespace: "compat", Name: "web", ServiceAccount: "web", Ports: port, OnNetwork: cniAdd(cni, compatAgent.socket)})
	client := testbed.NewPod(t, tb, nodeA, testbed.PodSpec{Namespace: "compat", Name: "client", ServiceAccount: "client", OnNetwork: cniAdd(cni, compatAgent.socket)})
	strictWeb := testbed.NewPod(t, tb, nodeS, testbed.PodSpec{Namespace: "compat", Name: "strict-web", ServiceAccount: "strict-web", Ports: port, OnNetwork: cniAdd(cni, strictAgent.socket)})
	strictClient := testbed.NewPod(t, tb, nodeS, testbed.PodSpec{Namespace: "compat", Name: "strict-client", ServiceAccount: "strict-client", OnNetwork: cniAdd(cni, strictAgent.socket)})
	// A pod on a node not yet migrated: istio-cni would have annotated it,
	// and a stock ztunnel serves its HBONE.
	stockWeb := testbed.NewPod(t, tb, nodeX, testbed.PodSpec{Namespace: "compat", Name: "stock-web", ServiceAccount: "stock-web", Ports: port, Annotations: map[string]string{agent.RedirectionAnnotation: "enabled"}})
	legacy := testbed.NewPod(t, tb, nodeX, testbed.PodSpec{Namespace: "legacy", Name: "legacy", ServiceAccount: "legacy"})
	for _, p := range []*testbed.Pod{web, strictWeb} {
		if err := p.Start(runInPod(p, "http-server", envTarget+"=:8080")); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []*testbed.Pod{web, client, strictWeb, strictClient} {
		waitEnrolled(t, tb, p)
	}
	serveStockHBONE(t, stockWeb, stockServerTLS(roots, istiodCertificate(t, tb, ca, stockWeb)))
	legacyCert := istiodCertificate(t, tb, ca, legacy)

	caHops := func(na *nodeAgent, labels map[string]string) float64 {
		return counterSum(t, na.registry, "mazu_ca_trusted_connections_total", labels)
	}
	const requests = 5

	t.Run("mazu peers keep RBE in compat mode", func(t *testing.T) {
		before := counterSum(t, compatAgent.registry, "mazu_peer_verifications_total", map[string]string{"result": "accepted"})
		for _, source := range []*testbed.Pod{client, strictClient} {
			report := httpFrom(t, source, "http://"+web.IP.String()+":8080/", requests)
			if report.OK != requests {
				t.Fatalf("from %s: %d of %d requests succeeded; errors: %v", source.Name, report.OK, requests, report.Errors)
			}
		}
		if n := caHops(compatAgent, nil); n != 0 {
			t.Errorf("compat agent counted %v CA-trusted connections between mazu peers, want 0", n)
		}
		after := counterSum(t, compatAgent.registry, "mazu_peer_verifications_total", map[string]string{"result": "accepted"})
		if after-before < 2 {
			t.Errorf("compat agent verified %v RBE peers, want at least 2 (client and strict-client)", after-before)
		}
	})

	t.Run("stock client accepted by compat agent", func(t *testing.T) {
		var body string
		var lastErr error
		// The agent obtains web's istiod certificate in the background.
		eventually(t, 30*time.Second, "stock client served by the compat agent", func() bool {
			body, lastErr = stockGet(legacy, stockClientTLS(roots, legacyCert, spiffe(web)), web.IP, spiffe(web))
			if lastErr != nil {
				time.Sleep(200 * time.Millisecond)
			}
			return lastErr == nil
		})
		if body != "hello from web" {
			t.Errorf("body = %q", body)
		}
		if n := caHops(compatAgent, map[string]string{"direction": "inbound", "peer_identity": spiffe(legacy)}); n < 1 {
			t.Errorf("mazu_ca_trusted_connections_total{inbound,%s} = %v, want at least 1", spiffe(legacy), n)
		}
	})

	t.Run("stock client refused by strict agent", func(t *testing.T) {
		_, err := stockGet(legacy, stockClientTLS(roots, legacyCert, spiffe(strictWeb)), strictWeb.IP, spiffe(strictWeb))
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Fatalf("stock client error = %v, want an unknown authority for the RBE certificate", err)
		}
		if n := caHops(strictAgent, nil); n != 0 {
			t.Errorf("strict agent counted %v CA-trusted connections", n)
		}
	})

	t.Run("CA-only client claiming a mazu identity rejected", func(t *testing.T) {
		// istiod signs the mazu client's identity for anyone holding a
		// token of that pod, so the compat agent must reject it itself.
		forged := istiodCertificate(t, tb, ca, client)
		before := counterSum(t, compatAgent.registry, "mazu_peer_verifications_total", map[string]string{"result": "rejected", "reason": "mazu_peer_without_rbe"})
		if _, err := stockGet(legacy, stockClientTLS(roots, forged, spiffe(web)), web.IP, spiffe(web)); err == nil {
			t.Fatal("compat agent served a CA-only client holding a mazu-enrolled identity")
		}
		after := counterSum(t, compatAgent.registry, "mazu_peer_verifications_total", map[string]string{"result": "rejected", "reason": "mazu_peer_without_rbe"})
		if after-before != 1 {
			t.Errorf("rejections with reason mazu_peer_without_rbe grew by %v, want 1", after-before)
		}
		if n := caHops(compatAgent, map[string]string{"peer_identity": spiffe(client)}); n != 0 {
			t.Errorf("the forged identity was counted as a CA-trusted connection %v times", n)
		}
	})

	t.Run("compat agent reaches stock server through istiod certificate", func(t *testing.T) {
		report := httpFrom(t, client, "http://"+stockWeb.IP.String()+":8080/", requests)
		if report.OK != requests {
			t.Fatalf("%d of %d requests succeeded; errors: %v", report.OK, requests, report.Errors)
		}
		if report.Bodies[0] != "hello from stock-web" {
			t.Errorf("body = %q", report.Bodies[0])
		}
		if n := caHops(compatAgent, map[string]string{"direction": "outbound", "peer_identity": spiffe(stockWeb)}); n < 1 {
			t.Errorf("mazu_ca_trusted_connections_total{outbound,%s} = %v, want at least 1", spiffe(stockWeb), n)
		}
	})

	t.Run("strict agent refuses stock server", func(t *testing.T) {
		before := counterSum(t, strictAgent.registry, "mazu_peer_verifications_total", map[string]string{"result": "rejected", "reason": "certificate_invalid"})
		report := httpFrom(t, strictClient, "http://"+stockWeb.IP.String()+":8080/", 2)
		if report.OK != 0 {
			t.Fatalf("strict agent carried %d requests to a CA-only server", report.OK)
		}
		after := counterSum(t, strictAgent.registry, "mazu_peer_verifications_total", map[string]string{"result": "rejected", "reason": "certificate_invalid"})
		if after-before < 1 {
			t.Errorf("strict agent rejections grew by %v, want at least 1", after-before)
		}
	})
}
