package perf

import (
	"bufio"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMedianCIRanks(t *testing.T) {
	for _, tc := range []struct {
		n      int
		lo, hi int
		ok     bool
	}{
		{1, 0, 0, false},
		{5, 0, 4, false}, // 1 - 2/32 = 0.9375 < 0.95
		{6, 0, 5, true},  // 1 - 2/64 = 0.969
		{10, 1, 8, true}, // P(X<=1) = 11/1024: 0.979; P(X<=2) = 56/1024 gives 0.891
		{20, 5, 14, true},
	} {
		lo, hi, ok := medianCIRanks(tc.n, 0.95)
		if lo != tc.lo || hi != tc.hi || ok != tc.ok {
			t.Errorf("n=%d: got (%d, %d, %v), want (%d, %d, %v)", tc.n, lo, hi, ok, tc.lo, tc.hi, tc.ok)
		}
	}
}

func TestSummarize(t *testing.T) {
	s, err := Summarize([]float64{5, 1, math.NaN(), 3, 2, 4, math.Inf(1), 6})
	if err != nil {
		t.Fatal(err)
	}
	if s.N != 6 || s.Median != 3.5 || !s.CI95 || s.Lo != 1 || s.Hi != 6 {
		t.Fatalf("got %+v, want n=6 median 3.5 with a 95%% interval [1, 6]", s)
	}
	s, err = Summarize([]float64{3, 1, 2})
	if err != nil {
		t.Fatal(err)
	}
	if s.CI95 || s.Median != 2 || s.Lo != 1 || s.Hi != 3 {
		t.Fatalf("three samples: got %+v, want median 2, range 1–3, no 95%% interval", s)
	}
	if _, err := Summarize([]float64{math.NaN()}); err == nil {
		t.Fatal("no finite samples: want an error")
	}
}

func TestPairedRatio(t *testing.T) {
	got := PairedRatio([]float64{2, 3, 0, 8, 5}, []float64{1, 0, 4, 4})
	want := []float64{2, 2}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %v, want %v (rounds with a zero are skipped, extra rounds ignored)", got, want)
	}
}

func TestFitGrowth(t *testing.T) {
	ns := []float64{10, 100, 1000, 10000, 100000}
	logY := make([]float64, len(ns))
	linY := make([]float64, len(ns))
	flatY := make([]float64, len(ns))
	for i, n := range ns {
		logY[i] = 50 + 20*math.Log(n)
		linY[i] = 50 + 0.5*n
		flatY[i] = 80
	}
	f, err := FitGrowth(ns, logY)
	if err != nil {
		t.Fatal(err)
	}
	if !f.NoWorseThanLog || math.Abs(f.LogB-20) > 1e-6 || f.LogR2 < 0.999 || f.LinR2 > 0.8 || f.Points != 5 {
		t.Errorf("logarithmic data: got %+v, want no worse than log with b=20, and a poor linear fit", f)
	}
	f, err = FitGrowth(ns, linY)
	if err != nil {
		t.Fatal(err)
	}
	if f.NoWorseThanLog || f.Exponent < 0.5 || f.LinR2 < 0.999 || f.LogR2 >= f.LinR2 || math.Abs(f.LinB-0.5) > 1e-9 {
		t.Errorf("linear data: got %+v, want worse than log with exponent above 0.5, and the linear fit best", f)
	}
	f, err = FitGrowth(ns, flatY)
	if err != nil {
		t.Fatal(err)
	}
	if !f.NoWorseThanLog || math.Abs(f.Exponent) > 1e-9 {
		t.Errorf("constant data: got %+v, want exponent 0", f)
	}
	for _, bad := range [][2][]float64{
		{{10, 100}, {1, 2}},
		{{10, 100, 1000}, {1, 2}},
		{{10, 100, 1000}, {1, 0, 2}},
		{{1, 100, 1000}, {1, 2, 3}},
		{{10, 10, 10}, {1, 2, 3}},
	} {
		if _, err := FitGrowth(bad[0], bad[1]); err == nil {
			t.Errorf("FitGrowth(%v, %v): want an error", bad[0], bad[1])
		}
	}
}

func TestParseBench(t *testing.T) {
	in := `goos: linux
BenchmarkRatio/membership-2   	      10	   5000000 ns/op	         2.00 pair-ms	         2.80 verify-ms	         1.40 verify/pair
BenchmarkRatio/membership-2   	      10	   6000000 ns/op	         2.10 pair-ms	         3.15 verify-ms	         1.50 verify/pair
BenchmarkRatio/membership-2   	      10	   5500000 ns/op	         2.20 pair-ms	         2.86 verify-ms	         1.30 verify/pair
PASS
`
	got, err := parseBench(bufio.NewScanner(strings.NewReader(in)))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("got %d results, want 4 units: %+v", len(got), got)
	}
	r := got[3]
	if r.Name != "BenchmarkRatio/membership" || r.Unit != "verify/pair" || r.Summary.Median != 1.4 || r.Summary.N != 3 {
		t.Fatalf("got %+v, want BenchmarkRatio/membership verify/pair median 1.4 over 3", r)
	}
	if _, err := parseBench(bufio.NewScanner(strings.NewReader("PASS\n"))); err == nil {
		t.Fatal("no benchmark lines: want an error")
	}
}

