package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

func TestMain(m *testing.M) {
	// The end-to-end tests re-run this binary inside pods as the
	// application (an HTTP server or client, an echo server or load
	// client), and outside pods as a node agent process.
	if role := os.Getenv(envRole); role != "" {
		os.Exit(runRole(role))
	}
	testbed.Main(m, testbed.Options{IstioCRDs: true})
}

func startView(t *testing.T, tb *testbed.Testbed) (*View, dynamic.Interface) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(tb.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	view, err := NewView(tb.Client(), dyn, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := view.Start(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return view, dyn
}

// eventually polls check until it returns true or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, check func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !check() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestResolveServiceToEnrolledPod(t *testing.T) {
	tb := testbed.Get(t)
	ctx := context.Background()
	node := testbed.NewNode(t, tb, "route-a")
	server := testbed.NewPod(t, tb, node, testbed.PodSpec{
		Namespace: "route", Name: "web", ServiceAccount: "web",
		Labels:      map[string]string{"app": "web"},
		Annotations: map[string]string{RedirectionAnnotation: "enabled"},
		Ports:       []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
	})
	svc, err := tb.AddService(ctx, "route", "web", map[string]string{"app": "web"}, corev1.ServicePort{Name: "http", Port: 80, TargetPort: intOrString(8080)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = tb.Client().CoreV1().Services("route").Delete(context.Background(), "web", metav1.DeleteOptions{})
	})
	if _, err := tb.WaitEndpoints(ctx, "route", "web", 1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	view, _ := startView(t, tb)
	clusterIP := netip.MustParseAddr(svc.Spec.ClusterIP)

	var dst Destination
	eventually(t, 10*time.Second, "the service's endpoints in the view", func() bool {
		dst, err = view.Resolve(netip.AddrPortFrom(clusterIP, 80), testbed.TrustDomain)
		return err == nil
	})
	if want := netip.AddrPortFrom(server.IP, 8080); dst.Addr != want {
		t.Errorf("Resolve addr = %s, want %s", dst.Addr, want)
	}
	if !dst.Mesh {
		t.Error("Resolve says the enrolled pod is outside the mesh")
	}
	if want := "spiffe://cluster.local/ns/route/sa/web"; dst.Identity.String() != want {
		t.Errorf("Resolve identity = %s, want %s", dst.Identity, want)
	}
	if dst.HBONE != netip.AddrPortFrom(server.IP, HBONEPort) {
		t.Errorf("Resolve HBONE = %s, want %s:%d", dst.HBONE, server.IP, HBONEPort)
	}

	if _, err := view.Resolve(netip.AddrPortFrom(clusterIP, 81), testbed.TrustDomain); err == nil {
		t.Error("Resolve accepted a port the service does not expose")
	}
	outside := netip.MustParseAddrPort("198.18.200.9:443")
	if dst, err := view.Resolve(outside, testbed.TrustDomain); err != nil || dst.Mesh || dst.Addr != outside {
		t.Errorf("Resolve(%s) = %+v, %v; want passthrough", outside, dst, err)
	}
}

func TestViewReadsPolicies(t *testing.T) {
	tb := testbed.Get(t)
	view, dyn := startView(t, tb)
	ctx := context.Background()
	if err := tb.EnsureNamespace(ctx, "policy"); err != nil {
		t.Fatal(err)
	}
	policy := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": "deny-admin", "namespace": "policy"},
		"spec": map[string]any{
			"action": "DENY",
			"rules":  []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"cluster.local/ns/policy/sa/admin"}}}}}},
		},
	}}
	if _, err := dyn.Resource(authorizationPolicies).Namespace("policy").Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = dyn.Resource(authorizationPolicies).Namespace("policy").Delete(context.Background(), "deny-admin", metav1.DeleteOptions{})
	})
	eventually(t, 10*time.Second, "the policy in the view", func() bool { return len(view.Policies()) == 1 })
	dst := Workload{Namespace: "policy"}
	admin := Request{SourcePrincipal: "cluster.local/ns/policy/sa/admin", DestinationPort: 80}
	if d := Authorize(view.Policies(), "istio-system", dst, admin); d.Allowed {
		t.Errorf("admin allowed despite the DENY policy: %+v", d)
	}
	user := Request{SourcePrincipal: "cluster.local/ns/policy/sa/user", DestinationPort: 80}
	if d := Authorize(view.Policies(), "istio-system", dst, user); !d.Allowed {
		t.Errorf("user denied: %+v", d)
	}
}
