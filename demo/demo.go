// Package demo is the showcase behind `make demo`. It starts the testbed
// with istiod, a curator with two witnesses and a mazu-ztunnel process per
// node, and sends HTTP between pods through eBPF capture and HBONE. Then it
// plays four attacks. Each counts as blocked only when the defence's own
// signal (an agent's verification metric, a witness rejection, an audit
// alert) shows that it fired.
package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mazu-mesh/mazu-ztunnel/agent"
	"github.com/mazu-mesh/mazu-ztunnel/bpf"
	"github.com/mazu-mesh/mazu-ztunnel/internal/rogue"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// Config configures Run.
type Config struct {
	// BinDir holds the mazu-ztunnel and mazu-cni binaries.
	BinDir string
	// Self is the demo binary, which Run executes inside pods in a role
	// (see RunRole). Empty means os.Executable.
	Self string
	// Requests is the number of HTTP requests each client sends. Zero
	// means 200.
	Requests int
	// OutDir keeps the witnesses' evidence and the agents' logs after the
	// run. Empty makes a new folder under the temporary folder.
	OutDir string
	// Out receives the narration and the summary line.
	Out    io.Writer
	Logger *slog.Logger
}

// Summary is the outcome of a run.
type Summary struct {
	Requests, Errors int
	P50, P90         time.Duration
	Blocked, Attacks int
	Failures         []string
	Leftovers        []string
	// Testbed is the testbed's name, which its namespaces and cgroups
	// carry; OutDir is where the evidence was kept.
	Testbed, OutDir string
}

// OK reports whether everything worked and nothing was left behind.
func (s *Summary) OK() bool {
	return len(s.Failures) == 0 && len(s.Leftovers) == 0 && s.Requests > 0 && s.Errors == 0 && s.Blocked == s.Attacks
}

// Line is the summary line, the last line Run prints.
func (s *Summary) Line() string {
	status := "ok"
	if !s.OK() {
		status = "FAIL"
	}
	return fmt.Sprintf("demo: %s requests=%d errors=%d p50_ms=%.2f p90_ms=%.2f attacks_blocked=%d/%d",
		status, s.Requests, s.Errors, ms(s.P50), ms(s.P90), s.Blocked, s.Attacks)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// run holds the parts of one demo run.
type run struct {
	cfg    Config
	out    io.Writer
	log    *slog.Logger
	tb     *testbed.Testbed
	mesh   *rogue.Curator
	agents map[string]*agentProc
	nodeA  *testbed.Node
	nodeB  *testbed.Node
	pods   map[string]*testbed.Pod
	sum    Summary
	dir    string
	// serviceIP is web's ClusterIP; forkBase is the log size that fork B
	// shares with the honest log.
	serviceIP string
	forkBase  int64
}

// Run plays the demo and prints its summary line last. It tears everything
// down before it returns, also when ctx is cancelled.
func Run(ctx context.Context, cfg Config) *Summary {
	if cfg.Requests == 0 {
		cfg.Requests = 200
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &run{cfg: cfg, out: cfg.Out, log: cfg.Logger, agents: map[string]*agentProc{}, pods: map[string]*testbed.Pod{}}
	if err := r.play(ctx); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted: %w", err)
		}
		r.sum.Failures = append(r.sum.Failures, err.Error())
		r.say("FAILED: %v", err)
	}
	r.teardown()
	for _, f := range r.sum.Failures {
		fmt.Fprintf(r.out, "failure: %s\n", f)
	}
	for _, l := range r.sum.Leftovers {
		fmt.Fprintf(r.out, "left behind: %s\n", l)
	}
	fmt.Fprintln(r.out, r.sum.Line())
	return &r.sum
}

