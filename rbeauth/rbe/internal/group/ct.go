package group

import (
	"unsafe"

	"github.com/cloudflare/circl/ecc/bls12381"
)

// The constant-time selection below treats G1, G2 and Gt as plain arrays of
// uint64 words. These assertions stop the build if circl changes the size of
// a type, which would mean its layout changed too.
var (
	_ [144 - unsafe.Sizeof(bls12381.G1{})]byte
	_ [unsafe.Sizeof(bls12381.G1{}) - 144]byte
	_ [288 - unsafe.Sizeof(bls12381.G2{})]byte
	_ [unsafe.Sizeof(bls12381.G2{}) - 288]byte
	_ [576 - unsafe.Sizeof(bls12381.Gt{})]byte
	_ [unsafe.Sizeof(bls12381.Gt{}) - 576]byte
)

// words returns the memory of x as a slice of uint64 words. T must be one of
// bls12381.G1, bls12381.G2 or bls12381.Gt, which hold no pointers.
func words[T any](x *T) []uint64 {
	var zero T
	return unsafe.Slice((*uint64)(unsafe.Pointer(x)), unsafe.Sizeof(zero)/8)
}

// ctSelect sets dst to table[idx] reading every entry, so that the memory
// access pattern does not depend on idx.
func ctSelect[T any](dst *T, table []T, idx uint) {
	out := words(dst)
	clear(out)
	for i := range table {
		// mask is all ones when i == idx and zero otherwise, without a branch.
		diff := uint64(uint(i) ^ idx)
		mask := ((diff | -diff) >> 63) - 1
		src := words(&table[i])
		for w := range out {
			out[w] |= src[w] & mask
		}
	}
}
