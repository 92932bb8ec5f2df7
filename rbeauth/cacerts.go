package rbeauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// IstioCAAudience is the token audience istiod's CA accepts.
const IstioCAAudience = "istio-ca"

// CASigner signs a CSR for a SPIFFE identity, authenticated by a token.
// internal/istioca.Client implements it against istiod.
type CASigner interface {
	// Sign authenticates with a token of the identity itself.
	Sign(ctx context.Context, token string, key crypto.Signer, spiffeID string, validity time.Duration) ([]*x509.Certificate, error)
	// SignImpersonated authenticates with the node proxy's own token and
	// names spiffeID as the impersonated identity.
	SignImpersonated(ctx context.Context, token, clusterID string, key crypto.Signer, spiffeID string, validity time.Duration) ([]*x509.Certificate, error)
}

// IstioCertificatesOptions configures IstioCertificates.
type IstioCertificatesOptions struct {
	// Client requests the pod-bound tokens that authenticate each CSR.
	Client      kubernetes.Interface
	Signer      CASigner
	TrustDomain string
	// Validity requested for each certificate; zero means 24 h, as
	// ztunnel's SECRET_TTL.
	Validity time.Duration
	// NodeToken, when set, returns the agent's own istio-ca token, and
	// each CSR impersonates the pod's identity as ztunnel's do. Nil means
	// each CSR carries a token bound to the pod itself.
	NodeToken func(ctx context.Context) (string, error)
	// ClusterID is sent with impersonated requests (ISTIO_META_CLUSTER_ID).
	ClusterID string
	Logger    *slog.Logger
}

// IstioCertificates holds an istiod-issued certificate for each enrolled
// pod, for compatibility mode only. Each CSR is authenticated in one of two
// ways. With NodeToken, as ztunnel does: the agent's own istio-ca token
// with the pod's identity as ImpersonatedIdentity, which istiod allows only
// for accounts listed in CA_TRUSTED_NODE_ACCOUNTS and only for identities
// with a pod on the agent's node. Without it: a token bound to the pod
// itself, for the audience istio-ca, which needs no istiod configuration
// but needs the agent to be allowed to request that audience. Either way
// istiod signs only identities of pods that exist. A certificate is
// renewed at half its lifetime, and the valid one is kept when renewal fails.
type IstioCertificates struct {
	client      kubernetes.Interface
	signer      CASigner
	nodeToken   func(context.Context) (string, error)
	clusterID   string
	trustDomain string
	validity    time.Duration
	log         *slog.Logger
	now         func() time.Time

	mu    sync.Mutex
	certs map[types.UID]*caCert
}

type caCert struct {
	namespace, name, serviceAccount string
	cert                            *tls.Certificate
	notBefore, notAfter             time.Time
}

