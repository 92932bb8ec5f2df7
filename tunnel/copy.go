package tunnel

import (
	"errors"
	"io"
	"net"

	"golang.org/x/net/http2"
)

// countingReader counts bytes for telemetry as they pass.
type countingReader struct {
	r   io.Reader
	add func(int64)
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.add(int64(n))
	}
	return n, err
}

// proxyStream copies between a local TCP connection and an HBONE stream until
// both directions end. EOF becomes END_STREAM and END_STREAM becomes FIN; a TCP
// reset becomes RST_STREAM CONNECT_ERROR and a stream reset becomes a TCP RST.
// up counts bytes from conn to s, down from s to conn. It closes both.
func proxyStream(conn net.Conn, s *Stream, up, down func(int64)) error {
	errc := make(chan error, 1)
	go func() { errc <- streamToConn(s, conn, down) }()
	err1 := connToStream(conn, s, up)
	if err1 != nil {
		// The local side failed: the other direction cannot go on.
		_ = conn.Close()
	}
	err2 := <-errc
	_ = conn.Close()
	_ = s.Close()
	return errors.Join(err1, err2)
}

// connToStream copies the local connection into the stream.
func connToStream(conn net.Conn, s *Stream, add func(int64)) error {
	_, err := s.ReadFrom(countingReader{conn, add})
	if err == nil {
		return s.CloseWrite()
	}
	if isReset(err) {
		s.Reset(http2.ErrCodeConnect)
		return err
	}
	s.Reset(http2.ErrCodeCancel)
	return err
}

// streamToConn copies the stream into the local connection. Byte counting
// happens on the stream side so that the direct socket path stays usable.
func streamToConn(s *Stream, conn net.Conn, add func(int64)) error {
	s.mu.Lock()
	s.countDown = add
	s.mu.Unlock()
	_, err := s.WriteTo(conn)
	if err == nil {
		return closeWrite(conn)
	}
	var rst StreamResetError
	if errors.As(err, &rst) || errors.Is(err, ErrRefused) {
		abort(conn)
	} else {
		_ = conn.Close()
	}
	return err
}

// proxyTCP copies between two TCP connections with half-close and reset
// propagation. io.Copy between *net.TCPConn uses splice(2) on Linux.
func proxyTCP(a, b net.Conn, up, down func(int64)) error {
	errc := make(chan error, 1)
	go func() { errc <- copyHalf(a, b, down) }()
	err1 := copyHalf(b, a, up)
	err2 := <-errc
	_ = a.Close()
	_ = b.Close()
	return errors.Join(err1, err2)
}

// copyHalf copies src to dst, then half-closes dst; a reset on src resets dst.
func copyHalf(dst, src net.Conn, add func(int64)) error {
	n, err := io.Copy(dst, src)
	add(n)
	if err == nil {
		return closeWrite(dst)
	}
	if isReset(err) {
		abort(dst)
	}
	_ = src.Close()
	return err
}
