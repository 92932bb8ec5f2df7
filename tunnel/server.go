package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// InboundRequest describes an inbound connection to an Authorizer.
type InboundRequest struct {
	// Source is the TCP peer of the HBONE connection, or the client of a
	// plaintext connection.
	Source netip.AddrPort
	// Destination is the target of the CONNECT (or the original destination
	// of a plaintext connection).
	Destination netip.AddrPort
	// PeerCertificates is the verified client chain; empty for plaintext.
	PeerCertificates []*x509.Certificate
	// PeerIdentities are the URI SANs of the client leaf certificate.
	PeerIdentities []Identity
	// Request is the parsed CONNECT request; nil for plaintext.
	Request *Request
}

// Authorizer decides whether an inbound connection may proceed. A non-nil
// error denies it (HTTP 401 for HBONE, a closed connection for plaintext).
type Authorizer func(ctx context.Context, r *InboundRequest) error

// InboundConfig configures the inbound HBONE Server and the plaintext
// inbound proxy. The zero value of every field except TLSConfig is usable.
type InboundConfig struct {
	// TLSConfig returns the server TLS configuration for a new connection. It
	// must require and verify a client certificate. The server forces TLS 1.3
	// on a clone of it, and ALPN h2 unless every value the configuration
	// lists is h2 or ALPNMazuRBE. Required for HBONE.
	TLSConfig func() (*tls.Config, error)
	// Authorize checks each connection; nil allows every authenticated one.
	Authorize Authorizer
	// Workloads returns the telemetry description of both ends; optional.
	Workloads func(r *InboundRequest) (src, dst Workload)
	// DialUpstream connects to the local application. The default dials
	// dst with the socket settings of Dialer, binding to src when
	// OriginalSource is set. Replace it to dial inside a pod's namespace.
	DialUpstream func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error)
	// OriginalSource keeps the client's address as the source of the
	// upstream connection (IP_TRANSPARENT). The source used is the TCP peer of
	// the HBONE connection, as in ztunnel. It needs CAP_NET_ADMIN, and the
	// capture layer must route the application's replies to that address back
	// to this proxy. For example, mark the proxy's upstream sockets or
	// connections and add a policy route for the mark to the local table, as
	// istio-cni's in-pod rules do.
	OriginalSource bool
	// AnyDestination turns off ztunnel's check that the :authority IP equals
	// the local address the HBONE connection arrived at.
	AnyDestination bool
	// Metrics receives the istio_tcp_* counters; nil records nothing.
	Metrics *Metrics
	// Logger receives access logs and rejections; nil discards them.
	Logger *slog.Logger
	// HandshakeTimeout bounds the TLS handshake; 10s when zero.
	HandshakeTimeout time.Duration
}

func (cfg *InboundConfig) logger() *slog.Logger {
	if cfg.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return cfg.Logger
}

func (cfg *InboundConfig) dial(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	if cfg.DialUpstream != nil {
		return cfg.DialUpstream(ctx, src, dst)
	}
	return Dialer(src, cfg.OriginalSource).DialContext(ctx, "tcp", dst.String())
}

// Server terminates HBONE: it accepts mTLS connections, serves CONNECT
// streams, authorizes them and connects each to the local application. It is
// safe for concurrent use; one Server may serve many listeners.
type Server struct {
	cfg InboundConfig
	log *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*h2conn]struct{}
	draining  bool
}

