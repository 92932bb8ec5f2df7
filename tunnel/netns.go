package tunnel

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/mazu-mesh/mazu-ztunnel/internal/netns"
)

// ListenIn opens a data-plane listener (see ListenConfig) inside ns, such as
// a pod's 15001, 15006 or 15008 listener opened by the node agent. The
// listener stays in ns and may be served from any goroutine.
func ListenIn(ns *netns.NS, addr string) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = Listen(context.Background(), addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen in %s: %w", ns, err)
	}
	return ln, nil
}

// DialIn returns a dialer for InboundConfig.DialUpstream that connects from
// inside ns, binding to the client's address when transparent is set. Each
// call switches a locked OS thread into ns for the duration of the connect.
func DialIn(ns *netns.NS, transparent bool) func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	return func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = Dialer(src, transparent).DialContext(ctx, "tcp", dst.String())
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("dial %s in %s: %w", dst, ns, err)
		}
		return c, nil
	}
}
