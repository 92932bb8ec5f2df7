package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/tunnel"
)

// authorizer applies PeerAuthentication and AuthorizationPolicy to the pod's
// inbound connections. HBONE peers arrive already verified by rbeauth, so
// their URI SAN is their identity.
func (a *Agent) authorizer(p *podProxy) tunnel.Authorizer {
	return func(_ context.Context, r *tunnel.InboundRequest) error {
		pod := a.view.Pod(p.namespace, p.name)
		if pod == nil || pod.UID != p.uid {
			return fmt.Errorf("destination pod %s/%s is gone", p.namespace, p.name)
		}
		dst := Workload{Namespace: pod.Namespace, Labels: pod.Labels}
		req := Request{
			SourceIP:        r.Source.Addr().Unmap(),
			DestinationIP:   r.Destination.Addr().Unmap(),
			DestinationPort: r.Destination.Port(),
		}
		if len(r.PeerCertificates) == 0 {
			if ok, source := PlaintextAllowed(a.view.PeerAuths(), a.cfg.RootNamespace, dst, req.DestinationPort); !ok {
				return fmt.Errorf("plaintext to port %d rejected: PeerAuthentication %s requires mTLS", req.DestinationPort, source)
			}
		} else if len(r.PeerIdentities) > 0 {
			id, err := rbeauth.ParseIdentity(string(r.PeerIdentities[0]))
			if err != nil {
				return err
			}
			req.SourcePrincipal, req.SourceNamespace = id.Principal(), id.Namespace
		}
		if d := Authorize(a.view.Policies(), a.cfg.RootNamespace, dst, req); !d.Allowed {
			if d.Policy != "" {
				return fmt.Errorf("%s (%s)", d.Reason, d.Policy)
			}
			return fmt.Errorf("%s", d.Reason)
		}
		return nil
	}
}

// resolver routes the pod's captured connections with the Kubernetes view.
// It rejects connections to destinations bound to a waypoint, because
// sending them directly would skip the waypoint's policies.
func (a *Agent) resolver(p *podProxy) tunnel.Resolver {
	return func(_ context.Context, _, origDst netip.AddrPort) (tunnel.Route, error) {
		d, err := a.view.Resolve(origDst, a.cfg.TrustDomain)
		if werr, ok := errors.AsType[*WaypointError](err); ok {
			a.waypoints.record(p, origDst, werr)
			return tunnel.Route{}, fmt.Errorf("route %s: %w: %w", origDst, werr, tunnel.ErrRouteRejected)
		}
		if err != nil {
			return tunnel.Route{}, err
		}
		source := tunnel.Workload{Name: p.name, Namespace: p.namespace, Identity: tunnel.Identity(p.identity.String())}
		dest := tunnel.Workload{}
		if d.Pod != nil {
			dest = workloadOf(d, a.cfg.TrustDomain)
		}
		if !d.Mesh {
			return tunnel.Route{Target: d.Addr, Source: source, Destination: dest}, nil
		}
		return tunnel.Route{
			HBONE:       true,
			Target:      d.Addr,
			Peer:        d.HBONE,
			SrcIdentity: tunnel.Identity(p.identity.String()),
			DstIdentity: tunnel.Identity(d.Identity.String()),
			Source:      source,
			Destination: dest,
		}, nil
	}
}

func workloadOf(d Destination, trustDomain string) tunnel.Workload {
	w := tunnel.Workload{
		Name:      workloadName(d.Pod.Name, d.Pod.Labels),
		Namespace: d.Pod.Namespace,
		App:       d.Pod.Labels["app"],
		Version:   d.Pod.Labels["version"],
		Identity:  tunnel.Identity(PodIdentity(d.Pod, trustDomain).String()),
	}
	w.CanonicalService = d.Pod.Labels["service.istio.io/canonical-name"]
	if w.CanonicalService == "" {
		w.CanonicalService = w.App
	}
	if d.Service != nil {
		w.ServiceName, w.ServiceNamespace = d.Service.Name, d.Service.Namespace
		w.Service = d.Service.Name + "." + d.Service.Namespace + ".svc." + "cluster.local"
	}
	return w
}

// inboundWorkloads labels inbound metrics with the local pod as the
// destination and the verified peer as the source.
func (a *Agent) inboundWorkloads(p *podProxy) func(r *tunnel.InboundRequest) (tunnel.Workload, tunnel.Workload) {
	return func(r *tunnel.InboundRequest) (tunnel.Workload, tunnel.Workload) {
		dst := tunnel.Workload{Name: p.name, Namespace: p.namespace, Identity: tunnel.Identity(p.identity.String())}
		src := tunnel.Workload{}
		if pod := a.view.PodByIP(r.Source.Addr()); pod != nil {
			src = tunnel.Workload{Name: workloadName(pod.Name, pod.Labels), Namespace: pod.Namespace}
		}
		if len(r.PeerIdentities) > 0 {
			src.Identity = r.PeerIdentities[0]
		}
		return src, dst
	}
}

// workloadName approximates the owning workload's name the way ztunnel's
// telemetry does when istiod does not say: the app label, else the pod name
// without its generated suffixes.
func workloadName(podName string, labels map[string]string) string {
	if app := labels["app"]; app != "" {
		return app
	}
	parts := strings.Split(podName, "-")
	if len(parts) > 2 {
		return strings.Join(parts[:len(parts)-2], "-")
	}
	return podName
}
