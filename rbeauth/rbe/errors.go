package rbe

import "errors"

// Sentinel errors. Functions wrap them with the operation and the offending
// value, so test for them with errors.Is.
var (
	// ErrInvalidEncoding reports bytes that do not encode a value of the
	// expected type: wrong length, bad flag bits, a coordinate out of range,
	// a point off the curve or outside the prime-order subgroup.
	ErrInvalidEncoding = errors.New("rbe: invalid encoding")
	// ErrIdentity reports the identity element where it is not allowed, for
	// example as a public key, a ceremony update or a ciphertext component.
	ErrIdentity = errors.New("rbe: identity element not allowed")
	// ErrInvalidPoint reports an in-memory point that was never set (the zero
	// value of bls12381.G1 or bls12381.G2 is not a valid point).
	ErrInvalidPoint = errors.New("rbe: uninitialised group element")
	// ErrInvalidSlot reports a slot index outside [1, n].
	ErrInvalidSlot = errors.New("rbe: slot out of range")
	// ErrInvalidBlockSize reports a block size n outside [MinBlockSize, MaxBlockSize].
	ErrInvalidBlockSize = errors.New("rbe: block size out of range")
	// ErrCRSMismatch reports a value made for another CRS, or for a CRS of
	// another block size.
	ErrCRSMismatch = errors.New("rbe: CRS mismatch")
	// ErrInvalidCRS reports a CRS whose points are not consecutive powers of
	// one nonzero trapdoor with the (n+1)-th power left out.
	ErrInvalidCRS = errors.New("rbe: invalid CRS")
	// ErrInvalidContribution reports a ceremony contribution that is zero,
	// the identity (an update by 1), or whose proof does not verify.
	ErrInvalidContribution = errors.New("rbe: invalid ceremony contribution")
	// ErrInvalidHelpers reports a public key whose helper values fail the
	// helper check, or whose helper count is not n−1.
	ErrInvalidHelpers = errors.New("rbe: helper values do not match the public key")
	// ErrSlotOccupied reports a registration into a slot that holds a key.
	ErrSlotOccupied = errors.New("rbe: slot already registered")
	// ErrSlotEmpty reports a rotation or removal of a slot that holds no key.
	ErrSlotEmpty = errors.New("rbe: slot not registered")
	// ErrMembership reports an opening that does not prove the claimed
	// public key (or emptiness) for the slot under the digest.
	ErrMembership = errors.New("rbe: membership check failed")
	// ErrMissingInput reports an empty input that must not be empty, such as
	// the token given to DeriveSecretKey.
	ErrMissingInput = errors.New("rbe: missing input")
	// ErrZeroScalar reports a secret or derived scalar equal to zero.
	ErrZeroScalar = errors.New("rbe: zero scalar")
	// ErrDecapsulation reports a ciphertext whose key confirmation fails:
	// a wrong secret key, a wrong slot, or an opening for another digest.
	ErrDecapsulation = errors.New("rbe: decapsulation failed")
)
