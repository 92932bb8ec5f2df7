package threat

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mazu-mesh/mazu-ztunnel/agent"
	"github.com/mazu-mesh/mazu-ztunnel/internal/istioca"
	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestAttackIstiodCertificate uses a certificate that the real istiod CA
// issued for a victim's identity, as a compromised istiod would issue it for
// anyone. The certificate chains to istiod's root, so every peer that trusts
// Istio's CA accepts it. Defence: agents in strict mode (the default)
// accept only self-signed certificates that carry a live pod-bound token
// with a registration in the witnessed log. An istiod-issued leaf has no
// token, so it is rejected with reason certificate_invalid, in both
// directions:
//   - client: mallory presents a certificate for the client's identity to
//     web's HBONE port, offering ALPN h2 (the CA path of compat mode) and
//     then mazu-rbe-h2. Web's agent rejects both handshakes.
//   - server: a rogue server "web-rogue" runs as web's service account on a
//     node without a mazu agent, carries the ambient redirection
//     annotation, and serves HBONE with an istiod-issued certificate for
//     web's identity. The client's agent resolves the pod, expects web's
//     identity, reaches the rogue server, and rejects its certificate
//     before sending any data: the client's requests fail and the rogue
//     completes no TLS handshake.
func TestAttackIstiodCertificate(t *testing.T) {
	privtest.Require(t)
	m := sharedMesh(t)
	if m.tb.IstiodCAAddr() == "" {
		t.Fatal("istiod is not running: this test needs the testbed started with Options.Istiod")
	}
	s := newVictimSetup(t, m, "istiodca")

	t.Run("client", func(t *testing.T) {
		cert := istiodCertificate(t, m.tb, s.client)
		for _, alpn := range [][]string{{rbeauth.ALPN}, {rbeauth.ALPNRBE}} {
			expectProbeRejected(t, m.agents[1], s.mallory, hboneAddr(s.web), cert, nil, alpn, "certificate_invalid")
		}
	})

	t.Run("server", func(t *testing.T) {
		rogue := newBarePod(t, m, nil, testbed.PodSpec{
			Namespace: s.ns, Name: "web-rogue", ServiceAccount: "web",
			Annotations: map[string]string{agent.RedirectionAnnotation: "enabled"},
		})
		cert := istiodCertificate(t, m.tb, rogue)
		if got := cert.Leaf.URIs[0].String(); got != podIdentity(s.web).String() {
			t.Fatalf("istiod issued %s, want web's identity %s", got, podIdentity(s.web))
		}
		hbone := startRogueServer(t, rogue, agent.HBONEPort, &cert)
		app := startRogueServer(t, rogue, 8080, nil)

		before := m.agents[0].rejections(t)
		report := httpFrom(t, s.client, webURL(rogue), 3)
		if report.OK != 0 {
			t.Fatalf("client -> rogue server: %d of 3 requests succeeded, want none", report.OK)
		}
		waitRejected(t, m.agents[0], before, "certificate_invalid")
		if n := hbone.Conns.Load(); n == 0 {
			t.Fatal("the rogue server's HBONE port received no connection, so the test did not exercise the client's check")
		}
		if n := hbone.Handshakes.Load(); n != 0 {
			t.Fatalf("the rogue server completed %d TLS handshakes, want 0", n)
		}
		if n := app.Conns.Load(); n != 0 {
			t.Fatalf("the rogue server's port 8080 received %d plaintext connections, want 0", n)
		}
	})

	expectOK(t, s.client, webURL(s.web), 1, "hello from web")
}

// istiodCertificate obtains a certificate for pod's identity from the
// testbed's istiod CA, authenticated by a token bound to pod for the
// audience istio-ca, and checks that it chains to istiod's root.
func istiodCertificate(t *testing.T, tb *testbed.Testbed, pod *testbed.Pod) tls.Certificate {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rootsPEM := istioRootCert(t, tb)
	ca, err := istioca.Dial(tb.IstiodCAAddr(), rootsPEM, "")
	if err != nil {
		t.Fatalf("dial istiod's CA: %v", err)
	}
	defer ca.Close()
	token, err := tb.RequestToken(ctx, pod, rbeauth.IstioCAAudience, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := podIdentity(pod)
	chain, err := ca.Sign(ctx, token, key, id.String(), time.Hour)
	if err != nil {
		t.Fatalf("istiod CA: sign a certificate for %s: %v", id, err)
	}

	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootsPEM) {
		t.Fatal("istio-ca-root-cert contains no PEM certificate")
	}
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("the istiod-issued certificate for %s does not chain to istiod's root: %v", id, err)
	}
	cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert
}

// istioRootCert waits for istiod to publish its root certificate in the
// istio-ca-root-cert ConfigMap of its own namespace, and returns it as PEM.
func istioRootCert(t *testing.T, tb *testbed.Testbed) []byte {
	t.Helper()
	var pemBytes []byte
	eventually(t, 60*time.Second, "istio-ca-root-cert in "+testbed.IstioNamespace, func() bool {
		cm, err := tb.Client().CoreV1().ConfigMaps(testbed.IstioNamespace).Get(context.Background(), "istio-ca-root-cert", metav1.GetOptions{})
		if err == nil && cm.Data["root-cert.pem"] != "" {
			pemBytes = []byte(cm.Data["root-cert.pem"])
			return true
		}
		return false
	})
	return pemBytes
}
