package testbed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// PodSpec describes a pod to create.
type PodSpec struct {
	Namespace string
	Name      string
	// ServiceAccount is created when missing. Empty means "default".
	ServiceAccount string
	Labels         map[string]string
	Annotations    map[string]string
	// Ports are the container ports to declare.
	Ports []corev1.ContainerPort
	// IP requests a specific address from the node's pod subnet, for
	// example to reuse the address of a deleted pod. Empty picks the lowest
	// free one.
	IP netip.Addr
	// OnNetwork runs after the pod's network namespace and cgroup exist and
	// before its status turns Running, where a kubelet runs the CNI plugins.
	OnNetwork func(ctx context.Context, pod *Pod) error
}

// Pod is a simulated pod: a network namespace with one veth to its node's
// bridge, a cgroup v2 folder, and a Pod object whose status the testbed keeps
// as a kubelet would.
type Pod struct {
	Namespace      string
	Name           string
	UID            types.UID
	ServiceAccount string
	IP             netip.Addr
	Node           *Node
	// Netns is the name of the pod's network namespace.
	Netns string
	// Cgroup is the pod's cgroup v2 folder.
	Cgroup string

	handle   netns.NsHandle
	hostVeth string

	mu    sync.Mutex
	procs []*exec.Cmd
}

// NetnsPath returns the bind-mount path of the pod's network namespace.
func (p *Pod) NetnsPath() string { return netnsPath(p.Netns) }

// Do runs fn on a thread inside the pod's network namespace, for test code
// that opens sockets as the pod. The thread is not in the pod's cgroup, so
// cgroup eBPF hooks do not see these sockets: use Command for that.
func (p *Pod) Do(fn func() error) error { return inNetns(p.handle, fn) }

// Command returns a command that runs inside the pod's network namespace
// and cgroup once started with Start.
func (p *Pod) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	full := append([]string{"--net=" + p.NetnsPath(), "--", name}, args...)
	return exec.CommandContext(ctx, "nsenter", full...)
}

// Start starts cmd, which Command returned, in the pod's cgroup from its
// first instruction. DeletePod kills it if it still runs.
func (p *Pod) Start(cmd *exec.Cmd) error {
	dir, err := os.Open(p.Cgroup)
	if err != nil {
		return fmt.Errorf("start process in pod %s/%s: open cgroup: %w", p.Namespace, p.Name, err)
	}
	defer dir.Close()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(dir.Fd())
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start process in pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	p.mu.Lock()
	p.procs = append(p.procs, cmd)
	p.mu.Unlock()
	return nil
}

func (p *Pod) killProcesses() {
	p.mu.Lock()
	procs := p.procs
	p.procs = nil
	p.mu.Unlock()
	for _, cmd := range procs {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_, _ = cmd.Process.Wait()
		}
	}
}

// AddPod creates a pod on node: the Pod object, then its network and cgroup,
// then a Running and Ready status with its podIP and hostIP.
func (tb *Testbed) AddPod(ctx context.Context, node *Node, spec PodSpec) (_ *Pod, err error) {
	if spec.ServiceAccount == "" {
		spec.ServiceAccount = "default"
	}
	if err := tb.EnsureNamespace(ctx, spec.Namespace); err != nil {
		return nil, err
	}
	if err := tb.EnsureServiceAccount(ctx, spec.Namespace, spec.ServiceAccount); err != nil {
		return nil, err
	}
	ip, err := node.allocateIP(spec.IP)
	if err != nil {
		return nil, fmt.Errorf("add pod %s/%s: %w", spec.Namespace, spec.Name, err)
	}
	pod := &Pod{
		Namespace:      spec.Namespace,
		Name:           spec.Name,
		ServiceAccount: spec.ServiceAccount,
		IP:             ip,
		Node:           node,
		Netns:          fmt.Sprintf("mzt-%s-n%d-%d", tb.name, node.Index, ip.As4()[3]),
		handle:         netns.None(),
	}
	key := spec.Namespace + "/" + spec.Name
	tb.mu.Lock()
	if _, dup := tb.pods[key]; dup {
		tb.mu.Unlock()
		node.releaseIP(ip)
		return nil, fmt.Errorf("add pod %s: this testbed already has a pod with that name; delete it first", key)
	}
	tb.pods[key] = pod
	tb.mu.Unlock()
	defer func() {
		if err != nil {
			_ = tb.DeletePod(context.WithoutCancel(ctx), pod)
		}
	}()

	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: spec.Namespace, Name: spec.Name,
			Labels: spec.Labels, Annotations: spec.Annotations,
		},
		Spec: corev1.PodSpec{
			NodeName:           node.Name,
			ServiceAccountName: spec.ServiceAccount,
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "registry.invalid/mazu-testbed/app:latest",
				Ports: spec.Ports,
			}},
			TerminationGracePeriodSeconds: new(int64),
		},
	}
	created, err := tb.client.CoreV1().Pods(spec.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("add pod %s: create Pod object: %w", key, err)
	}
	pod.UID = created.UID
	if err := tb.wirePod(pod); err != nil {
		return nil, fmt.Errorf("add pod %s: %w", key, err)
	}
	if spec.OnNetwork != nil {
		if err := spec.OnNetwork(ctx, pod); err != nil {
			return nil, fmt.Errorf("add pod %s: network hook: %w", key, err)
		}
	}
	if err := tb.setPodRunning(ctx, created, pod); err != nil {
		return nil, fmt.Errorf("add pod %s: %w", key, err)
	}
	tb.log.Info("testbed pod added", "pod", key, "uid", pod.UID, "ip", pod.IP, "node", node.Name)
	return pod, nil
}

