package tunnel_test

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/internal/netns"
	"github.com/mazu-mesh/mazu-ztunnel/tunnel"
	"github.com/prometheus/client_golang/prometheus"
)

// This example shows how a node agent wires one pod in in-pod mode: the
// listeners live in the pod's network namespace, and so do the sockets the
// proxies open toward the application and toward peers.
func Example_inPod() {
	ns, err := netns.Open("/var/run/netns/pod-a")
	if err != nil {
		return
	}
	defer ns.Close()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	metrics, _ := tunnel.NewMetrics(prometheus.NewRegistry())

	// The certificate sources come from the identity layer.
	var serverTLS func() (*tls.Config, error)
	var clientTLS func(key tunnel.PoolKey) (*tls.Config, error)

	// Inbound HBONE on 15008 and plaintext on 15006.
	inbound := tunnel.InboundConfig{
		TLSConfig:      serverTLS,
		DialUpstream:   tunnel.DialIn(ns, true),
		OriginalSource: true,
		Authorize: func(ctx context.Context, r *tunnel.InboundRequest) error {
			if len(r.PeerIdentities) == 0 {
				return errors.New("no peer identity")
			}
			return nil
		},
		Metrics: metrics,
		Logger:  log,
	}
	srv, err := tunnel.NewServer(inbound)
	if err != nil {
		return
	}
	hbone, _ := tunnel.ListenIn(ns, "[::]:15008")
	go srv.Serve(hbone)
	plain := tunnel.NewPlaintext(inbound)
	ln15006, _ := tunnel.ListenIn(ns, "[::]:15006")
	go plain.Serve(ln15006, nil)

	// Outbound on 15001: HBONE to mesh destinations, passthrough otherwise.
	pool, _ := tunnel.NewPool(tunnel.ClientConfig{
		TLSConfig: clientTLS,
		Dial: func(ctx context.Context, key tunnel.PoolKey) (net.Conn, error) {
			var c net.Conn
			err := ns.Do(func() error {
				var err error
				d := tunnel.WithMark(tunnel.Dialer(netip.Addr{}, false), 0x539)
				c, err = d.DialContext(ctx, "tcp", key.Addr.String())
				return err
			})
			return c, err
		},
	})
	out, _ := tunnel.NewOutbound(tunnel.OutboundConfig{
		Pool: pool,
		Resolve: func(ctx context.Context, src, dst netip.AddrPort) (tunnel.Route, error) {
			return tunnel.Route{
				HBONE:       true,
				Target:      dst,
				Peer:        netip.AddrPortFrom(dst.Addr(), 15008),
				SrcIdentity: "spiffe://cluster.local/ns/a/sa/default",
				DstIdentity: "spiffe://cluster.local/ns/b/sa/default",
			}, nil
		},
		Metrics: metrics,
		Logger:  log,
	})
	ln15001, _ := tunnel.ListenIn(ns, "[::]:15001")
	// The capture layer supplies the original destination, for example
	// from SO_ORIGINAL_DST.
	var origDst tunnel.OrigDstFunc
	go out.Serve(ln15001, origDst)

	// On SIGTERM: stop accepting, drain until the deadline, then close.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	_ = plain.Shutdown(ctx)
	_ = out.Shutdown(ctx)
	_ = pool.Close()
}
