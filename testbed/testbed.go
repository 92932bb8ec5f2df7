// Package testbed runs a real Kubernetes control plane on loopback for
// mazu-ztunnel's integration tests: etcd, kube-apiserver,
// kube-controller-manager and, on request, istiod. There is no kubelet or
// container runtime. Nodes and pods are network namespaces and cgroup v2
// directories, and the testbed writes pod status as a kubelet would.
//
// Everything listens on 127.0.0.1 on ports picked at start, and each testbed
// has its own run folder and namespace names, so two testbeds can run at once.
// Stop ends the components by PID and removes every namespace, link, cgroup
// and folder that the testbed created. When a process dies before Stop, for
// example at a `go test -timeout` or a panic, the next Start on the machine
// removes what its testbed left behind.
package testbed

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Options configures Start.
type Options struct {
	// Name distinguishes the testbed's namespaces, links and cgroups from
	// those of other testbeds. Start picks a random one when it is empty.
	Name string
	// Dir is the run folder for certificates, logs and the kubeconfig.
	// Start makes a temporary one when it is empty and removes it on Stop.
	Dir string
	// BinDir holds etcd, kube-apiserver, kube-controller-manager and
	// pilot-discovery. Empty means FindBinaries.
	BinDir string
	// Istiod starts istiod (pilot-discovery) with ambient mode enabled.
	Istiod bool
	// IstioCRDs installs Istio's CRDs (AuthorizationPolicy,
	// PeerAuthentication, ...) without istiod. Istiod implies it.
	IstioCRDs bool
	// NoControllerManager skips kube-controller-manager, so that nothing
	// maintains EndpointSlices or default ServiceAccounts.
	NoControllerManager bool
	// Detach starts the components so that they outlive this process, as
	// `mazu-testbed up` needs. Without it they are killed if this process dies.
	Detach bool
	// Logger receives progress messages. Nil discards them.
	Logger *slog.Logger
}

// Testbed is a running control plane plus the nodes and pods created through
// it.
type Testbed struct {
	log        *slog.Logger
	name       string
	dir        string
	ownDir     bool
	etcdData   string
	pki        *pki
	state      State
	procs      []*process
	restConfig *rest.Config
	client     kubernetes.Interface
	attached   bool
	// claimed means this value wrote the testbed's owner record, which
	// Stop removes last.
	claimed bool

	mu     sync.Mutex
	fabric string // name of the network namespace that joins the nodes
	nodes  []*Node
	// nodeCount numbers nodes, so that a removed node's index and subnets
	// are never reused.
	nodeCount int
	pods      map[string]*Pod // by namespace/name
	cgroup    string          // cgroup v2 folder that holds every node's pods
	stopOnce  sync.Once
}

// Ports are the loopback ports the components listen on.
type Ports struct {
	EtcdClient        int `json:"etcdClient"`
	EtcdPeer          int `json:"etcdPeer"`
	APIServer         int `json:"apiServer"`
	ControllerManager int `json:"controllerManager,omitempty"`
	IstiodHTTP        int `json:"istiodHTTP,omitempty"`
	IstiodHTTPS       int `json:"istiodHTTPS,omitempty"`
	IstiodGRPC        int `json:"istiodGRPC,omitempty"`
	IstiodSecureGRPC  int `json:"istiodSecureGRPC,omitempty"`
	IstiodMonitoring  int `json:"istiodMonitoring,omitempty"`
	IstiodCtrlz       int `json:"istiodCtrlz,omitempty"`
}

// The address plan. Every address the testbed hands out lies in
// 198.18.0.0/15, the range reserved for benchmarking (RFC 2544), and lives
// only inside the testbed's own network namespaces.
const (
	// ServiceCIDR is the kube-apiserver's ClusterIP range.
	ServiceCIDR = "198.18.240.0/20"
	// NodeSubnet holds the nodes' addresses on the fabric bridge: node i
	// (counting from 1) is 198.18.0.i.
	NodeSubnet = "198.18.0.0/24"
	// Pod subnets: node i owns 198.19.i.0/24, its bridge is 198.19.i.1 and
	// its pods take 198.19.i.2 and up.
	podSubnetFormat = "198.19.%d.0/24"
	// TrustDomain is the SPIFFE trust domain istiod uses.
	TrustDomain = "cluster.local"
)

