package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
)

// Route is a Resolver's decision for one outbound connection.
type Route struct {
	// HBONE selects a tunnel to a mesh destination; otherwise the connection
	// passes through as plain TCP to Target.
	HBONE bool
	// Target is the :authority of the CONNECT (normally the original
	// destination), or the address to dial for passthrough.
	Target netip.AddrPort
	// Peer is the HBONE address of the destination node or pod, such as
	// <pod IP>:15008. HBONE only.
	Peer netip.AddrPort
	// SrcIdentity is the identity the source workload presents, and
	// DstIdentity the identity the peer must prove. HBONE only.
	SrcIdentity Identity
	DstIdentity Identity
	// Source and Destination describe both ends for metrics and access logs.
	Source, Destination Workload
}

// Resolver decides where a captured outbound connection goes.
type Resolver func(ctx context.Context, src, origDst netip.AddrPort) (Route, error)

// ErrRouteRejected is wrapped by a Resolver's error when policy forbids the
// connection, as opposed to a failed lookup. Outbound then resets the client
// connection and logs it only at debug level, because the Resolver is
// expected to log and count such rejections itself.
var ErrRouteRejected = errors.New("outbound connection rejected by policy")

// OutboundConfig configures an Outbound proxy.
type OutboundConfig struct {
	// Pool carries HBONE streams. Required.
	Pool *Pool
	// Resolve routes each connection. Required.
	Resolve Resolver
	// DialPassthrough connects to a destination outside the mesh; the
	// default uses Dialer without a source address.
	DialPassthrough func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	// Metrics and Logger as in InboundConfig.
	Metrics *Metrics
	Logger  *slog.Logger
}

// Outbound proxies connections captured from local workloads.
type Outbound struct {
	cfg OutboundConfig
	log *slog.Logger
	tracker
}

