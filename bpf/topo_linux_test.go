package bpf

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Test addresses, all inside namespaces the tests create.
var (
	nodeIP4   = netip.MustParseAddr("198.18.64.1")
	podIP4    = netip.MustParseAddr("198.18.64.2")
	nodeIP6   = netip.MustParseAddr("fd00:198:18:64::1")
	podIP6    = netip.MustParseAddr("fd00:198:18:64::2")
	exclIP4   = netip.MustParseAddr("198.18.66.1") // on the node's lo, in an excluded CIDR
	probeIP4  = netip.MustParseAddr("198.18.79.254")
	probeIP6  = netip.MustParseAddr("fd00:198:18:64::fe") // on the node's veth
	exclCIDR4 = netip.MustParsePrefix("198.18.66.0/24")
)

const (
	appPort      = 8080
	exclPort     = 8081
	noAppPort    = 9999
	helperEnv    = "MZT_BPF_HELPER"
	namePrefix   = "mzt-bpf-"
	childTimeout = 30 * time.Second
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(runHelper(spec))
	}
	sweepStaleCgroups()
	os.Exit(m.Run())
}

// sweepStaleCgroups removes empty cgroups left by a killed run.
func sweepStaleCgroups() {
	root, err := Cgroup2Root()
	if err != nil || os.Geteuid() != 0 {
		return
	}
	dirs, _ := filepath.Glob(filepath.Join(root, namePrefix+"*"))
	for _, d := range dirs {
		subs, _ := os.ReadDir(d)
		for _, s := range subs {
			if s.IsDir() {
				_ = os.Remove(filepath.Join(d, s.Name()))
			}
		}
		_ = os.Remove(d)
	}
}

func randSuffix(t testing.TB) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// topo is a pod network namespace joined by a veth pair to a node namespace,
// plus a cgroup for the pod's processes and one for the agent.
type topo struct {
	t          testing.TB
	name       string
	pod, node  netns.NsHandle
	podFile    *os.File
	cgBase     string
	podCgroup  string
	agentCg    string
	pinDir     string
	nodeIfName string
}

func newTopo(t testing.TB) *topo {
	t.Helper()
	privtest.Require(t)
	sfx := randSuffix(t)
	tp := &topo{t: t, name: namePrefix + sfx, nodeIfName: namePrefix + sfx}

	tp.node = mustNewNetns(t)
	tp.pod = mustNewNetns(t)
	// Close through tp, so that a test can close them early: Close marks
	// the handle closed, and a second Close does not hit a reused fd.
	t.Cleanup(func() { tp.node.Close(); tp.pod.Close() })
	f, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", int(tp.pod)))
	if err != nil {
		t.Fatalf("open pod netns: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	tp.podFile = f

	tp.mustVeth()
	tp.mustCgroups()

	tp.pinDir = filepath.Join(t.TempDir(), tp.name)
	t.Cleanup(func() {
		// Drops any pins a failed test left behind.
		_ = unix.Unmount(tp.pinDir, unix.MNT_DETACH)
	})
	return tp
}

func mustNewNetns(t testing.TB) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get netns: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("restore netns: %v", err)
	}
	return ns
}

func (tp *topo) mustVeth() {
	t := tp.t
	t.Helper()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: tp.nodeIfName, Namespace: netlink.NsFd(int(tp.node))},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(tp.pod)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}

	nodeH, err := netlink.NewHandleAt(tp.node)
	if err != nil {
		t.Fatalf("node netlink handle: %v", err)
	}
	defer nodeH.Close()
	podH, err := netlink.NewHandleAt(tp.pod)
	if err != nil {
		t.Fatalf("pod netlink handle: %v", err)
	}
	defer podH.Close()

	nodeLink := mustUp(t, nodeH, tp.nodeIfName)
	mustUp(t, nodeH, "lo")
	podLink := mustUp(t, podH, "eth0")
	mustUp(t, podH, "lo")

	mustAddr(t, nodeH, nodeLink, netip.PrefixFrom(nodeIP4, 24))
	mustAddr(t, nodeH, nodeLink, netip.PrefixFrom(nodeIP6, 64))
	mustAddr(t, nodeH, nodeLink, netip.PrefixFrom(probeIP6, 128))
	lo, _ := nodeH.LinkByName("lo")
	mustAddr(t, nodeH, lo, netip.PrefixFrom(exclIP4, 32))
	mustAddr(t, nodeH, lo, netip.PrefixFrom(probeIP4, 32))
	mustAddr(t, podH, podLink, netip.PrefixFrom(podIP4, 24))
	mustAddr(t, podH, podLink, netip.PrefixFrom(podIP6, 64))

	for _, gw := range []netip.Addr{nodeIP4, nodeIP6} {
		r := &netlink.Route{LinkIndex: podLink.Attrs().Index, Gw: gw.AsSlice()}
		if err := podH.RouteAdd(r); err != nil {
			t.Fatalf("add pod default route via %s: %v", gw, err)
		}
	}
}

