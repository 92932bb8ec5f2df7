package tunnel

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"syscall"
	"testing"
	"time"
)

// The benchmarks use two namespaces joined by veth (quick mode): the client
// and the outbound proxy share node A, the inbound proxy and the server share
// node B. Every variant crosses the same veth once per direction, so the
// extra cost of a variant is its proxies, not the topology. All parts run in
// this process as goroutines.
//
// Variants:
//   direct  client in A -> server in B
//   null    client -> TCP forwarder in A -> TCP forwarder in B -> server (io.Copy, splice)
//   tls     client -> forwarder in A =mTLS=> forwarder in B -> server, one TLS connection per
//           application connection, 256 KiB copy buffers
//   hbone   client -> Outbound in A =HBONE=> Server in B -> server (this package)

const (
	benchModeSink = 'S'
	benchModeEcho = 'E'
	rrSize        = 1024
)

// benchServer serves the two workloads: 'S' discards until EOF and replies
// with the byte count, 'E' echoes 1 KiB messages.
func benchServer(c net.Conn) {
	defer c.Close()
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case benchModeSink:
		var n int64
		buf := make([]byte, 256<<10)
		for {
			m, err := c.Read(buf)
			n += int64(m)
			if err != nil {
				break
			}
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(n))
		_, _ = c.Write(b[:])
	case benchModeEcho:
		buf := make([]byte, rrSize)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}
}

func serveAll(ln net.Listener, h func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go h(c)
	}
}

// benchEnv holds the four variants' entry points in A.
type benchEnv struct {
	tp      *topo
	entries map[string]netip.AddrPort
	order   []string
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	tp := newTopo(b)
	env := &benchEnv{tp: tp, entries: map[string]netip.AddrPort{}, order: []string{"direct", "null", "tls", "hbone"}}
	srvLn := listenIn(b, tp.b, "198.18.80.2:0")
	go serveAll(srvLn, benchServer)
	server := apOf(srvLn)
	env.entries["direct"] = server

	inB := func(ctx context.Context, addr string) (net.Conn, error) { return dialIn(ctx, tp.b, addr) }
	inA := func(ctx context.Context, addr string) (net.Conn, error) { return dialIn(ctx, tp.a, addr) }

	// null: TCP forwarders on both nodes.
	nullB := listenIn(b, tp.b, "198.18.80.2:0")
	go serveAll(nullB, func(c net.Conn) { forwardTCP(c, inB, server.String()) })
	nullA := listenIn(b, tp.a, "127.0.0.1:0")
	go serveAll(nullA, func(c net.Conn) { forwardTCP(c, inA, apOf(nullB).String()) })
	env.entries["null"] = apOf(nullA)

	// tls: an mTLS connection per application connection.
	ca := newTestCA(b)
	srvConf, _ := ca.serverTLS(b, idServer)()
	cliConf, _ := ca.clientTLS(b)(PoolKey{SrcIdentity: idClient, DstIdentity: idServer})
	tlsB := listenIn(b, tp.b, "198.18.80.2:0")
	go serveAll(tlsB, func(c net.Conn) {
		tc := tls.Server(c, srvConf)
		if tc.Handshake() != nil {
			c.Close()
			return
		}
		up, err := inB(context.Background(), server.String())
		if err != nil {
			c.Close()
			return
		}
		copyBoth(tc, up)
	})
	tlsA := listenIn(b, tp.a, "127.0.0.1:0")
	go serveAll(tlsA, func(c net.Conn) {
		raw, err := inA(context.Background(), apOf(tlsB).String())
		if err != nil {
			c.Close()
			return
		}
		tc := tls.Client(raw, cliConf)
		if tc.Handshake() != nil {
			c.Close()
			raw.Close()
			return
		}
		copyBoth(c, tc)
	})
	env.entries["tls"] = apOf(tlsA)

	// hbone: this package's outbound and inbound proxies.
	m := newMesh(b, tp, meshOpts{appAddr: server})
	env.entries["hbone"] = m.outbound
	return env
}

