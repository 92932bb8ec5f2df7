package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// startApp runs handler for every connection accepted on addr inside B.
func startApp(tb testing.TB, tp *topo, addr string, handler func(*net.TCPConn)) netip.AddrPort {
	tb.Helper()
	ln := listenIn(tb, tp.b, addr)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handler(c.(*net.TCPConn))
			}()
		}
	}()
	return apOf(ln)
}

func echoHandler(c *net.TCPConn) {
	_, _ = io.Copy(c, c)
	_ = c.CloseWrite()
}

// slowEcho echoes in 16 KiB steps with a pause, so that both proxies must
// hold back data for it in each direction.
func slowEcho(c *net.TCPConn) {
	buf := make([]byte, 16<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			time.Sleep(time.Millisecond)
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			_ = c.CloseWrite()
			return
		}
	}
}

func deadline(tb testing.TB, c net.Conn) {
	tb.Helper()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
}

func TestMesh_EchoAndLargeTransfer(t *testing.T) {
	tp := newTopo(t)
	for _, tc := range []struct {
		name string
		app  string
		size int
	}{
		{"small echo over IPv4", "198.18.80.2:0", 1},
		{"64 MiB over IPv4 keeps every byte", "198.18.80.2:0", 64 << 20},
		{"1 MiB over IPv6", "[fd00:198:18:80::2]:0", 1 << 20},
		{"8 MiB to a slow reader and writer keeps every byte", "198.18.80.2:0", 8 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			handler := echoHandler
			if strings.Contains(tc.name, "slow") {
				handler = slowEcho
			}
			app := startApp(t, tp, tc.app, handler)
			m := newMesh(t, tp, meshOpts{appAddr: app})
			c := m.dial(t)
			deadline(t, c)
			payload := make([]byte, tc.size)
			_, _ = rand.Read(payload)
			want := sha256.Sum256(payload)
			go func() {
				_, _ = c.Write(payload)
				_ = c.CloseWrite()
			}()
			h := sha256.New()
			n, err := io.Copy(h, c)
			if err != nil {
				t.Fatalf("read echo: %v", err)
			}
			if n != int64(tc.size) || !bytes.Equal(h.Sum(nil), want[:]) {
				t.Fatalf("echo returned %d bytes with a different checksum, want %d bytes", n, tc.size)
			}
		})
	}
}

func TestMesh_HalfClose(t *testing.T) {
	tp := newTopo(t)
	t.Run("client closes first, server answers after EOF", func(t *testing.T) {
		app := startApp(t, tp, "198.18.80.2:0", func(c *net.TCPConn) {
			got, _ := io.ReadAll(c)
			_, _ = c.Write([]byte("got " + string(got)))
			_ = c.CloseWrite()
		})
		m := newMesh(t, tp, meshOpts{appAddr: app})
		c := m.dial(t)
		deadline(t, c)
		_, _ = c.Write([]byte("request"))
		_ = c.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "got request" {
			t.Fatalf("response = %q, %v; want %q", got, err, "got request")
		}
	})
	t.Run("server closes first, client keeps sending", func(t *testing.T) {
		result := make(chan string, 1)
		app := startApp(t, tp, "198.18.80.2:0", func(c *net.TCPConn) {
			_, _ = c.Write([]byte("bye"))
			_ = c.CloseWrite()
			got, _ := io.ReadAll(c)
			result <- string(got)
		})
		m := newMesh(t, tp, meshOpts{appAddr: app})
		c := m.dial(t)
		deadline(t, c)
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "bye" {
			t.Fatalf("read = %q, %v; want %q then EOF", got, err, "bye")
		}
		if _, err := c.Write([]byte("still here")); err != nil {
			t.Fatalf("write after the server's FIN: %v", err)
		}
		_ = c.CloseWrite()
		select {
		case s := <-result:
			if s != "still here" {
				t.Fatalf("server read %q, want %q", s, "still here")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("server never saw the client's data and FIN")
		}
	})
}

func TestMesh_ServerFirst(t *testing.T) {
	tp := newTopo(t)
	app := startApp(t, tp, "198.18.80.2:0", func(c *net.TCPConn) {
		_, _ = c.Write([]byte("220 banner\r\n"))
		_, _ = io.Copy(io.Discard, c)
	})
	m := newMesh(t, tp, meshOpts{appAddr: app})
	c := m.dial(t)
	deadline(t, c)
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "220 banner\r\n" {
		t.Fatalf("banner = %q, %v", buf[:n], err)
	}
}

func TestMesh_ManyStreams(t *testing.T) {
	tp := newTopo(t)
	app := startApp(t, tp, "198.18.80.2:0", echoHandler)
	for _, tc := range []struct {
		name       string
		maxStreams int
		conns      int
		wantMin    int
		wantMax    int
	}{
		{"50 streams share one connection", 0, 50, 1, 1},
		{"a full connection makes the pool open another", 10, 30, 3, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t, tp, meshOpts{appAddr: app, client: ClientConfig{MaxStreams: tc.maxStreams}})
			conns := make([]*net.TCPConn, tc.conns)
			for i := range conns {
				conns[i] = m.dial(t)
				deadline(t, conns[i])
			}
			var wg sync.WaitGroup
			errs := make(chan error, tc.conns)
			for i, c := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					msg := bytes.Repeat([]byte{byte(i)}, 100000+i)
					go func() { _, _ = c.Write(msg) }()
					got := make([]byte, len(msg))
					if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
						errs <- errors.New("stream returned wrong data")
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if n := m.pool.Len(); n < tc.wantMin || n > tc.wantMax {
				t.Fatalf("pool holds %d connections, want %d to %d", n, tc.wantMin, tc.wantMax)
			}
		})
	}
}

