package rbe

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cloudflare/circl/ecc/bls12381"

	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe/internal/group"
)

// KEM sizes in bytes.
const (
	// KeySize is the length of the key Encap and Decap return.
	KeySize = 32
	// TagSize is the length of the key-confirmation tag in a ciphertext.
	TagSize = 32
	// CiphertextSize is the length of a ciphertext: a format byte, the
	// digest, ct1 in GT, ct2 in G2 and the tag.
	CiphertextSize = 1 + G1Size + GtSize + G2Size + TagSize
)

const (
	ciphertextVersion = 1
	kdfSalt           = "mazu-ztunnel/rbe/v1/kem"
	transcriptLabel   = "mazu-ztunnel/rbe/v1/kem-transcript"
)

// Ciphertext is a parsed KEM ciphertext. Its Digest tells the decapsulator
// which version of its opening to use.
type Ciphertext struct {
	Digest Digest
	CT1    bls12381.Gt // e(C_k, Q_(n+1−i))^r
	CT2    bls12381.G2 // r·g2
	Tag    [TagSize]byte
}

// Encap encapsulates a fresh key to whoever holds the key registered in
// slot i of the block with the given digest. It draws r from rnd and computes
//
//	ct1 = e(r·C_k, Q_(n+1−i)),  ct2 = r·g2,  K = Z^r,
//
// then derives with HKDF-SHA256 from K and the transcript (CRS fingerprint,
// slot, digest, ct1, ct2) a key-confirmation key, whose HMAC-SHA256 over the
// transcript becomes the ciphertext's tag, and the 32-byte key it returns.
// Neither K nor r, r·Q nor r·P_1 leaves this function.
//
// The ciphertext does not carry the block index or the version; the caller's
// protocol does. The digest must not be the identity (an empty block).
func (c *CRS) Encap(digest Digest, slot int, rnd io.Reader) (ct []byte, key []byte, err error) {
	if err := c.checkSlot("encapsulate", slot); err != nil {
		return nil, nil, err
	}
	if digest.point().IsIdentity() {
		return nil, nil, fmt.Errorf("encapsulate to slot %d: digest of an empty block: %w", slot, ErrIdentity)
	}
	r, err := randomNonzeroScalar(rnd)
	if err != nil {
		return nil, nil, fmt.Errorf("encapsulate to slot %d: %w", slot, err)
	}
	defer func() { *r = bls12381.Scalar{} }()
	return c.encap(digest, slot, r)
}

// encap is Encap with the randomness r given; known-answer tests call it.
func (c *CRS) encap(digest Digest, slot int, r *bls12381.Scalar) (ct []byte, key []byte, err error) {
	rBytes, _ := r.MarshalBinary()
	defer clear(rBytes)

	var rc bls12381.G1
	rc.ScalarMult(r, digest.point())
	ct1 := bls12381.Pair(&rc, &c.q[c.n-slot])
	tables := c.kemTables()
	ct2 := tables.g2.Mul(rBytes)
	k := tables.z.Mul(rBytes)

	parsed := &Ciphertext{Digest: digest, CT1: *ct1, CT2: ct2}
	th := c.transcriptHash(slot, parsed)
	confirm, key, err := c.deriveKeys((*bls12381.Gt)(&k), th)
	if err != nil {
		return nil, nil, fmt.Errorf("encapsulate to slot %d: %w", slot, err)
	}
	defer clear(confirm)
	copy(parsed.Tag[:], confirmationTag(confirm, th))
	return parsed.marshal(), key, nil
}

