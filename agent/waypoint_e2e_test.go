package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestWaypointBoundTrafficRejected labels a namespace with
// istio.io/use-waypoint. The agent must then reject captured connections to
// the namespace's Service and pod instead of sending them around the
// waypoint. It must count them and show the binding in /config_dump, and
// carry traffic again once the label is removed.
func TestWaypointBoundTrafficRejected(t *testing.T) {
	tb := testbed.Get(t)
	mesh := startMesh(t, tb)
	cni := buildCNI(t)
	node := testbed.NewNode(t, tb, "at-waypoint")
	na := startAgent(t, tb, mesh, node)
	const ns, clientNS = "at-waypoint", "at-waypoint-client"
	ambientNamespace(t, tb, ns)
	ambientNamespace(t, tb, clientNS)
	add := cniAdd(cni, na.socket)
	ctx := context.Background()

	web := testbed.NewPod(t, tb, node, testbed.PodSpec{
		Namespace: ns, Name: "web", ServiceAccount: "web", Labels: map[string]string{"app": "web"},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}, OnNetwork: add,
	})
	startServer(t, web)
	client := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: clientNS, Name: "client", ServiceAccount: "client", OnNetwork: add})
	waitEnrolled(t, tb, web)
	waitEnrolled(t, tb, client)
	svc, err := tb.AddService(ctx, ns, "web", map[string]string{"app": "web"}, corev1.ServicePort{Name: "http", Port: 80, TargetPort: intOrString(8080)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = tb.Client().CoreV1().Services(ns).Delete(context.Background(), "web", metav1.DeleteOptions{})
	})
	if _, err := tb.WaitEndpoints(ctx, ns, "web", 1, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	serviceURL := "http://" + svc.Spec.ClusterIP + ":80/"
	resolveService := func() error {
		_, err := na.agent.view.Resolve(netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80), testbed.TrustDomain)
		return err
	}
	waypointBound := func() bool {
		_, ok := errors.AsType[*WaypointError](resolveService())
		return ok
	}
	rejected := func(kind string) float64 {
		return counterSum(t, na.registry, "mazu_waypoint_rejected_connections_total", map[string]string{
			"destination_namespace": ns, "destination_kind": kind, "waypoint": ns + "/waypoint",
		})
	}
	carried := func() float64 {
		return counterSum(t, na.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "source", "source_workload": "client"})
	}

	eventually(t, 10*time.Second, "agent resolves the web service", func() bool { return resolveService() == nil })
	expectOK(t, client, serviceURL, 1, "hello from web")

	labelNamespace(t, tb, ns, map[string]any{UseWaypointLabel: "waypoint"})
	eventually(t, 10*time.Second, "agent sees the namespace's waypoint", waypointBound)

	t.Run("service rejected", func(t *testing.T) {
		const n = 3
		before, carriedBefore := rejected("Service"), carried()
		expectRejected(t, client, serviceURL, n)
		if got := rejected("Service") - before; got != n {
			t.Errorf("agent counted %v rejected service connections, want %d", got, n)
		}
		if got := carried() - carriedBefore; got != 0 {
			t.Errorf("agent carried %v outbound connections to the waypoint-bound service, want none", got)
		}
	})

	// The namespace label binds pod-addressed traffic too, because the
	// agent cannot read the waypoint's istio.io/waypoint-for.
	t.Run("pod IP rejected", func(t *testing.T) {
		const n = 2
		before := rejected("Pod")
		expectRejected(t, client, podURL(web), n)
		if got := rejected("Pod") - before; got != n {
			t.Errorf("agent counted %v rejected pod connections, want %d", got, n)
		}
	})

	t.Run("config_dump shows the binding", func(t *testing.T) {
		code, body := endpointGet(t, na, 2, "/config_dump")
		if code != 200 {
			t.Fatalf("/config_dump = %d %q", code, body)
		}
		var dump ConfigDump
		if err := json.Unmarshal(body, &dump); err != nil {
			t.Fatalf("/config_dump is not JSON: %v", err)
		}
		want := WaypointDump{Waypoint: ns + "/waypoint", BoundBy: "Namespace", Connections: "rejected"}
		var service *ServiceDump
		for i := range dump.Services {
			if dump.Services[i].Namespace == ns && dump.Services[i].Name == "web" {
				service = &dump.Services[i]
			}
		}
		switch {
		case service == nil:
			t.Errorf("config_dump lists no service %s/web", ns)
		case service.Waypoint == nil || *service.Waypoint != want:
			t.Errorf("config_dump service %s/web waypoint = %+v, want %+v", ns, service.Waypoint, want)
		}
		var workload *WorkloadDump
		for i := range dump.Workloads {
			if dump.Workloads[i].UID == string(web.UID) {
				workload = &dump.Workloads[i]
			}
		}
		switch {
		case workload == nil:
			t.Errorf("config_dump lists no workload for pod %s/web", ns)
		case workload.Waypoint == nil || *workload.Waypoint != want:
			t.Errorf("config_dump workload %s/web waypoint = %+v, want %+v", ns, workload.Waypoint, want)
		}
	})

	// A policy for the waypoint is enforced there, so the agent lists it as
	// not enforced.
	t.Run("targetRefs policy not enforced", func(t *testing.T) {
		applySecurity(t, dynamicClient(t, tb), na, "AuthorizationPolicy", ns, "waypoint-l7", map[string]any{
			"targetRefs": []any{map[string]any{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}},
			"action":     "ALLOW",
			"rules":      []any{map[string]any{"to": []any{map[string]any{"operation": map[string]any{"methods": []any{"GET"}}}}}},
		})
		_, body := endpointGet(t, na, 2, "/config_dump")
		var dump ConfigDump
		if err := json.Unmarshal(body, &dump); err != nil {
			t.Fatalf("/config_dump is not JSON: %v", err)
		}
		want := ns + "/waypoint-l7 ALLOW (not enforced: targetRefs select a waypoint or gateway, which mazu-ztunnel does not run)"
		if !slices.Contains(dump.Policies, want) {
			t.Errorf("config_dump policies = %q, want %q among them", dump.Policies, want)
		}
	})

	t.Run("service label opts out", func(t *testing.T) {
		labelService(t, tb, ns, "web", map[string]any{UseWaypointLabel: WaypointOptOut})
		eventually(t, 10*time.Second, "agent sees the service's opt-out", func() bool { return resolveService() == nil })
		expectOK(t, client, serviceURL, 2, "hello from web")
		expectRejected(t, client, podURL(web), 1)

		labelService(t, tb, ns, "web", map[string]any{UseWaypointLabel: nil})
		eventually(t, 10*time.Second, "agent sees the namespace's waypoint again", waypointBound)
		expectRejected(t, client, serviceURL, 1)
	})

	t.Run("label removed restores traffic", func(t *testing.T) {
		labelNamespace(t, tb, ns, map[string]any{UseWaypointLabel: nil})
		eventually(t, 10*time.Second, "agent sees the label removed", func() bool { return resolveService() == nil })
		beforeService, beforePod := rejected("Service"), rejected("Pod")
		expectOK(t, client, serviceURL, 2, "hello from web")
		expectOK(t, client, podURL(web), 2, "hello from web")
		if rejected("Service") != beforeService || rejected("Pod") != beforePod {
			t.Errorf("agent counted rejections after the label was removed")
		}
	})
}

// labelService merges labels into a Service; a nil value removes the label.
func labelService(t *testing.T, tb *testbed.Testbed, namespace, name string, labels map[string]any) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if _, err := tb.Client().CoreV1().Services(namespace).Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}
