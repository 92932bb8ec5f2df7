package rbe

import (
	"math/big"
	"testing"

	"github.com/cloudflare/circl/ecc/bls12381"
)

// fieldP is the BLS12-381 base field modulus.
var fieldP, _ = new(big.Int).SetString("1a0111ea397fe69a4b1ba7b6434bacd764774b84f38512bf6730d2a0f6b0f6241eabfffeb153ffffb9feffffffffaaab", 16)

func fpBytes(x *big.Int) []byte { return x.FillBytes(make([]byte, 48)) }

// badG1 returns compressed G1 encodings with a valid x coordinate: one off
// the curve and one on the curve but outside the order-q subgroup.
func badG1(tb testing.TB) (offCurve, offSubgroup []byte) {
	tb.Helper()
	for x := int64(1); offCurve == nil || offSubgroup == nil; x++ {
		bx := big.NewInt(x)
		rhs := new(big.Int).Exp(bx, big.NewInt(3), fieldP)
		rhs.Add(rhs, big.NewInt(4)).Mod(rhs, fieldP)
		enc := fpBytes(bx)
		enc[0] |= 0x80
		var p bls12381.G1
		if big.Jacobi(rhs, fieldP) == 1 {
			if p.SetBytes(enc) != nil && offSubgroup == nil {
				offSubgroup = enc
			}
		} else if offCurve == nil {
			offCurve = enc
		}
	}
	return offCurve, offSubgroup
}

// badG2 returns two compressed G2 encodings with x = (x0, 0) for the twist
// curve E': y² = x³ + 4(1+u). No point of E' has the first x, and the second
// is a point of E' outside the order-q subgroup.
func badG2(tb testing.TB) (offCurve, offSubgroup []byte) {
	tb.Helper()
	for x := int64(1); x < 1000 && (offCurve == nil || offSubgroup == nil); x++ {
		a0 := new(big.Int).Exp(big.NewInt(x), big.NewInt(3), fieldP)
		a0.Add(a0, big.NewInt(4)).Mod(a0, fieldP)
		// a0 + 4u is a square in Fp2 iff its norm a0² + 16 is a square in Fp.
		norm := new(big.Int).Mul(a0, a0)
		norm.Add(norm, big.NewInt(16)).Mod(norm, fieldP)
		enc := append(fpBytes(big.NewInt(0)), fpBytes(big.NewInt(x))...)
		enc[0] |= 0x80
		var p bls12381.G2
		if p.SetBytes(enc) == nil {
			continue
		}
		if big.Jacobi(norm, fieldP) == 1 {
			if offSubgroup == nil {
				offSubgroup = enc
			}
		} else if offCurve == nil {
			offCurve = enc
		}
	}
	if offCurve == nil || offSubgroup == nil {
		tb.Fatal("badG2: no x0 below 1000 gave both an off-curve and an off-subgroup encoding")
	}
	return offCurve, offSubgroup
}

// identityG1 and identityG2 are the compressed encodings of the identity.
func identityG1() []byte { b := make([]byte, G1Size); b[0] = 0xc0; return b }
func identityG2() []byte { b := make([]byte, G2Size); b[0] = 0xc0; return b }

// badGt returns an Fp12 element with canonical coordinates outside GT.
func badGt() []byte {
	b := make([]byte, GtSize)
	for i := 0; i < GtSize; i += 48 {
		b[i+47] = byte(i/48 + 2)
	}
	return b
}
