package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/internal/meshtest"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestEnrollmentLifecycle drives one node's agent through Istio's ambient
// opt-in and opt-out: mazu-cni enrolls pods of an ambient namespace, a pod
// labelled istio.io/dataplane-mode=none stays out, and a pod label, a pod
// deletion and the namespace label each unenroll. It also reads the agent's
// HTTP endpoints.
func TestEnrollmentLifecycle(t *testing.T) {
	tb := testbed.Get(t)
	mesh := startMesh(t, tb)
	cni := buildCNI(t)
	node := testbed.NewNode(t, tb, "at-life")
	na := startAgent(t, tb, mesh, node)
	const ns = "at-life"
	ambientNamespace(t, tb, ns)
	add := cniAdd(cni, na.socket)

	web := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "web", ServiceAccount: "web", Labels: map[string]string{"app": "web"}, OnNetwork: add})
	startServer(t, web)
	optout := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "optout", Labels: map[string]string{DataplaneModeLabel: "none"}, OnNetwork: add})
	leaver := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "leaver", OnNetwork: add})
	doomed := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "doomed", OnNetwork: add})
	torndown := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "torndown", OnNetwork: add})
	// A process in the pod's cgroup lets the agent find its network
	// namespace, so nothing but the agent's bookkeeping keeps it from
	// capturing the pod again after CNI DEL.
	startServer(t, torndown)
	for _, p := range []*testbed.Pod{web, leaver, doomed, torndown} {
		waitEnrolled(t, tb, p)
		if !captured(t, na, p.UID) {
			t.Fatalf("pod %s is annotated but not in the eBPF capture", p.Name)
		}
	}

	// The opted-out pod's CNI ADD succeeded (NewPod would have failed
	// otherwise), but nothing captures it.
	if na.agent.IsEnrolled(optout.UID) || captured(t, na, optout.UID) || podAnnotation(t, tb, optout) != "" {
		t.Fatal("pod labelled istio.io/dataplane-mode=none was enrolled")
	}

	t.Run("endpoints", func(t *testing.T) {
		code, body := endpointGet(t, na, 0, "/healthz/ready")
		if code != 200 || strings.TrimSpace(string(body)) != "ready" {
			t.Errorf("/healthz/ready = %d %q", code, body)
		}
		code, body = endpointGet(t, na, 2, "/config_dump")
		if code != 200 {
			t.Fatalf("/config_dump = %d %q", code, body)
		}
		var dump struct {
			Node      string         `json:"node"`
			Workloads []WorkloadDump `json:"workloads"`
			Certs     []struct {
				UID   string         `json:"uid"`
				State map[string]any `json:"state"`
			} `json:"certificates"`
		}
		if err := json.Unmarshal(body, &dump); err != nil {
			t.Fatalf("/config_dump is not JSON: %v", err)
		}
		names := map[string]WorkloadDump{}
		for _, w := range dump.Workloads {
			names[w.Name] = w
		}
		for _, p := range []*testbed.Pod{web, leaver, doomed, torndown} {
			w, ok := names[p.Name]
			if !ok || w.UID != string(p.UID) || w.IP != p.IP.String() || w.Namespace != ns {
				t.Errorf("config_dump workload for %s = %+v, want UID %s IP %s", p.Name, w, p.UID, p.IP)
			}
		}
		if _, ok := names["optout"]; ok || len(dump.Workloads) != 4 || dump.Node != node.Name {
			t.Errorf("config_dump lists %d workloads on %q: %+v", len(dump.Workloads), dump.Node, dump.Workloads)
		}
		if names["web"].Identity != "spiffe://cluster.local/ns/at-life/sa/web" {
			t.Errorf("web identity = %q", names["web"].Identity)
		}
		if len(dump.Certs) != 4 {
			t.Fatalf("config_dump has %d certificate states, want 4", len(dump.Certs))
		}
		for _, c := range dump.Certs {
			if c.State["registered"] != true || c.State["identity"] == nil {
				t.Errorf("certificate state of %s = %v, want registered", c.UID, c.State)
			}
		}
	})

	// The opted-out pod's connection to an enrolled pod is not captured on
	// its side, so it reaches the server's plaintext inbound listener.
	t.Run("opted out pod goes direct", func(t *testing.T) {
		outboundBefore := counterSum(t, na.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "source", "source_workload": "optout"})
		plainBefore := counterSum(t, na.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination", "destination_workload": "web", "connection_security_policy": "unknown"})
		expectOK(t, optout, podURL(web), 3, "hello from web")
		if n := counterSum(t, na.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "source", "source_workload": "optout"}); n != outboundBefore {
			t.Errorf("agent proxied %v outbound connections of the opted-out pod", n-outboundBefore)
		}
		if n := counterSum(t, na.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination", "destination_workload": "web", "connection_security_policy": "unknown"}); n-plainBefore != 3 {
			t.Errorf("server's plaintext inbound counted %v connections, want 3", n-plainBefore)
		}
		code, body := endpointGet(t, na, 1, "/metrics")
		if code != 200 || !strings.Contains(string(body), "istio_tcp_connections_opened_total{") {
			t.Errorf("/metrics = %d without istio_tcp_connections_opened_total", code)
		}
	})

	t.Run("pod label none unenrolls", func(t *testing.T) {
		labelPod(t, tb, ns, leaver.Name, map[string]any{DataplaneModeLabel: "none"})
		waitUnenrolled(t, tb, na, leaver)
		// Its traffic is no longer proxied on its side.
		before := counterSum(t, na.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "source", "source_workload": "leaver"})
		expectOK(t, leaver, podURL(web), 1, "hello from web")
		if n := counterSum(t, na.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "source", "source_workload": "leaver"}); n != before {
			t.Errorf("agent still proxies the unenrolled pod's connections")
		}
	})

	t.Run("pod deletion unenrolls and revokes", func(t *testing.T) {
		id := registeredID(t, na, doomed)
		if err := tb.DeletePod(context.Background(), doomed); err != nil {
			t.Fatal(err)
		}
		waitUnenrolled(t, tb, na, doomed)
		waitRevoked(t, mesh, id)
	})

	t.Run("CNI DEL unenrolls", func(t *testing.T) {
		if err := cniDel(context.Background(), cni, na.socket, torndown); err != nil {
			t.Fatal(err)
		}
		waitUnenrolled(t, tb, na, torndown)
		// Its later pod events (the annotation removal among them) must
		// not enroll it again: only a new CNI ADD does.
		time.Sleep(500 * time.Millisecond)
		if na.agent.IsEnrolled(torndown.UID) || captured(t, na, torndown.UID) {
			t.Fatal("agent enrolled the pod again after its CNI DEL")
		}
	})

	t.Run("namespace label removal unenrolls", func(t *testing.T) {
		labelNamespace(t, tb, ns, map[string]any{DataplaneModeLabel: nil})
		waitUnenrolled(t, tb, na, web)
		if n := na.agent.EnrolledCount(); n != 0 {
			t.Errorf("agent still has %d pods enrolled", n)
		}
	})

	// Labelling the namespace again enrolls the running pod, whose network
	// namespace the agent finds from the process in its cgroup.
	t.Run("namespace label enrolls running pods", func(t *testing.T) {
		labelNamespace(t, tb, ns, map[string]any{DataplaneModeLabel: "ambient"})
		waitEnrolled(t, tb, web)
		if !captured(t, na, web.UID) {
			t.Fatal("re-enrolled pod is not in the eBPF capture")
		}
		before := counterSum(t, na.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination", "destination_workload": "web"})
		expectOK(t, optout, podURL(web), 1, "hello from web")
		if counterSum(t, na.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination", "destination_workload": "web"}) == before {
			t.Error("re-enrolled pod's inbound traffic bypassed the agent")
		}
	})
}

