package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mazu-mesh/mazu-ztunnel/bpf"
	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/internal/meshtest"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

const (
	// roleNodeAgent runs RunNode in a process of its own, configured by
	// envAgentConfig.
	roleNodeAgent = "node-agent"
	// envAgentConfig contains the node-agent role's processAgentConfig as
	// JSON.
	envAgentConfig = "MAZU_E2E_AGENT_CONFIG"
)

// processAgentConfig is the part of NodeConfig that the node-agent role
// reads from its environment.
type processAgentConfig struct {
	Kubeconfig      string
	NodeName        string
	CuratorURL      string
	CRSFile         string
	LogKey          string
	WitnessKeys     []string
	CgroupRoot      string
	PinDir          string
	CNISocket       string
	StateDir        string
	PoolIdleTimeout time.Duration
	LogLevel        slog.Level
}

// processAgentAddrs is the JSON line the node-agent role prints on stdout
// once its endpoints listen.
type processAgentAddrs struct {
	Readiness, Metrics, Admin string
}

// runNodeAgent is the node-agent role: it runs RunNode until SIGTERM or
// SIGINT, with Go runtime metrics (go_goroutines) added to the agent's
// registry so that a test can watch the process's goroutines through its
// /metrics endpoint.
func runNodeAgent() int {
	var cfg processAgentConfig
	if err := json.Unmarshal([]byte(os.Getenv(envAgentConfig)), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "node agent: invalid %s: %v\n", envAgentConfig, err)
		return 2
	}
	rest, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "node agent: load kubeconfig %s: %v\n", cfg.Kubeconfig, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err = RunNode(ctx, NodeConfig{
		REST: rest, NodeName: cfg.NodeName, TrustDomain: testbed.TrustDomain,
		RootNamespace: "istio-system", Audience: curator.DefaultAudience, CuratorURL: cfg.CuratorURL,
		CRSFile: cfg.CRSFile, LogKey: cfg.LogKey, WitnessKeys: cfg.WitnessKeys,
		CgroupRoot: cfg.CgroupRoot, PinDir: cfg.PinDir, CNISocket: cfg.CNISocket, StateDir: cfg.StateDir,
		AuditInterval: time.Second, PoolIdleTimeout: cfg.PoolIdleTimeout,
		Endpoints: EndpointsConfig{AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadinessAddr: "127.0.0.1:0"},
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel})),
		Started: func(_ *Agent, e *Endpoints, reg *prometheus.Registry) {
			reg.MustRegister(collectors.NewGoCollector())
			addrs := e.Addrs()
			_ = json.NewEncoder(os.Stdout).Encode(processAgentAddrs{
				Readiness: addrs[0].String(), Metrics: addrs[1].String(), Admin: addrs[2].String(),
			})
		},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "node agent: %v\n", err)
		return 1
	}
	return 0
}

// processAgent is a node agent that runs this test binary in the node-agent
// role, in a cgroup of its own under the node's cgroup root, as a DaemonSet
// pod's agent would. It holds its own descriptors, so its connections do
// not count against the test process's RLIMIT_NOFILE.
type processAgent struct {
	node   *testbed.Node
	socket string
	cgroup string
	pins   string
	log    string
	cmd    *exec.Cmd
	exited chan struct{}
	addrs  processAgentAddrs
}

