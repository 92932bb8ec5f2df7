package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fixture is a topology with a Capture, the pod enrolled, the in-pod
// listeners of the agent and applications on both sides.
type fixture struct {
	*topo
	cur              atomic.Pointer[Capture]
	out4, out6       *server // outbound listeners (15001)
	inbound, hbone   *server // inbound listeners (15006, 15008)
	podApp, nodeApp  *server // applications: in the pod on 8080, on the node
	nodeExcl, nodeV6 *server
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{topo: newTopo(t)}
	joinCgroup(t, f.agentCg)

	c := f.open()
	t.Cleanup(func() {
		if c := f.cur.Load(); c != nil {
			if err := c.Remove(); err != nil {
				t.Errorf("Remove: %v", err)
			}
		}
	})
	f.cur.Store(c)
	if err := c.Enroll(f.pod1()); err != nil {
		t.Fatalf("Enroll: %v", err)
	}

	f.out4 = serve(t, listen(t, f.pod, "tcp4", "127.0.0.1:15001"), f.outboundReply)
	f.out6 = serve(t, listen(t, f.pod, "tcp6", "[::1]:15001"), f.outboundReply)
	f.inbound = serve(t, listen(t, f.pod, "tcp", ":15006"), func(c net.Conn) string {
		return fmt.Sprintf("in %s %s", c.RemoteAddr(), c.LocalAddr())
	})
	f.hbone = serve(t, listen(t, f.pod, "tcp", ":15008"), func(c net.Conn) string {
		return fmt.Sprintf("hbone %s %s", c.RemoteAddr(), c.LocalAddr())
	})
	f.podApp = serve(t, listen(t, f.pod, "tcp", fmt.Sprintf(":%d", appPort)), func(c net.Conn) string {
		return fmt.Sprintf("app %s", c.RemoteAddr())
	})
	nodeReply := func(c net.Conn) string { return fmt.Sprintf("node %s", c.RemoteAddr()) }
	f.nodeApp = serve(t, listen(t, f.node, "tcp4", fmt.Sprintf("%s:%d", nodeIP4, appPort)), nodeReply)
	f.nodeExcl = serve(t, listen(t, f.node, "tcp4", fmt.Sprintf(":%d", exclPort)), nodeReply)
	f.nodeV6 = serve(t, listen(t, f.node, "tcp6", netip.AddrPortFrom(nodeIP6, appPort).String()), nodeReply)
	serve(t, listen(t, f.node, "tcp4", netip.AddrPortFrom(exclIP4, appPort).String()), nodeReply)
	return f
}

// outboundReply reports the original destination found by map lookup and
// by SO_ORIGINAL_DST.
func (f *fixture) outboundReply(conn net.Conn) string {
	byMap := "none"
	if c := f.cur.Load(); c != nil {
		if d, err := c.OriginalDst(conn); err == nil {
			byMap = d.String()
		} else {
			byMap = "error"
		}
	}
	bySockopt := "error"
	if d, err := SockoptOriginalDst(conn.(syscall.Conn)); err == nil {
		bySockopt = d.String()
	}
	return fmt.Sprintf("out %s %s", byMap, bySockopt)
}

func wantReply(t *testing.T, what string, got []attempt, want string) {
	t.Helper()
	if len(got) == 0 {
		t.Fatalf("%s: no attempts", what)
	}
	for i, a := range got {
		if a.Err != "" || a.Reply != want {
			t.Errorf("%s attempt %d: reply %q, error %q; want reply %q", what, i, a.Reply, a.Err, want)
		}
	}
}

func TestOutboundCapture(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct{ dst, local netip.AddrPort }{
		{netip.AddrPortFrom(nodeIP4, appPort), netip.AddrPortFrom(podIP4, 0)},
		{netip.AddrPortFrom(nodeIP6, appPort), netip.AddrPortFrom(podIP6, 0)},
	} {
		dst := tc.dst
		t.Run(dst.String(), func(t *testing.T) {
			got := f.runApp(helperSpec{Network: "tcp", Addr: dst.String(), Count: 20})
			wantReply(t, "captured connect", got, fmt.Sprintf("out %s %s", dst, dst))
			for i, a := range got {
				if a.Peer != dst.String() {
					t.Errorf("attempt %d: getpeername = %s, want %s", i, a.Peer, dst)
				}
				if local, err := netip.ParseAddrPort(a.Local); err != nil || local.Addr() != tc.local.Addr() {
					t.Errorf("attempt %d: getsockname = %s, want address %s", i, a.Local, tc.local.Addr())
				}
			}
		})
	}
	t.Run("dual-stack socket dialing IPv4", func(t *testing.T) {
		// connect6 gets ::ffff:198.18.64.1 and sends it to the IPv4 listener.
		dst := netip.AddrPortFrom(nodeIP4, appPort)
		got := f.runApp(helperSpec{Addr: dst.String(), DualStack: true, Count: 3})
		wantReply(t, "captured dual-stack connect", got, fmt.Sprintf("out %s %s", dst, dst))
		for i, a := range got {
			if a.Peer != dst.String() {
				t.Errorf("attempt %d: getpeername = %s, want %s", i, a.Peer, dst)
			}
			if local, err := netip.ParseAddrPort(a.Local); err != nil || local.Addr() != podIP4 {
				t.Errorf("attempt %d: getsockname = %s, want address %s", i, a.Local, podIP4)
			}
		}
	})
	t.Run("MPTCP client", func(t *testing.T) {
		dst := netip.AddrPortFrom(nodeIP4, appPort)
		got := f.runApp(helperSpec{Network: "tcp4", Addr: dst.String(), MPTCP: true})
		wantReply(t, "captured MPTCP connect", got, fmt.Sprintf("out %s %s", dst, dst))
		// NOTE: the connect runs on the MPTCP subflow, which carries the
		// socket storage, so getpeername on the MPTCP socket is not
		// rewritten and shows the proxy.
		t.Logf("MPTCP client getpeername: %s", got[0].Peer)
	})
	if n := f.nodeApp.accepted() + f.nodeV6.accepted(); n != 0 {
		t.Errorf("node applications accepted %d connections, want 0: capture was bypassed", n)
	}
	st, err := f.cur.Load().Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.ConnectRedirected < 40 || st.TupleStored < 40 || st.SockoptAnswered < 40 || st.PeernameRewritten < 40 || st.SocknameRewritten < 40 {
		t.Errorf("Stats() = %+v, want at least 40 redirected, stored, answered and rewritten", st)
	}
}

