// Package group adds to circl's BLS12-381 package (github.com/cloudflare/circl
// v1.6.5, ecc/bls12381) the group algorithms that it lacks and that the
// registration-based encryption scheme needs:
//
//   - multi-scalar multiplication by the bucket method (Pippenger) for G1 and
//     G2, in variable time, for public or verifier-chosen scalars only;
//   - fixed-base comb tables (Lim–Lee) with constant-time table lookups, for
//     bases that are multiplied by secret scalars many times (CRS points,
//     the G2 generator, the GT element Z);
//   - a constant-time windowed exponentiation in GT built on circl's
//     cyclotomic squaring;
//   - a GT subgroup membership test;
//   - a pairing-product check that skips pairs with an identity element;
//   - pairing products with prepared G2 points: the Miller-loop lines of a
//     fixed G2 point are computed once, and the pairs of a product share one
//     loop, where circl recomputes the lines and runs one loop per pair.
//
// The constant-time lookups read circl's point types as arrays of machine
// words. The types G1, G2 and Gt of circl v1.6.5 contain only uint64 arrays;
// compile-time assertions in this package fail the build if their sizes
// change.
//
// # References
//
//  1. N. Pippenger, "On the evaluation of powers and related problems", FOCS
//     1976; bucket method as described in D. J. Bernstein et al., "Faster
//     batch forgery identification", INDOCRYPT 2012, https://ia.cr/2012/549.
//  2. C. H. Lim and P. J. Lee, "More flexible exponentiation with
//     precomputation", CRYPTO 1994 (the comb method).
//  3. M. Scott, "A note on group membership tests for G1, G2 and GT on BLS
//     pairing-friendly curves", https://ia.cr/2021/1130, section 6 (GT test).
package group
