package rbe

import (
	"crypto/rand"
	"fmt"

	"github.com/cloudflare/circl/ecc/bls12381"
)

// Block is the curator's state for one block of n slots: the digest
// C_k = Σ pk_j, a version that counts changes, the stored registration of
// each occupied slot, and the opening Λ_i = Σ_(j≠i, registered) ξ_(j→i) of
// every slot, occupied or not.
//
// The state is a deterministic function of the sequence of successful
// Register, Rotate and Remove calls, so anyone who replays the registration
// log gets the same digests and openings. A Block is not safe for concurrent
// use.
type Block struct {
	crs      *CRS
	version  uint64
	digest   bls12381.G1
	keys     []*PublicKey  // keys[i-1] is the registration in slot i, or nil
	openings []bls12381.G1 // openings[i-1] = Λ_i
}

// NewBlock returns an empty block for crs at version 0. Its digest and all
// openings are the identity.
func NewBlock(crs *CRS) *Block {
	b := &Block{crs: crs, keys: make([]*PublicKey, crs.n), openings: make([]bls12381.G1, crs.n)}
	b.digest.SetIdentity()
	for i := range b.openings {
		b.openings[i].SetIdentity()
	}
	return b
}

// CRS returns the CRS the block uses.
func (b *Block) CRS() *CRS { return b.crs }

// Digest returns the current digest C_k.
func (b *Block) Digest() Digest { return Digest{p: b.digest} }

// Version returns the number of changes applied since NewBlock.
func (b *Block) Version() uint64 { return b.version }

// Opening returns the current opening Λ_i of slot i. For an empty slot it
// proves non-membership (VerifyNonMembership).
func (b *Block) Opening(slot int) (Opening, error) {
	if err := b.crs.checkSlot("get opening", slot); err != nil {
		return Opening{}, err
	}
	return Opening{p: b.openings[slot-1]}, nil
}

// Key returns a copy of the registration stored in slot i, or false if the
// slot is empty.
func (b *Block) Key(slot int) (*PublicKey, bool) {
	if slot < 1 || slot > b.crs.n || b.keys[slot-1] == nil {
		return nil, false
	}
	return clonePublicKey(b.keys[slot-1]), true
}

// Register runs the helper check (VerifyHelpers with crypto/rand.Reader) on
// pk and adds it to its empty slot: C_k += pk and Λ_j += ξ_(i→j) for every
// j ≠ i. On error the block is unchanged.
func (b *Block) Register(pk *PublicKey) error {
	if err := b.crs.VerifyHelpers(pk, rand.Reader); err != nil {
		return fmt.Errorf("register key: %w", err)
	}
	return b.register(pk)
}

// RegisterUnchecked is Register without the pairing equations of the helper
// check. It still checks the CRS fingerprint, the slot, the helper count and
// pk ≠ O. Use it only to replay registrations that this process verified
// before, for example from its own log after a restart: a key that never
// passed VerifyHelpers breaks position binding for its slot.
func (b *Block) RegisterUnchecked(pk *PublicKey) error {
	if err := b.crs.checkKeyShape("register key", pk); err != nil {
		return err
	}
	return b.register(pk)
}

func (b *Block) register(pk *PublicKey) error {
	if b.keys[pk.Slot-1] != nil {
		return fmt.Errorf("register key in slot %d: %w", pk.Slot, ErrSlotOccupied)
	}
	b.keys[pk.Slot-1] = clonePublicKey(pk)
	b.add(pk, false)
	return nil
}

// Rotate applies a rotation delta from CRS.KeyGenDelta to an occupied slot
// after the helper check: the digest, the other openings and the stored
// registration all move by the delta, so that a later Remove subtracts the
// rotated key. On error the block is unchanged.
func (b *Block) Rotate(delta *PublicKey) error {
	if err := b.crs.VerifyHelpers(delta, rand.Reader); err != nil {
		return fmt.Errorf("rotate key: %w", err)
	}
	return b.rotate(delta)
}

// RotateUnchecked is Rotate without the pairing equations of the helper
// check, for replaying rotations this process verified before (see
// RegisterUnchecked).
func (b *Block) RotateUnchecked(delta *PublicKey) error {
	if err := b.crs.checkKeyShape("rotate key", delta); err != nil {
		return err
	}
	return b.rotate(delta)
}

func (b *Block) rotate(delta *PublicKey) error {
	stored := b.keys[delta.Slot-1]
	if stored == nil {
		return fmt.Errorf("rotate key in slot %d: %w", delta.Slot, ErrSlotEmpty)
	}
	next := clonePublicKey(stored)
	next.PK.Add(&next.PK, &delta.PK)
	for idx := range next.Helpers {
		next.Helpers[idx].Add(&next.Helpers[idx], &delta.Helpers[idx])
	}
	if next.PK.IsIdentity() {
		// The delta cancels the stored key: sk' = 0, which no key may be.
		return fmt.Errorf("rotate key in slot %d: rotated key would be zero: %w", delta.Slot, ErrIdentity)
	}
	b.keys[delta.Slot-1] = next
	b.add(delta, false)
	return nil
}

// Remove deletes the registration in slot i by subtracting its stored key and
// helper values, so that the slot can be registered again. Nobody needs the
// old secret key for this.
func (b *Block) Remove(slot int) error {
	if err := b.crs.checkSlot("remove key", slot); err != nil {
		return err
	}
	stored := b.keys[slot-1]
	if stored == nil {
		return fmt.Errorf("remove key from slot %d: %w", slot, ErrSlotEmpty)
	}
	b.add(stored, true)
	b.keys[slot-1] = nil
	return nil
}

// add adds (or subtracts) a registration's key to the digest and its helper
// values to the other slots' openings, and counts a version.
func (b *Block) add(pk *PublicKey, subtract bool) {
	term := pk.PK
	if subtract {
		term.Neg()
	}
	b.digest.Add(&b.digest, &term)
	for idx := range pk.Helpers {
		j := helperSlot(pk.Slot, idx)
		h := pk.Helpers[idx]
		if subtract {
			h.Neg()
		}
		b.openings[j-1].Add(&b.openings[j-1], &h)
	}
	b.version++
}

func clonePublicKey(pk *PublicKey) *PublicKey {
	out := *pk
	out.Helpers = append([]bls12381.G1(nil), pk.Helpers...)
	return &out
}
