package agent

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestRoutingToPodsAndPassthrough sends traffic from an enrolled pod on one
// node to pods on another: by pod IP to an enrolled pod, which goes through
// HBONE, and to a pod outside the mesh, which passes through as plain TCP.
// ClusterIP routing is in TestAgentsCarryTrafficOverHBONE.
func TestRoutingToPodsAndPassthrough(t *testing.T) {
	tb := testbed.Get(t)
	mesh := startMesh(t, tb)
	cni := buildCNI(t)
	nodeA := testbed.NewNode(t, tb, "at-route-a")
	nodeB := testbed.NewNode(t, tb, "at-route-b")
	agentA := startAgent(t, tb, mesh, nodeA)
	agentB := startAgent(t, tb, mesh, nodeB)
	const ns = "at-route"
	ambientNamespace(t, tb, ns)

	web := testbed.NewPod(t, tb, nodeB, testbed.PodSpec{Namespace: ns, Name: "web", ServiceAccount: "web", OnNetwork: cniAdd(cni, agentB.socket)})
	startServer(t, web)
	legacy := testbed.NewPod(t, tb, nodeB, testbed.PodSpec{
		Namespace: ns, Name: "legacy", Labels: map[string]string{DataplaneModeLabel: "none", "app": "legacy"},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}, OnNetwork: cniAdd(cni, agentB.socket),
	})
	startServer(t, legacy)
	client := testbed.NewPod(t, tb, nodeA, testbed.PodSpec{Namespace: ns, Name: "client", ServiceAccount: "client", OnNetwork: cniAdd(cni, agentA.socket)})
	waitEnrolled(t, tb, web)
	waitEnrolled(t, tb, client)

	inbound := func() float64 {
		return counterSum(t, agentB.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination"})
	}
	verified := func() float64 {
		return counterSum(t, agentB.registry, "mazu_peer_verifications_total", map[string]string{"result": "accepted"})
	}
	outbound := func(security string) float64 {
		return counterSum(t, agentA.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "source", "source_workload": "client", "connection_security_policy": security})
	}

	t.Run("pod IP over HBONE", func(t *testing.T) {
		const n = 5
		mtlsBefore := counterSum(t, agentB.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination", "destination_workload": "web", "connection_security_policy": "mutual_tls"})
		outBefore := outbound("mutual_tls")
		expectOK(t, client, podURL(web), n, "hello from web")
		if got := counterSum(t, agentB.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination", "destination_workload": "web", "connection_security_policy": "mutual_tls"}) - mtlsBefore; got != n {
			t.Errorf("server agent counted %v mutual-TLS inbound connections, want %d", got, n)
		}
		if got := outbound("mutual_tls") - outBefore; got != n {
			t.Errorf("client agent counted %v HBONE outbound connections, want %d", got, n)
		}
		// The client's agent pools its HBONE connection, so one
		// verification can serve all n streams.
		if verified() == 0 {
			t.Errorf("server agent verified no peer")
		}
	})

	t.Run("passthrough to a pod outside the mesh", func(t *testing.T) {
		const n = 5
		inBefore, verifiedBefore, plainBefore := inbound(), verified(), outbound("unknown")
		expectOK(t, client, podURL(legacy), n, "hello from legacy")
		if got := outbound("unknown") - plainBefore; got != n {
			t.Errorf("client agent counted %v passthrough connections, want %d", got, n)
		}
		// Node B's agent saw nothing: no HBONE, no plaintext inbound.
		if inbound() != inBefore || verified() != verifiedBefore {
			t.Errorf("destination node's agent handled passthrough traffic: inbound %v -> %v, verifications %v -> %v", inBefore, inbound(), verifiedBefore, verified())
		}
	})

	// A ClusterIP whose endpoint is outside the mesh resolves to that
	// endpoint, and the connection passes through to it.
	t.Run("service outside the mesh", func(t *testing.T) {
		ctx := context.Background()
		svc, err := tb.AddService(ctx, ns, "legacy", map[string]string{"app": "legacy"}, corev1.ServicePort{Name: "http", Port: 80, TargetPort: intOrString(8080)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tb.WaitEndpoints(ctx, ns, "legacy", 1, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "agent sees the legacy endpoint", func() bool {
			d, err := agentA.agent.view.Resolve(netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80), testbed.TrustDomain)
			return err == nil && d.Addr.Addr() == legacy.IP
		})
		const n = 3
		inBefore, plainBefore := inbound(), outbound("unknown")
		expectOK(t, client, "http://"+svc.Spec.ClusterIP+":80/", n, "hello from legacy")
		if got := outbound("unknown") - plainBefore; got != n {
			t.Errorf("client agent counted %v passthrough connections, want %d", got, n)
		}
		if inbound() != inBefore {
			t.Errorf("destination node's agent handled passthrough traffic")
		}
	})
}
