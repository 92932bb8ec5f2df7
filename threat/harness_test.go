package threat

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mazu-mesh/mazu-ztunnel/agent"
	"github.com/mazu-mesh/mazu-ztunnel/bpf"
	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/internal/meshtest"
	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// Roles this test binary plays inside pods, chosen by envRole. A role runs
// as a process in the pod's network namespace and cgroup, so the pod's
// agent captures its connections as it would an application's.
const (
	envRole   = "MAZU_THREAT_ROLE"
	envTarget = "MAZU_THREAT_TARGET"
	envCount  = "MAZU_THREAT_COUNT"
)

// clientReport is the http-client role's output.
type clientReport = meshtest.ClientReport

// runRole runs a role and returns the process exit code. The http-server
// role replies to every request with "hello from <pod name>". The http-client
// role sends envCount GET requests to envTarget, each on a new connection,
// and prints a clientReport.
func runRole(role string) int {
	switch role {
	case "http-server":
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s", os.Getenv("POD_NAME"))
		})
		srv := &http.Server{Addr: os.Getenv(envTarget), Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		if err := srv.ListenAndServe(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "http-client":
		n, err := strconv.Atoi(os.Getenv(envCount))
		if err != nil || n < 1 || n > 1000 {
			fmt.Fprintf(os.Stderr, "%s=%q: want a request count from 1 to 1000\n", envCount, os.Getenv(envCount))
			return 2
		}
		report := meshtest.GetRepeatedly(os.Getenv(envTarget), n, 0)
		_ = json.NewEncoder(os.Stdout).Encode(report)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown role %q\n", role)
	return 2
}

// mesh is the curator, nodes and node agents that every test of the package
// shares. Tests create their own namespaces and pods in it.
type mesh struct {
	tb      *testbed.Testbed
	curator *meshtest.Curator
	// cni is the path of the mazu-cni binary built for this run.
	cni string
	// agents run one per node, in strict mode (no trust in istiod's CA).
	agents [2]*nodeAgent
	// bare is a node that runs no mazu agent. Its pods are outside the
	// mesh: nothing captures their traffic and nothing listens on their
	// port 15008, so attackers and rogue servers live there.
	bare *testbed.Node
	dir  string
}

// nodeAgent is one node's mazu agent, run in this process by RunNode.
type nodeAgent struct {
	node     *testbed.Node
	socket   string
	agent    *agent.Agent
	registry *prometheus.Registry
	// logFile receives the agent's log at level Info.
	logFile string
	// stateDir is NodeConfig.StateDir, where the agent keeps fork evidence.
	stateDir string
}

var (
	meshOnce   sync.Once
	meshShared *mesh
	meshErr    error
)

// sharedMesh skips the test unless it runs as root, and returns the mesh
// that the package's tests share, starting it on first use. The mesh stops
// after the last test. When the test fails, the agents' log lines written
// during the test are added to its log.
func sharedMesh(t *testing.T) *mesh {
	t.Helper()
	privtest.Require(t)
	tb := testbed.Get(t)
	meshOnce.Do(func() { meshShared, meshErr = startMesh(tb) })
	if meshErr != nil {
		t.Fatalf("start the shared mesh: %v", meshErr)
	}
	m := meshShared
	offsets := make([]int64, len(m.agents))
	for i, na := range m.agents {
		if st, err := os.Stat(na.logFile); err == nil {
			offsets[i] = st.Size()
		}
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for i, na := range m.agents {
			data, err := os.ReadFile(na.logFile)
			if err != nil || int64(len(data)) < offsets[i] {
				continue
			}
			t.Logf("log of the agent on %s during the test:\n%s", na.node.Name, data[offsets[i]:])
		}
	})
	return m
}

