package perf

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
)

// Config sets what one run measures.
type Config struct {
	Mode   string `json:"mode"` // "quick", "full" or "smoke"
	Rounds int    `json:"rounds"`
	// HTTPConns are the Fortio connection counts run without jitter;
	// JitterConns those also run with jitter.
	HTTPConns    []int         `json:"http_conns"`
	JitterConns  []int         `json:"jitter_conns"`
	QPS          float64       `json:"qps"`
	HTTPDuration time.Duration `json:"http_duration"`
	// HTTPExactly, when set, runs that many requests instead of a duration.
	HTTPExactly  int64         `json:"http_exactly,omitempty"`
	HTTPWarmup   time.Duration `json:"http_warmup"`
	Payload      int           `json:"payload_bytes"`
	RRCount      int64         `json:"rr_count"`
	TputDuration time.Duration `json:"tput_duration"`
	CRRCount     int64         `json:"crr_count"`
	// NewConnQPS and NewConnConns set the Fortio HTTP run in which every
	// request opens a new connection (the CRR modes at a fixed rate).
	NewConnQPS   float64 `json:"newconn_qps"`
	NewConnConns int     `json:"newconn_conns"`
	// CPUConns is the connection count whose jitter-free HTTP point gives
	// CPU and memory per 1000 rps.
	CPUConns int `json:"cpu_conns"`
	// MaxOutsideVCPU and MaxStealShare are the noise gate. A block is
	// dropped when processes outside the suite, kernel threads and steal
	// used more than MaxOutsideVCPU CPUs on average during it, or when
	// steal alone took more than MaxStealShare of the machine's CPU time.
	// Zero turns a check off.
	MaxOutsideVCPU float64 `json:"max_outside_vcpu"`
	MaxStealShare  float64 `json:"max_steal_share"`
	// ProxyProcs is GOMAXPROCS for each proxy, like ztunnel's 2 workers.
	ProxyProcs int `json:"proxy_gomaxprocs"`
	// UpdateRegs bounds the identities registered in the background during
	// one hbone-rbe-update block.
	UpdateRegs int `json:"update_registrations"`
	// Trim runs, for each variant, only the workloads whose figures feed a
	// ratio or a goal (quick mode); the others show as missing.
	Trim bool   `json:"trim,omitempty"`
	Seed uint64 `json:"seed"`
}

// Preset returns the configuration for mode "quick", "full" or "smoke".
//
// The noise gate allows 0.25 vCPU outside the suite per block, a 12.5%
// share of a 2-CPU machine. Tick sampling in /proc/stat leaves a residual.
// In a quiet quick run on 2 vCPUs, outside CPU stayed within ±0.13 vCPU
// over the 0.2 s blocks and ±0.07 over blocks of 1 s or more, below the
// limit. On a larger machine the same absolute limit is
// stricter than needed, because outside work can run on CPUs the suite
// leaves idle. Steal takes CPU from the suite's own vCPUs, so its limit is
// lower: 5% of the machine's CPU time.
func Preset(mode string) (Config, error) {
	c := Config{Mode: mode, QPS: 1000, Payload: 1024, CPUConns: 16, ProxyProcs: 2,
		MaxOutsideVCPU: 0.25, MaxStealShare: 0.05, NewConnQPS: 200, NewConnConns: 4}
	switch mode {
	case "quick":
		// Six rounds is the fewest that gives a 95% interval for a median;
		// eight leave room for the noise gate to drop two. Each block runs
		// only the workloads its ratios and goals use.
		c.Rounds, c.HTTPConns, c.JitterConns, c.Trim = 8, []int{1, 16, 64}, []int{16}, true
		c.HTTPDuration, c.HTTPWarmup = 750*time.Millisecond, 250*time.Millisecond
		c.RRCount, c.TputDuration, c.CRRCount = 1000, 500*time.Millisecond, 100
		c.UpdateRegs = 40
	case "full":
		c.Rounds, c.HTTPConns, c.JitterConns = 10, []int{1, 4, 16, 64}, []int{1, 4, 16, 64}
		c.HTTPDuration, c.HTTPWarmup = 5*time.Second, time.Second
		c.RRCount, c.TputDuration, c.CRRCount = 5000, 4*time.Second, 1000
		c.UpdateRegs = 150
	case "smoke":
		c.Rounds, c.HTTPConns, c.JitterConns = 1, []int{4}, nil
		c.HTTPExactly, c.HTTPWarmup, c.CPUConns = 300, 0, 4
		c.RRCount, c.TputDuration, c.CRRCount = 200, 200*time.Millisecond, 30
		c.UpdateRegs = 5
		c.MaxOutsideVCPU, c.MaxStealShare = 0, 0
	default:
		return c, fmt.Errorf("mode %q: want quick, full or smoke", mode)
	}
	return c, nil
}

