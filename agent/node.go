package agent

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/mazu-mesh/mazu-ztunnel/bpf"
	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/audit"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
)

// NodeConfig is everything a node agent process needs; cmd/mazu-ztunnel
// fills it from flags and ztunnel's environment variables.
type NodeConfig struct {
	REST          *rest.Config
	NodeName      string
	TrustDomain   string
	RootNamespace string
	// Audience is the token audience reserved for mazu.
	Audience   string
	CuratorURL string
	// CRSFile holds the RBE common reference string from the ceremony.
	// Empty takes the CRS from the curator's log instead (see loadCRS).
	CRSFile string
	// CRSMinContributions is how many ceremony contributions the log must
	// hold before the agent takes its CRS from there; zero means one.
	CRSMinContributions int
	// LogKey is the curator's checkpoint verifier key (note format).
	LogKey string
	// WitnessKeys are the witnesses' cosignature verifier keys.
	WitnessKeys []string
	// Quorum of witness cosignatures; zero means ⌊2n/3⌋+1.
	Quorum int
	// AgentTokenFile holds the agent's own pod-bound token for the curator's
	// node check; empty sends none.
	AgentTokenFile string
	CgroupRoot     string
	PinDir         string
	CNISocket      string
	StateDir       string
	// TokenLifetime is the lifetime requested for pod tokens; zero means
	// rbeauth.DefaultTokenLifetime.
	TokenLifetime time.Duration
	// DrainTimeout is Config.DrainTimeout.
	DrainTimeout time.Duration
	// NetnsDir is Config.NetnsDir.
	NetnsDir      string
	AuditInterval time.Duration
	Endpoints     EndpointsConfig
	// Compat turns on compatibility mode with istiod's CA; nil is strict
	// mode, which refuses peers that trust only Istio's CA.
	Compat *CompatConfig
	// PoolIdleTimeout closes pooled HBONE connections that carried no
	// stream for this long (ztunnel's POOL_UNUSED_RELEASE_TIMEOUT); zero
	// means 5 minutes.
	PoolIdleTimeout time.Duration
	Logger          *slog.Logger
	// Started, when set, is called once the agent and its endpoints are
	// up, for tests and the demo to reach them.
	Started func(*Agent, *Endpoints, *prometheus.Registry)
}

