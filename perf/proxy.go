package perf

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/tunnel"
)

// ProxyConfig configures one proxy process.
type ProxyConfig struct {
	// Kind is "null" (TCP forwarder), "tls" (one mTLS connection per
	// application connection) or "hbone" (the tunnel package).
	Kind string `json:"kind"`
	// Side is "out" (client node) or "in" (server node).
	Side string `json:"side"`
	// Routes map listen addresses to targets. For null and tls the target
	// is the next hop; for hbone out it is the CONNECT authority. hbone in
	// uses only the first Listen address.
	Routes []ProxyRoute `json:"routes"`
	// Peer is the inbound HBONE address (hbone out only).
	Peer string `json:"peer,omitempty"`
	// NewTunnel opens a new HBONE connection per application connection
	// instead of pooling (hbone out only).
	NewTunnel bool `json:"new_tunnel,omitempty"`
	PKI       *PKI `json:"pki,omitempty"`
	// RBE, when set on an hbone proxy, replaces the PKI's certificates with
	// an RBE-registered identity and verifies peers with rbeauth.Verifier.
	RBE *RBEProxy `json:"rbe,omitempty"`
}

// ProxyRoute is one listener and where its connections go.
type ProxyRoute struct {
	Listen string `json:"listen"`
	Target string `json:"target"`
}

func runProxy(ctx context.Context, log *slog.Logger, cfg *ProxyConfig) error {
	if cfg == nil || len(cfg.Routes) == 0 {
		return fmt.Errorf("proxy configuration: no routes given")
	}
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	listen := func(addr string) (net.Listener, error) {
		ln, err := tunnel.Listen(ctx, addr)
		if err == nil {
			lns = append(lns, ln)
		}
		return ln, err
	}
	switch {
	case cfg.Kind == "null":
		for _, r := range cfg.Routes {
			ln, err := listen(r.Listen)
			if err != nil {
				return err
			}
			go acceptLoop(ln, func(c net.Conn) { forward(ctx, c, r.Target, nil, nil) })
		}
	case cfg.Kind == "tls" && cfg.Side == "out":
		conf, err := cfg.PKI.ClientTLS()
		if err != nil {
			return err
		}
		for _, r := range cfg.Routes {
			ln, err := listen(r.Listen)
			if err != nil {
				return err
			}
			go acceptLoop(ln, func(c net.Conn) { forward(ctx, c, r.Target, conf, nil) })
		}
	case cfg.Kind == "tls" && cfg.Side == "in":
		conf, err := cfg.PKI.ServerTLS()
		if err != nil {
			return err
		}
		for _, r := range cfg.Routes {
			ln, err := listen(r.Listen)
			if err != nil {
				return err
			}
			go acceptLoop(ln, func(c net.Conn) { forward(ctx, c, r.Target, nil, conf) })
		}
	case cfg.Kind == "hbone" && cfg.Side == "in":
		tlsConfig, err := hboneServerTLS(ctx, log, cfg)
		if err != nil {
			return err
		}
		srv, err := tunnel.NewServer(tunnel.InboundConfig{
			TLSConfig:      tlsConfig,
			AnyDestination: true, // the :authority is the server pod, not this node
			Logger:         log,
		})
		if err != nil {
			return fmt.Errorf("hbone inbound: %w", err)
		}
		ln, err := listen(cfg.Routes[0].Listen)
		if err != nil {
			return err
		}
		go func() { _ = srv.Serve(ln) }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	case cfg.Kind == "hbone" && cfg.Side == "out":
		if err := startHBONEOut(ctx, log, cfg, listen); err != nil {
			return err
		}
	default:
		return fmt.Errorf("proxy kind %q side %q: want null, tls or hbone, and out or in", cfg.Kind, cfg.Side)
	}
	ready()
	<-ctx.Done()
	return nil
}

// hboneServerTLS returns the inbound HBONE TLS configuration source: the
// PKI's server certificate, or with RBE the verifier's strict-mode
// configuration, made cold per connection when ForgetUID is set.
func hboneServerTLS(ctx context.Context, log *slog.Logger, cfg *ProxyConfig) (func() (*tls.Config, error), error) {
	if cfg.RBE == nil {
		conf, err := cfg.PKI.ServerTLS()
		if err != nil {
			return nil, err
		}
		return func() (*tls.Config, error) { return conf, nil }, nil
	}
	v, cert, err := rbeVerifier(ctx, log, cfg.RBE)
	if err != nil {
		return nil, fmt.Errorf("rbe inbound: %w", err)
	}
	conf := v.ServerConfig(func(netip.Addr) (*tls.Certificate, error) { return cert, nil })
	forget := cfg.RBE.ForgetUID
	return func() (*tls.Config, error) {
		if forget != "" {
			v.ForgetPod(forget)
		}
		return conf, nil
	}, nil
}

