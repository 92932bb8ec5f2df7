package tunnel

import (
	"io"
	"net"
	"testing"
	"time"
)

// BenchmarkPassthroughCopy compares the two ways to copy between TCP sockets
// in a one-hop proxy on loopback: io.Copy, which splices on Linux, and a
// user-space copy with a 256 KiB buffer. b.N counts 1 MiB units.
func BenchmarkPassthroughCopy(b *testing.B) {
	for _, tc := range []struct {
		name string
		copy func(dst, src net.Conn)
	}{
		{"splice", func(dst, src net.Conn) { _, _ = io.Copy(dst, src) }},
		{"buffer-256KiB", func(dst, src net.Conn) {
			buf := make([]byte, 256<<10)
			_, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
		}},
	} {
		b.Run("copy="+tc.name, func(b *testing.B) {
			sink := mustListen(b, "127.0.0.1:0")
			done := make(chan int64, 1)
			go func() {
				c, err := sink.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				buf := make([]byte, 256<<10)
				var n int64
				for {
					m, err := c.Read(buf)
					n += int64(m)
					if err != nil {
						break
					}
				}
				done <- n
			}()
			proxy := mustListen(b, "127.0.0.1:0")
			go func() {
				c, err := proxy.Accept()
				if err != nil {
					return
				}
				up, err := net.Dial("tcp", sink.Addr().String())
				if err != nil {
					c.Close()
					return
				}
				tc.copy(up, c)
				_ = up.(*net.TCPConn).CloseWrite()
				c.Close()
			}()
			c, err := net.Dial("tcp", proxy.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			b.SetBytes(1 << 20)
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			for i := 0; i < b.N; i++ {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			_ = c.(*net.TCPConn).CloseWrite()
			if n := <-done; n != int64(b.N)<<20 {
				b.Fatalf("sink received %d bytes, want %d", n, int64(b.N)<<20)
			}
			el, cpu := time.Since(start), cpuTime()-cpu0
			c.Close()
			b.ReportMetric(float64(int64(b.N)<<23)/el.Seconds()/1e9, "Gbit/s")
			b.ReportMetric(cpu.Seconds()/(float64(int64(b.N)<<20)/1e9), "cpu-s/GB")
		})
	}
}
