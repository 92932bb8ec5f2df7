package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

func TestServiceWaypointPrecedence(t *testing.T) {
	tests := []struct {
		name      string
		service   map[string]string
		namespace map[string]string
		want      WaypointBinding
	}{
		{"no labels", nil, nil, WaypointBinding{}},
		{"service label", map[string]string{UseWaypointLabel: "wp"}, nil, WaypointBinding{Waypoint: "shop/wp", BoundBy: "Service"}},
		{"namespace label", nil, map[string]string{UseWaypointLabel: "ns-wp"}, WaypointBinding{Waypoint: "shop/ns-wp", BoundBy: "Namespace"}},
		{"service label wins", map[string]string{UseWaypointLabel: "wp"}, map[string]string{UseWaypointLabel: "ns-wp"}, WaypointBinding{Waypoint: "shop/wp", BoundBy: "Service"}},
		{"service opts out", map[string]string{UseWaypointLabel: WaypointOptOut}, map[string]string{UseWaypointLabel: "ns-wp"}, WaypointBinding{}},
		{"namespace opts out", nil, map[string]string{UseWaypointLabel: WaypointOptOut}, WaypointBinding{}},
		{"empty value binds nothing", map[string]string{UseWaypointLabel: ""}, map[string]string{UseWaypointLabel: "ns-wp"}, WaypointBinding{}},
		{"hash none is a waypoint name", map[string]string{UseWaypointLabel: "#none"}, nil, WaypointBinding{Waypoint: "shop/#none", BoundBy: "Service"}},
		{"cross-namespace waypoint", map[string]string{UseWaypointLabel: "wp", UseWaypointNamespaceLabel: "infra"}, nil, WaypointBinding{Waypoint: "infra/wp", BoundBy: "Service"}},
		{"namespace label's own namespace override", nil, map[string]string{UseWaypointLabel: "wp", UseWaypointNamespaceLabel: "infra"}, WaypointBinding{Waypoint: "infra/wp", BoundBy: "Namespace"}},
		{"override on the namespace ignored for a service label", map[string]string{UseWaypointLabel: "wp"}, map[string]string{UseWaypointNamespaceLabel: "infra"}, WaypointBinding{Waypoint: "shop/wp", BoundBy: "Service"}},
		{"waypoint's own service", map[string]string{managedGatewayLabel: meshController}, map[string]string{UseWaypointLabel: "wp"}, WaypointBinding{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", Labels: tt.service}}
			if got := ServiceWaypoint(svc, tt.namespace); got != tt.want {
				t.Errorf("ServiceWaypoint = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestPodWaypointPrecedence(t *testing.T) {
	tests := []struct {
		name      string
		pod       map[string]string
		namespace map[string]string
		want      WaypointBinding
	}{
		{"no labels", map[string]string{"app": "web"}, nil, WaypointBinding{}},
		{"pod label", map[string]string{UseWaypointLabel: "pod-wp"}, nil, WaypointBinding{Waypoint: "shop/pod-wp", BoundBy: "Pod"}},
		{"namespace label", nil, map[string]string{UseWaypointLabel: "ns-wp"}, WaypointBinding{Waypoint: "shop/ns-wp", BoundBy: "Namespace"}},
		{"pod label wins", map[string]string{UseWaypointLabel: "pod-wp"}, map[string]string{UseWaypointLabel: "ns-wp"}, WaypointBinding{Waypoint: "shop/pod-wp", BoundBy: "Pod"}},
		{"pod opts out", map[string]string{UseWaypointLabel: WaypointOptOut}, map[string]string{UseWaypointLabel: "ns-wp"}, WaypointBinding{}},
		{"waypoint pod", map[string]string{managedGatewayLabel: meshController}, map[string]string{UseWaypointLabel: "ns-wp"}, WaypointBinding{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-0", Labels: tt.pod}}
			if got := PodWaypoint(pod, tt.namespace); got != tt.want {
				t.Errorf("PodWaypoint = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// fakeView returns a started View over fake API clients that contain objs.
func fakeView(t *testing.T, log *slog.Logger, objs ...runtime.Object) *View {
	t.Helper()
	client := fake.NewClientset(objs...)
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		authorizationPolicies: "AuthorizationPolicyList",
		peerAuthentications:   "PeerAuthenticationList",
	})
	view, err := NewView(client, dyn, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := view.Start(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return view
}

func TestResolveRejectsWaypointDestinations(t *testing.T) {
	ready := true
	port := int32(8080)
	portName := "http"
	namespace := func(name string, labels map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	}
	pod := func(ns, name, ip string, labels map[string]string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		}
	}
	service := func(ns, name, clusterIP string, labels map[string]string, endpoint string) []runtime.Object {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
			Spec:       corev1.ServiceSpec{ClusterIP: clusterIP, ClusterIPs: []string{clusterIP}, Ports: []corev1.ServicePort{{Name: portName, Port: 80}}},
		}
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{endpoint}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
			Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port}},
		}
		return []runtime.Object{svc, slice}
	}

	objs := []runtime.Object{
		namespace("bound", map[string]string{UseWaypointLabel: "waypoint"}),
		namespace("free", nil),
		pod("bound", "web", "198.18.1.1", nil),
		pod("bound", "legacy", "198.18.1.2", map[string]string{UseWaypointLabel: WaypointOptOut}),
		pod("free", "api", "198.18.2.1", map[string]string{UseWaypointLabel: "api-wp"}),
		pod("free", "db", "198.18.2.2", nil),
	}
	objs = append(objs, service("bound", "web", "198.19.0.1", nil, "198.18.1.1")...)
	objs = append(objs, service("bound", "legacy", "198.19.0.2", map[string]string{UseWaypointLabel: WaypointOptOut}, "198.18.1.2")...)
	objs = append(objs, service("free", "api", "198.19.0.3", nil, "198.18.2.1")...)
	view := fakeView(t, slog.New(slog.DiscardHandler), objs...)

	tests := []struct {
		name string
		dst  string
		// want is the rejected destination as "Kind namespace/name bound-by", or "" when the connection is routed.
		want string
	}{
		{"service in bound namespace", "198.19.0.1:80", "Service bound/web Namespace"},
		{"pod in bound namespace", "198.18.1.1:8080", "Pod bound/web Namespace"},
		{"service opted out", "198.19.0.2:80", ""},
		// The pod's opt-out hides its namespace's label.
		{"pod opted out", "198.18.1.2:8080", ""},
		{"pod with its own label", "198.18.2.1:8080", "Pod free/api Pod"},
		// istiod sends service traffic to the service's waypoint only,
		// never to the waypoint of the endpoint it picks.
		{"service to a pod with its own label", "198.19.0.3:80", ""},
		{"pod without labels", "198.18.2.2:8080", ""},
		{"address outside the cluster", "198.18.200.9:443", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := view.Resolve(netip.MustParseAddrPort(tt.dst), "cluster.local")
			werr, rejected := errors.AsType[*WaypointError](err)
			if tt.want == "" {
				if err != nil {
					t.Errorf("Resolve(%s) = %v, want a route", tt.dst, err)
				}
				return
			}
			if !rejected {
				t.Fatalf("Resolve(%s) error = %v, want a *WaypointError", tt.dst, err)
			}
			if got := werr.Kind + " " + werr.Namespace + "/" + werr.Name + " " + werr.Binding.BoundBy; got != tt.want {
				t.Errorf("Resolve(%s) rejected %q, want %q", tt.dst, got, tt.want)
			}
		})
	}
}

// logLines decodes a JSON log buffer into one map per line.
func logLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		lines = append(lines, m)
	}
	return lines
}

func TestWaypointRejectionsLogOncePerInterval(t *testing.T) {
	var buf bytes.Buffer
	reg := prometheus.NewRegistry()
	r, err := newWaypointRejections(reg, slog.New(slog.NewJSONHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_000_000, 0)
	r.now = func() time.Time { return now }
	source := &podProxy{namespace: "client", name: "curl"}
	dst := netip.MustParseAddrPort("198.19.0.1:80")
	web := &WaypointError{Kind: "Service", Namespace: "shop", Name: "web", Binding: WaypointBinding{Waypoint: "shop/waypoint", BoundBy: "Namespace"}}
	api := &WaypointError{Kind: "Pod", Namespace: "shop", Name: "api-0", Binding: WaypointBinding{Waypoint: "shop/waypoint", BoundBy: "Namespace"}}

	for range 3 {
		r.record(source, dst, web)
	}
	r.record(source, dst, api)
	if lines := logLines(t, &buf); len(lines) != 2 {
		t.Fatalf("logged %d lines for 4 rejections of 2 destinations, want 2: %v", len(lines), lines)
	}

	buf.Reset()
	now = now.Add(rejectionLogInterval)
	r.record(source, dst, web)
	lines := logLines(t, &buf)
	if len(lines) != 1 {
		t.Fatalf("logged %d lines after the interval, want 1", len(lines))
	}
	if got := lines[0]["rejected_since_last_log"]; got != float64(2) {
		t.Errorf("rejected_since_last_log = %v, want 2", got)
	}
	if got := lines[0]["destination"]; got != "Service shop/web" {
		t.Errorf("destination = %v, want Service shop/web", got)
	}

	if got := counterSum(t, reg, "mazu_waypoint_rejected_connections_total", map[string]string{"destination_kind": "Service", "destination_namespace": "shop", "waypoint": "shop/waypoint"}); got != 4 {
		t.Errorf("service rejections counted = %v, want 4", got)
	}
	if got := counterSum(t, reg, "mazu_waypoint_rejected_connections_total", map[string]string{"destination_kind": "Pod"}); got != 1 {
		t.Errorf("pod rejections counted = %v, want 1", got)
	}
}

func TestWaypointRejectionsStayBounded(t *testing.T) {
	r, err := newWaypointRejections(prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	source := &podProxy{namespace: "client", name: "curl"}
	for i := range maxRejectionLogs + 10 {
		r.record(source, netip.AddrPort{}, &WaypointError{Kind: "Pod", Namespace: "shop", Name: "web-" + strconv.Itoa(i)})
	}
	if n := len(r.destinations); n > maxRejectionLogs {
		t.Errorf("log state has %d destinations, want at most %d", n, maxRejectionLogs)
	}
}

func targetRefPolicy(name string, targetRefs bool) *unstructured.Unstructured {
	spec := map[string]any{"action": "ALLOW", "rules": []any{map[string]any{}}}
	if targetRefs {
		spec["targetRefs"] = []any{map[string]any{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}}
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"namespace": "shop", "name": name},
		"spec":     spec,
	}}
}

func TestTargetRefPolicyWarnedOnce(t *testing.T) {
	var buf bytes.Buffer
	v := &View{log: slog.New(slog.NewJSONHandler(&buf, nil)), unenforced: map[string]bool{}}
	warnings := func() int { return len(logLines(t, &buf)) }

	v.warnTargetRefPolicy(targetRefPolicy("l7", true))
	v.warnTargetRefPolicy(targetRefPolicy("l7", true))
	if got := warnings(); got != 1 {
		t.Fatalf("%d warnings for one policy seen twice, want 1", got)
	}
	line := logLines(t, &buf)[0]
	if line["namespace"] != "shop" || line["name"] != "l7" || line["level"] != "WARN" {
		t.Errorf("warning = %v, want a WARN for shop/l7", line)
	}

	v.warnTargetRefPolicy(targetRefPolicy("l4", false))
	if got := warnings(); got != 1 {
		t.Errorf("%d warnings after a policy without targetRefs, want still 1", got)
	}

	v.warnTargetRefPolicy(targetRefPolicy("l7", false))
	v.warnTargetRefPolicy(targetRefPolicy("l7", true))
	if got := warnings(); got != 2 {
		t.Errorf("%d warnings after the policy regained targetRefs, want 2", got)
	}

	v.forgetTargetRefPolicy(cache.DeletedFinalStateUnknown{Key: "shop/l7", Obj: targetRefPolicy("l7", true)})
	v.warnTargetRefPolicy(targetRefPolicy("l7", true))
	if got := warnings(); got != 3 {
		t.Errorf("%d warnings after the policy was deleted and created again, want 3", got)
	}
}

func TestPolicyDumpMarksUnenforced(t *testing.T) {
	allow := securityv1beta1.AuthorizationPolicy_ALLOW
	tests := []struct {
		name string
		spec *securityv1beta1.AuthorizationPolicy
		want string
	}{
		{"selector policy", &securityv1beta1.AuthorizationPolicy{Action: allow}, "shop/p ALLOW"},
		{"targetRefs", &securityv1beta1.AuthorizationPolicy{Action: allow, TargetRefs: []*typev1beta1.PolicyTargetReference{{Kind: "Gateway", Name: "waypoint"}}},
			"shop/p ALLOW (not enforced: targetRefs select a waypoint or gateway, which mazu-ztunnel does not run)"},
		{"CUSTOM", &securityv1beta1.AuthorizationPolicy{Action: securityv1beta1.AuthorizationPolicy_CUSTOM},
			"shop/p CUSTOM (not enforced: CUSTOM policies are not enforced at L4)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := policyDump(Policy{Namespace: "shop", Name: "p", Spec: tt.spec}); got != tt.want {
				t.Errorf("policyDump = %q, want %q", got, tt.want)
			}
		})
	}
}
