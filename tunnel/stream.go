package tunnel

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
)

var errStreamClosed = errors.New("hbone stream closed")

// Stream is one HBONE CONNECT stream: a byte stream in each direction.
// Read and WriteTo may be used by one goroutine, Write and ReadFrom by another.
type Stream struct {
	c  *h2conn
	id uint32

	// Send side, guarded by c.mu.
	sendWindow  int64
	sentEnd     bool
	recvEndSeen bool
	sendErr     error

	// Receive side, guarded by mu.
	mu         sync.Mutex
	buf        []byte
	off        int
	recvEnd    bool
	readErr    error
	recvWindow int64
	unacked    int64
	notify     chan struct{}
	sink       syscall.RawConn // local socket the reader loop may write to directly
	writing    bool            // WriteTo is writing outside mu
	countDown  func(int64)     // counts bytes handed to the local side; set before WriteTo
	detached   bool            // removed from the stream table; its buffer is already credited

	resp chan *http2.MetaHeadersFrame // client: the response HEADERS
	// Request is the parsed CONNECT request (server side).
	req *Request
}

func newStream(c *h2conn, id uint32, peerWindow int64) *Stream {
	return &Stream{
		c:          c,
		id:         id,
		sendWindow: peerWindow,
		recvWindow: streamWindow,
		notify:     make(chan struct{}, 1),
	}
}

func (s *Stream) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// fail ends the stream with readErr for readers (nil leaves reads alone) and
// sendErr for writers.
func (s *Stream) fail(readErr, sendErr error) {
	s.c.mu.Lock()
	if s.sendErr == nil || s.sendErr == errStreamClosed {
		s.sendErr = sendErr
	}
	s.c.cond.Broadcast()
	s.c.mu.Unlock()
	if readErr == nil {
		return
	}
	s.mu.Lock()
	if s.readErr == nil {
		s.readErr = readErr
	}
	s.mu.Unlock()
	s.wake()
	if s.resp != nil {
		select {
		case s.resp <- nil:
		default:
		}
	}
}

// deliver runs on the reader loop with the payload of one DATA frame. When a
// local socket is attached and nothing is queued, the data goes straight to
// that socket without blocking. What the socket does not take is queued.
func (s *Stream) deliver(data []byte, flowLen int64, end bool) error {
	s.mu.Lock()
	if s.detached {
		// The stream left the table after the frame reader looked it up.
		s.mu.Unlock()
		s.c.returnConn(flowLen)
		return nil
	}
	s.recvWindow -= flowLen
	if s.recvWindow < 0 {
		s.mu.Unlock()
		return errors.New("hbone peer exceeded the stream flow-control window")
	}
	direct := 0
	if s.sink != nil && !s.writing && s.off == len(s.buf) && len(data) > 0 && s.readErr == nil {
		direct = writeNonblocking(s.sink, data)
	}
	if direct < len(data) {
		s.buf = append(s.buf, data[direct:]...)
	}
	if end {
		s.recvEnd = true
	}
	var connCredit, streamCredit int64
	if direct > 0 {
		connCredit, streamCredit = s.consumedLocked(int64(direct))
	}
	s.mu.Unlock()
	if direct < len(data) || end {
		s.wake()
	}
	if direct > 0 {
		if s.countDown != nil {
			s.countDown(int64(direct))
		}
		s.credit(connCredit, streamCredit)
	}
	return nil
}

// consumedLocked records n consumed bytes and returns the flow-control
// credit due now to the connection and to the stream. A detached stream's
// bytes were credited when it left the stream table.
func (s *Stream) consumedLocked(n int64) (conn, stream int64) {
	if s.detached {
		return 0, 0
	}
	s.unacked += n
	if s.unacked < streamWindow/4 || s.recvEnd {
		return n, 0
	}
	v := s.unacked
	s.unacked = 0
	s.recvWindow += v
	return n, v
}

// credit returns consumed bytes to the peer's send windows.
func (s *Stream) credit(conn, stream int64) {
	if conn > 0 {
		s.c.returnConn(conn)
	}
	if stream > 0 {
		s.c.control(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(s.id, uint32(stream)) })
	}
}

// detach marks s as gone from the stream table and credits the connection
// with the bytes still buffered, so that streams reset with unread data do
// not shrink the connection window for good.
func (s *Stream) detach() {
	s.mu.Lock()
	var buffered int64
	if !s.detached {
		s.detached = true
		buffered = int64(len(s.buf) - s.off)
	}
	s.mu.Unlock()
	if buffered > 0 {
		s.c.returnConn(buffered)
	}
}

