package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// This file holds a small HTTP/2 endpoint that speaks only what HBONE needs:
// CONNECT streams carrying opaque bytes. Frame encoding and HPACK come from
// golang.org/x/net/http2; the connection and stream state machine is ours.
//
// NOTE: x/net's http2.Server and http2.Transport were not used for the data
// path because every DATA frame there crosses two extra goroutines (the frame
// reader hands to the serve loop, and request/response bodies go through a
// pipe). On a small machine each hand-off costs a scheduler wake-up. Here the
// frame reader writes DATA straight to the local TCP socket when that socket
// accepts it without blocking, and a sender writes its frame to the TLS
// connection itself, so each direction costs one wake-up, like a plain proxy.

// HTTP/2 parameters, matching ztunnel's.
const (
	streamWindow     = 4 << 20  // SETTINGS_INITIAL_WINDOW_SIZE we advertise
	connWindow       = 16 << 20 // connection receive window we advertise
	maxFrameSize     = 1 << 20  // SETTINGS_MAX_FRAME_SIZE we advertise
	clientMaxHeaders = 16 << 10 // header list limit of the client
	serverMaxHeaders = 64 << 10 // header list limit of the server
	serverMaxStreams = 200      // SETTINGS_MAX_CONCURRENT_STREAMS of the server
	defaultWindow    = 65535    // RFC 9113 initial windows before SETTINGS
	frameHeaderLen   = 9
)

// PING keepalive: a PING after pingInterval without frames from the peer,
// and a close when it stays unanswered for pingTimeout. They are atomic
// variables so that tests can shorten them while other connections run.
var pingInterval, pingTimeout atomic.Int64

func init() {
	pingInterval.Store(int64(10 * time.Second))
	pingTimeout.Store(int64(20 * time.Second))
}

var clientPreface = []byte(http2.ClientPreface)

// errConnClosed reports use of a closed HBONE connection.
var errConnClosed = errors.New("hbone connection closed")

// ErrRefused reports that the peer refused a stream before processing it
// (RST_STREAM REFUSED_STREAM, or a GOAWAY below the stream's ID). Opening the
// stream again on another connection is safe.
var ErrRefused = errors.New("hbone stream rejected by the peer before processing; retry on another connection")

// StreamResetError reports that the peer reset a stream.
type StreamResetError struct{ Code http2.ErrCode }

func (e StreamResetError) Error() string { return "hbone stream reset by peer: " + e.Code.String() }

// h2conn is one HTTP/2 connection over TLS, client or server side.
type h2conn struct {
	nc       net.Conn // the TLS connection
	bc       *bufConn // the socket under nc, when it is buffered
	isClient bool
	fr       *http2.Framer

	// wmu serializes writes to nc. Lock order: wmu before mu, never the
	// reverse. Release it with unlockW, which also flushes control frames.
	wmu  sync.Mutex
	henc *hpack.Encoder
	hbuf bytes.Buffer
	wbuf []byte // scratch for Stream.Write, guarded by wmu

	mu             sync.Mutex
	cond           *sync.Cond // on mu; signalled when send windows grow or streams end
	streams        map[uint32]*Stream
	nextID         uint32 // next client stream ID
	lastPeerID     uint32 // highest stream ID the peer opened (server side)
	reserved       int    // stream slots promised by the pool (client side)
	peerMaxStreams uint32
	peerWindow     int64 // peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerMaxFrame   uint32
	sendWindow     int64 // connection-level send window
	goAwayRecv     bool
	goAwaySent     bool
	closeErr       error // set once the connection is dead
	idleSince      time.Time

	recvUnacked int64 // connection-level bytes consumed, not yet returned; atomic
	recvWindow  int64 // connection-level receive window left to the peer; atomic

	// Control frames (WINDOW_UPDATE, PING, RST_STREAM, SETTINGS ACK) are
	// queued here and written by the next goroutine that holds wmu, so that the frame
	// reader never waits for a sender blocked on a full socket. Otherwise two
	// peers sending bulk data both ways could each block their reader behind
	// their own writer and deadlock.
	ctrlMu      sync.Mutex
	ctrlBuf     bytes.Buffer
	ctrlFr      *http2.Framer // writes into ctrlBuf
	ctrlOut     []byte        // guarded by wmu
	ctrlPending atomic.Bool

	lastRead  atomic.Int64 // unix nanoseconds of the last frame read
	pingOut   atomic.Int64 // unix nanoseconds of an unanswered PING, or 0
	done      chan struct{}
	closeOnce sync.Once

	onStream func(s *Stream, req *Request, err error) // server: runs in a new goroutine per request
	onIdle   func()                                   // called when the stream count drops to zero
}

