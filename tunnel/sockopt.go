package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// keepAlive is the TCP keepalive ztunnel sets on every socket: idle 180s,
// interval 180s, 9 probes.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 180 * time.Second, Interval: 180 * time.Second, Count: 9}

// connectTimeout bounds every upstream TCP connect, as in ztunnel.
const connectTimeout = 10 * time.Second

// ListenConfig returns the configuration for data-plane listeners:
// SO_REUSEPORT so that a new process can bind the same ports during a rolling
// update, MPTCP off (SOCKMAP redirection accepts only plain TCP), and TCP
// keepalive on accepted connections.
func ListenConfig() *net.ListenConfig {
	lc := &net.ListenConfig{
		KeepAliveConfig: keepAlive,
		Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			})
			if err == nil {
				err = serr
			}
			if err != nil {
				return fmt.Errorf("set SO_REUSEPORT on %s: %w", address, err)
			}
			return nil
		},
	}
	lc.SetMultipathTCP(false)
	return lc
}

// Listen opens a data-plane TCP listener (see ListenConfig) in the calling
// thread's network namespace.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	ln, err := ListenConfig().Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}

// Dialer returns a dialer with ztunnel's socket settings. When transparent
// is set and src is valid, the socket binds to src with IP_TRANSPARENT, so
// the peer sees src as the source address (needs CAP_NET_ADMIN and routing
// that brings the replies back; see InboundConfig.OriginalSource).
func Dialer(src netip.Addr, transparent bool) *net.Dialer {
	d := &net.Dialer{Timeout: connectTimeout, KeepAliveConfig: keepAlive}
	d.SetMultipathTCP(false)
	if transparent && src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		d.Control = setTransparent
	}
	return d
}

// WithMark makes d set SO_MARK on its sockets, in addition to what d's
// Control already does. Capture rules use such a mark to exempt the proxy's
// own connections from redirection (istio-cni uses 0x539). Needs
// CAP_NET_ADMIN.
func WithMark(d *net.Dialer, mark uint32) *net.Dialer {
	prev := d.Control
	d.Control = func(network, address string, c syscall.RawConn) error {
		if prev != nil {
			if err := prev(network, address, c); err != nil {
				return err
			}
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			return fmt.Errorf("set SO_MARK %#x for %s: %w", mark, address, err)
		}
		return nil
	}
	return d
}

func setTransparent(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		if serr == nil && network == "tcp6" {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("set IP_TRANSPARENT for %s: %w", address, err)
	}
	return nil
}

// setNoDelay turns Nagle off; Go does this by default, but a caller-supplied
// connection may not be a *net.TCPConn from Go's dialer.
func setNoDelay(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
}

// closeWrite half-closes c when it supports it, and closes it otherwise.
func closeWrite(c io.Closer) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// abort closes c with a TCP RST (SO_LINGER 0), to propagate a reset.
func abort(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// isReset reports whether err is a TCP reset from the peer.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET)
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