func TestMesh_ResetPropagates(t *testing.T) {
	tp := newTopo(t)
	t.Run("server reset reaches the client as a TCP reset", func(t *testing.T) {
		app := startApp(t, tp, "198.18.80.2:0", func(c *net.TCPConn) {
			buf := make([]byte, 5)
			_, _ = io.ReadFull(c, buf)
			_ = c.SetLinger(0)
		})
		m := newMesh(t, tp, meshOpts{appAddr: app})
		c := m.dial(t)
		deadline(t, c)
		_, _ = c.Write([]byte("hello"))
		_, err := io.ReadAll(c)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("client read error = %v, want a connection reset", err)
		}
	})
	t.Run("client reset reaches the server as a TCP reset", func(t *testing.T) {
		result := make(chan error, 1)
		app := startApp(t, tp, "198.18.80.2:0", func(c *net.TCPConn) {
			_ = c.SetDeadline(time.Now().Add(15 * time.Second))
			_, _ = c.Write([]byte("ready"))
			_, err := io.ReadAll(c)
			result <- err
		})
		m := newMesh(t, tp, meshOpts{appAddr: app})
		c := m.dial(t)
		deadline(t, c)
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		_ = c.SetLinger(0)
		_ = c.Close()
		if err := <-result; !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("server read error = %v, want a connection reset", err)
		}
	})
}

func TestMesh_GoAwayAndRollingUpdate(t *testing.T) {
	tp := newTopo(t)
	app := startApp(t, tp, "198.18.80.2:0", echoHandler)
	m := newMesh(t, tp, meshOpts{appAddr: app})

	// A stream opened before the drain keeps working through it.
	old := m.dial(t)
	deadline(t, old)
	roundTrip(t, old, "before")

	// A second server takes over the same port with SO_REUSEPORT.
	ln2 := listenIn(t, tp.b, m.peer.String())
	hboneServer(t, m.ca, ln2, InboundConfig{DialUpstream: func(ctx context.Context, _ netip.Addr, dst netip.AddrPort) (net.Conn, error) {
		return dialIn(ctx, tp.b, dst.String())
	}})
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		done <- m.srv.Shutdown(ctx)
	}()
	// Wait until the client saw GOAWAY on its pooled connection.
	waitFor(t, func() bool {
		m.pool.mu.Lock()
		defer m.pool.mu.Unlock()
		for _, c := range m.pool.conns[PoolKey{SrcIdentity: idClient, DstIdentity: idServer, Addr: m.peer, SrcIP: netip.MustParseAddr("127.0.0.1")}] {
			c.mu.Lock()
			g := c.goAwayRecv
			c.mu.Unlock()
			if g {
				return true
			}
		}
		return false
	})
	roundTrip(t, old, "during drain")
	fresh := m.dial(t)
	deadline(t, fresh)
	roundTrip(t, fresh, "new server")

	_ = old.Close()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown = %v, want nil after the last stream ended", err)
	}
}