// forwardTCP is the null proxy: io.Copy both ways, which splices on Linux.
func forwardTCP(c net.Conn, dial func(context.Context, string) (net.Conn, error), to string) {
	up, err := dial(context.Background(), to)
	if err != nil {
		c.Close()
		return
	}
	_ = proxyTCP(c, up, func(int64) {}, func(int64) {})
}

// copyBoth copies both ways with 256 KiB buffers and half-close.
func copyBoth(a, b net.Conn) {
	done := make(chan struct{})
	half := func(dst, src net.Conn) {
		buf := make([]byte, 256<<10)
		_, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
		_ = closeWrite(dst)
	}
	go func() { half(a, b); close(done) }()
	half(b, a)
	<-done
	a.Close()
	b.Close()
}

func (env *benchEnv) dial(b *testing.B, variant string, mode byte) net.Conn {
	b.Helper()
	c, err := dialIn(context.Background(), env.tp.a, env.entries[variant].String())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Write([]byte{mode}); err != nil {
		b.Fatal(err)
	}
	return c
}

// cpuTime returns the CPU time this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// throughput sends total bytes on one connection and returns bits per second
// and the CPU time of the whole process (client, proxies, server) per GB.
func (env *benchEnv) throughput(b *testing.B, variant string, total int64) (bps, cpuPerGB float64) {
	c := env.dial(b, variant, benchModeSink)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	buf := make([]byte, 128<<10)
	start, cpu0 := time.Now(), cpuTime()
	for sent := int64(0); sent < total; sent += int64(len(buf)) {
		if _, err := c.Write(buf); err != nil {
			b.Fatalf("%s: write: %v", variant, err)
		}
	}
	_ = c.(*net.TCPConn).CloseWrite()
	var ack [8]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		b.Fatalf("%s: read count: %v", variant, err)
	}
	el, cpu := time.Since(start), cpuTime()-cpu0
	if got := int64(binary.BigEndian.Uint64(ack[:])); got != total {
		b.Fatalf("%s: server received %d bytes, want %d", variant, got, total)
	}
	return float64(total*8) / el.Seconds(), cpu.Seconds() / (float64(total) / 1e9)
}

// rr runs n 1 KiB request/response exchanges and returns sorted latencies.
func (env *benchEnv) rr(b *testing.B, variant string, n int) []time.Duration {
	c := env.dial(b, variant, benchModeEcho)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	buf := make([]byte, rrSize)
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n+n/10; i++ {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			b.Fatalf("%s: write: %v", variant, err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatalf("%s: read: %v", variant, err)
		}
		if i >= n/10 { // the first 10% warm up
			lat = append(lat, time.Since(start))
		}
	}
	slices.Sort(lat)
	return lat
}

