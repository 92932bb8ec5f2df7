package perf

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Machine describes where the run happened.
type Machine struct {
	NProc  int    `json:"nproc"`
	CPU    string `json:"cpu_model"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	GOARCH string `json:"goarch"`
	Commit string `json:"commit,omitempty"`
}

// Block is one variant's workloads in one round, with the machine's load
// and CPU use around it.
type Block struct {
	Round       int        `json:"round"`
	Variant     string     `json:"variant"`
	Start       time.Time  `json:"start"`
	Seconds     float64    `json:"seconds"`
	LoadBefore  [3]float64 `json:"load_before"`
	LoadAfter   [3]float64 `json:"load_after"`
	StealBefore int64      `json:"steal_ticks_before"`
	StealAfter  int64      `json:"steal_ticks_after"`
	// CPU is the CPU use during the block, which the noise gate judges. It
	// is nil when the samples could not be read, and CPUError contains the
	// error.
	CPU      *BlockCPU `json:"cpu,omitempty"`
	CPUError string    `json:"cpu_error,omitempty"`
	Errors   []string  `json:"errors,omitempty"`
	Dropped  bool      `json:"dropped"`
	// DropReason names the noise gate's limit that dropped the block:
	// "outside CPU", "steal" or "CPU not measured".
	DropReason string `json:"drop_reason,omitempty"`
}

// VariantResult holds one variant's figures.
type VariantResult struct {
	ID     string `json:"id"`
	Topo   string `json:"topology"`
	Kind   string `json:"kind"`
	Mode   string `json:"crr_mode"`
	Status string `json:"status"` // "run" or "not run"
	Reason string `json:"reason,omitempty"`
	// Rounds holds each metric's value per round (null when missing).
	Rounds map[string][]*float64 `json:"rounds,omitempty"`
	// Metrics summarizes the rounds that were kept.
	Metrics map[string]Summary `json:"metrics,omitempty"`
}

// Ratio is a paired comparison: per-round num/den (or num−den for deltas),
// then the median over rounds.
type Ratio struct {
	Name    string   `json:"name"`
	Num     string   `json:"num"`
	Den     string   `json:"den"`
	Metric  string   `json:"metric"`
	Delta   bool     `json:"delta,omitempty"` // num − den instead of num / den
	Status  string   `json:"status"`          // "run", "not run" or "dropped" (by the noise gate)
	Reason  string   `json:"reason,omitempty"`
	Summary *Summary `json:"summary,omitempty"`
}

// Goal is one target with its verdict: "met", "not met", "inconclusive"
// (the 95% interval includes the limit, or there are too few rounds for
// one) or "not run".
type Goal struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Value  string `json:"value"`
	Detail string `json:"detail,omitempty"`
}

// MicroResult is one micro-benchmark figure over its repetitions.
type MicroResult struct {
	Name    string  `json:"name"`
	Unit    string  `json:"unit"`
	Summary Summary `json:"summary"`
}

// CuratorResult is the curator update-query latency by registration count.
type CuratorResult struct {
	Status string         `json:"status"`
	Reason string         `json:"reason,omitempty"`
	Points []CuratorPoint `json:"points,omitempty"`
	Fit    *GrowthFit     `json:"fit,omitempty"`
}

// CuratorPoint is the median update-query latency at N registrations.
type CuratorPoint struct {
	N         int     `json:"n"`
	LatencyUS Summary `json:"latency_us"`
}

// Results is the suite's output.
type Results struct {
	Machine  Machine   `json:"machine"`
	Config   Config    `json:"config"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Blocks lists every block; the dropped ones are left out of every
	// summary, ratio and benchmark line.
	Blocks   []Block         `json:"blocks"`
	Variants []VariantResult `json:"variants"`
	Ratios   []Ratio         `json:"ratios"`
	Goals    []Goal          `json:"goals"`
	Micro    []MicroResult   `json:"micro,omitempty"`
	Curator  CuratorResult   `json:"curator"`
	Notes    []string        `json:"notes,omitempty"`
}

const curatorReason = "no curator benchmark output was given (make perf runs the curator's AgentUpdates benchmark when curator/server exists)"

