package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/mazu-mesh/mazu-ztunnel/internal/istioca"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
)

// MazuEnrolledAnnotation marks a pod that a mazu agent enrolled. Istio's
// own ztunnel and istio-cni set only RedirectionAnnotation, so this is how
// agents in compatibility mode tell mazu peers, which must use RBE, from
// stock ones.
const MazuEnrolledAnnotation = "mazu-mesh.io/enrolled"

// CompatConfig turns on compatibility mode: the agent also holds an
// istiod-issued certificate for each enrolled pod and uses it only toward
// peers that verify against Istio's CA alone (stock ztunnels, waypoints,
// gateways, sidecars). Two mazu peers still use RBE.
type CompatConfig struct {
	// CAAddress is istiod's CA, host:port (CA_ADDRESS).
	CAAddress string
	// RootCertFile holds Istio's root certificates (the istio-ca-root-cert
	// ConfigMap, mounted at /var/run/secrets/istio/root-cert.pem).
	RootCertFile string
	// CAServerName is the name in istiod's serving certificate; empty means
	// the host of CAAddress, or istiod.istio-system.svc when that is an IP.
	CAServerName string
	// CertValidity is requested for each certificate; zero means 24 h.
	CertValidity time.Duration
	// NodeTokenFile holds the agent's own istio-ca token (the chart mounts
	// it at /var/run/secrets/tokens/istio-token). When set, each CSR
	// impersonates the pod's identity as ztunnel's do, and istiod's
	// CA_TRUSTED_NODE_ACCOUNTS must list the agent's service account. Empty
	// means each CSR carries a token bound to the pod itself, which needs
	// the agent's token policy to allow the audience istio-ca.
	NodeTokenFile string
	// ClusterID is sent to istiod with impersonated requests
	// (ISTIO_META_CLUSTER_ID).
	ClusterID string
}

// compatSetup holds what RunNode builds for compatibility mode.
type compatSetup struct {
	certs *rbeauth.IstioCertificates
	roots func() (*x509.CertPool, error)
	close func() error
}

// openCompat dials istiod's CA and builds the certificate set.
func openCompat(cfg *CompatConfig, client kubernetes.Interface, trustDomain string, log *slog.Logger) (*compatSetup, error) {
	if cfg.CAAddress == "" || cfg.RootCertFile == "" {
		return nil, fmt.Errorf("compatibility mode: CA address %q and root certificate file %q must both be set (CA_ADDRESS and the istio-ca-root-cert mount)", cfg.CAAddress, cfg.RootCertFile)
	}
	rootsPEM, err := os.ReadFile(cfg.RootCertFile)
	if err != nil {
		return nil, fmt.Errorf("compatibility mode: read Istio root certificate: %w", err)
	}
	addr := strings.TrimPrefix(cfg.CAAddress, "https://")
	serverName := cfg.CAServerName
	if host, _, err := net.SplitHostPort(addr); err == nil && serverName == "" {
		if _, err := netip.ParseAddr(host); err != nil {
			// A DNS name, such as istiod-<revision>.istio-system.svc, is
			// what istiod's serving certificate names.
			serverName = host
		}
	}
	ca, err := istioca.Dial(addr, rootsPEM, serverName)
	if err != nil {
		return nil, fmt.Errorf("compatibility mode: %w", err)
	}
	var nodeToken func(context.Context) (string, error)
	if cfg.NodeTokenFile != "" {
		// The kubelet rotates the projected token, so read it each time.
		nodeToken = func(context.Context) (string, error) {
			b, err := os.ReadFile(cfg.NodeTokenFile)
			return strings.TrimSpace(string(b)), err
		}
	}
	certs, err := rbeauth.NewIstioCertificates(rbeauth.IstioCertificatesOptions{
		Client: client, Signer: ca, TrustDomain: trustDomain, Validity: cfg.CertValidity,
		NodeToken: nodeToken, ClusterID: cfg.ClusterID, Logger: log,
	})
	if err != nil {
		_ = ca.Close()
		return nil, err
	}
	return &compatSetup{certs: certs, roots: rbeauth.RootsFromFile(cfg.RootCertFile), close: ca.Close}, nil
}

