package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Node is a simulated node: a network namespace joined to the testbed's
// fabric bridge, with a bridge of its own for its pods, a cgroup folder laid
// out as the kubelet's cgroupfs driver lays it out, and a Node object.
type Node struct {
	Name  string
	Index int
	// IP is the node's address on the fabric, also its InternalIP.
	IP netip.Addr
	// PodCIDR is the subnet its pods take addresses from.
	PodCIDR netip.Prefix
	// Netns is the name of the node's network namespace.
	Netns string
	// CgroupRoot is the node's kubelet cgroup root. Pod cgroups are
	// CgroupRoot/kubepods/besteffort/pod<UID>.
	CgroupRoot string

	tb      *Testbed
	handle  netns.NsHandle
	usedIPs map[netip.Addr]bool
}

const (
	fabricBridge = "fabric"
	nodeBridge   = "cni0"
)

// NetnsPath returns the bind-mount path of the node's network namespace.
func (n *Node) NetnsPath() string { return netnsPath(n.Netns) }

// Do runs fn on a thread inside the node's network namespace.
func (n *Node) Do(fn func() error) error { return inNetns(n.handle, fn) }

// BridgeIP returns the node's address on its pod bridge, the pods' gateway.
func (n *Node) BridgeIP() netip.Addr { return n.PodCIDR.Addr().Next() }

func (tb *Testbed) ensureFabric() error {
	if tb.fabric != "" {
		return nil
	}
	name := "mzt-" + tb.name + "-fab"
	handle, err := newNamedNetns(name)
	if err != nil {
		return fmt.Errorf("create fabric: %w", err)
	}
	defer handle.Close()
	tb.fabric = name
	nl, err := netlink.NewHandleAt(handle)
	if err != nil {
		return fmt.Errorf("create fabric: netlink: %w", err)
	}
	defer nl.Close()
	if err := linkUp(nl, "lo"); err != nil {
		return fmt.Errorf("create fabric: %w", err)
	}
	bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: fabricBridge}}
	if err := nl.LinkAdd(bridge); err != nil {
		return fmt.Errorf("create fabric bridge: %w", err)
	}
	if err := nl.LinkSetUp(bridge); err != nil {
		return fmt.Errorf("create fabric bridge: %w", err)
	}
	cgroupParent, err := cgroup2Root()
	if err != nil {
		return err
	}
	tb.cgroup = filepath.Join(cgroupParent, "mazu-testbed-"+tb.name)
	if err := os.MkdirAll(tb.cgroup, 0o755); err != nil {
		return fmt.Errorf("create testbed cgroup %s: %w", tb.cgroup, err)
	}
	return nil
}

// AddNode creates a node: its namespace, its link to the fabric, routes to
// the other nodes' pod subnets, and its Node object.
func (tb *Testbed) AddNode(ctx context.Context, name string) (_ *Node, err error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if err := tb.ensureFabric(); err != nil {
		return nil, err
	}
	tb.nodeCount++
	index := tb.nodeCount
	if index > 200 {
		return nil, fmt.Errorf("add node %s: the address plan allows at most 200 nodes", name)
	}
	node := &Node{
		Name:       name,
		Index:      index,
		IP:         netip.AddrFrom4([4]byte{198, 18, 0, byte(index)}),
		PodCIDR:    netip.MustParsePrefix(fmt.Sprintf(podSubnetFormat, index)),
		Netns:      fmt.Sprintf("mzt-%s-n%d", tb.name, index),
		CgroupRoot: filepath.Join(tb.cgroup, fmt.Sprintf("node%d", index)),
		tb:         tb,
		usedIPs:    map[netip.Addr]bool{},
	}
	if node.handle, err = newNamedNetns(node.Netns); err != nil {
		return nil, fmt.Errorf("add node %s: %w", name, err)
	}
	tb.nodes = append(tb.nodes, node)
	if err := tb.wireNode(node); err != nil {
		return nil, fmt.Errorf("add node %s: %w", name, err)
	}
	if err := os.MkdirAll(filepath.Join(node.CgroupRoot, "kubepods", "besteffort"), 0o755); err != nil {
		return nil, fmt.Errorf("add node %s: create cgroup: %w", name, err)
	}
	if err := tb.createNodeObject(ctx, node); err != nil {
		return nil, fmt.Errorf("add node %s: %w", name, err)
	}
	tb.log.Info("testbed node added", "node", name, "ip", node.IP, "podCIDR", node.PodCIDR, "netns", node.Netns)
	return node, nil
}