func TestMesh_DrainDeadline(t *testing.T) {
	tp := newTopo(t)
	app := startApp(t, tp, "198.18.80.2:0", echoHandler)
	m := newMesh(t, tp, meshOpts{appAddr: app})
	c := m.dial(t)
	deadline(t, c)
	roundTrip(t, c, "long-lived")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := m.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the deadline error for the stream still open", err)
	}
	if _, err := io.ReadAll(c); err == nil {
		// EOF is fine as well: the point is that the stream ended.
		return
	}
}

func roundTrip(tb testing.TB, c net.Conn, msg string) {
	tb.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		tb.Fatalf("write %q: %v", msg, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		tb.Fatalf("echo of %q = %q, %v", msg, buf, err)
	}
}

func waitFor(tb testing.TB, cond func() bool) {
	tb.Helper()
	for i := 0; i < 200; i++ {
		if cond() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	tb.Fatal("condition not reached within 5s")
}

func TestMesh_Refusals(t *testing.T) {
	tp := newTopo(t)
	app := startApp(t, tp, "198.18.80.2:0", echoHandler)
	for _, tc := range []struct {
		name   string
		cfg    InboundConfig
		target netip.AddrPort
		want   int
	}{
		{"denied by the authorizer is 401", InboundConfig{Authorize: func(context.Context, *InboundRequest) error { return errors.New("no") }}, app, 401},
		{"refused upstream connect is 503", InboundConfig{}, netip.AddrPortFrom(app.Addr(), 1), 503},
		{"target IP other than the local address is 400", InboundConfig{}, netip.MustParseAddrPort("198.18.80.9:80"), 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t, tp, meshOpts{appAddr: app, inbound: tc.cfg})
			key := PoolKey{SrcIdentity: idClient, DstIdentity: idServer, Addr: m.peer}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := m.pool.Connect(ctx, key, &ConnectRequest{Authority: tc.target.String()})
			var se *StatusError
			if !errors.As(err, &se) || se.Code != tc.want {
				t.Fatalf("Connect error = %v, want status %d", err, tc.want)
			}
		})
	}
}

func TestMesh_MetricsAndAccessLog(t *testing.T) {
	tp := newTopo(t)
	app := startApp(t, tp, "198.18.80.2:0", echoHandler)
	reg := prometheus.NewRegistry()
	metrics, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf syncBuffer
	logger := slog.New(slog.NewJSONHandler(&logBuf, nil))
	m := newMesh(t, tp, meshOpts{
		appAddr:  app,
		inbound:  InboundConfig{Metrics: metrics, Logger: logger},
		outbound: OutboundConfig{Metrics: metrics, Logger: logger},
	})
	c := m.dial(t)
	deadline(t, c)
	_, _ = c.Write([]byte("12345"))
	_ = c.CloseWrite()
	if _, err := io.ReadAll(c); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// Each side counts the close before it writes its access log line, so
	// wait for both lines as well as both counts.
	waitFor(t, func() bool {
		return sumVec(metrics.closed) == 2 && strings.Count(logBuf.String(), `"msg":"connection complete"`) == 2
	})
	for _, tc := range []struct {
		name string
		vec  *prometheus.CounterVec
		want float64
	}{
		{"opened counts both reporters", metrics.opened, 2},
		{"received counts 5 bytes per reporter", metrics.received, 10},
		{"sent counts 5 bytes per reporter", metrics.sent, 10},
	} {
		if got := sumVec(tc.vec); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	if problems, err := testutil.CollectAndLint(metrics.opened); err != nil || len(problems) > 0 {
		t.Errorf("metric lint: %v %v", problems, err)
	}
	n, err := testutil.GatherAndCount(reg, "istio_tcp_connections_opened_total")
	if err != nil || n != 2 {
		t.Errorf("opened series = %d, %v; want one per reporter", n, err)
	}
	logs := logBuf.String()
	for _, want := range []string{`"src.identity":"` + string(idClient), `"dst.identity":"` + string(idServer), `"direction":"outbound"`, `"direction":"inbound"`, `"dst.hbone_addr":"` + m.peer.String(), `"bytes_recv":5`} {
		if !strings.Contains(logs, want) {
			t.Errorf("access log lacks %s:\n%s", want, logs)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// sumVec adds the values of every series of v.
func sumVec(v *prometheus.CounterVec) float64 {
	ch := make(chan prometheus.Metric, 16)
	go func() { v.Collect(ch); close(ch) }()
	var sum float64
	for m := range ch {
		var pb dto.Metric
		_ = m.Write(&pb)
		sum += pb.GetCounter().GetValue()
	}
	return sum
}
