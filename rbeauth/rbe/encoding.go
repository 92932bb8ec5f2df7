package rbe

import (
	"encoding/base64"
	"fmt"

	"github.com/cloudflare/circl/ecc/bls12381"
)

// Encoded sizes in bytes.
const (
	G1Size     = bls12381.G1SizeCompressed // compressed G1 point
	G2Size     = bls12381.G2SizeCompressed // compressed G2 point
	GtSize     = bls12381.GtSize           // GT element, circl has no compression
	ScalarSize = bls12381.ScalarSize       // big-endian scalar below q
)

// decodeG1 parses a compressed G1 point. circl's SetBytes checks the flag
// bits, the coordinate range, the curve equation and subgroup membership. The
// length check here also rejects the uncompressed form, so that every point
// has exactly one accepted encoding.
func decodeG1(b []byte, allowIdentity bool) (bls12381.G1, error) {
	var p bls12381.G1
	if len(b) != G1Size {
		return p, fmt.Errorf("decode G1 point of %d bytes, want %d: %w", len(b), G1Size, ErrInvalidEncoding)
	}
	if err := p.SetBytes(b); err != nil {
		return p, fmt.Errorf("decode G1 point: %w", ErrInvalidEncoding)
	}
	if !allowIdentity && p.IsIdentity() {
		return p, fmt.Errorf("decode G1 point: %w", ErrIdentity)
	}
	return p, nil
}

// decodeG2 parses a compressed G2 point, like decodeG1.
func decodeG2(b []byte, allowIdentity bool) (bls12381.G2, error) {
	var p bls12381.G2
	if len(b) != G2Size {
		return p, fmt.Errorf("decode G2 point of %d bytes, want %d: %w", len(b), G2Size, ErrInvalidEncoding)
	}
	if err := p.SetBytes(b); err != nil {
		return p, fmt.Errorf("decode G2 point: %w", ErrInvalidEncoding)
	}
	if !allowIdentity && p.IsIdentity() {
		return p, fmt.Errorf("decode G2 point: %w", ErrIdentity)
	}
	return p, nil
}

// isSetG1 reports whether p was assigned. The zero value of bls12381.G1 has
// all coordinates zero, which is not a valid projective point.
func isSetG1(p *bls12381.G1) bool { return *p != bls12381.G1{} }

// isSetG2 reports whether p was assigned, like isSetG1.
func isSetG2(p *bls12381.G2) bool { return *p != bls12381.G2{} }

// Digest is a block digest C_k = Σ pk_j over the registered slots of one
// block: a G1 point. The digest of an empty block is the identity.
//
// Its binary form is the 48-byte compressed point; its text form (and so its
// JSON form) is the standard base64 encoding of those bytes.
type Digest struct{ p bls12381.G1 }

// Opening is the opening Λ_i = Σ_{j≠i} ξ_{j→i} of slot i under a digest: a G1
// point, encoded like a Digest. It is public. The opening of the only
// registered slot of a block is the identity.
type Opening struct{ p bls12381.G1 }

// Point returns the digest as a G1 point, the identity for the zero value.
func (d Digest) Point() *bls12381.G1 { return d.point() }

// Equal reports whether d and e are the same point.
func (d Digest) Equal(e Digest) bool { return d.point().IsEqual(e.point()) }

// point returns the digest, treating the zero value as the identity.
func (d *Digest) point() *bls12381.G1 {
	if !isSetG1(&d.p) {
		d.p.SetIdentity()
	}
	return &d.p
}

// MarshalBinary returns the 48-byte compressed encoding.
func (d Digest) MarshalBinary() ([]byte, error) { return d.point().BytesCompressed(), nil }

// UnmarshalBinary parses a 48-byte compressed G1 point, which may be the identity.
func (d *Digest) UnmarshalBinary(b []byte) error {
	p, err := decodeG1(b, true)
	if err != nil {
		return fmt.Errorf("decode digest: %w", err)
	}
	d.p = p
	return nil
}

// MarshalText returns the base64 encoding of MarshalBinary.
func (d Digest) MarshalText() ([]byte, error) { return marshalText(d.point()) }

// UnmarshalText parses the base64 form written by MarshalText.
func (d *Digest) UnmarshalText(b []byte) error {
	raw, err := unmarshalText(b, "digest")
	if err != nil {
		return err
	}
	return d.UnmarshalBinary(raw)
}

// String returns the text form.
func (d Digest) String() string { b, _ := d.MarshalText(); return string(b) }

// Point returns the opening as a G1 point, the identity for the zero value.
func (o Opening) Point() *bls12381.G1 { return o.point() }

// Equal reports whether o and e are the same point.
func (o Opening) Equal(e Opening) bool { return o.point().IsEqual(e.point()) }

func (o *Opening) point() *bls12381.G1 {
	if !isSetG1(&o.p) {
		o.p.SetIdentity()
	}
	return &o.p
}

// MarshalBinary returns the 48-byte compressed encoding.
func (o Opening) MarshalBinary() ([]byte, error) { return o.point().BytesCompressed(), nil }

// UnmarshalBinary parses a 48-byte compressed G1 point, which may be the identity.
func (o *Opening) UnmarshalBinary(b []byte) error {
	p, err := decodeG1(b, true)
	if err != nil {
		return fmt.Errorf("decode opening: %w", err)
	}
	o.p = p
	return nil
}

// MarshalText returns the base64 encoding of MarshalBinary.
func (o Opening) MarshalText() ([]byte, error) { return marshalText(o.point()) }

// UnmarshalText parses the base64 form written by MarshalText.
func (o *Opening) UnmarshalText(b []byte) error {
	raw, err := unmarshalText(b, "opening")
	if err != nil {
		return err
	}
	return o.UnmarshalBinary(raw)
}

// String returns the text form.
func (o Opening) String() string { b, _ := o.MarshalText(); return string(b) }

// NewDigest returns p as a digest. It fails for an unset point.
func NewDigest(p *bls12381.G1) (Digest, error) {
	if !isSetG1(p) {
		return Digest{}, fmt.Errorf("new digest: %w", ErrInvalidPoint)
	}
	return Digest{p: *p}, nil
}

// NewOpening returns p as an opening. It fails for an unset point.
func NewOpening(p *bls12381.G1) (Opening, error) {
	if !isSetG1(p) {
		return Opening{}, fmt.Errorf("new opening: %w", ErrInvalidPoint)
	}
	return Opening{p: *p}, nil
}

func marshalText(p *bls12381.G1) ([]byte, error) {
	raw := p.BytesCompressed()
	out := make([]byte, base64.StdEncoding.EncodedLen(len(raw)))
	base64.StdEncoding.Encode(out, raw)
	return out, nil
}

func unmarshalText(b []byte, what string) ([]byte, error) {
	if len(b) != base64.StdEncoding.EncodedLen(G1Size) {
		return nil, fmt.Errorf("decode %s: base64 text of %d bytes, want %d: %w",
			what, len(b), base64.StdEncoding.EncodedLen(G1Size), ErrInvalidEncoding)
	}
	raw := make([]byte, G1Size)
	n, err := base64.StdEncoding.Strict().Decode(raw, b)
	if err != nil || n != G1Size {
		return nil, fmt.Errorf("decode %s: invalid base64: %w", what, ErrInvalidEncoding)
	}
	return raw, nil
}
