package agent

import (
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestPolicyEnforcement applies AuthorizationPolicy and PeerAuthentication,
// created through the API server as Istio users write them, to an enrolled
// server and checks who gets through.
func TestPolicyEnforcement(t *testing.T) {
	tb := testbed.Get(t)
	mesh := startMesh(t, tb)
	cni := buildCNI(t)
	node := testbed.NewNode(t, tb, "at-policy")
	na := startAgent(t, tb, mesh, node)
	dyn := dynamicClient(t, tb)
	const ns, other = "at-policy", "at-policy-x"
	ambientNamespace(t, tb, ns)
	ambientNamespace(t, tb, other)
	add := cniAdd(cni, na.socket)

	web := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "web", ServiceAccount: "web", Labels: map[string]string{"app": "web"}, OnNetwork: add})
	startServer(t, web)
	a := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "client-a", ServiceAccount: "a", OnNetwork: add})
	b := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "client-b", ServiceAccount: "b", OnNetwork: add})
	c := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: other, Name: "client-c", ServiceAccount: "c", OnNetwork: add})
	plain := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: ns, Name: "plain", Labels: map[string]string{DataplaneModeLabel: "none"}, OnNetwork: add})
	for _, p := range []*testbed.Pod{web, a, b, c} {
		waitEnrolled(t, tb, p)
	}
	url := podURL(web)

	// Without policies everyone gets in, which makes the refusals below
	// the policies' doing.
	for _, p := range []*testbed.Pod{a, b, c, plain} {
		expectOK(t, p, url, 1, "hello from web")
	}

	t.Run("ALLOW by principal", func(t *testing.T) {
		applySecurity(t, dyn, na, "AuthorizationPolicy", ns, "allow-a", map[string]any{
			"selector": map[string]any{"matchLabels": map[string]any{"app": "web"}},
			"action":   "ALLOW",
			"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{
				"principals": []any{"cluster.local/ns/at-policy/sa/a"},
			}}}}},
		})
		expectOK(t, a, url, 2, "hello from web")
		denied := deniedHBONE(t, na, "client-b")
		expectRejected(t, b, url, 2)
		eventually(t, 5*time.Second, "2 HBONE streams from b denied", func() bool { return deniedHBONE(t, na, "client-b")-denied == 2 })
		expectRejected(t, plain, url, 1)
		deleteSecurity(t, dyn, na, "AuthorizationPolicy", ns, "allow-a")
		expectOK(t, b, url, 1, "hello from web")
	})

	t.Run("DENY by namespace", func(t *testing.T) {
		applySecurity(t, dyn, na, "AuthorizationPolicy", ns, "deny-x", map[string]any{
			"action": "DENY",
			"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{
				"namespaces": []any{other},
			}}}}},
		})
		denied := deniedHBONE(t, na, "client-c")
		expectRejected(t, c, url, 2)
		eventually(t, 5*time.Second, "2 HBONE streams from c denied", func() bool { return deniedHBONE(t, na, "client-c")-denied == 2 })
		expectOK(t, a, url, 1, "hello from web")
		expectOK(t, b, url, 1, "hello from web")
		deleteSecurity(t, dyn, na, "AuthorizationPolicy", ns, "deny-x")
		expectOK(t, c, url, 1, "hello from web")
	})

	t.Run("PeerAuthentication", func(t *testing.T) {
		// The opted-out client's connection is steered by tcx to the
		// server's plaintext listener, which applies the mode.
		plaintext := func(metric, flags string) float64 {
			return counterSum(t, na.registry, metric, map[string]string{
				"reporter": "destination", "destination_workload": "web", "source_workload": "plain",
				"connection_security_policy": "unknown", "response_flags": flags,
			})
		}
		applySecurity(t, dyn, na, "PeerAuthentication", ns, "mtls", map[string]any{"mtls": map[string]any{"mode": "STRICT"}})
		denied := plaintext("istio_tcp_connections_closed_total", "DENY")
		expectRejected(t, plain, url, 2)
		eventually(t, 5*time.Second, "2 plaintext connections denied", func() bool {
			return plaintext("istio_tcp_connections_closed_total", "DENY")-denied == 2
		})
		expectOK(t, a, url, 1, "hello from web")

		applySecurity(t, dyn, na, "PeerAuthentication", ns, "mtls", map[string]any{"mtls": map[string]any{"mode": "PERMISSIVE"}})
		allowed := plaintext("istio_tcp_connections_closed_total", "-")
		expectOK(t, plain, url, 2, "hello from web")
		eventually(t, 5*time.Second, "2 plaintext connections carried", func() bool {
			return plaintext("istio_tcp_connections_closed_total", "-")-allowed == 2
		})
		if got := plaintext("istio_tcp_connections_closed_total", "DENY") - denied; got != 2 {
			t.Errorf("%v plaintext connections denied in all, want the 2 under STRICT", got)
		}
	})
}

// deniedHBONE counts the mutual-TLS connections to web that the server's
// agent closed with the DENY flag, from a source workload.
func deniedHBONE(t *testing.T, na *nodeAgent, source string) float64 {
	t.Helper()
	return counterSum(t, na.registry, "istio_tcp_connections_closed_total", map[string]string{
		"reporter": "destination", "destination_workload": "web", "source_workload": source,
		"connection_security_policy": "mutual_tls", "response_flags": "DENY",
	})
}
