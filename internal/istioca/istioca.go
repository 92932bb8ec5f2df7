// Package istioca requests workload certificates from istiod's CA through
// IstioCertificateService.CreateCertificate, as ztunnel does. mazu-ztunnel
// trusts nothing istiod signs between its own peers. It uses these
// certificates only toward peers that verify against Istio's CA alone, and
// the testbed uses them to check that istiod runs.
package istioca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// DefaultServerName is the name istiod's serving certificate carries.
const DefaultServerName = "istiod.istio-system.svc"

// Client talks to one istiod CA endpoint.
type Client struct {
	conn   *grpc.ClientConn
	client securityv1alpha1.IstioCertificateServiceClient
}

// Dial connects to istiod's CA at addr (host:port), verifying it against
// roots, the PEM of Istio's root certificate (the istio-ca-root-cert
// ConfigMap). An empty serverName means DefaultServerName.
func Dial(addr string, rootsPEM []byte, serverName string) (*Client, error) {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootsPEM) {
		return nil, errors.New("dial istiod CA: the root certificate contains no PEM certificate")
	}
	if serverName == "" {
		serverName = DefaultServerName
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("dial istiod CA %s: %w", addr, err)
	}
	return &Client{conn: conn, client: securityv1alpha1.NewIstioCertificateServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Sign sends a CSR for the SPIFFE identity with a pod-bound token for the
// audience istio-ca, and returns the certificate chain, leaf first. istiod
// signs only the token's own service account.
func (c *Client) Sign(ctx context.Context, token string, key crypto.Signer, spiffeID string, validity time.Duration) ([]*x509.Certificate, error) {
	return c.sign(ctx, token, key, spiffeID, validity, "", nil)
}

// SignImpersonated sends a CSR for spiffeID as a node proxy does: token is
// the proxy's own istio-ca token and the request names spiffeID as its
// ImpersonatedIdentity. istiod signs it only if CA_TRUSTED_NODE_ACCOUNTS
// lists the proxy's service account and a pod with that identity runs on
// the proxy's node. clusterID selects istiod's cluster (ISTIO_META_CLUSTER_ID).
func (c *Client) SignImpersonated(ctx context.Context, token, clusterID string, key crypto.Signer, spiffeID string, validity time.Duration) ([]*x509.Certificate, error) {
	meta, err := structpb.NewStruct(map[string]any{"ImpersonatedIdentity": spiffeID})
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: metadata: %w", spiffeID, err)
	}
	return c.sign(ctx, token, key, spiffeID, validity, clusterID, meta)
}

func (c *Client) sign(ctx context.Context, token string, key crypto.Signer, spiffeID string, validity time.Duration, clusterID string, meta *structpb.Struct) ([]*x509.Certificate, error) {
	uri, err := url.Parse(spiffeID)
	if err != nil || uri.Scheme != "spiffe" {
		return nil, fmt.Errorf("sign certificate: invalid SPIFFE ID %q: want spiffe://<trust-domain>/ns/<ns>/sa/<sa>", spiffeID)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{},
		URIs:    []*url.URL{uri},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: create CSR: %w", err)
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	if clusterID != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "clusterid", clusterID)
	}
	resp, err := c.client.CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{
		Csr:              string(csrPEM),
		ValidityDuration: int64(validity / time.Second),
		Metadata:         meta,
	})
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", spiffeID, err)
	}
	var chain []*x509.Certificate
	for i, certPEM := range resp.GetCertChain() {
		block, _ := pem.Decode([]byte(certPEM))
		if block == nil {
			return nil, fmt.Errorf("sign certificate for %s: certificate %d of the response is not PEM", spiffeID, i)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("sign certificate for %s: parse certificate %d: %w", spiffeID, i, err)
		}
		chain = append(chain, cert)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("sign certificate for %s: empty certificate chain", spiffeID)
	}
	return chain, nil
}
