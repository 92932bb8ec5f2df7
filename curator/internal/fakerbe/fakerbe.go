// Package fakerbe is a hash-based stand-in for the RBE scheme in unit
// tests of the log rules. It has the shape of the real scheme (a key check
// over helper values, per-block digests, versions and openings) and none of
// its security. It must never be used outside tests.
package fakerbe

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

// Scheme is a fake curator.Scheme with n slots per block.
type Scheme struct{ N int }

func (s Scheme) BlockSize() int { return s.N }

func (s Scheme) Fingerprint() [32]byte { return sha256.Sum256([]byte("fakerbe")) }

// Helpers returns the helper values a registrant of pk in slot computes.
func (s Scheme) Helpers(slot int, pk []byte) []byte {
	var out []byte
	for j := 1; j <= s.N; j++ {
		if j == slot {
			continue
		}
		h := sha256.New()
		binary.Write(h, binary.BigEndian, [2]uint32{uint32(slot), uint32(j)})
		h.Write(pk)
		out = h.Sum(out)[:len(out)+8]
	}
	return out
}

func (s Scheme) CheckKey(slot int, pk, helpers []byte) error {
	if slot < 1 || slot > s.N {
		return fmt.Errorf("slot %d outside [1, %d]", slot, s.N)
	}
	if len(pk) == 0 || len(pk) > 64 {
		return errors.New("invalid public key")
	}
	if !bytes.Equal(helpers, s.Helpers(slot, pk)) {
		return errors.New("invalid helper values")
	}
	return nil
}

func (s Scheme) NewBlock() curator.Block {
	b := &block{n: s.N, keys: map[int][]byte{}}
	b.digest = b.computeDigest()
	return b
}

type block struct {
	n       int
	keys    map[int][]byte
	version uint64
	// digest is the digest at the current version. Like rbe.Block, which
	// stores its digest and openings, the block computes it on each
	// change, so Digest and Opening do not read the keys.
	digest []byte
}

func (b *block) Register(slot int, pk, _ []byte) error {
	if _, ok := b.keys[slot]; ok {
		return fmt.Errorf("slot %d is occupied", slot)
	}
	b.keys[slot] = bytes.Clone(pk)
	b.version++
	b.digest = b.computeDigest()
	return nil
}

func (b *block) Remove(slot int) error {
	if _, ok := b.keys[slot]; !ok {
		return fmt.Errorf("slot %d is empty", slot)
	}
	delete(b.keys, slot)
	b.version++
	b.digest = b.computeDigest()
	return nil
}

func (b *block) Digest() []byte { return bytes.Clone(b.digest) }

func (b *block) computeDigest() []byte {
	slots := make([]int, 0, len(b.keys))
	for s := range b.keys {
		slots = append(slots, s)
	}
	sort.Ints(slots)
	h := sha256.New()
	for _, s := range slots {
		binary.Write(h, binary.BigEndian, uint32(s))
		h.Write(b.keys[s])
	}
	return h.Sum(nil)
}

func (b *block) Version() uint64 { return b.version }

func (b *block) Opening(slot int) ([]byte, error) {
	d := sha256.Sum256(append(b.Digest(), byte(slot)))
	return d[:], nil
}