// writeNonblocking writes as much of p as the socket takes now.
func writeNonblocking(rc syscall.RawConn, p []byte) int {
	n := 0
	_ = rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			m, err := unix.Write(int(fd), p[n:])
			if err == unix.EINTR {
				continue
			}
			if err != nil || m <= 0 {
				break
			}
			n += m
		}
		return true
	})
	return n
}

// Read reads data the peer sent. It returns io.EOF after END_STREAM.
func (s *Stream) Read(p []byte) (int, error) {
	for {
		s.mu.Lock()
		if s.off < len(s.buf) {
			n := copy(p, s.buf[s.off:])
			s.off += n
			s.compactLocked()
			connCredit, streamCredit := s.consumedLocked(int64(n))
			s.mu.Unlock()
			s.credit(connCredit, streamCredit)
			return n, nil
		}
		if err := s.readErr; err != nil {
			s.mu.Unlock()
			return 0, err
		}
		if s.recvEnd {
			s.mu.Unlock()
			return 0, io.EOF
		}
		s.mu.Unlock()
		<-s.notify
	}
}

// compactLocked drops consumed bytes from the receive buffer, so that it
// stays within the stream window even when the consumer never catches up
// completely. The caller must not be writing from s.buf outside the lock.
func (s *Stream) compactLocked() {
	if s.off < len(s.buf) {
		if s.off >= 64<<10 && s.off*2 >= len(s.buf) {
			n := copy(s.buf, s.buf[s.off:])
			s.buf = s.buf[:n]
			s.off = 0
		}
		return
	}
	s.off = 0
	if cap(s.buf) > 256<<10 {
		s.buf = nil
	} else {
		s.buf = s.buf[:0]
	}
}

// WriteTo copies what the peer sends to w until END_STREAM, and returns nil
// then. When w is a socket, the connection's reader writes to it directly as
// long as it takes data without blocking.
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if sc, ok := w.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			s.mu.Lock()
			s.sink = rc
			s.mu.Unlock()
			defer func() {
				s.mu.Lock()
				s.sink = nil
				s.mu.Unlock()
			}()
		}
	}
	for {
		s.mu.Lock()
		if s.off < len(s.buf) {
			chunk := s.buf[s.off:]
			s.writing = true
			s.mu.Unlock()
			n, err := w.Write(chunk)
			total += int64(n)
			if n > 0 && s.countDown != nil {
				s.countDown(int64(n))
			}
			s.mu.Lock()
			s.writing = false
			s.off += n
			s.compactLocked()
			connCredit, streamCredit := s.consumedLocked(int64(n))
			s.mu.Unlock()
			s.credit(connCredit, streamCredit)
			if err != nil {
				return total, err
			}
			continue
		}
		if err := s.readErr; err != nil {
			s.mu.Unlock()
			return total, err
		}
		if s.recvEnd {
			s.mu.Unlock()
			return total, nil
		}
		s.mu.Unlock()
		<-s.notify
	}
}

// reserve waits until up to n bytes may be sent and takes them from the send
// windows. It returns how many bytes were granted.
func (s *Stream) reserve(n int) (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if s.sendErr != nil {
			return 0, s.sendErr
		}
		if c.closeErr != nil {
			return 0, c.closeErr
		}
		if s.sentEnd {
			return 0, errors.New("hbone stream write after close")
		}
		w := min(s.sendWindow, c.sendWindow, int64(c.peerMaxFrame), int64(n))
		if w > 0 {
			s.sendWindow -= w
			c.sendWindow -= w
			return int(w), nil
		}
		c.cond.Wait()
	}
}

// sendFrames sends buf[off:end] as DATA frames. The frameHeaderLen bytes in
// front of each frame's payload are overwritten with its header, so that each
// frame goes out in one TLS write without a copy. The caller must leave
// buf[off-9:off] free.
func (s *Stream) sendFrames(buf []byte, off, end int) (int, error) {
	sent := 0
	for off < end {
		m, err := s.reserve(end - off)
		if err != nil {
			return sent, err
		}
		putFrameHeader(buf[off-frameHeaderLen:off], m, http2.FrameData, 0, s.id)
		s.c.wmu.Lock()
		err = s.c.writeFrame(buf[off-frameHeaderLen : off+m])
		s.c.unlockW()
		if err != nil {
			s.c.close(err)
			return sent, fmt.Errorf("write hbone frame: %w", err)
		}
		off += m
		sent += m
	}
	return sent, nil
}

