package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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

	"github.com/mazu-mesh/mazu-ztunnel/internal/meshtest"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// Roles this test binary plays inside pods.
const (
	envRole   = "MAZU_E2E_ROLE"
	envTarget = "MAZU_E2E_TARGET"
	envCount  = "MAZU_E2E_COUNT"
	// envInterval is the pause between the client's requests (a Go
	// duration); empty means none.
	envInterval = "MAZU_E2E_INTERVAL"
)

// clientReport is what the client role prints.
type clientReport = meshtest.ClientReport

func runRole(role string) int {
	switch role {
	case roleEchoServer, roleLoadClient:
		return runLoadRole(role)
	case roleNodeAgent:
		return runNodeAgent()
	case roleNetnsFinder:
		return runNetnsFinderRole()
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
		interval, _ := time.ParseDuration(os.Getenv(envInterval))
		report := meshtest.GetRepeatedly(os.Getenv(envTarget), n, interval)
		_ = json.NewEncoder(os.Stdout).Encode(report)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown role %q\n", role)
	return 2
}

func buildCNI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "mazu-cni")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/mazu-mesh/mazu-ztunnel/cmd/mazu-cni").CombinedOutput(); err != nil {
		t.Fatalf("build mazu-cni: %v\n%s", err, out)
	}
	return bin
}

// testWriter sends agent logs to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
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
			return fmt.Errorf("mazu-cni ADD: %v: %s", err, out.String())
		}
		return nil
	}
}

// cniDel invokes mazu-cni's DEL for a pod, as a container runtime does when
// it tears the pod's sandbox down.
func cniDel(ctx context.Context, bin, socket string, pod *testbed.Pod) error {
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"testbed","type":"mazu-cni","socket":%q,"timeoutSeconds":30}`, socket)
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = []string{
		"CNI_COMMAND=DEL", "CNI_CONTAINERID=" + string(pod.UID), "CNI_NETNS=" + pod.NetnsPath(), "CNI_IFNAME=eth0",
		"CNI_PATH=/opt/cni/bin",
		fmt.Sprintf("CNI_ARGS=K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", pod.Namespace, pod.Name, pod.UID),
	}
	cmd.Stdin = strings.NewReader(conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mazu-cni DEL: %v: %s", err, out)
	}
	return nil
}

func ambientNamespace(t *testing.T, tb *testbed.Testbed, name string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{DataplaneModeLabel: "ambient"}}}
	if _, err := tb.Client().CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = tb.Client().CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

func waitEnrolled(t *testing.T, tb *testbed.Testbed, pod *testbed.Pod) {
	t.Helper()
	eventually(t, 60*time.Second, "pod "+pod.Name+" enrolled", func() bool {
		obj, err := tb.Client().CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
		return err == nil && obj.Annotations[RedirectionAnnotation] == "enabled"
	})
}

// runInPod runs this binary in the pod's namespace and cgroup in a role.
func runInPod(t *testing.T, pod *testbed.Pod, role string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := pod.Command(context.Background(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, envRole+"="+role, "POD_NAME="+pod.Name)...)
	return cmd
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

// TestAgentsCarryTrafficOverHBONE runs a curator with two witnesses and an
// agent on each of two nodes, enrolls pods through mazu-cni, and sends HTTP
// from a process in the client pod to a Service. eBPF captures the connect,
// the client's agent resolves the ClusterIP from the Kubernetes view and
// opens HBONE to the server pod, and each agent verifies the other's
// RBE-registered certificate.
func TestAgentsCarryTrafficOverHBONE(t *testing.T) {
	tb := testbed.Get(t)
	ctx := context.Background()
	mesh, err := meshtest.StartCurator(ctx, meshtest.CuratorOptions{Client: tb.Client(), Dir: t.TempDir(), Witnesses: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mesh.Stop() })
	cni := buildCNI(t)
	nodeA := testbed.NewNode(t, tb, "e2e-a")
	nodeB := testbed.NewNode(t, tb, "e2e-b")
	agentA := startAgent(t, tb, mesh, nodeA)
	agentB := startAgent(t, tb, mesh, nodeB)
	ambientNamespace(t, tb, "e2e")

	server := testbed.NewPod(t, tb, nodeB, testbed.PodSpec{
		Namespace: "e2e", Name: "web", ServiceAccount: "web", Labels: map[string]string{"app": "web"},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}, OnNetwork: cniAdd(cni, agentB.socket),
	})
	serverCmd := runInPod(t, server, "http-server", envTarget+"=:8080")
	if err := server.Start(serverCmd); err != nil {
		t.Fatal(err)
	}
	client := testbed.NewPod(t, tb, nodeA, testbed.PodSpec{Namespace: "e2e", Name: "client", ServiceAccount: "client", OnNetwork: cniAdd(cni, agentA.socket)})
	neighbor := testbed.NewPod(t, tb, nodeB, testbed.PodSpec{Namespace: "e2e", Name: "neighbor", ServiceAccount: "neighbor", OnNetwork: cniAdd(cni, agentB.socket)})
	svc, err := tb.AddService(ctx, "e2e", "web", map[string]string{"app": "web"}, corev1.ServicePort{Name: "http", Port: 80, TargetPort: intOrString(8080)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.WaitEndpoints(ctx, "e2e", "web", 1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*testbed.Pod{server, client, neighbor} {
		waitEnrolled(t, tb, p)
	}

	const requests = 10
	for _, source := range []*testbed.Pod{client, neighbor} {
		t.Run("from "+source.Name, func(t *testing.T) {
			cmd := runInPod(t, source, "http-client", envTarget+"=http://"+svc.Spec.ClusterIP+":80/", envCount+"="+strconv.Itoa(requests))
			var out bytes.Buffer
			cmd.Stdout = &out
			cmd.Stderr = testWriter{t}
			if err := source.Start(cmd); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("client failed: %v", err)
			}
			var report clientReport
			if err := json.Unmarshal(out.Bytes(), &report); err != nil {
				t.Fatalf("client output %q: %v", out.String(), err)
			}
			if report.OK != requests {
				t.Fatalf("%d of %d requests succeeded; errors: %v", report.OK, requests, report.Errors)
			}
			if report.Bodies[0] != "hello from web" {
				t.Errorf("body = %q, want the server pod's greeting", report.Bodies[0])
			}
		})
	}

	// The server's agent accepted peers it verified through the registry:
	// the traffic went through HBONE, not around it.
	if n := counterSum(t, agentB.registry, "mazu_peer_verifications_total", map[string]string{"result": "accepted"}); n < 2 {
		t.Errorf("server agent verified %v peers, want at least the client and the neighbor", n)
	}
	if n := counterSum(t, agentA.registry, "mazu_peer_verifications_total", map[string]string{"result": "accepted"}); n < 1 {
		t.Errorf("client agent verified %v servers, want at least 1", n)
	}
	if n := counterSum(t, agentB.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination"}); n < 2*requests {
		t.Errorf("server agent counted %v inbound connections, want at least %d", n, 2*requests)
	}
}
