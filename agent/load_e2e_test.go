package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// Roles of the load test and their settings.
const (
	roleEchoServer = "echo-server"
	roleLoadClient = "load-client"
	// envLoadWorkers is how many connections the load client opens at a
	// time.
	envLoadWorkers = "MAZU_E2E_WORKERS"
	// envLoadHold is how long the load client holds all its connections
	// open before it checks them again and closes them.
	envLoadHold = "MAZU_E2E_HOLD"
	// envLoadDeadline bounds the whole run of the load client.
	envLoadDeadline = "MAZU_E2E_DEADLINE"

	// envLoadConns overrides loadConns.
	envLoadConns = "MAZU_LOADTEST_CONNS"
	// loadConns is how many concurrent connections the load test opens.
	// Each agent holds about a descriptor per connection. The server's
	// agent runs in a process of its own, so 10,000 connections need a
	// hard RLIMIT_NOFILE of about 11,500 per process (n + n/10 +
	// loadFDReserve), within the common hard limit of 20,000, which the
	// test cannot raise without CAP_SYS_RESOURCE.
	loadConns = 10000
	// loadFDReserve is the number of descriptors an agent's process holds
	// besides its connections: listeners, API server and curator clients,
	// eBPF objects and the test's own files. The baseline is about 100.
	loadFDReserve = 512
	// loadPort is the echo server's port in its pod.
	loadPort = 9000
)

// loadReport is what the load client prints.
type loadReport struct {
	// Soft and Hard are the client's RLIMIT_NOFILE after it raised it.
	Soft, Hard uint64
	// Connected counts connections that opened and echoed a first message.
	Connected int
	// Held counts connections that echoed a second message after all of
	// them were open: they were alive at the same time.
	Held int
	// Errors contains the first ten failures. ErrorCount counts all of them.
	Errors     []string
	ErrorCount int
	ConnectMS  int64
	HeldMS     int64
	CloseMS    int64
}

func runLoadRole(role string) int {
	if err := raiseOwnFileLimit(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	switch role {
	case roleEchoServer:
		return echoServer(os.Getenv(envTarget))
	case roleLoadClient:
		return loadClient()
	}
	return 2
}

// raiseOwnFileLimit sets the soft RLIMIT_NOFILE of this process to the hard
// limit: the load client and the echo server each hold one descriptor per
// connection.
func raiseOwnFileLimit() error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("get RLIMIT_NOFILE: %w", err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("set RLIMIT_NOFILE to %d: %w", lim.Max, err)
	}
	return nil
}

// echoServer echoes every connection until its peer closes it, with one
// descriptor per connection.
func echoServer(addr string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		go func() {
			defer c.Close()
			// Hiding the connection's ReadFrom keeps io.Copy from
			// splicing, which holds a pipe (two more descriptors) per
			// blocked connection.
			_, _ = io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 512))
		}()
	}
}

// loadClient opens MAZU_E2E_COUNT connections to MAZU_E2E_TARGET, echoes a
// message on each, holds them all open for MAZU_E2E_HOLD, echoes a second
// message on each and closes them. Everything stops at MAZU_E2E_DEADLINE.
func loadClient() int {
	target := os.Getenv(envTarget)
	n, _ := strconv.Atoi(os.Getenv(envCount))
	workers, _ := strconv.Atoi(os.Getenv(envLoadWorkers))
	hold, _ := time.ParseDuration(os.Getenv(envLoadHold))
	limit, _ := time.ParseDuration(os.Getenv(envLoadDeadline))
	if n <= 0 || workers <= 0 || limit <= 0 {
		fmt.Fprintf(os.Stderr, "load client: count %d, workers %d and deadline %s must be positive\n", n, workers, limit)
		return 2
	}
	deadline := time.Now().Add(limit)
	var report loadReport
	var lim syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	report.Soft, report.Hard = lim.Cur, lim.Max

	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		report.ErrorCount++
		if len(report.Errors) < 10 {
			report.Errors = append(report.Errors, err.Error())
		}
	}
	conns := make([]net.Conn, n)
	// forEach runs fn on every connection index, with the given number of
	// workers.
	forEach := func(fn func(i int) error) int {
		var next, ok atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for {
					i := int(next.Add(1) - 1)
					if i >= n {
						return
					}
					if err := fn(i); err != nil {
						fail(fmt.Errorf("connection %d: %w", i, err))
						continue
					}
					ok.Add(1)
				}
			})
		}
		wg.Wait()
		return int(ok.Load())
	}
	echo := func(c net.Conn, i, round int) error {
		if err := c.SetDeadline(deadline); err != nil {
			return err
		}
		msg := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, uint32(i)), uint32(round))
		if _, err := c.Write(msg); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("read echo: %w", err)
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("echo %x, want %x", got, msg)
		}
		return nil
	}

	start := time.Now()
	dialer := net.Dialer{Deadline: deadline}
	report.Connected = forEach(func(i int) error {
		c, err := dialer.Dial("tcp", target)
		if err != nil {
			return err
		}
		conns[i] = c
		return echo(c, i, 1)
	})
	report.ConnectMS = time.Since(start).Milliseconds()
	time.Sleep(min(hold, time.Until(deadline)))
	start = time.Now()
	report.Held = forEach(func(i int) error {
		if conns[i] == nil {
			return errors.New("never opened")
		}
		return echo(conns[i], i, 2)
	})
	report.HeldMS = time.Since(start).Milliseconds()
	start = time.Now()
	for _, c := range conns {
		if c != nil {
			_ = c.Close()
		}
	}
	report.CloseMS = time.Since(start).Milliseconds()
	_ = json.NewEncoder(os.Stdout).Encode(report)
	return 0
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("count open descriptors: %v", err)
	}
	return len(entries)
}