// NewIstioCertificates returns an empty set.
func NewIstioCertificates(opts IstioCertificatesOptions) (*IstioCertificates, error) {
	if opts.Client == nil || opts.Signer == nil || opts.TrustDomain == "" {
		return nil, errors.New("new istiod certificates: a Kubernetes client, a CA signer and a trust domain are all required")
	}
	validity := opts.Validity
	if validity == 0 {
		validity = 24 * time.Hour
	}
	if validity < 10*time.Minute {
		return nil, fmt.Errorf("new istiod certificates: validity %s is below 10m; renewals would flood istiod", validity)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &IstioCertificates{
		client: opts.Client, signer: opts.Signer, trustDomain: opts.TrustDomain,
		nodeToken: opts.NodeToken, clusterID: opts.ClusterID,
		validity: validity, log: log, now: time.Now, certs: map[types.UID]*caCert{},
	}, nil
}

// Obtain requests a certificate for the pod from the CA and keeps it.
func (c *IstioCertificates) Obtain(ctx context.Context, pod *corev1.Pod) error {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	entry := &caCert{namespace: pod.Namespace, name: pod.Name, serviceAccount: sa}
	if err := c.sign(ctx, pod.UID, entry); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		// The pod left while its certificate was being issued.
		return fmt.Errorf("istiod certificate for %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	c.mu.Lock()
	c.certs[pod.UID] = entry
	c.mu.Unlock()
	return nil
}

func (c *IstioCertificates) sign(ctx context.Context, uid types.UID, entry *caCert) error {
	id := Identity{TrustDomain: c.trustDomain, Namespace: entry.namespace, ServiceAccount: entry.serviceAccount}
	// ECDSA P-256, as ztunnel's CSRs.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("istiod certificate for %s/%s: generate key: %w", entry.namespace, entry.name, err)
	}
	var chain []*x509.Certificate
	if c.nodeToken != nil {
		token, err := c.nodeToken(ctx)
		if err != nil {
			return fmt.Errorf("istiod certificate for %s/%s: read the agent's %s token: %w", entry.namespace, entry.name, IstioCAAudience, err)
		}
		chain, err = c.signer.SignImpersonated(ctx, token, c.clusterID, key, id.String(), c.validity)
		if err != nil {
			return fmt.Errorf("istiod certificate for %s/%s: %w (istiod's CA_TRUSTED_NODE_ACCOUNTS must list the agent's service account)", entry.namespace, entry.name, err)
		}
	} else {
		token, err := c.podToken(ctx, uid, entry)
		if err != nil {
			return err
		}
		if chain, err = c.signer.Sign(ctx, token, key, id.String(), c.validity); err != nil {
			return fmt.Errorf("istiod certificate for %s/%s: %w", entry.namespace, entry.name, err)
		}
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		return fmt.Errorf("istiod certificate for %s/%s: the CA issued URI SANs %v, want [%s]", entry.namespace, entry.name, leaf.URIs, id)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	// Send the leaf and intermediates. Peers have the root.
	for i, x := range chain {
		if i > 0 && i == len(chain)-1 && isSelfSigned(x) {
			break
		}
		cert.Certificate = append(cert.Certificate, x.Raw)
	}
	c.mu.Lock()
	entry.cert, entry.notBefore, entry.notAfter = cert, leaf.NotBefore, leaf.NotAfter
	c.mu.Unlock()
	c.log.Info("istiod certificate issued for compatibility mode", "pod", entry.namespace+"/"+entry.name, "identity", id.String(), "not_after", leaf.NotAfter)
	return nil
}

// podToken requests a token bound to the pod for istiod. It lives only
// for this request; 10 minutes is the API server's minimum.
func (c *IstioCertificates) podToken(ctx context.Context, uid types.UID, entry *caCert) (string, error) {
	seconds := int64(600)
	resp, err := c.client.CoreV1().ServiceAccounts(entry.namespace).CreateToken(ctx, entry.serviceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{IstioCAAudience},
			ExpirationSeconds: &seconds,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: entry.name, UID: uid},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("istiod certificate for %s/%s: request %s token: %w", entry.namespace, entry.name, IstioCAAudience, err)
	}
	return resp.Status.Token, nil
}

func isSelfSigned(cert *x509.Certificate) bool {
	return cert.CheckSignatureFrom(cert) == nil
}

// Certificate returns the pod's istiod-issued certificate.
func (c *IstioCertificates) Certificate(uid types.UID) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	entry, ok := c.certs[uid]
	if !ok || entry.cert == nil {
		return nil, fmt.Errorf("no istiod-issued certificate for pod %s yet", uid)
	}
	if c.now().After(entry.notAfter) {
		return nil, fmt.Errorf("istiod-issued certificate for pod %s/%s expired at %s", entry.namespace, entry.name, entry.notAfter.UTC().Format(time.RFC3339))
	}
	return entry.cert, nil
}

// Forget drops the pod's certificate.
func (c *IstioCertificates) Forget(uid types.UID) {
	c.mu.Lock()
	delete(c.certs, uid)
	c.mu.Unlock()
}

// Run renews certificates past half their lifetime until ctx ends.
func (c *IstioCertificates) Run(ctx context.Context) {
	ticker := time.NewTicker(30 * time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		c.renewDue(ctx)
	}
}

func (c *IstioCertificates) renewDue(ctx context.Context) {
	now := c.now()
	type due struct {
		uid   types.UID
		entry *caCert
	}
	var list []due
	c.mu.Lock()
	for uid, e := range c.certs {
		if now.After(e.notBefore.Add(e.notAfter.Sub(e.notBefore) / 2)) {
			list = append(list, due{uid, e})
		}
	}
	c.mu.Unlock()
	for _, d := range list {
		if err := c.sign(ctx, d.uid, d.entry); err != nil {
			c.log.Warn("istiod certificate not renewed; the current one is kept", "pod", d.entry.namespace+"/"+d.entry.name, "error", err)
		}
	}
}
