// Package rbescheme adapts the GKMR scheme of rbeauth/rbe to the curator's
// Scheme interface. A log entry's RBEKey is the rbe.PublicKey encoding,
// which carries the CRS fingerprint, the slot, pk and the n−1 helper values;
// RBEHelpers stays empty.
package rbescheme

import (
	"bytes"
	"encoding/binary"
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

// Register adds a key without repeating the pairing equations of the
// helper check: the caller ran CheckKey on it (curator.State does, and the
// curator checks each key before sequencing it). The shape checks still run.
func (b *block) Register(slot int, pk, helpers []byte) error {
	k, err := b.s.decode(slot, pk, helpers)
	if err != nil {
		return err
	}
	return b.b.RegisterUnchecked(k)
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

// EncodeContribution encodes a ceremony contribution for a log entry: the
// CRS length (uint32, big-endian), the CRS and the contribution proof.
func EncodeContribution(c rbe.Contribution) ([]byte, error) {
	crs, err := c.CRS.MarshalBinary()
	if err != nil {
		return nil, err
	}
	proof, err := c.Proof.MarshalBinary()
	if err != nil {
		return nil, err
	}
	out := binary.BigEndian.AppendUint32(nil, uint32(len(crs)))
	out = append(out, crs...)
	return append(out, proof...), nil
}

// VerifyContribution implements curator.CeremonyVerifier with
// rbe.VerifyContribution. The first contribution must start from
// rbe.NewCeremony for the contribution's block size.
func (s *Scheme) VerifyContribution(prev, contribution []byte) ([]byte, [32]byte, error) {
	var none [32]byte
	if len(contribution) < 4 || uint64(len(contribution)-4) < uint64(binary.BigEndian.Uint32(contribution)) {
		return nil, none, fmt.Errorf("decode contribution: %w", rbe.ErrInvalidEncoding)
	}
	n := binary.BigEndian.Uint32(contribution)
	crsBytes := contribution[4 : 4+n]
	next, err := rbe.ParseCRS(bytes.Clone(crsBytes))
	if err != nil {
		return nil, none, fmt.Errorf("decode contributed CRS: %w", err)
	}
	var proof rbe.ContributionProof
	if err := proof.UnmarshalBinary(contribution[4+n:]); err != nil {
		return nil, none, fmt.Errorf("decode contribution proof: %w", err)
	}
	var before *rbe.CRS
	if prev == nil {
		before, err = rbe.NewCeremony(next.N())
	} else {
		before, err = rbe.ParseCRS(bytes.Clone(prev))
	}
	if err != nil {
		return nil, none, err
	}
	if err := rbe.VerifyContribution(before, next, &proof); err != nil {
		return nil, none, err
	}
	return bytes.Clone(crsBytes), next.Fingerprint(), nil
}

// A Follower is a Scheme without a CRS until the log's ceremony entries
// provide one (curator.CRSFollower). Until then it accepts only ceremony
// contributions: BlockSize is 0, and every key fails CheckKey.
type Follower struct {
	Scheme
	ready bool
}

// NewFollower returns a scheme that takes its CRS from the log.
func NewFollower() *Follower { return &Follower{} }

// SetCRS implements curator.CRSFollower.
func (f *Follower) SetCRS(encoding []byte) error {
	crs, err := rbe.ParseCRS(bytes.Clone(encoding))
	if err != nil {
		return fmt.Errorf("set CRS from the log: %w", err)
	}
	crs.Precompute()
	f.CRS, f.ready = crs, true
	return nil
}

// Ready reports whether the log has provided a CRS.
func (f *Follower) Ready() bool { return f.ready }

func (f *Follower) BlockSize() int {
	if !f.ready {
		return 0
	}
	return f.Scheme.BlockSize()
}

func (f *Follower) Fingerprint() [32]byte {
	if !f.ready {
		return [32]byte{}
	}
	return f.Scheme.Fingerprint()
}

func (f *Follower) CheckKey(slot int, pk, helpers []byte) error {
	if !f.ready {
		return errors.New("no CRS yet: the log has no ceremony contribution")
	}
	return f.Scheme.CheckKey(slot, pk, helpers)
}

func (f *Follower) NewBlock() curator.Block {
	if !f.ready {
		panic("rbescheme: NewBlock before the CRS is set")
	}
	return f.Scheme.NewBlock()
}
