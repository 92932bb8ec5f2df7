package perf

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func fixed(t *testing.T) *Results {
	t.Helper()
	res, err := ReadJSON("testdata/fixed.json")
	if err != nil {
		t.Fatal(err)
	}
	res.Derive()
	return res
}

func TestDeriveRatiosSkipDroppedRounds(t *testing.T) {
	res := fixed(t)
	r := res.findRatio("hbone-x509", "null", "http_c16_nj_p90_us", false)
	if r == nil || r.Status != "run" {
		t.Fatalf("hbone/null p90 ratio: got %+v", r)
	}
	// Rounds 0-4 give 1.1, 1.2, 1.3, 1.15, 1.25; the hbone-x509 block of round 5 (9.0) is dropped.
	if math.Abs(r.Summary.Median-1.2) > 1e-9 || r.Summary.N != 5 {
		t.Fatalf("median %v over %d rounds, want 1.2 over 5", r.Summary.Median, r.Summary.N)
	}
	d := res.findRatio("hbone-x509", "direct", "http_c16_nj_p90_us", true)
	if d == nil || d.Summary == nil || d.Summary.Median != 70 {
		t.Fatalf("hbone − direct p90 delta: got %+v, want median 70", d)
	}
	if s := res.variant("hbone-x509").Metrics["cpu_vcpu_per_krps_max"]; s.Median != 0.05 {
		t.Fatalf("CPU median %v, want 0.05 without the dropped round", s.Median)
	}
	rbe := res.findRatio("hbone-rbe-warm", "hbone-x509", "http_c16_nj_p90_us", false)
	if rbe == nil || rbe.Status != "not run" || !strings.Contains(rbe.Reason, "curator is missing") {
		t.Fatalf("RBE ratio: got %+v, want not run with the variant's reason", rbe)
	}
	if tl := res.findRatio("tls", "null", "http_c16_nj_p90_us", false); tl == nil || tl.Status != "not run" {
		t.Fatalf("tls/null p90 without tls samples: got %+v, want not run", tl)
	}
}

func TestGoals(t *testing.T) {
	res := fixed(t)
	// Every hbone-x509 figure has 5 kept rounds, too few for a 95% interval.
	want := map[string]string{
		"RBE-HBONE p90 ≤ 1.02× mTLS-HBONE (pooled, c=16)":      "not run",
		"HBONE 1 KB p90 ≤ 1.3× null proxy pair (c=16)":         "inconclusive",
		"mTLS-HBONE throughput ≥ 0.9× plain TLS pair":          "inconclusive",
		"RBE-HBONE throughput ≥ 0.9× plain TLS pair":           "not run",
		"mTLS-HBONE ≤ 0.06 vCPU per 1000 rps per proxy (c=16)": "inconclusive",
		"RBE-HBONE ≤ 0.06 vCPU per 1000 rps per proxy (c=16)":  "not run",
		"curator latency growth no worse than logarithmic":     "not run",
	}
	checkGoals(t, res.Goals, want)
	if !strings.Contains(res.Goals[1].Detail, "too few for a 95% interval") {
		t.Errorf("p90 goal detail %q: want a note that 5 rounds give no 95%% interval", res.Goals[1].Detail)
	}

	// Six rounds give a 95% interval from the smallest to the largest.
	six := func(xs ...float64) *Summary {
		s, err := Summarize(xs)
		if err != nil || !s.CI95 {
			t.Fatalf("summary of %v: %+v, %v", xs, s, err)
		}
		return &s
	}
	for _, tc := range []struct {
		name   string
		s      *Summary
		limit  float64
		atMost bool
		want   string
	}{
		{"upper limit, interval below", six(0.95, 0.97, 0.99, 1.0, 1.01, 1.02), 1.02, true, "met"},
		// Median 0.89 with an interval of 0.37–3.29 around a limit of 1.02.
		{"upper limit, interval straddles", six(0.37, 0.6, 0.85, 0.93, 1.5, 3.29), 1.02, true, "inconclusive"},
		{"upper limit, interval above", six(1.03, 1.05, 1.08, 1.09, 1.1, 1.2), 1.02, true, "not met"},
		{"lower limit, interval above", six(1.09, 1.2, 1.3, 1.31, 1.4, 1.55), 0.9, false, "met"},
		{"lower limit, interval straddles", six(0.8, 0.85, 0.95, 1.0, 1.1, 1.2), 0.9, false, "inconclusive"},
		{"lower limit, interval below", six(0.5, 0.6, 0.7, 0.8, 0.85, 0.89), 0.9, false, "not met"},
	} {
		got, detail := verdict(tc.s, tc.limit, tc.atMost)
		if got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
		if (got == "inconclusive") != strings.Contains(detail, "includes the limit") {
			t.Errorf("%s: detail %q does not match the verdict %q", tc.name, detail, got)
		}
	}
}

