package bpf

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// BenchmarkConnectEcho measures connect plus a 1-byte echo from an
// application in a pod to a server on the node, through an in-pod proxy
// that dials upstream from the pod's namespace with the agent's mark.
//
//   - proxy-hop: no BPF; the client dials the proxy on 127.0.0.1:15001,
//     which forwards to a fixed upstream.
//   - captured: the pod is enrolled; the client dials the server and
//     connect4 sends it to the same proxy, which finds the upstream with
//     Capture.OriginalDstIn.
//   - captured-localaddr: as captured, but the proxy reads the upstream from
//     conn.LocalAddr, with Options.OriginalDstAsLocalAddr.
//   - captured-agent: as captured-localaddr, but the proxy calls
//     Capture.OriginalDst, as the agent does.
func BenchmarkConnectEcho(b *testing.B) {
	b.Run("proxy-hop", func(b *testing.B) { benchConnectEcho(b, modeHop) })
	b.Run("captured", func(b *testing.B) { benchConnectEcho(b, modeLookup) })
	b.Run("captured-localaddr", func(b *testing.B) { benchConnectEcho(b, modeLocalAddr) })
	b.Run("captured-agent", func(b *testing.B) { benchConnectEcho(b, modeAgent) })
}

// benchPod is one pod with its proxy or listener, ready for a client.
type benchPod struct {
	tp       *topo
	target   string         // what the client dials
	clientNS netns.NsHandle // where the client dials from
	cgroup   string         // the client's cgroup; empty leaves it as it is
}

// benchMode is how a benchmark pod is captured and how its proxy finds the
// upstream.
type benchMode int

const (
	modeHop       benchMode = iota // no BPF; fixed upstream
	modeLookup                     // captured; Capture.OriginalDstIn
	modeNoLookup                   // captured; fixed upstream
	modeLocalAddr                  // captured; conn.LocalAddr with OriginalDstAsLocalAddr
	modeAgent                      // captured; Capture.OriginalDst with OriginalDstAsLocalAddr
)

func newBenchPod(b *testing.B, mode benchMode) benchPod {
	tp := newTopo(b)
	upstream := netip.AddrPortFrom(nodeIP4, appPort)
	echo(b, listen(b, tp.node, "tcp4", upstream.String()))

	var c *Capture
	if mode != modeHop {
		opts := Options{PinDir: tp.pinDir}
		if mode == modeLocalAddr || mode == modeAgent {
			opts.AgentCgroup, opts.OriginalDstAsLocalAddr = tp.agentCg, true
		}
		var err error
		c, err = Open(opts)
		if err != nil {
			b.Fatalf("Open: %v", err)
		}
		b.Cleanup(func() { c.Remove() })
		if err := c.Enroll(tp.pod1()); err != nil {
			b.Fatalf("Enroll: %v", err)
		}
	}

	// The listener's sockets belong to the cgroup it is created in, where
	// the agent's getsockname program runs.
	orig, err := ownCgroup()
	if err != nil {
		b.Fatal(err)
	}
	if err := writeProcs(tp.agentCg); err != nil {
		b.Fatal(err)
	}
	ln := listen(b, tp.pod, "tcp4", "127.0.0.1:15001")
	if err := writeProcs(orig); err != nil {
		b.Fatal(err)
	}

	// Like an agent, read the pod's namespace cookie once per listener.
	cookie, err := NetnsCookie(ln.(*net.TCPListener))
	if err != nil {
		b.Fatal(err)
	}
	resolve := func(conn net.Conn) (netip.AddrPort, error) {
		switch mode {
		case modeLookup:
			return c.OriginalDstIn(cookie, conn)
		case modeLocalAddr:
			return conn.LocalAddr().(*net.TCPAddr).AddrPort(), nil
		case modeAgent:
			return c.OriginalDst(conn)
		}
		return upstream, nil
	}
	relayProxy(b, tp, ln, resolve)

	target := "127.0.0.1:15001"
	if mode != modeHop {
		target = upstream.String()
	}
	return benchPod{tp: tp, target: target, clientNS: tp.pod, cgroup: tp.podCgroup}
}

// newInboundBenchPod serves a 1-byte echo on the pod's inbound listener
// port (15006). With capture, the pod is enrolled and the client dials the
// application port, which the tcx program assigns to that listener.
// Without it, the client dials the listener directly.
func newInboundBenchPod(b *testing.B, capture bool) benchPod {
	tp := newTopo(b)
	echo(b, listen(b, tp.pod, "tcp", fmt.Sprintf(":%d", DefaultInboundPort)))
	target := netip.AddrPortFrom(podIP4, DefaultInboundPort)
	if capture {
		c, err := Open(Options{PinDir: tp.pinDir})
		if err != nil {
			b.Fatalf("Open: %v", err)
		}
		b.Cleanup(func() { c.Remove() })
		if err := c.Enroll(tp.pod1()); err != nil {
			b.Fatalf("Enroll: %v", err)
		}
		target = netip.AddrPortFrom(podIP4, appPort)
	}
	return benchPod{tp: tp, target: target.String(), clientNS: tp.node}
}

