package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

var (
	authorizationPolicies = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	peerAuthentications   = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"}
)

const (
	podIPIndex     = "podIP"
	clusterIPIndex = "clusterIP"
)

// View is the agent's picture of the cluster, read only from the Kubernetes
// API through informers: pods, services, EndpointSlices, namespaces and
// Istio's authorization and peer-authentication policies. Nothing in it
// comes from istiod.
type View struct {
	log        *slog.Logger
	factory    informers.SharedInformerFactory
	dynFactory dynamicinformer.DynamicSharedInformerFactory

	pods       cache.SharedIndexInformer
	nsInformer cache.SharedIndexInformer
	services   cache.SharedIndexInformer
	slices     discoverylisters.EndpointSliceLister
	namespaces listersv1.NamespaceLister
	policies   cache.GenericLister
	peerAuths  cache.GenericLister
	synced     []cache.InformerSynced

	// unenforced contains the namespace/name of each AuthorizationPolicy
	// with targetRefs that was already logged as not enforced.
	unenforcedMu sync.Mutex
	unenforced   map[string]bool
}

// NewView creates the informers. Start runs them.
func NewView(client kubernetes.Interface, dyn dynamic.Interface, log *slog.Logger) (*View, error) {
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	dynFactory := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 10*time.Minute)
	v := &View{log: log, factory: factory, dynFactory: dynFactory, unenforced: map[string]bool{}}

	v.pods = factory.Core().V1().Pods().Informer()
	if err := v.pods.AddIndexers(cache.Indexers{podIPIndex: indexPodIPs}); err != nil {
		return nil, fmt.Errorf("index pods by IP: %w", err)
	}
	v.services = factory.Core().V1().Services().Informer()
	if err := v.services.AddIndexers(cache.Indexers{clusterIPIndex: indexClusterIPs}); err != nil {
		return nil, fmt.Errorf("index services by ClusterIP: %w", err)
	}
	v.slices = factory.Discovery().V1().EndpointSlices().Lister()
	v.namespaces = factory.Core().V1().Namespaces().Lister()
	v.nsInformer = factory.Core().V1().Namespaces().Informer()
	policyInformer := dynFactory.ForResource(authorizationPolicies)
	peerAuthInformer := dynFactory.ForResource(peerAuthentications)
	v.policies, v.peerAuths = policyInformer.Lister(), peerAuthInformer.Lister()
	if _, err := policyInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    v.warnTargetRefPolicy,
		UpdateFunc: func(_, obj any) { v.warnTargetRefPolicy(obj) },
		DeleteFunc: v.forgetTargetRefPolicy,
	}); err != nil {
		return nil, fmt.Errorf("watch AuthorizationPolicies: %w", err)
	}
	v.synced = []cache.InformerSynced{
		v.pods.HasSynced, v.services.HasSynced,
		factory.Discovery().V1().EndpointSlices().Informer().HasSynced,
		factory.Core().V1().Namespaces().Informer().HasSynced,
		policyInformer.Informer().HasSynced, peerAuthInformer.Informer().HasSynced,
	}
	return v, nil
}

// Start runs the informers until ctx ends and waits up to syncTimeout for
// their first sync.
func (v *View) Start(ctx context.Context, syncTimeout time.Duration) error {
	v.factory.Start(ctx.Done())
	v.dynFactory.Start(ctx.Done())
	syncCtx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), v.synced...) {
		return fmt.Errorf("sync Kubernetes view: not synced after %s: %w", syncTimeout, context.Cause(syncCtx))
	}
	return nil
}

// OnPodEvent registers handlers for pod changes.
func (v *View) OnPodEvent(h cache.ResourceEventHandler) error {
	_, err := v.pods.AddEventHandler(h)
	return err
}

// OnNamespaceEvent registers handlers for namespace changes.
func (v *View) OnNamespaceEvent(h cache.ResourceEventHandler) error {
	_, err := v.nsInformer.AddEventHandler(h)
	return err
}

func indexPodIPs(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.HostNetwork {
		return nil, nil
	}
	var ips []string
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = append(ips, pod.Status.PodIP)
	}
	return ips, nil
}

func indexClusterIPs(obj any) ([]string, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return nil, nil
	}
	var ips []string
	for _, ip := range svc.Spec.ClusterIPs {
		if ip != "" && ip != corev1.ClusterIPNone {
			ips = append(ips, ip)
		}
	}
	return ips, nil
}