func TestOutboundNotCaptured(t *testing.T) {
	f := newFixture(t)
	nodeFrom := fmt.Sprintf("node %s:", podIP4)

	cases := []struct {
		name string
		spec helperSpec
		want string
	}{
		{"agent mark", helperSpec{Network: "tcp4", Addr: netip.AddrPortFrom(nodeIP4, appPort).String(), Mark: DefaultMark}, nodeFrom},
		{"excluded CIDR", helperSpec{Network: "tcp4", Addr: netip.AddrPortFrom(exclIP4, appPort).String()}, nodeFrom},
		{"excluded port", helperSpec{Network: "tcp4", Addr: netip.AddrPortFrom(nodeIP4, exclPort).String()}, nodeFrom},
		{"own pod address", helperSpec{Network: "tcp4", Addr: netip.AddrPortFrom(podIP4, appPort).String()}, fmt.Sprintf("app %s:", podIP4)},
		{"loopback", helperSpec{Network: "tcp4", Addr: fmt.Sprintf("127.0.0.1:%d", appPort)}, "app 127.0.0.1:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := f.runApp(tc.spec)
			if len(got) != 1 || got[0].Err != "" || !strings.HasPrefix(got[0].Reply, tc.want) {
				t.Fatalf("attempts = %+v, want reply starting %q", got, tc.want)
			}
		})
	}

	// The agent dials from inside the pod's namespace but from its own
	// cgroup, as the proxy's upstream connections do.
	reply, err := dialIn(t, f.pod, "tcp4", "", netip.AddrPortFrom(nodeIP4, appPort).String(), 2*time.Second)
	if err != nil || !strings.HasPrefix(reply, nodeFrom) {
		t.Fatalf("agent dial: reply %q, error %v; want reply starting %q", reply, err, nodeFrom)
	}
}

func TestInboundCapture(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name, network, laddr, raddr, want string
	}{
		{"application port", "tcp4", "", fmt.Sprintf("%s:%d", podIP4, appPort), fmt.Sprintf("in %s:", nodeIP4)},
		{"port without listener", "tcp4", "", fmt.Sprintf("%s:%d", podIP4, noAppPort), fmt.Sprintf("in %s:", nodeIP4)},
		// The node also holds the IPv6 probe address, so pick the source.
		{"IPv6", "tcp6", netip.AddrPortFrom(nodeIP6, 0).String(), netip.AddrPortFrom(podIP6, appPort).String(), fmt.Sprintf("in [%s]:", nodeIP6)},
		{"HBONE", "tcp4", "", fmt.Sprintf("%s:15008", podIP4), fmt.Sprintf("hbone %s:", nodeIP4)},
		{"probe", "tcp4", probeIP4.String() + ":0", fmt.Sprintf("%s:%d", podIP4, appPort), fmt.Sprintf("app %s:", probeIP4)},
		{"IPv6 probe", "tcp6", netip.AddrPortFrom(probeIP6, 0).String(), netip.AddrPortFrom(podIP6, appPort).String(), fmt.Sprintf("app [%s]:", probeIP6)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reply, err := dialIn(t, f.node, tc.network, tc.laddr, tc.raddr, 2*time.Second)
			if err != nil || !strings.HasPrefix(reply, tc.want) {
				t.Fatalf("dial %s: reply %q, error %v; want reply starting %q", tc.raddr, reply, err, tc.want)
			}
			// The listener's local address is the original destination.
			if strings.HasPrefix(tc.want, "in ") && !strings.HasSuffix(reply, " "+tc.raddr) {
				t.Errorf("dial %s: reply %q does not end with the original destination", tc.raddr, reply)
			}
		})
	}
	if n := f.podApp.accepted(); n != 2 {
		t.Errorf("pod application accepted %d connections, want 2 (the probes)", n)
	}
	st, _ := f.cur.Load().Stats()
	if st.InboundAssigned < 4 || st.InboundProbe != 2 {
		t.Errorf("Stats() = %+v, want at least 4 inbound assigned and 2 probes", st)
	}
}