// wireNode links a new node to the fabric and adds routes between its pod
// subnet and every other node's.
func (tb *Testbed) wireNode(node *Node) error {
	fabric, err := netns.GetFromName(tb.fabric)
	if err != nil {
		return fmt.Errorf("open fabric netns: %w", err)
	}
	defer fabric.Close()
	fabricLink, err := netlink.NewHandleAt(fabric)
	if err != nil {
		return fmt.Errorf("netlink in fabric: %w", err)
	}
	defer fabricLink.Close()
	nodeLink, err := netlink.NewHandleAt(node.handle)
	if err != nil {
		return fmt.Errorf("netlink in node: %w", err)
	}
	defer nodeLink.Close()

	bridgeIndex, err := linkIndex(fabricLink, fabricBridge)
	if err != nil {
		return err
	}
	// The veth is created inside the fabric namespace with its peer placed
	// straight into the node's, so no interface ever appears on the host.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: fmt.Sprintf("n%d", node.Index), MasterIndex: bridgeIndex},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(node.handle)),
	}
	if err := fabricLink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create fabric veth: %w", err)
	}
	if err := fabricLink.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set fabric veth up: %w", err)
	}
	if err := linkUp(nodeLink, "lo"); err != nil {
		return err
	}
	if err := addAddr(nodeLink, "eth0", netip.PrefixFrom(node.IP, 24)); err != nil {
		return err
	}
	if err := linkUp(nodeLink, "eth0"); err != nil {
		return err
	}
	bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: nodeBridge}}
	if err := nodeLink.LinkAdd(bridge); err != nil {
		return fmt.Errorf("create pod bridge: %w", err)
	}
	if err := addAddr(nodeLink, nodeBridge, netip.PrefixFrom(node.BridgeIP(), 24)); err != nil {
		return err
	}
	if err := linkUp(nodeLink, nodeBridge); err != nil {
		return err
	}
	if err := setSysctl(node.handle, "net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	for _, other := range tb.nodes {
		if other == node {
			continue
		}
		if err := addRoute(nodeLink, other.PodCIDR, other.IP); err != nil {
			return err
		}
		otherLink, err := netlink.NewHandleAt(other.handle)
		if err != nil {
			return fmt.Errorf("netlink in node %s: %w", other.Name, err)
		}
		err = addRoute(otherLink, node.PodCIDR, node.IP)
		otherLink.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func (tb *Testbed) createNodeObject(ctx context.Context, node *Node) error {
	obj := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:   node.Name,
			Labels: map[string]string{"kubernetes.io/hostname": node.Name, "mazu.dev/testbed": tb.name},
		},
		Spec: corev1.NodeSpec{PodCIDR: node.PodCIDR.String(), PodCIDRs: []string{node.PodCIDR.String()}},
	}
	created, err := tb.client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create Node object: %w", err)
	}
	created.Status = corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: node.IP.String()},
			{Type: corev1.NodeHostName, Address: node.Name},
		},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
		}},
	}
	if _, err := tb.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update Node status: %w", err)
	}
	return nil
}

// Nodes returns the nodes created through this Testbed value.
func (tb *Testbed) Nodes() []*Node {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return append([]*Node(nil), tb.nodes...)
}