func checkGoals(t *testing.T, got []Goal, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("got %d goals, want %d", len(got), len(want))
	}
	for _, g := range got {
		w, ok := want[g.Name]
		if !ok {
			t.Errorf("unexpected goal %q (%s)", g.Name, g.Status)
		} else if w != g.Status {
			t.Errorf("goal %q: got %q (%s; %s), want %q", g.Name, g.Status, g.Value, g.Detail, w)
		}
	}
}

// TestGoalsEveryConnectionCount checks that the latency goals are judged at
// every connection count and that the throughput and CPU goals cover the
// RBE path, with each of the three verdicts.
func TestGoalsEveryConnectionCount(t *testing.T) {
	rounds := func(xs ...float64) []*float64 {
		out := make([]*float64, len(xs))
		for i := range xs {
			out[i] = &xs[i]
		}
		return out
	}
	times := func(base []float64, f ...float64) []*float64 {
		xs := make([]float64, len(base))
		for i := range base {
			xs[i] = base[i] * f[i]
		}
		return rounds(xs...)
	}
	x1 := []float64{110, 115, 120, 125, 120, 118}
	x16 := []float64{110, 120, 150, 125, 118, 112}
	x64 := []float64{140, 150, 145, 160, 155, 142}
	flat := rounds(100, 100, 100, 100, 100, 100)
	run := func(id string, m map[string][]*float64) VariantResult {
		return VariantResult{ID: id, Status: "run", Rounds: m}
	}
	res := &Results{Config: Config{Rounds: 6, HTTPConns: []int{1, 16, 64}, CPUConns: 16, QPS: 1000}, Variants: []VariantResult{
		run("null", map[string][]*float64{"http_c1_nj_p90_us": flat, "http_c16_nj_p90_us": flat, "http_c64_nj_p90_us": flat}),
		run("tls", map[string][]*float64{"tput_1_gbps": rounds(5, 5, 5, 5, 5, 5)}),
		run("hbone-x509", map[string][]*float64{
			"http_c1_nj_p90_us": rounds(x1...), "http_c16_nj_p90_us": rounds(x16...), "http_c64_nj_p90_us": rounds(x64...),
			"tput_1_gbps":           rounds(5, 5.5, 6, 5, 5.2, 5.4),
			"cpu_vcpu_per_krps_max": rounds(0.04, 0.045, 0.05, 0.04, 0.042, 0.048),
		}),
		run("hbone-rbe-warm", map[string][]*float64{
			"http_c1_nj_p90_us":     times(x1, 1, 0.99, 1.01, 0.98, 0.97, 1),
			"http_c16_nj_p90_us":    times(x16, 0.37, 0.6, 0.85, 0.93, 1.5, 3.29),
			"http_c64_nj_p90_us":    times(x64, 1.03, 1.05, 1.08, 1.09, 1.1, 1.2),
			"tput_1_gbps":           rounds(4, 4.5, 5, 5.5, 6, 4.2),
			"cpu_vcpu_per_krps_max": rounds(0.07, 0.08, 0.065, 0.09, 0.07, 0.075),
		}),
	}}
	res.Derive()
	checkGoals(t, res.Goals, map[string]string{
		"RBE-HBONE p90 ≤ 1.02× mTLS-HBONE (pooled, c=1)":       "met",
		"RBE-HBONE p90 ≤ 1.02× mTLS-HBONE (pooled, c=16)":      "inconclusive",
		"RBE-HBONE p90 ≤ 1.02× mTLS-HBONE (pooled, c=64)":      "not met",
		"HBONE 1 KB p90 ≤ 1.3× null proxy pair (c=1)":          "met",
		"HBONE 1 KB p90 ≤ 1.3× null proxy pair (c=16)":         "inconclusive",
		"HBONE 1 KB p90 ≤ 1.3× null proxy pair (c=64)":         "not met",
		"mTLS-HBONE throughput ≥ 0.9× plain TLS pair":          "met",
		"RBE-HBONE throughput ≥ 0.9× plain TLS pair":           "inconclusive",
		"mTLS-HBONE ≤ 0.06 vCPU per 1000 rps per proxy (c=16)": "met",
		"RBE-HBONE ≤ 0.06 vCPU per 1000 rps per proxy (c=16)":  "not met",
		"curator latency growth no worse than logarithmic":     "not run",
	})
}

