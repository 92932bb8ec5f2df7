package rbe

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/cloudflare/circl/ecc/bls12381"

	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe/internal/group"
)

// PublicKey is a registration for one slot: pk = sk·P_i and the n−1 helper
// values ξ_(i→j) = sk·P_(n+1−j+i) for j ≠ i, which the curator adds to the
// other slots' openings. A rotation delta (KeyGenDelta) has the same form for
// the scalar sk' − sk.
type PublicKey struct {
	// CRS is the fingerprint of the CRS the key was made for.
	CRS [32]byte
	// Slot is the 1-based slot i within its block.
	Slot int
	// PK is sk·P_i.
	PK bls12381.G1
	// Helpers holds ξ_(i→j) for j = 1 … n in increasing order, skipping j = i,
	// so it has n−1 entries. Use Helper(j) to index by slot.
	Helpers []bls12381.G1
}

// Helper returns ξ_(i→j), the helper value for slot j ≠ Slot.
func (pk *PublicKey) Helper(j int) (*bls12381.G1, error) {
	if pk.Slot < 1 || pk.Slot > len(pk.Helpers)+1 {
		return nil, fmt.Errorf("get helper value of a key for slot %d with %d helper values: %w", pk.Slot, len(pk.Helpers), ErrInvalidSlot)
	}
	if j < 1 || j > len(pk.Helpers)+1 || j == pk.Slot {
		return nil, fmt.Errorf("get helper value for slot %d of a key for slot %d: %w", j, pk.Slot, ErrInvalidSlot)
	}
	return &pk.Helpers[helperIndex(pk.Slot, j)], nil
}

// helperIndex maps slot j ≠ i to its position in Helpers.
func helperIndex(i, j int) int {
	if j < i {
		return j - 1
	}
	return j - 2
}

// helperSlot is the inverse of helperIndex.
func helperSlot(i, idx int) int {
	if idx+1 < i {
		return idx + 1
	}
	return idx + 2
}

// KeyGen computes the public key and helper values of sk for slot i. It uses
// the fixed-base tables if Precompute ran, and circl's constant-time scalar
// multiplication otherwise; both run in constant time for sk.
func (c *CRS) KeyGen(sk *SecretKey, slot int) (*PublicKey, error) {
	if err := c.checkSlot("generate key", slot); err != nil {
		return nil, err
	}
	if sk == nil || sk.s.IsZero() == 1 {
		return nil, fmt.Errorf("generate key for slot %d: %w", slot, ErrZeroScalar)
	}
	return c.keyGen(&sk.s, slot), nil
}

// KeyGenDelta computes the registration for a rotation from oldKey to newKey
// in slot i: the key of the scalar newKey − oldKey. Block.Rotate adds it to
// the stored registration.
func (c *CRS) KeyGenDelta(oldKey, newKey *SecretKey, slot int) (*PublicKey, error) {
	if err := c.checkSlot("generate rotation delta", slot); err != nil {
		return nil, err
	}
	if oldKey == nil || newKey == nil {
		return nil, fmt.Errorf("generate rotation delta for slot %d: missing key: %w", slot, ErrZeroScalar)
	}
	var delta bls12381.Scalar
	delta.Sub(&newKey.s, &oldKey.s)
	defer func() { delta = bls12381.Scalar{} }()
	if delta.IsZero() == 1 {
		return nil, fmt.Errorf("generate rotation delta for slot %d: old and new keys are equal: %w", slot, ErrZeroScalar)
	}
	return c.keyGen(&delta, slot), nil
}

// PublicPoint returns pk = sk·P_slot, the key point of KeyGen without the
// helper values. It uses the Precompute tables when they exist, which
// makes it several times faster than a variable-base multiplication.
func (c *CRS) PublicPoint(sk *SecretKey, slot int) (*bls12381.G1, error) {
	if err := c.checkSlot("derive key point", slot); err != nil {
		return nil, err
	}
	if sk == nil || sk.s.IsZero() == 1 {
		return nil, fmt.Errorf("derive key point for slot %d: %w", slot, ErrZeroScalar)
	}
	var pk bls12381.G1
	if tables := c.keyGenTables(); tables != nil {
		k, _ := sk.s.MarshalBinary()
		defer clear(k)
		pk = tables[slot-1].Mul(k)
	} else {
		pk.ScalarMult(&sk.s, &c.p[slot-1])
	}
	return &pk, nil
}

