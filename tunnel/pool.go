package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// PoolKey identifies the HBONE connections that streams may share, as
// ztunnel keys its pool: source identity, destination identity, destination
// HBONE address and source IP.
type PoolKey struct {
	SrcIdentity Identity
	DstIdentity Identity
	// Addr is the HBONE address of the peer, normally <pod IP>:15008.
	Addr netip.AddrPort
	// SrcIP is the local address connections come from; it may be invalid
	// when the kernel chooses.
	SrcIP netip.Addr
}

// ClientConfig configures a Pool. The zero value of every field except
// TLSConfig is usable.
type ClientConfig struct {
	// TLSConfig returns the client TLS configuration for a connection with
	// key. It must present key.SrcIdentity's certificate and verify that the
	// server at key.Addr holds key.DstIdentity. The pool forces TLS 1.3 and
	// ALPN h2 on a clone.
	TLSConfig func(key PoolKey) (*tls.Config, error)
	// Dial opens the TCP connection for key. The default dials key.Addr from
	// key.SrcIP with ztunnel's socket settings. Replace it to dial from
	// inside a pod's network namespace.
	Dial func(ctx context.Context, key PoolKey) (net.Conn, error)
	// MaxStreams limits concurrent streams per connection; the effective
	// limit is the smaller of this and the peer's setting. Default 100.
	MaxStreams int
	// IdleTimeout closes connections without streams after this long.
	// Default 5 minutes.
	IdleTimeout time.Duration
}

// Pool multiplexes CONNECT streams over shared HBONE connections. A
// connection takes new streams until it reaches its stream limit or receives
// GOAWAY. It is safe for concurrent use; Close releases it.
type Pool struct {
	cfg ClientConfig

	mu     sync.Mutex
	conns  map[PoolKey][]*h2conn
	dialMu map[PoolKey]*sync.Mutex
	closed bool
	stop   chan struct{}
}

// NewPool returns a Pool; it fails when TLSConfig is missing.
func NewPool(cfg ClientConfig) (*Pool, error) {
	if cfg.TLSConfig == nil {
		return nil, errors.New("new hbone pool: ClientConfig.TLSConfig is missing; supply the client certificate source")
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = 100
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	p := &Pool{cfg: cfg, conns: map[PoolKey][]*h2conn{}, dialMu: map[PoolKey]*sync.Mutex{}, stop: make(chan struct{})}
	go p.janitor()
	return p, nil
}

// Connect opens a CONNECT stream to the peer in key and returns it once the
// peer responded with 200. Any other status is a *StatusError. A stream refused
// because its connection was going away is retried once on a new connection.
func (p *Pool) Connect(ctx context.Context, key PoolKey, r *ConnectRequest) (*Stream, error) {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		var c *h2conn
		c, err = p.conn(ctx, key)
		if err != nil {
			return nil, err
		}
		var s *Stream
		s, err = connectOn(ctx, c, r)
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, ErrRefused) {
			return nil, err
		}
	}
	return nil, err
}

// StatusError reports a CONNECT response with a status other than 200.
type StatusError struct{ Code int }

func (e *StatusError) Error() string {
	return "hbone CONNECT failed with response status " + strconv.Itoa(e.Code)
}

func connectOn(ctx context.Context, c *h2conn, r *ConnectRequest) (*Stream, error) {
	s, resp, err := c.openStream(r, ctx.Done())
	if err != nil {
		return nil, err
	}
	status, _ := strconv.Atoi(resp.PseudoValue("status"))
	if status != 200 {
		s.Reset(http2.ErrCodeCancel)
		return nil, &StatusError{Code: status}
	}
	return s, nil
}

