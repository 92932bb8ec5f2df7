package group

import (
	"errors"

	"github.com/cloudflare/circl/ecc/bls12381"
	"github.com/cloudflare/circl/ecc/bls12381/ff"
)

// Errors returned by DecodeGt.
var (
	ErrGtLength    = errors.New("group: GT element has the wrong length")
	ErrGtEncoding  = errors.New("group: GT element is not canonically encoded")
	ErrGtSubgroup  = errors.New("group: GT element is outside the prime-order subgroup")
	ErrGtIdentity  = errors.New("group: GT element is the identity")
	errGtUnmarshal = errors.New("group: GT element does not round-trip")
)

// DecodeGt parses a GT element in circl's 576-byte encoding and checks that
// it lies in the order-q subgroup of Fp12* and is not 1. circl's own
// Gt.UnmarshalBinary accepts any Fp12 element.
//
// The subgroup test follows Scott (ia.cr/2021/1130, section 6): x ≠ 0, x lies
// in the cyclotomic subgroup (x^(p^4−p^2+1) = 1, checked with Frobenius maps),
// and x^p = x^u where u is the BLS12-381 curve parameter. It costs 64
// cyclotomic squarings and a few Frobenius maps, about a tenth of a GT
// exponentiation.
func DecodeGt(b []byte) (*bls12381.Gt, error) {
	if len(b) != bls12381.GtSize {
		return nil, ErrGtLength
	}
	var x ff.Fp12
	if err := x.UnmarshalBinary(b); err != nil {
		return nil, ErrGtEncoding
	}
	if !IsInGt(&x) {
		return nil, ErrGtSubgroup
	}
	g := new(bls12381.Gt)
	if err := g.UnmarshalBinary(b); err != nil {
		return nil, errGtUnmarshal
	}
	if g.IsIdentity() {
		return nil, ErrGtIdentity
	}
	return g, nil
}

// IsInGt reports whether x lies in the order-q subgroup of Fp12*.
func IsInGt(x *ff.Fp12) bool {
	if x.IsZero() == 1 {
		return false
	}
	// Cyclotomic subgroup: x^(p^4) · x = x^(p^2).
	var p2, p4, lhs ff.Fp12
	p2.Frob(x)
	p2.Frob(&p2)
	p4.Frob(&p2)
	p4.Frob(&p4)
	lhs.Mul(&p4, x)
	if lhs.IsEqual(&p2) != 1 {
		return false
	}
	// Within the cyclotomic subgroup, GT is the kernel of x ↦ x^p / x^u.
	var xp, xu ff.Cyclo6
	c := ff.Cyclo6(*x)
	xp.Frob(&c)
	xu.PowToX(&c)
	return xp.IsEqual(&xu) == 1
}

// IsInGtByOrder reports whether x^q = 1 and x ≠ 0, the direct definition of
// membership. It is slower than IsInGt and serves as a cross-check in tests.
func IsInGtByOrder(x *ff.Fp12) bool {
	if x.IsZero() == 1 {
		return false
	}
	var y, one ff.Fp12
	y.Exp(x, bls12381.Order())
	one.SetOne()
	return y.IsEqual(&one) == 1
}