func pct(sorted []time.Duration, p float64) float64 {
	return float64(sorted[int(float64(len(sorted)-1)*p)].Microseconds())
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkThroughput measures one stream per variant; b.N counts 1 MiB units.
func BenchmarkThroughput(b *testing.B) {
	env := newBenchEnv(b)
	for _, v := range env.order {
		b.Run("variant="+v, func(b *testing.B) {
			b.SetBytes(1 << 20)
			b.ResetTimer()
			bps, cpu := env.throughput(b, v, int64(b.N)<<20)
			b.ReportMetric(bps/1e9, "Gbit/s")
			b.ReportMetric(cpu, "cpu-s/GB")
		})
	}
}

// BenchmarkRR1K measures 1 KiB request/response latency per variant.
func BenchmarkRR1K(b *testing.B) {
	env := newBenchEnv(b)
	for _, v := range env.order {
		b.Run("variant="+v, func(b *testing.B) {
			lat := env.rr(b, v, max(b.N, 100))
			b.ReportMetric(pct(lat, 0.5), "p50-µs")
			b.ReportMetric(pct(lat, 0.9), "p90-µs")
			b.ReportMetric(pct(lat, 0.99), "p99-µs")
		})
	}
}

// BenchmarkPaired runs every variant in each round, in a fresh random order,
// and reports medians over rounds of per-round ratios, so that load from
// other tenants affects the variants alike. Run it with -benchtime=1x.
// MAZU_BENCH_ROUNDS sets the number of rounds (default 5).
func BenchmarkPaired(b *testing.B) {
	env := newBenchEnv(b)
	rounds := 5
	if s := os.Getenv("MAZU_BENCH_ROUNDS"); s != "" {
		_, _ = fmt.Sscan(s, &rounds)
	}
	const total = 256 << 20
	const iters = 3000
	gbps := map[string][]float64{}
	cpuGB := map[string][]float64{}
	p50 := map[string][]float64{}
	p90 := map[string][]float64{}
	ratio := map[string][]float64{}
	for r := 0; r < rounds; r++ {
		order := slices.Clone(env.order)
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		g, l50, l90, cg := map[string]float64{}, map[string]float64{}, map[string]float64{}, map[string]float64{}
		for _, v := range order {
			bps, cpu := env.throughput(b, v, total)
			g[v], cg[v] = bps/1e9, cpu
			cpuGB[v] = append(cpuGB[v], cpu)
			lat := env.rr(b, v, iters)
			l50[v], l90[v] = pct(lat, 0.5), pct(lat, 0.9)
			gbps[v] = append(gbps[v], g[v])
			p50[v] = append(p50[v], l50[v])
			p90[v] = append(p90[v], l90[v])
		}
		ratio["hbone/tls-Gbps"] = append(ratio["hbone/tls-Gbps"], g["hbone"]/g["tls"])
		ratio["hbone/direct-Gbps"] = append(ratio["hbone/direct-Gbps"], g["hbone"]/g["direct"])
		ratio["hbone/null-p90"] = append(ratio["hbone/null-p90"], l90["hbone"]/l90["null"])
		ratio["hbone/null-p50"] = append(ratio["hbone/null-p50"], l50["hbone"]/l50["null"])
		ratio["tls/null-p90"] = append(ratio["tls/null-p90"], l90["tls"]/l90["null"])
		ratio["hbone/tls-cpu"] = append(ratio["hbone/tls-cpu"], cg["hbone"]/cg["tls"])
	}
	for _, v := range env.order {
		b.ReportMetric(median(gbps[v]), v+"-Gbit/s")
		b.ReportMetric(median(cpuGB[v]), v+"-cpu-s/GB")
		b.ReportMetric(median(p50[v]), v+"-p50-µs")
		b.ReportMetric(median(p90[v]), v+"-p90-µs")
	}
	for k, v := range ratio {
		b.ReportMetric(median(v), k)
		b.Logf("%s per round: %.2f", k, v)
	}
}

// BenchmarkCRR measures a new application connection per 1 KiB exchange:
// connect, one request and response, close. The tls variant makes a TLS
// handshake per connection; hbone opens a stream on its pooled connection.
func BenchmarkCRR(b *testing.B) {
	env := newBenchEnv(b)
	for _, v := range env.order {
		b.Run("variant="+v, func(b *testing.B) {
			buf := make([]byte, rrSize)
			lat := make([]time.Duration, 0, b.N)
			for i := 0; i < b.N; i++ {
				start := time.Now()
				c := env.dial(b, v, benchModeEcho)
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				if _, err := c.Write(buf); err != nil {
					b.Fatalf("%s: write: %v", v, err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatalf("%s: read: %v", v, err)
				}
				lat = append(lat, time.Since(start))
				c.Close()
			}
			slices.Sort(lat)
			b.ReportMetric(pct(lat, 0.5), "p50-µs")
			b.ReportMetric(pct(lat, 0.9), "p90-µs")
		})
	}
}
