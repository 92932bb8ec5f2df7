package tunnel

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
)

// Plaintext is the inbound proxy for clients outside the mesh (port 15006):
// it applies the Authorize hook to each captured connection, then connects
// it to the local application.
type Plaintext struct {
	cfg InboundConfig
	log *slog.Logger
	tracker
}

// NewPlaintext returns a plaintext inbound proxy; TLSConfig is not used.
func NewPlaintext(cfg InboundConfig) *Plaintext {
	return &Plaintext{cfg: cfg, log: cfg.logger(), tracker: newTracker()}
}

// Serve accepts captured connections until ln fails or Shutdown closes it.
// origDst supplies the original destination; nil uses the local address,
// which is right for TPROXY capture.
func (p *Plaintext) Serve(ln net.Listener, origDst OrigDstFunc) error {
	return p.serve(ln, func(nc net.Conn) {
		dst := addrPortOf(nc.LocalAddr())
		if origDst != nil {
			var err error
			if dst, err = origDst(nc); err != nil {
				p.log.Warn("original destination unavailable", slog.String("src.addr", nc.RemoteAddr().String()), slog.String("error", err.Error()))
				_ = nc.Close()
				return
			}
		}
		p.Handle(context.Background(), nc, dst)
	})
}

// Handle proxies one plaintext connection to dst and closes it when done.
func (p *Plaintext) Handle(ctx context.Context, conn net.Conn, dst netip.AddrPort) {
	if !p.add(conn) {
		_ = conn.Close()
		return
	}
	defer p.done(conn)
	setNoDelay(conn)
	ir := &InboundRequest{Source: addrPortOf(conn.RemoteAddr()), Destination: dst}
	var srcW, dstW Workload
	if p.cfg.Workloads != nil {
		srcW, dstW = p.cfg.Workloads(ir)
	}
	tel := newTelemetry(p.cfg.Metrics, p.log, dirInbound, srcW, dstW, ir.Source, dst, netip.AddrPort{}, false)
	if p.cfg.Authorize != nil {
		if err := p.cfg.Authorize(ctx, ir); err != nil {
			_ = conn.Close()
			tel.finish(ctx, flagDeny, fmt.Errorf("%w: %w", errDenied, err))
			return
		}
	}
	dctx, cancel := context.WithTimeout(ctx, connectTimeout)
	up, err := p.cfg.dial(dctx, ir.Source.Addr(), dst)
	cancel()
	if err != nil {
		_ = conn.Close()
		tel.finish(ctx, flagConnect, fmt.Errorf("connect upstream %s: %w", dst, err))
		return
	}
	setNoDelay(up)
	err = proxyTCP(conn, up, tel.addReceived, tel.addSent)
	tel.finish(ctx, flagNone, ignorable(err))
}