// Start builds nothing: it runs binaries found by FindBinaries (or
// Options.BinDir), waits until each component is ready and writes a
// kubeconfig. On failure it stops whatever it started.
func Start(ctx context.Context, opts Options) (_ *Testbed, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	binDir := opts.BinDir
	if binDir == "" {
		if binDir, err = FindBinaries(); err != nil {
			return nil, err
		}
	}
	name := opts.Name
	if name == "" {
		name = randomName()
	}
	if err := validateName(name); err != nil {
		return nil, err
	}
	if err := sweepDeadTestbeds(log); err != nil {
		log.Warn("testbed could not remove all leftovers of dead testbeds", "err", err)
	}
	owner, err := currentOwner(opts.Detach)
	if err != nil {
		return nil, fmt.Errorf("start testbed %s: %w", name, err)
	}
	if err := claimName(name, owner); err != nil {
		return nil, err
	}

	tb := &Testbed{log: log, name: name, dir: opts.Dir, pods: map[string]*Pod{}, claimed: true}
	defer func() {
		if err != nil {
			tb.Stop()
		}
	}()
	if tb.dir == "" {
		if tb.dir, err = os.MkdirTemp("", "mazu-testbed-"+name+"-"); err != nil {
			return nil, fmt.Errorf("create run folder: %w", err)
		}
		tb.ownDir = true
	} else if err := os.MkdirAll(tb.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create run folder %s: %w", tb.dir, err)
	}

	if tb.pki, err = writePKI(tb.dir); err != nil {
		return nil, fmt.Errorf("testbed PKI: %w", err)
	}
	ports, err := freePorts(10)
	if err != nil {
		return nil, err
	}
	tb.state = State{
		Name:   name,
		Dir:    tb.dir,
		BinDir: binDir,
		Ports: Ports{
			EtcdClient: ports[0], EtcdPeer: ports[1], APIServer: ports[2], ControllerManager: ports[3],
		},
		AdminToken: tb.pki.adminToken,
	}
	if opts.Istiod {
		p := &tb.state.Ports
		p.IstiodHTTP, p.IstiodHTTPS, p.IstiodGRPC, p.IstiodSecureGRPC, p.IstiodMonitoring, p.IstiodCtrlz =
			ports[4], ports[5], ports[6], ports[7], ports[8], ports[9]
	}

	started := time.Now()
	if err := tb.startEtcd(ctx, opts.Detach); err != nil {
		return nil, err
	}
	if err := tb.startAPIServer(ctx, opts.Detach); err != nil {
		return nil, err
	}
	if err := tb.writeKubeconfig(); err != nil {
		return nil, err
	}
	if !opts.NoControllerManager {
		if err := tb.startControllerManager(ctx, opts.Detach); err != nil {
			return nil, err
		}
	} else {
		tb.state.Ports.ControllerManager = 0
	}
	if opts.Istiod {
		if err := tb.startIstiod(ctx, opts.Detach); err != nil {
			return nil, err
		}
	} else if opts.IstioCRDs {
		if err := tb.applyCRDs(ctx, filepath.Join(binDir, "istio-crds.yaml")); err != nil {
			return nil, err
		}
	}
	if err := tb.saveState(); err != nil {
		return nil, err
	}
	log.Info("testbed ready", "name", name, "dir", tb.dir, "kubeconfig", tb.Kubeconfig(), "elapsed", time.Since(started).Round(time.Millisecond))
	return tb, nil
}

func (tb *Testbed) startEtcd(ctx context.Context, detach bool) error {
	data, err := os.MkdirTemp(shmDir(), "mazu-etcd-"+tb.name+"-")
	if err != nil {
		return fmt.Errorf("start etcd: create data folder: %w", err)
	}
	tb.etcdData = data
	tb.state.EtcdData = data
	client := fmt.Sprintf("http://127.0.0.1:%d", tb.state.Ports.EtcdClient)
	peer := fmt.Sprintf("http://127.0.0.1:%d", tb.state.Ports.EtcdPeer)
	args := []string{
		"--name", "testbed", "--data-dir", data,
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "testbed=" + peer,
		// The data lives in tmpfs and dies with the testbed, so fsync buys nothing.
		"--unsafe-no-fsync", "--log-level", "warn",
		"--listen-metrics-urls=", "--quota-backend-bytes=1073741824",
	}
	p, err := tb.start("etcd", args, nil, detach)
	if err != nil {
		return err
	}
	return p.waitReady(ctx, 60*time.Second, func(ctx context.Context) error {
		return httpGet(ctx, http.DefaultClient, client+"/health", "")
	})
}

