package group

import (
	"github.com/cloudflare/circl/ecc/bls12381"
	"github.com/cloudflare/circl/ecc/bls12381/ff"
)

// A PreparedG2 holds the Miller-loop lines of a fixed G2 point, so that a
// pairing with it skips the G2 arithmetic. circl v1.6.5 recomputes the lines
// on every pairing and runs a separate Miller loop per pair of a product.
// The membership check pairs with two fixed points (a CRS element and the
// generator), so preparing them once and sharing one loop between the pairs
// roughly halves the Miller-loop cost of every cold handshake.
//
// The lines are those of circl's optimal ate pairing: the loop runs over the
// bits of |x|, x = −0xd201000000010000 being the BLS12-381 parameter, with
// G2 on the M-type twist E': y² = x³ + 4(1+u), and G1 points sent to the
// twist as (x·w², y·w³). Lines are kept in affine form, scaled so that the
// y coefficient is one. The final exponentiation removes any factor in Fp2,
// so the product equals circl's ProdPairFrac exactly.
type PreparedG2 struct {
	identity bool
	lines    []preparedLine
}

// A preparedLine is the line Y − λX + (λx − y) of slope λ through the point
// (x, y) of E'(Fp2), stored as c0 = λx − y and c1 = −λ. At a twisted G1
// point (xP·w², yP·w³) it evaluates to c0 + c1·xP·w² + yP·w³.
type preparedLine struct {
	c0, c1 ff.Fp2
}

// millerAdds are the set bits of |x| below the top one, from high to low,
// where circl's loop adds Q after doubling.
var millerAdds = [...]int{62, 60, 57, 48, 16}

// millerSteps is the number of lines per Miller loop: 63 doublings and one
// addition per entry of millerAdds.
const millerSteps = 63 + len(millerAdds)

// PrepareG2 computes the lines for q. It costs about one Miller loop, with
// field inversions, and is meant for points used in many pairings.
func PrepareG2(q *bls12381.G2) *PreparedG2 {
	if q.IsIdentity() {
		return &PreparedG2{identity: true}
	}
	qx, qy := affineG2(q)
	tx, ty := qx, qy
	lines := make([]preparedLine, 0, millerSteps)
	add := 0
	for i := 62; i >= 0; i-- {
		// Doubling: λ = 3x²/(2y), tangent at T.
		var num, den, lambda ff.Fp2
		num.Sqr(&tx)
		var three ff.Fp2
		three.Add(&num, &num)
		num.Add(&three, &num)
		den.Add(&ty, &ty)
		den.Inv(&den)
		lambda.Mul(&num, &den)
		lines = append(lines, lineThrough(&lambda, &tx, &ty))
		tx, ty = chordEnd(&lambda, &tx, &ty, &tx)
		if add < len(millerAdds) && i == millerAdds[add] {
			add++
			// Addition: λ = (yQ − yT)/(xQ − xT), chord through T and Q.
			num.Sub(&qy, &ty)
			den.Sub(&qx, &tx)
			den.Inv(&den)
			lambda.Mul(&num, &den)
			lines = append(lines, lineThrough(&lambda, &tx, &ty))
			tx, ty = chordEnd(&lambda, &tx, &ty, &qx)
		}
	}
	return &PreparedG2{lines: lines}
}

// lineThrough returns the line of slope λ through (x, y).
func lineThrough(lambda, x, y *ff.Fp2) preparedLine {
	var l preparedLine
	l.c0.Mul(lambda, x)
	l.c0.Sub(&l.c0, y)
	l.c1 = *lambda
	l.c1.Neg()
	return l
}

// chordEnd returns the third point (x3, y3) = T + S on the line of slope λ
// through T = (x, y), where S has x-coordinate sx.
func chordEnd(lambda, x, y, sx *ff.Fp2) (ff.Fp2, ff.Fp2) {
	var x3, y3 ff.Fp2
	x3.Sqr(lambda)
	x3.Sub(&x3, x)
	x3.Sub(&x3, sx)
	y3.Sub(x, &x3)
	y3.Mul(&y3, lambda)
	y3.Sub(&y3, y)
	return x3, y3
}

// affineG2 returns the affine coordinates of a non-identity point.
func affineG2(q *bls12381.G2) (x, y ff.Fp2) {
	b := q.Bytes()
	b[0] &= 0x1f // clear the encoding flags
	// Bytes encodes a valid point, which always decodes.
	_ = x.UnmarshalBinary(b[:ff.Fp2Size])
	_ = y.UnmarshalBinary(b[ff.Fp2Size:])
	return x, y
}

// affineG1 returns the affine coordinates of a non-identity point.
func affineG1(p *bls12381.G1) (x, y ff.Fp) {
	b := p.Bytes()
	b[0] &= 0x1f
	_ = x.UnmarshalBinary(b[:ff.FpSize])
	_ = y.UnmarshalBinary(b[ff.FpSize:])
	return x, y
}

// preparedProduct returns Π e(p[i], q[i])^signs[i] with one shared Miller
// loop and one final exponentiation. Pairs with an identity point are
// skipped. The caller checks that the lengths match and signs are ±1.
func preparedProduct(p []*bls12381.G1, q []*PreparedG2, signs []int) *ff.URoot {
	type pair struct {
		x, y ff.Fp
		q    *PreparedG2
	}
	pairs := make([]pair, 0, len(p))
	for i := range p {
		if p[i].IsIdentity() || q[i].identity {
			continue
		}
		x, y := affineG1(p[i])
		if signs[i] == -1 {
			y.Neg()
		}
		pairs = append(pairs, pair{x: x, y: y, q: q[i]})
	}

	var acc ff.Fp12Cubic
	acc.SetOne()
	var g ff.LineValue
	for step := range millerSteps {
		if isDoubling(step) {
			acc.Sqr(&acc)
		}
		for j := range pairs {
			l := &pairs[j].q.lines[step]
			// The line at (xP·w², yP·w³): c0 + c1·xP·w² + yP·w³.
			g[0] = l.c0
			g[1][0].Mul(&l.c1[0], &pairs[j].x)
			g[1][1].Mul(&l.c1[1], &pairs[j].x)
			g[2] = ff.Fp2{pairs[j].y}
			acc.MulLine(&acc, &g)
		}
	}

	var f ff.Fp12
	f.FromFp12Cubic(&acc)
	f.Cjg() // x is negative
	var c ff.Cyclo6
	ff.EasyExponentiation(&c, &f)
	var u ff.URoot
	ff.HardExponentiation(&u, &c)
	return &u
}

// stepKinds marks, for each of the millerSteps lines, whether it is a
// doubling (which follows a squaring of the accumulator) or an addition.
var stepKinds = func() [millerSteps]bool {
	var kinds [millerSteps]bool
	step, add := 0, 0
	for i := 62; i >= 0; i-- {
		kinds[step] = true
		step++
		if add < len(millerAdds) && i == millerAdds[add] {
			add++
			step++
		}
	}
	return kinds
}()

func isDoubling(step int) bool { return stepKinds[step] }

// PreparedProductIsOne reports whether Π e(p[i], q[i])^signs[i] = 1, with
// signs of +1 or −1, like PairingProductIsOne but with prepared G2 points.
// It returns false when the lengths differ or a sign is not ±1.
func PreparedProductIsOne(p []*bls12381.G1, q []*PreparedG2, signs []int) bool {
	if len(p) != len(q) || len(p) != len(signs) {
		return false
	}
	for i := range signs {
		if signs[i] != 1 && signs[i] != -1 || q[i] == nil {
			return false
		}
	}
	return preparedProduct(p, q, signs).IsIdentity() == 1
}