// startMesh starts a curator with two witnesses, builds mazu-cni, adds two
// nodes with an agent each and one bare node. What it started is stopped by
// testbed.AfterTests, also when it fails halfway.
func startMesh(tb *testbed.Testbed) (*mesh, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "mazu-threat-")
	if err != nil {
		return nil, fmt.Errorf("create the mesh folder: %w", err)
	}
	m := &mesh{tb: tb, dir: dir}
	var undo []func()
	testbed.AfterTests(func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	})
	undo = append(undo, func() { os.RemoveAll(dir) })

	m.cni = filepath.Join(dir, "mazu-cni")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", m.cni, "github.com/mazu-mesh/mazu-ztunnel/cmd/mazu-cni").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build mazu-cni: %w\n%s", err, out)
	}

	m.curator, err = meshtest.StartCurator(ctx, meshtest.CuratorOptions{Client: tb.Client(), Dir: dir, Witnesses: 2})
	if err != nil {
		return nil, fmt.Errorf("start the curator: %w", err)
	}
	undo = append(undo, func() { m.curator.Stop() })

	addNode := func(name string) (*testbed.Node, error) {
		node, err := tb.AddNode(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("add node %s: %w", name, err)
		}
		undo = append(undo, func() {
			if err := tb.RemoveNode(context.Background(), node); err != nil {
				fmt.Fprintf(os.Stderr, "threat: remove node %s: %v\n", name, err)
			}
		})
		return node, nil
	}
	for i := range m.agents {
		node, err := addNode(fmt.Sprintf("threat-%d", i+1))
		if err != nil {
			return nil, err
		}
		na, stop, err := startAgent(ctx, tb, m.curator, node, filepath.Join(dir, node.Name))
		if stop != nil {
			undo = append(undo, stop)
		}
		if err != nil {
			return nil, err
		}
		m.agents[i] = na
	}
	if m.bare, err = addNode("threat-bare"); err != nil {
		return nil, err
	}
	return m, nil
}