func newH2Conn(nc net.Conn, isClient bool) *h2conn {
	c := &h2conn{
		nc:             nc,
		isClient:       isClient,
		streams:        make(map[uint32]*Stream),
		nextID:         1,
		peerMaxStreams: 100,
		peerWindow:     defaultWindow,
		peerMaxFrame:   16 << 10,
		sendWindow:     defaultWindow,
		idleSince:      time.Now(),
		recvWindow:     connWindow,
		done:           make(chan struct{}),
	}
	c.cond = sync.NewCond(&c.mu)
	c.fr = http2.NewFramer(nc, nc)
	c.fr.SetReuseFrames()
	c.fr.SetMaxReadFrameSize(maxFrameSize)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = clientMaxHeaders
	if !isClient {
		// The decoder accepts four times the advertised limit, and
		// parseRequest enforces the limit itself. A request just above it
		// then gets 431 instead of the connection error that the decoder
		// raises for a single header value above its limit.
		c.fr.MaxHeaderListSize = 4 * serverMaxHeaders
	}
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.ctrlFr = http2.NewFramer(&c.ctrlBuf, nil)
	c.lastRead.Store(time.Now().UnixNano())
	return c
}

// start sends the preface and our SETTINGS, then runs the frame reader and
// the keepalive loop. The server side must have completed the TLS handshake
// first, so that a handshake failure does not look like an HTTP/2 error.
func (c *h2conn) start() error {
	settings := []http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		{ID: http2.SettingMaxFrameSize, Val: maxFrameSize},
	}
	if c.isClient {
		settings = append(settings,
			http2.Setting{ID: http2.SettingEnablePush, Val: 0},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: clientMaxHeaders})
	} else {
		settings = append(settings,
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: serverMaxStreams},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: serverMaxHeaders})
	}
	c.wmu.Lock()
	err := c.writePrefaceLocked(settings)
	c.unlockW()
	if err != nil {
		c.close(err)
		return fmt.Errorf("write http2 preface: %w", err)
	}
	go c.readLoop()
	go c.keepalive()
	return nil
}

func (c *h2conn) writePrefaceLocked(settings []http2.Setting) error {
	if c.isClient {
		if _, err := c.nc.Write(clientPreface); err != nil {
			return err
		}
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		return err
	}
	return c.fr.WriteWindowUpdate(0, connWindow-defaultWindow)
}

// close tears the connection down and fails every stream with err.
func (c *h2conn) close(err error) {
	c.closeOnce.Do(func() {
		if err == nil {
			err = errConnClosed
		}
		c.mu.Lock()
		c.closeErr = err
		streams := make([]*Stream, 0, len(c.streams))
		for _, s := range c.streams {
			streams = append(streams, s)
		}
		clear(c.streams)
		c.cond.Broadcast()
		c.mu.Unlock()
		for _, s := range streams {
			s.fail(err, err)
		}
		_ = c.nc.Close()
		close(c.done)
	})
}

// isClosed reports whether the connection is dead.
func (c *h2conn) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// numStreams returns the number of open streams.
func (c *h2conn) numStreams() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams)
}

// readLoop reads frames until the connection fails.
func (c *h2conn) readLoop() {
	err := c.readPreface()
	for err == nil {
		var f http2.Frame
		f, err = c.fr.ReadFrame()
		if err != nil {
			err = c.handleReadError(f, err)
			continue
		}
		c.lastRead.Store(time.Now().UnixNano())
		err = c.handleFrame(f)
	}
	c.close(err)
}