// TestFailClosed closes the proxy's listeners and checks that inbound SYNs
// are dropped, not delivered or refused, and that outbound connects are
// refused instead of reaching their destination, over IPv4 and IPv6.
func TestFailClosed(t *testing.T) {
	f := newFixture(t)
	f.inbound.ln.Close()
	f.hbone.ln.Close()
	f.out4.ln.Close()
	f.out6.ln.Close()

	for _, tc := range []struct {
		name, network, laddr string
		pod, node            netip.Addr
		nodeApp              *server
	}{
		{"IPv4", "tcp4", "", podIP4, nodeIP4, f.nodeApp},
		// The node also holds the IPv6 probe address, so pick the source.
		{"IPv6", "tcp6", netip.AddrPortFrom(nodeIP6, 0).String(), podIP6, nodeIP6, f.nodeV6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := f.cur.Load().Stats()
			for _, port := range []uint16{appPort, DefaultHBONEPort} {
				raddr := netip.AddrPortFrom(tc.pod, port).String()
				_, err := dialIn(t, f.node, tc.network, tc.laddr, raddr, 500*time.Millisecond)
				var nerr net.Error
				if !errors.As(err, &nerr) || !nerr.Timeout() {
					t.Errorf("inbound dial to %s with the listener closed: error %v, want a timeout (SYN dropped)", raddr, err)
				}
			}
			if n := f.podApp.accepted(); n != 0 {
				t.Errorf("pod application accepted %d connections without the proxy, want 0", n)
			}
			after, _ := f.cur.Load().Stats()
			if after.InboundNoListener < before.InboundNoListener+2 {
				t.Errorf("Stats().InboundNoListener went from %d to %d, want at least 2 more", before.InboundNoListener, after.InboundNoListener)
			}

			dst := netip.AddrPortFrom(tc.node, appPort)
			got := f.runApp(helperSpec{Network: tc.network, Addr: dst.String()})
			if len(got) != 1 || !strings.Contains(got[0].Err, "connection refused") {
				t.Errorf("outbound dial to %s with the outbound listener closed: %+v, want connection refused", dst, got)
			}
			if n := tc.nodeApp.accepted(); n != 0 {
				t.Errorf("node application accepted %d connections without the proxy, want 0", n)
			}
		})
	}
}

func TestUnenroll(t *testing.T) {
	f := newFixture(t)
	c := f.cur.Load()
	f.runApp(helperSpec{Network: "tcp4", Addr: netip.AddrPortFrom(nodeIP4, appPort).String()})

	pods, err := c.Pods()
	if err != nil || len(pods) != 1 || pods[0].ID != f.pod1().ID {
		t.Fatalf("Pods() = %+v, %v; want pod %s", pods, err, f.pod1().ID)
	}
	s := pods[0].Settings
	if s.ProbeIPv4 != probeIP4 || len(s.ExcludeCIDRs) != 1 || s.ExcludeCIDRs[0] != exclCIDR4 || len(s.ExcludePorts) != 1 {
		t.Errorf("Pods()[0].Settings = %+v, want the enrolled settings", s)
	}
	cookie := pods[0].NetnsCookie
	before := mapEntriesOf(t, c, cookie)

	// A steering entry as the tc program leaves it when a SYN that met a
	// TIME_WAIT socket never reaches the listener lookup.
	steer := captureSteerKey{Local: addrWords(podIP4), Remote: addrWords(nodeIP4), LocalPort: appPort, RemotePort: 40999}
	rc, err := f.inbound.ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var putErr error
	if err := rc.Control(func(fd uintptr) { putErr = c.objs.MztTwSteer.Put(&steer, uint64(fd)) }); err != nil || putErr != nil {
		t.Fatalf("store steering entry: %v, %v", err, putErr)
	}
	if n := mapEntriesOf(t, c, cookie); n != before+1 || n < 6 {
		t.Fatalf("enrolled pod has %d map entries (%d before the steering entry), want at least 6 (config, ID, CIDRs, ports, addresses, tuple, steering)", n, before)
	}

	if err := c.Unenroll(f.pod1().ID); err != nil {
		t.Fatalf("Unenroll: %v", err)
	}
	if n := mapEntriesOf(t, c, cookie); n != 0 {
		t.Errorf("%d map entries of the departed pod remain, want 0", n)
	}
	got := f.runApp(helperSpec{Network: "tcp4", Addr: netip.AddrPortFrom(nodeIP4, appPort).String()})
	if len(got) != 1 || !strings.HasPrefix(got[0].Reply, "node ") {
		t.Errorf("outbound after Unenroll: %+v, want a direct connection", got)
	}
	reply, err := dialIn(t, f.node, "tcp4", "", fmt.Sprintf("%s:%d", podIP4, appPort), 2*time.Second)
	if err != nil || !strings.HasPrefix(reply, "app ") {
		t.Errorf("inbound after Unenroll: reply %q, error %v; want the application", reply, err)
	}
	if err := c.Unenroll(f.pod1().ID); err == nil {
		t.Error("second Unenroll succeeded, want ErrNotFound")
	}
}