// finish turns raw per-round samples into summaries, ratios and goals.
func (res *Results) finish(vs []*variant, samples map[string]map[string]map[int]float64) {
	rounds := res.Config.Rounds
	for i := range res.Blocks {
		b := &res.Blocks[i]
		if reason := res.gateReason(*b); reason != "" {
			b.Dropped, b.DropReason = true, reason
		}
	}
	for _, v := range vs {
		vr := VariantResult{ID: v.ID, Topo: v.Topo, Kind: v.Kind, Mode: v.Mode, Status: "run"}
		if v.Reason != "" {
			vr.Status, vr.Reason = "not run", v.Reason
		} else {
			vr.Rounds = map[string][]*float64{}
			for m, byRound := range samples[v.ID] {
				vals := make([]*float64, rounds)
				for r, x := range byRound {
					if r >= 0 && r < rounds {
						vals[r] = &x
					}
				}
				vr.Rounds[m] = vals
			}
		}
		res.Variants = append(res.Variants, vr)
	}
	if res.Curator.Status == "" {
		res.Curator = CuratorResult{Status: "not run", Reason: curatorReason}
	}
	res.Derive()
}

// Derive recomputes Metrics, Ratios and Goals from the per-round values,
// the dropped rounds and the configuration. It is pure, so results can be
// re-derived from a stored JSON file.
func (res *Results) Derive() {
	dropped := res.droppedBlocks()
	for i := range res.Variants {
		v := &res.Variants[i]
		if v.Status != "run" {
			continue
		}
		v.Metrics = map[string]Summary{}
		for m, vals := range v.Rounds {
			var xs []float64
			for r, p := range vals {
				if p != nil && !dropped[blockKey{v.ID, r}] {
					xs = append(xs, *p)
				}
			}
			if s, err := Summarize(xs); err == nil {
				v.Metrics[m] = s
			}
		}
	}
	res.Ratios = nil
	for _, d := range res.ratioDefs() {
		res.Ratios = append(res.Ratios, res.pair(d, dropped))
	}
	res.Goals = res.goals()
}

func (res *Results) variant(id string) *VariantResult {
	for i := range res.Variants {
		if res.Variants[i].ID == id {
			return &res.Variants[i]
		}
	}
	return nil
}

type blockKey struct {
	variant string
	round   int
}

func (res *Results) droppedBlocks() map[blockKey]bool {
	m := map[blockKey]bool{}
	for _, b := range res.Blocks {
		if b.Dropped {
			m[blockKey{b.Variant, b.Round}] = true
		}
	}
	return m
}

// pair computes d from the rounds in which both variants have a value and
// neither block was dropped.
func (res *Results) pair(d Ratio, dropped map[blockKey]bool) Ratio {
	nv, dv := res.variant(d.Num), res.variant(d.Den)
	switch {
	case nv == nil || dv == nil:
		d.Status, d.Reason = "not run", "variant missing from this run"
		return d
	case nv.Status != "run":
		d.Status, d.Reason = "not run", nv.ID+": "+nv.Reason
		return d
	case dv.Status != "run":
		d.Status, d.Reason = "not run", dv.ID+": "+dv.Reason
		return d
	}
	a, b := nv.Rounds[d.Metric], dv.Rounds[d.Metric]
	var xs []float64
	gated := 0
	for r := range min(len(a), len(b)) {
		if a[r] == nil || b[r] == nil {
			continue
		}
		if dropped[blockKey{d.Num, r}] || dropped[blockKey{d.Den, r}] {
			gated++
			continue
		}
		if d.Delta {
			xs = append(xs, *a[r]-*b[r])
		} else {
			xs = append(xs, PairedRatio([]float64{*a[r]}, []float64{*b[r]})...)
		}
	}
	s, err := Summarize(xs)
	switch {
	case err != nil && gated > 0:
		d.Status, d.Reason = "dropped", gateReason
		return d
	case err != nil:
		d.Status, d.Reason = "not run", "no round has both values"
		return d
	}
	d.Status, d.Summary = "run", &s
	return d
}

// gateReason explains a figure that was measured but whose every round the
// noise gate dropped.
const gateReason = "the noise gate dropped every round that has both values"

