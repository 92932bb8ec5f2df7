package group

import (
	"fmt"
	"testing"
	"time"

	"github.com/cloudflare/circl/ecc/bls12381"
	"github.com/cloudflare/circl/ecc/bls12381/ff"
)

// BenchmarkRatioMSM runs the bucket method and summed ScalarMult results in
// turn within each iteration and reports their times and ratio, so that
// both see the same load on a shared machine.
func BenchmarkRatioMSM(b *testing.B) {
	for _, size := range []int{256, 1024} {
		points := make([]bls12381.G1, size)
		for i := range points {
			points[i] = randG1(b)
		}
		ks := shortScalars(b, size, 16)
		scalars := make([]bls12381.Scalar, size)
		for i := range scalars {
			scalars[i].SetBytes(ks[i])
		}
		b.Run(fmt.Sprintf("G1/points=%d/bits=128", size), func(b *testing.B) {
			var naive, bucket time.Duration
			for b.Loop() {
				start := time.Now()
				var acc, t bls12381.G1
				acc.SetIdentity()
				for i := range points {
					t.ScalarMult(&scalars[i], &points[i])
					acc.Add(&acc, &t)
				}
				naive += time.Since(start)

				start = time.Now()
				got, err := MSM(points, ks)
				bucket += time.Since(start)
				if err != nil || !got.IsEqual(&acc) {
					b.Fatal("bucket MSM differs from the naive sum")
				}
			}
			b.ReportMetric(float64(naive.Microseconds())/1000/float64(b.N), "naive-ms")
			b.ReportMetric(float64(bucket.Microseconds())/1000/float64(b.N), "bucket-ms")
			b.ReportMetric(float64(bucket)/float64(naive), "bucket/naive")
		})
	}
}

// interleave runs every variant once per iteration, in turn, and reports the
// mean time of each as "<name>-us" and each variant relative to the first as
// "<name>/<base>".
func interleave(b *testing.B, names []string, fns []func()) {
	b.Helper()
	total := make([]time.Duration, len(fns))
	for b.Loop() {
		for i, fn := range fns {
			start := time.Now()
			fn()
			total[i] += time.Since(start)
		}
	}
	for i, name := range names {
		b.ReportMetric(float64(total[i].Nanoseconds())/1000/float64(b.N), name+"-us")
		if i > 0 {
			b.ReportMetric(float64(total[i])/float64(total[0]), name+"/"+names[0])
		}
	}
}

// BenchmarkRatioFixedBase compares circl's ScalarMult and Gt.Exp with the
// comb tables and the cyclotomic exponentiation, and the two GT membership
// tests, within the same iterations.
func BenchmarkRatioFixedBase(b *testing.B) {
	s := randScalar(b)
	k := scalarBytes(s)
	g1 := randG1(b)
	g2 := randG2(b)
	c1 := NewComb[bls12381.G1](&g1, 6)
	c2 := NewComb[bls12381.G2](&g2, 6)
	b.Run("G1", func(b *testing.B) {
		var out bls12381.G1
		interleave(b, []string{"scalarmult", "comb6"}, []func(){
			func() { out.ScalarMult(s, &g1) },
			func() { c1.Mul(k) },
		})
	})
	b.Run("G2", func(b *testing.B) {
		var out bls12381.G2
		interleave(b, []string{"scalarmult", "comb6"}, []func(){
			func() { out.ScalarMult(s, &g2) },
			func() { c2.Mul(k) },
		})
	})
	z := bls12381.Pair(bls12381.G1Generator(), bls12381.G2Generator())
	cz := NewComb[GtElem]((*GtElem)(z), 6)
	b.Run("Gt", func(b *testing.B) {
		var out bls12381.Gt
		interleave(b, []string{"circl-exp", "cyclotomic-exp", "comb6", "pair"}, []func(){
			func() { out.Exp(z, s) },
			func() { Exp((*GtElem)(z), k) },
			func() { cz.Mul(k) },
			func() { bls12381.Pair(&g1, &g2) },
		})
	})
	enc, _ := z.MarshalBinary()
	var f ff.Fp12
	if err := f.UnmarshalBinary(enc); err != nil {
		b.Fatal(err)
	}
	b.Run("Gt-membership", func(b *testing.B) {
		interleave(b, []string{"order", "scott"}, []func(){
			func() { IsInGtByOrder(&f) },
			func() { IsInGt(&f) },
		})
	})
}
