package rbeauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ALPNRBE is the ALPN value two mazu peers negotiate: HTTP/2 framing, as
// under "h2", with both ends authenticated by registration-based
// certificates. A mazu client offers it before "h2" and a mazu server
// selects it whenever offered, so two mazu peers never settle on the
// Istio CA between themselves. The tunnel package accepts it as an HBONE
// protocol under the same value.
const ALPNRBE = "mazu-rbe-h2"

// Compatibility-mode failures.
var (
	// ErrMazuPeerWithoutRBE rejects a peer that Kubernetes shows is a
	// mazu-enrolled pod, or that claims an identity only mazu-enrolled pods
	// hold, when it tried to authenticate through the Istio CA.
	ErrMazuPeerWithoutRBE = errors.New("mazu peer did not authenticate with RBE")
	// ErrCAChain rejects a certificate that does not chain to Istio's root
	// or names no identity of the expected trust domain.
	ErrCAChain = errors.New("peer certificate not valid under the Istio CA")
)

// PodFacts contains the Kubernetes API's facts about the pod at an address.
type PodFacts struct {
	// Identity is the pod's service account as a SPIFFE identity.
	Identity Identity
	// Mazu is true when a mazu agent enrolled the pod.
	Mazu bool
}

// Directory reports, from the Kubernetes API, which peers are mazu pods.
type Directory interface {
	// PodAt returns the running pod with the address; false when none.
	PodAt(ip netip.Addr) (PodFacts, bool)
	// MazuIdentity reports whether a mazu-enrolled pod runs as id.
	MazuIdentity(id Identity) bool
}

// CompatOptions configures compatibility mode.
type CompatOptions struct {
	// Roots returns Istio's current root certificates. It is called for
	// every CA-trusted handshake, so a rotated root takes effect at once.
	Roots func() (*x509.CertPool, error)
	// Directory distinguishes mazu peers from stock ones.
	Directory Directory
	// Registerer receives mazu_ca_trusted_connections_total; nil registers
	// none.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Compat builds TLS configurations for compatibility mode. Between mazu
// peers they negotiate ALPNRBE and verify with the Verifier, as in strict
// mode. Toward a peer that offers or selects only "h2" (a stock ztunnel,
// waypoint, gateway or sidecar) they present the workload's istiod-issued
// certificate and verify the peer against Istio's root, unless Kubernetes
// says the peer is a mazu pod. Every such CA-trusted connection is counted
// and logged.
type Compat struct {
	v      *Verifier
	roots  func() (*x509.CertPool, error)
	dir    Directory
	log    *slog.Logger
	caHops *prometheus.CounterVec
}

// NewCompat returns the compatibility-mode configurations for v.
func NewCompat(v *Verifier, opts CompatOptions) (*Compat, error) {
	if v == nil || opts.Roots == nil || opts.Directory == nil {
		return nil, errors.New("new compat mode: a verifier, Istio roots and a Kubernetes directory are all required")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Compat{
		v: v, roots: opts.Roots, dir: opts.Directory, log: log,
		caHops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mazu_ca_trusted_connections_total",
			Help: "HBONE connections authenticated through the Istio CA instead of RBE (compatibility mode), by direction and peer identity.",
		}, []string{"direction", "peer_identity"}),
	}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(c.caHops); err != nil {
			return nil, fmt.Errorf("new compat mode: register metrics: %w", err)
		}
	}
	return c, nil
}

// hbonePath is the authentication path of one connection.
type hbonePath int

const (
	// pathRBE: ALPNRBE negotiated, both ends verified with RBE.
	pathRBE hbonePath = iota + 1
	// pathRBEOverH2: "h2" negotiated with a peer that did not offer
	// ALPNRBE, but RBE is still required (strict mode). A stock peer fails.
	pathRBEOverH2
	// pathCA: "h2" negotiated, both ends verified against Istio's CA.
	pathCA
)

func (p hbonePath) String() string {
	switch p {
	case pathRBE:
		return "rbe"
	case pathRBEOverH2:
		return "rbe-over-h2"
	case pathCA:
		return "istio-ca"
	}
	return "none"
}

// serverPath picks the server's path from the client's ALPN offer. compat
// is false in strict mode, and peer and known describe the client's address.
func serverPath(offered []string, compat bool, peer PodFacts, known bool) (hbonePath, error) {
	switch {
	case slices.Contains(offered, ALPNRBE):
		return pathRBE, nil
	case !compat:
		return pathRBEOverH2, nil
	case known && peer.Mazu:
		return 0, fmt.Errorf("%w: %s is a mazu-enrolled pod but offered only ALPN %q", ErrMazuPeerWithoutRBE, peer.Identity, offered)
	}
	return pathCA, nil
}