func (c *h2conn) readPreface() error {
	if c.isClient {
		return nil
	}
	buf := make([]byte, len(clientPreface))
	if _, err := io.ReadFull(c.nc, buf); err != nil {
		return fmt.Errorf("read http2 preface: %w", err)
	}
	if !bytes.Equal(buf, clientPreface) {
		return errors.New("invalid http2 client preface")
	}
	return nil
}

// handleReadError turns a stream error into RST_STREAM and keeps the
// connection; anything else ends it, after a GOAWAY for protocol errors.
func (c *h2conn) handleReadError(f http2.Frame, err error) error {
	var se http2.StreamError
	if errors.As(err, &se) {
		if s := c.stream(se.StreamID); s != nil {
			s.fail(StreamResetError{Code: se.Code}, StreamResetError{Code: se.Code})
			c.removeStream(s)
		} else if !c.isClient {
			c.notePeerStream(se.StreamID)
		}
		c.writeRST(se.StreamID, se.Code)
		return nil
	}
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		last := c.lastPeer()
		c.control(func(fr *http2.Framer) error { return fr.WriteGoAway(last, http2.ErrCode(ce), nil) })
	}
	return err
}

func (c *h2conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.handleData(f)
	case *http2.MetaHeadersFrame:
		return c.handleHeaders(f)
	case *http2.SettingsFrame:
		return c.handleSettings(f)
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.RSTStreamFrame:
		c.handleRST(f)
	case *http2.PingFrame:
		return c.handlePing(f)
	case *http2.GoAwayFrame:
		c.handleGoAway(f)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil
}

func (c *h2conn) stream(id uint32) *Stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

func (c *h2conn) lastPeer() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastPeerID
}

func (c *h2conn) notePeerStream(id uint32) {
	c.mu.Lock()
	if id > c.lastPeerID && id%2 == 1 {
		c.lastPeerID = id
	}
	c.mu.Unlock()
}

func (c *h2conn) handleData(f *http2.DataFrame) error {
	id := f.Header().StreamID
	flowLen := int64(f.Header().Length)
	data := f.Data()
	padding := flowLen - int64(len(data))
	if atomic.AddInt64(&c.recvWindow, -flowLen) < 0 {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	s := c.stream(id)
	if s == nil {
		// The stream is gone (reset or closed); return the flow-control credit.
		c.returnConn(flowLen)
		if !c.isClient && id > c.lastPeer() {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		c.writeRST(id, http2.ErrCodeStreamClosed)
		return nil
	}
	if err := s.deliver(data, flowLen, f.StreamEnded()); err != nil {
		c.returnConn(flowLen)
		c.writeRST(id, http2.ErrCodeFlowControl)
		s.fail(err, err)
		c.removeStream(s)
		return nil
	}
	if padding > 0 {
		c.returnConn(padding)
	}
	if f.StreamEnded() {
		c.noteRecvEnd(s)
	}
	return nil
}

func (c *h2conn) handleSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - c.peerWindow
			c.peerWindow = int64(st.Val)
			for _, s := range c.streams {
				s.sendWindow += delta
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = st.Val
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = st.Val
		}
		return nil
	})
	c.cond.Broadcast()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	c.control(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
	return nil
}

func (c *h2conn) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	id := f.Header().StreamID
	c.mu.Lock()
	defer c.mu.Unlock()
	if id == 0 {
		c.sendWindow += int64(f.Increment)
		if c.sendWindow > 1<<31-1 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
	} else if s := c.streams[id]; s != nil {
		s.sendWindow += int64(f.Increment)
	}
	c.cond.Broadcast()
	return nil
}

func (c *h2conn) handleRST(f *http2.RSTStreamFrame) {
	s := c.stream(f.Header().StreamID)
	if s == nil {
		return
	}
	var err error = StreamResetError{Code: f.ErrCode}
	if f.ErrCode == http2.ErrCodeRefusedStream {
		err = ErrRefused
	}
	readErr := err
	if f.ErrCode == http2.ErrCodeNo {
		// NO_ERROR asks us to stop sending; data already received stays readable.
		readErr = nil
	}
	s.fail(readErr, err)
	c.removeStream(s)
}