// variant is one data path.
type variant struct {
	ID     string
	Topo   string // "cross-node" or "same-node"
	Kind   string // direct, null, tls, hbone-x509, hbone-rbe
	Mode   string // connection mode of the CRR workload
	Warm   bool   // runs the warm workloads (HTTP, RR, throughput, CPU)
	CRR    bool
	Reason string // set when not run

	entry [3]string // http, echo, sink addresses the client dials
	pids  []int     // proxy processes, outbound first
}

// Target indices into variant.entry and server ports.
var targetPorts = [3]int{portHTTP, portEcho, portSink}

// variants lists every data path of the suite.
//
// The hbone-rbe rows run the tunnel package with RBE-registered
// certificates and rbeauth.Verifier over an rbeauth.CuratorRegistry, backed
// by a testbed API server and a meshtest curator with two witnesses. When
// the testbed binaries are missing they are reported as not run.
func variants() []*variant {
	return []*variant{
		{ID: "direct", Topo: "cross-node", Kind: "direct", Mode: "new TCP connection", Warm: true, CRR: true},
		{ID: "null", Topo: "cross-node", Kind: "null", Mode: "new connection through both proxies", Warm: true, CRR: true},
		{ID: "tls", Topo: "cross-node", Kind: "tls", Mode: "new mTLS tunnel per connection", Warm: true, CRR: true},
		{ID: "hbone-x509", Topo: "cross-node", Kind: "hbone-x509", Mode: "new stream on a pooled tunnel", Warm: true, CRR: true},
		{ID: "hbone-x509-newtunnel", Topo: "cross-node", Kind: "hbone-x509", Mode: "new tunnel per connection", CRR: true},
		{ID: "hbone-rbe-warm", Topo: "cross-node", Kind: "hbone-rbe", Mode: "new stream on a pooled tunnel, warm verification cache", Warm: true, CRR: true},
		{ID: "hbone-rbe-warm-newtunnel", Topo: "cross-node", Kind: "hbone-rbe", Mode: "new tunnel per connection, warm verification cache", CRR: true},
		{ID: "hbone-rbe-cold", Topo: "cross-node", Kind: "hbone-rbe", Mode: "new tunnel per connection, verifier caches dropped before each", CRR: true},
		{ID: "hbone-rbe-update", Topo: "cross-node", Kind: "hbone-rbe", Mode: "new stream on a pooled tunnel while the curator registers more identities", Warm: true, CRR: true},
		{ID: "direct-same", Topo: "same-node", Kind: "direct", Mode: "new TCP connection", Warm: true, CRR: true},
		{ID: "null-same", Topo: "same-node", Kind: "null", Mode: "new connection through both proxies", Warm: true},
		{ID: "hbone-x509-same", Topo: "same-node", Kind: "hbone-x509", Mode: "new stream on a pooled tunnel", Warm: true, CRR: true},
		{ID: "hbone-x509-same-newtunnel", Topo: "same-node", Kind: "hbone-x509", Mode: "new tunnel per connection", CRR: true},
	}
}

// Runner runs the suite.
type Runner struct {
	Config Config
	// Exe is the suite binary to re-execute for children; default
	// os.Executable.
	Exe string
	// MicroFile holds `go test -bench` output of the crypto
	// micro-benchmarks; empty skips them.
	MicroFile string
	// CuratorFile holds the curator's `go test -bench AgentUpdates` output;
	// when it is empty or missing the curator rows are reported as not run.
	CuratorFile string
	Log         *slog.Logger
}

type sample struct {
	values map[string]float64
}