// RunNode assembles and runs a node agent until ctx ends.
func RunNode(ctx context.Context, cfg NodeConfig) error {
	log := cfg.Logger
	raiseFileLimit(log)
	client, err := kubernetes.NewForConfig(cfg.REST)
	if err != nil {
		return fmt.Errorf("create Kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg.REST)
	if err != nil {
		return fmt.Errorf("create Kubernetes client: %w", err)
	}
	origin, _, _ := strings.Cut(cfg.LogKey, "+")
	policy, err := curator.NewPolicy(origin, cfg.LogKey, cfg.WitnessKeys, cfg.Quorum)
	if err != nil {
		return fmt.Errorf("witness policy: %w", err)
	}
	curatorClient := &curator.Client{URL: cfg.CuratorURL}
	crs, err := loadCRS(ctx, cfg, curatorClient, policy, log)
	if err != nil {
		return err
	}
	crs.Precompute()
	monitor := &audit.Monitor{Client: curatorClient, Policy: policy}
	registry := prometheus.NewRegistry()

	registryCheck, err := rbeauth.NewCuratorRegistry(policy, crs, curatorClient, monitor.Trusted)
	if err != nil {
		return err
	}
	// Handshakes start before the alert plumbing exists, so forks they
	// expose go through a hook that is set once it does.
	var forkHook atomic.Pointer[func(*curator.ForkError)]
	verifier, err := rbeauth.NewVerifier(rbeauth.VerifierOptions{
		Client: client, TrustDomain: cfg.TrustDomain, Audience: cfg.Audience,
		Registry: registryCheck, Logger: log, Registerer: registry,
		OnFork: func(fork *curator.ForkError) {
			if hook := forkHook.Load(); hook != nil {
				(*hook)(fork)
			}
		},
	})
	if err != nil {
		return err
	}
	var agentToken func(context.Context) (string, error)
	if cfg.AgentTokenFile != "" {
		agentToken = func(context.Context) (string, error) {
			b, err := os.ReadFile(cfg.AgentTokenFile)
			return strings.TrimSpace(string(b)), err
		}
	}
	workloads, err := rbeauth.NewWorkloads(rbeauth.WorkloadsOptions{
		Client: client, Curator: curatorClient, Policy: policy, CRS: crs,
		TrustDomain: cfg.TrustDomain, Audience: cfg.Audience, AgentToken: agentToken,
		Expect: monitor.Expect, Trusted: monitor.Trusted, Logger: log,
		StateDir: stateSubdir(cfg.StateDir, "identities"), TokenLifetime: cfg.TokenLifetime,
	})
	if err != nil {
		return err
	}

	var compat *compatSetup
	var caCerts *rbeauth.IstioCertificates
	var roots func() (*x509.CertPool, error)
	if cfg.Compat != nil {
		if compat, err = openCompat(cfg.Compat, client, cfg.TrustDomain, log); err != nil {
			return err
		}
		defer compat.close()
		caCerts, roots = compat.certs, compat.roots
		log.Info("compatibility mode: istiod-issued certificates are used toward peers that trust only Istio's CA", "ca_address", cfg.Compat.CAAddress)
	}

	ownCgroup, err := selfCgroup()
	if err != nil {
		return err
	}
	// When the agent's cgroup is known, a getsockname program there puts
	// each captured connection's original destination in the accepted
	// socket's local address, and Capture.OriginalDst reads it with no
	// system call. Otherwise OriginalDst looks it up in the capture maps.
	// The loader refuses the cgroup2 root, because programs there would see
	// every process of the node.
	if root, err := bpf.Cgroup2Root(); err == nil && filepath.Clean(ownCgroup) == filepath.Clean(root) {
		log.Info("agent runs in the cgroup2 root; not attaching agent-cgroup programs")
		ownCgroup = ""
	}
	capture, err := bpf.Open(bpf.Options{PinDir: cfg.PinDir, AgentCgroup: ownCgroup, OriginalDstAsLocalAddr: ownCgroup != "", Logger: log})
	if err != nil {
		return fmt.Errorf("load eBPF capture: %w", err)
	}
	defer capture.Close()

	a, err := New(Config{
		NodeName: cfg.NodeName, TrustDomain: cfg.TrustDomain, RootNamespace: cfg.RootNamespace,
		CgroupRoot: cfg.CgroupRoot, CNISocket: cfg.CNISocket, StateDir: cfg.StateDir, NetnsDir: cfg.NetnsDir, DrainTimeout: cfg.DrainTimeout,
		Capture: capture, Client: client, Dynamic: dyn, Identities: workloads, Verifier: verifier,
		CACertificates: caCerts, IstioRoots: roots, Registry: registry, Logger: log,
		PoolIdleTimeout: cfg.PoolIdleTimeout,
	})
	if err != nil {
		return err
	}
	endpoints := cfg.Endpoints
	endpoints.Ready, endpoints.ConfigDump, endpoints.Gatherer, endpoints.Logger = a.Ready, a.ConfigDump, registry, log
	srv, err := ServeEndpoints(endpoints)
	if err != nil {
		return err
	}
	defer srv.Shutdown(context.Background())

	alerts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mazu_curator_alerts_total",
		Help: "Alerts raised by auditing the curator's log: forks and entries this agent did not request.",
	}, []string{"alert"})
	registry.MustRegister(alerts)
	raiser := &alertRaiser{a: a, alerts: alerts, workloads: workloads, evidence: &forkEvidence{dir: stateSubdir(cfg.StateDir, "evidence")}}
	hook := func(fork *curator.ForkError) {
		raiser.raise(ctx, audit.Alert{Name: audit.AlertFork, Fork: fork}, "handshake")
	}
	forkHook.Store(&hook)
	go workloads.Run(ctx)
	if compat != nil {
		go compat.certs.Run(ctx)
	}
	go a.audit(ctx, monitor, raiser, cfg.AuditInterval)
	if cfg.Started != nil {
		cfg.Started(a, srv, registry)
	}
	return a.Run(ctx)
}