// mapEntriesOf counts the entries of every keyed map that belong to netns.
// TIME_WAIT steering entries count when their local address is the test
// pod's, since the map does not record the namespace.
func mapEntriesOf(t *testing.T, c *Capture, netns uint64) int {
	t.Helper()
	n := 0
	var cfg capturePodConfig
	if c.objs.MztPods.Lookup(netns, &cfg) == nil {
		n++
	}

	var id capturePodId
	var meta capturePodMeta
	for it := c.objs.MztPodIds.Iterate(); it.Next(&id, &meta); {
		if meta.Netns == netns {
			n++
		}
	}

	var ck captureCidrKey
	var v uint8
	for it := c.objs.MztExclCidr.Iterate(); it.Next(&ck, &v); {
		if ns, _ := cidrFromKey(ck); ns == netns {
			n++
		}
	}

	var pk capturePortKey
	for it := c.objs.MztExclPort.Iterate(); it.Next(&pk, &v); {
		if pk.Netns == netns {
			n++
		}
	}

	var pa capturePodAddr
	var paNetns uint64
	for it := c.objs.MztPodAddrs.Iterate(); it.Next(&pa, &paNetns); {
		if paNetns == netns {
			n++
		}
	}

	var tk captureTupleKey
	var od captureOrigDst
	for it := c.objs.MztTuples.Iterate(); it.Next(&tk, &od); {
		if tk.Netns == netns {
			n++
		}
	}

	// Looking a sockhash up from user space returns the socket's cookie.
	var sk captureSteerKey
	var cookie uint64
	for it := c.objs.MztTwSteer.Iterate(); it.Next(&sk, &cookie); {
		if sk.Local == addrWords(podIP4) || sk.Local == addrWords(podIP6) {
			n++
		}
	}
	return n
}

// TestAgentCgroupExempt attaches the outbound programs to a parent cgroup
// that holds both the pod and the agent: only the agent's cgroup check
// keeps the agent's connects out of capture. The check matches the agent's
// cgroup exactly, so a process in a child cgroup of it is captured.
func TestAgentCgroupExempt(t *testing.T) {
	tp := newTopo(t)
	joinCgroup(t, tp.agentCg)
	c := tp.open()
	t.Cleanup(func() { c.Remove() })
	p := tp.pod1()
	p.Cgroup = tp.cgBase
	if err := c.Enroll(p); err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	serve(t, listen(t, tp.pod, "tcp4", "127.0.0.1:15001"), func(net.Conn) string { return "out" })
	serve(t, listen(t, tp.node, "tcp4", netip.AddrPortFrom(nodeIP4, appPort).String()), func(net.Conn) string { return "node" })

	dst := netip.AddrPortFrom(nodeIP4, appPort).String()
	if reply, err := dialIn(t, tp.pod, "tcp4", "", dst, 2*time.Second); err != nil || reply != "node" {
		t.Errorf("agent dial without mark: reply %q, error %v; want it uncaptured", reply, err)
	}
	if got := tp.runApp(helperSpec{Network: "tcp4", Addr: dst}); len(got) != 1 || got[0].Reply != "out" {
		t.Errorf("pod dial: %+v, want it captured", got)
	}

	child := filepath.Join(tp.agentCg, "child")
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatalf("create child cgroup: %v", err)
	}
	t.Cleanup(func() { os.Remove(child) })
	podCgroup := tp.podCgroup
	tp.podCgroup = child // runApp starts its helper in tp.podCgroup
	got := tp.runApp(helperSpec{Network: "tcp4", Addr: dst})
	tp.podCgroup = podCgroup
	if len(got) != 1 || got[0].Reply != "out" {
		t.Errorf("dial from a child cgroup of the agent's: %+v, want it captured", got)
	}
}

// TestInboundTimeWaitReuse reuses a client port whose previous connection
// is in TIME_WAIT on the pod's side. The kernel would hand such a SYN to the
// application's listener, so the tc program must still assign it to the
// proxy.
func TestInboundTimeWaitReuse(t *testing.T) {
	f := newFixture(t)
	laddr := netip.AddrPortFrom(nodeIP4, 40123).String()
	raddr := fmt.Sprintf("%s:%d", podIP4, appPort)
	for i := range 3 {
		reply, err := dialIn(t, f.node, "tcp4", laddr, raddr, 2*time.Second)
		if err != nil || !strings.HasPrefix(reply, "in ") {
			st, _ := f.cur.Load().Stats()
			t.Fatalf("dial %d from %s: reply %q, error %v; want the inbound proxy (stats %+v)", i, laddr, reply, err, st)
		}
		// Let the last ACK arrive, so the pod's side reaches TIME_WAIT.
		time.Sleep(50 * time.Millisecond)
	}
	if n := f.podApp.accepted(); n != 0 {
		t.Errorf("pod application accepted %d connections past the proxy, want 0", n)
	}
	if st, _ := f.cur.Load().Stats(); st.InboundTWSteered < 2 {
		t.Errorf("Stats().InboundTWSteered = %d, want at least 2", st.InboundTWSteered)
	}
}

// TestInboundTimeWaitMPTCPListener repeats TestInboundTimeWaitReuse with an
// MPTCP inbound listener, which cannot be steered: the SYN must be dropped,
// never delivered to the application.
func TestInboundTimeWaitMPTCPListener(t *testing.T) {
	f := newFixture(t)
	f.inbound.ln.Close()
	serve(t, listenWith(t, f.pod, "tcp", ":15006", true), func(net.Conn) string { return "in" })

	laddr := netip.AddrPortFrom(nodeIP4, 40124).String()
	raddr := fmt.Sprintf("%s:%d", podIP4, appPort)
	if reply, err := dialIn(t, f.node, "tcp4", laddr, raddr, 2*time.Second); err != nil || reply != "in" {
		t.Fatalf("first dial: reply %q, error %v; want the inbound proxy", reply, err)
	}
	time.Sleep(50 * time.Millisecond)
	reply, err := dialIn(t, f.node, "tcp4", laddr, raddr, 500*time.Millisecond)
	if err == nil {
		t.Errorf("dial over TIME_WAIT with an MPTCP listener: reply %q, want the SYN dropped", reply)
	}
	if n := f.podApp.accepted(); n != 0 {
		t.Errorf("pod application accepted %d connections past the proxy, want 0", n)
	}
	if st, _ := f.cur.Load().Stats(); st.InboundTWFailed == 0 {
		t.Errorf("Stats().InboundTWFailed = 0, want > 0")
	}
}