func mustUp(t testing.TB, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("find link %s: %v", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatalf("set %s up: %v", name, err)
	}
	return l
}

func mustAddr(t testing.TB, h *netlink.Handle, l netlink.Link, p netip.Prefix) {
	t.Helper()
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatalf("add address %s: %v", p, err)
	}
}

func (tp *topo) mustCgroups() {
	t := tp.t
	t.Helper()
	root, err := Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	tp.cgBase = filepath.Join(root, tp.name)
	tp.podCgroup = filepath.Join(tp.cgBase, "pod")
	tp.agentCg = filepath.Join(tp.cgBase, "agent")
	for _, d := range []string{tp.cgBase, tp.podCgroup, tp.agentCg} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatalf("create cgroup: %v", err)
		}
	}
	t.Cleanup(func() {
		for _, d := range []string{tp.podCgroup, tp.agentCg, tp.cgBase} {
			// Children exit before cleanup runs; retry briefly while the
			// kernel finishes reaping them.
			var err error
			for range 50 {
				if err = os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("remove cgroup %s: %v", d, err)
			}
		}
	})
}

// joinCgroup moves the whole test process into dir until the test ends.
// cgroup v2 membership is per process, so this is the only way the test's
// own sockets fall under a cgroup program.
func joinCgroup(t testing.TB, dir string) {
	t.Helper()
	orig, err := ownCgroup()
	if err != nil {
		t.Fatal(err)
	}
	if err := writeProcs(dir); err != nil {
		t.Fatalf("join cgroup %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := writeProcs(orig); err != nil {
			t.Errorf("return to cgroup %s: %v", orig, err)
		}
	})
}

func ownCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	root, err := Cgroup2Root()
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(root, rest), nil
		}
	}
	return "", errors.New("no cgroup v2 line in /proc/self/cgroup")
}

func writeProcs(dir string) error {
	return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(fmt.Sprint(os.Getpid())), 0o644)
}

// in runs fn on a thread inside ns.
func in(t testing.TB, ns netns.NsHandle, fn func() error) {
	t.Helper()
	if err := inNetns(int(ns), fn); err != nil {
		t.Fatal(err)
	}
}

func (tp *topo) settings() Settings {
	return Settings{
		ProbeIPv4:    probeIP4,
		ProbeIPv6:    probeIP6,
		ExcludeCIDRs: []netip.Prefix{exclCIDR4},
		ExcludePorts: []uint16{exclPort},
	}
}

func (tp *topo) pod1() Pod {
	return Pod{ID: "pod-" + tp.name, Netns: tp.podFile, Cgroup: tp.podCgroup, Settings: tp.settings()}
}

// open opens a Capture on the topology's private bpffs with the agent
// cgroup set, and removes it at the end of the test.
func (tp *topo) open() *Capture {
	tp.t.Helper()
	c, err := Open(Options{PinDir: tp.pinDir, AgentCgroup: tp.agentCg})
	if err != nil {
		tp.t.Fatalf("Open: %v", err)
	}
	return c
}

// server accepts connections on ln and replies to each with reply(conn) after
// reading one byte. It counts the connections.
type server struct {
	ln    net.Listener
	mu    sync.Mutex
	count int
}

func serve(t testing.TB, ln net.Listener, reply func(net.Conn) string) *server {
	s := &server{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.count++
			s.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err != nil {
					return
				}
				io.WriteString(c, reply(c))
			}()
		}
	}()
	return s
}

func (s *server) accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// listen opens a plain TCP listener in ns, as the agent does. Go creates
// MPTCP listeners by default, and the kernel refuses to put those in a
// sockhash, which TIME_WAIT steering needs.
func listen(t testing.TB, ns netns.NsHandle, network, addr string) net.Listener {
	t.Helper()
	return listenWith(t, ns, network, addr, false)
}

func listenWith(t testing.TB, ns netns.NsHandle, network, addr string, mptcp bool) net.Listener {
	t.Helper()
	var ln net.Listener
	in(t, ns, func() error {
		var err error
		var lc net.ListenConfig
		lc.SetMultipathTCP(mptcp)
		ln, err = lc.Listen(context.Background(), network, addr)
		return err
	})
	return ln
}

// dialIn dials from inside ns, sends one byte and returns the reply.
func dialIn(t testing.TB, ns netns.NsHandle, network, laddr, raddr string, timeout time.Duration) (string, error) {
	var c net.Conn
	var derr error
	// No t.Fatal here: callers may run on other goroutines.
	err := inNetns(int(ns), func() error {
		d := net.Dialer{Timeout: timeout}
		if laddr != "" {
			d.LocalAddr, _ = net.ResolveTCPAddr(network, laddr)
		}
		c, derr = d.Dial(network, raddr)
		return nil
	})
	if err != nil {
		return "", err
	}
	if derr != nil {
		return "", derr
	}
	defer c.Close()
	return exchange(c, timeout)
}

