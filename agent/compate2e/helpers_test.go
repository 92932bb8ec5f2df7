// Package compate2e runs node agents in compatibility mode against a real
// istiod. It is its own test binary because starting istiod adds seconds
// that the agent package's other tests need not pay.
package compate2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// Roles this test binary plays inside pods.
const (
	envRole   = "MAZU_COMPAT_ROLE"
	envTarget = "MAZU_COMPAT_TARGET"
	envCount  = "MAZU_COMPAT_COUNT"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(envRole); role != "" {
		os.Exit(runRole(role))
	}
	testbed.Main(m, testbed.Options{Istiod: true})
}

type clientReport = meshtest.ClientReport

func runRole(role string) int {
	switch role {
	case "http-server":
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s", os.Getenv("POD_NAME"))
		})
		if err := http.ListenAndServe(os.Getenv(envTarget), nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "http-client":
		n, _ := strconv.Atoi(os.Getenv(envCount))
		report := meshtest.GetRepeatedly(os.Getenv(envTarget), n, 0)
		_ = json.NewEncoder(os.Stdout).Encode(report)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown role %q\n", role)
	return 2
}

type nodeAgent struct {
	node     *testbed.Node
	socket   string
	registry *prometheus.Registry
}

func buildCNI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "mazu-cni")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/mazu-mesh/mazu-ztunnel/cmd/mazu-cni").CombinedOutput(); err != nil {
		t.Fatalf("build mazu-cni: %v\n%s", err, out)
	}
	return bin
}

// startAgent runs a node agent in-process until the test ends; compat nil
// is strict mode.
func startAgent(t *testing.T, tb *testbed.Testbed, mesh *meshtest.Curator, node *testbed.Node, compat *agent.CompatConfig) *nodeAgent {
	t.Helper()
	dir := t.TempDir()
	na := &nodeAgent{node: node, socket: filepath.Join(dir, "cni.sock")}
	pins := filepath.Join(dir, "pins")
	started := make(chan *agent.Agent, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := agent.NodeConfig{
		REST: tb.RESTConfig(), NodeName: node.Name, TrustDomain: testbed.TrustDomain,
		RootNamespace: "istio-system", Audience: curator.DefaultAudience, CuratorURL: mesh.URL,
		CRSFile: mesh.CRSFile, LogKey: mesh.LogVKey, WitnessKeys: mesh.WitnessVKeys,
		CgroupRoot: node.CgroupRoot, PinDir: pins, CNISocket: na.socket, StateDir: filepath.Join(dir, "state"),
		AuditInterval: time.Second, Compat: compat,
		Endpoints: agent.EndpointsConfig{AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadinessAddr: "127.0.0.1:0"},
		Logger:    slog.New(slog.NewTextHandler(testWriter{t, node.Name}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Started: func(a *agent.Agent, _ *agent.Endpoints, reg *prometheus.Registry) {
			na.registry = reg
			started <- a
		},
	}
	go func() { done <- agent.RunNode(ctx, cfg) }()
	var a *agent.Agent
	select {
	case a = <-started:
	case err := <-done:
		cancel()
		t.Fatalf("agent for %s failed to start: %v", node.Name, err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatalf("agent for %s not started after 60 s", node.Name)
	}
	eventually(t, 30*time.Second, "agent ready", func() bool { ok, _ := a.Ready(); return ok })
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent for %s: %v", node.Name, err)
		}
		capture, err := bpf.Open(bpf.Options{PinDir: pins})
		if err != nil {
			t.Errorf("reopen capture to remove it: %v", err)
			return
		}
		if err := capture.Remove(); err != nil {
			t.Errorf("remove capture: %v", err)
		}
	})
	return na
}

// testWriter sends agent logs to the test log, filtered to what the tests
// look at, so the log stays readable.
type testWriter struct {
	t    *testing.T
	node string
}

func (w testWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") || strings.Contains(line, "Istio CA") || strings.Contains(line, "istiod") {
		w.t.Log(w.node + ": " + line)
	}
	return len(p), nil
}

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
			return fmt.Errorf("mazu-cni ADD: %v: %s", err, out.String())
		}
		return nil
	}
}

func createNamespace(t *testing.T, tb *testbed.Testbed, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := tb.Client().CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func waitEnrolled(t *testing.T, tb *testbed.Testbed, pod *testbed.Pod) {
	t.Helper()
	eventually(t, 60*time.Second, "pod "+pod.Name+" enrolled", func() bool {
		obj, err := tb.Client().CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
		return err == nil && obj.Annotations[agent.MazuEnrolledAnnotation] == "true"
	})
}

func runInPod(pod *testbed.Pod, role string, env ...string) *exec.Cmd {
	cmd := pod.Command(context.Background(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, envRole+"="+role, "POD_NAME="+pod.Name)...)
	return cmd
}

// httpFrom runs n GET requests to target from a process in the pod.
func httpFrom(t *testing.T, pod *testbed.Pod, target string, n int) clientReport {
	t.Helper()
	cmd := runInPod(pod, "http-client", envTarget+"="+target, envCount+"="+strconv.Itoa(n))
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = testWriter{t, pod.Name}
	if err := pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client failed: %v", err)
	}
	var report clientReport
	if err := json.Unmarshal(out.Bytes(), &report); err != nil {
		t.Fatalf("client output %q: %v", out.String(), err)
	}
	return report
}

func counterSum(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if matchLabels(m, labels) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func matchLabels(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

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

// rootCert waits for istiod to publish its root certificate into the
// namespace, as it does for every namespace.
func rootCert(t *testing.T, tb *testbed.Testbed, namespace string) []byte {
	t.Helper()
	var pemBytes []byte
	eventually(t, 60*time.Second, "istio-ca-root-cert in "+namespace, func() bool {
		cm, err := tb.Client().CoreV1().ConfigMaps(namespace).Get(context.Background(), "istio-ca-root-cert", metav1.GetOptions{})
		if err == nil && cm.Data["root-cert.pem"] != "" {
			pemBytes = []byte(cm.Data["root-cert.pem"])
			return true
		}
		return false
	})
	return pemBytes
}