// TestInboundAheadOfOtherTCX enrolls a pod whose interface already runs a
// tcx program that passes every packet. Capture must run first, or that
// program would deliver SYNs to the application.
func TestInboundAheadOfOtherTCX(t *testing.T) {
	f := newFixture(t)
	c := f.cur.Load()
	if err := c.Unenroll(f.pod1().ID); err != nil {
		t.Fatalf("Unenroll: %v", err)
	}

	passAll, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}, // TCX_PASS
		License:      "MIT",
	})
	if err != nil {
		t.Fatalf("load pass-all program: %v", err)
	}
	t.Cleanup(func() { passAll.Close() })
	var other link.Link
	in(t, f.pod, func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		other, err = link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: passAll, Attach: ebpf.AttachTCXIngress})
		return err
	})
	t.Cleanup(func() { other.Close() })

	if err := c.Enroll(f.pod1()); err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	reply, err := dialIn(t, f.node, "tcp4", "", fmt.Sprintf("%s:%d", podIP4, appPort), 2*time.Second)
	if err != nil || !strings.HasPrefix(reply, "in ") {
		t.Errorf("inbound dial: reply %q, error %v; want the inbound proxy", reply, err)
	}
	if n := f.podApp.accepted(); n != 0 {
		t.Errorf("pod application accepted %d connections past the proxy, want 0", n)
	}
}

// TestReenrollUpdatesSettings enrolls the pod again with other exclusions
// and checks that only the new ones apply.
func TestReenrollUpdatesSettings(t *testing.T) {
	f := newFixture(t)
	c := f.cur.Load()
	p := f.pod1()
	p.Settings.ExcludePorts = []uint16{appPort}
	p.Settings.ExcludeCIDRs = nil
	if err := c.Enroll(p); err != nil {
		t.Fatalf("Enroll again: %v", err)
	}

	pods, err := c.Pods()
	if err != nil || len(pods) != 1 {
		t.Fatalf("Pods() = %+v, %v; want one pod", pods, err)
	}
	s := pods[0].Settings
	if len(s.ExcludePorts) != 1 || s.ExcludePorts[0] != appPort || len(s.ExcludeCIDRs) != 0 {
		t.Errorf("Pods()[0].Settings = %+v, want only port %d excluded", s, appPort)
	}

	cases := []struct {
		name, addr, want string
	}{
		{"newly excluded port", netip.AddrPortFrom(nodeIP4, appPort).String(), "node "},
		{"formerly excluded port", netip.AddrPortFrom(nodeIP4, exclPort).String(), "out "},
		{"formerly excluded CIDR", netip.AddrPortFrom(exclIP4, exclPort).String(), "out "},
	}
	for _, tc := range cases {
		got := f.runApp(helperSpec{Network: "tcp4", Addr: tc.addr})
		if len(got) != 1 || !strings.HasPrefix(got[0].Reply, tc.want) {
			t.Errorf("%s: %+v, want reply starting %q", tc.name, got, tc.want)
		}
	}
}