// conn returns a connection for key with a stream slot reserved on it.
func (p *Pool) conn(ctx context.Context, key PoolKey) (*h2conn, error) {
	if c := p.reserve(key); c != nil {
		return c, nil
	}
	// One dial per key at a time; others wait and then share its result.
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errors.New("hbone pool closed")
	}
	dm := p.dialMu[key]
	if dm == nil {
		dm = &sync.Mutex{}
		p.dialMu[key] = dm
	}
	p.mu.Unlock()
	dm.Lock()
	defer dm.Unlock()
	if c := p.reserve(key); c != nil {
		return c, nil
	}
	c, err := p.dial(ctx, key)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.reserved++
	c.mu.Unlock()
	p.mu.Lock()
	p.conns[key] = append(p.conns[key], c)
	p.mu.Unlock()
	return c, nil
}

// reserve finds a usable connection for key and reserves a stream on it.
func (p *Pool) reserve(key PoolKey) *h2conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns[key] {
		c.mu.Lock()
		limit := min(p.cfg.MaxStreams, int(c.peerMaxStreams))
		ok := c.closeErr == nil && !c.goAwayRecv && len(c.streams)+c.reserved < limit
		if ok {
			c.reserved++
		}
		c.mu.Unlock()
		if ok {
			return c
		}
	}
	return nil
}

// dial opens, authenticates and starts a new connection.
func (p *Pool) dial(ctx context.Context, key PoolKey) (*h2conn, error) {
	base, err := p.cfg.TLSConfig(key)
	if err != nil {
		return nil, fmt.Errorf("hbone client tls config for %s: %w", key.DstIdentity, err)
	}
	dctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	var nc net.Conn
	if p.cfg.Dial != nil {
		nc, err = p.cfg.Dial(dctx, key)
	} else {
		nc, err = Dialer(netip.Addr{}, false).DialContext(dctx, "tcp", key.Addr.String())
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("dial hbone %s: connection timed out, maybe a NetworkPolicy is blocking HBONE port 15008: %w", key.Addr, err)
		}
		return nil, fmt.Errorf("dial hbone %s: %w", key.Addr, err)
	}
	setNoDelay(nc)
	conf := base.Clone()
	conf.MinVersion, conf.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	conf.NextProtos = []string{http2.NextProtoTLS}
	bc := newBufConn(nc)
	tc := tls.Client(bc, conf)
	if err := tc.HandshakeContext(dctx); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("hbone tls handshake with %s: %w", key.Addr, err)
	}
	if err := checkConnState(tc.ConnectionState(), false); err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("hbone tls handshake with %s: %w", key.Addr, err)
	}
	c := newH2Conn(tc, true)
	c.bc = bc
	if err := c.start(); err != nil {
		return nil, fmt.Errorf("start hbone connection to %s: %w", key.Addr, err)
	}
	return c, nil
}

// janitor drops dead connections and closes idle ones.
func (p *Pool) janitor() {
	t := time.NewTicker(min(p.cfg.IdleTimeout/2, 30*time.Second))
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.evict(time.Now())
		}
	}
}

func (p *Pool) evict(now time.Time) {
	var idle []*h2conn
	p.mu.Lock()
	for key, list := range p.conns {
		kept := list[:0]
		for _, c := range list {
			c.mu.Lock()
			dead := c.closeErr != nil
			isIdle := len(c.streams) == 0 && c.reserved == 0 && now.Sub(c.idleSince) >= p.cfg.IdleTimeout
			gone := c.goAwayRecv && len(c.streams) == 0
			c.mu.Unlock()
			switch {
			case dead:
			case isIdle || gone:
				idle = append(idle, c)
			default:
				kept = append(kept, c)
			}
		}
		if len(kept) == 0 {
			delete(p.conns, key)
			delete(p.dialMu, key)
		} else {
			p.conns[key] = kept
		}
	}
	p.mu.Unlock()
	for _, c := range idle {
		c.close(errConnClosed)
	}
}

// Len returns the number of pooled connections, for tests and debugging.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, list := range p.conns {
		for _, c := range list {
			if !c.isClosed() {
				n++
			}
		}
	}
	return n
}

// Close closes every pooled connection and their streams.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.stop)
	var all []*h2conn
	for _, list := range p.conns {
		all = append(all, list...)
	}
	clear(p.conns)
	p.mu.Unlock()
	for _, c := range all {
		c.close(errConnClosed)
	}
	return nil
}