// registeredID returns the curator ID under which the agent registered pod.
func registeredID(t *testing.T, na *nodeAgent, pod *testbed.Pod) curator.ID {
	t.Helper()
	for id, uid := range na.agent.cfg.Identities.(*rbeauth.Workloads).IDs() {
		if uid == pod.UID {
			return id
		}
	}
	t.Fatalf("pod %s has no registered ID", pod.Name)
	return curator.ID{}
}

// waitRevoked waits up to 10 s for the ID's current entry in the curator's
// log to be a revocation.
func waitRevoked(t *testing.T, mesh *meshtest.Curator, id curator.ID) {
	t.Helper()
	client := &curator.Client{URL: mesh.URL}
	kind := curator.Kind(0)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := client.Updates(context.Background(), 0, []curator.ID{id})
		if err != nil || len(resp.IDs) != 1 || len(resp.IDs[0].Entries) == 0 {
			continue
		}
		e, err := curator.ParseEntry(resp.IDs[0].Entries[0].Entry)
		if err != nil {
			t.Fatalf("parse the current entry of ID %v: %v", id, err)
		}
		if kind = e.Kind; kind == curator.KindRevocation {
			return
		}
	}
	t.Fatalf("ID %v: current entry is %v after 10 s, want a revocation", id, kind)
}