// NewServer returns a Server; it fails when TLSConfig is missing.
func NewServer(cfg InboundConfig) (*Server, error) {
	if cfg.TLSConfig == nil {
		return nil, errors.New("new hbone server: InboundConfig.TLSConfig is missing; supply the server certificate source")
	}
	return &Server{cfg: cfg, log: cfg.logger(), listeners: map[net.Listener]struct{}{}, conns: map[*h2conn]struct{}{}}, nil
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("hbone server closed")

// Serve accepts connections on ln until Shutdown or an accept error.
func (srv *Server) Serve(ln net.Listener) error {
	srv.mu.Lock()
	if srv.draining {
		srv.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	srv.listeners[ln] = struct{}{}
	srv.mu.Unlock()
	defer func() {
		srv.mu.Lock()
		delete(srv.listeners, ln)
		srv.mu.Unlock()
	}()
	for {
		nc, err := ln.Accept()
		if err != nil {
			srv.mu.Lock()
			draining := srv.draining
			srv.mu.Unlock()
			if draining {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept hbone connection: %w", err)
		}
		go srv.ServeConn(nc)
	}
}

// ServeConn serves one accepted TCP connection and returns when it closes.
func (srv *Server) ServeConn(nc net.Conn) {
	setNoDelay(nc)
	base, err := srv.cfg.TLSConfig()
	if err != nil {
		srv.log.Warn("hbone tls config unavailable", slog.String("src.addr", nc.RemoteAddr().String()), slog.String("error", err.Error()))
		_ = nc.Close()
		return
	}
	conf := base.Clone()
	conf.MinVersion, conf.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	conf.NextProtos = hboneProtocols(conf.NextProtos)
	bc := newBufConn(nc)
	tc := tls.Server(bc, conf)
	timeout := srv.cfg.HandshakeTimeout
	if timeout == 0 {
		timeout = connectTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	err = tc.HandshakeContext(ctx)
	cancel()
	if err == nil {
		err = checkConnState(tc.ConnectionState(), true)
	}
	if err != nil {
		srv.log.Warn("hbone handshake failed", slog.String("src.addr", nc.RemoteAddr().String()), slog.String("error", err.Error()))
		_ = tc.Close()
		return
	}
	c := newH2Conn(tc, false)
	c.bc = bc
	state := tc.ConnectionState()
	c.onStream = func(s *Stream, req *Request, err error) { srv.handleStream(c, &state, s, req, err) }
	srv.mu.Lock()
	if srv.draining {
		srv.mu.Unlock()
		_ = tc.Close()
		return
	}
	srv.conns[c] = struct{}{}
	srv.mu.Unlock()
	if err := c.start(); err == nil {
		<-c.done
	}
	srv.mu.Lock()
	delete(srv.conns, c)
	srv.mu.Unlock()
}

// ALPNMazuRBE is the ALPN value two mazu peers negotiate to say that both
// authenticate with registration-based certificates. The connection then
// speaks HTTP/2 exactly as under "h2". Only the authentication differs.
const ALPNMazuRBE = "mazu-rbe-h2"

// isHBONEProtocol reports whether an ALPN value frames HTTP/2 as HBONE needs.
func isHBONEProtocol(p string) bool { return p == http2.NextProtoTLS || p == ALPNMazuRBE }

// hboneProtocols keeps the caller's ALPN list when every value in it frames
// HTTP/2, so that the caller can offer ALPNMazuRBE. Otherwise it forces h2.
func hboneProtocols(offered []string) []string {
	if len(offered) == 0 {
		return []string{http2.NextProtoTLS}
	}
	for _, p := range offered {
		if !isHBONEProtocol(p) {
			return []string{http2.NextProtoTLS}
		}
	}
	return offered
}

// checkConnState enforces TLS 1.3, an HTTP/2 ALPN value (h2 or
// ALPNMazuRBE) and, on the server, a client certificate.
func checkConnState(cs tls.ConnectionState, server bool) error {
	switch {
	case cs.Version != tls.VersionTLS13:
		return errors.New("hbone requires TLS 1.3")
	case !isHBONEProtocol(cs.NegotiatedProtocol):
		return fmt.Errorf("hbone requires ALPN h2, peer negotiated %q", cs.NegotiatedProtocol)
	case server && len(cs.PeerCertificates) == 0:
		return errors.New("hbone requires a client certificate")
	}
	return nil
}

// identities returns the URI SANs of the leaf certificate.
func identities(certs []*x509.Certificate) []Identity {
	if len(certs) == 0 {
		return nil
	}
	var ids []Identity
	for _, u := range certs[0].URIs {
		ids = append(ids, Identity(u.String()))
	}
	return ids
}

// rejectReason maps a refusal to ztunnel's status code and a bounded label.
func rejectStatus(err error) (int, string) {
	switch {
	case errors.Is(err, errHeadersTooLarge):
		return 431, "headers_too_large"
	case errors.Is(err, errNotConnect):
		return 400, "not_connect"
	case errors.Is(err, errMissingAuthority):
		return 400, "missing_authority"
	case errors.Is(err, errBadAuthority):
		return 400, "bad_authority"
	case errors.Is(err, errPathOrScheme):
		return 400, "path_or_scheme"
	case errors.Is(err, errIPMismatch):
		return 400, "ip_mismatch"
	case errors.Is(err, errSelfCall):
		// NOTE: ztunnel rejects these in its destination validation, next to
		// the IP mismatch; 400 is assumed to match its status for them.
		return 400, "self_call"
	case errors.Is(err, errDenied):
		return 401, "denied"
	}
	return 503, "upstream_unavailable"
}

// isIllegalPort reports whether port is one of ztunnel's own capture
// ports, which no connection may target.
func isIllegalPort(port uint16) bool {
	switch port {
	case 15001, 15006, 15008, 15080:
		return true
	}
	return false
}

var (
	errSelfCall   = errors.New("CONNECT target is a proxy port (15001, 15006, 15008 or 15080)")
	errIPMismatch = errors.New("CONNECT target IP is not the address the connection arrived at")
	errDenied     = errors.New("denied by authorization policy")
)

// handleStream serves one CONNECT request in its own goroutine.
func (srv *Server) handleStream(c *h2conn, cs *tls.ConnectionState, s *Stream, req *Request, perr error) {
	ctx := context.Background()
	src := addrPortOf(c.nc.RemoteAddr())
	local := addrPortOf(c.nc.LocalAddr())
	ir := &InboundRequest{Source: src, PeerCertificates: cs.PeerCertificates, PeerIdentities: identities(cs.PeerCertificates), Request: req}
	if perr == nil {
		ir.Destination = req.Target
		if !req.Target.IsValid() {
			// NOTE: a host-name authority is only meaningful on a gateway
			// (double HBONE); a workload's inbound proxy cannot resolve it.
			perr = errBadAuthority
		} else if isIllegalPort(req.Target.Port()) {
			perr = errSelfCall
		} else if !srv.cfg.AnyDestination && req.Target.Addr() != local.Addr() {
			perr = errIPMismatch
		}
	}
	if perr != nil {
		srv.reject(ctx, s, ir, perr)
		return
	}
	var srcW, dstW Workload
	if srv.cfg.Workloads != nil {
		srcW, dstW = srv.cfg.Workloads(ir)
	}
	if len(ir.PeerIdentities) > 0 && srcW.Identity == "" {
		srcW.Identity = ir.PeerIdentities[0]
	}
	tel := newTelemetry(srv.cfg.Metrics, srv.log, dirInbound, srcW, dstW, src, ir.Destination, netip.AddrPort{}, true)
	if srv.cfg.Authorize != nil {
		if err := srv.cfg.Authorize(ctx, ir); err != nil {
			srv.respond(s, 401, true)
			tel.finish(ctx, flagDeny, fmt.Errorf("%w: %w", errDenied, err))
			return
		}
	}
	dctx, cancel := context.WithTimeout(ctx, connectTimeout)
	up, err := srv.cfg.dial(dctx, src.Addr(), ir.Destination)
	cancel()
	if err != nil {
		srv.respond(s, 503, true)
		tel.finish(ctx, flagConnect, fmt.Errorf("connect upstream %s: %w", ir.Destination, err))
		return
	}
	setNoDelay(up)
	var extra []hpack.HeaderField
	if b := dstW.Baggage(); b != "" {
		extra = append(extra, hpack.HeaderField{Name: headerBaggage, Value: b})
	}
	if err := srv.respond(s, 200, false, extra...); err != nil {
		_ = up.Close()
		tel.finish(ctx, flagNone, fmt.Errorf("write CONNECT response: %w", err))
		return
	}
	err = proxyStream(up, s, tel.addSent, tel.addReceived)
	tel.finish(ctx, flagNone, ignorable(err))
}

// ignorable drops the errors of a connection that simply ended, as ztunnel
// does for resets and broken pipes, keeping real failures.
func ignorable(err error) error {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (srv *Server) reject(ctx context.Context, s *Stream, ir *InboundRequest, err error) {
	code, reason := rejectStatus(err)
	_ = srv.respond(s, code, true)
	attrs := []slog.Attr{
		slog.String("src.addr", ir.Source.String()),
		slog.Int("status", code),
		slog.String("reason", reason),
		slog.String("error", err.Error()),
	}
	if len(ir.PeerIdentities) > 0 {
		attrs = append(attrs, slog.String("src.identity", string(ir.PeerIdentities[0])))
	}
	if ir.Request != nil {
		attrs = append(attrs, slog.String("dst.addr", ir.Request.Authority))
	}
	srv.log.LogAttrs(ctx, slog.LevelWarn, "hbone request rejected", attrs...)
}

// respond writes the response HEADERS; with end set it also ends the stream.
func (srv *Server) respond(s *Stream, status int, end bool, extra ...hpack.HeaderField) error {
	fields := append([]hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}, extra...)
	err := s.writeHeaders(fields, end)
	if end {
		// Nothing more to read: drop the stream without waiting for the peer.
		s.Reset(http2.ErrCodeNo)
	}
	return err
}

// Shutdown drains the server: it closes the listeners, sends GOAWAY on every
// connection, waits for open streams to finish until ctx ends, then closes
// what is left. It returns ctx's error when it had to force connections closed.
func (srv *Server) Shutdown(ctx context.Context) error {
	srv.mu.Lock()
	srv.draining = true
	for ln := range srv.listeners {
		_ = ln.Close()
	}
	conns := make([]*h2conn, 0, len(srv.conns))
	for c := range srv.conns {
		conns = append(conns, c)
	}
	srv.mu.Unlock()
	for _, c := range conns {
		c.goAway(http2.ErrCodeNo)
	}
	var forced error
	for _, c := range conns {
		select {
		case <-c.done:
		case <-ctx.Done():
			c.close(errConnClosed)
			forced = ctx.Err()
		}
	}
	return forced
}

// goAway sends GOAWAY with the last stream ID processed, and closes the
// connection at once when no stream is open.
func (c *h2conn) goAway(code http2.ErrCode) {
	c.wmu.Lock()
	c.mu.Lock()
	if c.goAwaySent || c.closeErr != nil {
		c.mu.Unlock()
		c.unlockW()
		return
	}
	c.goAwaySent = true
	last := c.lastPeerID
	idle := len(c.streams) == 0
	c.mu.Unlock()
	err := c.fr.WriteGoAway(last, code, nil)
	c.unlockW()
	if err != nil || idle {
		c.close(errConnClosed)
	}
}