func (tb *Testbed) startAPIServer(ctx context.Context, detach bool) error {
	issuer := fmt.Sprintf("https://127.0.0.1:%d", tb.state.Ports.APIServer)
	args := []string{
		"--etcd-servers", fmt.Sprintf("http://127.0.0.1:%d", tb.state.Ports.EtcdClient),
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port", strconv.Itoa(tb.state.Ports.APIServer),
		"--tls-cert-file", tb.pki.serverCert, "--tls-private-key-file", tb.pki.serverKey,
		"--client-ca-file", tb.pki.caCert,
		"--token-auth-file", tb.pki.tokenFile,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer", issuer,
		"--service-account-key-file", tb.pki.saPub,
		"--service-account-signing-key-file", tb.pki.saKey,
		"--service-cluster-ip-range", ServiceCIDR,
		"--cert-dir", filepath.Join(tb.dir, "apiserver-certs"),
		"--enable-priority-and-fairness=false", "--profiling=false",
		// A loopback advertise address is rejected by the default endpoint
		// reconciler, so the default/kubernetes endpoints go unmaintained.
		"--endpoint-reconciler-type=none",
		"--v=1",
	}
	p, err := tb.start("kube-apiserver", args, nil, detach)
	if err != nil {
		return err
	}
	client, err := tb.adminHTTPClient()
	if err != nil {
		return err
	}
	return p.waitReady(ctx, 120*time.Second, func(ctx context.Context) error {
		return httpGet(ctx, client, issuer+"/readyz", tb.pki.adminToken)
	})
}

func (tb *Testbed) startControllerManager(ctx context.Context, detach bool) error {
	port := tb.state.Ports.ControllerManager
	// The controllers share the admin credential. Without
	// --use-service-account-credentials they act as one client anyway, and
	// the testbed's RBAC is not what these tests examine.
	args := []string{
		"--kubeconfig", tb.Kubeconfig(),
		"--bind-address=127.0.0.1", "--secure-port", strconv.Itoa(port),
		"--leader-elect=false", "--authentication-skip-lookup=true",
		"--controllers=endpointslice,endpointslicemirroring,serviceaccount,namespace,garbagecollector",
		"--cert-dir", filepath.Join(tb.dir, "controller-manager-certs"),
		"--v=1",
	}
	p, err := tb.start("kube-controller-manager", args, nil, detach)
	if err != nil {
		return err
	}
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	return p.waitReady(ctx, 60*time.Second, func(ctx context.Context) error {
		return httpGet(ctx, insecure, fmt.Sprintf("https://127.0.0.1:%d/healthz", port), "")
	})
}

// start runs a component from the binary folder with its log in the run folder.
func (tb *Testbed) start(name string, args, env []string, detach bool) (*process, error) {
	bin := filepath.Join(tb.state.BinDir, name)
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("start %s: binary missing: %w (build it with `make testbed-bins`)", name, err)
	}
	tb.log.Info("testbed starting component", "component", name)
	p, err := startProcess(name, bin, args, env, tb.dir, filepath.Join(tb.dir, name+".log"), detach)
	if err != nil {
		return nil, err
	}
	tb.procs = append(tb.procs, p)
	tb.state.Processes = append(tb.state.Processes, ProcessState{Name: name, PID: p.pid(), Exe: bin})
	return p, nil
}

func (tb *Testbed) adminHTTPClient() (*http.Client, error) {
	pool, err := certPool(tb.pki.caCert)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}, nil
}

func certPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("read CA %s: no PEM certificate found", path)
	}
	return pool, nil
}