func TestRenderMarkdown(t *testing.T) {
	md := fixed(t).RenderMarkdown()
	for _, want := range []string{
		"# mazu-ztunnel performance results",
		"| HBONE 1 KB p90 ≤ 1.3× null proxy pair (c=16) | 1.20× (HTTP 1 KB, 1000 rps, no jitter) (range 1.10–1.30, n=5, too few rounds for a 95% CI)",
		"| mTLS-HBONE throughput ≥ 0.9× plain TLS pair | 0.80× (one stream) (range",
		"**inconclusive**",
		"| dropped blocks | 1 of 2: 1 for outside CPU, 0 for steal, 0 with CPU not measured; by variant: hbone-x509 round 5 |",
		"| CPU outside the suite | median 0.45 vCPU per block, max 0.80; steal max 0.01 vCPU",
		"| busiest outside processes | cc1 2.80 CPU-s in 1 block; sshd 0.20 CPU-s in 1 block, over all blocks |",
		"| hbone-x509 | cross-node | hbone-x509 | new stream | 5 of 6 | run |",
		"| blocks with errors | 1 of 2 |",
		"| CPU | Test CPU, nproc 2 |",
		"| hbone-rbe-warm | cross-node | hbone-rbe | warm | – | not run: the curator is missing |",
		"| hbone-x509 − direct http_c16_nj_p90_us | 70.0 µs |",
		"Not run: the curator is missing.",
		"| hbone-x509 | – / 120 / – |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("RESULTS.md lacks %q", want)
		}
	}
	if strings.Contains(md, "NaN") || strings.Contains(md, "%!") {
		t.Errorf("RESULTS.md has a formatting error:\n%s", md)
	}
}

func TestBenchLinesSkipDroppedRounds(t *testing.T) {
	lines := fixed(t).BenchLines()
	if !strings.Contains(lines, "BenchmarkMesh/variant=hbone-x509/m=http_c16_nj_p90_us 1 130 value\n") {
		t.Errorf("benchmark lines lack round 2 of hbone-x509 p90:\n%s", lines)
	}
	if strings.Contains(lines, " 900 value") || strings.Contains(lines, "hbone-rbe-warm") {
		t.Errorf("benchmark lines include a dropped round or a variant that did not run:\n%s", lines)
	}
	if n := strings.Count(lines, "\n"); n != 3*5+4*6 {
		t.Errorf("%d lines, want 39 (3 hbone-x509 series × 5 kept rounds, 4 other series × 6)", n)
	}
}