func putFrameHeader(h []byte, length int, t http2.FrameType, flags http2.Flags, id uint32) {
	h[0], h[1], h[2] = byte(length>>16), byte(length>>8), byte(length)
	h[3] = byte(t)
	h[4] = byte(flags)
	h[5], h[6], h[7], h[8] = byte(id>>24), byte(id>>16), byte(id>>8), byte(id)
}

// Write sends p as DATA frames.
func (s *Stream) Write(p []byte) (int, error) {
	bp := getBuf(copyBufSmall)
	defer putBuf(bp)
	buf := *bp
	written := 0
	for written < len(p) {
		n := copy(buf[frameHeaderLen:], p[written:])
		m, err := s.sendFrames(buf, frameHeaderLen, frameHeaderLen+n)
		written += m
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// ReadFrom sends what r yields until io.EOF. It does not end the stream.
func (s *Stream) ReadFrom(r io.Reader) (int64, error) {
	size := copyBufSmall
	bp := getBuf(size)
	defer func() { putBuf(bp) }()
	var total int64
	for {
		buf := *bp
		n, rerr := r.Read(buf[frameHeaderLen:])
		if n > 0 {
			m, err := s.sendFrames(buf, frameHeaderLen, frameHeaderLen+n)
			total += int64(m)
			if err != nil {
				return total, err
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
		// Grow the buffer for bulk transfers, as ztunnel does, so that idle
		// connections keep only a small one.
		if size == copyBufSmall && total >= copyGrowAfter {
			putBuf(bp)
			size = copyBufLarge
			bp = getBuf(size)
		}
	}
}

// CloseWrite ends the stream in the sending direction (END_STREAM).
func (s *Stream) CloseWrite() error {
	c := s.c
	c.wmu.Lock()
	c.mu.Lock()
	if s.sentEnd || s.sendErr != nil || c.closeErr != nil {
		c.mu.Unlock()
		c.unlockW()
		return nil
	}
	s.sentEnd = true
	done := s.recvEndSeen
	c.mu.Unlock()
	err := c.fr.WriteData(s.id, true, nil)
	c.unlockW()
	if done {
		c.removeStream(s)
	}
	if err != nil {
		return fmt.Errorf("write END_STREAM: %w", err)
	}
	return nil
}

// Reset aborts the stream with RST_STREAM and the given code.
func (s *Stream) Reset(code http2.ErrCode) {
	c := s.c
	c.mu.Lock()
	_, live := c.streams[s.id]
	c.mu.Unlock()
	s.fail(errStreamClosed, errStreamClosed)
	c.removeStream(s)
	if live {
		c.writeRST(s.id, code)
	}
}

// Close ends the stream: gracefully if both directions have ended, with
// RST_STREAM CANCEL otherwise.
func (s *Stream) Close() error {
	s.Reset(http2.ErrCodeCancel)
	return nil
}

// writeHeaders sends a HEADERS frame (with CONTINUATION frames as needed).
func (s *Stream) writeHeaders(fields []hpack.HeaderField, end bool) error {
	c := s.c
	c.wmu.Lock()
	defer c.unlockW()
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	if end {
		c.mu.Lock()
		s.sentEnd = true
		c.mu.Unlock()
	}
	return c.writeHeaderBlockLocked(s.id, c.hbuf.Bytes(), end)
}

// writeHeaderBlockLocked writes an encoded header block, split to the peer's
// frame size.
func (c *h2conn) writeHeaderBlockLocked(id uint32, block []byte, end bool) error {
	c.mu.Lock()
	maxFrame := int(c.peerMaxFrame)
	c.mu.Unlock()
	first := true
	for first || len(block) > 0 {
		chunk := block[:min(len(block), maxFrame)]
		block = block[len(chunk):]
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{
				StreamID: id, BlockFragment: chunk, EndStream: end, EndHeaders: len(block) == 0,
			})
			first = false
		} else {
			err = c.fr.WriteContinuation(id, len(block) == 0, chunk)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Copy buffer sizes: small for every connection, large once a transfer shows
// it is bulk.
const (
	copyBufSmall  = 16<<10 + frameHeaderLen
	copyBufLarge  = 256<<10 + frameHeaderLen
	copyGrowAfter = 256 << 10
)

var bufPools sync.Map // size -> *sync.Pool

func getBuf(size int) *[]byte {
	p, _ := bufPools.LoadOrStore(size, &sync.Pool{New: func() any {
		b := make([]byte, size)
		return &b
	}})
	return p.(*sync.Pool).Get().(*[]byte)
}

func putBuf(b *[]byte) {
	if p, ok := bufPools.Load(len(*b)); ok {
		p.(*sync.Pool).Put(b)
	}
}
