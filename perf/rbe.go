package perf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/internal/meshtest"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// rbeNamespace is the Kubernetes namespace of the RBE identities; it matches
// the namespace in clientID and serverID.
const rbeNamespace = "perf"

// RBEProxy is the configuration of an RBE HBONE proxy process: its
// workload's certificate, key and staple, and the way to the API server and
// the curator. The proxies run in the node namespaces, where the host's
// loopback is unreachable, so the parent relays both over Unix sockets.
type RBEProxy struct {
	CertDER    []byte `json:"cert_der"`
	KeyPKCS8   []byte `json:"key_pkcs8"`
	Staple     []byte `json:"staple"`
	Kubeconfig string `json:"kubeconfig"`
	APISocket  string `json:"api_socket"`
	// CuratorSocket carries plain HTTP to the curator.
	CuratorSocket string   `json:"curator_socket"`
	LogVKey       string   `json:"log_vkey"`
	WitnessVKeys  []string `json:"witness_vkeys"`
	CRSFile       string   `json:"crs_file"`
	// Expect is the identity the outbound side requires of the server.
	Expect string `json:"expect,omitempty"`
	// ForgetUID, when set, makes every new connection start with a cold
	// verifier: the peer pod's cached TokenReview, pod lookup and
	// registration verdict are dropped with Verifier.ForgetPod first.
	ForgetUID string `json:"forget_uid,omitempty"`
}

// rbeEnv is the RBE side of one suite run: a testbed API server, a curator
// with witnesses, and the registered client and server identities.
type rbeEnv struct {
	tb       *testbed.Testbed
	mesh     *meshtest.Curator
	wl       *rbeauth.Workloads
	dir      string
	relays   []net.Listener
	base     RBEProxy
	client   RBEProxy
	server   RBEProxy
	srvUID   string
	cliUID   string
	extra    atomic.Int64 // successful background registrations
	attempts atomic.Int64
	log      *slog.Logger
	stopped  bool
}

// startRBE starts the RBE environment. clientIP and serverIP are the
// addresses the HBONE peers see of each other: the outbound proxy dials
// from node A's address and the inbound proxy listens on node B's. The pods
// registered for those addresses are the client and server workloads,
// because the suite has no traffic capture that would keep pod addresses.
func startRBE(ctx context.Context, log *slog.Logger, clientIP, serverIP netip.Addr) (_ *rbeEnv, err error) {
	bin, err := testbed.FindBinaries()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoTestbed, err)
	}
	e := &rbeEnv{log: log}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if e.dir, err = os.MkdirTemp("", "mazu-perf-rbe-"); err != nil {
		return nil, err
	}
	if e.tb, err = testbed.Start(ctx, testbed.Options{BinDir: bin, NoControllerManager: true, Logger: log}); err != nil {
		return nil, fmt.Errorf("start testbed: %w", err)
	}

	client := e.tb.Client()
	if err := e.tb.EnsureNamespace(ctx, rbeNamespace); err != nil {
		return nil, err
	}
	for _, sa := range []string{"client", "server", "extra"} {
		if err := e.tb.EnsureServiceAccount(ctx, rbeNamespace, sa); err != nil {
			return nil, err
		}
	}
	if e.mesh, err = meshtest.StartCurator(ctx, meshtest.CuratorOptions{Client: client, Dir: e.dir, Witnesses: 2, BlockSize: 16, Logger: log}); err != nil {
		return nil, fmt.Errorf("start curator: %w", err)
	}

	cc := &curator.Client{URL: e.mesh.URL}
	if e.wl, err = rbeauth.NewWorkloads(rbeauth.WorkloadsOptions{
		Client: client, Curator: cc, Policy: e.mesh.Policy, CRS: e.mesh.CRS,
		TrustDomain: testbed.TrustDomain, Audience: curator.DefaultAudience, Logger: log,
	}); err != nil {
		return nil, err
	}

	apiSock, curSock := filepath.Join(e.dir, "api.sock"), filepath.Join(e.dir, "curator.sock")
	apiHost := strings.TrimPrefix(e.tb.APIServerURL(), "https://")
	if err := e.relay(apiSock, apiHost); err != nil {
		return nil, err
	}
	if err := e.relay(curSock, strings.TrimPrefix(e.mesh.URL, "http://")); err != nil {
		return nil, err
	}
	e.base = RBEProxy{Kubeconfig: e.tb.Kubeconfig(), APISocket: apiSock, CuratorSocket: curSock,
		LogVKey: e.mesh.LogVKey, WitnessVKeys: e.mesh.WitnessVKeys, CRSFile: e.mesh.CRSFile}

	cli, uid, err := e.register(ctx, "client", "client", clientIP)
	if err != nil {
		return nil, err
	}
	e.client, e.cliUID = cli, uid
	srv, uid, err := e.register(ctx, "server", "server", serverIP)
	if err != nil {
		return nil, err
	}
	e.server, e.srvUID = srv, uid
	e.client.Expect = serverID
	return e, nil
}

// errNoTestbed marks a run without the testbed binaries; the RBE rows are
// then reported as not run.
var errNoTestbed = errors.New("testbed binaries missing")

