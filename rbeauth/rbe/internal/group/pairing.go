package group

import "github.com/cloudflare/circl/ecc/bls12381"

// PairingProductIsOne reports whether Π e(p[i], q[i])^signs[i] = 1, with signs
// of +1 or −1, using one bls12381.ProdPairFrac call (one final
// exponentiation). Pairs with an identity point contribute 1 and are skipped,
// because circl's Miller loop does not special-case the identity. It returns
// false when the lengths differ.
func PairingProductIsOne(p []*bls12381.G1, q []*bls12381.G2, signs []int) bool {
	if len(p) != len(q) || len(p) != len(signs) {
		return false
	}
	ps := make([]*bls12381.G1, 0, len(p))
	qs := make([]*bls12381.G2, 0, len(q))
	ss := make([]int, 0, len(signs))
	for i := range p {
		if signs[i] != 1 && signs[i] != -1 {
			return false
		}
		if p[i].IsIdentity() || q[i].IsIdentity() {
			continue
		}
		ps = append(ps, p[i])
		qs = append(qs, q[i])
		ss = append(ss, signs[i])
	}
	if len(ps) == 0 {
		return true
	}
	return bls12381.ProdPairFrac(ps, qs, ss).IsIdentity()
}