func TestNoiseGateDropsLoadedBlocks(t *testing.T) {
	vs := []*variant{{ID: "null"}, {ID: "hbone-x509"}}
	samples := map[string]map[string]map[int]float64{
		"null":       {"rr_1b_p50_us": {0: 100, 1: 100, 2: 100, 3: 100}},
		"hbone-x509": {"rr_1b_p50_us": {0: 110, 1: 500, 2: 400, 3: 300}},
	}
	cpu := func(suite, outside, steal float64) *BlockCPU {
		return &BlockCPU{Seconds: 5, BusyVCPU: suite + outside, SuiteVCPU: suite, OutsideVCPU: outside, StealVCPU: steal}
	}
	// Two CPUs: the outside limit is 0.25 vCPU and the steal limit 5% of
	// the machine, 0.1 vCPU.
	high := [3]float64{3.9}
	res := &Results{Machine: Machine{NProc: 2}, Config: Config{Rounds: 4, MaxOutsideVCPU: 0.25, MaxStealShare: 0.05}, Blocks: []Block{
		// Busy only from the suite itself, under a load average of 3.9.
		{Round: 0, Variant: "null", LoadBefore: high, LoadAfter: high, CPU: cpu(1.9, 0.05, 0)},
		{Round: 0, Variant: "hbone-x509", LoadBefore: high, LoadAfter: high, CPU: cpu(1.95, 0.2, 0.02)},
		{Round: 1, Variant: "null", CPU: cpu(1.2, 0, 0)},
		{Round: 1, Variant: "hbone-x509", CPU: cpu(1.2, 0.6, 0)},
		{Round: 2, Variant: "null", CPU: cpu(1.2, 0.1, 0)},
		{Round: 2, Variant: "hbone-x509", CPU: cpu(1.2, 0.2, 0.15)},
		{Round: 3, Variant: "null", CPU: cpu(1.2, 0.1, 0)},
		{Round: 3, Variant: "hbone-x509", CPUError: "read /proc/stat: permission denied"},
	}}
	res.finish(vs, samples)
	want := []string{"", "", "", dropOutside, "", dropSteal, "", dropUnmeasured}
	for i, b := range res.Blocks {
		if b.Dropped != (want[i] != "") {
			t.Errorf("block %d (round %d %s): dropped %v, want %v", i, b.Round, b.Variant, b.Dropped, want[i] != "")
		}
		if b.DropReason != want[i] {
			t.Errorf("block %d (round %d %s): drop reason %q, want %q", i, b.Round, b.Variant, b.DropReason, want[i])
		}
	}
	r := res.findRatio("hbone-x509", "null", "rr_1b_p50_us", false)
	if r == nil || r.Summary == nil || r.Summary.N != 1 || r.Summary.Median != 1.1 {
		t.Fatalf("ratio %+v, want 1.1 from round 0 only", r)
	}
	if s := res.variant("null").Metrics["rr_1b_p50_us"]; s.N != 4 {
		t.Fatalf("null kept %d rounds, want 4 (its blocks were quiet)", s.N)
	}

	md := res.RenderMarkdown()
	for _, line := range []string{
		"| dropped blocks | 3 of 8: 1 for outside CPU, 1 for steal, 1 with CPU not measured; by variant: hbone-x509 rounds 1, 2, 3 |",
		"averages more than 0.25 vCPU (12.5% of these 2 CPUs), or steal alone more than 5% of the machine (0.10 vCPU)",
		"| 1 | 0.00–0.60 | 0.00 | 0.00–0.00 | 0 | 1 |",
		"| 3 | 0.10–0.10 | 0.00 | 0.00–0.00 | 0 | 1 |",
	} {
		if !strings.Contains(md, line) {
			t.Errorf("RESULTS.md lacks %q", line)
		}
	}

	off := &Results{Machine: Machine{NProc: 2}, Config: Config{Rounds: 1}, Blocks: []Block{{Round: 0, Variant: "null", CPU: cpu(0.5, 1.5, 1)}}}
	off.finish([]*variant{{ID: "null"}}, map[string]map[string]map[int]float64{"null": {"rr_1b_p50_us": {0: 1}}})
	if off.Blocks[0].Dropped {
		t.Errorf("gate off: block dropped for %q", off.Blocks[0].DropReason)
	}
	if md := off.RenderMarkdown(); !strings.Contains(md, "| noise gate | off |") {
		t.Errorf("gate off: RESULTS.md does not say so")
	}
}