// Decap recovers the key of a ciphertext for slot i with the slot's secret
// key and its opening for the digest the ciphertext names:
//
//	K = (ct1 · e(−Λ_i, ct2))^(1/sk) = Z^r.
//
// ct1 must lie in GT (checked, since an element outside GT would leak sk
// modulo a small order through the tag check) and ct2 in G2, neither the
// identity. It returns ErrDecapsulation, without saying why, when the tag
// does not match: a wrong secret key, another slot, or an opening for another
// digest.
func (c *CRS) Decap(sk *SecretKey, slot int, opening Opening, ct []byte) ([]byte, error) {
	if err := c.checkSlot("decapsulate", slot); err != nil {
		return nil, err
	}
	if sk == nil || sk.s.IsZero() == 1 {
		return nil, fmt.Errorf("decapsulate: %w", ErrZeroScalar)
	}
	parsed, err := ParseCiphertext(ct)
	if err != nil {
		return nil, fmt.Errorf("decapsulate: %w", err)
	}

	t := parsed.CT1
	if lam := opening.point(); !lam.IsIdentity() {
		var neg bls12381.G1
		neg = *lam
		neg.Neg()
		t.Mul(&t, bls12381.Pair(&neg, &parsed.CT2))
	}
	var inv bls12381.Scalar
	inv.Inv(&sk.s)
	invBytes, _ := inv.MarshalBinary()
	k := group.Exp((*group.GtElem)(&t), invBytes)
	inv = bls12381.Scalar{}
	clear(invBytes)

	th := c.transcriptHash(slot, parsed)
	confirm, key, err := c.deriveKeys((*bls12381.Gt)(&k), th)
	if err != nil {
		return nil, fmt.Errorf("decapsulate: %w", err)
	}
	defer clear(confirm)
	if subtle.ConstantTimeCompare(confirmationTag(confirm, th), parsed.Tag[:]) != 1 {
		clear(key)
		return nil, ErrDecapsulation
	}
	return key, nil
}

// ParseCiphertext decodes and checks a ciphertext: the format byte, a
// non-identity digest, ct1 in GT and not 1, ct2 in G2 and not the identity.
func ParseCiphertext(ct []byte) (*Ciphertext, error) {
	if len(ct) != CiphertextSize {
		return nil, fmt.Errorf("decode ciphertext of %d bytes, want %d: %w", len(ct), CiphertextSize, ErrInvalidEncoding)
	}
	if ct[0] != ciphertextVersion {
		return nil, fmt.Errorf("decode ciphertext: format %d, want %d: %w", ct[0], ciphertextVersion, ErrInvalidEncoding)
	}
	off := 1
	d, err := decodeG1(ct[off:off+G1Size], false)
	if err != nil {
		return nil, fmt.Errorf("decode ciphertext digest: %w", err)
	}
	off += G1Size
	ct1, err := group.DecodeGt(ct[off : off+GtSize])
	switch {
	case errors.Is(err, group.ErrGtIdentity):
		return nil, fmt.Errorf("decode ciphertext ct1: %w", ErrIdentity)
	case err != nil:
		return nil, fmt.Errorf("decode ciphertext ct1: %w: %w", ErrInvalidEncoding, err)
	}
	off += GtSize
	ct2, err := decodeG2(ct[off:off+G2Size], false)
	if err != nil {
		return nil, fmt.Errorf("decode ciphertext ct2: %w", err)
	}
	off += G2Size
	out := &Ciphertext{Digest: Digest{p: d}, CT1: *ct1, CT2: ct2}
	copy(out.Tag[:], ct[off:])
	return out, nil
}

func (p *Ciphertext) marshal() []byte {
	out := make([]byte, 0, CiphertextSize)
	out = append(out, ciphertextVersion)
	out = append(out, p.Digest.point().BytesCompressed()...)
	ct1, _ := p.CT1.MarshalBinary()
	out = append(out, ct1...)
	out = append(out, p.CT2.BytesCompressed()...)
	return append(out, p.Tag[:]...)
}

// transcriptHash binds the CRS, the slot and every ciphertext component.
func (c *CRS) transcriptHash(slot int, p *Ciphertext) []byte {
	h := sha256.New()
	h.Write([]byte(transcriptLabel))
	h.Write(c.fingerprint[:])
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(slot)))
	h.Write(p.Digest.point().BytesCompressed())
	ct1, _ := p.CT1.MarshalBinary()
	h.Write(ct1)
	h.Write(p.CT2.BytesCompressed())
	return h.Sum(nil)
}

// deriveKeys returns the key-confirmation key and the output key from K.
func (c *CRS) deriveKeys(k *bls12381.Gt, th []byte) (confirm, key []byte, err error) {
	ikm, err := k.MarshalBinary()
	if err != nil {
		return nil, nil, fmt.Errorf("encode shared secret: %w", err)
	}
	defer clear(ikm)
	okm, err := hkdf.Key(sha256.New, ikm, []byte(kdfSalt), string(th), 2*KeySize)
	if err != nil {
		return nil, nil, fmt.Errorf("derive keys: %w", err)
	}
	return okm[:KeySize], okm[KeySize:], nil
}

func confirmationTag(confirm, th []byte) []byte {
	m := hmac.New(sha256.New, confirm)
	m.Write(th)
	return m.Sum(nil)
}
