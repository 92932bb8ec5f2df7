package group

import (
	"fmt"
	"testing"
	"time"

	"github.com/cloudflare/circl/ecc/bls12381"
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
