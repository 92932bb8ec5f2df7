package rbeauth

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/tlog"
)

// Staple is what a workload staples to its TLS handshake, in
// SignedCertificateTimestamps: the curator's proof bundle for its ID, plus
// the RBE membership proof for its slot at the same checkpoint. The bundle
// proves the ID's current entry; the membership proof shows that the entry's
// key sits in its slot of a block digest committed by the checkpoint's state
// entry.
type Staple struct {
	// Bundle is the curator's proof bundle (curator.Bundle encoding).
	Bundle []byte
	// Block, Version and Digest name block k's digest C_k at the bundle's
	// checkpoint; BlockProof proves it under the state entry's PPDigest.
	Block      uint32
	Version    uint64
	Digest     []byte
	BlockProof tlog.RecordProof
	// Opening is Λ_i for the workload's slot at Version.
	Opening []byte
}

var stapleMagic = []byte("MZS1")

// maxProofHashes bounds proof lengths: a tree of 2^63 leaves needs 63.
const maxProofHashes = 64

// MarshalBinary encodes the staple:
//
//	opaque magic[4] = "MZS1"
//	opaque bundle<1..2^16-1>
//	uint32 block; uint64 version
//	opaque digest<1..255>
//	uint8 n; opaque block_proof[n][32]
//	opaque opening<1..255>
func (s *Staple) MarshalBinary() ([]byte, error) {
	if len(s.Bundle) == 0 || len(s.Bundle) > 0xffff {
		return nil, fmt.Errorf("encode staple: bundle of %d bytes, want 1 to 65535", len(s.Bundle))
	}
	if len(s.Digest) == 0 || len(s.Digest) > 255 || len(s.Opening) == 0 || len(s.Opening) > 255 {
		return nil, errors.New("encode staple: digest and opening must be 1 to 255 bytes")
	}
	if len(s.BlockProof) > maxProofHashes {
		return nil, fmt.Errorf("encode staple: block proof of %d hashes, at most %d", len(s.BlockProof), maxProofHashes)
	}
	var b bytes.Buffer
	b.Write(stapleMagic)
	b.Write(binary.BigEndian.AppendUint16(nil, uint16(len(s.Bundle))))
	b.Write(s.Bundle)
	b.Write(binary.BigEndian.AppendUint32(nil, s.Block))
	b.Write(binary.BigEndian.AppendUint64(nil, s.Version))
	b.WriteByte(byte(len(s.Digest)))
	b.Write(s.Digest)
	b.WriteByte(byte(len(s.BlockProof)))
	for _, h := range s.BlockProof {
		b.Write(h[:])
	}
	b.WriteByte(byte(len(s.Opening)))
	b.Write(s.Opening)
	return b.Bytes(), nil
}

// ParseStaple decodes MarshalBinary's encoding and rejects anything else,
// including trailing bytes.
func ParseStaple(data []byte) (*Staple, error) {
	r := reader{data: data}
	if !bytes.Equal(r.next(4), stapleMagic) {
		return nil, fmt.Errorf("%w: staple does not start with MZS1", ErrRegistrationMissing)
	}
	s := &Staple{}
	s.Bundle = r.next(int(r.uint16()))
	s.Block = r.uint32()
	s.Version = r.uint64()
	s.Digest = r.next(int(r.uint8()))
	n := int(r.uint8())
	if n > maxProofHashes {
		return nil, fmt.Errorf("%w: staple block proof of %d hashes", ErrRegistrationMissing, n)
	}
	for range n {
		var h tlog.Hash
		copy(h[:], r.next(len(h)))
		s.BlockProof = append(s.BlockProof, h)
	}
	s.Opening = r.next(int(r.uint8()))
	if r.err || len(r.data) != 0 || len(s.Bundle) == 0 || len(s.Digest) == 0 || len(s.Opening) == 0 {
		return nil, fmt.Errorf("%w: staple is truncated, has trailing bytes or empty fields", ErrRegistrationMissing)
	}
	return s, nil
}

// reader reads big-endian fields and records an overrun instead of
// panicking.
type reader struct {
	data []byte
	err  bool
}

func (r *reader) next(n int) []byte {
	if r.err || n < 0 || n > len(r.data) {
		r.err = true
		return nil
	}
	out := r.data[:n]
	r.data = r.data[n:]
	return out
}

func (r *reader) uint8() uint8 {
	b := r.next(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (r *reader) uint16() uint16 {
	b := r.next(2)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

func (r *reader) uint32() uint32 {
	b := r.next(4)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func (r *reader) uint64() uint64 {
	b := r.next(8)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