// clientOffer returns the ALPN values a client offers, and whether it may
// accept a CA-trusted server. Only a compat client toward a peer that
// Kubernetes does not show as a mazu pod may. A client toward a mazu pod
// offers ALPNRBE alone, so a server cannot downgrade it to "h2".
func clientOffer(compat, dstMazu bool) (offer []string, caAllowed bool) {
	switch {
	case !compat:
		return []string{ALPNRBE, ALPN}, false
	case dstMazu:
		return []string{ALPNRBE}, false
	}
	return []string{ALPNRBE, ALPN}, true
}

// clientPath picks the client's path from the negotiated protocol.
func clientPath(negotiated string, caAllowed bool) hbonePath {
	switch {
	case negotiated == ALPNRBE:
		return pathRBE
	case caAllowed:
		return pathCA
	}
	return pathRBEOverH2
}

// checkCAPeer refuses a CA-trusted peer that Kubernetes ties to mazu: the
// pod at its address is mazu-enrolled, or the identity it claims belongs to
// mazu-enrolled pods and the address is not a non-mazu pod with that
// identity.
func checkCAPeer(dir Directory, ip netip.Addr, id Identity) error {
	pod, known := dir.PodAt(ip)
	if known && pod.Mazu {
		return fmt.Errorf("%w: %s is a mazu-enrolled pod (%s)", ErrMazuPeerWithoutRBE, ip, pod.Identity)
	}
	if dir.MazuIdentity(id) && (!known || pod.Identity != id) {
		return fmt.Errorf("%w: identity %s belongs to mazu-enrolled pods, and %s is not a non-mazu pod with that identity; use the RBE path (ALPN mazu-rbe-h2)", ErrMazuPeerWithoutRBE, id, ip)
	}
	return nil
}

// verifyCA checks a peer certificate chain against Istio's roots, as a
// stock ztunnel does (WebPKI chain with the given key usage, then a SPIFFE
// URI SAN in the trust domain), and returns the peer's identity.
func (c *Compat) verifyCA(cs tls.ConnectionState, usage x509.ExtKeyUsage) (Identity, error) {
	if len(cs.PeerCertificates) == 0 {
		return Identity{}, fmt.Errorf("%w: no peer certificate", ErrCAChain)
	}
	roots, err := c.roots()
	if err != nil {
		return Identity{}, fmt.Errorf("%w: Istio roots unavailable: %v", ErrCAChain, err)
	}
	leaf := cs.PeerCertificates[0]
	intermediates := x509.NewCertPool()
	for _, cert := range cs.PeerCertificates[1:] {
		intermediates.AddCert(cert)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: c.v.now()}); err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrCAChain, err)
	}
	id, err := PeerIdentity(cs)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrCAChain, err)
	}
	if id.TrustDomain != c.v.trustDomain {
		return Identity{}, fmt.Errorf("%w: %s is outside trust domain %s", ErrCAChain, id, c.v.trustDomain)
	}
	return id, nil
}

// acceptCA runs the CA-path checks and counts, logs or records the result.
func (c *Compat) acceptCA(cs tls.ConnectionState, peerIP netip.Addr, direction string, expected []Identity) error {
	usage := x509.ExtKeyUsageClientAuth
	if direction == "outbound" {
		usage = x509.ExtKeyUsageServerAuth
	}
	id, err := c.verifyCA(cs, usage)
	if err == nil && len(expected) > 0 && !slices.Contains(expected, id) {
		err = fmt.Errorf("%w: peer is %s, expected one of %v", ErrIdentityMismatch, id, expected)
	}
	if err == nil {
		err = checkCAPeer(c.dir, peerIP, id)
	}
	if err != nil {
		c.v.log.Warn("CA-trusted peer rejected", "direction", direction, "peer_ip", peerIP, "reason", Reason(err), "error", err)
		c.v.results.WithLabelValues("rejected", Reason(err)).Inc()
		return err
	}
	c.caHops.WithLabelValues(direction, id.String()).Inc()
	c.log.Info("connection trusted through the Istio CA", "direction", direction, "peer_identity", id.String(), "peer_ip", peerIP)
	return nil
}

// ServerConfig returns the HBONE server configuration. rbeCert returns the
// local workload's RBE certificate and caCert its istiod-issued one.
func (c *Compat) ServerConfig(rbeCert, caCert CertificateFunc) *tls.Config {
	return c.v.serverConfig(c, rbeCert, caCert)
}

// ClientConfig returns the configuration for one HBONE connection to
// peerIP, which must prove one of the expected identities.
func (c *Compat) ClientConfig(rbeCert, caCert func() (*tls.Certificate, error), peerIP netip.Addr, expected []Identity) *tls.Config {
	return c.v.clientConfig(c, rbeCert, caCert, peerIP, expected)
}

