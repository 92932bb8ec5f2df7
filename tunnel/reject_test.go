package tunnel

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

func TestOutbound_RejectedRouteResetsClient(t *testing.T) {
	ca := newTestCA(t)
	resolved := make(chan netip.AddrPort, 1)
	out, err := NewOutbound(OutboundConfig{
		Pool: newTestPool(t, ca, ClientConfig{}),
		Resolve: func(_ context.Context, _, dst netip.AddrPort) (Route, error) {
			resolved <- dst
			return Route{}, fmt.Errorf("route to %s: destination is bound to a waypoint: %w", dst, ErrRouteRejected)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln := mustListen(t, "127.0.0.1:0")
	origDst := netip.MustParseAddrPort("198.18.0.10:80")
	go func() { _ = out.Serve(ln, func(net.Conn) (netip.AddrPort, error) { return origDst, nil }) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = out.Shutdown(ctx)
	})

	// The reset can arrive before the dialer reads the connect result, so
	// either the dial or the first read reports it.
	client, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err == nil {
		defer client.Close()
		_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = client.Read(make([]byte, 1))
	}
	if got := <-resolved; got != origDst {
		t.Errorf("Resolver got destination %s, want %s", got, origDst)
	}
	if !isReset(err) {
		t.Errorf("client read after rejection: %v, want %v", err, syscall.ECONNRESET)
	}
}