func (tb *Testbed) wirePod(pod *Pod) error {
	node := pod.Node
	pod.Cgroup = filepath.Join(node.CgroupRoot, "kubepods", "besteffort", "pod"+string(pod.UID))
	if err := os.MkdirAll(pod.Cgroup, 0o755); err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	handle, err := newNamedNetns(pod.Netns)
	if err != nil {
		return err
	}
	pod.handle = handle
	nodeLink, err := netlink.NewHandleAt(node.handle)
	if err != nil {
		return fmt.Errorf("netlink in node: %w", err)
	}
	defer nodeLink.Close()
	podLink, err := netlink.NewHandleAt(handle)
	if err != nil {
		return fmt.Errorf("netlink in pod: %w", err)
	}
	defer podLink.Close()

	bridgeIndex, err := linkIndex(nodeLink, nodeBridge)
	if err != nil {
		return err
	}
	pod.hostVeth = fmt.Sprintf("veth%d", pod.IP.As4()[3])
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: pod.hostVeth, MasterIndex: bridgeIndex},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(handle)),
	}
	if err := nodeLink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create pod veth: %w", err)
	}
	if err := nodeLink.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set pod veth up: %w", err)
	}
	if err := linkUp(podLink, "lo"); err != nil {
		return err
	}
	if err := addAddr(podLink, "eth0", netip.PrefixFrom(pod.IP, 24)); err != nil {
		return err
	}
	if err := linkUp(podLink, "eth0"); err != nil {
		return err
	}
	if err := addRoute(podLink, netip.MustParsePrefix("0.0.0.0/0"), node.BridgeIP()); err != nil {
		return err
	}
	return nil
}

func (tb *Testbed) setPodRunning(ctx context.Context, obj *corev1.Pod, pod *Pod) error {
	now := metav1.Now()
	conditions := []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady}
	obj.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		PodIP:     pod.IP.String(),
		PodIPs:    []corev1.PodIP{{IP: pod.IP.String()}},
		HostIP:    pod.Node.IP.String(),
		HostIPs:   []corev1.HostIP{{IP: pod.Node.IP.String()}},
		StartTime: &now,
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: "app", Ready: true, Image: obj.Spec.Containers[0].Image,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
	}
	for _, c := range conditions {
		obj.Status.Conditions = append(obj.Status.Conditions, corev1.PodCondition{
			Type: c, Status: corev1.ConditionTrue, LastTransitionTime: now,
		})
	}
	if _, err := tb.client.CoreV1().Pods(obj.Namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update Pod status: %w", err)
	}
	return nil
}

// DeletePod deletes the Pod object with grace period 0, as a kubelet would
// after its containers stopped, and removes the pod's processes, network
// namespace and cgroup. Every process in the cgroup ends, including those
// that processes started with Start have forked.
func (tb *Testbed) DeletePod(ctx context.Context, pod *Pod) error {
	key := pod.Namespace + "/" + pod.Name
	tb.mu.Lock()
	if tb.pods[key] != pod {
		tb.mu.Unlock()
		return nil
	}
	delete(tb.pods, key)
	tb.mu.Unlock()

	var errs []error
	pod.killProcesses()
	if pod.Cgroup != "" {
		errs = append(errs, killCgroup(pod.Cgroup, cgroupKillTimeout))
	}
	if pod.UID != "" {
		err := tb.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: new(int64),
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		errs = append(errs, ignoreNotFound(err))
	}
	// The kernel destroys a deleted namespace's links asynchronously, so the
	// node end of the veth is deleted first: a new pod may reuse its name
	// at once.
	if pod.hostVeth != "" {
		errs = append(errs, pod.Node.deleteLink(pod.hostVeth))
	}
	if pod.handle != netns.None() {
		pod.handle.Close()
		errs = append(errs, deleteNetns(pod.Netns))
	}
	if pod.Cgroup != "" {
		errs = append(errs, removeCgroupEventually(pod.Cgroup))
	}
	pod.Node.releaseIP(pod.IP)
	return errors.Join(errs...)
}

// removeCgroupEventually retries for a moment, because a killed process
// leaves its cgroup only once the kernel has reaped it.
func removeCgroupEventually(path string) error {
	var err error
	for range 50 {
		if err = removeCgroupTree(path); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

func (n *Node) allocateIP(want netip.Addr) (netip.Addr, error) {
	n.tb.mu.Lock()
	defer n.tb.mu.Unlock()
	if want.IsValid() {
		if !n.PodCIDR.Contains(want) || want == n.BridgeIP() || want.As4()[3] == 0 || want.As4()[3] == 255 {
			return netip.Addr{}, fmt.Errorf("requested pod IP %s is not a pod address of node %s (%s, from .2 to .254)", want, n.Name, n.PodCIDR)
		}
		if n.usedIPs[want] {
			return netip.Addr{}, fmt.Errorf("requested pod IP %s is in use on node %s; delete that pod first", want, n.Name)
		}
		n.usedIPs[want] = true
		return want, nil
	}
	for ip := n.BridgeIP().Next(); n.PodCIDR.Contains(ip) && ip.As4()[3] < 255; ip = ip.Next() {
		if !n.usedIPs[ip] {
			n.usedIPs[ip] = true
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("node %s has no free pod IP in %s", n.Name, n.PodCIDR)
}

func (n *Node) releaseIP(ip netip.Addr) {
	n.tb.mu.Lock()
	defer n.tb.mu.Unlock()
	delete(n.usedIPs, ip)
}

func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