// Run builds the topology, runs every round and returns the results.
func (r *Runner) Run(ctx context.Context) (*Results, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("run the suite as root: it creates network namespaces")
	}
	log := r.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg := r.Config
	if cfg.Rounds < 1 {
		return nil, fmt.Errorf("rounds %d: need at least 1", cfg.Rounds)
	}
	exe := r.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find suite binary: %w", err)
		}
	}
	res := &Results{Machine: machineInfo(), Config: cfg, Started: time.Now().UTC()}
	topo, err := NewTopology(ctx)
	if err != nil {
		return nil, fmt.Errorf("build topology: %w", err)
	}
	defer func() {
		if err := topo.Close(); err != nil {
			log.Error("remove topology", "err", err)
		}
	}()
	pki, err := NewPKI()
	if err != nil {
		return nil, err
	}
	vs := variants()
	var rbeEnv *rbeEnv
	if slices.ContainsFunc(vs, func(v *variant) bool { return v.Kind == "hbone-rbe" && v.Reason == "" }) {
		env, err := startRBE(ctx, log, netip.MustParseAddr(ipNodeA), netip.MustParseAddr(ipNodeB))
		if err != nil {
			reason := "RBE setup failed: " + err.Error()
			if errors.Is(err, errNoTestbed) {
				reason = errNoTestbed.Error()
			}
			log.Warn("RBE variants not run", "reason", reason)
			for _, v := range vs {
				if v.Kind == "hbone-rbe" {
					v.Reason = reason
				}
			}
		} else {
			rbeEnv = env
			defer env.Close()
		}
	}
	var children []*child
	defer func() {
		for _, c := range children {
			c.stop()
		}
	}()
	maxLife := 4 * time.Hour
	start := func(ns, name string, cfg ChildConfig, env ...string) (*child, error) {
		cfg.MaxLife = maxLife
		c, err := startChild(ctx, exe, ns, name, cfg, env)
		if err != nil {
			return nil, err
		}
		children = append(children, c)
		if err := c.waitReady(20 * time.Second); err != nil {
			return nil, err
		}
		return c, nil
	}
	for _, s := range []struct{ ns, ip string }{{topo.SPod, ipSPod}, {topo.SPod2, ipSPod2}} {
		if _, err := start(s.ns, "server "+s.ip, ChildConfig{Role: "server", Server: &ServerConfig{Addr: s.ip}}); err != nil {
			return nil, err
		}
	}
	procEnv := "GOMAXPROCS=" + strconv.Itoa(cfg.ProxyProcs)
	startProxy := func(ns, name string, pc ProxyConfig) (int, error) {
		pc.PKI = pki
		c, err := start(ns, name, ChildConfig{Role: "proxy", Proxy: &pc}, procEnv)
		if err != nil {
			return 0, err
		}
		return c.Pid(), nil
	}
	// routes builds listen→target routes for the three server ports.
	routes := func(listenIP string, base int, target func(i int) string) []ProxyRoute {
		var rs []ProxyRoute
		for i := range targetPorts {
			rs = append(rs, ProxyRoute{Listen: fmt.Sprintf("%s:%d", listenIP, base+i), Target: target(i)})
		}
		return rs
	}
	server := func(ip string) func(int) string {
		return func(i int) string { return fmt.Sprintf("%s:%d", ip, targetPorts[i]) }
	}
	hop := func(ip string, base int) func(int) string {
		return func(i int) string { return fmt.Sprintf("%s:%d", ip, base+i) }
	}
	hboneIn := map[string]int{}
	for slot, v := range vs {
		if v.Reason != "" {
			continue
		}
		srvIP, peerIP := ipSPod, ipNodeB
		peerNS := topo.NodeB
		if v.Topo == "same-node" {
			srvIP, peerIP, peerNS = ipSPod2, ipNodeA, topo.NodeA
		}
		outBase, inBase := 20000+100*slot, 20000+100*slot+50
		for i := range targetPorts {
			v.entry[i] = fmt.Sprintf("%s:%d", ipNodeACli, outBase+i)
		}
		switch v.Kind {
		case "direct":
			for i := range targetPorts {
				v.entry[i] = server(srvIP)(i)
			}
		case "null", "tls":
			in, err := startProxy(peerNS, v.ID+" inbound", ProxyConfig{Kind: v.Kind, Side: "in", Routes: routes(peerIP, inBase, server(srvIP))})
			if err != nil {
				return nil, err
			}
			out, err := startProxy(topo.NodeA, v.ID+" outbound", ProxyConfig{Kind: v.Kind, Side: "out", Routes: routes(ipNodeACli, outBase, hop(peerIP, inBase))})
			if err != nil {
				return nil, err
			}
			v.pids = []int{out, in}
		case "hbone-x509":
			// One inbound HBONE server per node, shared by the pooled and
			// the new-tunnel outbound variants.
			peer := peerIP + ":15008"
			in, ok := hboneIn[peer]
			if !ok {
				in, err = startProxy(peerNS, "hbone inbound "+peer, ProxyConfig{Kind: "hbone", Side: "in", Routes: []ProxyRoute{{Listen: peer}}})
				if err != nil {
					return nil, err
				}
				hboneIn[peer] = in
			}
			out, err := startProxy(topo.NodeA, v.ID+" outbound", ProxyConfig{Kind: "hbone", Side: "out", Peer: peer,
				NewTunnel: strings.HasSuffix(v.ID, "-newtunnel"), Routes: routes(ipNodeACli, outBase, server(srvIP))})
			if err != nil {
				return nil, err
			}
			v.pids = []int{out, in}
		case "hbone-rbe":
			// The cold row has its own inbound proxy, which drops its
			// verifier's caches for the client before each connection;
			// the other rows share one with a warm cache.
			cold := v.ID == "hbone-rbe-cold"
			port := 15108
			srvRBE, cliRBE := rbeEnv.server, rbeEnv.client
			if cold {
				port = 15208
				srvRBE.ForgetUID, cliRBE.ForgetUID = rbeEnv.cliUID, rbeEnv.srvUID
			}
			peer := fmt.Sprintf("%s:%d", peerIP, port)
			in, ok := hboneIn[peer]
			if !ok {
				in, err = startProxy(peerNS, "hbone-rbe inbound "+peer, ProxyConfig{Kind: "hbone", Side: "in", RBE: &srvRBE, Routes: []ProxyRoute{{Listen: peer}}})
				if err != nil {
					return nil, err
				}
				hboneIn[peer] = in
			}
			out, err := startProxy(topo.NodeA, v.ID+" outbound", ProxyConfig{Kind: "hbone", Side: "out", Peer: peer, RBE: &cliRBE,
				NewTunnel: cold || strings.HasSuffix(v.ID, "-newtunnel"), Routes: routes(ipNodeACli, outBase, server(srvIP))})
			if err != nil {
				return nil, err
			}
			v.pids = []int{out, in}
		}
	}
	log.Info("topology ready", "prefix", topo.Prefix, "children", len(children))

	runLoadChild := func(lc LoadConfig) (*LoadResult, error) {
		c, err := startChild(ctx, exe, topo.CPod, "load "+lc.Workload+" "+lc.Target, ChildConfig{Role: "load", Load: &lc, MaxLife: 10 * time.Minute}, nil)
		if err != nil {
			return nil, err
		}
		defer c.stop()
		type out struct {
			line string
			err  error
		}
		ch := make(chan out, 1)
		go func() { l, err := c.out.ReadString('\n'); ch <- out{l, err} }()
		budget := 2*lc.Duration + lc.Warmup + 2*time.Minute
		select {
		case o := <-ch:
			if o.err != nil {
				_ = c.cmd.Wait()
				return nil, fmt.Errorf("load %s to %s failed: %s", lc.Workload, lc.Target, strings.TrimSpace(c.errb.String()))
			}
			var lr LoadResult
			if err := json.Unmarshal([]byte(o.line), &lr); err != nil {
				return nil, fmt.Errorf("decode load result: %w", err)
			}
			return &lr, nil
		case <-time.After(budget):
			return nil, fmt.Errorf("load %s to %s: no result after %s", lc.Workload, lc.Target, budget)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}

	pfs, err := procfs.NewFS(procfs.DefaultMountPoint)
	if err != nil {
		return nil, fmt.Errorf("open /proc: %w", err)
	}
	self := os.Getpid()
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(time.Now().UnixNano())))
	samples := map[string]map[string]map[int]float64{} // variant → metric → round → value
	put := func(v, m string, round int, x float64) {
		if samples[v] == nil {
			samples[v] = map[string]map[int]float64{}
		}
		if samples[v][m] == nil {
			samples[v][m] = map[int]float64{}
		}
		samples[v][m][round] = x
	}
	var need map[string]map[string]bool
	if cfg.Trim {
		need = (&Results{Config: cfg}).neededWorkloads()
	}
	var runnable []*variant
	for _, v := range vs {
		if v.Reason == "" {
			runnable = append(runnable, v)
		}
	}
	for round := range cfg.Rounds {
		order := slices.Clone(runnable)
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, v := range order {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			cpuBefore, cpuErr := sampleCPU(pfs)
			b := Block{Round: round, Variant: v.ID, LoadBefore: loadAvg(), StealBefore: stealTicks(), Start: time.Now().UTC()}
			var stopUpdates func() (int64, time.Duration)
			if v.ID == "hbone-rbe-update" && rbeEnv != nil {
				stopUpdates = rbeEnv.background(ctx, cfg.UpdateRegs)
			}
			errs := r.runBlock(v, round, runLoadChild, put, need)
			if stopUpdates != nil {
				n, last := stopUpdates()
				put(v.ID, "curator_registrations", round, float64(n))
				put(v.ID, "curator_update_s", round, last.Seconds())
			}
			b.LoadAfter, b.StealAfter = loadAvg(), stealTicks()
			b.Seconds = time.Since(b.Start).Seconds()
			if cpuErr == nil {
				var cpuAfter cpuSample
				if cpuAfter, cpuErr = sampleCPU(pfs); cpuErr == nil {
					var bc BlockCPU
					if bc, cpuErr = blockCPU(cpuBefore, cpuAfter, self); cpuErr == nil {
						b.CPU = &bc
					}
				}
			}
			if cpuErr != nil {
				b.CPUError = cpuErr.Error()
				log.Warn("block CPU not measured", "round", round, "variant", v.ID, "err", cpuErr)
			}
			for _, e := range errs {
				b.Errors = append(b.Errors, e.Error())
			}
			res.Blocks = append(res.Blocks, b)
			outside := "–"
			if b.CPU != nil {
				outside = fmt.Sprintf("%.2f", b.CPU.OutsideVCPU)
			}
			log.Info("block done", "round", round, "variant", v.ID, "outside_vcpu", outside, "load", b.LoadAfter[0], "seconds", fmt.Sprintf("%.1f", b.Seconds), "errors", len(errs))
		}
	}
	res.Finished = time.Now().UTC()
	if r.CuratorFile != "" {
		if _, err := os.Stat(r.CuratorFile); err == nil {
			cur, err := ParseCuratorBench(r.CuratorFile)
			if err != nil {
				cur = CuratorResult{Status: "not run", Reason: err.Error()}
			}
			res.Curator = cur
		}
	}
	res.finish(vs, samples)
	if r.MicroFile != "" {
		micro, err := ParseBench(r.MicroFile)
		if err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("micro-benchmarks not read: %v", err))
		} else {
			res.Micro = micro
		}
	}
	return res, nil
}