// enter moves the benchmark's locked thread into the client's namespace
// and, for outbound pods, the whole process into the pod's cgroup: the
// client must be in that cgroup for connect4 to apply, and cgroup v2
// membership is per process.
func (p benchPod) enter(b *testing.B) {
	if err := unix.Setns(int(p.clientNS), unix.CLONE_NEWNET); err != nil {
		b.Fatal(err)
	}
	if p.cgroup == "" {
		return
	}
	if err := writeProcs(p.cgroup); err != nil {
		b.Fatal(err)
	}
}

// lockClient locks the benchmark goroutine to its thread and returns a
// function that restores the thread's namespace and the process's cgroup.
func lockClient(b *testing.B) func() {
	runtime.LockOSThread()
	self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	cg, err := ownCgroup()
	if err != nil {
		b.Fatal(err)
	}
	return func() {
		if err := writeProcs(cg); err != nil {
			b.Errorf("return to cgroup %s: %v", cg, err)
		}
		if unix.Setns(self, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		unix.Close(self)
	}
}

func connectEcho(b *testing.B, target string, buf []byte) {
	conn, err := net.DialTimeout("tcp4", target, 2*time.Second)
	if err != nil {
		b.Fatalf("dial %s: %v", target, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write(buf); err != nil {
		b.Fatalf("write: %v", err)
	}
	if _, err := io.ReadFull(conn, buf); err != nil {
		b.Fatalf("read echo: %v", err)
	}
}

func benchConnectEcho(b *testing.B, mode benchMode) {
	p := newBenchPod(b, mode)
	restore := lockClient(b)
	defer restore()
	p.enter(b)

	buf := make([]byte, 1)
	b.ReportAllocs()
	for b.Loop() {
		connectEcho(b, p.target, buf)
	}
}

// BenchmarkConnectEchoPaired runs the variants of BenchmarkConnectEcho in
// one process, rotating blocks of connections, so that all see the same
// machine load. The process moves between the pods' cgroups between
// blocks, outside the timed part. The nolookup variant captures but has the
// proxy skip finding the original destination, which separates the cost of
// the BPF programs from that of the lookup. It reports the median latency
// of each variant and its ratio to proxy-hop.
func BenchmarkConnectEchoPaired(b *testing.B) {
	modes := []struct {
		name string
		mode benchMode
	}{
		{"hop", modeHop},
		{"lookup", modeLookup},
		{"nolookup", modeNoLookup},
		{"localaddr", modeLocalAddr},
		{"agent", modeAgent},
	}
	names := make([]string, len(modes))
	pods := make([]benchPod, len(modes))
	for i, m := range modes {
		names[i] = m.name
		pods[i] = newBenchPod(b, m.mode)
	}
	runPaired(b, names, pods)
}

// BenchmarkInboundPaired measures connect plus a 1-byte echo from the node
// to a listener in the pod. The plain variant dials the listener's port
// without BPF. The tcx variant dials the application port of an enrolled
// pod, whose tcx program assigns the SYN to the listener with
// bpf_sk_assign. Both rotate blocks of connections as in
// BenchmarkConnectEchoPaired, and the benchmark reports the median latency
// of each and the ratio tcx/plain.
func BenchmarkInboundPaired(b *testing.B) {
	runPaired(b, []string{"plain", "tcx"}, []benchPod{newInboundBenchPod(b, false), newInboundBenchPod(b, true)})
}

// runPaired times connect plus echo to each pod in turn, in blocks of 50
// connections, and reports each variant's median and its ratio to the
// first, named by names.
func runPaired(b *testing.B, names []string, pods []benchPod) {
	const block = 50
	restore := lockClient(b)
	defer restore()

	lat := make([][]time.Duration, len(pods))
	buf := make([]byte, 1)
	i := 0
	for b.Loop() {
		v := (i / block) % len(pods)
		if i%block == 0 {
			pods[v].enter(b)
		}
		start := time.Now()
		connectEcho(b, pods[v].target, buf)
		lat[v] = append(lat[v], time.Since(start))
		i++
	}
	for _, l := range lat {
		if len(l) == 0 {
			return
		}
	}
	base := median(lat[0])
	b.ReportMetric(float64(base.Nanoseconds()), names[0]+"-p50-ns")
	for i, name := range names[1:] {
		p50 := median(lat[i+1])
		b.ReportMetric(float64(p50.Nanoseconds()), name+"-p50-ns")
		b.ReportMetric(float64(p50)/float64(base), name+"/"+names[0])
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// echo serves a 1-byte echo on ln.
func echo(tb testing.TB, ln net.Listener) {
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				io.Copy(conn, conn)
			}()
		}
	}()
}

// relayProxy accepts on ln, dials the resolved upstream from inside the
// pod's namespace with the agent's mark and copies both ways.
func relayProxy(tb testing.TB, tp *topo, ln net.Listener, resolve func(net.Conn) (netip.AddrPort, error)) {
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	dialer := net.Dialer{
		Timeout: 2 * time.Second,
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, DefaultMark)
			})
			return errors.Join(err, serr)
		},
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer down.Close()
				dst, err := resolve(down)
				if err != nil {
					return
				}
				var up net.Conn
				if err := inNetns(int(tp.pod), func() error {
					up, err = dialer.Dial("tcp", dst.String())
					return err
				}); err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{})
				go func() {
					io.Copy(up, down)
					up.(*net.TCPConn).CloseWrite()
					close(done)
				}()
				io.Copy(down, up)
				<-done
			}()
		}
	}()
}