// startAgent runs a strict-mode node agent for node with its pins, state
// and log under dir. The returned stop function ends the agent and removes
// its eBPF objects. It is non-nil whenever something needs undoing.
func startAgent(ctx context.Context, tb *testbed.Testbed, cur *meshtest.Curator, node *testbed.Node, dir string) (*nodeAgent, func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("agent folder for %s: %w", node.Name, err)
	}
	na := &nodeAgent{node: node, socket: filepath.Join(dir, "cni.sock"), logFile: filepath.Join(dir, "agent.log"), stateDir: filepath.Join(dir, "state")}
	logw, err := os.Create(na.logFile)
	if err != nil {
		return nil, nil, fmt.Errorf("agent log for %s: %w", node.Name, err)
	}

	pins := filepath.Join(dir, "pins")
	started := make(chan struct{})
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := agent.NodeConfig{
		REST: tb.RESTConfig(), NodeName: node.Name, TrustDomain: testbed.TrustDomain,
		RootNamespace: testbed.IstioNamespace, Audience: curator.DefaultAudience, CuratorURL: cur.URL,
		CRSFile: cur.CRSFile, LogKey: cur.LogVKey, WitnessKeys: cur.WitnessVKeys,
		CgroupRoot: node.CgroupRoot, PinDir: pins, CNISocket: na.socket, StateDir: na.stateDir,
		AuditInterval: time.Second,
		Endpoints:     agent.EndpointsConfig{AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadinessAddr: "127.0.0.1:0"},
		Logger:        slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Started: func(a *agent.Agent, _ *agent.Endpoints, reg *prometheus.Registry) {
			na.agent, na.registry = a, reg
			close(started)
		},
	}
	go func() { done <- agent.RunNode(runCtx, cfg) }()

	var stopOnce sync.Once
	stop := func() {
		stopOnce.Do(func() {
			cancel()
			if err := <-done; err != nil {
				fmt.Fprintf(os.Stderr, "threat: agent for %s: %v\n", node.Name, err)
			}
			logw.Close()
			capture, err := bpf.Open(bpf.Options{PinDir: pins})
			if err != nil {
				fmt.Fprintf(os.Stderr, "threat: reopen the capture of %s to remove it: %v\n", node.Name, err)
				return
			}
			if err := capture.Remove(); err != nil {
				fmt.Fprintf(os.Stderr, "threat: remove the capture of %s: %v\n", node.Name, err)
			}
		})
	}

	select {
	case <-started:
	case err := <-done:
		done <- err
		return nil, stop, fmt.Errorf("agent for %s failed to start: %w", node.Name, err)
	case <-ctx.Done():
		return nil, stop, fmt.Errorf("agent for %s not started: %w", node.Name, ctx.Err())
	}

	for {
		if ok, _ := na.agent.Ready(); ok {
			return na, stop, nil
		}
		select {
		case <-ctx.Done():
			_, why := na.agent.Ready()
			return nil, stop, fmt.Errorf("agent for %s not ready (%s): %w", node.Name, why, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// newNamespace creates a namespace named prefix plus a random suffix, with
// Istio's ambient label when ambient is true, and deletes it when the test
// ends.
func newNamespace(t *testing.T, m *mesh, prefix string, ambient bool) string {
	t.Helper()
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	name := prefix + "-" + hex.EncodeToString(suffix)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if ambient {
		ns.Labels = map[string]string{agent.DataplaneModeLabel: "ambient"}
	}
	if _, err := m.tb.Client().CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = m.tb.Client().CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return name
}

// newAmbientPod creates a pod on the node of agent i, in an ambient
// namespace, enrolled through the real mazu-cni binary, and waits until the
// agent registered its identity with the curator and annotated the pod.
// The pod is deleted when the test ends.
func newAmbientPod(t *testing.T, m *mesh, i int, spec testbed.PodSpec) *testbed.Pod {
	t.Helper()
	na := m.agents[i]
	spec.OnNetwork = cniAdd(m.cni, na.socket)
	pod := testbed.NewPod(t, m.tb, na.node, spec)
	registered := na.agent.Registered(pod.UID)
	if registered == nil {
		t.Fatalf("pod %s/%s is not enrolled on %s after mazu-cni ADD", pod.Namespace, pod.Name, na.node.Name)
	}
	select {
	case <-registered:
	case <-time.After(60 * time.Second):
		t.Fatalf("pod %s/%s not registered after 60 s", pod.Namespace, pod.Name)
	}
	eventually(t, 30*time.Second, "pod "+pod.Name+" annotated as enrolled", func() bool {
		obj, err := m.tb.Client().CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
		return err == nil && obj.Annotations[agent.RedirectionAnnotation] == "enabled"
	})
	return pod
}

// newBarePod creates a pod on the node without an agent, or on node when it
// is not nil, without mazu-cni: no agent enrolls it. The pod is deleted when
// the test ends.
func newBarePod(t *testing.T, m *mesh, node *testbed.Node, spec testbed.PodSpec) *testbed.Pod {
	t.Helper()
	if node == nil {
		node = m.bare
	}
	return testbed.NewPod(t, m.tb, node, spec)
}

// cniAdd invokes mazu-cni as a container runtime would, through the CNI
// protocol: environment variables and the network configuration on stdin.
func cniAdd(bin, socket string) func(context.Context, *testbed.Pod) error {
	return func(ctx context.Context, pod *testbed.Pod) error {
		conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"testbed","type":"mazu-cni","socket":%q,"timeoutSeconds":30}`, socket)
		cmd := exec.CommandContext(ctx, bin)
		cmd.Env = []string{
			"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + string(pod.UID), "CNI_NETNS=" + pod.NetnsPath(), "CNI_IFNAME=eth0",
			"CNI_PATH=/opt/cni/bin",
			fmt.Sprintf("CNI_ARGS=K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", pod.Namespace, pod.Name, pod.UID),
		}
		cmd.Stdin = strings.NewReader(conf)
		var out bytes.Buffer
		cmd.Stdout = &out
		cmd.Stderr = &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("mazu-cni ADD for %s/%s: %w: %s", pod.Namespace, pod.Name, err, out.String())
		}
		return nil
	}
}

// podIdentity is the SPIFFE identity Kubernetes gives the pod.
func podIdentity(pod *testbed.Pod) rbeauth.Identity {
	return rbeauth.Identity{TrustDomain: testbed.TrustDomain, Namespace: pod.Namespace, ServiceAccount: pod.ServiceAccount}
}

// runInPod returns a command that runs this test binary in the pod's
// network namespace and cgroup, playing role.
func runInPod(pod *testbed.Pod, role string, env ...string) *exec.Cmd {
	cmd := pod.Command(context.Background(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, envRole+"="+role, "POD_NAME="+pod.Name)...)
	return cmd
}

// startHTTPServer runs the http-server role on port in pod until the pod is
// deleted.
func startHTTPServer(t *testing.T, pod *testbed.Pod, port int) {
	t.Helper()
	if err := pod.Start(runInPod(pod, "http-server", envTarget+"=:"+strconv.Itoa(port))); err != nil {
		t.Fatalf("start the HTTP server in %s: %v", pod.Name, err)
	}
}

// httpFrom runs the http-client role in pod: n GET requests to url, each on
// a new connection that the pod's agent captures.
func httpFrom(t *testing.T, pod *testbed.Pod, url string, n int) clientReport {
	t.Helper()
	cmd := runInPod(pod, "http-client", envTarget+"="+url, envCount+"="+strconv.Itoa(n))
	var out, stderr bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &stderr
	if err := pod.Start(cmd); err != nil {
		t.Fatalf("start the HTTP client in %s: %v", pod.Name, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("HTTP client in %s failed: %v\n%s", pod.Name, err, stderr.String())
	}
	var report clientReport
	if err := json.Unmarshal(out.Bytes(), &report); err != nil {
		t.Fatalf("HTTP client output %q: %v", out.String(), err)
	}
	return report
}

// expectOK fails the test unless all n requests from pod to url succeed
// with body wantBody. It is the positive control of an attack test: the
// genuine workload still gets through.
func expectOK(t *testing.T, pod *testbed.Pod, url string, n int, wantBody string) {
	t.Helper()
	report := httpFrom(t, pod, url, n)
	if report.OK != n {
		t.Fatalf("positive control %s -> %s: %d of %d requests succeeded; errors: %v", pod.Name, url, report.OK, n, report.Errors)
	}
	for _, body := range report.Bodies {
		if body != wantBody {
			t.Fatalf("positive control %s -> %s: body %q, want %q", pod.Name, url, body, wantBody)
		}
	}
}

// hboneAddr is the HBONE listener of pod, which its agent opens in the
// pod's network namespace.
func hboneAddr(pod *testbed.Pod) netip.AddrPort {
	return netip.AddrPortFrom(pod.IP, agent.HBONEPort)
}

// leakedIdentity is what anyone learns from one TLS handshake with a mazu
// workload's HBONE port: its certificate, which carries the token its agent
// registered, and its stapled proof bundle.
type leakedIdentity struct {
	Certificate *x509.Certificate
	Token       string
	Staple      []byte
}

// harvestIdentity connects from inside pod from to victim's HBONE port and
// records the server's certificate and stapled proof. In TLS 1.3 the server
// sends both before the client authenticates, so the client presents no
// certificate and the server's agent rejects it afterwards.
func harvestIdentity(t *testing.T, from *testbed.Pod, victim *testbed.Pod) leakedIdentity {
	t.Helper()
	var cs tls.ConnectionState
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{rbeauth.ALPNRBE},
		// The harvester records any certificate, signed by anyone.
		InsecureSkipVerify: true,
		VerifyConnection: func(state tls.ConnectionState) error {
			cs = state
			return nil
		},
	}
	err := from.Do(func() error {
		dialer := &net.Dialer{Timeout: 5 * time.Second}
		conn, err := tls.DialWithDialer(dialer, "tcp", hboneAddr(victim).String(), cfg)
		if err != nil {
			return err
		}
		return conn.Close()
	})
	if len(cs.PeerCertificates) == 0 {
		t.Fatalf("harvest %s's certificate from %s: no certificate received: %v", victim.Name, from.Name, err)
	}
	leaked := leakedIdentity{Certificate: cs.PeerCertificates[0]}
	if len(cs.SignedCertificateTimestamps) != 1 {
		t.Fatalf("harvest from %s: %d stapled proofs, want 1", victim.Name, len(cs.SignedCertificateTimestamps))
	}
	leaked.Staple = cs.SignedCertificateTimestamps[0]
	for _, ext := range leaked.Certificate.Extensions {
		if ext.Id.Equal(rbeauth.OIDTokenExtension) {
			if _, err := asn1.UnmarshalWithParams(ext.Value, &leaked.Token, "utf8"); err != nil {
				t.Fatalf("harvest from %s: token extension: %v", victim.Name, err)
			}
		}
	}
	if leaked.Token == "" {
		t.Fatalf("harvest from %s: the certificate has no token extension", victim.Name)
	}
	return leaked
}

// mintCertificate returns a self-signed workload certificate for id that
// carries token, with a new TLS key and a ten-minute lifetime, as an
// attacker who holds the token makes it.
func mintCertificate(t *testing.T, id rbeauth.Identity, token string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := rbeauth.NewCertificate(key, id, token, time.Now().Add(10*time.Minute))
	if err != nil {
		t.Fatalf("mint a certificate for %s: %v", id, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// probeResult is the outcome of one attacker handshake.
type probeResult struct {
	// Connected is true when the server completed the handshake and sent
	// its first HTTP/2 frame, so it let the connection through.
	Connected bool
	Err       error
}

// probeHBONE connects from inside pod from's network namespace (but not its
// cgroup, so no agent captures the connection) to target with cert, and
// staple as the stapled proof when it is not nil, offering the ALPN values
// alpn. It reports whether the server let the connection through. In TLS
// 1.3 the server judges the client certificate after the client's
// handshake returns, so the probe sends an HTTP/2 preface and waits up to
// 5 s for the server's first frame or its alert.
func probeHBONE(t *testing.T, from *testbed.Pod, target netip.AddrPort, cert tls.Certificate, staple []byte, alpn []string) probeResult {
	t.Helper()
	if staple != nil {
		cert.SignedCertificateTimestamps = [][]byte{staple}
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, NextProtos: alpn,
		// The attacker does not care who the server is.
		InsecureSkipVerify: true,
	}
	var conn *tls.Conn
	err := from.Do(func() error {
		dialer := &net.Dialer{Timeout: 5 * time.Second}
		var err error
		conn, err = tls.DialWithDialer(dialer, "tcp", target.String(), cfg)
		return err
	})
	if err != nil {
		return probeResult{Err: err}
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")); err != nil {
		return probeResult{Err: err}
	}
	frame := make([]byte, 9)
	if _, err := io.ReadFull(conn, frame); err != nil {
		return probeResult{Err: err}
	}
	return probeResult{Connected: true}
}

// expectProbeRejected runs probeHBONE and fails the test unless the server
// refused the connection and the agent na, which serves target, counted a
// rejection with one of reasons. It returns the reason that moved.
func expectProbeRejected(t *testing.T, na *nodeAgent, from *testbed.Pod, target netip.AddrPort, cert tls.Certificate, staple []byte, alpn []string, reasons ...string) string {
	t.Helper()
	before := na.rejections(t)
	res := probeHBONE(t, from, target, cert, staple, alpn)
	if res.Connected {
		t.Fatalf("attack from %s to %s: the server let the connection through", from.Name, target)
	}
	if res.Err == nil {
		t.Fatalf("attack from %s to %s: no connection and no error", from.Name, target)
	}
	t.Logf("attack from %s (%s) to %s: refused: %v", from.Name, from.IP, target, res.Err)
	return waitRejected(t, na, before, reasons...)
}

// rejections returns the agent's mazu_peer_verifications_total counts with
// result "rejected", by reason.
func (na *nodeAgent) rejections(t *testing.T) map[string]float64 {
	t.Helper()
	counts := map[string]float64{}
	for _, m := range metrics(t, na.registry, "mazu_peer_verifications_total") {
		labels := labelMap(m)
		if labels["result"] == "rejected" {
			counts[labels["reason"]] += m.GetCounter().GetValue()
		}
	}
	return counts
}

// accepted returns the agent's mazu_peer_verifications_total count with
// result "accepted".
func (na *nodeAgent) accepted(t *testing.T) float64 {
	t.Helper()
	return counterSum(t, na.registry, "mazu_peer_verifications_total", map[string]string{"result": "accepted"})
}

// inboundMTLS returns the agent's count of inbound connections to pod that
// arrived over HBONE (istio_tcp_connections_opened_total with reporter
// destination and connection_security_policy mutual_tls). It counts every
// connection, also those carried on a pooled HBONE connection.
func (na *nodeAgent) inboundMTLS(t *testing.T, pod *testbed.Pod) float64 {
	t.Helper()
	return counterSum(t, na.registry, "istio_tcp_connections_opened_total", map[string]string{
		"reporter": "destination", "connection_security_policy": "mutual_tls",
		"destination_workload": pod.Name, "destination_workload_namespace": pod.Namespace,
	})
}

// waitRejected waits up to 5 s until the agent's rejection count for one of
// reasons exceeds its count in before, and returns that reason. Otherwise
// it fails the test, naming the reasons whose counts did move.
func waitRejected(t *testing.T, na *nodeAgent, before map[string]float64, reasons ...string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		after := na.rejections(t)
		for _, r := range reasons {
			if after[r] > before[r] {
				t.Logf("agent on %s: mazu_peer_verifications_total{result=\"rejected\",reason=%q} %v -> %v", na.node.Name, r, before[r], after[r])
				return r
			}
		}
		if time.Now().After(deadline) {
			var moved []string
			for r, n := range after {
				if n > before[r] {
					moved = append(moved, fmt.Sprintf("%s +%v", r, n-before[r]))
				}
			}
			sort.Strings(moved)
			t.Fatalf("agent on %s counted no rejection with reason %v within 5 s; reasons that moved: %v", na.node.Name, reasons, moved)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rogueServer is an attacker's listener in a pod's network namespace that
// records what reached it.
type rogueServer struct {
	// Conns counts accepted TCP connections.
	Conns atomic.Int64
	// Handshakes counts completed TLS handshakes; it stays 0 for a plain
	// TCP listener.
	Handshakes atomic.Int64
}

// startRogueServer listens on port at the pod's IP in its network
// namespace until the test ends. With cert nil it accepts plain TCP and
// closes each connection. With cert it serves TLS 1.3 with that
// certificate (and its stapled SignedCertificateTimestamps, if any),
// selects ALPN mazu-rbe-h2 or h2 the way a mazu agent does, and requests no
// client certificate.
func startRogueServer(t *testing.T, pod *testbed.Pod, port int, cert *tls.Certificate) *rogueServer {
	t.Helper()
	return startRogueListener(t, pod, netip.AddrPortFrom(pod.IP, uint16(port)), cert)
}

// startRogueListener is startRogueServer on any address of the pod's
// network namespace, such as an address the attacker took over.
func startRogueListener(t *testing.T, pod *testbed.Pod, addr netip.AddrPort, cert *tls.Certificate) *rogueServer {
	t.Helper()
	var ln net.Listener
	err := pod.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("rogue listener on %s at %s: %v", pod.Name, addr, err)
	}
	rs := &rogueServer{}
	var cfg *tls.Config
	if cert != nil {
		cfg = &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS13, NextProtos: []string{rbeauth.ALPNRBE, rbeauth.ALPN}}
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			rs.Conns.Add(1)
			wg.Go(func() {
				defer conn.Close()
				if cfg == nil {
					return
				}
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				tc := tls.Server(conn, cfg)
				if err := tc.Handshake(); err == nil {
					rs.Handshakes.Add(1)
				}
			})
		}
	})
	return rs
}

func metrics(t *testing.T, reg *prometheus.Registry, name string) []*dto.Metric {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()
		}
	}
	return nil
}

func labelMap(m *dto.Metric) map[string]string {
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	return labels
}

// counterSum adds the counters of metric name whose labels include labels.
func counterSum(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	var sum float64
	for _, m := range metrics(t, reg, name) {
		have := labelMap(m)
		match := true
		for k, v := range labels {
			match = match && have[k] == v
		}
		if match {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// eventually polls check every 50 ms and fails the test when it is still
// false after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, check func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !check() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
