package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/mazu-mesh/mazu-ztunnel/agent/cni"
	"github.com/mazu-mesh/mazu-ztunnel/bpf"
	"github.com/mazu-mesh/mazu-ztunnel/internal/netns"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/tunnel"
)

// Listener ports inside each enrolled pod, as istio-cni's in-pod rules and
// ztunnel use them.
const (
	OutboundPort = 15001
	InboundPort  = 15006
)

// podProxy is one enrolled pod's set of proxies.
type podProxy struct {
	uid       types.UID
	namespace string
	name      string
	ip        netip.Addr
	identity  rbeauth.Identity
	netnsPath string
	ns        *netns.NS

	server    *tunnel.Server
	plaintext *tunnel.Plaintext
	outbound  *tunnel.Outbound
	pool      *tunnel.Pool

	// registered is closed once the identity is registered.
	registered         chan struct{}
	cancelRegistration context.CancelFunc

	stopOnce sync.Once
}

// certificateWait bounds how long a handshake waits for the pod's
// registration to complete.
const certificateWait = 10 * time.Second

// errNotOnNode rejects a request for a pod that another node's agent serves.
var errNotOnNode = errors.New("pod is not scheduled to this node")

// Enroll captures a pod and starts its proxies. It returns false, nil when
// the pod does not opt into ambient, and true, nil without doing anything
// when the pod is already enrolled, also when another call enrolled it
// meanwhile. netnsPath may be empty when the pod's namespace can be found
// from a process in its cgroup.
func (a *Agent) Enroll(ctx context.Context, pod *corev1.Pod, netnsPath string) (bool, error) {
	if pod.Spec.NodeName != a.cfg.NodeName {
		return false, fmt.Errorf("enroll %s/%s: %w (it runs on %q, this agent serves %q)", pod.Namespace, pod.Name, errNotOnNode, pod.Spec.NodeName, a.cfg.NodeName)
	}
	if !ShouldEnroll(pod, a.view.NamespaceLabels(pod.Namespace)) {
		return false, nil
	}
	// The pod informer and reconcile may both enroll a running pod at
	// start-up. Without the lock each call would start a set of proxies,
	// because SO_REUSEPORT lets both sets listen.
	unlock := a.podLocks.lock(pod.UID)
	defer unlock()
	a.mu.Lock()
	_, done := a.pods[pod.UID]
	tornDown := a.tornDown[pod.UID]
	a.mu.Unlock()
	if done {
		return true, nil
	}
	if tornDown {
		return false, nil
	}
	ip, err := podIP(pod)
	if err != nil {
		return false, err
	}
	cgroup, err := FindPodCgroup(a.cfg.CgroupRoot, pod)
	if err != nil {
		return false, err
	}
	if netnsPath == "" {
		if netnsPath, err = a.findNetns(cgroup, ip); err != nil {
			return false, fmt.Errorf("enroll %s/%s: no network namespace given and %w", pod.Namespace, pod.Name, err)
		}
	}

	p := &podProxy{
		uid: pod.UID, namespace: pod.Namespace, name: pod.Name, ip: ip,
		identity: PodIdentity(pod, a.cfg.TrustDomain), netnsPath: netnsPath,
		registered: make(chan struct{}),
	}
	if err := a.startProxies(p); err != nil {
		return false, fmt.Errorf("enroll %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	// The listeners exist before capture attaches, so captured traffic has
	// somewhere to go from the first packet.
	err = a.cfg.Capture.Enroll(bpf.Pod{ID: string(pod.UID), NetnsPath: netnsPath, Cgroup: cgroup})
	if err != nil {
		p.stop(context.Background())
		return false, fmt.Errorf("enroll %s/%s: attach capture: %w", pod.Namespace, pod.Name, err)
	}
	regCtx, cancel := context.WithCancel(context.Background())
	p.cancelRegistration = cancel
	a.mu.Lock()
	a.pods[pod.UID] = p
	a.mu.Unlock()
	if err := a.state.put(stateEntry{UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name, Netns: netnsPath}); err != nil {
		a.log.Error("enrollment state not saved; a restarted agent re-finds this pod from its cgroup", "pod", pod.Namespace+"/"+pod.Name, "error", err)
	}
	a.log.Info("pod captured", "pod", pod.Namespace+"/"+pod.Name, "uid", pod.UID, "ip", ip, "identity", p.identity.String())
	go a.register(regCtx, p)
	go a.obtainCACertificate(regCtx, p)
	return true, nil
}

// findNetns finds a running pod's network namespace from the processes in
// its cgroup, and names it by its file in the host's netns folder when the
// container runtime keeps one there.
func (a *Agent) findNetns(cgroup string, ip netip.Addr) (string, error) {
	path, err := NetnsFromCgroup(cgroup, ip)
	if err != nil {
		return "", err
	}
	dir := a.cfg.NetnsDir
	if dir == "" {
		dir = "/var/run/netns"
	}
	return namedNetns(dir, path), nil
}

// register completes enrollment: once the API server shows the pod's IP
// (the kubelet writes it after CNI returns), the pod's identity is
// registered with the curator, and the pod is annotated as enrolled so
// that peers reach it through HBONE. Until then its HBONE handshakes fail
// for want of a certificate. It retries until it succeeds or the pod is
// unenrolled.
func (a *Agent) register(ctx context.Context, p *podProxy) {
	backoff := 100 * time.Millisecond
	for {
		err := a.tryRegister(ctx, p)
		if err == nil {
			close(p.registered)
			return
		}
		if ctx.Err() != nil {
			return
		}
		a.log.Info("registration pending", "pod", p.namespace+"/"+p.name, "reason", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (a *Agent) tryRegister(ctx context.Context, p *podProxy) error {
	pod := a.view.Pod(p.namespace, p.name)
	if pod == nil || pod.UID != p.uid {
		return fmt.Errorf("pod not in the API server's view yet")
	}
	ip, err := podIP(pod)
	if err != nil {
		return err
	}
	if ip != p.ip {
		return fmt.Errorf("pod status IP %s differs from the namespace's %s", ip, p.ip)
	}
	if err := a.cfg.Identities.Register(ctx, pod, ip); err != nil {
		return err
	}
	if err := a.annotate(ctx, pod, true); err != nil {
		return err
	}
	a.log.Info("pod enrolled", "pod", p.namespace+"/"+p.name, "uid", p.uid, "identity", p.identity.String())
	return nil
}

// Registered returns a channel closed once the pod's identity is registered
// and the pod annotated as enrolled, or nil when it is not enrolled.
func (a *Agent) Registered(uid types.UID) <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p, ok := a.pods[uid]; ok {
		return p.registered
	}
	return nil
}

// Unenroll detaches capture and stops the pod's proxies.
func (a *Agent) Unenroll(ctx context.Context, uid types.UID) error {
	unlock := a.podLocks.lock(uid)
	defer unlock()
	a.mu.Lock()
	p, ok := a.pods[uid]
	delete(a.pods, uid)
	a.mu.Unlock()
	var errs []error
	if err := a.cfg.Capture.Unenroll(string(uid)); err != nil && !errors.Is(err, bpf.ErrNotFound) {
		errs = append(errs, fmt.Errorf("detach capture of %s: %w", uid, err))
	}
	errs = append(errs, a.state.remove(string(uid)))
	if err := a.cfg.Identities.Forget(ctx, uid); err != nil {
		// A failed revocation does not stop unenrolling. Peers reject the
		// registration once the pod is deleted, because its token then
		// fails review.
		a.log.Warn("registration not revoked", "uid", uid, "error", err)
	}
	a.cfg.Verifier.ForgetPod(string(uid))
	if a.cfg.CACertificates != nil {
		a.cfg.CACertificates.Forget(uid)
	}
	if !ok {
		return errors.Join(errs...)
	}
	p.stop(ctx)
	if pod := a.view.Pod(p.namespace, p.name); pod != nil && pod.UID == uid {
		if err := a.annotate(ctx, pod, false); err != nil {
			errs = append(errs, err)
		}
	}
	a.log.Info("pod unenrolled", "pod", p.namespace+"/"+p.name, "uid", uid)
	return errors.Join(errs...)
}

func podIP(pod *corev1.Pod) (netip.Addr, error) {
	for _, s := range append([]string{pod.Status.PodIP}, podIPStrings(pod)...) {
		if ip, err := netip.ParseAddr(s); err == nil {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("enroll %s/%s: pod has no IP yet", pod.Namespace, pod.Name)
}

func podIPStrings(pod *corev1.Pod) []string {
	var out []string
	for _, ip := range pod.Status.PodIPs {
		out = append(out, ip.IP)
	}
	return out
}

// startProxies opens the pod's three listeners in its network namespace and
// serves them.
func (a *Agent) startProxies(p *podProxy) (err error) {
	ns, err := netns.Open(p.netnsPath)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", p.netnsPath, err)
	}
	p.ns = ns
	defer func() {
		if err != nil {
			p.stop(context.Background())
		}
	}()
	// In a rolling restart the old agent closes its listeners while the new
	// agent's share their ports (SO_REUSEPORT). The kernel then moves the
	// connections queued on a closed listener to a remaining one instead of
	// resetting them.
	if err := ns.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/tcp_migrate_req", []byte("1"), 0o644) }); err != nil {
		a.log.Warn("queued connections may be reset when this agent restarts", "pod", p.namespace+"/"+p.name, "error", fmt.Errorf("set net.ipv4.tcp_migrate_req in the pod: %w", err))
	}
	certificate := func() (*tls.Certificate, error) {
		// The pod's first connections may come before its registration
		// finished: the kubelet publishes the pod's IP only after CNI
		// returns, and a restarted agent registers adopted pods anew.
		// They wait for the certificate instead of failing.
		select {
		case <-p.registered:
		case <-time.After(certificateWait):
		}
		return a.cfg.Identities.Certificate(p.uid)
	}

	inbound := tunnel.InboundConfig{
		TLSConfig: func() (*tls.Config, error) {
			return a.serverTLS(p, certificate), nil
		},
		Authorize:    a.authorizer(p),
		Workloads:    a.inboundWorkloads(p),
		DialUpstream: a.markedDialIn(ns),
		Metrics:      a.metrics,
		Logger:       a.log,
	}
	if p.server, err = tunnel.NewServer(inbound); err != nil {
		return err
	}
	p.plaintext = tunnel.NewPlaintext(inbound)
	p.pool, err = tunnel.NewPool(tunnel.ClientConfig{
		TLSConfig: func(key tunnel.PoolKey) (*tls.Config, error) {
			expected, err := rbeauth.ParseIdentity(string(key.DstIdentity))
			if err != nil {
				return nil, err
			}
			return a.clientTLS(p, certificate, key.Addr.Addr(), []rbeauth.Identity{expected}), nil
		},
		Dial: func(ctx context.Context, key tunnel.PoolKey) (net.Conn, error) {
			return a.markedDialIn(ns)(ctx, netip.Addr{}, key.Addr)
		},
		IdleTimeout: a.cfg.PoolIdleTimeout,
	})
	if err != nil {
		return err
	}
	p.outbound, err = tunnel.NewOutbound(tunnel.OutboundConfig{
		Pool:    p.pool,
		Resolve: a.resolver(p),
		DialPassthrough: func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
			return a.markedDialIn(ns)(ctx, netip.Addr{}, dst)
		},
		Metrics: a.metrics,
		Logger:  a.log,
	})
	if err != nil {
		return err
	}

	hbone, err := tunnel.ListenIn(ns, fmt.Sprintf("[::]:%d", HBONEPort))
	if err != nil {
		return fmt.Errorf("listen for HBONE in pod: %w", err)
	}
	go p.server.Serve(hbone)
	plain, err := tunnel.ListenIn(ns, fmt.Sprintf("[::]:%d", InboundPort))
	if err != nil {
		return fmt.Errorf("listen for plaintext inbound in pod: %w", err)
	}
	// tcx steers connections to this listener without rewriting them, so
	// the accepted socket's local address is the original destination.
	go p.plaintext.Serve(plain, localAddrAsOrigDst)
	out4, err := tunnel.ListenIn(ns, fmt.Sprintf("127.0.0.1:%d", OutboundPort))
	if err != nil {
		return fmt.Errorf("listen for outbound in pod: %w", err)
	}
	go p.outbound.Serve(out4, a.cfg.Capture.OriginalDst)
	// The pod may have IPv6 disabled; then IPv6 connects have nothing to be
	// captured from either.
	if out6, err := tunnel.ListenIn(ns, fmt.Sprintf("[::1]:%d", OutboundPort)); err == nil {
		go p.outbound.Serve(out6, a.cfg.Capture.OriginalDst)
	} else {
		a.log.Info("no IPv6 outbound listener in pod", "pod", p.namespace+"/"+p.name, "error", err)
	}
	return nil
}

func localAddrAsOrigDst(conn net.Conn) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(conn.LocalAddr().String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination from local address %s: %w", conn.LocalAddr(), err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// markedDialIn dials from inside the pod's namespace with the agent's mark,
// so capture never loops the agent's own connections back to it.
func (a *Agent) markedDialIn(ns *netns.NS) func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	return func(ctx context.Context, _ netip.Addr, dst netip.AddrPort) (net.Conn, error) {
		var conn net.Conn
		err := ns.Do(func() error {
			var err error
			conn, err = tunnel.WithMark(tunnel.Dialer(netip.Addr{}, false), a.cfg.Mark).DialContext(ctx, "tcp", dst.String())
			return err
		})
		return conn, err
	}
}

// stop closes the pod's listeners, drains its streams until ctx ends and
// releases its namespace handle.
func (p *podProxy) stop(ctx context.Context) {
	p.stopOnce.Do(func() {
		if p.cancelRegistration != nil {
			p.cancelRegistration()
		}
		var wg sync.WaitGroup
		for _, s := range []interface{ Shutdown(context.Context) error }{p.server, p.plaintext, p.outbound} {
			if s == nil || isNilShutdowner(s) {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = s.Shutdown(ctx)
			}()
		}
		wg.Wait()
		if p.pool != nil {
			_ = p.pool.Close()
		}
		if p.ns != nil {
			_ = p.ns.Close()
		}
	})
}

func isNilShutdowner(s interface{ Shutdown(context.Context) error }) bool {
	switch v := s.(type) {
	case *tunnel.Server:
		return v == nil
	case *tunnel.Plaintext:
		return v == nil
	case *tunnel.Outbound:
		return v == nil
	}
	return false
}

// annotate sets or clears Istio's redirection annotation, which tells peers
// that the pod is captured and must be reached through HBONE, and
// MazuEnrolledAnnotation, which tells them it authenticates with RBE.
func (a *Agent) annotate(ctx context.Context, pod *corev1.Pod, enrolled bool) error {
	var value, mazu any
	if enrolled {
		value, mazu = "enabled", "true"
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{RedirectionAnnotation: value, MazuEnrolledAnnotation: mazu}}})
	if err != nil {
		return err
	}
	_, err = a.cfg.Client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("annotate pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// onPod enrolls a running ambient pod of this node that is not yet
// enrolled, for example when its namespace gains the ambient label, and
// unenrolls one that opted out.
func (a *Agent) onPod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.NodeName != a.cfg.NodeName {
		return
	}
	enrolled := a.IsEnrolled(pod.UID)
	a.mu.Lock()
	tornDown := a.tornDown[pod.UID]
	a.mu.Unlock()
	wants := ShouldEnroll(pod, a.view.NamespaceLabels(pod.Namespace)) && pod.DeletionTimestamp == nil && !tornDown
	switch {
	case wants && !enrolled && pod.Status.Phase == corev1.PodRunning:
		go func() {
			if _, err := a.Enroll(context.Background(), pod, a.state.netns(string(pod.UID))); err != nil {
				a.log.Warn("running pod not enrolled", "pod", pod.Namespace+"/"+pod.Name, "error", err)
			}
		}()
	case !wants && enrolled:
		go func() {
			if err := a.Unenroll(context.Background(), pod.UID); err != nil {
				a.log.Warn("pod not cleanly unenrolled", "pod", pod.Namespace+"/"+pod.Name, "error", err)
			}
		}()
	}
}

// onNamespace re-evaluates this node's pods of a namespace whose labels
// may have changed.
func (a *Agent) onNamespace(obj any) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	for _, pod := range a.view.PodsOnNode(a.cfg.NodeName) {
		if pod.Namespace == ns.Name {
			a.onPod(pod)
		}
	}
}

func (a *Agent) onPodDelete(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	a.cfg.Verifier.ForgetPod(string(pod.UID))
	a.setTornDown(pod.UID, false)
	if a.IsEnrolled(pod.UID) {
		go func() {
			if err := a.Unenroll(context.Background(), pod.UID); err != nil {
				a.log.Warn("deleted pod not cleanly unenrolled", "pod", pod.Namespace+"/"+pod.Name, "error", err)
			}
		}()
	}
}

// reconcile runs at start-up: pods enrolled by a previous agent are
// re-adopted when they still exist on this node, and removed otherwise.
func (a *Agent) reconcile(ctx context.Context) {
	for _, e := range a.state.list() {
		pod := a.view.Pod(e.Namespace, e.Name)
		if pod == nil || string(pod.UID) != e.UID || pod.Spec.NodeName != a.cfg.NodeName {
			_ = a.Unenroll(ctx, types.UID(e.UID))
			continue
		}
		netnsPath := e.Netns
		if !a.savedNetnsValid(pod, netnsPath) {
			netnsPath = ""
		}
		if _, err := a.Enroll(ctx, pod, netnsPath); err != nil {
			a.log.Error("previously enrolled pod not re-adopted", "pod", e.Namespace+"/"+e.Name, "error", err)
		}
	}
	enrolled, err := a.cfg.Capture.Pods()
	if err != nil {
		a.log.Error("list captured pods", "error", err)
		return
	}
	for _, p := range enrolled {
		if !a.IsEnrolled(types.UID(p.ID)) {
			a.log.Info("removing capture of a departed pod", "uid", p.ID)
			_ = a.Unenroll(ctx, types.UID(p.ID))
		}
	}
}

// savedNetnsValid reports whether a network namespace path from the state
// file may still be used for pod. A /proc/<pid>/ns/net path names whichever
// process has that PID now, so it is kept only while that namespace holds
// the pod's IP. Other paths are the container runtime's files, which live
// as long as the pod's sandbox.
func (a *Agent) savedNetnsValid(pod *corev1.Pod, path string) bool {
	if !strings.HasPrefix(path, "/proc/") {
		return true
	}
	ip, err := podIP(pod)
	if err != nil {
		return false
	}
	has, err := netnsHasAddr(path, ip)
	if err != nil || !has {
		a.log.Info("saved network namespace is stale: the pod's IP was not found in it, so the agent searches the pod's cgroup", "pod", pod.Namespace+"/"+pod.Name, "netns", path, "ip", ip, "error", err)
		return false
	}
	return true
}

// cniHandler adapts the agent to mazu-cni's requests.
type cniHandler struct{ a *Agent }

func (h cniHandler) Enroll(ctx context.Context, req cni.Request) (bool, error) {
	pod, err := h.a.cfg.Client.CoreV1().Pods(req.Namespace).Get(ctx, req.Name, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("look up pod %s/%s: %w", req.Namespace, req.Name, err)
	}
	if req.UID != "" && string(pod.UID) != req.UID {
		return false, fmt.Errorf("pod %s/%s has UID %s, the runtime asked for %s", req.Namespace, req.Name, pod.UID, req.UID)
	}
	if req.Netns, err = containerNetnsPath(h.a.cfg.NetnsDir, req.Netns); err != nil {
		return false, err
	}
	// The kubelet has not written the pod's IP yet when CNI runs, so take it
	// from the namespace itself.
	if pod.Status.PodIP == "" {
		ip, err := firstGlobalIP(req.Netns)
		if err != nil {
			return false, err
		}
		pod = pod.DeepCopy()
		pod.Status.PodIP = ip.String()
		pod.Status.PodIPs = []corev1.PodIP{{IP: ip.String()}}
	}
	if pod.Status.Phase == "" {
		pod.Status.Phase = corev1.PodPending
	}
	h.a.setTornDown(pod.UID, false)
	return h.a.Enroll(ctx, pod, req.Netns)
}

func (h cniHandler) Unenroll(ctx context.Context, req cni.Request) error {
	uid := types.UID(req.UID)
	if uid == "" {
		pod := h.a.view.Pod(req.Namespace, req.Name)
		if pod == nil {
			return nil
		}
		uid = pod.UID
	}
	h.a.setTornDown(uid, true)
	return h.a.Unenroll(ctx, uid)
}

// setTornDown records whether a pod's sandbox was torn down by CNI DEL.
func (a *Agent) setTornDown(uid types.UID, tornDown bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if tornDown {
		a.tornDown[uid] = true
	} else {
		delete(a.tornDown, uid)
	}
}

func (h cniHandler) Enrolled(_ context.Context, req cni.Request) (bool, error) {
	return h.a.IsEnrolled(types.UID(req.UID)), nil
}

// containerNetnsPath maps a network namespace path as the CNI plugin on
// the host names it to the path in the agent's container, where the host's
// /var/run/netns is mounted at dir. Other paths, and all paths when dir is
// empty (an agent on the host), are returned as they are.
func containerNetnsPath(dir, path string) (string, error) {
	if dir == "" {
		return path, nil
	}
	for _, prefix := range []string{"/var/run/netns/", "/run/netns/"} {
		name, ok := strings.CutPrefix(path, prefix)
		if !ok {
			continue
		}
		if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
			return "", fmt.Errorf("invalid network namespace path %q: want a file directly in %s", path, prefix)
		}
		return filepath.Join(dir, name), nil
	}
	return path, nil
}

// firstGlobalIP returns the first global unicast address inside a network
// namespace.
func firstGlobalIP(netnsPath string) (netip.Addr, error) {
	var found netip.Addr
	err := netns.Do(netnsPath, func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			prefix, err := netip.ParsePrefix(a.String())
			if err == nil && prefix.Addr().IsGlobalUnicast() && !strings.HasPrefix(prefix.Addr().String(), "fe80") {
				found = prefix.Addr()
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("read pod addresses in %s: %w", netnsPath, err)
	}
	if !found.IsValid() {
		return netip.Addr{}, fmt.Errorf("read pod addresses in %s: no global address; mazu-cni must run after the plugin that assigns it", netnsPath)
	}
	return found, nil
}