func (r *run) say(format string, args ...any) {
	fmt.Fprintf(r.out, "%s  %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func (r *run) play(ctx context.Context) error {
	if r.cfg.Self == "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the demo binary: %w", err)
		}
		r.cfg.Self = self
	}
	for _, bin := range []string{"mazu-ztunnel", "mazu-cni"} {
		if _, err := os.Stat(filepath.Join(r.cfg.BinDir, bin)); err != nil {
			return fmt.Errorf("%s missing from %s: build it with `make build`", bin, r.cfg.BinDir)
		}
	}
	r.dir = r.cfg.OutDir
	r.sum.OutDir = r.dir
	if r.dir == "" {
		dir, err := os.MkdirTemp("", "mazu-demo-")
		if err != nil {
			return err
		}
		r.dir = dir
		r.sum.OutDir = dir
	} else if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return err
	}

	r.say("step 1/5: starting the testbed: etcd, kube-apiserver, kube-controller-manager, istiod")
	start := time.Now()
	tb, err := testbed.Start(ctx, testbed.Options{Istiod: true, Logger: r.log})
	if err != nil {
		return fmt.Errorf("start the testbed: %w", err)
	}
	r.tb = tb
	r.sum.Testbed = tb.Name()
	r.say("  control plane ready in %.1f s (kubeconfig %s)", time.Since(start).Seconds(), tb.Kubeconfig())

	r.say("step 2/5: starting a curator with 2 witnesses, 2 nodes and a mazu-ztunnel process on each")
	curatorLog, err := os.Create(filepath.Join(r.dir, "curator.log"))
	if err != nil {
		return err
	}
	defer curatorLog.Close()
	r.mesh, err = rogue.Start(ctx, rogue.Options{Client: tb.Client(), Dir: filepath.Join(r.dir, "curator"), Fronts: []string{"node-a", "node-b"},
		Logger: slog.New(slog.NewTextHandler(curatorLog, nil))})
	if err != nil {
		return fmt.Errorf("start the curator: %w", err)
	}
	if r.nodeA, err = tb.AddNode(ctx, "node-a"); err != nil {
		return err
	}
	if r.nodeB, err = tb.AddNode(ctx, "node-b"); err != nil {
		return err
	}
	for _, n := range []*testbed.Node{r.nodeA, r.nodeB} {
		a, err := r.startAgent(ctx, n)
		if err != nil {
			return err
		}
		r.say("  %s (%s): mazu-ztunnel pid %d in cgroup %s, metrics on %s", n.Name, n.IP, a.cmd.Process.Pid, a.cgroup, a.metrics)
	}

	r.say("step 3/5: creating pods through mazu-cni in the ambient namespace %q", demoNS)
	if err := r.createPods(ctx); err != nil {
		return err
	}

	r.say("step 4/5: sending HTTP through eBPF capture and HBONE")
	if err := r.traffic(ctx); err != nil {
		return err
	}

	r.say("step 5/5: attacks")
	attacks := []struct {
		name string
		fn   func(context.Context) (bool, error)
	}{
		{"a. leaked token replayed from another pod", r.attackReplay},
		{"b. certificate minted with istiod's CA key", r.attackRogueCA},
		{"c. curator re-registers the server's ID", r.attackReRegister},
		{"d. curator shows node-b a forked log", r.attackFork},
	}
	for _, a := range attacks {
		r.sum.Attacks++
		r.say("attack %s", a.name)
		blocked, err := a.fn(ctx)
		switch {
		case err != nil:
			r.sum.Failures = append(r.sum.Failures, fmt.Sprintf("attack %s: %v", a.name, err))
			r.say("  -> ERROR: %v", err)
		case blocked:
			r.sum.Blocked++
			r.say("  -> BLOCKED")
		default:
			r.sum.Failures = append(r.sum.Failures, "attack "+a.name+" was not blocked")
			r.say("  -> NOT BLOCKED")
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	r.say("evidence and logs kept in %s", r.dir)
	return nil
}

const demoNS = "demo"

func (r *run) createPods(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: demoNS, Labels: map[string]string{agent.DataplaneModeLabel: "ambient"}}}
	if _, err := r.tb.Client().CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", demoNS, err)
	}
	specs := []struct {
		node *testbed.Node
		spec testbed.PodSpec
	}{
		{r.nodeB, testbed.PodSpec{Namespace: demoNS, Name: "web", ServiceAccount: "web", Labels: map[string]string{"app": "web"},
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
		{r.nodeA, testbed.PodSpec{Namespace: demoNS, Name: "client", ServiceAccount: "client"}},
		{r.nodeB, testbed.PodSpec{Namespace: demoNS, Name: "neighbor", ServiceAccount: "neighbor"}},
	}
	for _, s := range specs {
		s.spec.OnNetwork = cniAdd(filepath.Join(r.cfg.BinDir, "mazu-cni"), r.agents[s.node.Name].socket)
		pod, err := r.tb.AddPod(ctx, s.node, s.spec)
		if err != nil {
			return err
		}
		r.pods[pod.Name] = pod
		if err := r.waitRegistered(ctx, pod); err != nil {
			return err
		}
		r.say("  pod %s/%s on %s, IP %s: enrolled and registered", pod.Namespace, pod.Name, s.node.Name, pod.IP)
		if pod.Name == "web" {
			// The log up to here is what fork B will share with the
			// honest log in attack d.
			if r.forkBase, err = r.mesh.Size(ctx); err != nil {
				return err
			}
		}
	}
	// An attacker pod outside the mesh, on the client's node.
	pod, err := r.tb.AddPod(ctx, r.nodeA, testbed.PodSpec{Namespace: "attacker", Name: "mallory", ServiceAccount: "mallory"})
	if err != nil {
		return err
	}
	r.pods[pod.Name] = pod
	r.say("  pod attacker/mallory on node-a, IP %s: not in the mesh", pod.IP)

	server := r.pods["web"]
	if err := server.Start(r.inPod(ctx, server, "http-server", envTarget+"=:8080")); err != nil {
		return err
	}
	// Wait until the server listens, dialling from a thread in its network
	// namespace. That thread is outside the pod's cgroup, so eBPF does not
	// capture the dial.
	err = poll(ctx, 30*time.Second, "web listening on :8080", func() (bool, error) {
		dialErr := server.Do(func() error {
			conn, err := net.DialTimeout("tcp", "127.0.0.1:8080", time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		})
		return dialErr == nil, nil
	})
	if err != nil {
		return err
	}
	svc, err := r.tb.AddService(ctx, demoNS, "web", map[string]string{"app": "web"},
		corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)})
	if err != nil {
		return err
	}
	r.serviceIP = svc.Spec.ClusterIP
	if _, err := r.tb.WaitEndpoints(ctx, demoNS, "web", 1, 30*time.Second); err != nil {
		return err
	}
	r.say("  service web.demo: ClusterIP %s:80 -> web:8080", r.serviceIP)
	return nil
}

