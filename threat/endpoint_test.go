package threat

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"

	"github.com/mazu-mesh/mazu-ztunnel/agent"
	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestAttackForgedEndpoint has a compromised control plane send a
// service's traffic to an attacker pod through istiod. Attack: a
// WorkloadEntry labelled like web's pods, at mallory's IP and with web's
// service account, and a ServiceEntry for web's host and ClusterIP with
// mallory's IP as its endpoint. The test shows from istiod's debug
// endpoints that istiod really distributes mallory's IP as an endpoint of
// web: in its EDS shards (what sidecars and waypoints receive) and in its
// ambient workload index (what a stock ztunnel receives over WDS), there
// with web's identity. Mallory listens on port 8080 and on the HBONE port
// with an istiod-issued certificate for web's identity.
//
// Defence proved: the agent never picks the forged endpoint, because it
// reads no xDS and resolves a ClusterIP only through the Kubernetes view
// (Service, EndpointSlice, Pod, service account). Every resolution of the
// ClusterIP by the client's agent yields web's pod and identity, all
// requests to the ClusterIP reach the genuine web pod, and mallory's
// listeners receive no connection. This test does not send traffic to the
// attacker, so it does not exercise the identity check.
// TestAttackImpostorAtEndpointIP covers traffic that does reach an
// impostor, and TestAttackIstiodCertificate's server case a server that
// presents istiod's certificate.
func TestAttackForgedEndpoint(t *testing.T) {
	privtest.Require(t)
	m := sharedMesh(t)
	if m.tb.IstiodCAAddr() == "" {
		t.Fatal("istiod is not running: this test needs the testbed started with Options.Istiod")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := newVictimSetup(t, m, "endpoint")
	svc, err := m.tb.AddService(ctx, s.ns, "web", map[string]string{"app": "web"}, corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.tb.WaitEndpoints(ctx, s.ns, "web", 1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	clusterIP := netip.MustParseAddr(svc.Spec.ClusterIP)
	host := "web." + s.ns + ".svc.cluster.local"

	webCert := istiodCertificate(t, m.tb, s.web)
	rogueHBONE := startRogueServer(t, s.mallory, agent.HBONEPort, &webCert)
	rogueApp := startRogueServer(t, s.mallory, 8080, nil)

	dyn, err := dynamic.NewForConfig(m.tb.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	createIstioObject(t, dyn, "WorkloadEntry", "workloadentries", s.ns, "forged", map[string]any{
		"address": s.mallory.IP.String(), "labels": map[string]any{"app": "web"}, "serviceAccount": "web",
	})
	createIstioObject(t, dyn, "ServiceEntry", "serviceentries", s.ns, "forged-host", map[string]any{
		"hosts": []any{host}, "addresses": []any{clusterIP.String()},
		"location": "MESH_INTERNAL", "resolution": "STATIC",
		"ports":     []any{map[string]any{"number": int64(80), "name": "http", "protocol": "TCP", "targetPort": int64(8080)}},
		"endpoints": []any{map[string]any{"address": s.mallory.IP.String()}},
	})

	eventually(t, 30*time.Second, "istiod's EDS shards list mallory as an endpoint of "+host, func() bool {
		return edsShardsList(t, m.tb, host, s.ns, s.mallory.IP) == 2
	})
	eventually(t, 30*time.Second, "istiod's ambient index lists mallory as a workload of "+host+" with web's identity", func() bool {
		return ambientWorkloadOf(t, m.tb, s.ns+"/"+host, s.mallory.IP, "web")
	})
	t.Logf("istiod distributes %s as an endpoint of %s (EDS shards and ambient workload index)", s.mallory.IP, host)

	view := m.agents[0].agent.View()
	dst := netip.AddrPortFrom(clusterIP, 80)
	for range 100 {
		d, err := view.Resolve(dst, testbed.TrustDomain)
		if err != nil {
			t.Fatalf("client's agent: resolve %s: %v", dst, err)
		}
		if d.Addr.Addr() != s.web.IP || d.Identity != podIdentity(s.web) {
			t.Fatalf("client's agent resolved %s to %s with identity %s, want web's pod %s with %s", dst, d.Addr, d.Identity, s.web.IP, podIdentity(s.web))
		}
	}

	const requests = 20
	before := m.agents[1].inboundMTLS(t, s.web)
	expectOK(t, s.client, "http://"+dst.String()+"/", requests, "hello from web")
	if got := m.agents[1].inboundMTLS(t, s.web) - before; got != requests {
		t.Errorf("web's agent counted %v inbound HBONE connections, want %d", got, requests)
	}
	if n := rogueApp.Conns.Load(); n != 0 {
		t.Errorf("mallory's port 8080 received %d connections, want 0", n)
	}
	if n := rogueHBONE.Conns.Load(); n != 0 {
		t.Errorf("mallory's HBONE port received %d connections, want 0", n)
	}
}

// createIstioObject creates a networking.istio.io/v1 object and deletes it
// when the test ends.
func createIstioObject(t *testing.T, dyn dynamic.Interface, kind, resource, namespace, name string, spec map[string]any) {
	t.Helper()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": kind,
		"metadata": map[string]any{"namespace": namespace, "name": name},
		"spec":     spec,
	}}
	res := dyn.Resource(schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: resource}).Namespace(namespace)
	if _, err := res.Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create %s %s/%s: %v", kind, namespace, name, err)
	}
	t.Cleanup(func() { _ = res.Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

// istiodDebug fetches a path of istiod's debug HTTP endpoints.
func istiodDebug(t *testing.T, tb *testbed.Testbed, path string) []byte {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	url := "http://127.0.0.1:" + strconv.Itoa(tb.Ports().IstiodHTTP) + path
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET istiod %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET istiod %s: status %s, error %v", path, resp.Status, err)
	}
	return body
}

// edsShardsList returns how many of istiod's EDS shards for host in
// namespace (/debug/endpointShardz) list ip as an endpoint address.
func edsShardsList(t *testing.T, tb *testbed.Testbed, host, namespace string, ip netip.Addr) int {
	t.Helper()
	var shards map[string]map[string]struct {
		Shards map[string][]struct {
			Addresses []string `json:"Addresses"`
		} `json:"Shards"`
	}
	if err := json.Unmarshal(istiodDebug(t, tb, "/debug/endpointShardz"), &shards); err != nil {
		t.Fatalf("parse istiod's /debug/endpointShardz: %v", err)
	}
	n := 0
	for _, endpoints := range shards[host][namespace].Shards {
		for _, ep := range endpoints {
			if slices.Contains(ep.Addresses, ip.String()) {
				n++
				break
			}
		}
	}
	return n
}

// ambientWorkloadOf reports whether istiod's ambient index
// (/debug/ambientz), the source of the workload table that istiod sends to
// ztunnels, has a workload at ip with service account serviceAccount that
// is a member of service (namespace/hostname).
func ambientWorkloadOf(t *testing.T, tb *testbed.Testbed, service string, ip netip.Addr, serviceAccount string) bool {
	t.Helper()
	var index struct {
		Workloads []struct {
			Addresses      [][]byte       `json:"addresses"`
			ServiceAccount string         `json:"serviceAccount"`
			Services       map[string]any `json:"services"`
		} `json:"workloads"`
	}
	if err := json.Unmarshal(istiodDebug(t, tb, "/debug/ambientz"), &index); err != nil {
		t.Fatalf("parse istiod's /debug/ambientz: %v", err)
	}
	for _, w := range index.Workloads {
		if w.ServiceAccount != serviceAccount || w.Services[service] == nil {
			continue
		}
		for _, a := range w.Addresses {
			// The istiod the testbed builds (istio.io/istio at commit
			// eed52ebb66ad) writes the address as base64 of its text
			// form. The raw 4 bytes are accepted too.
			if bytes.Equal(a, ip.AsSlice()) || string(a) == ip.String() {
				return true
			}
		}
	}
	return false
}

// TestAttackImpostorAtEndpointIP has the network deliver a service's
// traffic to an impostor, the case TestAttackForgedEndpoint leaves open:
// the client's agent picks the genuine endpoint, but the connection reaches
// the attacker. Attack: routes in the client's node and the bare node send
// web's pod IP to mallory, who holds web's IP on its loopback interface,
// as an attacker on the untrusted network between nodes could. Mallory
// harvested web's certificate and stapled proof, and serves HBONE on web's
// IP:15008 with a certificate of its own that carries web's registered
// token, with web's staple. Token, identity (the one Kubernetes states for
// the service's endpoint), liveness and peer IP all check out. Defence:
// the client's agent checks that web's registration binds the server's TLS
// key, rejects the server with reason registration_key, and sends no data:
// every request fails and mallory completes no TLS handshake. Positive
// control: with the routes removed, the same client pod reaches web.
func TestAttackImpostorAtEndpointIP(t *testing.T) {
	privtest.Require(t)
	m := sharedMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := newVictimSetup(t, m, "impostor")
	svc, err := m.tb.AddService(ctx, s.ns, "web", map[string]string{"app": "web"}, corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.tb.WaitEndpoints(ctx, s.ns, "web", 1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	serviceURL := "http://" + svc.Spec.ClusterIP + ":80/"
	// A second client pod, so that no HBONE connection pooled by the
	// positive control carries the attack's requests.
	victim := newAmbientPod(t, m, 0, testbed.PodSpec{Namespace: s.ns, Name: "victim", ServiceAccount: "victim"})

	leaked := harvestIdentity(t, s.mallory, s.web)
	cert := mintCertificate(t, podIdentity(s.web), leaked.Token)
	cert.SignedCertificateTimestamps = [][]byte{leaked.Staple}
	restore := hijackIP(t, m, s.web.IP, m.agents[0].node, s.mallory)
	impostor := startRogueListener(t, s.mallory, hboneAddr(s.web), &cert)

	before := m.agents[0].rejections(t)
	report := httpFrom(t, victim, serviceURL, 3)
	if report.OK != 0 {
		t.Fatalf("victim -> %s: %d of 3 requests succeeded through the impostor, want none", serviceURL, report.OK)
	}
	waitRejected(t, m.agents[0], before, "registration_key")
	if n := impostor.Conns.Load(); n == 0 {
		t.Fatal("the impostor received no connection, so the route did not deliver web's traffic to it")
	}
	if n := impostor.Handshakes.Load(); n != 0 {
		t.Fatalf("the impostor completed %d TLS handshakes, want 0", n)
	}

	restore()
	expectOK(t, victim, serviceURL, 3, "hello from web")
}

// hijackIP makes the network deliver packets for ip from node's pods to
// pod on the bare node. It adds a /32 route on node to the bare node, a /32
// route on the bare node to pod, and ip on pod's loopback interface. It
// returns a function that removes the routes, which also runs when the
// test ends.
func hijackIP(t *testing.T, m *mesh, ip netip.Addr, node *testbed.Node, pod *testbed.Pod) (restore func()) {
	t.Helper()
	if pod.Node != m.bare {
		t.Fatalf("hijack %s: pod %s is on %s, want the bare node", ip, pod.Name, pod.Node.Name)
	}
	dst := &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}
	onNode := &netlink.Route{Dst: dst, Gw: m.bare.IP.AsSlice()}
	onBare := &netlink.Route{Dst: dst, Gw: pod.IP.AsSlice()}
	// The address goes away with the pod's network namespace.
	if err := pod.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(lo, &netlink.Addr{IPNet: dst})
	}); err != nil {
		t.Fatalf("add %s to %s's loopback: %v", ip, pod.Name, err)
	}

	var mu sync.Mutex
	var added []func() error
	restore = func() {
		mu.Lock()
		defer mu.Unlock()
		for i := len(added) - 1; i >= 0; i-- {
			if err := added[i](); err != nil {
				t.Errorf("remove a hijack route for %s: %v", ip, err)
			}
		}
		added = nil
	}
	t.Cleanup(restore)
	add := func(n *testbed.Node, r *netlink.Route) {
		if err := n.Do(func() error { return netlink.RouteAdd(r) }); err != nil {
			t.Fatalf("route %s via %s on %s: %v", ip, r.Gw, n.Name, err)
		}
		mu.Lock()
		added = append(added, func() error { return n.Do(func() error { return netlink.RouteDel(r) }) })
		mu.Unlock()
	}
	add(m.bare, onBare)
	add(node, onNode)
	return restore
}