// TestOriginalDstAsLocalAddr checks that with the option the proxy reads the
// original destination from LocalAddr, and only for captured connections,
// and that OriginalDst returns the same with a fallback to the map lookup.
func TestOriginalDstAsLocalAddr(t *testing.T) {
	tp := newTopo(t)
	joinCgroup(t, tp.agentCg)
	c, err := Open(Options{PinDir: tp.pinDir, AgentCgroup: tp.agentCg, OriginalDstAsLocalAddr: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { c.Remove() })
	if err := c.Enroll(tp.pod1()); err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	// orig is what OriginalDst returns, when OriginalDstIn agrees.
	reply := func(conn net.Conn) string {
		orig := "error"
		if d, err := c.OriginalDst(conn); err == nil {
			orig = d.String()
		}
		cookie, err := NetnsCookie(conn.(syscall.Conn))
		if err != nil {
			return err.Error()
		}
		in := "error"
		if d, err := c.OriginalDstIn(cookie, conn); err == nil {
			in = d.String()
		}
		if in != orig {
			return fmt.Sprintf("OriginalDst %s, OriginalDstIn %s", orig, in)
		}
		return fmt.Sprintf("local %s orig %s", conn.LocalAddr(), orig)
	}
	ln4 := listen(t, tp.pod, "tcp4", "127.0.0.1:15001")
	serve(t, ln4, reply)
	serve(t, listen(t, tp.pod, "tcp6", "[::1]:15001"), reply)
	if got := ln4.Addr().String(); got != "127.0.0.1:15001" {
		t.Errorf("listener Addr() = %s, want 127.0.0.1:15001", got)
	}

	dst4, dst6 := netip.AddrPortFrom(nodeIP4, appPort), netip.AddrPortFrom(nodeIP6, appPort)
	for _, tc := range []struct {
		name string
		spec helperSpec
		dst  netip.AddrPort
	}{
		{"IPv4", helperSpec{Network: "tcp", Addr: dst4.String(), Count: 3}, dst4},
		{"IPv6", helperSpec{Network: "tcp", Addr: dst6.String(), Count: 3}, dst6},
		{"dual-stack socket", helperSpec{Addr: dst4.String(), DualStack: true}, dst4},
	} {
		got := tp.runApp(tc.spec)
		wantReply(t, "captured connect, "+tc.name, got, fmt.Sprintf("local %s orig %s", tc.dst, tc.dst))
	}

	// A connection the agent makes to its own listener was not redirected.
	r, err := dialIn(t, tp.pod, "tcp4", "", "127.0.0.1:15001", 2*time.Second)
	if want := "local 127.0.0.1:15001 orig error"; err != nil || r != want {
		t.Errorf("direct dial: reply %q, error %v; want %q", r, err, want)
	}
	if st, _ := c.Stats(); st.AgentSocknameOrig < 7 {
		t.Errorf("Stats().AgentSocknameOrig = %d, want at least 7", st.AgentSocknameOrig)
	}

	// A listener created outside the agent's cgroup keeps the loopback
	// local address, and OriginalDst falls back to the map lookup.
	ln4.Close()
	orig, err := ownCgroup()
	if err != nil {
		t.Fatal(err)
	}
	root, err := Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	if err := writeProcs(root); err != nil {
		t.Fatalf("leave the agent cgroup: %v", err)
	}
	outside := listen(t, tp.pod, "tcp4", "127.0.0.1:15001")
	if err := writeProcs(orig); err != nil {
		t.Fatalf("return to cgroup %s: %v", orig, err)
	}
	serve(t, outside, reply)
	got := tp.runApp(helperSpec{Network: "tcp4", Addr: dst4.String()})
	wantReply(t, "captured connect to a listener outside the agent cgroup", got, fmt.Sprintf("local 127.0.0.1:15001 orig %s", dst4))

	if _, err := Open(Options{PinDir: tp.pinDir + "-x", OriginalDstAsLocalAddr: true}); err == nil {
		t.Error("Open with OriginalDstAsLocalAddr and no AgentCgroup succeeded, want an error")
	}
}

// Addresses that no namespace holds. Raw SYNs come from them. The node's
// kernel then drops the pod's SYN-ACK, because forwarding is off in the
// node namespace, instead of sending a reset for it, and the test can
// finish the handshake itself.
var (
	spoofIP4 = netip.MustParseAddr("198.18.64.77")
	spoofIP6 = netip.MustParseAddr("fd00:198:18:64::77")
)

// rawPeer sends hand-built TCP packets from the node namespace and reads the
// pod's replies on the node's end of the veth pair.
type rawPeer struct {
	t          *testing.T
	send4      int // AF_INET, IPPROTO_RAW: the caller writes the IPv4 header
	send6      int // AF_INET6, IPPROTO_RAW: the caller writes the IPv6 header
	recv       int // AF_PACKET on the node's veth
	nextID     uint32
	nextSource uint16
}

func newRawPeer(t *testing.T, tp *topo) *rawPeer {
	t.Helper()
	p := &rawPeer{t: t, nextID: 0x4d5a0000, nextSource: 41000}
	in(t, tp.node, func() error {
		ifc, err := net.InterfaceByName(tp.nodeIfName)
		if err != nil {
			return err
		}
		if p.send4, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
			return fmt.Errorf("open IPv4 raw socket: %w", err)
		}
		if p.send6, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
			return fmt.Errorf("open IPv6 raw socket: %w", err)
		}
		proto := int(htons(unix.ETH_P_ALL))
		if p.recv, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto); err != nil {
			return fmt.Errorf("open packet socket: %w", err)
		}
		if err := unix.Bind(p.recv, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}); err != nil {
			return fmt.Errorf("bind packet socket to %s: %w", tp.nodeIfName, err)
		}
		return unix.SetsockoptTimeval(p.recv, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50_000})
	})
	t.Cleanup(func() {
		unix.Close(p.send4)
		unix.Close(p.send6)
		unix.Close(p.recv)
	})

	// The pod resolves the unowned addresses to the node's veth, and the
	// node the pod's addresses to the pod's: static entries, so that no
	// neighbor discovery delays the first packets.
	nodeH, err := netlink.NewHandleAt(tp.node)
	if err != nil {
		t.Fatal(err)
	}
	defer nodeH.Close()
	podH, err := netlink.NewHandleAt(tp.pod)
	if err != nil {
		t.Fatal(err)
	}
	defer podH.Close()
	nodeLink, err := nodeH.LinkByName(tp.nodeIfName)
	if err != nil {
		t.Fatal(err)
	}
	podLink, err := podH.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct {
		h      *netlink.Handle
		on, to netlink.Link
		addr   netip.Addr
	}{
		{podH, podLink, nodeLink, spoofIP4},
		{podH, podLink, nodeLink, spoofIP6},
		{nodeH, nodeLink, podLink, podIP4},
		{nodeH, nodeLink, podLink, podIP6},
	} {
		family := unix.AF_INET
		if e.addr.Is6() {
			family = unix.AF_INET6
		}
		n := &netlink.Neigh{LinkIndex: e.on.Attrs().Index, Family: family, State: netlink.NUD_PERMANENT,
			IP: e.addr.AsSlice(), HardwareAddr: e.to.Attrs().HardwareAddr}
		if err := e.h.NeighSet(n); err != nil {
			t.Fatalf("set neighbor %s on %s: %v", e.addr, e.on.Attrs().Name, err)
		}
	}
	return p
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// tcpSegment builds a TCP segment with a valid checksum. A SYN carries
// 12 bytes of options (MSS, SACK permitted, window scale), so that its
// 32-byte header can be split into fragments at 8, 16 and 24 bytes.
func tcpSegment(src, dst netip.AddrPort, seq, ack uint32, flags byte) []byte {
	hdrLen := 20
	if flags&tcpSYN != 0 {
		hdrLen = 32
	}
	b := make([]byte, hdrLen)
	binary.BigEndian.PutUint16(b[0:], src.Port())
	binary.BigEndian.PutUint16(b[2:], dst.Port())
	binary.BigEndian.PutUint32(b[4:], seq)
	binary.BigEndian.PutUint32(b[8:], ack)
	b[12] = byte(hdrLen/4) << 4
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:], 64240)
	if hdrLen == 32 {
		copy(b[20:], []byte{2, 4, 0x05, 0xb4, 1, 1, 4, 2, 1, 3, 3, 7})
	}

	var pseudo []byte
	pseudo = append(pseudo, src.Addr().AsSlice()...)
	pseudo = append(pseudo, dst.Addr().AsSlice()...)
	if src.Addr().Is4() {
		pseudo = append(pseudo, 0, unix.IPPROTO_TCP, 0, byte(hdrLen))
	} else {
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(hdrLen))
		pseudo = append(pseudo, 0, 0, 0, unix.IPPROTO_TCP)
	}
	binary.BigEndian.PutUint16(b[16:], checksum(append(pseudo, b...)))
	return b
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// fragment is one IP packet carrying part of a TCP segment.
type fragment struct {
	offset int // bytes into the segment; a multiple of 8
	data   []byte
	more   bool
}