// waitRegistered waits until the pod's agent shows it enrolled and its
// certificate registered with a cosigned proof.
func (r *run) waitRegistered(ctx context.Context, pod *testbed.Pod) error {
	a := r.agents[pod.Node.Name]
	return poll(ctx, 60*time.Second, "pod "+pod.Name+" registered", func() (bool, error) {
		id, err := a.registeredID(ctx, string(pod.UID))
		return id != "", err
	})
}

// inPod returns a command running the demo binary in the pod in a role.
func (r *run) inPod(ctx context.Context, pod *testbed.Pod, role string, env ...string) *exec.Cmd {
	cmd := pod.Command(ctx, r.cfg.Self)
	cmd.Env = append(os.Environ(), append(env, EnvRole+"="+role, "POD_NAME="+pod.Name)...)
	return cmd
}

// runInPod runs a role to completion and decodes its JSON report.
func (r *run) runInPod(ctx context.Context, pod *testbed.Pod, role string, report any, env ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := r.inPod(ctx, pod, role, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := pod.Start(cmd); err != nil {
		return err
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%s in pod %s: %w: %s", role, pod.Name, err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(stdout.Bytes(), report); err != nil {
		return fmt.Errorf("%s in pod %s printed %q: %w", role, pod.Name, stdout.String(), err)
	}
	return nil
}

func (r *run) traffic(ctx context.Context) error {
	var all []float64
	target := "http://" + r.serviceIP + ":80/"
	for _, name := range []string{"client", "neighbor"} {
		pod := r.pods[name]
		inbound := map[string]string{"reporter": "destination"}
		before, err := r.agents["node-b"].counter(ctx, "istio_tcp_connections_opened_total", inbound)
		if err != nil {
			return err
		}
		var rep clientReport
		start := time.Now()
		if err := r.runInPod(ctx, pod, "http-client", &rep, envTarget+"="+target, fmt.Sprintf("%s=%d", envCount, r.cfg.Requests)); err != nil {
			return err
		}
		after, err := r.agents["node-b"].counter(ctx, "istio_tcp_connections_opened_total", inbound)
		if err != nil {
			return err
		}
		r.sum.Requests += r.cfg.Requests
		r.sum.Errors += r.cfg.Requests - rep.OK
		all = append(all, rep.Latencies...)
		p50, p90 := percentile(rep.Latencies, 50), percentile(rep.Latencies, 90)
		where := "other node"
		if pod.Node == r.pods["web"].Node {
			where = "same node"
		}
		r.say("  %s (%s) -> %s: %d/%d OK in %.1f s, p50 %.2f ms, p90 %.2f ms, reply %q",
			name, where, target, rep.OK, r.cfg.Requests, time.Since(start).Seconds(), p50, p90, rep.Body)
		r.say("    server's agent: istio_tcp_connections_opened_total{reporter=\"destination\"} +%d (inbound over HBONE)", int(after-before))
		for i, e := range rep.Errors {
			if i == 3 {
				break
			}
			r.say("    error: %s", e)
		}
		if int(after-before) < rep.OK {
			return fmt.Errorf("the server's agent counted %d inbound HBONE connections for %d requests from %s: traffic went around the mesh", int(after-before), rep.OK, name)
		}
		if rep.Body != "hello from web" {
			return fmt.Errorf("%s got %q, want the server's greeting", name, rep.Body)
		}
	}
	r.sum.P50 = time.Duration(percentile(all, 50) * float64(time.Millisecond))
	r.sum.P90 = time.Duration(percentile(all, 90) * float64(time.Millisecond))
	return nil
}

func percentile(v []float64, p int) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

// teardown removes everything in the reverse order of creation.
func (r *run) teardown() {
	r.say("teardown: agents, eBPF pins, curator, pods, nodes, control plane")
	for _, name := range []string{"node-b", "node-a"} {
		if a := r.agents[name]; a != nil {
			if err := a.stop(); err != nil {
				r.sum.Failures = append(r.sum.Failures, err.Error())
			}
		}
	}
	if r.mesh != nil {
		r.mesh.Stop()
	}
	if r.tb != nil {
		if err := r.tb.Stop(); err != nil {
			r.sum.Failures = append(r.sum.Failures, fmt.Sprintf("stop the testbed: %v", err))
		}
		r.sum.Leftovers = append(r.sum.Leftovers, r.tb.Leftovers()...)
	}
	for _, a := range r.agents {
		r.sum.Leftovers = append(r.sum.Leftovers, a.leftovers()...)
	}
}

// agentProc is one mazu-ztunnel process.
type agentProc struct {
	node                    *testbed.Node
	cmd                     *exec.Cmd
	exited                  chan struct{}
	cgroup, pins, socket    string
	metrics, admin, logPath string
}

func (r *run) startAgent(ctx context.Context, node *testbed.Node) (*agentProc, error) {
	dir := filepath.Join(r.dir, "agent-"+node.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	a := &agentProc{
		node: node, cgroup: filepath.Join(node.CgroupRoot, "mazu-ztunnel"),
		pins: filepath.Join(dir, "pins"), socket: filepath.Join(dir, "cni.sock"),
		admin: ports[0], metrics: ports[1], logPath: filepath.Join(dir, "agent.log"), exited: make(chan struct{}),
	}
	r.agents[node.Name] = a
	if err := os.MkdirAll(a.cgroup, 0o755); err != nil {
		return nil, fmt.Errorf("create the agent's cgroup: %w", err)
	}

	args := []string{
		"-kubeconfig", r.tb.Kubeconfig(), "-node-name", node.Name, "-curator-url", r.mesh.URL(node.Name),
		"-crs", r.mesh.CRSFile, "-log-key", r.mesh.LogKeyFile,
		"-witness-key", r.mesh.WitnessKeyFiles[0], "-witness-key", r.mesh.WitnessKeyFiles[1],
		"-cgroup-root", node.CgroupRoot, "-pin-dir", a.pins, "-cni-socket", a.socket,
		"-state-dir", filepath.Join(dir, "state"), "-audit-interval", "1s",
		"-admin-addr", a.admin, "-metrics-addr", a.metrics, "-readiness-addr", ports[2],
		"-trust-domain", testbed.TrustDomain, "-log-level", "info",
	}
	logFile, err := os.Create(a.logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cg, err := os.Open(a.cgroup)
	if err != nil {
		return nil, err
	}
	defer cg.Close()

	a.cmd = exec.Command(filepath.Join(r.cfg.BinDir, "mazu-ztunnel"), args...)
	a.cmd.Stdout, a.cmd.Stderr = logFile, logFile
	a.cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start mazu-ztunnel for %s: %w", node.Name, err)
	}
	go func() { a.cmd.Wait(); close(a.exited) }()

	ready := "http://" + ports[2] + "/healthz/ready"
	err = poll(ctx, 90*time.Second, "mazu-ztunnel on "+node.Name+" ready", func() (bool, error) {
		select {
		case <-a.exited:
			return false, fmt.Errorf("mazu-ztunnel for %s exited: %s; see %s", node.Name, a.cmd.ProcessState, a.logPath)
		default:
		}
		return httpGet(ctx, ready) == nil, nil
	})
	return a, err
}

// stop ends the agent by PID, then removes its eBPF programs and pins and
// its cgroup.
func (a *agentProc) stop() error {
	var errs []error
	if a.cmd != nil && a.cmd.Process != nil {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.exited:
		case <-time.After(15 * time.Second):
			_ = a.cmd.Process.Kill()
			<-a.exited
		}
	}
	if _, err := os.Stat(a.pins); err == nil {
		capture, err := bpf.Open(bpf.Options{PinDir: a.pins})
		if err != nil {
			errs = append(errs, fmt.Errorf("reopen %s's capture to remove it: %w", a.node.Name, err))
		} else if err := capture.Remove(); err != nil {
			errs = append(errs, fmt.Errorf("remove %s's capture: %w", a.node.Name, err))
		}
	}
	if err := os.Remove(a.cgroup); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove the agent's cgroup: %w", err))
	}
	return errors.Join(errs...)
}