// hboneClientTLS is the outbound counterpart of hboneServerTLS.
func hboneClientTLS(ctx context.Context, log *slog.Logger, cfg *ProxyConfig, peer netip.Addr) (func(tunnel.PoolKey) (*tls.Config, error), error) {
	if cfg.RBE == nil {
		conf, err := cfg.PKI.ClientTLS()
		if err != nil {
			return nil, err
		}
		return func(tunnel.PoolKey) (*tls.Config, error) { return conf, nil }, nil
	}
	v, cert, err := rbeVerifier(ctx, log, cfg.RBE)
	if err != nil {
		return nil, fmt.Errorf("rbe outbound: %w", err)
	}
	want, err := rbeauth.ParseIdentity(cfg.RBE.Expect)
	if err != nil {
		return nil, fmt.Errorf("rbe outbound expected identity: %w", err)
	}
	conf := v.ClientConfig(func() (*tls.Certificate, error) { return cert, nil }, peer, []rbeauth.Identity{want})
	forget := cfg.RBE.ForgetUID
	return func(tunnel.PoolKey) (*tls.Config, error) {
		if forget != "" {
			v.ForgetPod(forget)
		}
		return conf, nil
	}, nil
}

func startHBONEOut(ctx context.Context, log *slog.Logger, cfg *ProxyConfig, listen func(string) (net.Listener, error)) error {
	peer, err := netip.ParseAddrPort(cfg.Peer)
	if err != nil {
		return fmt.Errorf("hbone outbound peer %q: %w", cfg.Peer, err)
	}
	tlsConfig, err := hboneClientTLS(ctx, log, cfg, peer.Addr())
	if err != nil {
		return err
	}
	newOutbound := func() (*tunnel.Outbound, *tunnel.Pool, error) {
		pool, err := tunnel.NewPool(tunnel.ClientConfig{
			TLSConfig: tlsConfig,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("hbone pool: %w", err)
		}
		out, err := tunnel.NewOutbound(tunnel.OutboundConfig{
			Pool: pool,
			Resolve: func(_ context.Context, _, dst netip.AddrPort) (tunnel.Route, error) {
				return tunnel.Route{HBONE: true, Target: dst, Peer: peer, SrcIdentity: clientID, DstIdentity: serverID}, nil
			},
			Logger: log,
		})
		if err != nil {
			pool.Close()
			return nil, nil, fmt.Errorf("hbone outbound: %w", err)
		}
		return out, pool, nil
	}
	shared, sharedPool, err := newOutbound()
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); sharedPool.Close() }()
	for _, r := range cfg.Routes {
		target, err := netip.ParseAddrPort(r.Target)
		if err != nil {
			return fmt.Errorf("hbone outbound target %q: %w", r.Target, err)
		}
		ln, err := listen(r.Listen)
		if err != nil {
			return err
		}
		if !cfg.NewTunnel {
			go func() { _ = shared.Serve(ln, func(net.Conn) (netip.AddrPort, error) { return target, nil }) }()
			continue
		}
		go acceptLoop(ln, func(c net.Conn) {
			out, pool, err := newOutbound()
			if err != nil {
				c.Close()
				return
			}
			out.Handle(ctx, c, target)
			pool.Close()
		})
	}
	return nil
}

func acceptLoop(ln net.Listener, h func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go h(c)
	}
}

// forward connects c to target, wrapping the upstream side in TLS when
// client is set and c in TLS when server is set, and copies both ways.
func forward(ctx context.Context, c net.Conn, target string, client, server *tls.Config) {
	defer c.Close()
	down := c
	if server != nil {
		tc := tls.Server(c, server)
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			return
		}
		down = tc
	}
	up, err := tunnel.Dialer(netip.Addr{}, false).DialContext(ctx, "tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	if client != nil {
		tc := tls.Client(up, client)
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			return
		}
		up = tc
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); copyHalf(up, down) }()
	copyHalf(down, up)
	wg.Wait()
}

type closeWriter interface{ CloseWrite() error }

// copyHalf copies src to dst and then half-closes dst. Plain TCP to TCP
// uses io.Copy, which splices; TLS uses a 256 KiB buffer like the tunnel
// package's copy loop at full size.
func copyHalf(dst, src net.Conn) {
	_, dstTCP := dst.(*net.TCPConn)
	_, srcTCP := src.(*net.TCPConn)
	if dstTCP && srcTCP {
		_, _ = io.Copy(dst, src)
	} else {
		buf := make([]byte, 256<<10)
		_, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
	}
	if cw, ok := dst.(closeWriter); ok {
		_ = cw.CloseWrite()
	}
}