// splitSegment cuts seg after first bytes. first 0 means one unfragmented
// packet.
func splitSegment(seg []byte, first int) []fragment {
	if first == 0 {
		return []fragment{{data: seg}}
	}
	return []fragment{{offset: 0, data: seg[:first], more: true}, {offset: first, data: seg[first:]}}
}

// send writes fragments of one datagram from src to dst. With one
// unfragmented part, IPv6 carries no fragment header. With destOpts, an
// IPv6 datagram starts with an empty destination options header, so that
// its fragment headers name that header instead of TCP.
func (p *rawPeer) send(src, dst netip.Addr, frags []fragment, destOpts bool) {
	p.t.Helper()
	p.nextID++
	for _, f := range frags {
		var pkt []byte
		fragmented := len(frags) > 1
		if src.Is4() {
			h := make([]byte, 20)
			h[0] = 0x45
			binary.BigEndian.PutUint16(h[2:], uint16(20+len(f.data)))
			binary.BigEndian.PutUint16(h[4:], uint16(p.nextID))
			fo := uint16(f.offset / 8)
			if f.more {
				fo |= 0x2000
			}
			if !fragmented {
				fo = 0x4000 // DF
			}
			binary.BigEndian.PutUint16(h[6:], fo)
			h[8] = 64
			h[9] = unix.IPPROTO_TCP
			copy(h[12:], src.AsSlice())
			copy(h[16:], dst.AsSlice())
			binary.BigEndian.PutUint16(h[10:], checksum(h))
			pkt = append(h, f.data...)
			if err := unix.Sendto(p.send4, pkt, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
				p.t.Fatalf("send IPv4 packet to %s: %v", dst, err)
			}
			continue
		}

		h := make([]byte, 40)
		h[0] = 0x60
		h[6] = unix.IPPROTO_TCP
		h[7] = 64
		copy(h[8:], src.AsSlice())
		copy(h[24:], dst.AsSlice())
		payload := f.data
		if fragmented {
			h[6] = unix.IPPROTO_FRAGMENT
			fh := make([]byte, 8)
			fh[0] = unix.IPPROTO_TCP
			if destOpts {
				fh[0] = unix.IPPROTO_DSTOPTS
			}
			fo := uint16(f.offset)
			if f.more {
				fo |= 1
			}
			binary.BigEndian.PutUint16(fh[2:], fo)
			binary.BigEndian.PutUint32(fh[4:], p.nextID)
			payload = append(fh, f.data...)
		}
		binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
		pkt = append(h, payload...)
		if err := unix.Sendto(p.send6, pkt, 0, &unix.SockaddrInet6{Addr: dst.As16()}); err != nil {
			p.t.Fatalf("send IPv6 packet to %s: %v", dst, err)
		}
	}
}

// awaitReply waits up to timeout for a TCP segment from the pod's from to
// to, and returns its flags and sequence number. ok is false on timeout.
func (p *rawPeer) awaitReply(from, to netip.AddrPort, timeout time.Duration) (flags byte, seq uint32, ok bool) {
	buf := make([]byte, 2048)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(p.recv, buf, 0)
		if err != nil {
			continue // SO_RCVTIMEO expired
		}
		pkt := buf[:n]
		var src, dst netip.Addr
		var tcp []byte
		switch {
		case n >= 20 && pkt[0]>>4 == 4 && pkt[9] == unix.IPPROTO_TCP:
			ihl := int(pkt[0]&0x0f) * 4
			src, dst = netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
			tcp = pkt[min(ihl, n):]
		case n >= 40 && pkt[0]>>4 == 6 && pkt[6] == unix.IPPROTO_TCP:
			src, dst = netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40]))
			tcp = pkt[40:]
		default:
			continue
		}
		if len(tcp) < 20 || src != from.Addr() || dst != to.Addr() ||
			binary.BigEndian.Uint16(tcp[0:]) != from.Port() || binary.BigEndian.Uint16(tcp[2:]) != to.Port() {
			continue
		}
		return tcp[13], binary.BigEndian.Uint32(tcp[4:]), true
	}
	return 0, 0, false
}