func TestNeededWorkloads(t *testing.T) {
	cfg, err := Preset("quick")
	if err != nil {
		t.Fatal(err)
	}
	need := (&Results{Config: cfg}).neededWorkloads()
	for _, v := range variants() {
		if len(need[v.ID]) == 0 {
			t.Errorf("%s: no workload in quick mode, want every variant measured", v.ID)
		}
	}
	for id, want := range map[string][]string{
		"hbone-x509":       {"http_c1_nj", "http_c16_nj", "http_c64_nj", "http_c16_j", "rr_1b", "rr_1k", "tput_1", "tput_4", "httpnc", "crr"},
		"hbone-rbe-warm":   {"http_c1_nj", "http_c16_nj", "http_c64_nj", "tput_1"},
		"hbone-rbe-update": {"http_c1_nj", "http_c16_nj", "http_c64_nj"},
		"hbone-rbe-cold":   {"crr"},
		"direct-same":      {"http_c16_nj"},
	} {
		got := sortedKeys(need[id])
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: quick mode runs %v, want %v", id, got, want)
		}
	}
	// Every metric a ratio compares comes from a workload quick mode runs.
	res := &Results{Config: cfg}
	for _, r := range res.ratioDefs() {
		for _, id := range []string{r.Num, r.Den} {
			if !need[id][workloadOf(r.Metric, cfg.CPUConns)] {
				t.Errorf("ratio %s: %s does not run the workload of %s", r.Name, id, r.Metric)
			}
		}
	}
}

// TestEveryBlockDropped checks what a run that the noise gate emptied
// reports: inconclusive goals with the reason, the drops by variant, and no
// stale latency plot.
func TestEveryBlockDropped(t *testing.T) {
	vs := []*variant{{ID: "null"}, {ID: "hbone-x509"}}
	samples := map[string]map[string]map[int]float64{
		"null":       {"http_c16_nj_p90_us": {0: 100, 1: 100}, "http_c16_nj_p50_us": {0: 80, 1: 80}},
		"hbone-x509": {"http_c16_nj_p90_us": {0: 110, 1: 120}, "http_c16_nj_p50_us": {0: 90, 1: 90}, "cpu_vcpu_per_krps_max": {0: 0.04, 1: 0.05}},
	}
	res := &Results{Machine: Machine{NProc: 2}, Config: Config{Mode: "quick", Rounds: 2, HTTPConns: []int{16}, CPUConns: 16, MaxOutsideVCPU: 0.25, MaxStealShare: 0.05}}
	for r := range 2 {
		for _, v := range vs {
			res.Blocks = append(res.Blocks, Block{Round: r, Variant: v.ID, CPU: &BlockCPU{Seconds: 2, OutsideVCPU: 0.5 + 0.25*float64(r)}})
		}
	}
	res.finish(vs, samples)

	for _, g := range res.Goals {
		switch g.Name {
		case "HBONE 1 KB p90 ≤ 1.3× null proxy pair (c=16)", "mTLS-HBONE ≤ 0.06 vCPU per 1000 rps per proxy (c=16)":
			if g.Status != "inconclusive" || !strings.Contains(g.Detail, "noise gate dropped every round") {
				t.Errorf("goal %q: %q (%s), want inconclusive because of the noise gate", g.Name, g.Status, g.Detail)
			}
		}
	}

	md := res.RenderMarkdown()
	for _, want := range []string{
		"| dropped blocks | 4 of 4: 4 for outside CPU, 0 for steal, 0 with CPU not measured; by variant: all rounds of all 2 variants |",
		"Note: the noise gate dropped 4 of 4 blocks, in which CPU use outside the suite was 0.50–0.75 vCPU.",
		"No latency plot",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("RESULTS.md lacks %q", want)
		}
	}

	dir := t.TempDir()
	stale := filepath.Join(dir, "latency-p90.png")
	if err := os.WriteFile(stale, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := res.WritePlots(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale %s left: %v", stale, err)
	}
}