// register creates a pod object holding ip and registers its identity.
func (e *rbeEnv) register(ctx context.Context, name, sa string, ip netip.Addr) (RBEProxy, string, error) {
	client := e.tb.Client()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: rbeNamespace, Name: name},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: "perf-node",
			Containers: []corev1.Container{{Name: "app", Image: "perf.invalid/app"}}},
	}
	created, err := client.CoreV1().Pods(rbeNamespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return RBEProxy{}, "", fmt.Errorf("create pod %s: %w", name, err)
	}
	created.Status.Phase = corev1.PodRunning
	created.Status.PodIP = ip.String()
	created.Status.PodIPs = []corev1.PodIP{{IP: ip.String()}}
	if created, err = client.CoreV1().Pods(rbeNamespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return RBEProxy{}, "", fmt.Errorf("set pod %s address: %w", name, err)
	}
	if err := e.wl.Register(ctx, created, ip); err != nil {
		return RBEProxy{}, "", fmt.Errorf("register pod %s: %w", name, err)
	}
	cert, err := e.wl.Certificate(created.UID)
	if err != nil {
		return RBEProxy{}, "", err
	}
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return RBEProxy{}, "", fmt.Errorf("encode key of pod %s: %w", name, err)
	}
	p := e.base
	p.CertDER, p.KeyPKCS8, p.Staple = cert.Certificate[0], key, cert.SignedCertificateTimestamps[0]
	return p, string(created.UID), nil
}

// updates registers more identities, one after another, until ctx ends or
// max registrations were made, so that the log grows and the proxies'
// trusted checkpoints move during a measurement. It calls registered after
// each success.
func (e *rbeEnv) updates(ctx context.Context, max int, registered func()) {
	for range max {
		if ctx.Err() != nil {
			return
		}
		n := e.attempts.Add(1)
		// The suite's links leave 198.18.100.0 to 198.18.111.255 unused.
		// These addresses only go into Pod objects and are never dialled.
		ip := netip.AddrFrom4([4]byte{198, 18, 100 + byte(n/250), byte(1 + n%250)})
		if _, _, err := e.register(ctx, fmt.Sprintf("extra-%d", n), "extra", ip); err != nil {
			if ctx.Err() == nil {
				e.log.Warn("background registration failed", "err", err)
			}
			return
		}
		e.extra.Add(1)
		registered()
	}
}

// relay forwards connections on a Unix socket to a loopback TCP address.
func (e *rbeEnv) relay(sock, target string) error {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("relay %s: %w", sock, err)
	}
	e.relays = append(e.relays, ln)
	go acceptLoop(ln, func(c net.Conn) {
		defer c.Close()
		up, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer up.Close()
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
		_, _ = io.Copy(c, up)
		wg.Wait()
	})
	return nil
}

// Close stops the curator and the testbed.
func (e *rbeEnv) Close() {
	if e == nil || e.stopped {
		return
	}
	e.stopped = true
	for _, ln := range e.relays {
		ln.Close()
	}
	if e.mesh != nil {
		_ = e.mesh.Stop()
	}
	if e.tb != nil {
		if err := e.tb.Stop(); err != nil {
			e.log.Error("stop testbed", "err", err)
		}
	}
	if e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
}

// rbeVerifier builds, inside a proxy process, a verifier over the curator
// registry with a node view refreshed every second, as a node agent's log
// monitor would.
func rbeVerifier(ctx context.Context, log *slog.Logger, p *RBEProxy) (*rbeauth.Verifier, *tls.Certificate, error) {
	kc, err := clientcmd.BuildConfigFromFlags("", p.Kubeconfig)
	if err != nil {
		return nil, nil, fmt.Errorf("load kubeconfig %s: %w", p.Kubeconfig, err)
	}
	var d net.Dialer
	kc.Dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
		return d.DialContext(ctx, "unix", p.APISocket)
	}
	kc.QPS, kc.Burst = 1000, 2000
	kube, err := kubernetes.NewForConfig(kc)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", p.CuratorSocket)
		}}}
	cc := &curator.Client{URL: "http://curator.invalid", HTTP: hc}
	policy, err := curator.NewPolicy(meshtest.Origin, p.LogVKey, p.WitnessVKeys, 0)
	if err != nil {
		return nil, nil, err
	}
	raw, err := os.ReadFile(p.CRSFile)
	if err != nil {
		return nil, nil, fmt.Errorf("read CRS: %w", err)
	}
	crs, err := rbe.ParseCRS(raw)
	if err != nil {
		return nil, nil, err
	}
	var trusted atomic.Pointer[curator.Checkpoint]
	refresh := func() error {
		raw, err := cc.Checkpoint(ctx)
		if err != nil {
			return err
		}
		cp, err := policy.Open(raw, time.Now())
		if err != nil {
			return err
		}
		trusted.Store(cp)
		return nil
	}
	if err := refresh(); err != nil {
		return nil, nil, fmt.Errorf("read the curator's checkpoint: %w", err)
	}
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := refresh(); err != nil {
					log.Warn("checkpoint refresh failed", "err", err)
				}
			}
		}
	}()
	reg, err := rbeauth.NewCuratorRegistry(policy, crs, cc, trusted.Load)
	if err != nil {
		return nil, nil, err
	}
	v, err := rbeauth.NewVerifier(rbeauth.VerifierOptions{Client: kube, TrustDomain: testbed.TrustDomain,
		Audience: curator.DefaultAudience, Registry: reg, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(p.KeyPKCS8)
	if err != nil {
		return nil, nil, fmt.Errorf("parse workload key: %w", err)
	}
	cert := &tls.Certificate{Certificate: [][]byte{p.CertDER}, PrivateKey: key, SignedCertificateTimestamps: [][]byte{p.Staple}}
	return v, cert, nil
}

// background runs updates until the returned function is called, which
// waits for it and returns how many identities it registered and how long
// after the start the last of them completed.
func (e *rbeEnv) background(ctx context.Context, max int) func() (int64, time.Duration) {
	ctx, cancel := context.WithCancel(ctx)
	before := e.extra.Load()
	start := time.Now()
	done := make(chan struct{})
	var last time.Duration
	go func() {
		defer close(done)
		e.updates(ctx, max, func() { last = time.Since(start) })
	}()
	return func() (int64, time.Duration) {
		cancel()
		<-done
		return e.extra.Load() - before, last
	}
}
