package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// OriginalDst returns the destination that the client of an accepted
// outbound connection dialed before connect4 or connect6 redirected it. conn
// is the proxy's side, accepted on the outbound listener inside the pod's
// network namespace. It returns an error wrapping ErrNotFound when the
// connection was not redirected.
//
// With Options.OriginalDstAsLocalAddr it makes no system call: it returns
// conn.LocalAddr(), which the agent-cgroup getsockname program set when Go
// accepted the connection. A loopback local address means that the program
// found no entry, or that conn comes from a listener created outside
// AgentCgroup; OriginalDst then looks the tuple map up as without the
// option. An original destination is never a loopback address, because
// connect4 and connect6 do not redirect connects to loopback.
//
// Without the option it costs two system calls. An agent that tracks the
// pod of each listener can read NetnsCookie once per listener and call
// OriginalDstIn instead.
//
// Inbound connections keep their original destination as the local address
// (conn.LocalAddr), since bpf_sk_assign does not rewrite packets.
func (c *Capture) OriginalDst(conn net.Conn) (netip.AddrPort, error) {
	if c.localAddr {
		if dst, ok := rewrittenLocalAddr(conn); ok {
			return c.checkOpen(dst, conn)
		}
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, errors.New("original destination: connection has no file descriptor")
	}
	cookie, err := NetnsCookie(sc)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return c.OriginalDstIn(cookie, conn)
}

// checkOpen returns dst, or ErrClosed after Close or Remove.
func (c *Capture) checkOpen(dst netip.AddrPort, conn net.Conn) (netip.AddrPort, error) {
	c.life.RLock()
	defer c.life.RUnlock()
	if c.closed {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", conn.RemoteAddr(), ErrClosed)
	}
	return dst, nil
}

// rewrittenLocalAddr returns conn's local address unless it is a loopback
// one, which the outbound listener's sockets keep when the getsockname
// program does not rewrite them.
func rewrittenLocalAddr(conn net.Conn) (netip.AddrPort, bool) {
	local, ok := conn.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	ap := local.AddrPort()
	addr := ap.Addr().Unmap()
	if !addr.IsValid() || addr.IsLoopback() || addr.IsUnspecified() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(addr, ap.Port()), true
}

// OriginalDstIn is OriginalDst for a connection accepted in the network
// namespace whose cookie is netnsCookie (see NetnsCookie). With
// Options.OriginalDstAsLocalAddr it too returns a non-loopback local
// address as it is: that address is the original destination, not the
// proxy's side of the tuple that the map is keyed by.
func (c *Capture) OriginalDstIn(netnsCookie uint64, conn net.Conn) (netip.AddrPort, error) {
	if c.localAddr {
		if dst, ok := rewrittenLocalAddr(conn); ok {
			return c.checkOpen(dst, conn)
		}
	}
	local, ok1 := conn.LocalAddr().(*net.TCPAddr)
	remote, ok2 := conn.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return netip.AddrPort{}, fmt.Errorf("original destination: connection %s is not TCP", conn.LocalAddr())
	}
	l, r := local.AddrPort(), remote.AddrPort()

	c.life.RLock()
	defer c.life.RUnlock()
	if c.closed {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", r, ErrClosed)
	}
	key := captureTupleKey{
		Netns:      netnsCookie,
		Client:     addrWords(r.Addr()),
		Proxy:      addrWords(l.Addr()),
		ClientPort: r.Port(),
		ProxyPort:  l.Port(),
	}
	var v captureOrigDst
	err := c.objs.MztTuples.Lookup(&key, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", r, ErrNotFound)
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", r, err)
	}
	return netip.AddrPortFrom(wordsAddr(v.Addr), v.Port), nil
}

// NetnsCookie returns the cookie of the network namespace that a socket
// (a listener or a connection) belongs to.
func NetnsCookie(sc syscall.Conn) (uint64, error) {
	return connNetnsCookie(sc)
}

func connNetnsCookie(sc syscall.Conn) (uint64, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("read netns cookie: %w", err)
	}
	var cookie uint64
	var serr error
	err = rc.Control(func(fd uintptr) {
		cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, fmt.Errorf("read netns cookie: %w", err)
	}
	return cookie, nil
}

const soOriginalDst = 80 // SO_ORIGINAL_DST and IP6T_SO_ORIGINAL_DST

// SockoptOriginalDst requests the original destination of an accepted
// connection with getsockopt(SO_ORIGINAL_DST), as a proxy written for
// iptables does: SOL_IP for an IPv4 socket, SOL_IPV6 for an IPv6 one.
// Capture returns the value through its getsockopt program, which runs only
// for sockets of Options.AgentCgroup: conn must come from a listener that a
// process in that cgroup created.
func SockoptOriginalDst(conn syscall.Conn) (netip.AddrPort, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("get SO_ORIGINAL_DST: %w", err)
	}
	var buf [28]byte
	var out netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		domain, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil {
			serr = err
			return
		}
		level, size := unix.SOL_IP, uint32(16)
		if domain == unix.AF_INET6 {
			level, size = unix.SOL_IPV6, 28
		}
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), soOriginalDst,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			serr = errno
			return
		}
		out, serr = parseSockaddr(buf[:size])
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("get SO_ORIGINAL_DST: %w", err)
	}
	return out, nil
}

// parseSockaddr decodes a sockaddr_in or sockaddr_in6.
func parseSockaddr(b []byte) (netip.AddrPort, error) {
	if len(b) < 2 {
		return netip.AddrPort{}, fmt.Errorf("sockaddr of %d bytes is too short", len(b))
	}
	port := binary.BigEndian.Uint16(b[2:4])
	switch family := binary.NativeEndian.Uint16(b); {
	case family == unix.AF_INET && len(b) >= 8:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
	case family == unix.AF_INET6 && len(b) >= 24:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), port), nil
	default:
		return netip.AddrPort{}, fmt.Errorf("sockaddr family %d with %d bytes is not IPv4 or IPv6", family, len(b))
	}
}