// startProcessAgent starts a node agent process for node and waits until
// it is ready. A cleanup ends the process by its PID and removes its eBPF
// objects, pins and cgroup, also when the test fails.
func startProcessAgent(t *testing.T, tb *testbed.Testbed, mesh *meshtest.Curator, node *testbed.Node, poolIdleTimeout time.Duration) *processAgent {
	t.Helper()
	dir := t.TempDir()
	pa := &processAgent{
		node:   node,
		socket: filepath.Join(dir, "cni.sock"),
		cgroup: filepath.Join(node.CgroupRoot, "mazu-ztunnel"),
		pins:   filepath.Join(dir, "pins"),
		log:    filepath.Join(dir, "agent.log"),
		exited: make(chan struct{}),
	}
	cfg, err := json.Marshal(processAgentConfig{
		Kubeconfig: tb.Kubeconfig(), NodeName: node.Name, CuratorURL: mesh.URL,
		CRSFile: mesh.CRSFile, LogKey: mesh.LogVKey, WitnessKeys: mesh.WitnessVKeys,
		CgroupRoot: node.CgroupRoot, PinDir: pa.pins, CNISocket: pa.socket, StateDir: filepath.Join(dir, "state"),
		PoolIdleTimeout: poolIdleTimeout, LogLevel: agentLogLevel(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(pa.cgroup, 0o755); err != nil {
		t.Fatalf("create the agent's cgroup: %v", err)
	}
	t.Cleanup(func() { pa.cleanup(t) })

	logFile, err := os.Create(pa.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cg, err := os.Open(pa.cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	stdout, err := os.CreateTemp(dir, "stdout")
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()

	pa.cmd = exec.Command(os.Args[0], "-test.run=^$")
	pa.cmd.Env = append(os.Environ(), envRole+"="+roleNodeAgent, envAgentConfig+"="+string(cfg))
	pa.cmd.Stdout, pa.cmd.Stderr = stdout, logFile
	// Pdeathsig kills the agent when the test process dies before its
	// cleanup runs.
	pa.cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Pdeathsig: syscall.SIGKILL}
	if err := pa.cmd.Start(); err != nil {
		close(pa.exited)
		t.Fatalf("start the node agent process for %s: %v", node.Name, err)
	}
	go func() {
		_ = pa.cmd.Wait()
		close(pa.exited)
	}()

	// The role prints its endpoints' addresses once RunNode started them.
	deadline := time.Now().Add(60 * time.Second)
	for {
		line, _ := os.ReadFile(stdout.Name())
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			if err := json.Unmarshal(line[:i], &pa.addrs); err != nil {
				t.Fatalf("node agent process for %s printed %q: %v", node.Name, line[:i], err)
			}
			break
		}
		select {
		case <-pa.exited:
			t.Fatalf("node agent process for %s exited before it started: %s", node.Name, pa.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("node agent process for %s not started after 60 s", node.Name)
		}
		time.Sleep(100 * time.Millisecond)
	}
	eventually(t, 30*time.Second, "node agent process for "+node.Name+" ready", func() bool {
		_, err := pa.get("http://" + pa.addrs.Readiness + "/healthz/ready")
		return err == nil
	})
	return pa
}

// cleanup ends the process by its PID (SIGTERM, then SIGKILL after 15 s),
// removes the eBPF objects it pinned and its cgroup, and copies its log into
// the test log when the test failed.
func (pa *processAgent) cleanup(t *testing.T) {
	if pa.cmd != nil && pa.cmd.Process != nil {
		_ = pa.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-pa.exited:
			if !pa.cmd.ProcessState.Success() {
				t.Errorf("node agent process for %s: %s", pa.node.Name, pa.cmd.ProcessState)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("node agent process %d for %s still runs 15 s after SIGTERM; killing it", pa.cmd.Process.Pid, pa.node.Name)
			_ = pa.cmd.Process.Kill()
			<-pa.exited
		}
	}
	if _, err := os.Stat(pa.pins); err == nil {
		capture, err := bpf.Open(bpf.Options{PinDir: pa.pins})
		if err != nil {
			t.Errorf("reopen the capture of %s's agent to remove it: %v", pa.node.Name, err)
		} else if err := capture.Remove(); err != nil {
			t.Errorf("remove the capture of %s's agent: %v", pa.node.Name, err)
		}
	}
	if err := os.Remove(pa.cgroup); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("remove the agent's cgroup: %v", err)
	}
	if t.Failed() {
		pa.logTail(t, 64<<10)
	}
}

// logTail copies the last max bytes of the agent's log into the test log.
func (pa *processAgent) logTail(t *testing.T, max int64) {
	f, err := os.Open(pa.log)
	if err != nil {
		return
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > max {
		_, _ = f.Seek(st.Size()-max, io.SeekStart)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		t.Logf("%s agent: %s", pa.node.Name, sc.Text())
	}
}

func (pa *processAgent) get(url string) ([]byte, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}

// metrics scrapes the agent's /metrics endpoint as Prometheus would.
func (pa *processAgent) metrics(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	body, err := pa.get("http://" + pa.addrs.Metrics + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s's agent: %v", pa.node.Name, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse the metrics of %s's agent: %v", pa.node.Name, err)
	}
	return families
}

// counterSum sums the series of a counter that carry the labels.
func (pa *processAgent) counterSum(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	var sum float64
	if f := pa.metrics(t)[name]; f != nil {
		for _, m := range f.GetMetric() {
			if matchLabels(m, labels) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// goroutines reads the process's goroutine count from go_goroutines.
func (pa *processAgent) goroutines(t *testing.T) int {
	t.Helper()
	f := pa.metrics(t)["go_goroutines"]
	if f == nil || len(f.GetMetric()) != 1 {
		t.Fatalf("%s's agent exports no go_goroutines gauge", pa.node.Name)
	}
	return int(f.GetMetric()[0].GetGauge().GetValue())
}

// openFDs counts the process's open file descriptors.
func (pa *processAgent) openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pa.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("count the open descriptors of %s's agent: %v", pa.node.Name, err)
	}
	return len(entries)
}

// fileLimit reads the process's soft and hard RLIMIT_NOFILE from
// /proc/<pid>/limits.
func (pa *processAgent) fileLimit(t *testing.T) (soft, hard uint64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pa.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("read the limits of %s's agent: %v", pa.node.Name, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Max open files")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) < 2 {
			break
		}
		soft, err1 := strconv.ParseUint(fields[0], 10, 64)
		hard, err2 := strconv.ParseUint(fields[1], 10, 64)
		if err1 != nil || err2 != nil {
			break
		}
		return soft, hard
	}
	t.Fatalf("no numeric Max open files line in the limits of %s's agent:\n%s", pa.node.Name, b)
	return 0, 0
}