func (c *h2conn) handlePing(f *http2.PingFrame) error {
	if f.IsAck() {
		c.pingOut.Store(0)
		return nil
	}
	c.control(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
	return nil
}

func (c *h2conn) handleGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goAwayRecv = true
	var refused []*Stream
	for id, s := range c.streams {
		if id > f.LastStreamID && (id%2 == 1) == c.isClient {
			refused = append(refused, s)
			delete(c.streams, id)
		}
	}
	n := len(c.streams)
	c.cond.Broadcast()
	c.mu.Unlock()
	for _, s := range refused {
		s.fail(ErrRefused, ErrRefused)
		s.detach()
	}
	if n == 0 {
		c.close(errConnClosed)
	}
}

// keepalive sends a PING after pingInterval without frames from the peer and
// closes the connection when no response comes within pingTimeout.
func (c *h2conn) keepalive() {
	interval, timeout := time.Duration(pingInterval.Load()), time.Duration(pingTimeout.Load())
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			if out := c.pingOut.Load(); out != 0 {
				if now.UnixNano()-out > int64(timeout) {
					c.close(fmt.Errorf("hbone keepalive: no PING response within %s", timeout))
					return
				}
				continue
			}
			if now.UnixNano()-c.lastRead.Load() < int64(interval) {
				continue
			}
			c.pingOut.Store(now.UnixNano())
			c.control(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{'m', 'a', 'z', 'u'}) })
		}
	}
}

// writeRST sends RST_STREAM; errors surface through the read loop.
func (c *h2conn) writeRST(id uint32, code http2.ErrCode) {
	c.control(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
}

// returnConn credits n consumed bytes to the connection receive window.
func (c *h2conn) returnConn(n int64) {
	if atomic.AddInt64(&c.recvUnacked, n) < connWindow/4 {
		return
	}
	v := atomic.SwapInt64(&c.recvUnacked, 0)
	if v == 0 {
		return
	}
	atomic.AddInt64(&c.recvWindow, v)
	c.control(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, uint32(v)) })
}

// noteRecvEnd records END_STREAM from the peer.
func (c *h2conn) noteRecvEnd(s *Stream) {
	c.mu.Lock()
	s.recvEndSeen = true
	done := s.sentEnd
	c.mu.Unlock()
	if done {
		c.removeStream(s)
	}
}

// removeStream deletes s from the stream table. The connection goes idle when it was the last one;
// after a GOAWAY in either direction an idle connection is closed.
func (c *h2conn) removeStream(s *Stream) {
	c.mu.Lock()
	if c.streams[s.id] != s {
		c.mu.Unlock()
		return
	}
	delete(c.streams, s.id)
	s.sendErr = errStreamClosed
	idle := len(c.streams) == 0
	if idle {
		c.idleSince = time.Now()
	}
	finish := idle && (c.goAwayRecv || c.goAwaySent)
	c.cond.Broadcast()
	c.mu.Unlock()
	s.detach()
	if finish {
		c.close(errConnClosed)
	}
	if idle && c.onIdle != nil {
		c.onIdle()
	}
}