// PodByIP returns the running pod with the address, or nil. When several
// pods report the address (a deleted pod not yet gone), the running one
// that started last wins.
func (v *View) PodByIP(ip netip.Addr) *corev1.Pod {
	objs, err := v.pods.GetIndexer().ByIndex(podIPIndex, ip.Unmap().String())
	if err != nil || len(objs) == 0 {
		return nil
	}
	var best *corev1.Pod
	for _, obj := range objs {
		pod := obj.(*corev1.Pod)
		if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil {
			continue
		}
		if best == nil || pod.CreationTimestamp.After(best.CreationTimestamp.Time) {
			best = pod
		}
	}
	return best
}

// Pod returns a pod by namespace and name, or nil.
func (v *View) Pod(namespace, name string) *corev1.Pod {
	obj, exists, err := v.pods.GetIndexer().GetByKey(namespace + "/" + name)
	if err != nil || !exists {
		return nil
	}
	return obj.(*corev1.Pod)
}

// PodsOnNode lists the pods scheduled to a node.
func (v *View) PodsOnNode(node string) []*corev1.Pod {
	var out []*corev1.Pod
	for _, obj := range v.pods.GetIndexer().List() {
		if pod := obj.(*corev1.Pod); pod.Spec.NodeName == node {
			out = append(out, pod)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name })
	return out
}

// ServiceByClusterIP returns the Service with the ClusterIP, or nil.
func (v *View) ServiceByClusterIP(ip netip.Addr) *corev1.Service {
	objs, err := v.services.GetIndexer().ByIndex(clusterIPIndex, ip.Unmap().String())
	if err != nil || len(objs) == 0 {
		return nil
	}
	return objs[0].(*corev1.Service)
}

// Services lists every Service.
func (v *View) Services() []*corev1.Service {
	var out []*corev1.Service
	for _, obj := range v.services.GetIndexer().List() {
		out = append(out, obj.(*corev1.Service))
	}
	return out
}

// EndpointSlices lists the slices of a Service.
func (v *View) EndpointSlices(svc *corev1.Service) []*discoveryv1.EndpointSlice {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name})
	slices, err := v.slices.EndpointSlices(svc.Namespace).List(sel)
	if err != nil {
		return nil
	}
	return slices
}

// NamespaceLabels returns a namespace's labels, or nil when it is unknown.
func (v *View) NamespaceLabels(name string) map[string]string {
	ns, err := v.namespaces.Get(name)
	if err != nil {
		return nil
	}
	return ns.Labels
}

// Policies returns every AuthorizationPolicy. One that does not decode is
// logged and replaced by a policy that denies everything in its namespace:
// leaving it out could turn its namespace's "allow only X" into "allow all".
func (v *View) Policies() []Policy {
	objs, err := v.policies.List(labels.Everything())
	if err != nil {
		return nil
	}
	out := make([]Policy, 0, len(objs))
	for _, obj := range objs {
		u := obj.(*unstructured.Unstructured)
		spec := &securityv1beta1.AuthorizationPolicy{}
		if err := decodeSpec(u, spec); err != nil {
			v.log.Error("AuthorizationPolicy invalid, denying all traffic in its namespace", "namespace", u.GetNamespace(), "name", u.GetName(), "error", err)
			spec = &securityv1beta1.AuthorizationPolicy{
				Action: securityv1beta1.AuthorizationPolicy_DENY,
				Rules:  []*securityv1beta1.Rule{{}},
			}
		}
		out = append(out, Policy{Namespace: u.GetNamespace(), Name: u.GetName(), Spec: spec})
	}
	return out
}

// PeerAuths returns every PeerAuthentication. One that does not decode is
// logged and read as STRICT for its namespace, failing closed.
func (v *View) PeerAuths() []PeerAuth {
	objs, err := v.peerAuths.List(labels.Everything())
	if err != nil {
		return nil
	}
	out := make([]PeerAuth, 0, len(objs))
	for _, obj := range objs {
		u := obj.(*unstructured.Unstructured)
		spec := &securityv1beta1.PeerAuthentication{}
		if err := decodeSpec(u, spec); err != nil {
			v.log.Error("PeerAuthentication invalid, requiring mTLS in its namespace", "namespace", u.GetNamespace(), "name", u.GetName(), "error", err)
			spec = &securityv1beta1.PeerAuthentication{Mtls: &securityv1beta1.PeerAuthentication_MutualTLS{Mode: securityv1beta1.PeerAuthentication_MutualTLS_STRICT}}
		}
		out = append(out, PeerAuth{Namespace: u.GetNamespace(), Name: u.GetName(), Spec: spec})
	}
	return out
}

func decodeSpec(u *unstructured.Unstructured, into json.Unmarshaler) error {
	spec, ok := u.Object["spec"]
	if !ok {
		return nil
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encode spec: %w", err)
	}
	return into.UnmarshalJSON(raw)
}
