package agent

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestRollingRestartUnderTraffic replaces a node's agent the way a
// DaemonSet rolling update with surge does: a second agent for the same
// node starts on the same pins, state and CNI socket path while the first
// still serves, then the first stops. Clients open new connections all
// along, and none may fail. A pod created after the first agent stopped
// must still pass its CNI ADD.
func TestRollingRestartUnderTraffic(t *testing.T) {
	tb := testbed.Get(t)
	mesh := startMesh(t, tb)
	cni := buildCNI(t)
	node := testbed.NewNode(t, tb, "at-restart")
	dir := t.TempDir()
	first := startAgentWith(t, tb, mesh, node, agentOptions{Dir: dir})
	const ns = "at-restart"
	ambientNamespace(t, tb, ns)
	add := cniAdd(cni, first.socket)
	web := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "web", ServiceAccount: "web", OnNetwork: add})
	startServer(t, web)
	client := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "client", ServiceAccount: "client", OnNetwork: add})
	waitEnrolled(t, tb, web)
	waitEnrolled(t, tb, client)
	expectOK(t, client, podURL(web), 1, "hello from web")

	// Four clients open connections back to back, so some are always in
	// flight, some queued in a listener, when the first agent stops.
	const clients, requests, interval = 4, 400, 5 * time.Millisecond
	reports := make(chan clientReport, clients)
	for range clients {
		go func() { reports <- httpFrom(t, client, podURL(web), requests, interval) }()
	}

	time.Sleep(500 * time.Millisecond)
	second := startAgentWith(t, tb, mesh, node, agentOptions{Dir: dir})
	if second.socket != first.socket {
		t.Fatalf("agents listen on %s and %s, want one shared CNI socket path", first.socket, second.socket)
	}
	for _, p := range []*testbed.Pod{web, client} {
		if !second.agent.IsEnrolled(p.UID) {
			t.Errorf("second agent did not adopt %s", p.Name)
		}
	}
	// The second agent takes over each pod's saved registration instead of
	// registering the pod again.
	for _, p := range []*testbed.Pod{web, client} {
		want := registeredID(t, first, p)
		select {
		case <-second.agent.Registered(p.UID):
		case <-time.After(10 * time.Second):
			t.Fatalf("second agent did not register %s within 10 s", p.Name)
		}
		if got := registeredID(t, second, p); got != want {
			t.Errorf("second agent holds ID %x for %s, want the first agent's %x", got[:8], p.Name, want[:8])
		}
	}
	time.Sleep(500 * time.Millisecond)
	out := map[string]string{"reporter": "source"}
	t.Logf("outbound connections before the first agent stops: first agent %v, second agent %v",
		counterSum(t, first.registry, "istio_tcp_connections_opened_total", out), counterSum(t, second.registry, "istio_tcp_connections_opened_total", out))
	first.stop()

	for range clients {
		report := <-reports
		if report.OK != requests {
			t.Errorf("%d of %d new connections failed across the restart: %v", requests-report.OK, requests, report.Errors)
		}
	}
	expectOK(t, client, podURL(web), 3, "hello from web")
	// The first agent's shutdown must leave the second agent's socket file.
	late, err := tb.AddPod(context.Background(), node, testbed.PodSpec{Namespace: ns, Name: "late", OnNetwork: add})
	if err != nil {
		t.Fatalf("CNI ADD after the first agent stopped: %v", err)
	}
	t.Cleanup(func() { _ = tb.DeletePod(context.Background(), late) })
	if !second.agent.IsEnrolled(late.UID) {
		t.Error("second agent did not enroll the pod added after the first agent stopped")
	}
	// The second agent carried traffic over HBONE after the first left.
	inbound := counterSum(t, second.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination", "connection_security_policy": "mutual_tls"})
	if inbound == 0 {
		t.Error("second agent carried no inbound HBONE connection")
	}
	// Each agent audits the curator's log for its node; the other agent's
	// registrations of the same pods must not read as foreign entries.
	time.Sleep(1500 * time.Millisecond) // more than one audit interval
	for i, na := range []*nodeAgent{first, second} {
		if n := counterSum(t, na.registry, "mazu_curator_alerts_total", nil); n != 0 {
			t.Errorf("agent %d raised %v curator audit alerts during the restart", i+1, n)
		}
	}
	for _, p := range []*testbed.Pod{web, client} {
		if podAnnotation(t, tb, p) != "enabled" || !captured(t, second, p.UID) {
			t.Errorf("pod %s lost its enrollment across the restart", p.Name)
		}
	}
}

