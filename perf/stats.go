package perf

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

// quantileSorted returns the q-quantile of sorted xs by linear
// interpolation between closest ranks.
func quantileSorted(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	pos := q * float64(len(xs)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return xs[lo] + (xs[hi]-xs[lo])*(pos-float64(lo))
}

// Summary is the median of per-round samples with a distribution-free 95%
// confidence interval, as benchstat reports it.
type Summary struct {
	Samples []float64 `json:"samples"`
	Median  float64   `json:"median"`
	// Lo and Hi bound the 95% interval for the median. When there are too
	// few samples for 95% (fewer than 6), CI95 is false and Lo and Hi are
	// the smallest and largest sample.
	Lo   float64 `json:"lo"`
	Hi   float64 `json:"hi"`
	CI95 bool    `json:"ci95"`
	N    int     `json:"n"`
}

// Summarize computes the median and its confidence interval. NaN and
// infinite samples are dropped. It returns an error for no usable samples.
func Summarize(samples []float64) (Summary, error) {
	var xs []float64
	for _, x := range samples {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			xs = append(xs, x)
		}
	}
	if len(xs) == 0 {
		return Summary{}, errors.New("summarize: no finite samples")
	}
	slices.Sort(xs)
	s := Summary{Samples: xs, Median: quantileSorted(xs, 0.5), N: len(xs), Lo: xs[0], Hi: xs[len(xs)-1]}
	if lo, hi, ok := medianCIRanks(len(xs), 0.95); ok {
		s.Lo, s.Hi, s.CI95 = xs[lo], xs[hi], true
	}
	return s, nil
}

// medianCIRanks returns 0-based ranks (lo, hi) such that the interval
// [x(lo), x(hi)] of n sorted samples covers the median with probability at
// least conf. The count of samples below the median is Binomial(n, 1/2),
// which gives the order-statistic interval benchstat uses. It picks the
// narrowest symmetric interval, and ok is false when even the full range
// does not reach conf.
func medianCIRanks(n int, conf float64) (lo, hi int, ok bool) {
	if n < 1 {
		return 0, 0, false
	}
	// P(X < k) for X ~ Binomial(n, 1/2).
	cdf := make([]float64, n+2)
	pmf := math.Pow(0.5, float64(n))
	acc := 0.0
	for k := 0; k <= n; k++ {
		cdf[k] = acc
		acc += pmf
		pmf = pmf * float64(n-k) / float64(k+1)
	}
	cdf[n+1] = 1
	// [x(k), x(n-1-k)] covers the median when k < X < n-k, where X is the
	// number of samples below it: probability 1 - 2·P(X ≤ k).
	for k := (n - 1) / 2; k >= 0; k-- {
		cover := 1 - 2*cdf[k+1]
		if cover >= conf {
			return k, n - 1 - k, true
		}
	}
	return 0, n - 1, false
}

// PairedRatio returns the per-round ratios num[i]/den[i] for the rounds
// where both are positive and finite.
func PairedRatio(num, den []float64) []float64 {
	var out []float64
	for i := range min(len(num), len(den)) {
		a, b := num[i], den[i]
		if a > 0 && b > 0 && !math.IsInf(a, 0) && !math.IsInf(b, 0) {
			out = append(out, a/b)
		}
	}
	return out
}

// GrowthFit describes how a cost grows with n: a power law y = c·n^k fitted
// in log-log space, a logarithmic model y = a + b·ln n, a linear model
// y = a + b·n, and the mean slope dy/d(ln n) over the lower and upper half
// of the range from a quadratic in ln n.
type GrowthFit struct {
	Exponent float64 `json:"exponent"` // k
	PowerR2  float64 `json:"power_r2"` // R² of the log-log fit
	LogA     float64 `json:"log_a"`    // a
	LogB     float64 `json:"log_b"`    // b
	LogR2    float64 `json:"log_r2"`   // R² of y against ln n
	LinA     float64 `json:"lin_a"`    // a of y = a + b·n
	LinB     float64 `json:"lin_b"`    // b of y = a + b·n
	LinR2    float64 `json:"lin_r2"`   // R² of y against n
	// Points is the number of sizes fitted.
	Points   int     `json:"points"`
	Growth   float64 `json:"growth"`    // fitted y(n_max)/y(n_min), power law
	LogLimit float64 `json:"log_limit"` // ln(n_max)/ln(n_min)
	// SlopeStart and SlopeEnd are the mean dy/d(ln n) over the lower and the
	// upper half of the ln n range. A logarithmic cost has equal slopes, a
	// polynomial one a rising slope. With points one decade apart they are
	// the increments per decade divided by ln 10.
	SlopeStart float64 `json:"slope_start"`
	SlopeEnd   float64 `json:"slope_end"`
	// Negligible holds when the end slope over the whole range adds less
	// than 10% of the mean cost: no growth to speak of.
	Negligible bool `json:"negligible"`
	// NoWorseThanLog holds when SlopeEnd ≤ 1.25·SlopeStart (25% allowance
	// for noise), or when the growth is negligible.
	NoWorseThanLog bool `json:"no_worse_than_log"`
}

