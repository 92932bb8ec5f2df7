package rbeauth

import (
	"fmt"
	"net/url"
	"strings"
)

// Identity is a workload's SPIFFE identity as Istio writes it:
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// String returns the SPIFFE URI.
func (id Identity) String() string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", id.TrustDomain, id.Namespace, id.ServiceAccount)
}

// Principal returns the identity without the scheme, as AuthorizationPolicy
// principals are written (cluster.local/ns/x/sa/y).
func (id Identity) Principal() string {
	return fmt.Sprintf("%s/ns/%s/sa/%s", id.TrustDomain, id.Namespace, id.ServiceAccount)
}

// URL returns the identity as a URI SAN.
func (id Identity) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: fmt.Sprintf("/ns/%s/sa/%s", id.Namespace, id.ServiceAccount)}
}

// ParseIdentity parses a SPIFFE URI in Istio's format.
func ParseIdentity(s string) (Identity, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "spiffe" || u.Host == "" {
		return Identity{}, fmt.Errorf("invalid SPIFFE identity %q: want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", s)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" || parts[1] == "" || parts[3] == "" {
		return Identity{}, fmt.Errorf("invalid SPIFFE identity %q: path must be /ns/<namespace>/sa/<service-account>", s)
	}
	return Identity{TrustDomain: u.Host, Namespace: parts[1], ServiceAccount: parts[3]}, nil
}