func httpKey(c int, jitter bool) string {
	j := "nj"
	if jitter {
		j = "j"
	}
	return fmt.Sprintf("http_c%d_%s", c, j)
}

// runBlock runs the workloads of v once: all of them, or with need set
// (quick mode), only those need lists for v.
func (r *Runner) runBlock(v *variant, round int, load func(LoadConfig) (*LoadResult, error), put func(string, string, int, float64), need map[string]map[string]bool) []error {
	cfg := r.Config
	selected := func(workload string) bool { return need == nil || need[v.ID][workload] }
	var errs []error
	if v.Warm {
		type point struct {
			c      int
			jitter bool
		}
		var points []point
		for _, c := range cfg.HTTPConns {
			points = append(points, point{c, false})
		}
		for _, c := range cfg.JitterConns {
			points = append(points, point{c, true})
		}
		for _, p := range points {
			if !selected(httpKey(p.c, p.jitter)) {
				continue
			}
			lr, err := load(LoadConfig{Workload: "http", Target: v.entry[0], Conns: p.c, QPS: cfg.QPS, Duration: cfg.HTTPDuration,
				Exactly: cfg.HTTPExactly, Warmup: cfg.HTTPWarmup, Jitter: p.jitter, Payload: cfg.Payload, PIDs: v.pids})
			if err != nil {
				errs = append(errs, err)
				continue
			}
			k := httpKey(p.c, p.jitter)
			put(v.ID, k+"_p50_us", round, lr.P50)
			put(v.ID, k+"_p90_us", round, lr.P90)
			put(v.ID, k+"_p99_us", round, lr.P99)
			put(v.ID, k+"_p999_us", round, lr.P999)
			put(v.ID, k+"_qps", round, lr.ActualQPS)
			put(v.ID, k+"_errors", round, float64(lr.Errors))
			if p.c == cfg.CPUConns && !p.jitter && len(lr.Procs) > 0 && lr.Wall > 0 && lr.ActualQPS > 0 {
				worst := 0.0
				for i, pu := range lr.Procs {
					side := "out"
					if i > 0 {
						side = "in"
					}
					perK := pu.CPUSeconds / lr.Wall / (lr.ActualQPS / 1000)
					worst = max(worst, perK)
					put(v.ID, "cpu_vcpu_per_krps_"+side, round, perK)
					put(v.ID, "rss_mb_"+side, round, float64(pu.RSSBytes)/1e6)
				}
				put(v.ID, "cpu_vcpu_per_krps_max", round, worst)
			}
		}
		for _, rr := range []struct {
			name string
			size int
		}{{"rr_1b", 1}, {"rr_1k", 1024}} {
			if !selected(rr.name) {
				continue
			}
			lr, err := load(LoadConfig{Workload: "rr", Target: v.entry[1], Exactly: cfg.RRCount, Payload: rr.size})
			if err != nil {
				errs = append(errs, err)
				continue
			}
			put(v.ID, rr.name+"_p50_us", round, lr.P50)
			put(v.ID, rr.name+"_p90_us", round, lr.P90)
			put(v.ID, rr.name+"_p99_us", round, lr.P99)
			put(v.ID, rr.name+"_errors", round, float64(lr.Errors))
		}
		for _, streams := range []int{1, 4} {
			if !selected(fmt.Sprintf("tput_%d", streams)) {
				continue
			}
			lr, err := load(LoadConfig{Workload: "tput", Target: v.entry[2], Streams: streams, Duration: cfg.TputDuration, PIDs: v.pids})
			if err != nil {
				errs = append(errs, err)
				continue
			}
			k := fmt.Sprintf("tput_%d", streams)
			put(v.ID, k+"_gbps", round, lr.Gbps)
			cpu := 0.0
			for _, pu := range lr.Procs {
				cpu += pu.CPUSeconds
			}
			if cpu > 0 {
				put(v.ID, k+"_gbit_per_proxy_cpu_s", round, lr.Gbps*lr.Wall/cpu)
			}
		}
	}
	if v.CRR && selected("httpnc") {
		lr, err := load(LoadConfig{Workload: "http", Target: v.entry[0], Conns: cfg.NewConnConns, QPS: cfg.NewConnQPS, Duration: cfg.HTTPDuration,
			Exactly: cfg.HTTPExactly / 4, NewConn: true, Payload: cfg.Payload})
		if err != nil {
			errs = append(errs, err)
		} else {
			put(v.ID, "httpnc_p50_us", round, lr.P50)
			put(v.ID, "httpnc_p90_us", round, lr.P90)
			put(v.ID, "httpnc_p99_us", round, lr.P99)
			put(v.ID, "httpnc_qps", round, lr.ActualQPS)
			put(v.ID, "httpnc_errors", round, float64(lr.Errors))
		}
	}
	if v.CRR && selected("crr") {
		lr, err := load(LoadConfig{Workload: "crr", Target: v.entry[1], Exactly: cfg.CRRCount})
		if err != nil {
			errs = append(errs, err)
		} else {
			put(v.ID, "crr_p50_us", round, lr.P50)
			put(v.ID, "crr_p90_us", round, lr.P90)
			put(v.ID, "crr_p99_us", round, lr.P99)
			put(v.ID, "crr_conn_per_s", round, lr.ActualQPS)
			put(v.ID, "crr_errors", round, float64(lr.Errors))
		}
	}
	return errs
}

func loadAvg() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	f := strings.Fields(string(b))
	for i := 0; i < 3 && i < len(f); i++ {
		l[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return l
}

// stealTicks returns the cumulative steal time in USER_HZ ticks.
func stealTicks() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) > 8 {
		n, _ := strconv.ParseInt(f[8], 10, 64)
		return n
	}
	return 0
}

func machineInfo() Machine {
	m := Machine{NProc: runtime.NumCPU(), Go: runtime.Version(), GOARCH: runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	return m
}
