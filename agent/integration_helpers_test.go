package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/mazu-mesh/mazu-ztunnel/bpf"
	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/internal/meshtest"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// nodeAgent is one node's agent run in this process.
type nodeAgent struct {
	node      *testbed.Node
	dir       string
	socket    string
	agent     *Agent
	registry  *prometheus.Registry
	endpoints *Endpoints
	// stop ends the agent and waits for it; the pins stay.
	stop func()
}

// agentOptions tunes startAgentWith.
type agentOptions struct {
	// Dir holds the agent's pins and state. Two agents given the same Dir
	// share them, as the old and new agent of a rolling restart do. Empty
	// means a new temporary folder.
	Dir string
	// Socket is the CNI socket; empty means Dir/cni.sock.
	Socket string
	// REST is the agent's API server configuration; nil means the
	// testbed's admin credentials.
	REST *rest.Config
	// Audience is the registration token audience; empty means
	// curator.DefaultAudience.
	Audience string
	// PoolIdleTimeout is NodeConfig.PoolIdleTimeout.
	PoolIdleTimeout time.Duration
	// CRSFromLog leaves NodeConfig.CRSFile empty, so the agent takes its
	// CRS from the curator's log.
	CRSFromLog bool
}

// pinUsers counts the running test agents of each pin folder, so that the
// last one to stop removes the pins.
var pinUsers = struct {
	sync.Mutex
	n map[string]int
}{n: map[string]int{}}

// startAgent runs a node agent for node until the test ends, and removes
// its eBPF objects afterwards.
func startAgent(t *testing.T, tb *testbed.Testbed, mesh *meshtest.Curator, node *testbed.Node) *nodeAgent {
	t.Helper()
	return startAgentWith(t, tb, mesh, node, agentOptions{})
}