// NewOutbound returns an Outbound; it fails when Pool or Resolve is missing.
func NewOutbound(cfg OutboundConfig) (*Outbound, error) {
	if cfg.Pool == nil || cfg.Resolve == nil {
		return nil, errors.New("new outbound proxy: OutboundConfig needs both Pool and Resolve")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Outbound{cfg: cfg, log: log, tracker: newTracker()}, nil
}

// OrigDstFunc returns the original destination of a captured connection.
type OrigDstFunc func(net.Conn) (netip.AddrPort, error)

// Serve accepts captured connections from ln until it fails or Shutdown
// closes it; origDst supplies each connection's original destination.
func (o *Outbound) Serve(ln net.Listener, origDst OrigDstFunc) error {
	return o.serve(ln, func(nc net.Conn) {
		dst, err := origDst(nc)
		if err != nil {
			o.log.Warn("original destination unavailable", slog.String("src.addr", nc.RemoteAddr().String()), slog.String("error", err.Error()))
			_ = nc.Close()
			return
		}
		o.Handle(context.Background(), nc, dst)
	})
}

// Handle proxies one captured connection whose original destination is
// origDst, and returns when it is done. It closes conn.
func (o *Outbound) Handle(ctx context.Context, conn net.Conn, origDst netip.AddrPort) {
	if !o.add(conn) {
		_ = conn.Close()
		return
	}
	defer o.done(conn)
	setNoDelay(conn)
	src := addrPortOf(conn.RemoteAddr())
	if origDst.Addr().IsLoopback() && isIllegalPort(origDst.Port()) {
		o.log.LogAttrs(ctx, slog.LevelWarn, "outbound connection to a proxy port rejected", slog.String("src.addr", src.String()),
			slog.String("dst.addr", origDst.String()))
		_ = conn.Close()
		return
	}
	route, err := o.cfg.Resolve(ctx, src, origDst)
	if errors.Is(err, ErrRouteRejected) {
		o.log.LogAttrs(ctx, slog.LevelDebug, "outbound connection rejected", slog.String("src.addr", src.String()),
			slog.String("dst.addr", origDst.String()), slog.String("error", err.Error()))
		abort(conn)
		return
	}
	if err != nil {
		o.log.LogAttrs(ctx, slog.LevelWarn, "outbound route failed", slog.String("src.addr", src.String()),
			slog.String("dst.addr", origDst.String()), slog.String("error", err.Error()))
		_ = conn.Close()
		return
	}
	var peer netip.AddrPort
	if route.HBONE {
		peer = route.Peer
	}
	tel := newTelemetry(o.cfg.Metrics, o.log, dirOutbound, route.Source, route.Destination, src, route.Target, peer, route.HBONE)
	if !route.HBONE {
		err = o.passthrough(ctx, conn, route, tel)
	} else {
		err = o.hbone(ctx, conn, src, route, tel)
	}
	flag := flagNone
	var ce *connectError
	if errors.As(err, &ce) {
		flag = flagConnect
	}
	tel.finish(ctx, flag, ignorable(err))
}

type connectError struct{ err error }

func (e *connectError) Error() string { return e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

func (o *Outbound) passthrough(ctx context.Context, conn net.Conn, route Route, tel *connTelemetry) error {
	dctx, cancel := context.WithTimeout(ctx, connectTimeout)
	var up net.Conn
	var err error
	if o.cfg.DialPassthrough != nil {
		up, err = o.cfg.DialPassthrough(dctx, route.Target)
	} else {
		up, err = Dialer(netip.Addr{}, false).DialContext(dctx, "tcp", route.Target.String())
	}
	cancel()
	if err != nil {
		_ = conn.Close()
		return &connectError{fmt.Errorf("connect passthrough %s: %w", route.Target, err)}
	}
	setNoDelay(up)
	return proxyTCP(conn, up, tel.addReceived, tel.addSent)
}

func (o *Outbound) hbone(ctx context.Context, conn net.Conn, src netip.AddrPort, route Route, tel *connTelemetry) error {
	key := PoolKey{SrcIdentity: route.SrcIdentity, DstIdentity: route.DstIdentity, Addr: route.Peer, SrcIP: src.Addr()}
	req := &ConnectRequest{
		Authority: route.Target.String(),
		Forwarded: src,
		Baggage:   route.Source.Baggage(),
	}
	s, err := o.cfg.Pool.Connect(ctx, key, req)
	if err != nil {
		_ = conn.Close()
		return &connectError{fmt.Errorf("hbone connect %s via %s: %w", route.Target, route.Peer, err)}
	}
	return proxyStream(conn, s, tel.addReceived, tel.addSent)
}

// tracker remembers live connections and listeners so that Shutdown can stop
// accepting and wait for connections to finish.
type tracker struct {
	mu       sync.Mutex
	lns      map[net.Listener]struct{}
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
	draining bool

	// accepted holds connections that serve accepted but whose handler has
	// not reached add yet. They count as live, so a Shutdown that starts in
	// between drains them instead of closing them unserved, which clients
	// of a restarting proxy would see as resets.
	accepted map[net.Conn]struct{}
}

func newTracker() tracker {
	return tracker{lns: map[net.Listener]struct{}{}, conns: map[net.Conn]struct{}{}, accepted: map[net.Conn]struct{}{}}
}

func (t *tracker) add(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.accepted[c]; ok {
		// serve counted it in wg already.
		delete(t.accepted, c)
		t.conns[c] = struct{}{}
		return true
	}
	if t.draining {
		return false
	}
	t.conns[c] = struct{}{}
	t.wg.Add(1)
	return true
}

func (t *tracker) done(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	t.wg.Done()
}

func (t *tracker) serve(ln net.Listener, handle func(net.Conn)) error {
	t.mu.Lock()
	if t.draining {
		t.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	t.lns[ln] = struct{}{}
	t.mu.Unlock()
	for {
		nc, err := ln.Accept()
		if err != nil {
			t.mu.Lock()
			delete(t.lns, ln)
			draining := t.draining
			t.mu.Unlock()
			if draining {
				return ErrServerClosed
			}
			return fmt.Errorf("accept: %w", err)
		}
		t.mu.Lock()
		t.accepted[nc] = struct{}{}
		t.wg.Add(1)
		t.mu.Unlock()
		go func() {
			handle(nc)
			// A handler that returned without reaching add (no original
			// destination, for example) releases the count here.
			t.mu.Lock()
			_, unclaimed := t.accepted[nc]
			delete(t.accepted, nc)
			t.mu.Unlock()
			if unclaimed {
				t.wg.Done()
			}
		}()
	}
}

// Shutdown closes the listeners and waits for open connections to finish
// until ctx ends; then it closes them and returns ctx's error.
func (t *tracker) Shutdown(ctx context.Context) error {
	t.mu.Lock()
	t.draining = true
	for ln := range t.lns {
		_ = ln.Close()
	}
	t.mu.Unlock()
	finished := make(chan struct{})
	go func() { t.wg.Wait(); close(finished) }()
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
	}
	t.mu.Lock()
	for c := range t.conns {
		_ = c.Close()
	}
	for c := range t.accepted {
		_ = c.Close()
	}
	t.mu.Unlock()
	<-finished
	return ctx.Err()
}