// loadRuns numbers the load test's runs in this process.
var loadRuns atomic.Int64

// loadCount is loadConns or the count MAZU_LOADTEST_CONNS names.
func loadCount(t *testing.T) int {
	v := os.Getenv(envLoadConns)
	if v == "" {
		return loadConns
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("invalid %s %q: want a positive number of connections", envLoadConns, v)
	}
	return n
}

// TestLoadConcurrentConnections opens many concurrent connections from a
// process in a client pod to an echo server in a pod on another node. Each
// connection is captured by eBPF and carried as one stream over the client
// agent's HBONE pool to the server's agent. The test checks that every
// connection works while all are open, that the agents raised their open
// file limits, and that the agents' goroutines and descriptors return to
// what they were once the connections close.
//
// The client's agent runs in this test process and the server's agent in a
// process of its own (startProcessAgent). Each holds about one descriptor
// per connection (the client agent's captured socket, the server agent's
// upstream socket) plus the pooled HBONE connections, so neither process
// needs more than about n descriptors.
func TestLoadConcurrentConnections(t *testing.T) {
	privtest.Require(t)
	n := loadCount(t)
	tb := testbed.Get(t)

	// Leave the soft limit below the hard one, so that the in-process agent
	// must raise it. The server's agent process inherits the lowered soft
	// limit.
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	// Raising the hard limit needs CAP_SYS_RESOURCE; without it the hard
	// limit must already hold the connections.
	need := uint64(n + n/10 + loadFDReserve)
	want := syscall.Rlimit{Cur: min(orig.Cur, 4096), Max: max(orig.Max, need)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		want.Max = orig.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			t.Fatalf("set RLIMIT_NOFILE to %+v: %v", want, err)
		}
	}
	t.Cleanup(func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
			t.Errorf("restore RLIMIT_NOFILE %+v: %v", orig, err)
		}
	})
	if want.Max < need {
		t.Fatalf("hard RLIMIT_NOFILE %d cannot hold an agent's %d descriptors for %d connections: set %s to at most %d, or run with CAP_SYS_RESOURCE",
			want.Max, need, n, envLoadConns, (want.Max-loadFDReserve)*10/11)
	}

	mesh := startMesh(t, tb)
	cni := buildCNI(t)
	nodeA := testbed.NewNode(t, tb, "lt-a")
	nodeB := testbed.NewNode(t, tb, "lt-b")
	// Pooled HBONE connections without streams close after 2 s instead of
	// 5 minutes, so the agents can return to their baseline during the test.
	const poolIdle = 2 * time.Second
	agentB := startProcessAgent(t, tb, mesh, nodeB, poolIdle)
	agentA := startAgentWith(t, tb, mesh, nodeA, agentOptions{PoolIdleTimeout: poolIdle})

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur != want.Max {
		t.Fatalf("soft RLIMIT_NOFILE is %d after the in-process agent started, want it raised to the hard limit %d", lim.Cur, want.Max)
	}
	// At start, Go's syscall package raises a process's soft limit to one
	// below the hard limit (Go 1.26, src/syscall/rlimit.go). A soft limit
	// equal to the hard one shows that the agent's raiseFileLimit ran.
	if soft, hard := agentB.fileLimit(t); soft != hard || hard < need {
		t.Fatalf("server agent process has RLIMIT_NOFILE soft %d hard %d, want the soft limit raised to the hard limit and both at least %d", soft, hard, need)
	}

	// Each run takes a new namespace: the last run's may still be
	// terminating.
	namespace := fmt.Sprintf("lt-%d", loadRuns.Add(1))
	ambientNamespace(t, tb, namespace)
	server := testbed.NewPod(t, tb, nodeB, testbed.PodSpec{
		Namespace: namespace, Name: "echo", ServiceAccount: "echo",
		Ports: []corev1.ContainerPort{{Name: "echo", ContainerPort: loadPort}}, OnNetwork: cniAdd(cni, agentB.socket),
	})
	echo := runInPod(t, server, roleEchoServer, envTarget+"=:"+strconv.Itoa(loadPort))
	echo.Stderr = testWriter{t}
	if err := server.Start(echo); err != nil {
		t.Fatal(err)
	}
	client := testbed.NewPod(t, tb, nodeA, testbed.PodSpec{Namespace: namespace, Name: "client", ServiceAccount: "client", OnNetwork: cniAdd(cni, agentA.socket)})
	waitEnrolled(t, tb, server)
	waitEnrolled(t, tb, client)
	target := net.JoinHostPort(server.IP.String(), strconv.Itoa(loadPort))

	// A first small run registers the pods' identities and warms the
	// agents' caches; the baseline is taken after its HBONE connection was
	// released.
	if r := runLoad(t, client, target, 4, 4, 0); r.Held != 4 {
		t.Fatalf("warm-up: %d of 4 connections worked; errors: %v", r.Held, r.Errors)
	}
	pool := podPool(t, agentA, client)
	eventually(t, 30*time.Second, "warm-up HBONE connection released", func() bool { return pool.Len() == 0 })
	base := settle(t, agentB)
	opened := agentB.counterSum(t, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination"})
	t.Logf("baseline: client agent (this process) %d goroutines, %d descriptors; server agent process %d goroutines, %d descriptors; RLIMIT_NOFILE soft %d hard %d",
		base.goroutines, base.fds, base.procGoroutines, base.procFDs, lim.Cur, lim.Max)

	// Sample both processes while the client runs, to report the peaks.
	// The sampler runs outside the test goroutine, so it must not call
	// t.Fatal and reads the counts directly.
	var peak loadUsage
	var peakPool int
	procFDDir := fmt.Sprintf("/proc/%d/fd", agentB.cmd.Process.Pid)
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			peak.goroutines = max(peak.goroutines, runtime.NumGoroutine())
			if e, err := os.ReadDir("/proc/self/fd"); err == nil {
				peak.fds = max(peak.fds, len(e))
			}
			if e, err := os.ReadDir(procFDDir); err == nil {
				peak.procFDs = max(peak.procFDs, len(e))
			}
			peakPool = max(peakPool, pool.Len())
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	report := runLoad(t, client, target, n, 200, 2*time.Second)
	elapsed := time.Since(start)
	close(stopSampling)
	<-sampled
	t.Logf("%d connections: %d connected in %d ms, %d still echoed after holding in %d ms, closed in %d ms, total %s; client RLIMIT_NOFILE %d/%d",
		n, report.Connected, report.ConnectMS, report.Held, report.HeldMS, report.CloseMS, elapsed.Round(time.Millisecond), report.Soft, report.Hard)
	t.Logf("peak: client agent (this process) %d goroutines, %d descriptors, %d pooled HBONE connections; server agent process %d descriptors",
		peak.goroutines, peak.fds, peakPool, peak.procFDs)
	if report.Connected != n || report.Held != n {
		t.Fatalf("%d of %d connections opened and %d stayed usable while all were open; %d errors, first: %v",
			report.Connected, n, report.Held, report.ErrorCount, report.Errors)
	}
	if got := agentB.counterSum(t, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination"}) - opened; got < float64(n) {
		t.Errorf("server agent counted %v inbound HBONE connections, want %d: traffic went around the tunnel", got, n)
	}
	// Each HBONE connection carries at most 100 streams.
	if wantPool := (n + 99) / 100; peakPool < wantPool/2 {
		t.Errorf("client agent pooled at most %d HBONE connections for %d concurrent streams, want about %d", peakPool, n, wantPool)
	}
	if peak.fds < base.fds+n {
		t.Errorf("peak of %d descriptors in the client agent's process is below baseline %d plus %d connections: the connections were not all open at once", peak.fds, base.fds, n)
	}
	if peak.procFDs < base.procFDs+n {
		t.Errorf("peak of %d descriptors in the server agent process is below baseline %d plus %d connections: the connections were not all open at once", peak.procFDs, base.procFDs, n)
	}

	// Once the client closed, the agents end the streams, and the pool
	// closes its HBONE connections after the idle timeout (2 s, checked
	// every second). The tolerance covers what the agents and the test
	// process do on their own meanwhile: informer watches, curator audit
	// polls and client-go connections come and go. In the runs so far both
	// counts came back to the baseline exactly, 4 s after the client
	// ended. A leak of one goroutine or descriptor in 200 connections
	// exceeds the tolerance.
	const slackG, slackFD = 50, 25
	var now loadUsage
	deadline := time.Now().Add(20 * time.Second)
	for {
		now = sampleUsage(t, agentB)
		back := now.goroutines <= base.goroutines+slackG && now.fds <= base.fds+slackFD &&
			now.procGoroutines <= base.procGoroutines+slackG && now.procFDs <= base.procFDs+slackFD
		if (pool.Len() == 0 && back) || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("after close, %s after the client ended: client agent (this process) %d goroutines (baseline %d), %d descriptors (baseline %d), %d pooled HBONE connections; server agent process %d goroutines (baseline %d), %d descriptors (baseline %d)",
		time.Since(start.Add(elapsed)).Round(time.Millisecond), now.goroutines, base.goroutines, now.fds, base.fds, pool.Len(),
		now.procGoroutines, base.procGoroutines, now.procFDs, base.procFDs)
	if left := pool.Len(); left != 0 {
		t.Errorf("client agent still pools %d HBONE connections 20 s after the connections closed, want 0 after the 2 s idle timeout", left)
	}
	if now.goroutines > base.goroutines+slackG {
		t.Errorf("client agent's process has %d goroutines 20 s after the connections closed, baseline %d (+%d allowed)", now.goroutines, base.goroutines, slackG)
	}
	if now.fds > base.fds+slackFD {
		t.Errorf("client agent's process has %d open descriptors 20 s after the connections closed, baseline %d (+%d allowed)", now.fds, base.fds, slackFD)
	}
	if now.procGoroutines > base.procGoroutines+slackG {
		t.Errorf("server agent process has %d goroutines 20 s after the connections closed, baseline %d (+%d allowed)", now.procGoroutines, base.procGoroutines, slackG)
	}
	if now.procFDs > base.procFDs+slackFD {
		t.Errorf("server agent process has %d open descriptors 20 s after the connections closed, baseline %d (+%d allowed)", now.procFDs, base.procFDs, slackFD)
	}
}

// loadUsage is a sample of the goroutines and open descriptors of this test
// process, which runs the client's agent, and of the server agent process.
type loadUsage struct {
	goroutines, fds         int
	procGoroutines, procFDs int
}

func sampleUsage(t *testing.T, pa *processAgent) loadUsage {
	t.Helper()
	return loadUsage{
		goroutines: runtime.NumGoroutine(), fds: openFDs(t),
		procGoroutines: pa.goroutines(t), procFDs: pa.openFDs(t),
	}
}

// settle returns the usage once two samples a second apart agree within a
// few goroutines and descriptors in both processes, or after 10 s.
func settle(t *testing.T, pa *processAgent) loadUsage {
	t.Helper()
	u := sampleUsage(t, pa)
	for range 10 {
		time.Sleep(time.Second)
		next := sampleUsage(t, pa)
		stable := abs(next.goroutines-u.goroutines) <= 3 && abs(next.fds-u.fds) <= 2 &&
			abs(next.procGoroutines-u.procGoroutines) <= 3 && abs(next.procFDs-u.procFDs) <= 2
		u = next
		if stable {
			break
		}
	}
	return u
}

func abs(x int) int { return max(x, -x) }

// podPool returns the HBONE pool of an enrolled pod's proxy.
func podPool(t *testing.T, na *nodeAgent, pod *testbed.Pod) interface{ Len() int } {
	t.Helper()
	na.agent.mu.Lock()
	defer na.agent.mu.Unlock()
	p := na.agent.pods[pod.UID]
	if p == nil || p.pool == nil {
		t.Fatalf("pod %s has no proxy in its agent", pod.Name)
	}
	return p.pool
}

// runLoad runs the load client in pod and returns its report.
func runLoad(t *testing.T, pod *testbed.Pod, target string, n, workers int, hold time.Duration) loadReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := runInPod(t, pod, roleLoadClient, envTarget+"="+target, envCount+"="+strconv.Itoa(n),
		envLoadWorkers+"="+strconv.Itoa(workers), envLoadHold+"="+hold.String(), envLoadDeadline+"=90s")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = testWriter{t}
	if err := pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		err = fmt.Errorf("killed after 2 minutes: %w", <-done)
	}
	if err != nil {
		t.Fatalf("load client in %s failed: %v", pod.Name, err)
	}
	var report loadReport
	if err := json.Unmarshal(out.Bytes(), &report); err != nil {
		t.Fatalf("load client output %q: %v", out.String(), err)
	}
	return report
}
