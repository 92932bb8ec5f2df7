package group

import "github.com/cloudflare/circl/ecc/bls12381"

// Point is the set of operations the generic algorithms need, written
// additively. *bls12381.G1 and *bls12381.G2 satisfy it, and *GtElem adapts
// bls12381.Gt to it.
type Point[T any] interface {
	*T
	Add(p, q *T)
	Double()
	SetIdentity()
}

// GtElem is bls12381.Gt written additively: Add multiplies and Double squares.
// Squaring uses circl's cyclotomic squaring, so every value must lie in GT.
type GtElem bls12381.Gt

// Add sets g = p·q.
func (g *GtElem) Add(p, q *GtElem) {
	(*bls12381.Gt)(g).Mul((*bls12381.Gt)(p), (*bls12381.Gt)(q))
}

// Double sets g = g².
func (g *GtElem) Double() { (*bls12381.Gt)(g).Sqr((*bls12381.Gt)(g)) }

// SetIdentity sets g to 1.
func (g *GtElem) SetIdentity() { (*bls12381.Gt)(g).SetIdentity() }

// scalarBits returns bit i (0 = least significant) of the big-endian byte
// string k. Bits beyond the string are zero.
func scalarBits(k []byte, i int) uint {
	byteIdx := len(k) - 1 - i/8
	if byteIdx < 0 {
		return 0
	}
	return uint(k[byteIdx]>>(uint(i)%8)) & 1
}

// window returns c bits of the big-endian byte string k starting at bit lo.
func window(k []byte, lo, c int) uint {
	var v uint
	for b := c - 1; b >= 0; b-- {
		v = v<<1 | scalarBits(k, lo+b)
	}
	return v
}

// bitLen returns the position of the highest set bit of k plus one.
func bitLen(k []byte) int {
	for i, b := range k {
		if b != 0 {
			n := 0
			for ; b != 0; b >>= 1 {
				n++
			}
			return (len(k)-1-i)*8 + n
		}
	}
	return 0
}
