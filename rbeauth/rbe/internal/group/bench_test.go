package group

import (
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/cloudflare/circl/ecc/bls12381"
	"github.com/cloudflare/circl/ecc/bls12381/ff"
)

func shortScalars(b *testing.B, count, size int) [][]byte {
	out := make([][]byte, count)
	for i := range out {
		out[i] = make([]byte, size)
		if _, err := rand.Read(out[i]); err != nil {
			b.Fatal(err)
		}
		out[i][0] &= 0x3f // below q for 32-byte scalars
	}
	return out
}

// BenchmarkMSM compares the bucket method with summing circl ScalarMult
// results, for 128-bit (random linear combination) and full-size scalars.
func BenchmarkMSM(b *testing.B) {
	for _, size := range []int{256, 1024} {
		g1 := make([]bls12381.G1, size)
		g2 := make([]bls12381.G2, size)
		for i := range g1 {
			g1[i], g2[i] = randG1(b), randG2(b)
		}
		for _, bytes := range []int{16, 32} {
			ks := shortScalars(b, size, bytes)
			scalars := make([]bls12381.Scalar, size)
			for i := range scalars {
				scalars[i].SetBytes(ks[i])
			}
			name := fmt.Sprintf("points=%d/bits=%d", size, 8*bytes)
			b.Run("G1/bucket/"+name, func(b *testing.B) {
				for b.Loop() {
					if _, err := MSM(g1, ks); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("G1/naive/"+name, func(b *testing.B) {
				for b.Loop() {
					var acc, t bls12381.G1
					acc.SetIdentity()
					for i := range g1 {
						t.ScalarMult(&scalars[i], &g1[i])
						acc.Add(&acc, &t)
					}
				}
			})
			if size > 256 {
				continue
			}
			b.Run("G2/bucket/"+name, func(b *testing.B) {
				for b.Loop() {
					if _, err := MSM(g2, ks); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("G2/naive/"+name, func(b *testing.B) {
				for b.Loop() {
					var acc, t bls12381.G2
					acc.SetIdentity()
					for i := range g2 {
						t.ScalarMult(&scalars[i], &g2[i])
						acc.Add(&acc, &t)
					}
				}
			})
		}
	}
}

func BenchmarkFixedBase(b *testing.B) {
	base := randG1(b)
	s := randScalar(b)
	k := scalarBytes(s)
	b.Run("G1/scalarmult", func(b *testing.B) {
		var out bls12381.G1
		for b.Loop() {
			out.ScalarMult(s, &base)
		}
	})
	for _, teeth := range []int{4, 5, 6, 7, 8} {
		c := NewComb[bls12381.G1](&base, teeth)
		b.Run(fmt.Sprintf("G1/comb%d", teeth), func(b *testing.B) {
			for b.Loop() {
				c.Mul(k)
			}
		})
	}
	base2 := randG2(b)
	b.Run("G2/scalarmult", func(b *testing.B) {
		var out bls12381.G2
		for b.Loop() {
			out.ScalarMult(s, &base2)
		}
	})
	c2 := NewComb[bls12381.G2](&base2, 6)
	b.Run("G2/comb6", func(b *testing.B) {
		for b.Loop() {
			c2.Mul(k)
		}
	})
}

func BenchmarkGt(b *testing.B) {
	x := bls12381.Pair(bls12381.G1Generator(), bls12381.G2Generator())
	s := randScalar(b)
	k := scalarBytes(s)
	b.Run("exp/circl", func(b *testing.B) {
		var out bls12381.Gt
		for b.Loop() {
			out.Exp(x, s)
		}
	})
	b.Run("exp/cyclotomic", func(b *testing.B) {
		for b.Loop() {
			Exp((*GtElem)(x), k)
		}
	})
	enc, _ := x.MarshalBinary()
	var f ff.Fp12
	_ = f.UnmarshalBinary(enc)
	b.Run("membership/scott", func(b *testing.B) {
		for b.Loop() {
			IsInGt(&f)
		}
	})
	b.Run("membership/order", func(b *testing.B) {
		for b.Loop() {
			IsInGtByOrder(&f)
		}
	})
	b.Run("pair", func(b *testing.B) {
		for b.Loop() {
			bls12381.Pair(bls12381.G1Generator(), bls12381.G2Generator())
		}
	})
}