func ratio(num, den, metric string) Ratio {
	return Ratio{Name: num + " / " + den + " " + metric, Num: num, Den: den, Metric: metric}
}

func delta(num, den, metric string) Ratio {
	return Ratio{Name: num + " − " + den + " " + metric, Num: num, Den: den, Metric: metric, Delta: true}
}

// ratioDefs lists the comparisons the suite reports.
func (res *Results) ratioDefs() []Ratio {
	c := res.Config
	cpu := httpKey(c.CPUConns, false)
	var out []Ratio
	for _, id := range []string{"hbone-rbe-warm", "hbone-rbe-update"} {
		for _, conns := range c.HTTPConns {
			for _, p := range []string{"p50", "p90", "p99"} {
				out = append(out, ratio(id, "hbone-x509", httpKey(conns, false)+"_"+p+"_us"))
			}
		}
	}
	for _, p := range []string{"p50", "p90", "p99"} {
		out = append(out, ratio("hbone-rbe-warm-newtunnel", "hbone-x509-newtunnel", "crr_"+p+"_us"))
	}
	for _, p := range []string{"p50", "p90", "p99"} {
		out = append(out, ratio("hbone-rbe-cold", "hbone-x509-newtunnel", "crr_"+p+"_us"))
	}
	out = append(out, ratio("hbone-rbe-cold", "hbone-rbe-warm-newtunnel", "crr_p90_us"))
	for _, conns := range c.HTTPConns {
		k := httpKey(conns, false)
		for _, p := range []string{"p50", "p90", "p99"} {
			out = append(out, ratio("hbone-x509", "null", k+"_"+p+"_us"))
		}
		out = append(out, delta("hbone-x509", "direct", k+"_p90_us"), delta("hbone-x509", "direct", k+"_p99_us"))
		out = append(out, delta("null", "direct", k+"_p90_us"), delta("hbone-x509", "null", k+"_p90_us"))
		out = append(out, ratio("tls", "null", k+"_p90_us"))
	}
	for _, conns := range c.JitterConns {
		k := httpKey(conns, true)
		out = append(out, ratio("hbone-x509", "null", k+"_p90_us"), delta("hbone-x509", "direct", k+"_p90_us"))
	}
	out = append(out,
		ratio("hbone-x509", "null", "rr_1b_p50_us"), ratio("hbone-x509", "null", "rr_1k_p90_us"),
		delta("hbone-x509", "null", "rr_1b_p50_us"), ratio("tls", "null", "rr_1k_p90_us"),
	)
	for _, t := range []string{"tput_1_gbps", "tput_4_gbps"} {
		out = append(out, ratio("hbone-x509", "tls", t), ratio("hbone-x509", "direct", t), ratio("tls", "direct", t), ratio("null", "direct", t))
	}
	out = append(out,
		ratio("hbone-rbe-warm", "tls", "tput_1_gbps"), ratio("hbone-rbe-warm", "hbone-x509", "tput_1_gbps"),
		ratio("hbone-rbe-warm", "hbone-x509", "cpu_vcpu_per_krps_max"),
		ratio("hbone-x509", "tls", "tput_1_gbit_per_proxy_cpu_s"),
		ratio("hbone-x509", "null", "cpu_vcpu_per_krps_max"), ratio("tls", "null", "cpu_vcpu_per_krps_max"),
		ratio("null", "direct", "crr_p50_us"), ratio("hbone-x509", "direct", "crr_p50_us"),
		ratio("hbone-x509-newtunnel", "hbone-x509", "crr_p50_us"), ratio("tls", "null", "crr_p50_us"),
		ratio("hbone-x509-newtunnel", "tls", "crr_p50_us"),
		ratio("hbone-x509", "null", "httpnc_p90_us"), ratio("hbone-x509-newtunnel", "hbone-x509", "httpnc_p90_us"), ratio("tls", "null", "httpnc_p90_us"), ratio("hbone-x509-same-newtunnel", "hbone-x509-same", "crr_p50_us"),
		ratio("hbone-x509-same", "null-same", cpu+"_p90_us"), delta("hbone-x509-same", "direct-same", cpu+"_p90_us"),
		ratio("hbone-x509-same", "hbone-x509", cpu+"_p90_us"),
	)
	return out
}

