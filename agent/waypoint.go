package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	securityv1beta1 "istio.io/api/security/v1beta1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"
)

// Labels Istio uses to bind Services and pods to a waypoint. Their meaning
// is documented in istio/api label/labels.yaml, and their precedence is
// istiod's (pilot/pkg/serviceregistry/ambient/waypoints.go).
const (
	// UseWaypointLabel names the waypoint (a Gateway of class
	// istio-waypoint) that traffic to a Service or pod goes through. On a
	// Namespace it applies to the Services and pods that do not set it.
	UseWaypointLabel = "istio.io/use-waypoint"
	// UseWaypointNamespaceLabel is the waypoint's namespace when it differs
	// from the namespace of the object that carries UseWaypointLabel.
	UseWaypointNamespaceLabel = "istio.io/use-waypoint-namespace"
	// WaypointOptOut as the value of UseWaypointLabel on a Service or pod
	// opts it out of its namespace's waypoint. istiod compares the value
	// exactly. A value such as "#none" is not even a valid label value.
	WaypointOptOut = "none"

	// managedGatewayLabel with the value meshController marks the
	// Deployment, pods and Service istiod creates for a waypoint, which
	// are never bound to a waypoint themselves.
	managedGatewayLabel = "gateway.istio.io/managed"
	meshController      = "istio.io-mesh-controller"
)

// WaypointBinding is the waypoint that traffic to a destination must pass
// under Istio's use-waypoint labels.
type WaypointBinding struct {
	// Waypoint is the waypoint Gateway as namespace/name, or "" when the
	// destination is not bound.
	Waypoint string
	// BoundBy is the kind of object whose label set the binding:
	// "Service", "Pod" or "Namespace".
	BoundBy string
}

// Bound reports whether the binding names a waypoint.
func (b WaypointBinding) Bound() bool { return b.Waypoint != "" }

// ServiceWaypoint returns the binding of traffic addressed to a Service's
// ClusterIP. As in istiod, the Service's own label decides, and its
// namespace's label applies only when the Service has none.
//
// NOTE: istiod also drops the binding when the waypoint's istio.io/waypoint-for
// excludes service traffic. This agent does not read Gateways, so it keeps
// the binding, which rejects more traffic rather than less.
func ServiceWaypoint(svc *corev1.Service, namespaceLabels map[string]string) WaypointBinding {
	if svc.Labels[managedGatewayLabel] == meshController {
		return WaypointBinding{}
	}
	return effectiveWaypoint("Service", svc.Namespace, svc.Labels, namespaceLabels)
}

// PodWaypoint returns the binding of traffic addressed to a pod's IP: the
// pod's own label, else its namespace's.
//
// NOTE: istiod applies a namespace's waypoint to pod-addressed traffic only
// when the waypoint's istio.io/waypoint-for is "workload" or "all", and its
// default is "service". This agent does not read Gateways, so it binds the
// pod either way and rejects more traffic than Istio would route around a
// waypoint.
func PodWaypoint(pod *corev1.Pod, namespaceLabels map[string]string) WaypointBinding {
	if pod.Labels[managedGatewayLabel] == meshController {
		return WaypointBinding{}
	}
	return effectiveWaypoint("Pod", pod.Namespace, pod.Labels, namespaceLabels)
}

// effectiveWaypoint applies the precedence of istiod: a use-waypoint label
// on the object, even the opt-out value, hides the namespace's label.
func effectiveWaypoint(kind, namespace string, labels, namespaceLabels map[string]string) WaypointBinding {
	if name, ok := labels[UseWaypointLabel]; ok {
		return waypointFromLabel(kind, namespace, name, labels)
	}
	if name, ok := namespaceLabels[UseWaypointLabel]; ok {
		return waypointFromLabel("Namespace", namespace, name, namespaceLabels)
	}
	return WaypointBinding{}
}

// waypointFromLabel reads one use-waypoint label. An empty value binds
// nothing, because istiod finds no waypoint named "" either.
func waypointFromLabel(boundBy, namespace, name string, labels map[string]string) WaypointBinding {
	if name == WaypointOptOut || name == "" {
		return WaypointBinding{}
	}
	if override := labels[UseWaypointNamespaceLabel]; override != "" {
		namespace = override
	}
	return WaypointBinding{Waypoint: namespace + "/" + name, BoundBy: boundBy}
}

// WaypointError reports that a connection's destination is bound to a
// waypoint. The agent cannot route through waypoints, and sending the
// connection directly would skip the waypoint's L7 policies.
type WaypointError struct {
	// Kind is "Service" for a ClusterIP destination and "Pod" for a pod IP.
	Kind      string
	Namespace string
	Name      string
	Binding   WaypointBinding
}

func (e *WaypointError) Error() string {
	return fmt.Sprintf("%s %s/%s is bound to waypoint %s by a %s label, and mazu-ztunnel does not route through waypoints",
		e.Kind, e.Namespace, e.Name, e.Binding.Waypoint, e.Binding.BoundBy)
}