// newCompat builds the compatibility-mode TLS configurations once the view
// exists; it returns nil in strict mode.
func (a *Agent) newCompat() (*rbeauth.Compat, error) {
	if a.cfg.CACertificates == nil {
		return nil, nil
	}
	return rbeauth.NewCompat(a.cfg.Verifier, rbeauth.CompatOptions{
		Roots:      a.cfg.IstioRoots,
		Directory:  viewDirectory{view: a.view, trustDomain: a.cfg.TrustDomain},
		Registerer: a.cfg.Registry,
		Logger:     a.log,
	})
}

// serverTLS returns the HBONE server configuration of an enrolled pod.
func (a *Agent) serverTLS(p *podProxy, rbeCert func() (*tls.Certificate, error)) *tls.Config {
	local := func(netip.Addr) (*tls.Certificate, error) { return rbeCert() }
	if a.compat == nil {
		return a.cfg.Verifier.ServerConfig(local)
	}
	return a.compat.ServerConfig(local, func(netip.Addr) (*tls.Certificate, error) { return a.cfg.CACertificates.Certificate(p.uid) })
}

// clientTLS returns the configuration for one HBONE connection of an
// enrolled pod.
func (a *Agent) clientTLS(p *podProxy, rbeCert func() (*tls.Certificate, error), peer netip.Addr, expected []rbeauth.Identity) *tls.Config {
	if a.compat == nil {
		return a.cfg.Verifier.ClientConfig(rbeCert, peer, expected)
	}
	return a.compat.ClientConfig(rbeCert, func() (*tls.Certificate, error) { return a.cfg.CACertificates.Certificate(p.uid) }, peer, expected)
}

// obtainCACertificate gets the pod's istiod-issued certificate in
// compatibility mode, retrying until it succeeds or ctx ends. RBE does not
// wait for it: istiod being down affects only CA-trusted hops.
func (a *Agent) obtainCACertificate(ctx context.Context, p *podProxy) {
	if a.cfg.CACertificates == nil {
		return
	}
	backoff := 500 * time.Millisecond
	for {
		pod := a.view.Pod(p.namespace, p.name)
		var err error
		if pod == nil || pod.UID != p.uid {
			err = fmt.Errorf("pod not in the API server's view yet")
		} else if err = a.cfg.CACertificates.Obtain(ctx, pod); err == nil {
			return
		}
		if ctx.Err() != nil {
			return
		}
		a.log.Info("istiod certificate pending", "pod", p.namespace+"/"+p.name, "reason", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		// ztunnel backs off from 500 ms to 150 s.
		backoff = min(2*backoff, 150*time.Second)
	}
}

// viewDirectory answers rbeauth's questions about peers from the
// Kubernetes view.
type viewDirectory struct {
	view        *View
	trustDomain string
}

// isMazuPod reports whether a mazu agent annotated the pod as enrolled.
// NOTE: whoever may patch a pod can remove the annotation, and then
// compatibility mode accepts a CA-only peer at that pod's address.
func isMazuPod(pod *corev1.Pod) bool {
	return pod.Annotations[MazuEnrolledAnnotation] == "true"
}

func (d viewDirectory) PodAt(ip netip.Addr) (rbeauth.PodFacts, bool) {
	pod := d.view.PodByIP(ip)
	if pod == nil {
		return rbeauth.PodFacts{}, false
	}
	return rbeauth.PodFacts{Identity: PodIdentity(pod, d.trustDomain), Mazu: isMazuPod(pod)}, true
}

// MazuIdentity scans the pods of the identity's namespace. It runs only
// for CA-trusted handshakes.
func (d viewDirectory) MazuIdentity(id rbeauth.Identity) bool {
	if id.TrustDomain != d.trustDomain {
		return false
	}
	objs, err := d.view.pods.GetIndexer().ByIndex(cache.NamespaceIndex, id.Namespace)
	if err != nil {
		// Without the index, assume the identity is mazu's: that refuses
		// the CA path, which is the safe side.
		return true
	}
	for _, obj := range objs {
		pod := obj.(*corev1.Pod)
		if pod.DeletionTimestamp == nil && isMazuPod(pod) && PodIdentity(pod, d.trustDomain) == id {
			return true
		}
	}
	return false
}