func (a *agentProc) leftovers() []string {
	var left []string
	if a.cmd != nil && a.cmd.ProcessState == nil {
		select {
		case <-a.exited:
		default:
			left = append(left, fmt.Sprintf("mazu-ztunnel (pid %d)", a.cmd.Process.Pid))
		}
	}
	if mounts, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(mounts), " "+a.pins+" ") {
		left = append(left, "bpffs mount "+a.pins)
	}
	if ents, err := os.ReadDir(a.pins); err == nil && len(ents) > 0 {
		left = append(left, "bpffs pins in "+a.pins)
	}
	if _, err := os.Stat(a.cgroup); err == nil {
		left = append(left, "cgroup "+a.cgroup)
	}
	return left
}

// counter sums a counter's series that carry the labels, read from the
// agent's /metrics endpoint as Prometheus would scrape it.
func (a *agentProc) counter(ctx context.Context, name string, labels map[string]string) (float64, error) {
	body, err := get(ctx, "http://"+a.metrics+"/metrics")
	if err != nil {
		return 0, fmt.Errorf("scrape %s's agent: %w", a.node.Name, err)
	}
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		match := true
		for k, v := range labels {
			if !strings.Contains(line, fmt.Sprintf("%s=%q", k, v)) {
				match = false
			}
		}
		if !match {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
			sum += v
		}
	}
	return sum, nil
}