// removeNetwork deletes this process's pods, nodes, fabric and cgroups.
func (tb *Testbed) removeNetwork() error {
	tb.mu.Lock()
	pods := make([]*Pod, 0, len(tb.pods))
	for _, p := range tb.pods {
		pods = append(pods, p)
	}
	tb.mu.Unlock()
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, p := range pods {
		errs = append(errs, tb.DeletePod(ctx, p))
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for _, node := range tb.nodes {
		node.handle.Close()
		errs = append(errs, deleteNetns(node.Netns))
		if tb.attached {
			err := tb.client.CoreV1().Nodes().Delete(ctx, node.Name, metav1.DeleteOptions{})
			errs = append(errs, ignoreNotFound(err))
		}
	}
	tb.nodes = nil
	if tb.fabric != "" {
		errs = append(errs, deleteNetns(tb.fabric))
		tb.fabric = ""
	}
	if tb.cgroup != "" {
		// Processes that tests left in node cgroups, such as node agents of
		// a run interrupted by a signal, would keep the cgroups busy.
		errs = append(errs, killCgroup(tb.cgroup, cgroupKillTimeout), removeCgroupTree(tb.cgroup))
	}
	return errors.Join(errs...)
}

func linkIndex(nl *netlink.Handle, name string) (int, error) {
	link, err := nl.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("find link %s: %w", name, err)
	}
	return link.Attrs().Index, nil
}

func linkUp(nl *netlink.Handle, name string) error {
	link, err := nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("set link %s up: %w", name, err)
	}
	return nil
}

func addAddr(nl *netlink.Handle, linkName string, prefix netip.Prefix) error {
	link, err := nl.LinkByName(linkName)
	if err != nil {
		return fmt.Errorf("find link %s: %w", linkName, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: prefix.Addr().AsSlice(), Mask: net.CIDRMask(prefix.Bits(), prefix.Addr().BitLen())}}
	if err := nl.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add address %s to %s: %w", prefix, linkName, err)
	}
	return nil
}

func addRoute(nl *netlink.Handle, dst netip.Prefix, gateway netip.Addr) error {
	route := &netlink.Route{
		Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
		Gw:  gateway.AsSlice(),
	}
	if err := nl.RouteAdd(route); err != nil {
		return fmt.Errorf("add route %s via %s: %w", dst, gateway, err)
	}
	return nil
}

// RemoveNode deletes the node's pods, its namespace, cgroup folder and Node
// object. The other nodes keep a route to its pod subnet, which is harmless
// because node indexes, and so subnets, are never reused.
func (tb *Testbed) RemoveNode(ctx context.Context, node *Node) error {
	tb.mu.Lock()
	var pods []*Pod
	for _, p := range tb.pods {
		if p.Node == node {
			pods = append(pods, p)
		}
	}
	tb.mu.Unlock()
	var errs []error
	for _, p := range pods {
		errs = append(errs, tb.DeletePod(ctx, p))
	}
	tb.mu.Lock()
	for i, n := range tb.nodes {
		if n == node {
			tb.nodes = append(tb.nodes[:i], tb.nodes[i+1:]...)
			break
		}
	}
	tb.mu.Unlock()
	node.handle.Close()
	errs = append(errs, deleteNetns(node.Netns))
	errs = append(errs, removeCgroupTree(node.CgroupRoot))
	errs = append(errs, ignoreNotFound(tb.client.CoreV1().Nodes().Delete(ctx, node.Name, metav1.DeleteOptions{})))
	return errors.Join(errs...)
}

func (n *Node) deleteLink(name string) error {
	nl, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		return fmt.Errorf("delete link %s on node %s: %w", name, n.Name, err)
	}
	defer nl.Close()
	link, err := nl.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("delete link %s on node %s: %w", name, n.Name, err)
	}
	if err := nl.LinkDel(link); err != nil {
		return fmt.Errorf("delete link %s on node %s: %w", name, n.Name, err)
	}
	return nil
}
