package tunnel

import (
	"bufio"
	"net"
	"sync"
	"sync/atomic"
)

// bufConn sits between crypto/tls and the TCP socket. crypto/tls reads about
// one record per read(2) and writes each 16 KiB record with its own write(2);
// on a bulk stream those system calls cost more than the cipher. bufConn
// reads ahead into a buffer and, while a large DATA frame is written, gathers
// its records into one write(2). Small frames go straight through, so
// latency is unchanged.
type bufConn struct {
	net.Conn
	r *bufio.Reader

	// batch is set and cleared under the h2conn's wmu. It is atomic because
	// tls.Conn.Close may write a close_notify alert without holding wmu.
	batch atomic.Bool
	wbuf  *[]byte // guarded by wmu
}

const bufConnReadSize = 64 << 10

func newBufConn(c net.Conn) *bufConn {
	return &bufConn{Conn: c, r: bufio.NewReaderSize(c, bufConnReadSize)}
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *bufConn) Write(p []byte) (int, error) {
	if !b.batch.Load() {
		return b.Conn.Write(p)
	}
	*b.wbuf = append(*b.wbuf, p...)
	return len(p), nil
}

var batchPool = sync.Pool{New: func() any {
	b := make([]byte, 0, copyBufLarge+64<<10)
	return &b
}}

// startBatch gathers writes until endBatch.
func (b *bufConn) startBatch() {
	b.wbuf = batchPool.Get().(*[]byte)
	b.batch.Store(true)
}

// endBatch writes what was gathered in one call.
func (b *bufConn) endBatch() error {
	b.batch.Store(false)
	_, err := b.Conn.Write(*b.wbuf)
	*b.wbuf = (*b.wbuf)[:0]
	batchPool.Put(b.wbuf)
	b.wbuf = nil
	return err
}