// FitGrowth fits ns (all > 1) against ys (all > 0).
func FitGrowth(ns, ys []float64) (GrowthFit, error) {
	if len(ns) != len(ys) {
		return GrowthFit{}, fmt.Errorf("fit growth: %d sizes but %d values", len(ns), len(ys))
	}
	if len(ns) < 3 {
		return GrowthFit{}, fmt.Errorf("fit growth: %d points, need at least 3", len(ns))
	}
	lx := make([]float64, len(ns))
	ly := make([]float64, len(ns))
	for i := range ns {
		if ns[i] <= 1 || ys[i] <= 0 || math.IsNaN(ys[i]) || math.IsInf(ys[i], 0) {
			return GrowthFit{}, fmt.Errorf("fit growth: point %d (n=%g, y=%g) needs n > 1 and y > 0", i, ns[i], ys[i])
		}
		lx[i] = math.Log(ns[i])
		ly[i] = math.Log(ys[i])
	}
	_, k, r2p, err := linearFit(lx, ly)
	if err != nil {
		return GrowthFit{}, err
	}
	a, b, r2l, err := linearFit(lx, ys)
	if err != nil {
		return GrowthFit{}, err
	}
	la, lb, r2n, err := linearFit(ns, ys)
	if err != nil {
		return GrowthFit{}, err
	}
	nmin, nmax := slices.Min(ns), slices.Max(ns)
	g := GrowthFit{Exponent: k, PowerR2: r2p, LogA: a, LogB: b, LogR2: r2l, LinA: la, LinB: lb, LinR2: r2n, Points: len(ns),
		Growth: math.Pow(nmax/nmin, k), LogLimit: math.Log(nmax) / math.Log(nmin)}
	q, err := quadraticFit(lx, ys)
	if err != nil {
		return GrowthFit{}, err
	}
	l0, l1 := math.Log(nmin), math.Log(nmax)
	lm := (l0 + l1) / 2
	g.SlopeStart, g.SlopeEnd = q[1]+q[2]*(l0+lm), q[1]+q[2]*(lm+l1)
	mean := 0.0
	for _, y := range ys {
		mean += y / float64(len(ys))
	}
	g.Negligible = g.SlopeEnd*(l1-l0) < 0.1*mean
	g.NoWorseThanLog = g.Negligible || g.SlopeEnd <= 1.25*g.SlopeStart
	return g, nil
}

// quadraticFit is least squares y = c0 + c1·x + c2·x², solved from the
// normal equations by Cramer's rule (three unknowns do not need a matrix
// library).
func quadraticFit(x, y []float64) ([3]float64, error) {
	var s [5]float64 // Σ x^k for k = 0..4
	var t [3]float64 // Σ y·x^k for k = 0..2
	for i := range x {
		p := 1.0
		for k := range 5 {
			s[k] += p
			if k < 3 {
				t[k] += y[i] * p
			}
			p *= x[i]
		}
	}
	m := [3][3]float64{{s[0], s[1], s[2]}, {s[1], s[2], s[3]}, {s[2], s[3], s[4]}}
	det := det3(m)
	if math.Abs(det) < 1e-12*math.Max(1, math.Abs(s[4])) {
		return [3]float64{}, errors.New("quadratic fit: need at least three distinct sizes")
	}
	var c [3]float64
	for j := range 3 {
		mj := m
		for i := range 3 {
			mj[i][j] = t[i]
		}
		c[j] = det3(mj) / det
	}
	return c, nil
}

func det3(m [3][3]float64) float64 {
	return m[0][0]*(m[1][1]*m[2][2]-m[1][2]*m[2][1]) -
		m[0][1]*(m[1][0]*m[2][2]-m[1][2]*m[2][0]) +
		m[0][2]*(m[1][0]*m[2][1]-m[1][1]*m[2][0])
}

// linearFit is ordinary least squares y = a + b·x with R².
func linearFit(x, y []float64) (a, b, r2 float64, err error) {
	n := float64(len(x))
	var sx, sy, sxx, sxy float64
	for i := range x {
		sx += x[i]
		sy += y[i]
		sxx += x[i] * x[i]
		sxy += x[i] * y[i]
	}
	den := n*sxx - sx*sx
	if den == 0 {
		return 0, 0, 0, errors.New("linear fit: all x values are equal")
	}
	b = (n*sxy - sx*sy) / den
	a = (sy - b*sx) / n
	mean := sy / n
	var ssTot, ssRes float64
	for i := range x {
		ssTot += (y[i] - mean) * (y[i] - mean)
		r := y[i] - (a + b*x[i])
		ssRes += r * r
	}
	if ssTot == 0 {
		return a, b, 1, nil
	}
	return a, b, 1 - ssRes/ssTot, nil
}
