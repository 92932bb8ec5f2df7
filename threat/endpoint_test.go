package threat

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"

	"github.com/mazu-mesh/mazu-ztunnel/agent"
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
// listeners receive no connection. The other case, a forged endpoint that
// the client does reach and that cannot prove the identity Kubernetes
// states, is not reachable through istiod; TestAttackIstiodCertificate's
// server case covers a server that presents istiod's certificate instead
// of a registered token.
func TestAttackForgedEndpoint(t *testing.T) {
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