func exchange(c net.Conn, timeout time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte{'x'}); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// Helper processes: the test binary re-executed inside the pod's netns and
// cgroup, where the cgroup programs apply to it.

type helperSpec struct {
	Network  string
	Addr     string
	Count    int
	Duration time.Duration
	Interval time.Duration
	Mark     int
	MPTCP    bool
	// DualStack dials Addr, an IPv4 address, from an AF_INET6 socket
	// without IPV6_V6ONLY, so connect6 gets an IPv4-mapped address.
	DualStack bool
	Mode      string // "" dials; modeDefaultPinDir and modeExistingBPFFS run checkDefaultPinDir
}

type attempt struct {
	Err   string
	Reply string
	Peer  string // getpeername
	Local string // getsockname
}

func runHelper(specJSON string) int {
	var spec helperSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	enc := json.NewEncoder(os.Stdout)
	if spec.Mode == modeDefaultPinDir || spec.Mode == modeExistingBPFFS {
		a := attempt{Reply: "ok"}
		if err := checkDefaultPinDir(spec.Mode); err != nil {
			a = attempt{Err: err.Error()}
		}
		enc.Encode(a)
		return 0
	}
	deadline := time.Now().Add(spec.Duration)
	for i := 0; i < spec.Count && (spec.Duration == 0 || time.Now().Before(deadline)); i++ {
		enc.Encode(helperDial(spec))
		time.Sleep(spec.Interval)
	}
	return 0
}

func helperDial(spec helperSpec) attempt {
	d := net.Dialer{Timeout: 2 * time.Second}
	d.SetMultipathTCP(spec.MPTCP)
	if spec.Mark != 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, spec.Mark)
			})
			return errors.Join(err, serr)
		}
	}

	var c net.Conn
	var err error
	if spec.DualStack {
		c, err = dialDualStack(spec.Addr)
	} else {
		c, err = d.Dial(spec.Network, spec.Addr)
	}
	if err != nil {
		return attempt{Err: err.Error()}
	}
	defer c.Close()

	// RemoteAddr comes from getpeername(2) after connect; ask again to be
	// explicit about what the application sees.
	var peer, local string
	rc, _ := c.(*net.TCPConn).SyscallConn()
	rc.Control(func(fd uintptr) {
		if sa, err := unix.Getpeername(int(fd)); err == nil {
			peer = sockaddrString(sa)
		}
		if sa, err := unix.Getsockname(int(fd)); err == nil {
			local = sockaddrString(sa)
		}
	})
	reply, err := exchange(c, 2*time.Second)
	a := attempt{Reply: reply, Peer: peer, Local: local}
	if err != nil {
		a.Err = err.Error()
	}
	return a
}

// dialDualStack connects an AF_INET6 socket to the IPv4-mapped form of
// addr. Go's Dial would open an AF_INET socket for an IPv4 address.
func dialDualStack(addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, fmt.Errorf("open dual-stack socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "dual-stack")
	defer f.Close()
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return nil, fmt.Errorf("clear IPV6_V6ONLY: %w", err)
	}
	// Bounds the blocking connect.
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 2}); err != nil {
		return nil, fmt.Errorf("set send timeout: %w", err)
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if err := unix.Connect(fd, sa); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), ap.Port()), err)
	}
	return net.FileConn(f)
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)).String()
	}
	return fmt.Sprint(sa)
}

// runApp runs a helper in the pod's netns and cgroup and returns its
// attempts.
func (tp *topo) runApp(spec helperSpec) []attempt {
	t := tp.t
	t.Helper()
	cmd, out := tp.startApp(spec)
	return waitApp(t, cmd, out)
}

func (tp *topo) startApp(spec helperSpec) (*exec.Cmd, *bufio.Scanner) {
	t := tp.t
	t.Helper()
	if spec.Count == 0 {
		spec.Count = 1
	}
	b, _ := json.Marshal(spec)
	cg, err := os.Open(tp.podCgroup)
	if err != nil {
		t.Fatalf("open pod cgroup: %v", err)
	}
	defer cg.Close()

	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The child inherits the network namespace of the forking thread.
	in(t, tp.pod, cmd.Start)
	return cmd, bufio.NewScanner(stdout)
}

func waitApp(t testing.TB, cmd *exec.Cmd, out *bufio.Scanner) []attempt {
	t.Helper()
	var res []attempt
	for out.Scan() {
		var a attempt
		if err := json.Unmarshal(out.Bytes(), &a); err != nil {
			t.Fatalf("helper output %q: %v", out.Text(), err)
		}
		res = append(res, a)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	return res
}
