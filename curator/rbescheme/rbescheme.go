// Package rbescheme adapts the GKMR scheme of rbeauth/rbe to the curator's
// Scheme interface. A log entry's RBEKey is the rbe.PublicKey encoding,
// which carries the CRS fingerprint, the slot, pk and the n−1 helper values;
// RBEHelpers stays empty.
package rbescheme

import (
	"errors"
	"fmt"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
)

// Scheme is the curator.Scheme of one CRS.
type Scheme struct {
	CRS *rbe.CRS
}

// New returns the scheme of crs.
func New(crs *rbe.CRS) *Scheme { return &Scheme{CRS: crs} }

func (s *Scheme) BlockSize() int        { return s.CRS.N() }
func (s *Scheme) Fingerprint() [32]byte { return s.CRS.Fingerprint() }

func (s *Scheme) decode(slot int, pk, helpers []byte) (*rbe.PublicKey, error) {
	if len(helpers) != 0 {
		return nil, errors.New("helper values belong inside the RBE key encoding")
	}
	var k rbe.PublicKey
	if err := k.UnmarshalBinary(pk); err != nil {
		return nil, err
	}
	if k.Slot != slot {
		return nil, fmt.Errorf("key made for slot %d, entry names slot %d", k.Slot, slot)
	}
	if k.CRS != s.CRS.Fingerprint() {
		return nil, fmt.Errorf("key made for another CRS: %w", rbe.ErrCRSMismatch)
	}
	return &k, nil
}

// CheckKey decodes the key and runs the batched helper check.
func (s *Scheme) CheckKey(slot int, pk, helpers []byte) error {
	k, err := s.decode(slot, pk, helpers)
	if err != nil {
		return err
	}
	return s.CRS.VerifyHelpers(k, nil)
}

func (s *Scheme) NewBlock() curator.Block { return &block{s: s, b: rbe.NewBlock(s.CRS)} }

type block struct {
	s *Scheme
	b *rbe.Block
}

// Register adds a key. rbe.Block.Register runs the helper check again.
//
// TODO: the check then runs twice per entry (once in CheckKey, once
// here); rbe offers no register call for a key that was already checked.
func (b *block) Register(slot int, pk, helpers []byte) error {
	k, err := b.s.decode(slot, pk, helpers)
	if err != nil {
		return err
	}
	return b.b.Register(k)
}

func (b *block) Remove(slot int) error { return b.b.Remove(slot) }

func (b *block) Digest() []byte {
	d, _ := b.b.Digest().MarshalBinary()
	return d
}

func (b *block) Version() uint64 { return b.b.Version() }

func (b *block) Opening(slot int) ([]byte, error) {
	o, err := b.b.Opening(slot)
	if err != nil {
		return nil, err
	}
	return o.MarshalBinary()
}