func startAgentWith(t *testing.T, tb *testbed.Testbed, mesh *meshtest.Curator, node *testbed.Node, opts agentOptions) *nodeAgent {
	t.Helper()
	dir := opts.Dir
	if dir == "" {
		dir = t.TempDir()
	}
	socket := opts.Socket
	if socket == "" {
		socket = filepath.Join(dir, "cni.sock")
	}
	na := &nodeAgent{node: node, dir: dir, socket: socket}
	pins := filepath.Join(dir, "pins")
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	restConfig := opts.REST
	if restConfig == nil {
		restConfig = tb.RESTConfig()
	}
	audience := opts.Audience
	if audience == "" {
		audience = curator.DefaultAudience
	}
	cfg := NodeConfig{
		REST: restConfig, NodeName: node.Name, TrustDomain: testbed.TrustDomain,
		RootNamespace: "istio-system", Audience: audience, CuratorURL: mesh.URL,
		CRSFile: mesh.CRSFile, LogKey: mesh.LogVKey, WitnessKeys: mesh.WitnessVKeys,
		CgroupRoot: node.CgroupRoot, PinDir: pins, CNISocket: socket, StateDir: filepath.Join(dir, "state"),
		AuditInterval: time.Second, PoolIdleTimeout: opts.PoolIdleTimeout,
		Endpoints: EndpointsConfig{AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadinessAddr: "127.0.0.1:0"},
		Logger:    slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: agentLogLevel()})),
		Started: func(a *Agent, e *Endpoints, reg *prometheus.Registry) {
			na.agent, na.endpoints, na.registry = a, e, reg
			close(started)
		},
	}
	if opts.CRSFromLog {
		cfg.CRSFile = ""
	}
	pinUsers.Lock()
	pinUsers.n[pins]++
	pinUsers.Unlock()
	var stopOnce sync.Once
	na.stop = func() {
		stopOnce.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent for %s: %v", node.Name, err)
			}
		})
	}
	t.Cleanup(func() {
		na.stop()
		pinUsers.Lock()
		pinUsers.n[pins]--
		last := pinUsers.n[pins] == 0
		pinUsers.Unlock()
		if !last {
			return
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
	go func() { done <- RunNode(ctx, cfg) }()
	select {
	case <-started:
	case err := <-done:
		done <- err
		t.Fatalf("agent for %s failed to start: %v", node.Name, err)
	case <-time.After(60 * time.Second):
		t.Fatalf("agent for %s not started after 60 s", node.Name)
	}
	eventually(t, 30*time.Second, "agent ready", func() bool { ok, _ := na.agent.Ready(); return ok })
	return na
}

// agentLogLevel is Warn, or the level named by MAZU_TEST_AGENT_LOG (debug,
// info) to see the agents' access logs.
func agentLogLevel() slog.Level {
	var level slog.Level = slog.LevelWarn
	if v := os.Getenv("MAZU_TEST_AGENT_LOG"); v != "" {
		_ = level.UnmarshalText([]byte(v))
	}
	return level
}

// startMesh starts a curator with two witnesses for the test.
func startMesh(t *testing.T, tb *testbed.Testbed) *meshtest.Curator {
	t.Helper()
	mesh, err := meshtest.StartCurator(context.Background(), meshtest.CuratorOptions{Client: tb.Client(), Dir: t.TempDir(), Witnesses: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mesh.Stop() })
	return mesh
}

// startServer runs the HTTP server role on port 8080 in pod.
func startServer(t *testing.T, pod *testbed.Pod) {
	t.Helper()
	if err := pod.Start(runInPod(t, pod, "http-server", envTarget+"=:8080")); err != nil {
		t.Fatal(err)
	}
}

// httpFrom runs the client role in pod: n requests to url, interval apart,
// each on a new connection.
func httpFrom(t *testing.T, pod *testbed.Pod, url string, n int, interval time.Duration) clientReport {
	t.Helper()
	cmd := runInPod(t, pod, "http-client", envTarget+"="+url, envCount+"="+strconv.Itoa(n), envInterval+"="+interval.String())
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = testWriter{t}
	if err := pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client in %s failed: %v", pod.Name, err)
	}
	var report clientReport
	if err := json.Unmarshal(out.Bytes(), &report); err != nil {
		t.Fatalf("client output %q: %v", out.String(), err)
	}
	return report
}

// podURL is the URL of the HTTP server role in pod, by pod IP.
func podURL(pod *testbed.Pod) string { return "http://" + pod.IP.String() + ":8080/" }

// expectOK fails the test unless all n requests from pod to url succeed.
func expectOK(t *testing.T, pod *testbed.Pod, url string, n int, wantBody string) {
	t.Helper()
	report := httpFrom(t, pod, url, n, 0)
	if report.OK != n {
		t.Fatalf("%s -> %s: %d of %d requests succeeded; errors: %v", pod.Name, url, report.OK, n, report.Errors)
	}
	if wantBody != "" && report.Bodies[0] != wantBody {
		t.Fatalf("%s -> %s: body %q, want %q", pod.Name, url, report.Bodies[0], wantBody)
	}
}

// expectRejected fails the test unless every one of n requests fails.
func expectRejected(t *testing.T, pod *testbed.Pod, url string, n int) {
	t.Helper()
	report := httpFrom(t, pod, url, n, 0)
	if report.OK != 0 {
		t.Fatalf("%s -> %s: %d of %d requests succeeded, want none", pod.Name, url, report.OK, n)
	}
}

// podAnnotation reads the redirection annotation from the API server.
func podAnnotation(t *testing.T, tb *testbed.Testbed, pod *testbed.Pod) string {
	t.Helper()
	obj, err := tb.Client().CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return obj.Annotations[RedirectionAnnotation]
}

// captured reports whether the node's eBPF capture holds the pod.
func captured(t *testing.T, na *nodeAgent, uid types.UID) bool {
	t.Helper()
	pods, err := na.agent.cfg.Capture.Pods()
	if err != nil {
		t.Fatalf("list captured pods: %v", err)
	}
	for _, p := range pods {
		if p.ID == string(uid) {
			return true
		}
	}
	return false
}

// waitUnenrolled waits until the agent dropped the pod, its capture is
// detached and, when the pod still exists, its annotation is gone.
func waitUnenrolled(t *testing.T, tb *testbed.Testbed, na *nodeAgent, pod *testbed.Pod) {
	t.Helper()
	eventually(t, 30*time.Second, "pod "+pod.Name+" unenrolled", func() bool {
		return !na.agent.IsEnrolled(pod.UID) && !captured(t, na, pod.UID) && podAnnotation(t, tb, pod) == ""
	})
	if na.agent.state.netns(string(pod.UID)) != "" {
		t.Errorf("pod %s is still in the agent's state file", pod.Name)
	}
}

// labelPod merges labels into a pod; a nil value removes the label.
func labelPod(t *testing.T, tb *testbed.Testbed, namespace, name string, labels map[string]any) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if _, err := tb.Client().CoreV1().Pods(namespace).Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// labelNamespace merges labels into a namespace; a nil value removes the
// label.
func labelNamespace(t *testing.T, tb *testbed.Testbed, name string, labels map[string]any) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if _, err := tb.Client().CoreV1().Namespaces().Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// endpointGet fetches a path from one of the agent's HTTP servers over
// loopback: 0 readiness, 1 metrics, 2 admin.
func endpointGet(t *testing.T, na *nodeAgent, server int, path string) (int, []byte) {
	t.Helper()
	addrs := na.endpoints.Addrs()
	if len(addrs) != 3 {
		t.Fatalf("agent serves %d endpoints, want readiness, metrics and admin", len(addrs))
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + addrs[server].String() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, body
}

func dynamicClient(t *testing.T, tb *testbed.Testbed) dynamic.Interface {
	t.Helper()
	dyn, err := dynamic.NewForConfig(tb.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	return dyn
}

// applySecurity creates or replaces an Istio security resource and waits
// until the agent's view has it.
func applySecurity(t *testing.T, dyn dynamic.Interface, na *nodeAgent, kind, namespace, name string, spec map[string]any) {
	t.Helper()
	gvr := authorizationPolicies
	if kind == "PeerAuthentication" {
		gvr = peerAuthentications
	}
	ctx := context.Background()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": kind,
		"metadata": map[string]any{"namespace": namespace, "name": name},
		"spec":     spec,
	}}
	res := dyn.Resource(gvr).Namespace(namespace)
	if old, err := res.Get(ctx, name, metav1.GetOptions{}); err == nil {
		obj.SetResourceVersion(old.GetResourceVersion())
		if _, err := res.Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("update %s %s/%s: %v", kind, namespace, name, err)
		}
	} else if _, err := res.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create %s %s/%s: %v", kind, namespace, name, err)
	}
	t.Cleanup(func() { _ = res.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	want, _ := json.Marshal(spec)
	eventually(t, 10*time.Second, "agent sees "+kind+" "+namespace+"/"+name, func() bool {
		return securitySpecInView(na.agent.view, kind, namespace, name) == string(want)
	})
}

// securitySpecInView returns the spec the view holds for a resource, as
// JSON, or "".
func securitySpecInView(v *View, kind, namespace, name string) string {
	lister := v.policies
	if kind == "PeerAuthentication" {
		lister = v.peerAuths
	}
	obj, err := lister.ByNamespace(namespace).Get(name)
	if err != nil {
		return ""
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return ""
	}
	spec, _ := json.Marshal(u.Object["spec"])
	return string(spec)
}

// deleteSecurity deletes an Istio security resource and waits until the
// agent's view no longer has it.
func deleteSecurity(t *testing.T, dyn dynamic.Interface, na *nodeAgent, kind, namespace, name string) {
	t.Helper()
	gvr := authorizationPolicies
	if kind == "PeerAuthentication" {
		gvr = peerAuthentications
	}
	if err := dyn.Resource(gvr).Namespace(namespace).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete %s %s/%s: %v", kind, namespace, name, err)
	}
	eventually(t, 10*time.Second, fmt.Sprintf("agent drops %s %s/%s", kind, namespace, name), func() bool {
		return securitySpecInView(na.agent.view, kind, namespace, name) == ""
	})
}