// registeredID returns the pod's registered ID from the agent's
// /config_dump, or "" while it has none.
func (a *agentProc) registeredID(ctx context.Context, uid string) (string, error) {
	body, err := get(ctx, "http://"+a.admin+"/config_dump")
	if err != nil {
		return "", nil
	}
	var dump struct {
		Certificates []struct {
			UID   string `json:"uid"`
			State struct {
				ID         string `json:"id"`
				Registered bool   `json:"registered"`
			} `json:"state"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal(body, &dump); err != nil {
		return "", fmt.Errorf("decode %s's config_dump: %w", a.node.Name, err)
	}
	for _, c := range dump.Certificates {
		if c.UID == uid && c.State.Registered {
			return c.State.ID, nil
		}
	}
	return "", nil
}

// cniAdd invokes mazu-cni as a container runtime would.
func cniAdd(bin, socket string) func(context.Context, *testbed.Pod) error {
	return func(ctx context.Context, pod *testbed.Pod) error {
		conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"testbed","type":"mazu-cni","socket":%q,"timeoutSeconds":30}`, socket)
		cmd := exec.CommandContext(ctx, bin)
		cmd.Env = []string{
			"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + string(pod.UID), "CNI_NETNS=" + pod.NetnsPath(), "CNI_IFNAME=eth0",
			"CNI_PATH=/opt/cni/bin",
			fmt.Sprintf("CNI_ARGS=K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", pod.Namespace, pod.Name, pod.UID),
		}
		cmd.Stdin = strings.NewReader(conf)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("mazu-cni ADD: %w: %s", err, out)
		}
		return nil
	}
}

func poll(ctx context.Context, timeout time.Duration, what string, fn func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := fn()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %s", what, timeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func get(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}

func httpGet(ctx context.Context, url string) error {
	_, err := get(ctx, url)
	return err
}

func freePorts(n int) ([]string, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	var out []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("reserve a loopback port: %w", err)
		}
		lns = append(lns, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}