// workloadOf names the workload that produces metric m: an HTTP point
// such as "http_c16_nj", "rr_1b", "tput_4", "httpnc" or "crr". CPU and
// memory come from the jitter-free HTTP point at cpuConns.
func workloadOf(m string, cpuConns int) string {
	f := strings.Split(m, "_")
	switch {
	case f[0] == "cpu" || f[0] == "rss":
		return httpKey(cpuConns, false)
	case f[0] == "http" && len(f) >= 3:
		return strings.Join(f[:3], "_")
	case (f[0] == "rr" || f[0] == "tput") && len(f) >= 2:
		return f[0] + "_" + f[1]
	}
	return f[0]
}

// neededWorkloads maps each variant to the workloads whose figures feed a
// ratio or a goal; quick mode runs only those.
func (res *Results) neededWorkloads() map[string]map[string]bool {
	need := map[string]map[string]bool{}
	add := func(id, metric string) {
		if need[id] == nil {
			need[id] = map[string]bool{}
		}
		need[id][workloadOf(metric, res.Config.CPUConns)] = true
	}
	for _, r := range res.ratioDefs() {
		add(r.Num, r.Metric)
		add(r.Den, r.Metric)
	}
	for _, id := range []string{"hbone-x509", "hbone-rbe-warm"} {
		add(id, "cpu_vcpu_per_krps_max")
	}
	return need
}

func (res *Results) findRatio(num, den, metric string, isDelta bool) *Ratio {
	for i := range res.Ratios {
		r := &res.Ratios[i]
		if r.Num == num && r.Den == den && r.Metric == metric && r.Delta == isDelta {
			return r
		}
	}
	return nil
}

// verdict compares a median's 95% interval with a limit. The goal is met
// when the whole interval is within the limit, and not met when the whole
// interval is beyond it. It is inconclusive when the interval includes the
// limit or there are too few rounds for a 95% interval.
func verdict(s *Summary, limit float64, atMost bool) (status, detail string) {
	within := func(x float64) bool {
		if atMost {
			return x <= limit
		}
		return x >= limit
	}
	// For an upper limit the interval's top is the worst case, for a lower
	// limit its bottom.
	best, worst := s.Lo, s.Hi
	if !atMost {
		best, worst = s.Hi, s.Lo
	}
	switch {
	case !s.CI95:
		return "inconclusive", fmt.Sprintf("%d kept rounds are too few for a 95%% interval", s.N)
	case within(worst):
		return "met", ""
	case !within(best):
		return "not met", ""
	}
	return "inconclusive", fmt.Sprintf("the 95%% interval [%s, %s] includes the limit %s", fmtNum(s.Lo), fmtNum(s.Hi), fmtNum(limit))
}

func (res *Results) ratioGoal(name string, r *Ratio, limit float64, atMost bool, what string) Goal {
	g := Goal{Name: name}
	if r != nil && r.Status == "dropped" {
		g.Status, g.Value, g.Detail = "inconclusive", "–", r.Reason
		return g
	}
	if r == nil || r.Status != "run" {
		g.Status, g.Value = "not run", "–"
		if r != nil {
			g.Detail = r.Reason
		}
		return g
	}
	g.Status, g.Detail = verdict(r.Summary, limit, atMost)
	g.Value = fmt.Sprintf("%s× %s(%s)", fmtNum(r.Summary.Median), what, ciText(*r.Summary))
	return g
}

// cpuGoal checks the busier proxy's CPU per 1000 rps of variant id.
func (res *Results) cpuGoal(name, id string) Goal {
	g := Goal{Name: name}
	s, ok := res.variant(id).metric("cpu_vcpu_per_krps_max")
	if !ok {
		g.Status, g.Value, g.Detail = "not run", "–", "no CPU sample for "+id
		if v := res.variant(id); v != nil && v.Reason != "" {
			g.Detail = id + ": " + v.Reason
		} else if v != nil && slices.ContainsFunc(v.Rounds["cpu_vcpu_per_krps_max"], func(p *float64) bool { return p != nil }) {
			g.Status, g.Detail = "inconclusive", "the noise gate dropped every round of "+id
		}
		return g
	}
	g.Status, g.Detail = verdict(&s, 0.06, true)
	g.Value = fmt.Sprintf("%s vCPU for the busier proxy of %s (%s)", fmtNum(s.Median), id, ciText(s))
	return g
}