func httpGet(ctx context.Context, client *http.Client, url, token string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// writeKubeconfig writes the admin kubeconfig and builds the client.
func (tb *Testbed) writeKubeconfig() error {
	if err := tb.writeClientKubeconfig(tb.Kubeconfig(), tb.pki.adminToken); err != nil {
		return err
	}
	return tb.loadClient()
}

func (tb *Testbed) loadClient() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", tb.Kubeconfig())
	if err != nil {
		return fmt.Errorf("load kubeconfig %s: %w", tb.Kubeconfig(), err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("create Kubernetes client: %w", err)
	}
	tb.restConfig, tb.client = cfg, client
	return nil
}

func (tb *Testbed) writeClientKubeconfig(path, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["testbed"] = &clientcmdapi.Cluster{
		Server:               tb.APIServerURL(),
		CertificateAuthority: tb.pki.caCert,
	}
	cfg.AuthInfos["testbed"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["testbed"] = &clientcmdapi.Context{Cluster: "testbed", AuthInfo: "testbed"}
	cfg.CurrentContext = "testbed"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// Name returns the testbed's name.
func (tb *Testbed) Name() string { return tb.name }

// Dir returns the run folder.
func (tb *Testbed) Dir() string { return tb.dir }

// Kubeconfig returns the path of the admin kubeconfig.
func (tb *Testbed) Kubeconfig() string { return filepath.Join(tb.dir, "kubeconfig") }

// APIServerURL returns the kube-apiserver's URL, which is also the
// service-account token issuer.
func (tb *Testbed) APIServerURL() string {
	return fmt.Sprintf("https://127.0.0.1:%d", tb.state.Ports.APIServer)
}

// CACertFile returns the path of the CA that signed the API server's
// serving certificate.
func (tb *Testbed) CACertFile() string { return tb.pki.caCert }

// RESTConfig returns a copy of the admin client configuration.
func (tb *Testbed) RESTConfig() *rest.Config { return rest.CopyConfig(tb.restConfig) }

// Client returns an admin client.
func (tb *Testbed) Client() kubernetes.Interface { return tb.client }

// Ports returns the components' loopback ports.
func (tb *Testbed) Ports() Ports { return tb.state.Ports }

// Stop deletes the pods and nodes this process created, and, unless the
// testbed was attached to, ends the components by PID and removes their
// data. It removes the owner record last. It is safe to call more than once.
func (tb *Testbed) Stop() error {
	var errs []error
	tb.stopOnce.Do(func() {
		errs = append(errs, tb.removeNetwork())
		if !tb.attached {
			for i := len(tb.procs) - 1; i >= 0; i-- {
				tb.procs[i].stop(10 * time.Second)
			}
			if tb.etcdData != "" {
				errs = append(errs, os.RemoveAll(tb.etcdData))
			}
			if tb.ownDir {
				errs = append(errs, os.RemoveAll(tb.dir))
			}
		}
		if tb.claimed {
			errs = append(errs, releaseName(tb.name))
		}
	})
	return errors.Join(errs...)
}

// shmDir returns the tmpfs folder for etcd's data, falling back to the
// default temporary folder where /dev/shm is missing.
func shmDir() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// Leftovers lists the network namespaces, cgroup folders, processes and
// folders of this testbed that still exist. After Stop it should be empty.
func (tb *Testbed) Leftovers() []string {
	var left []string
	namespaces, _ := filepath.Glob(netnsPath("mzt-" + tb.name + "-*"))
	left = append(left, namespaces...)
	if tb.claimed {
		if _, err := os.Stat(ownerRecordPath(tb.name)); err == nil {
			left = append(left, ownerRecordPath(tb.name))
		}
	}
	if root, err := cgroup2Root(); err == nil {
		if _, err := os.Stat(filepath.Join(root, "mazu-testbed-"+tb.name)); err == nil {
			left = append(left, filepath.Join(root, "mazu-testbed-"+tb.name))
		}
	}
	if tb.attached {
		return left
	}
	for _, p := range tb.procs {
		if p.alive() {
			left = append(left, fmt.Sprintf("%s (pid %d)", p.name, p.pid()))
		}
	}
	for _, dir := range []string{tb.etcdData, tb.dir} {
		if _, err := os.Stat(dir); err == nil && (dir != tb.dir || tb.ownDir) {
			left = append(left, dir)
		}
	}
	return left
}
