package threat

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// victimSetup is a server pod "web" on the second agent's node, a client
// pod on the first agent's node, and an attacker pod "mallory" on the bare
// node, all in one new ambient namespace.
type victimSetup struct {
	ns                   string
	web, client, mallory *testbed.Pod
}

// newVictimSetup creates a victimSetup and runs its positive control: the
// genuine client reaches web over HBONE, and web's agent counts the
// accepted peer.
func newVictimSetup(t *testing.T, m *mesh, prefix string) victimSetup {
	t.Helper()
	s := victimSetup{ns: newNamespace(t, m, prefix, true)}
	s.web = newAmbientPod(t, m, 1, testbed.PodSpec{
		Namespace: s.ns, Name: "web", ServiceAccount: "web", Labels: map[string]string{"app": "web"},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
	})
	startHTTPServer(t, s.web, 8080)
	s.client = newAmbientPod(t, m, 0, testbed.PodSpec{Namespace: s.ns, Name: "client", ServiceAccount: "client"})
	s.mallory = newBarePod(t, m, nil, testbed.PodSpec{Namespace: s.ns, Name: "mallory", ServiceAccount: "mallory"})

	// The client's agent pools HBONE connections, so three requests may
	// take one handshake.
	before := m.agents[1].accepted(t)
	expectOK(t, s.client, webURL(s.web), 3, "hello from web")
	if after := m.agents[1].accepted(t); after <= before {
		t.Fatalf("positive control: web's agent accepted no peer (count stays %v), so the requests did not go over HBONE", after)
	}
	return s
}

// webURL is the URL of the http-server role on port 8080 of pod, by pod IP.
func webURL(pod *testbed.Pod) string { return "http://" + pod.IP.String() + ":8080/" }

// TestAttackTokenReplayFromOtherIP replays a leaked token from another pod.
// Attack: mallory harvests the client's certificate and stapled proof from
// one handshake with the client's HBONE port, wraps the client's registered
// token in a certificate of its own, and connects to web's HBONE port from
// its own IP. Defence: web's agent checks that the token's pod has the
// peer's IP (and the registration binds the IP), so it rejects the
// handshake with reason pod_mismatch.
func TestAttackTokenReplayFromOtherIP(t *testing.T) {
	m := sharedMesh(t)
	s := newVictimSetup(t, m, "replay")

	leaked := harvestIdentity(t, s.mallory, s.client)
	cert := mintCertificate(t, podIdentity(s.client), leaked.Token)
	for _, alpn := range [][]string{{rbeauth.ALPNRBE}, {rbeauth.ALPN}} {
		expectProbeRejected(t, m.agents[1], s.mallory, hboneAddr(s.web), cert, leaked.Staple, alpn, "pod_mismatch")
	}
}