// goals checks the latency goals at every connection count measured
// without jitter, one goal per count, and the throughput and CPU goals for
// both the mTLS-HBONE and the RBE-HBONE path.
func (res *Results) goals() []Goal {
	c := res.Config
	var gs []Goal
	for _, n := range c.HTTPConns {
		gs = append(gs, res.ratioGoal(fmt.Sprintf("RBE-HBONE p90 ≤ 1.02× mTLS-HBONE (pooled, c=%d)", n),
			res.findRatio("hbone-rbe-warm", "hbone-x509", httpKey(n, false)+"_p90_us", false), 1.02, true, ""))
	}
	for _, n := range c.HTTPConns {
		gs = append(gs, res.ratioGoal(fmt.Sprintf("HBONE 1 KB p90 ≤ 1.3× null proxy pair (c=%d)", n),
			res.findRatio("hbone-x509", "null", httpKey(n, false)+"_p90_us", false), 1.3, true,
			fmt.Sprintf("(HTTP 1 KB, %g rps, no jitter) ", c.QPS)))
	}
	for _, p := range []struct{ label, id string }{{"mTLS-HBONE", "hbone-x509"}, {"RBE-HBONE", "hbone-rbe-warm"}} {
		gs = append(gs, res.ratioGoal(p.label+" throughput ≥ 0.9× plain TLS pair",
			res.findRatio(p.id, "tls", "tput_1_gbps", false), 0.9, false, "(one stream) "))
	}
	for _, p := range []struct{ label, id string }{{"mTLS-HBONE", "hbone-x509"}, {"RBE-HBONE", "hbone-rbe-warm"}} {
		gs = append(gs, res.cpuGoal(fmt.Sprintf("%s ≤ 0.06 vCPU per 1000 rps per proxy (c=%d)", p.label, c.CPUConns), p.id))
	}
	gs = append(gs, res.curatorGoal())
	return gs
}

// curatorGoal judges the update-query growth with two checks: the slope
// per e-fold of registrations must not rise by more than 25% from the lower
// to the upper half of the range, and y = a + b·ln n must fit the medians at
// least as well (R²) as y = a + b·n. Both passing is met, both failing not
// met; a disagreement, or fewer than five sizes, is inconclusive.
func (res *Results) curatorGoal() Goal {
	g := Goal{Name: "curator latency growth no worse than logarithmic"}
	f := res.Curator.Fit
	if res.Curator.Status != "run" || f == nil {
		g.Status, g.Value, g.Detail = "not run", "–", res.Curator.Reason
		return g
	}
	logBetter := f.LogR2 >= f.LinR2
	g.Value = fmt.Sprintf("over %d sizes, R² %.2f for y = a + b·ln n against %.2f for y = a + b·n; slope %s µs per tenfold of registrations; slope per e-fold %s µs over the lower half of the range and %s µs over the upper half",
		f.Points, f.LogR2, f.LinR2, fmtNum(f.LogB*math.Ln10), fmtNum(f.SlopeStart), fmtNum(f.SlopeEnd))
	switch {
	case f.Points < 5:
		g.Status, g.Detail = "inconclusive", fmt.Sprintf("%d sizes are too few to tell the fits apart; the benchmark runs five, from 10 to 100,000", f.Points)
	case f.Negligible:
		g.Status, g.Detail = "met", "the growth over the whole range is under 10% of the mean latency"
	case f.NoWorseThanLog && logBetter:
		g.Status = "met"
	case !f.NoWorseThanLog && !logBetter:
		g.Status = "not met"
	case f.NoWorseThanLog:
		g.Status, g.Detail = "inconclusive", "the slope does not rise, but the linear model fits at least as well"
	default:
		g.Status, g.Detail = "inconclusive", "the logarithmic model fits better, but the slope rises by more than 25% over the range"
	}
	return g
}