// waypointRejections counts the connections rejected because their
// destination is bound to a waypoint, and logs them once per destination
// per interval. Only when more than maxRejectionLogs destinations are
// rejected within one interval can a destination be logged more often.
type waypointRejections struct {
	log      *slog.Logger
	counter  *prometheus.CounterVec
	interval time.Duration
	now      func() time.Time

	mu sync.Mutex
	// destinations maps "Kind namespace/name" to its log state.
	destinations map[string]*rejectionLog
}

type rejectionLog struct {
	logged time.Time
	// unlogged counts the rejections since the last log line.
	unlogged int
}

const (
	// rejectionLogInterval is how long the agent waits before it logs
	// another rejection for the same destination.
	rejectionLogInterval = time.Minute
	// maxRejectionLogs bounds the per-destination log state.
	maxRejectionLogs = 4096
)

func newWaypointRejections(reg prometheus.Registerer, log *slog.Logger) (*waypointRejections, error) {
	counter := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mazu_waypoint_rejected_connections_total",
		Help: "Outbound connections rejected because their destination is bound to a waypoint (istio.io/use-waypoint), which mazu-ztunnel does not route through.",
	}, []string{"destination_namespace", "destination_kind", "waypoint"})
	if err := reg.Register(counter); err != nil {
		return nil, fmt.Errorf("register waypoint rejection counter: %w", err)
	}
	return &waypointRejections{
		log: log, counter: counter, interval: rejectionLogInterval, now: time.Now,
		destinations: map[string]*rejectionLog{},
	}, nil
}

// record counts one rejected connection from the source pod and logs it
// unless the destination was logged within the interval.
func (r *waypointRejections) record(source *podProxy, origDst netip.AddrPort, werr *WaypointError) {
	r.counter.WithLabelValues(werr.Namespace, werr.Kind, werr.Binding.Waypoint).Inc()

	key := werr.Kind + " " + werr.Namespace + "/" + werr.Name
	now := r.now()
	r.mu.Lock()
	state, ok := r.destinations[key]
	if ok && now.Sub(state.logged) < r.interval {
		state.unlogged++
		r.mu.Unlock()
		return
	}
	unlogged := 0
	if ok {
		unlogged = state.unlogged
	}
	if !ok && len(r.destinations) >= maxRejectionLogs {
		r.pruneLocked(now)
	}
	r.destinations[key] = &rejectionLog{logged: now}
	r.mu.Unlock()

	r.log.Warn("outbound connection rejected: destination is bound to a waypoint, which mazu-ztunnel does not support",
		"src.workload", source.namespace+"/"+source.name, "dst.addr", origDst.String(),
		"destination", key, "waypoint", werr.Binding.Waypoint, "bound_by", werr.Binding.BoundBy,
		"rejected_since_last_log", unlogged,
		"fix", "run Istio's ztunnel on this node, or set istio.io/use-waypoint=none on the Service or pod to skip the waypoint")
}

// pruneLocked drops the log state of destinations not logged within the
// interval, or all of it when every entry is recent, so the map stays
// bounded. Dropping an entry only lets its next rejection log again.
func (r *waypointRejections) pruneLocked(now time.Time) {
	for key, state := range r.destinations {
		if now.Sub(state.logged) >= r.interval {
			delete(r.destinations, key)
		}
	}
	if len(r.destinations) >= maxRejectionLogs {
		clear(r.destinations)
	}
}

// warnTargetRefPolicy logs, once per policy, an AuthorizationPolicy that
// selects a waypoint or gateway through targetRefs. Such a policy is
// enforced by the waypoint, and this agent runs none. A policy that loses
// its targetRefs and gains them again is logged again.
func (v *View) warnTargetRefPolicy(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	spec := &securityv1beta1.AuthorizationPolicy{}
	if err := decodeSpec(u, spec); err != nil {
		// Policies logs invalid policies and denies in their namespace.
		return
	}
	key := u.GetNamespace() + "/" + u.GetName()
	v.unenforcedMu.Lock()
	defer v.unenforcedMu.Unlock()
	if !hasTargetRefs(spec) {
		delete(v.unenforced, key)
		return
	}
	if v.unenforced[key] {
		return
	}
	v.unenforced[key] = true
	var targets []string
	for _, ref := range spec.GetTargetRefs() {
		targets = append(targets, ref.GetKind()+"/"+ref.GetName())
	}
	if ref := spec.GetTargetRef(); ref != nil {
		targets = append(targets, ref.GetKind()+"/"+ref.GetName())
	}
	v.log.Warn("AuthorizationPolicy not enforced: its targetRefs select a waypoint or gateway, which mazu-ztunnel does not run",
		"namespace", u.GetNamespace(), "name", u.GetName(), "action", spec.GetAction().String(), "targets", targets)
}

func (v *View) forgetTargetRefPolicy(obj any) {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	v.unenforcedMu.Lock()
	delete(v.unenforced, u.GetNamespace()+"/"+u.GetName())
	v.unenforcedMu.Unlock()
}