// TestConcurrentEnrollStartsOneProxySet enrolls one running pod from many
// goroutines at once, as the pod informer and start-up reconciliation may:
// every call succeeds, the pod gets one set of listeners, and unenrolling
// leaves none behind.
func TestConcurrentEnrollStartsOneProxySet(t *testing.T) {
	tb := testbed.Get(t)
	mesh := startMesh(t, tb)
	node := testbed.NewNode(t, tb, "at-twice")
	na := startAgent(t, tb, mesh, node)
	const ns = "at-twice"
	ambientNamespace(t, tb, ns)
	eventually(t, 10*time.Second, "agent sees the ambient namespace", func() bool {
		return na.agent.view.NamespaceLabels(ns)[DataplaneModeLabel] == "ambient"
	})
	// No CNI ADD and no process in the pod, so only the calls below can
	// enroll it.
	web := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "web"})
	pod, err := tb.Client().CoreV1().Pods(ns).Get(context.Background(), web.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	const calls = 8
	type result struct {
		enrolled bool
		err      error
	}
	results := make(chan result, calls)
	start := make(chan struct{})
	for range calls {
		go func() {
			<-start
			enrolled, err := na.agent.Enroll(context.Background(), pod, web.NetnsPath())
			results <- result{enrolled, err}
		}()
	}
	close(start)
	for range calls {
		r := <-results
		if r.err != nil || !r.enrolled {
			t.Errorf("concurrent Enroll = %v, %v; want true, nil", r.enrolled, r.err)
		}
	}
	if n := listenersOnPort(t, web, HBONEPort); n != 1 {
		t.Errorf("pod has %d HBONE listeners after %d concurrent enrollments, want 1", n, calls)
	}
	if n := listenersOnPort(t, web, InboundPort); n != 1 {
		t.Errorf("pod has %d plaintext inbound listeners after %d concurrent enrollments, want 1", n, calls)
	}

	if err := na.agent.Unenroll(context.Background(), web.UID); err != nil {
		t.Fatalf("unenroll: %v", err)
	}
	if n := listenersOnPort(t, web, HBONEPort); n != 0 {
		t.Errorf("pod has %d HBONE listeners left after unenrolling, want 0", n)
	}
}

// listenersOnPort counts the TCP sockets listening on port inside the pod's
// network namespace, from /proc/thread-self/net/tcp and tcp6.
func listenersOnPort(t *testing.T, pod *testbed.Pod, port int) int {
	t.Helper()
	const stateListen = "0A"
	want := fmt.Sprintf(":%04X", port)
	count := 0
	err := pod.Do(func() error {
		for _, name := range []string{"tcp", "tcp6"} {
			data, err := os.ReadFile("/proc/thread-self/net/" + name)
			if err != nil {
				return err
			}
			for _, line := range strings.Split(string(data), "\n")[1:] {
				fields := strings.Fields(line)
				if len(fields) > 3 && strings.HasSuffix(fields[1], want) && fields[3] == stateListen {
					count++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read listening sockets in pod %s: %v", pod.Name, err)
	}
	return count
}