// synOutcome is what a raw SYN led to.
type synOutcome struct {
	synACK   bool // the pod replied with a SYN-ACK
	accepted bool // after the test's ACK, a listener counted a new connection
}

// synSplit is how trySYN splits a SYN into fragments.
type synSplit struct {
	first    int  // bytes in the first fragment; 0 sends one unfragmented packet
	reverse  bool // send the last fragment first
	destOpts bool // IPv6: a destination options header precedes TCP
}

// trySYN sends a SYN from src to dst, split as sp sets. When the pod replies
// with a SYN-ACK, it completes the handshake, waits for a listener to
// accept, and resets the connection.
func (p *rawPeer) trySYN(src, dst netip.Addr, sp synSplit, accepted func() int) synOutcome {
	p.t.Helper()
	p.nextSource++
	from := netip.AddrPortFrom(src, p.nextSource)
	to := netip.AddrPortFrom(dst, appPort)
	const isn = 0x1000
	seg := tcpSegment(from, to, isn, 0, tcpSYN)
	if sp.destOpts {
		// Next header TCP, length 0 (8 bytes), then a 6-byte PadN option.
		seg = append([]byte{unix.IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0}, seg...)
	}
	frags := splitSegment(seg, sp.first)
	if sp.reverse {
		slices.Reverse(frags)
	}
	before := accepted()
	p.send(src, dst, frags, sp.destOpts)

	flags, seq, ok := p.awaitReply(to, from, 500*time.Millisecond)
	if !ok || flags&(tcpSYN|tcpACK) != tcpSYN|tcpACK {
		return synOutcome{}
	}
	out := synOutcome{synACK: true}
	p.send(src, dst, splitSegment(tcpSegment(from, to, isn+1, seq+1, tcpACK), 0), false)
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if accepted() > before {
			out.accepted = true
			break
		}
	}
	p.send(src, dst, splitSegment(tcpSegment(from, to, isn+1, 0, tcpRST), 0), false)
	return out
}

// TestInboundFragmentedSYN sends SYNs to the pod's application port in IP
// fragments, from raw sockets in the node namespace. The kernel reassembles
// fragments after tc, so an assignment made on a fragment is lost and a
// SYN that tc cannot parse would reach the application: capture must drop
// every TCP fragment. An unfragmented SYN shows that the raw packets work.
func TestInboundFragmentedSYN(t *testing.T) {
	f := newFixture(t)
	p := newRawPeer(t, f.topo)
	appOrProxy := func() int { return f.podApp.accepted() + f.inbound.accepted() }

	for _, tc := range []struct {
		name     string
		src, dst netip.Addr
	}{
		{"IPv4", spoofIP4, podIP4},
		{"IPv6", spoofIP6, podIP6},
	} {
		t.Run(tc.name+" unfragmented", func(t *testing.T) {
			p.t = t
			p.t = t
			got := p.trySYN(tc.src, tc.dst, synSplit{}, f.inbound.accepted)
			if !got.synACK || !got.accepted {
				t.Fatalf("unfragmented SYN: %+v, want a SYN-ACK and the inbound proxy to accept", got)
			}
		})
		for _, first := range []int{8, 16, 24} {
			for _, reverse := range []bool{false, true} {
				name := fmt.Sprintf("%s first fragment of %d bytes", tc.name, first)
				if reverse {
					name += " sent last"
				}
				t.Run(name, func(t *testing.T) {
					p.t = t
					got := p.trySYN(tc.src, tc.dst, synSplit{first: first, reverse: reverse}, appOrProxy)
					if got.synACK {
						t.Errorf("fragmented SYN: %+v, want it dropped with no SYN-ACK", got)
					}
				})
			}
		}
	}
	// The fragment headers name destination options, and only the first
	// fragment shows TCP at the end of its header chain.
	for _, reverse := range []bool{false, true} {
		t.Run(fmt.Sprintf("IPv6 fragments naming destination options, reverse %v", reverse), func(t *testing.T) {
			p.t = t
			got := p.trySYN(spoofIP6, podIP6, synSplit{first: 32, reverse: reverse, destOpts: true}, appOrProxy)
			if got.synACK {
				t.Errorf("fragmented SYN: %+v, want it dropped with no SYN-ACK", got)
			}
		})
	}
	if n := f.podApp.accepted(); n != 0 {
		t.Errorf("pod application accepted %d connections past the proxy, want 0", n)
	}
	// 14 SYNs of two fragments each: every fragment is dropped except the
	// later fragment of the two SYNs whose fragment headers name destination
	// options.
	if st, _ := f.cur.Load().Stats(); st.InboundFragment < 26 {
		t.Errorf("Stats().InboundFragment = %d, want at least 26", st.InboundFragment)
	}
}