// handleHeaders handles a request on the server and a response on the client.
func (c *h2conn) handleHeaders(f *http2.MetaHeadersFrame) error {
	id := f.Header().StreamID
	if c.isClient {
		s := c.stream(id)
		if s == nil || s.resp == nil {
			return nil
		}
		// Only the first HEADERS is the response; trailers are ignored.
		select {
		case s.resp <- f:
		default:
		}
		if f.StreamEnded() {
			c.noteRecvEnd(s)
			s.mu.Lock()
			s.recvEnd = true
			s.mu.Unlock()
			s.wake()
		}
		return nil
	}
	c.mu.Lock()
	if s := c.streams[id]; s != nil {
		c.mu.Unlock()
		return nil // trailers on a CONNECT stream carry nothing we use
	}
	if id%2 == 0 || id <= c.lastPeerID {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.lastPeerID = id
	if c.goAwaySent || len(c.streams) >= serverMaxStreams {
		c.mu.Unlock()
		c.writeRST(id, http2.ErrCodeRefusedStream)
		return nil
	}
	s := newStream(c, id, c.peerWindow)
	c.streams[id] = s
	c.mu.Unlock()
	if f.StreamEnded() {
		s.recvEnd = true
		c.noteRecvEnd(s)
	}
	req, err := parseRequest(f)
	go c.onStream(s, req, err)
	return nil
}

// openStream starts a CONNECT stream on the client side and waits for the
// response HEADERS. It returns the response status with the stream; a status
// other than 200 resets the stream.
func (c *h2conn) openStream(r *ConnectRequest, done <-chan struct{}) (*Stream, *http2.MetaHeadersFrame, error) {
	c.wmu.Lock()
	c.mu.Lock()
	if c.reserved > 0 {
		c.reserved--
	}
	if c.nextID > 1<<31-1 {
		// Stream IDs are exhausted; the pool must open a new connection.
		c.goAwayRecv = true
	}
	if c.closeErr != nil && c.nextID == 1 {
		// A connection that failed before its first stream never worked,
		// as when the peer rejects this side's certificate after the TLS
		// 1.3 handshake completed here. Another connection would fail the
		// same way, so this is not a refusal to retry.
		err := c.closeErr
		c.mu.Unlock()
		c.unlockW()
		return nil, nil, fmt.Errorf("hbone connection failed before its first stream: %w", err)
	}
	if c.closeErr != nil || c.goAwayRecv {
		c.mu.Unlock()
		c.unlockW()
		return nil, nil, ErrRefused
	}
	id := c.nextID
	c.nextID += 2
	s := newStream(c, id, c.peerWindow)
	s.resp = make(chan *http2.MetaHeadersFrame, 1)
	c.streams[id] = s
	c.mu.Unlock()
	c.hbuf.Reset()
	err := encodeRequest(c.henc, r)
	if err == nil {
		err = c.writeHeaderBlockLocked(id, c.hbuf.Bytes(), false)
	}
	c.unlockW()
	if err != nil {
		c.removeStream(s)
		return nil, nil, fmt.Errorf("write CONNECT headers: %w", err)
	}
	select {
	case f := <-s.resp:
		if f == nil {
			s.mu.Lock()
			err := s.readErr
			s.mu.Unlock()
			c.removeStream(s)
			if err == nil {
				err = errConnClosed
			}
			return nil, nil, err
		}
		return s, f, nil
	case <-done:
		s.Reset(http2.ErrCodeCancel)
		return nil, nil, errors.New("hbone CONNECT canceled while waiting for the response")
	case <-c.done:
		return nil, nil, c.closeErr
	}
}

// writeFrame writes one encoded frame; the caller holds wmu. Frames larger
// than one TLS record are gathered into a single socket write.
func (c *h2conn) writeFrame(frame []byte) error {
	if c.bc == nil || len(frame) <= 16<<10 {
		_, err := c.nc.Write(frame)
		return err
	}
	c.bc.startBatch()
	_, err := c.nc.Write(frame)
	if ferr := c.bc.endBatch(); err == nil {
		err = ferr
	}
	return err
}

// control queues a control frame and writes it now unless another goroutine
// holds wmu, in which case that goroutine writes it when it releases wmu.
func (c *h2conn) control(write func(fr *http2.Framer) error) {
	c.ctrlMu.Lock()
	_ = write(c.ctrlFr)
	c.ctrlPending.Store(true)
	c.ctrlMu.Unlock()
	if c.wmu.TryLock() {
		c.unlockW()
	}
}

// unlockW writes queued control frames and releases wmu. The loop closes the
// race with a control call that queued a frame after the flush but failed
// TryLock before the Unlock.
func (c *h2conn) unlockW() {
	for {
		c.flushControlLocked()
		c.wmu.Unlock()
		if !c.ctrlPending.Load() || !c.wmu.TryLock() {
			return
		}
	}
}

func (c *h2conn) flushControlLocked() {
	if !c.ctrlPending.Load() {
		return
	}
	c.ctrlMu.Lock()
	c.ctrlOut = append(c.ctrlOut[:0], c.ctrlBuf.Bytes()...)
	c.ctrlBuf.Reset()
	c.ctrlPending.Store(false)
	c.ctrlMu.Unlock()
	if _, err := c.nc.Write(c.ctrlOut); err != nil {
		go c.close(fmt.Errorf("write hbone control frame: %w", err))
	}
}
