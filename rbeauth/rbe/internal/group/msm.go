package group

import (
	"errors"
	"fmt"
)

// ErrLengthMismatch reports that points and scalars have different lengths.
var ErrLengthMismatch = errors.New("group: number of points and scalars differ")

// MSM returns Σ scalars[i]·points[i]. Scalars are big-endian byte strings of
// any length, for example from bls12381.Scalar.MarshalBinary.
//
// It uses the bucket method, whose running time depends on the scalars. Use
// it only for public scalars or for random scalars that the verifier drew and
// that no secret depends on.
func MSM[T any, PT Point[T]](points []T, scalars [][]byte) (T, error) {
	var acc T
	PT(&acc).SetIdentity()
	if len(points) != len(scalars) {
		return acc, fmt.Errorf("multi-scalar multiplication of %d points with %d scalars: %w",
			len(points), len(scalars), ErrLengthMismatch)
	}
	bits := 0
	for _, k := range scalars {
		bits = max(bits, bitLen(k))
	}
	if len(points) == 0 || bits == 0 {
		return acc, nil
	}

	c := windowSize(len(points), bits)
	buckets := make([]T, 1<<c)
	used := make([]bool, 1<<c)
	windows := (bits + c - 1) / c
	for w := windows - 1; w >= 0; w-- {
		for range c {
			PT(&acc).Double()
		}
		clear(used)
		for i := range points {
			d := window(scalars[i], w*c, c)
			if d == 0 {
				continue
			}
			if used[d] {
				PT(&buckets[d]).Add(&buckets[d], &points[i])
			} else {
				buckets[d] = points[i]
				used[d] = true
			}
		}
		// Σ d·bucket[d] as a running sum from the top bucket down.
		var running, sum T
		PT(&running).SetIdentity()
		PT(&sum).SetIdentity()
		for d := len(buckets) - 1; d >= 1; d-- {
			if used[d] {
				PT(&running).Add(&running, &buckets[d])
			}
			PT(&sum).Add(&sum, &running)
		}
		PT(&acc).Add(&acc, &sum)
	}
	return acc, nil
}

// windowSize picks the bucket window c that minimises the estimated number of
// group additions, (bits/c)·(n + 2^c).
func windowSize(n, bits int) int {
	best, bestCost := 1, -1
	for c := 1; c <= 16; c++ {
		cost := ((bits + c - 1) / c) * (n + 1<<c)
		if bestCost < 0 || cost < bestCost {
			best, bestCost = c, cost
		}
	}
	return best
}

// NaiveMSM returns Σ scalars[i]·points[i] with one double-and-add per term.
// It exists as a reference for tests and benchmarks.
func NaiveMSM[T any, PT Point[T]](points []T, scalars [][]byte) (T, error) {
	var acc T
	PT(&acc).SetIdentity()
	if len(points) != len(scalars) {
		return acc, fmt.Errorf("naive multi-scalar multiplication of %d points with %d scalars: %w",
			len(points), len(scalars), ErrLengthMismatch)
	}
	for i := range points {
		var term T
		PT(&term).SetIdentity()
		for b := bitLen(scalars[i]) - 1; b >= 0; b-- {
			PT(&term).Double()
			if scalarBits(scalars[i], b) == 1 {
				PT(&term).Add(&term, &points[i])
			}
		}
		PT(&acc).Add(&acc, &term)
	}
	return acc, nil
}