// BenchmarkOriginalDst measures the ways a proxy can recover the original
// destination of one accepted, captured connection. The Capture runs with
// OriginalDstAsLocalAddr, as the agent's does.
//
//   - OriginalDst: what the agent calls; it returns conn.LocalAddr(), which
//     the getsockname program set at accept.
//   - NetnsCookie+OriginalDstIn: OriginalDst's path without the option, two
//     system calls.
//   - OriginalDstIn: the map lookup alone, one system call.
//   - SockoptOriginalDst: getsockopt(SO_ORIGINAL_DST), which the getsockopt
//     program returns.
func BenchmarkOriginalDst(b *testing.B) {
	tp := newTopo(b)
	c, err := Open(Options{PinDir: tp.pinDir, AgentCgroup: tp.agentCg, OriginalDstAsLocalAddr: true})
	if err != nil {
		b.Fatalf("Open: %v", err)
	}
	b.Cleanup(func() { c.Remove() })
	if err := c.Enroll(tp.pod1()); err != nil {
		b.Fatalf("Enroll: %v", err)
	}
	// A socket belongs to the cgroup of the process that created it, and an
	// accepted socket to the listener's: create the listener from the
	// agent's cgroup, where the getsockopt and getsockname programs are
	// attached.
	joinCgroup(b, tp.agentCg)
	ln := listen(b, tp.pod, "tcp4", "127.0.0.1:15001")
	b.Cleanup(func() { ln.Close() })

	// Dial once from the pod's cgroup.
	restore := lockClient(b)
	newPod := benchPod{tp: tp, clientNS: tp.pod, cgroup: tp.podCgroup}
	newPod.enter(b)
	dst := netip.AddrPortFrom(nodeIP4, appPort)
	client, err := net.Dial("tcp4", dst.String())
	restore()
	if err != nil {
		b.Fatalf("dial: %v", err)
	}
	b.Cleanup(func() { client.Close() })
	conn, err := ln.Accept()
	if err != nil {
		b.Fatalf("accept: %v", err)
	}
	b.Cleanup(func() { conn.Close() })
	if got := conn.LocalAddr().String(); got != dst.String() {
		b.Fatalf("LocalAddr() = %s, want the original destination %s", got, dst)
	}
	cookie, err := NetnsCookie(ln.(*net.TCPListener))
	if err != nil {
		b.Fatal(err)
	}
	// The map is keyed by the proxy's real local address, which getsockname
	// no longer shows with the option.
	unrewritten := proxySide{conn.(*net.TCPConn), ln.Addr()}

	b.Run("OriginalDst", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.OriginalDst(conn); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("NetnsCookie+OriginalDstIn", func(b *testing.B) {
		for b.Loop() {
			cookie, err := NetnsCookie(unrewritten)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.OriginalDstIn(cookie, unrewritten); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("OriginalDstIn", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.OriginalDstIn(cookie, unrewritten); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("SockoptOriginalDst", func(b *testing.B) {
		for b.Loop() {
			if _, err := SockoptOriginalDst(conn.(syscall.Conn)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// proxySide is an accepted connection with the local address that the
// kernel holds, as a Capture without OriginalDstAsLocalAddr would see it.
type proxySide struct {
	*net.TCPConn
	local net.Addr
}

func (p proxySide) LocalAddr() net.Addr { return p.local }