func (c *CRS) keyGen(s *bls12381.Scalar, slot int) *PublicKey {
	n := c.n
	out := &PublicKey{CRS: c.fingerprint, Slot: slot, Helpers: make([]bls12381.G1, n-1)}
	tables := c.keyGenTables()
	var k []byte
	if tables != nil {
		k, _ = s.MarshalBinary()
		defer clear(k)
	}
	mul := func(dst *bls12381.G1, power int) {
		if tables != nil {
			*dst = tables[power-1].Mul(k)
		} else {
			dst.ScalarMult(s, &c.p[power-1])
		}
	}
	mul(&out.PK, slot)
	for idx := range out.Helpers {
		j := helperSlot(slot, idx)
		mul(&out.Helpers[idx], n+1-j+slot)
	}
	return out
}

// VerifyHelpers runs the curator's helper check on a registration: it
// accepts exactly when e(pk, Q_(n+1−j)) = e(ξ_(i→j), g2) for every j ≠ i.
//
// It checks an equivalent chain that needs multi-scalar multiplications in G1
// only. Sort pk and the helper values by their power of z: pk has power i
// and ξ_(i→j) has power n+1−j+i, so the powers run through i, i+1, …, n+i
// without n+1. Each element must be z^d times the one before, where d is 1,
// or 2 across the missing power:
//
//	e(X_b, g2) = e(X_a, Q_d)   for consecutive X_a, X_b.
//
// Starting from pk = sk·z^i·g1 these equations fix every helper value to
// sk·z^(n+1−j+i)·g1, the same condition as the direct check. They are
// batched with random 128-bit coefficients ρ_b from rnd (crypto/rand.Reader
// if nil) into two G1 multi-scalar multiplications, one scalar multiplication
// and one product of three pairings. A wrong helper value passes with
// probability at most 2^-127.
//
// It also rejects pk = O, a key for another CRS, a slot out of range and a
// helper count other than n−1. Helper values need no identity check: with
// pk ≠ O the equations force them to be nonzero.
func (c *CRS) VerifyHelpers(pk *PublicKey, rnd io.Reader) error {
	if err := c.checkKeyShape("verify helper values", pk); err != nil {
		return err
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	n, i := c.n, pk.Slot
	rho, err := randomShortScalars(rnd, n-1)
	if err != nil {
		return fmt.Errorf("verify helper values for slot %d: %w", i, err)
	}

	// Walk the powers upward. next holds the X_b side (paired with g2), prev1
	// the X_a side of steps by z (paired with Q_1).
	next := make([]bls12381.G1, 0, n-1)
	prev1 := make([]bls12381.G1, 0, n-2)
	rho1 := make([][]byte, 0, n-2)
	// gap is ρ·X_a for the step by z² across the missing power. It stays the
	// identity for slot 1, whose powers end at n+1.
	var gap bls12381.G1
	gap.SetIdentity()
	prev, prevPower := &pk.PK, i
	for step, power := 0, i+1; power <= n+i; power++ {
		if power == n+1 {
			continue
		}
		x := &pk.Helpers[helperIndex(i, n+1-power+i)]
		next = append(next, *x)
		if power-prevPower == 1 {
			prev1 = append(prev1, *prev)
			rho1 = append(rho1, rho[step])
		} else {
			var r bls12381.Scalar
			r.SetBytes(rho[step])
			gap.ScalarMult(&r, prev)
		}
		prev, prevPower = x, power
		step++
	}

	lhs, err := group.MSM(next, rho)
	if err != nil {
		return fmt.Errorf("verify helper values for slot %d: %w", i, err)
	}
	step1, err := group.MSM(prev1, rho1)
	if err != nil {
		return fmt.Errorf("verify helper values for slot %d: %w", i, err)
	}

	if !group.PairingProductIsOne(
		[]*bls12381.G1{&lhs, &step1, &gap},
		[]*bls12381.G2{bls12381.G2Generator(), &c.q[0], &c.q[1]},
		[]int{1, -1, -1},
	) {
		return fmt.Errorf("verify helper values for slot %d: %w", i, ErrInvalidHelpers)
	}
	return nil
}

// verifyHelpersDirect is the batched form of the direct check,
// e(pk, Σ ρ_j·Q_(n+1−j)) = e(Σ ρ_j·ξ_(i→j), g2), which needs a G2
// multi-scalar multiplication. It is kept to compare against VerifyHelpers in
// tests and benchmarks.
func (c *CRS) verifyHelpersDirect(pk *PublicKey, rnd io.Reader) error {
	if err := c.checkKeyShape("verify helper values", pk); err != nil {
		return err
	}
	n, i := c.n, pk.Slot
	rho, err := randomShortScalars(rnd, n-1)
	if err != nil {
		return fmt.Errorf("verify helper values for slot %d: %w", i, err)
	}

	qs := make([]bls12381.G2, n-1)
	for idx := range qs {
		qs[idx] = c.q[n-helperSlot(i, idx)] // Q_(n+1−j)
	}
	a, err := group.MSM(pk.Helpers, rho)
	if err != nil {
		return fmt.Errorf("verify helper values for slot %d: %w", i, err)
	}
	b, err := group.MSM(qs, rho)
	if err != nil {
		return fmt.Errorf("verify helper values for slot %d: %w", i, err)
	}

	if !group.PairingProductIsOne(
		[]*bls12381.G1{&pk.PK, &a},
		[]*bls12381.G2{&b, bls12381.G2Generator()},
		[]int{1, -1},
	) {
		return fmt.Errorf("verify helper values for slot %d: %w", i, ErrInvalidHelpers)
	}
	return nil
}

// VerifyHelpersNaive is VerifyHelpers with one two-pairing product per
// helper value and no randomness. It exists as the reference the batched
// check is measured and tested against; it costs about n−1 pairings' worth
// of final exponentiations more.
func (c *CRS) VerifyHelpersNaive(pk *PublicKey) error {
	if err := c.checkKeyShape("verify helper values", pk); err != nil {
		return err
	}
	n, i := c.n, pk.Slot
	for idx := range pk.Helpers {
		j := helperSlot(i, idx)
		if !group.PairingProductIsOne(
			[]*bls12381.G1{&pk.PK, &pk.Helpers[idx]},
			[]*bls12381.G2{&c.q[n-j], bls12381.G2Generator()},
			[]int{1, -1},
		) {
			return fmt.Errorf("verify helper value for slot %d of a key for slot %d: %w", j, i, ErrInvalidHelpers)
		}
	}
	return nil
}

// checkKeyShape checks everything about a registration except the pairings.
func (c *CRS) checkKeyShape(op string, pk *PublicKey) error {
	if pk == nil {
		return fmt.Errorf("%s: missing public key: %w", op, ErrInvalidPoint)
	}
	if pk.CRS != c.fingerprint {
		return fmt.Errorf("%s: key made for CRS %x, this CRS is %x: %w", op, pk.CRS[:8], c.fingerprint[:8], ErrCRSMismatch)
	}
	if err := c.checkSlot(op, pk.Slot); err != nil {
		return err
	}
	if len(pk.Helpers) != c.n-1 {
		return fmt.Errorf("%s: %d helper values for n = %d, want %d: %w", op, len(pk.Helpers), c.n, c.n-1, ErrInvalidHelpers)
	}
	if !isSetG1(&pk.PK) {
		return fmt.Errorf("%s: public key: %w", op, ErrInvalidPoint)
	}
	if pk.PK.IsIdentity() {
		return fmt.Errorf("%s: public key for slot %d: %w", op, pk.Slot, ErrIdentity)
	}
	for idx := range pk.Helpers {
		if !isSetG1(&pk.Helpers[idx]) {
			return fmt.Errorf("%s: helper value for slot %d: %w", op, helperSlot(pk.Slot, idx), ErrInvalidPoint)
		}
	}
	return nil
}

// publicKeyHeader is the CRS fingerprint, the slot and the helper count.
const publicKeyHeader = 32 + 4 + 4

// MarshalBinary encodes the key as the 32-byte CRS fingerprint, the slot and
// the number of helper values as 4-byte big-endian integers, PK, and the
// helper values, all as 48-byte compressed G1 points.
func (pk *PublicKey) MarshalBinary() ([]byte, error) {
	out := make([]byte, 0, publicKeyHeader+(1+len(pk.Helpers))*G1Size)
	out = append(out, pk.CRS[:]...)
	out = binary.BigEndian.AppendUint32(out, uint32(pk.Slot))
	out = binary.BigEndian.AppendUint32(out, uint32(len(pk.Helpers)))
	out = append(out, pk.PK.BytesCompressed()...)
	for idx := range pk.Helpers {
		out = append(out, pk.Helpers[idx].BytesCompressed()...)
	}
	return out, nil
}

// PublicKeyFields returns the CRS fingerprint, the slot and the compressed
// key point of an encoded PublicKey after checking its length, without
// decoding any point. A verifier that derives the key itself compares
// encodings instead of paying UnmarshalBinary's subgroup check of every
// helper value: compressed G1 encodings are canonical, so equal encodings
// are equal points.
func PublicKeyFields(b []byte) (crs [32]byte, slot int, key []byte, err error) {
	if len(b) < publicKeyHeader+G1Size {
		return crs, 0, nil, fmt.Errorf("decode public key of %d bytes, want at least %d: %w", len(b), publicKeyHeader+G1Size, ErrInvalidEncoding)
	}
	count := binary.BigEndian.Uint32(b[36:])
	if count < MinBlockSize-1 || count > MaxBlockSize-1 {
		return crs, 0, nil, fmt.Errorf("decode public key: %d helper values, want between %d and %d: %w", count, MinBlockSize-1, MaxBlockSize-1, ErrInvalidEncoding)
	}
	if want := publicKeyHeader + (1+int(count))*G1Size; len(b) != want {
		return crs, 0, nil, fmt.Errorf("decode public key of %d bytes with %d helper values, want %d bytes: %w", len(b), count, want, ErrInvalidEncoding)
	}
	copy(crs[:], b[:32])
	return crs, int(binary.BigEndian.Uint32(b[32:])), b[publicKeyHeader : publicKeyHeader+G1Size], nil
}

// UnmarshalBinary parses the encoding of MarshalBinary. Every point must be a
// canonical, non-identity point in G1; the slot must be in [1, count+1] and
// count at most MaxBlockSize−1. It does not run the helper check; use
// VerifyHelpers for that.
func (pk *PublicKey) UnmarshalBinary(b []byte) error {
	if len(b) < publicKeyHeader+G1Size {
		return fmt.Errorf("decode public key of %d bytes, want at least %d: %w", len(b), publicKeyHeader+G1Size, ErrInvalidEncoding)
	}
	slot := binary.BigEndian.Uint32(b[32:])
	count := binary.BigEndian.Uint32(b[36:])
	if count < MinBlockSize-1 || count > MaxBlockSize-1 {
		return fmt.Errorf("decode public key: %d helper values, want between %d and %d: %w", count, MinBlockSize-1, MaxBlockSize-1, ErrInvalidEncoding)
	}
	if slot < 1 || slot > count+1 {
		return fmt.Errorf("decode public key: slot %d outside [1, %d]: %w", slot, count+1, ErrInvalidSlot)
	}
	want := publicKeyHeader + (1+int(count))*G1Size
	if len(b) != want {
		return fmt.Errorf("decode public key of %d bytes with %d helper values, want %d bytes: %w", len(b), count, want, ErrInvalidEncoding)
	}

	off := publicKeyHeader
	key, err := decodeG1(b[off:off+G1Size], false)
	if err != nil {
		return fmt.Errorf("decode public key: %w", err)
	}
	helpers := make([]bls12381.G1, count)
	for idx := range helpers {
		off += G1Size
		if helpers[idx], err = decodeG1(b[off:off+G1Size], false); err != nil {
			return fmt.Errorf("decode public key: helper value for slot %d: %w", helperSlot(int(slot), idx), err)
		}
	}
	copy(pk.CRS[:], b[:32])
	pk.Slot, pk.PK, pk.Helpers = int(slot), key, helpers
	return nil
}