func (v *VariantResult) metric(m string) (Summary, bool) {
	if v == nil || v.Status != "run" {
		return Summary{}, false
	}
	s, ok := v.Metrics[m]
	return s, ok
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(-\d+)?\s+(\d+)\s+(.*)$`)

// ParseBench reads `go test -bench` output and summarizes every reported
// unit of every benchmark over its repetitions (-count).
func ParseBench(path string) ([]MicroResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read benchmark output: %w", err)
	}
	defer f.Close()
	return parseBench(bufio.NewScanner(f))
}

func parseBench(sc *bufio.Scanner) ([]MicroResult, error) {
	type key struct{ name, unit string }
	vals := map[key][]float64{}
	var order []key
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		f := strings.Fields(m[4])
		for i := 0; i+1 < len(f); i += 2 {
			x, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			k := key{m[1], f[i+1]}
			if _, seen := vals[k]; !seen {
				order = append(order, k)
			}
			vals[k] = append(vals[k], x)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read benchmark output: %w", err)
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("benchmark output has no benchmark lines")
	}
	var out []MicroResult
	for _, k := range order {
		s, err := Summarize(vals[k])
		if err != nil {
			continue
		}
		out = append(out, MicroResult{Name: k.name, Unit: k.unit, Summary: s})
	}
	return out, nil
}

// WriteJSON writes res to path.
func (res *Results) WriteJSON(path string) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// ReadJSON reads results written by WriteJSON.
func ReadJSON(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, fmt.Errorf("decode results %s: %w", path, err)
	}
	return &res, nil
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// BenchLines renders every kept per-round value in Go benchmark format, one
// line per variant, metric and round, for benchstat:
//
//	benchstat -col /variant -row /m perf/results/quick.bench.txt
func (res *Results) BenchLines() string {
	dropped := res.droppedBlocks()
	var b strings.Builder
	for _, v := range res.Variants {
		if v.Status != "run" {
			continue
		}
		for _, m := range sortedKeys(v.Rounds) {
			for r, p := range v.Rounds[m] {
				if p == nil || dropped[blockKey{v.ID, r}] {
					continue
				}
				fmt.Fprintf(&b, "BenchmarkMesh/variant=%s/m=%s 1 %g value\n", v.ID, m, *p)
			}
		}
	}
	return b.String()
}

var curatorBenchName = regexp.MustCompile(`^BenchmarkAgentUpdates/indexed/N=(\d+)$`)

// ParseCuratorBench reads the curator's `go test -bench AgentUpdates`
// output and fits the growth of the update-query p50 with the registry
// size. Each "indexed/N=<n>" benchmark reports the p50 in "p50-µs".
func ParseCuratorBench(path string) (CuratorResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return CuratorResult{}, fmt.Errorf("read curator benchmark output: %w", err)
	}
	defer f.Close()
	return parseCuratorBench(bufio.NewScanner(f))
}

func parseCuratorBench(sc *bufio.Scanner) (CuratorResult, error) {
	micro, err := parseBench(sc)
	if err != nil {
		return CuratorResult{}, err
	}
	var res CuratorResult
	for _, m := range micro {
		g := curatorBenchName.FindStringSubmatch(m.Name)
		if g == nil || m.Unit != "p50-µs" {
			continue
		}
		n, err := strconv.Atoi(g[1])
		if err != nil {
			return CuratorResult{}, fmt.Errorf("curator benchmark %s: invalid size: %w", m.Name, err)
		}
		res.Points = append(res.Points, CuratorPoint{N: n, LatencyUS: m.Summary})
	}
	if len(res.Points) == 0 {
		return CuratorResult{}, fmt.Errorf("curator benchmark output has no AgentUpdates/indexed/N=<n> line with p50-µs")
	}
	slices.SortFunc(res.Points, func(a, b CuratorPoint) int { return a.N - b.N })
	ns := make([]float64, len(res.Points))
	ys := make([]float64, len(res.Points))
	for i, p := range res.Points {
		ns[i], ys[i] = float64(p.N), p.LatencyUS.Median
	}
	fit, err := FitGrowth(ns, ys)
	if err != nil {
		return CuratorResult{}, fmt.Errorf("curator growth: %w", err)
	}
	res.Status, res.Fit = "run", &fit
	return res, nil
}
