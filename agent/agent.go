// Package agent is the mazu-ztunnel node agent: it enrolls the ambient pods
// of its node, captures their traffic with eBPF, and carries it in HBONE
// between peers that rbeauth verified. Identity and routing facts come only
// from the Kubernetes API.
package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/mazu-mesh/mazu-ztunnel/agent/cni"
	"github.com/mazu-mesh/mazu-ztunnel/bpf"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/tunnel"
)

// Identities provides each enrolled pod's certificate: it obtains the pod's
// token, registers the pod with the curator and keeps the stapled proof
// bundle current.
type Identities interface {
	// Register obtains the pod's identity and registers it. It returns once
	// the registration is durable in the curator's log.
	Register(ctx context.Context, pod *corev1.Pod, ip netip.Addr) error
	// Certificate returns the pod's current certificate, with its proof
	// bundle in SignedCertificateTimestamps.
	Certificate(uid types.UID) (*tls.Certificate, error)
	// Forget drops the pod's identity and revokes its registration. The
	// identity is dropped even when it returns an error.
	Forget(ctx context.Context, uid types.UID) error
	// Describe returns the pod's certificate and registration state for
	// the admin interface.
	Describe(uid types.UID) any
}

// Config configures an Agent.
type Config struct {
	// NodeName is the node this agent serves (NODE_NAME).
	NodeName string
	// TrustDomain is the SPIFFE trust domain (TRUST_DOMAIN).
	TrustDomain string
	// RootNamespace holds mesh-wide policies (Istio's root namespace).
	RootNamespace string
	// CgroupRoot is the cgroup v2 folder under which the kubelet puts pods:
	// the cgroup2 mount plus the kubelet's --cgroup-root.
	CgroupRoot string
	// CNISocket is the Unix socket path mazu-cni connects to. Empty
	// disables it.
	CNISocket string
	// StateDir keeps the enrolled pods' namespaces across restarts.
	StateDir string
	// NetnsDir is where the host's /var/run/netns is mounted when the agent
	// runs in a container; empty means the agent uses the host's paths.
	NetnsDir string
	// Mark is put on the agent's own sockets so capture skips them
	// (PACKET_MARK, 0x539 by default).
	Mark uint32
	// DrainTimeout bounds how long streams may finish at unenrollment or
	// shutdown.
	DrainTimeout time.Duration
	// PoolIdleTimeout closes pooled HBONE connections without streams
	// after this long; zero means the pool's default of 5 minutes.
	PoolIdleTimeout time.Duration

	Capture    *bpf.Capture
	Client     kubernetes.Interface
	Dynamic    dynamic.Interface
	Identities Identities
	Verifier   *rbeauth.Verifier
	// CACertificates and IstioRoots turn on compatibility mode (see
	// CompatConfig); nil CACertificates means strict mode.
	CACertificates *rbeauth.IstioCertificates
	IstioRoots     func() (*x509.CertPool, error)
	Registry       *prometheus.Registry
	Logger         *slog.Logger
}

// Agent enrolls pods and runs their proxies.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	view    *View
	metrics *tunnel.Metrics
	// waypoints counts and logs connections rejected for a waypoint.
	waypoints *waypointRejections
	cni       *cni.Server
	// compat is nil in strict mode.
	compat *rbeauth.Compat
	// podLocks serializes Enroll and Unenroll per pod.
	podLocks podLocks

	mu      sync.Mutex
	pods    map[types.UID]*podProxy
	ready   bool
	reasons string
	state   *stateFile
	cancel  context.CancelFunc

	// tornDown holds pods whose sandbox mazu-cni tore down (CNI DEL).
	// Their pod events must not enroll them again; a new CNI ADD does.
	tornDown map[types.UID]bool
}