// audit polls the curator for this node's IDs and raises every alert.
func (a *Agent) audit(ctx context.Context, monitor *audit.Monitor, raiser *alertRaiser, interval time.Duration) {
	if interval == 0 {
		interval = 5 * time.Second
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		found, err := monitor.Poll(ctx)
		if err != nil {
			a.log.Warn("curator audit poll failed", "error", err)
		}
		for _, alert := range found {
			raiser.raise(ctx, alert, "audit")
		}
	}
}

// An alertRaiser raises curator alerts as a metric, an error log line and
// a Kubernetes Event. A fork is also kept as an evidence file, and raised
// once per pair of checkpoints, however often the node detects it again.
type alertRaiser struct {
	a         *Agent
	alerts    *prometheus.CounterVec
	workloads *rbeauth.Workloads
	evidence  *forkEvidence
}

func (r *alertRaiser) raise(ctx context.Context, alert audit.Alert, source string) {
	attrs := []any{"alert", alert.Name, "source", source, "detail", alert.String()}
	if alert.Fork != nil {
		path, fresh, err := r.evidence.keep(alert.Fork, source, time.Now())
		if err != nil {
			r.a.log.Error("fork evidence not kept", "error", err)
		} else if !fresh {
			return
		}
		attrs = append(attrs, "evidence", path)
	}
	r.alerts.WithLabelValues(alert.Name).Inc()
	r.a.log.Error("curator audit alert", attrs...)
	r.a.recordEvent(ctx, alert, r.workloads.IDs())
}

func (a *Agent) recordEvent(ctx context.Context, alert audit.Alert, ids map[curator.ID]types.UID) {
	obj := corev1.ObjectReference{Kind: "Node", Name: a.cfg.NodeName, APIVersion: "v1"}
	namespace := "default"
	if uid, ok := ids[alert.ID]; ok {
		a.mu.Lock()
		if p := a.pods[uid]; p != nil {
			obj = corev1.ObjectReference{Kind: "Pod", Namespace: p.namespace, Name: p.name, UID: uid, APIVersion: "v1"}
			namespace = p.namespace
		}
		a.mu.Unlock()
	}
	event := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: "mazu-curator-alert-", Namespace: namespace},
		InvolvedObject: obj,
		Reason:         alert.Name,
		Message:        truncate(alert.String(), 1000),
		Type:           corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: "mazu-ztunnel", Host: a.cfg.NodeName},
		FirstTimestamp: metav1.Now(),
		LastTimestamp:  metav1.Now(),
		Count:          1,
	}
	if _, err := a.cfg.Client.CoreV1().Events(namespace).Create(ctx, event, metav1.CreateOptions{}); err != nil {
		a.log.Warn("alert event not recorded", "alert", alert.Name, "error", err)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// selfCgroup returns this process's cgroup v2 folder, so capture exempts
// the agent's own connections.
func selfCgroup() (string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("read own cgroup: %w", err)
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		if rest, ok := strings.CutPrefix(scanner.Text(), "0::"); ok {
			root, err := bpf.Cgroup2Root()
			if err != nil {
				return "", err
			}
			return filepath.Join(root, rest), nil
		}
	}
	return "", errors.New("read own cgroup: no cgroup v2 entry in /proc/self/cgroup")
}

