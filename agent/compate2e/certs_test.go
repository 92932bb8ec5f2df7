package compate2e

import (
	"context"
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mazu-mesh/mazu-ztunnel/internal/istioca"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestIstioCertificatesFromIstiod obtains compat-mode certificates from the
// real istiod both ways the agent can authenticate, and checks that istiod
// scopes impersonation to the agent's node and trusted account.
func TestIstioCertificatesFromIstiod(t *testing.T) {
	tb := testbed.Get(t)
	if tb.IstiodCAAddr() == "" {
		t.Skip("istiod not started (MAZU_TESTBED_NO_ISTIOD is set)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rootsPEM := rootCert(t, tb, testbed.IstioNamespace)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootsPEM)
	ca, err := istioca.Dial(tb.IstiodCAAddr(), rootsPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()

	node := testbed.NewNode(t, tb, "certs-n")
	other := testbed.NewNode(t, tb, "certs-m")
	agentPod := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: testbed.IstioNamespace, Name: "mazu-ztunnel-n", ServiceAccount: "mazu-ztunnel"})
	intruder := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: testbed.IstioNamespace, Name: "intruder", ServiceAccount: "intruder"})
	local := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: "certs", Name: "app", ServiceAccount: "app"})
	remote := testbed.NewPod(t, tb, other, testbed.PodSpec{Namespace: "certs", Name: "far", ServiceAccount: "far"})

	newCerts := func(t *testing.T, tokenOf *testbed.Pod) *rbeauth.IstioCertificates {
		t.Helper()
		var nodeToken func(context.Context) (string, error)
		if tokenOf != nil {
			path := writeToken(t, tb, tokenOf)
			nodeToken = func(context.Context) (string, error) {
				b, err := os.ReadFile(path)
				return string(b), err
			}
		}
		c, err := rbeauth.NewIstioCertificates(rbeauth.IstioCertificatesOptions{
			Client: tb.Client(), Signer: ca, TrustDomain: testbed.TrustDomain, Validity: time.Hour,
			NodeToken: nodeToken, ClusterID: "Kubernetes",
		})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	obtain := func(t *testing.T, c *rbeauth.IstioCertificates, p *testbed.Pod) error {
		t.Helper()
		obj, err := tb.Client().CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return c.Obtain(ctx, obj)
	}
	checkIssued := func(t *testing.T, c *rbeauth.IstioCertificates, p *testbed.Pod) {
		t.Helper()
		cert, err := c.Certificate(p.UID)
		if err != nil {
			t.Fatal(err)
		}
		if got := cert.Leaf.URIs[0].String(); got != spiffe(p) {
			t.Errorf("URI SAN = %s, want %s", got, spiffe(p))
		}
		inter := x509.NewCertPool()
		for _, der := range cert.Certificate[1:] {
			c, _ := x509.ParseCertificate(der)
			inter.AddCert(c)
		}
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("certificate does not chain to istiod's root: %v", err)
		}
	}

	t.Run("impersonation as the trusted node account", func(t *testing.T) {
		c := newCerts(t, agentPod)
		if err := obtain(t, c, local); err != nil {
			t.Fatalf("istiod refused to sign a pod on the agent's node: %v", err)
		}
		checkIssued(t, c, local)
		if err := obtain(t, c, remote); err == nil {
			t.Error("istiod signed an identity with no pod on the agent's node")
		}
	})
	t.Run("impersonation by an untrusted account", func(t *testing.T) {
		err := obtain(t, newCerts(t, intruder), local)
		if err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
			t.Fatalf("error = %v, want istiod to refuse the impersonation", err)
		}
	})
	t.Run("pod-bound token", func(t *testing.T) {
		c := newCerts(t, nil)
		if err := obtain(t, c, remote); err != nil {
			t.Fatal(err)
		}
		checkIssued(t, c, remote)
	})
}
