package tunnel

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"golang.org/x/sys/unix"
)

func sockopt(tb testing.TB, ln net.Listener, level, opt int) int {
	tb.Helper()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	var v int
	var gerr error
	_ = rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) })
	if gerr != nil {
		tb.Fatal(gerr)
	}
	return v
}

func TestListenIn_PodNamespace(t *testing.T) {
	tp := newTopo(t)
	ln, err := ListenIn(tp.b, "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"SO_REUSEPORT is set", unix.SOL_SOCKET, unix.SO_REUSEPORT, 1},
		{"the protocol is plain TCP, not MPTCP", unix.SOL_SOCKET, unix.SO_PROTOCOL, unix.IPPROTO_TCP},
	} {
		if got := sockopt(t, ln, tc.level, tc.opt); got != tc.want {
			t.Errorf("%s: got %d, want %d", tc.name, got, tc.want)
		}
	}
	// The listener lives in B: reachable from A over the veth.
	port := apOf(ln).Port()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = c.Write([]byte("in B"))
			c.Close()
		}
	}()
	c, err := dialIn(context.Background(), tp.a, netip.AddrPortFrom(tp.bIP, port).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, _ := io.ReadAll(c)
	if string(got) != "in B" {
		t.Fatalf("read %q from the listener in B", got)
	}
}

// TestMesh_OriginalSource checks the IP_TRANSPARENT path: the application
// sees the HBONE peer's address as the source. The routing that a capture
// layer must provide is reproduced with a policy rule that sends the
// application's replies (by source port) to the local table.
func TestMesh_OriginalSource(t *testing.T) {
	tp := newTopo(t)
	seen := make(chan netip.AddrPort, 1)
	app := startApp(t, tp, "198.18.80.2:0", func(c *net.TCPConn) {
		seen <- addrPortOf(c.RemoteAddr())
		echoHandler(c)
	})
	nsName := tp.b.String()[len("/run/netns/"):]
	run(t, "ip", "-n", nsName, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "180")
	run(t, "ip", "-n", nsName, "rule", "add", "sport", strconv.Itoa(int(app.Port())), "lookup", "180")
	t.Cleanup(func() {
		_ = exec.Command("ip", "-n", nsName, "rule", "del", "sport", strconv.Itoa(int(app.Port())), "lookup", "180").Run()
	})
	m := newMesh(t, tp, meshOpts{appAddr: app, inbound: InboundConfig{
		OriginalSource: true,
		DialUpstream:   DialIn(tp.b, true),
	}})
	c := m.dial(t)
	deadline(t, c)
	roundTrip(t, c, "spoofed")
	select {
	case src := <-seen:
		if src.Addr() != tp.aIP {
			t.Fatalf("application saw source %s, want the client node's %s", src, tp.aIP)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("application saw no connection")
	}
}

func TestWithMark(t *testing.T) {
	privtest.Require(t) // SO_MARK needs CAP_NET_ADMIN
	ln := mustListen(t, "127.0.0.1:0")
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
	}()
	c, err := WithMark(Dialer(netip.Addr{}, false), 0x539).Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, _ := c.(*net.TCPConn).SyscallConn()
	var mark int
	_ = rc.Control(func(fd uintptr) { mark, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if mark != 0x539 {
		t.Fatalf("SO_MARK = %#x, want 0x539", mark)
	}
}

func TestSocketOptions(t *testing.T) {
	ln := mustListen(t, "127.0.0.1:0")
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := Dialer(netip.Addr{}, false).Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a := <-accepted
	defer a.Close()
	for side, conn := range map[string]net.Conn{"dialed": c, "accepted": a} {
		rc, _ := conn.(*net.TCPConn).SyscallConn()
		for _, tc := range []struct {
			name       string
			level, opt int
			want       int
		}{
			{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 180},
			{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 180},
			{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 9},
			{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		} {
			var got int
			_ = rc.Control(func(fd uintptr) { got, _ = unix.GetsockoptInt(int(fd), tc.level, tc.opt) })
			if got != tc.want {
				t.Errorf("%s socket %s = %d, want %d", side, tc.name, got, tc.want)
			}
		}
	}
}