// LoadWitnessPolicy sets LogKey, WitnessKeys and Quorum from a C2SP
// tlog-policy file, the form the chart mounts: a "log" line with the
// curator's verifier key, "witness" lines and a quorum.
func (c *NodeConfig) LoadWitnessPolicy(path string) error {
	text, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read witness policy: %w", err)
	}
	if strings.TrimSpace(string(text)) == "" {
		return fmt.Errorf("witness policy %s is empty: set it to the C2SP tlog-policy that names the curator's log key and the witnesses (the chart's curator.witnessPolicy value)", path)
	}
	pf, err := curator.ParsePolicyFile(string(text))
	if err != nil {
		return fmt.Errorf("witness policy %s: %w", path, err)
	}
	c.LogKey, c.Quorum, c.WitnessKeys = pf.LogVKey, pf.Quorum, nil
	for _, w := range pf.Witnesses {
		c.WitnessKeys = append(c.WitnessKeys, w.VKey)
	}
	return nil
}

// stateSubdir returns a folder of the agent's state folder, or "" when the
// agent keeps no state.
func stateSubdir(stateDir, name string) string {
	if stateDir == "" {
		return ""
	}
	return filepath.Join(stateDir, name)
}

// crsPollInterval is how often loadCRS reads the log while it waits for the
// ceremony.
const crsPollInterval = 2 * time.Second

// loadCRS returns the RBE CRS. Without a CRS file it follows the curator's
// log (audit.FollowCeremony): every contribution is checked against the CRS
// before it under a witness-cosigned checkpoint, so an untrusted curator
// cannot hand this node parameters of its own. It waits until the log holds
// CRSMinContributions contributions. A CRS file is compared with the log's
// ceremony when the log has one, and rejected when the finished ceremony
// produced another CRS.
func loadCRS(ctx context.Context, cfg NodeConfig, client *curator.Client, policy *curator.Policy, log *slog.Logger) (*rbe.CRS, error) {
	if cfg.CRSFile != "" {
		b, err := os.ReadFile(cfg.CRSFile)
		if err != nil {
			return nil, fmt.Errorf("read CRS: %w (run the ceremony, or `mazu-curator crs` for development)", err)
		}
		crs, err := rbe.ParseCRS(b)
		if err != nil {
			return nil, fmt.Errorf("read CRS %s: %w", cfg.CRSFile, err)
		}
		checkCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		c, err := audit.FollowCeremony(checkCtx, client, policy, time.Now())
		switch {
		case errors.Is(err, audit.ErrNoCeremony):
			// The curator was started with a CRS file too.
		case err != nil:
			log.Warn("CRS file not compared with the log's ceremony", "crs_file", cfg.CRSFile, "error", err)
		case c.Fingerprint != crs.Fingerprint() && c.Closed:
			return nil, fmt.Errorf("CRS file %s has fingerprint %x, but the log's finished ceremony produced %x: remove the file to take the CRS from the log, or replace it with `mazu-curator ceremony verify -out`", cfg.CRSFile, crs.Fingerprint(), c.Fingerprint)
		case c.Fingerprint != crs.Fingerprint():
			log.Warn("CRS file differs from the log's ceremony, which is still open", "crs_file", cfg.CRSFile, "contributions", c.Contributions)
		}
		return crs, nil
	}
	want := max(cfg.CRSMinContributions, 1)
	for {
		c, err := audit.FollowCeremony(ctx, client, policy, time.Now())
		switch {
		case err == nil && c.Contributions >= want:
			crs, err := rbe.ParseCRS(c.CRS)
			if err != nil {
				return nil, fmt.Errorf("parse the CRS from the log's ceremony: %w", err)
			}
			log.Info("CRS taken from the log's ceremony", "contributions", c.Contributions, "fingerprint", fmt.Sprintf("%x", c.Fingerprint[:8]), "closed", c.Closed)
			return crs, nil
		case err == nil || errors.Is(err, audit.ErrNoCeremony):
			log.Info("waiting for the CRS ceremony", "contributions", c.Contributions, "required", want)
		default:
			log.Warn("CRS ceremony not read from the curator", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the CRS ceremony: %w", ctx.Err())
		case <-time.After(crsPollInterval):
		}
	}
}
