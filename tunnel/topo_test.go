package tunnel

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/mazu-mesh/mazu-ztunnel/internal/netns"
	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
)

// topo is two network namespaces joined by a veth pair: a "client node" A
// (198.18.80.1, fd00:198:18:80::1) and a "server node" B (198.18.80.2,
// fd00:198:18:80::2). Names start with mzt-tun- and are deleted on cleanup.
type topo struct {
	a, b     *netns.NS
	aIP, bIP netip.Addr
	a6, b6   netip.Addr
}

func run(tb testing.TB, args ...string) {
	tb.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func newTopo(tb testing.TB) *topo {
	tb.Helper()
	privtest.Require(tb)
	var r [3]byte
	_, _ = rand.Read(r[:])
	suffix := hex.EncodeToString(r[:])
	nsA, nsB := "mzt-tun-"+suffix+"a", "mzt-tun-"+suffix+"b"
	run(tb, "ip", "netns", "add", nsA)
	tb.Cleanup(func() { _ = exec.Command("ip", "netns", "del", nsA).Run() })
	run(tb, "ip", "netns", "add", nsB)
	tb.Cleanup(func() { _ = exec.Command("ip", "netns", "del", nsB).Run() })
	// The veth pair is created inside A with its peer in B; it never exists
	// in the host namespace.
	vA, vB := "mzt-tun-"+suffix[:5]+"a", "mzt-tun-"+suffix[:5]+"b"
	run(tb, "ip", "-n", nsA, "link", "add", vA, "type", "veth", "peer", "name", vB, "netns", nsB)
	for _, c := range [][]string{
		{"ip", "-n", nsA, "link", "set", "lo", "up"},
		{"ip", "-n", nsB, "link", "set", "lo", "up"},
		{"ip", "-n", nsA, "addr", "add", "198.18.80.1/24", "dev", vA},
		{"ip", "-n", nsB, "addr", "add", "198.18.80.2/24", "dev", vB},
		{"ip", "-n", nsA, "-6", "addr", "add", "fd00:198:18:80::1/64", "dev", vA, "nodad"},
		{"ip", "-n", nsB, "-6", "addr", "add", "fd00:198:18:80::2/64", "dev", vB, "nodad"},
		{"ip", "-n", nsA, "link", "set", vA, "up"},
		{"ip", "-n", nsB, "link", "set", vB, "up"},
	} {
		run(tb, c...)
	}
	t := &topo{
		aIP: netip.MustParseAddr("198.18.80.1"), bIP: netip.MustParseAddr("198.18.80.2"),
		a6: netip.MustParseAddr("fd00:198:18:80::1"), b6: netip.MustParseAddr("fd00:198:18:80::2"),
	}
	var err error
	if t.a, err = netns.Open("/run/netns/" + nsA); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { t.a.Close() })
	if t.b, err = netns.Open("/run/netns/" + nsB); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { t.b.Close() })
	return t
}

// listenIn opens a data-plane listener inside ns.
func listenIn(tb testing.TB, ns *netns.NS, addr string) net.Listener {
	tb.Helper()
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = Listen(context.Background(), addr)
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// dialIn connects from inside ns.
func dialIn(ctx context.Context, ns *netns.NS, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = Dialer(netip.Addr{}, false).DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s in %s: %w", addr, ns, err)
	}
	return c, nil
}

// mesh is an outbound proxy in A and an HBONE server in B.
type mesh struct {
	t        *topo
	ca       *testCA
	pool     *Pool
	out      *Outbound
	srv      *Server
	outLn    net.Listener
	hboneLn  net.Listener
	dst      netip.AddrPort // where captured connections go (an app in B)
	peer     netip.AddrPort // B's HBONE address
	outbound netip.AddrPort // the outbound listener in A
}

type meshOpts struct {
	inbound     InboundConfig
	client      ClientConfig
	outbound    OutboundConfig
	appAddr     netip.AddrPort // destination; required
	passthrough bool
}

func newMesh(tb testing.TB, tp *topo, o meshOpts) *mesh {
	tb.Helper()
	m := &mesh{t: tp, ca: newTestCA(tb), dst: o.appAddr}
	m.hboneLn = listenIn(tb, tp.b, netip.AddrPortFrom(o.appAddr.Addr(), 0).String())
	m.peer = apOf(m.hboneLn)
	if o.inbound.DialUpstream == nil {
		o.inbound.DialUpstream = func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			return dialIn(ctx, tp.b, dst.String())
		}
	}
	m.srv = hboneServer(tb, m.ca, m.hboneLn, o.inbound)
	cc := o.client
	cc.Dial = func(ctx context.Context, key PoolKey) (net.Conn, error) { return dialIn(ctx, tp.a, key.Addr.String()) }
	m.pool = newTestPool(tb, m.ca, cc)
	oc := o.outbound
	oc.Pool = m.pool
	if oc.DialPassthrough == nil {
		oc.DialPassthrough = func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
			return dialIn(ctx, tp.a, dst.String())
		}
	}
	if oc.Resolve == nil {
		oc.Resolve = func(ctx context.Context, src, dst netip.AddrPort) (Route, error) {
			return Route{HBONE: !o.passthrough, Target: dst, Peer: m.peer, SrcIdentity: idClient, DstIdentity: idServer,
				Source:      Workload{Name: "client", Namespace: "client", Identity: idClient},
				Destination: Workload{Name: "server", Namespace: "server", Identity: idServer}}, nil
		}
	}
	var err error
	if m.out, err = NewOutbound(oc); err != nil {
		tb.Fatal(err)
	}
	loop := "127.0.0.1:0"
	if o.appAddr.Addr().Is6() {
		loop = "[::1]:0"
	}
	m.outLn = listenIn(tb, tp.a, loop)
	m.outbound = apOf(m.outLn)
	go func() { _ = m.out.Serve(m.outLn, func(net.Conn) (netip.AddrPort, error) { return m.dst, nil }) }()
	return m
}

// dial opens an application connection in A through the outbound proxy.
func (m *mesh) dial(tb testing.TB) *net.TCPConn {
	tb.Helper()
	c, err := dialIn(context.Background(), m.t.a, m.outbound.String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}