func TestParseCuratorBench(t *testing.T) {
	in := `BenchmarkAgentUpdates/indexed/N=10-2        300   200000 ns/op   150 p50-µs   900 p99-µs   16308 response-bytes
BenchmarkAgentUpdates/indexed/N=100-2       300   300000 ns/op   250 p50-µs   1500 p99-µs   20772 response-bytes
BenchmarkAgentUpdates/indexed/N=1000-2      300   400000 ns/op   350 p50-µs   2200 p99-µs   24628 response-bytes
BenchmarkAgentUpdates/indexed/N=10000-2     300   600000 ns/op   455 p50-µs   5500 p99-µs   30251 response-bytes
BenchmarkAgentUpdates/indexed/N=100000-2    300   800000 ns/op   550 p50-µs   8800 p99-µs   34944 response-bytes
BenchmarkAgentUpdates/scan/N=100000-2       300   900000 ns/op   115000 p50-µs
`
	res, err := parseCuratorBench(bufio.NewScanner(strings.NewReader(in)))
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != "run" || len(res.Points) != 5 || res.Points[4].N != 100000 || res.Points[4].LatencyUS.Median != 550 {
		t.Fatalf("got %+v, want 5 indexed points ending at N=100000 with 550 µs", res)
	}
	if res.Fit == nil || !res.Fit.NoWorseThanLog || res.Fit.LogR2 <= res.Fit.LinR2 {
		t.Fatalf("fit %+v: 150 → 550 µs over 10 → 10^5, about 100 µs per tenfold, is within ln growth and fits ln n better than n", res.Fit)
	}
	scanOnly := "BenchmarkAgentUpdates/scan/N=1000-2 300 1 ns/op 610 p50-µs\n"
	if _, err := parseCuratorBench(bufio.NewScanner(strings.NewReader(scanOnly))); err == nil {
		t.Fatal("no indexed lines: want an error")
	}
}

func TestCuratorGoal(t *testing.T) {
	ns := []float64{10, 100, 1000, 10000, 100000}
	goal := func(y func(n float64) float64, sizes []float64) Goal {
		t.Helper()
		res := &Results{Curator: CuratorResult{Status: "run"}}
		var ys []float64
		for _, n := range sizes {
			ys = append(ys, y(n))
			res.Curator.Points = append(res.Curator.Points, CuratorPoint{N: int(n), LatencyUS: Summary{Median: y(n)}})
		}
		f, err := FitGrowth(sizes, ys)
		if err != nil {
			t.Fatal(err)
		}
		res.Curator.Fit = &f
		return res.curatorGoal()
	}
	for _, tc := range []struct {
		name  string
		y     func(float64) float64
		sizes []float64
		want  string
	}{
		{"logarithmic", func(n float64) float64 { return 100 + 25*math.Log(n) }, ns, "met"},
		{"linear", func(n float64) float64 { return 100 + 0.01*n }, ns, "not met"},
		// A slope that rises per decade while ln n still fits better than n.
		{"square of ln n", func(n float64) float64 { return 100 + 4*math.Log(n)*math.Log(n) }, ns, "inconclusive"},
		{"three sizes", func(n float64) float64 { return 100 + 25*math.Log(n) }, ns[2:], "inconclusive"},
	} {
		if g := goal(tc.y, tc.sizes); g.Status != tc.want {
			t.Errorf("%s: got %q (%s; %s), want %q", tc.name, g.Status, g.Value, g.Detail, tc.want)
		}
	}
}

func TestFitGrowthPowerLawNotLog(t *testing.T) {
	ns := []float64{10, 100, 1000, 10000, 100000}
	ys := make([]float64, len(ns))
	for i, n := range ns {
		ys[i] = 20 * math.Sqrt(n)
	}
	f, err := FitGrowth(ns, ys)
	if err != nil {
		t.Fatal(err)
	}
	if f.NoWorseThanLog {
		t.Errorf("√n data: got %+v, want worse than log", f)
	}
	if math.Abs(f.Exponent-0.5) > 1e-9 {
		t.Errorf("√n data: exponent %v, want 0.5", f.Exponent)
	}
}

func TestFitGrowthDecadeIncrements(t *testing.T) {
	// Increments of 100 then 200 per decade: the upper slope is twice the lower.
	f, err := FitGrowth([]float64{1000, 10000, 100000}, []float64{300, 400, 600})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(f.SlopeStart-100/math.Ln10) > 1e-6 || math.Abs(f.SlopeEnd-200/math.Ln10) > 1e-6 {
		t.Errorf("slopes %v and %v, want %v and %v", f.SlopeStart, f.SlopeEnd, 100/math.Ln10, 200/math.Ln10)
	}
	if f.NoWorseThanLog {
		t.Errorf("doubling increments per decade: got no worse than log, want worse")
	}
}

func TestPlotCurator(t *testing.T) {
	in := "BenchmarkAgentUpdates/indexed/N=10-2 300 1 ns/op 150 p50-µs\nBenchmarkAgentUpdates/indexed/N=100-2 300 1 ns/op 250 p50-µs\nBenchmarkAgentUpdates/indexed/N=1000-2 300 1 ns/op 350 p50-µs\n"
	cur, err := parseCuratorBench(bufio.NewScanner(strings.NewReader(in)))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "curator.png")
	if err := (&Results{Curator: cur}).plotCurator(path); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() == 0 {
		t.Fatalf("curator.png not written: %v", err)
	}
}