// TestCNIAddWaitsForAgent checks mazu-cni's ordering guarantee: without a
// running agent a pod's CNI ADD fails and the pod never runs; with one,
// the pod's very first connection is already captured and goes through
// HBONE.
func TestCNIAddWaitsForAgent(t *testing.T) {
	tb := testbed.Get(t)
	mesh := startMesh(t, tb)
	cni := buildCNI(t)
	nodeA := testbed.NewNode(t, tb, "at-order-a")
	nodeB := testbed.NewNode(t, tb, "at-order-b")
	agentB := startAgent(t, tb, mesh, nodeB)
	const ns = "at-order"
	ambientNamespace(t, tb, ns)
	web := testbed.NewPod(t, tb, nodeB, testbed.PodSpec{Namespace: ns, Name: "web", ServiceAccount: "web", OnNetwork: cniAdd(cni, agentB.socket)})
	startServer(t, web)
	waitEnrolled(t, tb, web)

	dirA := t.TempDir()
	socketA := filepath.Join(dirA, "cni.sock")
	ctx := context.Background()
	spec := testbed.PodSpec{Namespace: ns, Name: "client", ServiceAccount: "client", OnNetwork: cniAdd(cni, socketA)}
	if pod, err := tb.AddPod(ctx, nodeA, spec); err == nil {
		_ = tb.DeletePod(ctx, pod)
		t.Fatal("pod added although no agent listens on its node")
	}
	if obj, err := tb.Client().CoreV1().Pods(ns).Get(ctx, "client", metav1.GetOptions{}); err == nil && obj.Status.Phase == corev1.PodRunning {
		t.Fatal("pod runs although its CNI ADD failed")
	}

	agentA := startAgentWith(t, tb, mesh, nodeA, agentOptions{Dir: dirA})
	client, err := tb.AddPod(ctx, nodeA, spec)
	if err != nil {
		t.Fatalf("add pod with the agent up: %v", err)
	}
	t.Cleanup(func() { _ = tb.DeletePod(context.Background(), client) })
	// The first process of the pod starts right after ADD returned.
	report := httpFrom(t, client, podURL(web), 1, 0)
	if report.OK != 1 {
		t.Fatalf("first request from the new pod failed: %v", report.Errors)
	}
	mtls := map[string]string{"reporter": "destination", "source_workload": "client", "connection_security_policy": "mutual_tls"}
	if n := counterSum(t, agentB.registry, "istio_tcp_connections_opened_total", mtls); n != 1 {
		t.Errorf("server agent counted %v HBONE connections from the new pod, want 1", n)
	}
	if n := counterSum(t, agentA.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "source", "source_workload": "client"}); n != 1 {
		t.Errorf("client agent proxied %v connections of the new pod, want 1", n)
	}
	if !agentA.agent.IsEnrolled(client.UID) {
		t.Errorf("agent on %s does not list the pod as enrolled", nodeA.Name)
	}
}

// TestRestartForgetsDepartedPods stops a node's agent, deletes one of its
// enrolled pods while none runs, and starts a new agent on the same pins
// and state: it adopts the remaining pod and removes the departed one's
// capture and state.
func TestRestartForgetsDepartedPods(t *testing.T) {
	tb := testbed.Get(t)
	mesh := startMesh(t, tb)
	cni := buildCNI(t)
	node := testbed.NewNode(t, tb, "at-depart")
	dir := t.TempDir()
	first := startAgentWith(t, tb, mesh, node, agentOptions{Dir: dir})
	const ns = "at-depart"
	ambientNamespace(t, tb, ns)
	add := cniAdd(cni, first.socket)
	web := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "web", ServiceAccount: "web", OnNetwork: add})
	startServer(t, web)
	gone := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "gone", OnNetwork: add})
	client := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "client", Labels: map[string]string{DataplaneModeLabel: "none"}, OnNetwork: add})
	waitEnrolled(t, tb, web)
	waitEnrolled(t, tb, gone)

	first.stop()
	if err := tb.DeletePod(context.Background(), gone); err != nil {
		t.Fatal(err)
	}
	second := startAgentWith(t, tb, mesh, node, agentOptions{Dir: dir})
	if captured(t, second, gone.UID) || second.agent.IsEnrolled(gone.UID) || second.agent.state.netns(string(gone.UID)) != "" {
		t.Error("new agent kept the capture or state of a pod deleted while no agent ran")
	}
	if !second.agent.IsEnrolled(web.UID) || !captured(t, second, web.UID) {
		t.Fatal("new agent did not adopt the remaining pod")
	}
	<-second.agent.Registered(web.UID)
	before := counterSum(t, second.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination", "destination_workload": "web"})
	expectOK(t, client, podURL(web), 2, "hello from web")
	if got := counterSum(t, second.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination", "destination_workload": "web"}) - before; got != 2 {
		t.Errorf("new agent carried %v connections to the adopted pod, want 2", got)
	}
}
