package agent

import (
	"sort"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ConfigDump is the admin /config_dump document: what the agent enrolled,
// the services and policies it routes and authorizes with, and each
// workload's certificate and registration state.
type ConfigDump struct {
	Node         string            `json:"node"`
	Workloads    []WorkloadDump    `json:"workloads"`
	Services     []ServiceDump     `json:"services"`
	Policies     []string          `json:"policies"`
	PeerAuths    []string          `json:"peerAuthentications"`
	Certificates []CertificateDump `json:"certificates"`
}

// WorkloadDump describes one enrolled pod.
type WorkloadDump struct {
	UID       string `json:"uid"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	IP        string `json:"ip"`
	Identity  string `json:"identity"`
	Netns     string `json:"netns"`
	// Waypoint is the binding of traffic addressed to the pod's IP, or nil.
	Waypoint *WaypointDump `json:"waypoint,omitempty"`
}

// ServiceDump describes one Service as the agent resolves it.
type ServiceDump struct {
	Namespace  string   `json:"namespace"`
	Name       string   `json:"name"`
	ClusterIPs []string `json:"clusterIPs"`
	Endpoints  []string `json:"endpoints"`
	// Waypoint is the binding of traffic addressed to the ClusterIPs, or
	// nil.
	Waypoint *WaypointDump `json:"waypoint,omitempty"`
}

// WaypointDump is a destination's waypoint binding. The agent does not
// route through waypoints, so it rejects every connection to the
// destination.
type WaypointDump struct {
	// Waypoint is the waypoint Gateway as namespace/name.
	Waypoint string `json:"waypoint"`
	// BoundBy is the kind of object whose istio.io/use-waypoint label set
	// the binding: Service, Pod or Namespace.
	BoundBy string `json:"boundBy"`
	// Connections is always "rejected".
	Connections string `json:"connections"`
}

func waypointDump(b WaypointBinding) *WaypointDump {
	if !b.Bound() {
		return nil
	}
	return &WaypointDump{Waypoint: b.Waypoint, BoundBy: b.BoundBy, Connections: "rejected"}
}

// CertificateDump is one workload's identity state from Identities.Describe.
type CertificateDump struct {
	UID   string `json:"uid"`
	State any    `json:"state"`
}

// ConfigDump builds the admin document.
func (a *Agent) ConfigDump() any {
	d := ConfigDump{Node: a.cfg.NodeName}
	a.mu.Lock()
	for uid, p := range a.pods {
		d.Workloads = append(d.Workloads, WorkloadDump{
			UID: string(uid), Namespace: p.namespace, Name: p.name, IP: p.ip.String(),
			Identity: p.identity.String(), Netns: p.netnsPath,
		})
	}
	a.mu.Unlock()
	sort.Slice(d.Workloads, func(i, j int) bool { return d.Workloads[i].UID < d.Workloads[j].UID })
	for i, w := range d.Workloads {
		if pod := a.view.Pod(w.Namespace, w.Name); pod != nil && string(pod.UID) == w.UID {
			d.Workloads[i].Waypoint = waypointDump(PodWaypoint(pod, a.view.NamespaceLabels(pod.Namespace)))
		}
	}
	for _, w := range d.Workloads {
		d.Certificates = append(d.Certificates, CertificateDump{UID: w.UID, State: a.cfg.Identities.Describe(types.UID(w.UID))})
	}
	for _, svc := range a.view.Services() {
		d.Services = append(d.Services, serviceDump(a.view, svc))
	}
	sort.Slice(d.Services, func(i, j int) bool {
		return d.Services[i].Namespace+"/"+d.Services[i].Name < d.Services[j].Namespace+"/"+d.Services[j].Name
	})
	for _, p := range a.view.Policies() {
		d.Policies = append(d.Policies, policyDump(p))
	}
	for _, p := range a.view.PeerAuths() {
		d.PeerAuths = append(d.PeerAuths, p.Namespace+"/"+p.Name+" "+p.Spec.GetMtls().GetMode().String())
	}
	sort.Strings(d.Policies)
	sort.Strings(d.PeerAuths)
	return d
}

// policyDump renders an AuthorizationPolicy as "namespace/name ACTION",
// followed by the reason when this agent does not enforce it.
func policyDump(p Policy) string {
	s := p.Namespace + "/" + p.Name + " " + p.Spec.GetAction().String()
	if reason := policyNotEnforced(p); reason != "" {
		s += " (not enforced: " + reason + ")"
	}
	return s
}

func serviceDump(v *View, svc *corev1.Service) ServiceDump {
	s := ServiceDump{
		Namespace: svc.Namespace, Name: svc.Name, ClusterIPs: svc.Spec.ClusterIPs,
		Waypoint: waypointDump(ServiceWaypoint(svc, v.NamespaceLabels(svc.Namespace))),
	}
	for _, slice := range v.EndpointSlices(svc) {
		for _, ep := range slice.Endpoints {
			if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
				s.Endpoints = append(s.Endpoints, ep.Addresses...)
			}
		}
	}
	sort.Strings(s.Endpoints)
	return s
}
