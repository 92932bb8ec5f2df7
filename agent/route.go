package agent

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
)

// Annotation and labels Istio uses for ambient enrollment.
const (
	// RedirectionAnnotation marks a pod whose traffic a node proxy captures.
	// The agent sets it once the pod is enrolled, as istio-cni does.
	RedirectionAnnotation = "ambient.istio.io/redirection"
	// DataplaneModeLabel opts a pod or namespace into ambient ("ambient")
	// or a pod out of it ("none").
	DataplaneModeLabel = "istio.io/dataplane-mode"
	// HBONEPort is where node proxies accept HBONE.
	HBONEPort = 15008
)

// Destination is the resolved target of a captured connection.
type Destination struct {
	// Mesh is true when the destination pod is enrolled, so the connection
	// goes through HBONE to a peer that must prove Identity.
	Mesh bool
	// Addr is the pod address and port to reach, or the original
	// destination for passthrough.
	Addr netip.AddrPort
	// HBONE is the address of the destination's HBONE listener.
	HBONE    netip.AddrPort
	Identity rbeauth.Identity
	Pod      *corev1.Pod
	Service  *corev1.Service
}

// ErrNoEndpoints means a Service has no ready endpoint for the port.
var ErrNoEndpoints = errors.New("service has no ready endpoint")

// Resolve maps a captured connection's original destination to a
// destination, using only the Kubernetes view: a ClusterIP goes to one of
// its Service's ready endpoints, a pod IP to that pod. Anything else passes
// through unchanged. The expected identity is the destination pod's
// service account as the pod object states it. A Service or pod bound to a
// waypoint (see ServiceWaypoint and PodWaypoint) returns a *WaypointError.
func (v *View) Resolve(dst netip.AddrPort, trustDomain string) (Destination, error) {
	if svc := v.ServiceByClusterIP(dst.Addr()); svc != nil {
		if b := ServiceWaypoint(svc, v.NamespaceLabels(svc.Namespace)); b.Bound() {
			return Destination{}, &WaypointError{Kind: "Service", Namespace: svc.Namespace, Name: svc.Name, Binding: b}
		}
		return v.resolveService(svc, dst, trustDomain)
	}
	if pod := v.PodByIP(dst.Addr()); pod != nil {
		if b := PodWaypoint(pod, v.NamespaceLabels(pod.Namespace)); b.Bound() {
			return Destination{}, &WaypointError{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, Binding: b}
		}
		return podDestination(pod, dst, trustDomain), nil
	}
	// NOTE: the view has no ServiceEntries, so traffic to their addresses
	// passes through here even when istio.io/use-waypoint binds them to an
	// egress waypoint.
	return Destination{Addr: dst}, nil
}

func (v *View) resolveService(svc *corev1.Service, dst netip.AddrPort, trustDomain string) (Destination, error) {
	var servicePort *corev1.ServicePort
	for i := range svc.Spec.Ports {
		p := &svc.Spec.Ports[i]
		if p.Port == int32(dst.Port()) && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
			servicePort = p
			break
		}
	}
	if servicePort == nil {
		return Destination{}, fmt.Errorf("resolve %s: service %s/%s has no TCP port %d", dst, svc.Namespace, svc.Name, dst.Port())
	}
	type candidate struct {
		ip   netip.Addr
		port uint16
	}
	var candidates []candidate
	for _, slice := range v.EndpointSlices(svc) {
		port, ok := slicePort(slice, servicePort.Name)
		if !ok {
			continue
		}
		for _, ep := range slice.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil {
					candidates = append(candidates, candidate{ip: ip, port: port})
				}
			}
		}
	}
	if len(candidates) == 0 {
		return Destination{}, fmt.Errorf("resolve %s: %w: %s/%s port %d", dst, ErrNoEndpoints, svc.Namespace, svc.Name, dst.Port())
	}
	chosen := candidates[rand.IntN(len(candidates))]
	target := netip.AddrPortFrom(chosen.ip, chosen.port)
	d := Destination{Addr: target, Service: svc}
	if pod := v.PodByIP(chosen.ip); pod != nil {
		d = podDestination(pod, target, trustDomain)
		d.Service = svc
	}
	return d, nil
}

func slicePort(slice *discoveryv1.EndpointSlice, name string) (uint16, bool) {
	for _, p := range slice.Ports {
		pName := ""
		if p.Name != nil {
			pName = *p.Name
		}
		if pName == name && p.Port != nil && (p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP) {
			return uint16(*p.Port), true
		}
	}
	return 0, false
}

func podDestination(pod *corev1.Pod, addr netip.AddrPort, trustDomain string) Destination {
	return Destination{
		Mesh:     pod.Annotations[RedirectionAnnotation] == "enabled",
		Addr:     addr,
		HBONE:    netip.AddrPortFrom(addr.Addr(), HBONEPort),
		Identity: PodIdentity(pod, trustDomain),
		Pod:      pod,
	}
}

// PodIdentity returns the SPIFFE identity of a pod's service account.
func PodIdentity(pod *corev1.Pod, trustDomain string) rbeauth.Identity {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	return rbeauth.Identity{TrustDomain: trustDomain, Namespace: pod.Namespace, ServiceAccount: sa}
}

// ShouldEnroll applies Istio's ambient opt-in: the pod label
// istio.io/dataplane-mode=ambient, or the namespace label with the pod not
// opting out with "none". Host-network pods and pods with an Istio sidecar
// are never enrolled, as with ztunnel.
func ShouldEnroll(pod *corev1.Pod, namespaceLabels map[string]string) bool {
	if pod.Spec.HostNetwork {
		return false
	}
	if _, sidecar := pod.Annotations["sidecar.istio.io/status"]; sidecar {
		return false
	}
	switch pod.Labels[DataplaneModeLabel] {
	case "ambient":
		return true
	case "none":
		return false
	}
	return namespaceLabels[DataplaneModeLabel] == "ambient"
}