// New validates cfg and builds an Agent. Run starts it.
func New(cfg Config) (*Agent, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("new agent: node name is empty; set NODE_NAME or --node-name")
	}
	if cfg.Capture == nil || cfg.Client == nil || cfg.Dynamic == nil || cfg.Identities == nil || cfg.Verifier == nil {
		return nil, errors.New("new agent: capture, Kubernetes clients, identities and verifier are all required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "cluster.local"
	}
	if cfg.RootNamespace == "" {
		cfg.RootNamespace = "istio-system"
	}
	if cfg.Mark == 0 {
		cfg.Mark = 0x539
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	view, err := NewView(cfg.Client, cfg.Dynamic, cfg.Logger)
	if err != nil {
		return nil, err
	}
	metrics, err := tunnel.NewMetrics(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("new agent: %w", err)
	}
	waypoints, err := newWaypointRejections(cfg.Registry, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("new agent: %w", err)
	}
	state, err := openState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, view: view, metrics: metrics, waypoints: waypoints, pods: map[types.UID]*podProxy{}, tornDown: map[types.UID]bool{}, state: state, reasons: "starting"}
	if err := view.OnPodEvent(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.onPod(obj) },
		UpdateFunc: func(_, obj any) { a.onPod(obj) },
		DeleteFunc: a.onPodDelete,
	}); err != nil {
		return nil, fmt.Errorf("new agent: watch pods: %w", err)
	}
	// A namespace gaining or losing the ambient label changes no pod, so
	// its pods are looked at again here.
	if err := view.OnNamespaceEvent(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) { a.onNamespace(obj) },
	}); err != nil {
		return nil, fmt.Errorf("new agent: watch namespaces: %w", err)
	}
	if a.compat, err = a.newCompat(); err != nil {
		return nil, fmt.Errorf("new agent: %w", err)
	}
	return a, nil
}

// View returns the agent's Kubernetes view.
func (a *Agent) View() *View { return a.view }

// Run syncs the Kubernetes view, re-adopts the pods enrolled before a
// restart, listens for mazu-cni and runs until ctx ends. It then stops
// accepting and drains every pod's proxies.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	defer cancel()
	if err := a.view.Start(ctx, time.Minute); err != nil {
		return err
	}
	a.reconcile(ctx)
	if a.cfg.CNISocket != "" {
		srv, err := cni.Listen(a.cfg.CNISocket, cniHandler{a}, a.log)
		if err != nil {
			return err
		}
		a.cni = srv
		go func() {
			if err := srv.Serve(); err != nil {
				a.log.Error("CNI server stopped", "error", err)
			}
		}()
	}
	a.setReady(true, "")
	a.log.Info("agent ready", "node", a.cfg.NodeName, "enrolled", a.EnrolledCount())
	<-ctx.Done()
	return a.shutdown()
}

func (a *Agent) shutdown() error {
	a.setReady(false, "shutting down")
	if a.cni != nil {
		_ = a.cni.Close()
	}
	a.mu.Lock()
	pods := make([]*podProxy, 0, len(a.pods))
	for _, p := range a.pods {
		pods = append(pods, p)
	}
	a.mu.Unlock()
	// Capture stays attached, pinned, so a replacement agent inherits the
	// pods with no window in which traffic bypasses the proxy; only this
	// process's listeners drain.
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.DrainTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.stop(ctx)
		}()
	}
	wg.Wait()
	a.log.Info("agent stopped", "node", a.cfg.NodeName)
	return nil
}

// Ready reports readiness for /healthz/ready.
func (a *Agent) Ready() (bool, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ready, a.reasons
}

func (a *Agent) setReady(ready bool, reason string) {
	a.mu.Lock()
	a.ready, a.reasons = ready, reason
	a.mu.Unlock()
}

// EnrolledCount returns how many pods are enrolled.
func (a *Agent) EnrolledCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pods)
}

// IsEnrolled reports whether the pod with uid is enrolled.
func (a *Agent) IsEnrolled(uid types.UID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.pods[uid]
	return ok
}