// serverConfig serves strict mode (c == nil) and compatibility mode.
func (v *Verifier) serverConfig(c *Compat, rbeCert, caCert CertificateFunc) *tls.Config {
	cfg := baseConfig()
	cfg.NextProtos = []string{ALPNRBE, ALPN}
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		peerIP, err := addrOf(hello.Conn.RemoteAddr())
		if err != nil {
			return nil, err
		}
		localIP, err := addrOf(hello.Conn.LocalAddr())
		if err != nil {
			return nil, err
		}
		var peer PodFacts
		var known bool
		if c != nil {
			peer, known = c.dir.PodAt(peerIP)
		}
		path, err := serverPath(hello.SupportedProtos, c != nil, peer, known)
		if err != nil {
			v.log.Warn("peer rejected", "peer_ip", peerIP, "reason", Reason(err), "error", err)
			v.results.WithLabelValues("rejected", Reason(err)).Inc()
			return nil, err
		}
		conn := baseConfig()
		if path == pathCA {
			cert, err := caCert(localIP)
			if err != nil {
				return nil, fmt.Errorf("istiod-issued server certificate for %s: %w", localIP, err)
			}
			roots, err := c.roots()
			if err != nil {
				return nil, fmt.Errorf("istio roots: %w", err)
			}
			conn.Certificates = []tls.Certificate{*cert}
			conn.ClientAuth = tls.RequireAndVerifyClientCert
			conn.ClientCAs = roots
			conn.VerifyConnection = func(cs tls.ConnectionState) error {
				return c.acceptCA(cs, peerIP, "inbound", nil)
			}
			return conn, nil
		}
		if path == pathRBE {
			conn.NextProtos = []string{ALPNRBE}
		}
		cert, err := rbeCert(localIP)
		if err != nil {
			return nil, fmt.Errorf("server certificate for %s: %w", localIP, err)
		}
		conn.Certificates = []tls.Certificate{*cert}
		// The client presents a self-signed certificate; VerifyConnection
		// does every check.
		conn.ClientAuth = tls.RequireAnyClientCert
		conn.VerifyConnection = func(cs tls.ConnectionState) error {
			ctx, cancel := context.WithTimeout(context.Background(), verifyTimeout)
			defer cancel()
			_, err := v.VerifyPeer(ctx, cs, peerIP, nil)
			return err
		}
		return conn, nil
	}
	return cfg
}

// clientConfig serves strict mode (c == nil) and compatibility mode.
func (v *Verifier) clientConfig(c *Compat, rbeCert, caCert func() (*tls.Certificate, error), peerIP netip.Addr, expected []Identity) *tls.Config {
	dstMazu := false
	if c != nil {
		pod, known := c.dir.PodAt(peerIP)
		dstMazu = known && pod.Mazu
	}
	offer, caAllowed := clientOffer(c != nil, dstMazu)
	cfg := baseConfig()
	cfg.NextProtos = offer
	// The certificate depends on the path, which the server's ALPN choice
	// decides. In TLS 1.3 the client verifies the server (VerifyConnection)
	// before it sends its own certificate, so the path is known by then.
	// NOTE: crypto/tls does not document this order. TestCompatPeersUseRBE
	// and TestCompatClientTrustsStockServerStrictRefuses fail if it changes.
	var mu sync.Mutex
	var path hbonePath
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		mu.Lock()
		p := path
		mu.Unlock()
		switch p {
		case pathCA:
			return caCert()
		case pathRBE, pathRBEOverH2:
			return rbeCert()
		}
		return nil, errors.New("client certificate requested before the server was verified")
	}
	// There is no CA chain to check on the RBE path: VerifyConnection does
	// every check. No server name is sent, as in ztunnel.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		p := clientPath(cs.NegotiatedProtocol, caAllowed)
		mu.Lock()
		path = p
		mu.Unlock()
		if p == pathCA {
			return c.acceptCA(cs, peerIP, "outbound", expected)
		}
		ctx, cancel := context.WithTimeout(context.Background(), verifyTimeout)
		defer cancel()
		_, err := v.VerifyPeer(ctx, cs, peerIP, expected)
		return err
	}
	return cfg
}

// RootsFromFile returns a Roots function for CompatOptions that reads PEM
// roots from path, such as the mounted istio-ca-root-cert ConfigMap, and
// re-reads the file when its modification time changes.
func RootsFromFile(path string) func() (*x509.CertPool, error) {
	var mu sync.Mutex
	var pool *x509.CertPool
	var modTime time.Time
	return func() (*x509.CertPool, error) {
		info, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("read Istio root certificate: %w", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if pool != nil && info.ModTime().Equal(modTime) {
			return pool, nil
		}
		pemBytes, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read Istio root certificate: %w", err)
		}
		p := x509.NewCertPool()
		if !p.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("read Istio root certificate %s: no PEM certificate in it; mount the istio-ca-root-cert ConfigMap there", path)
		}
		pool, modTime = p, info.ModTime()
		return pool, nil
	}
}
