package testbed

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mazu-mesh/mazu-ztunnel/internal/istioca"
)

// TestIstiodIssuesCertificateForPodToken checks that istiod runs against the
// testbed and its CA signs a pod's CSR, authenticated by a pod-bound token.
func TestIstiodIssuesCertificateForPodToken(t *testing.T) {
	tb := Get(t)
	if tb.IstiodCAAddr() == "" {
		t.Skip("istiod not started (MAZU_TESTBED_NO_ISTIOD is set)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	node := NewNode(t, tb, "ca-node")
	pod := NewPod(t, tb, node, PodSpec{Namespace: "ca-demo", Name: "app-0", ServiceAccount: "app"})

	roots := waitRootCert(ctx, t, tb, pod.Namespace)
	token, err := tb.RequestToken(ctx, pod, "istio-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client, err := istioca.Dial(tb.IstiodCAAddr(), roots, "")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	const want = "spiffe://cluster.local/ns/ca-demo/sa/app"
	chain, err := client.Sign(ctx, token, key, want, time.Hour)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		t.Errorf("leaf URI SANs = %v, want [%s]", leaf.URIs, want)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(roots)
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("issued certificate does not chain to istiod's root: %v", err)
	}

	if _, err := client.Sign(ctx, "not-a-token", key, want, time.Hour); err == nil {
		t.Error("istiod signed a CSR sent with a bogus token")
	}
}

// waitRootCert waits for istiod to publish its root certificate into the
// namespace, as it does for every namespace.
func waitRootCert(ctx context.Context, t *testing.T, tb *Testbed, namespace string) []byte {
	t.Helper()
	for {
		cm, err := tb.Client().CoreV1().ConfigMaps(namespace).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if err == nil && cm.Data["root-cert.pem"] != "" {
			return []byte(cm.Data["root-cert.pem"])
		}
		select {
		case <-ctx.Done():
			t.Fatalf("istio-ca-root-cert ConfigMap missing in %s: %v", namespace, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
