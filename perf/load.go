package perf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"fortio.org/fortio/fhttp"
	"fortio.org/fortio/stats"
	"fortio.org/fortio/tcprunner"
	flog "fortio.org/log"
	"github.com/prometheus/procfs"
)

// resolution is the Fortio histogram bucket width: 10 µs. Fortio's default
// of 1 ms would hide the sub-millisecond differences this suite compares.
const resolution = 1e-5

// LoadConfig is one workload for the load process.
type LoadConfig struct {
	// Workload is "http" (Fortio HTTP/1.1 at a fixed rate), "rr" (Fortio TCP
	// echo, closed loop), "tput" (bulk streams to the sink) or "crr" (a new
	// connection per 1-byte exchange).
	Workload string        `json:"workload"`
	Target   string        `json:"target"` // ip:port
	Conns    int           `json:"conns,omitempty"`
	QPS      float64       `json:"qps,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
	Exactly  int64         `json:"exactly,omitempty"`
	Jitter   bool          `json:"jitter,omitempty"`
	// NewConn makes every HTTP request open a new connection.
	NewConn bool          `json:"new_conn,omitempty"`
	Payload int           `json:"payload,omitempty"`
	Warmup  time.Duration `json:"warmup,omitempty"`
	Streams int           `json:"streams,omitempty"`
	// PIDs are the proxy processes whose CPU and RSS are sampled around
	// the measured part of the run.
	PIDs []int `json:"pids,omitempty"`
}

// LoadResult is the load process's report for one workload.
type LoadResult struct {
	P50       float64     `json:"p50_us,omitempty"`
	P90       float64     `json:"p90_us,omitempty"`
	P99       float64     `json:"p99_us,omitempty"`
	P999      float64     `json:"p999_us,omitempty"`
	Count     int64       `json:"count"`
	Errors    int64       `json:"errors"`
	ActualQPS float64     `json:"actual_qps,omitempty"`
	Gbps      float64     `json:"gbps,omitempty"`
	Wall      float64     `json:"wall_s"`
	Procs     []ProcUsage `json:"procs,omitempty"`
}

// ProcUsage is one proxy's CPU time and memory over the measured interval.
type ProcUsage struct {
	PID        int     `json:"pid"`
	CPUSeconds float64 `json:"cpu_s"`
	RSSBytes   int     `json:"rss_bytes"`
}

type procSample struct {
	cpu map[int]float64
}

func sampleProcs(pids []int) (procSample, error) {
	s := procSample{cpu: map[int]float64{}}
	for _, pid := range pids {
		p, err := procfs.NewProc(pid)
		if err != nil {
			return s, fmt.Errorf("read /proc/%d: %w", pid, err)
		}
		if _, err := p.Stat(); err != nil {
			return s, fmt.Errorf("read /proc/%d/stat: %w", pid, err)
		}
		s.cpu[pid] = cpuSeconds(pid)
	}
	return s, nil
}

// cpuSeconds returns the CPU time of pid's threads from
// /proc/<pid>/task/*/schedstat, which counts nanoseconds; /proc/<pid>/stat
// counts 10 ms ticks, too coarse for a few seconds at 1000 rps. Threads that
// already exited are missing from the sum; Go proxies keep their threads,
// so the difference between two samples is exact for them. It falls back to
// /proc/<pid>/stat when schedstat is unavailable.
func cpuSeconds(pid int) float64 {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err == nil {
		var ns int64
		ok := false
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
			if err != nil {
				continue
			}
			f := strings.Fields(string(b))
			if len(f) == 0 {
				continue
			}
			if v, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				ns += v
				ok = true
			}
		}
		if ok {
			return float64(ns) / 1e9
		}
	}
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0
	}
	st, err := p.Stat()
	if err != nil {
		return 0
	}
	return st.CPUTime()
}

func procUsage(pids []int, before procSample) ([]ProcUsage, error) {
	var out []ProcUsage
	for _, pid := range pids {
		p, err := procfs.NewProc(pid)
		if err != nil {
			return nil, fmt.Errorf("read /proc/%d: %w", pid, err)
		}
		st, err := p.Stat()
		if err != nil {
			return nil, fmt.Errorf("read /proc/%d/stat: %w", pid, err)
		}
		out = append(out, ProcUsage{PID: pid, CPUSeconds: cpuSeconds(pid) - before.cpu[pid], RSSBytes: st.ResidentMemory()})
	}
	return out, nil
}

func runLoad(ctx context.Context, cfg *LoadConfig) (*LoadResult, error) {
	if cfg == nil {
		return nil, errors.New("load configuration missing")
	}
	flog.SetLogLevelQuiet(flog.Critical)
	switch cfg.Workload {
	case "http":
		return loadHTTP(cfg)
	case "rr":
		return loadRR(cfg)
	case "tput":
		return loadTput(ctx, cfg)
	case "crr":
		return loadCRR(ctx, cfg)
	}
	return nil, fmt.Errorf("workload %q: want http, rr, tput or crr", cfg.Workload)
}

func percentiles(h *stats.HistogramData, r *LoadResult) {
	for _, p := range h.Percentiles {
		v := p.Value * 1e6
		switch p.Percentile {
		case 50:
			r.P50 = v
		case 90:
			r.P90 = v
		case 99:
			r.P99 = v
		case 99.9:
			r.P999 = v
		}
	}
	r.Count = h.Count
}

func loadHTTP(cfg *LoadConfig) (*LoadResult, error) {
	body := make([]byte, cfg.Payload)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	opts := func(d time.Duration, exactly int64) *fhttp.HTTPRunnerOptions {
		o := &fhttp.HTTPRunnerOptions{}
		o.URL = "http://" + cfg.Target + "/echo"
		o.Payload = body
		o.QPS = cfg.QPS
		o.NumThreads = cfg.Conns
		o.Duration = d
		o.Exactly = exactly
		o.Jitter = cfg.Jitter
		o.Percentiles = []float64{50, 90, 99, 99.9}
		o.RunnerOptions.Resolution = resolution
		o.Out = io.Discard
		o.HTTPReqTimeOut = 10 * time.Second
		o.DisableKeepAlive = cfg.NewConn
		return o
	}
	if cfg.Warmup > 0 {
		if _, err := fhttp.RunHTTPTest(opts(cfg.Warmup, 0)); err != nil {
			return nil, fmt.Errorf("http warm-up to %s: %w", cfg.Target, err)
		}
	}
	before, err := sampleProcs(cfg.PIDs)
	if err != nil {
		return nil, err
	}
	res, err := fhttp.RunHTTPTest(opts(cfg.Duration, cfg.Exactly))
	if err != nil {
		return nil, fmt.Errorf("http load to %s: %w", cfg.Target, err)
	}
	out := &LoadResult{ActualQPS: res.ActualQPS, Wall: res.ActualDuration.Seconds()}
	if out.Procs, err = procUsage(cfg.PIDs, before); err != nil {
		return nil, err
	}
	percentiles(res.DurationHistogram, out)
	for code, n := range res.RetCodes {
		if code != 200 {
			out.Errors += n
		}
	}
	return out, nil
}

func loadRR(cfg *LoadConfig) (*LoadResult, error) {
	payload := make([]byte, cfg.Payload)
	for i := range payload {
		payload[i] = byte('A' + i%26)
	}
	opts := func(n int64) *tcprunner.RunnerOptions {
		o := &tcprunner.RunnerOptions{}
		o.Destination = cfg.Target
		o.Payload = payload
		o.QPS = -1 // closed loop: each request is sent when the previous reply arrived
		o.NumThreads = 1
		o.Exactly = n
		o.Percentiles = []float64{50, 90, 99, 99.9}
		o.Resolution = resolution
		o.Out = io.Discard
		o.ReqTimeout = 10 * time.Second
		return o
	}
	if _, err := tcprunner.RunTCPTest(opts(max(cfg.Exactly/10, 50))); err != nil {
		return nil, fmt.Errorf("tcp warm-up to %s: %w", cfg.Target, err)
	}
	res, err := tcprunner.RunTCPTest(opts(cfg.Exactly))
	if err != nil {
		return nil, fmt.Errorf("tcp echo to %s: %w", cfg.Target, err)
	}
	out := &LoadResult{ActualQPS: res.ActualQPS, Wall: res.ActualDuration.Seconds()}
	percentiles(res.DurationHistogram, out)
	for code, n := range res.RetCodes {
		if code != tcprunner.TCPStatusOK {
			out.Errors += n
		}
	}
	return out, nil
}

// loadTput sends from Streams connections for Duration and counts the bytes
// the sink confirmed.
func loadTput(ctx context.Context, cfg *LoadConfig) (*LoadResult, error) {
	streams := max(cfg.Streams, 1)
	conns := make([]net.Conn, streams)
	d := net.Dialer{Timeout: 5 * time.Second}
	for i := range conns {
		c, err := d.DialContext(ctx, "tcp", cfg.Target)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return nil, fmt.Errorf("dial sink %s: %w", cfg.Target, err)
		}
		conns[i] = c
	}
	before, err := sampleProcs(cfg.PIDs)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int64
		errs  []error
	)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			_ = c.SetDeadline(deadline.Add(30 * time.Second))
			buf := make([]byte, 128<<10)
			var sent int64
			for time.Now().Before(deadline) {
				n, err := c.Write(buf)
				sent += int64(n)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
			}
			_ = c.(*net.TCPConn).CloseWrite()
			var b [8]byte
			if _, err := io.ReadFull(c, b[:]); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("read sink count: %w", err))
				mu.Unlock()
				return
			}
			got := int64(binary.BigEndian.Uint64(b[:]))
			mu.Lock()
			if got != sent {
				errs = append(errs, fmt.Errorf("sink counted %d bytes, sent %d", got, sent))
			}
			total += got
			mu.Unlock()
		}()
	}
	wg.Wait()
	wall := time.Since(start).Seconds()
	out := &LoadResult{Wall: wall, Gbps: float64(total) * 8 / wall / 1e9, Count: int64(streams), Errors: int64(len(errs))}
	if out.Procs, err = procUsage(cfg.PIDs, before); err != nil {
		return nil, err
	}
	if len(errs) == streams {
		return nil, fmt.Errorf("throughput to %s: %w", cfg.Target, errors.Join(errs...))
	}
	return out, nil
}

// loadCRR opens Exactly connections one after another, each exchanging one
// byte with the echo server, and reports the time of each whole
// connect-exchange-close.
func loadCRR(ctx context.Context, cfg *LoadConfig) (*LoadResult, error) {
	n := max(cfg.Exactly, 1)
	lat := make([]float64, 0, n)
	d := net.Dialer{Timeout: 5 * time.Second}
	var errs int64
	var firstErr error
	start := time.Now()
	one := func() error {
		c, err := d.DialContext(ctx, "tcp", cfg.Target)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte{'x'}); err != nil {
			return err
		}
		var b [1]byte
		_, err = io.ReadFull(c, b[:])
		return err
	}
	for range n {
		t0 := time.Now()
		if err := one(); err != nil {
			errs++
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		lat = append(lat, float64(time.Since(t0).Microseconds()))
	}
	wall := time.Since(start).Seconds()
	if len(lat) == 0 {
		return nil, fmt.Errorf("crr to %s: every connection failed: %w", cfg.Target, firstErr)
	}
	slices.Sort(lat)
	out := &LoadResult{
		P50: quantileSorted(lat, 0.5), P90: quantileSorted(lat, 0.9), P99: quantileSorted(lat, 0.99), P999: quantileSorted(lat, 0.999),
		Count: int64(len(lat)), Errors: errs, ActualQPS: float64(len(lat)) / wall, Wall: wall,
	}
	return out, nil
}
