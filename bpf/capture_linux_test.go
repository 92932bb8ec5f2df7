package bpf

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
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

func TestFailClosed(t *testing.T) {
	f := newFixture(t)

	f.inbound.ln.Close()
	_, err := dialIn(t, f.node, "tcp4", "", fmt.Sprintf("%s:%d", podIP4, appPort), 500*time.Millisecond)
	if err == nil {
		t.Fatal("inbound dial with the inbound listener closed succeeded, want it dropped")
	}
	if n := f.podApp.accepted(); n != 0 {
		t.Errorf("pod application accepted %d connections without the proxy, want 0", n)
	}
	st, _ := f.cur.Load().Stats()
	if st.InboundNoListener == 0 {
		t.Errorf("Stats().InboundNoListener = 0, want > 0")
	}

	f.out4.ln.Close()
	got := f.runApp(helperSpec{Network: "tcp4", Addr: netip.AddrPortFrom(nodeIP4, appPort).String()})
	if len(got) != 1 || !strings.Contains(got[0].Err, "connection refused") {
		t.Errorf("outbound dial with the outbound listener closed: %+v, want connection refused", got)
	}
	if n := f.nodeApp.accepted(); n != 0 {
		t.Errorf("node application accepted %d connections without the proxy, want 0", n)
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
	if n := mapEntriesOf(t, c, cookie); n < 5 {
		t.Fatalf("enrolled pod has %d map entries, want at least 5 (config, ID, CIDRs, ports, addresses, tuple)", n)
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
	return n
}

// TestAgentCgroupExempt attaches the outbound programs to a parent cgroup
// that holds both the pod and the agent: only the agent's cgroup check
// keeps the agent's connects out of capture.
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
// original destination from LocalAddr, and only for captured connections.
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
	reply := func(conn net.Conn) string { return "local " + conn.LocalAddr().String() }
	ln4 := listen(t, tp.pod, "tcp4", "127.0.0.1:15001")
	serve(t, ln4, reply)
	serve(t, listen(t, tp.pod, "tcp6", "[::1]:15001"), reply)
	if got := ln4.Addr().String(); got != "127.0.0.1:15001" {
		t.Errorf("listener Addr() = %s, want 127.0.0.1:15001", got)
	}

	for _, dst := range []netip.AddrPort{netip.AddrPortFrom(nodeIP4, appPort), netip.AddrPortFrom(nodeIP6, appPort)} {
		got := tp.runApp(helperSpec{Network: "tcp", Addr: dst.String(), Count: 3})
		wantReply(t, "captured connect to "+dst.String(), got, "local "+dst.String())
	}

	// A connection the agent makes to its own listener was not redirected.
	r, err := dialIn(t, tp.pod, "tcp4", "", "127.0.0.1:15001", 2*time.Second)
	if err != nil || r != "local 127.0.0.1:15001" {
		t.Errorf("direct dial: reply %q, error %v; want local 127.0.0.1:15001", r, err)
	}
	if st, _ := c.Stats(); st.AgentSocknameOrig < 6 {
		t.Errorf("Stats().AgentSocknameOrig = %d, want at least 6", st.AgentSocknameOrig)
	}

	if _, err := Open(Options{PinDir: tp.pinDir + "-x", OriginalDstAsLocalAddr: true}); err == nil {
		t.Error("Open with OriginalDstAsLocalAddr and no AgentCgroup succeeded, want an error")
	}
}
