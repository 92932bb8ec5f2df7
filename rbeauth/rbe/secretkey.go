package rbe

import (
	"crypto"
	_ "crypto/sha256" // registers SHA-256 for the expander
	"encoding/binary"
	"fmt"
	"io"

	"github.com/cloudflare/circl/ecc/bls12381"
	"github.com/cloudflare/circl/expander"
)

// Domain-separation tags for hashing to scalars (RFC 9380, section 3.1).
// Each use has its own tag, so an output for one use is never valid for
// another.
const (
	dstSecretKey = "MAZU-ZTUNNEL-RBE-V1-SECRET-KEY_XMD:SHA-256"
	dstCeremony  = "MAZU-ZTUNNEL-RBE-V1-CEREMONY-POK_XMD:SHA-256"
)

// SecretKey is a registrant's secret scalar sk ∈ [1, q−1]. Its String method
// does not print the value, so that it cannot leak into a log by accident.
type SecretKey struct{ s bls12381.Scalar }

// NewSecretKey draws a uniformly random nonzero secret key from rand.
func NewSecretKey(rand io.Reader) (*SecretKey, error) {
	s, err := randomNonzeroScalar(rand)
	if err != nil {
		return nil, fmt.Errorf("generate secret key: %w", err)
	}
	return &SecretKey{s: *s}, nil
}

// DeriveSecretKey derives a secret key deterministically from a workload's
// service-account token, pod IP and TLS public key.
//
// Each input is prefixed with its length as a 4-byte big-endian integer, so
// that no two input triples give the same message. The message is hashed to a
// scalar with expand_message_xmd (RFC 9380, section 5.3.1) over SHA-256 with
// the tag "MAZU-ZTUNNEL-RBE-V1-SECRET-KEY_XMD:SHA-256". 64 output bytes are
// reduced mod q, which leaves a bias below 2^-256.
//
// NOTE: the key is only as secret as the most secret input. The pod IP and the
// TLS public key are public, so the token must stay unknown to every party
// that must not decrypt: whoever can present the same token can derive sk.
func DeriveSecretKey(token, podIP, tlsPublicKey []byte) (*SecretKey, error) {
	if len(token) == 0 {
		return nil, fmt.Errorf("derive secret key: token is empty, pass the workload's token: %w", ErrMissingInput)
	}
	msg := make([]byte, 0, 12+len(token)+len(podIP)+len(tlsPublicKey))
	for _, field := range [][]byte{token, podIP, tlsPublicKey} {
		msg = binary.BigEndian.AppendUint32(msg, uint32(len(field)))
		msg = append(msg, field...)
	}
	s := hashToScalar([]byte(dstSecretKey), msg)
	clear(msg)
	if s.IsZero() == 1 {
		return nil, fmt.Errorf("derive secret key: %w", ErrZeroScalar)
	}
	return &SecretKey{s: *s}, nil
}

// HashToScalar hashes msg to a scalar mod q with expand_message_xmd over
// SHA-256 and the domain-separation tag dst (RFC 9380, sections 5.2 and
// 5.3.1, with L = 64). The result may be zero; callers that need a nonzero
// scalar must check.
func HashToScalar(dst, msg []byte) *bls12381.Scalar { return hashToScalar(dst, msg) }

func hashToScalar(dst, msg []byte) *bls12381.Scalar {
	uniform := expander.NewExpanderMD(crypto.SHA256, dst).Expand(msg, 64)
	s := new(bls12381.Scalar)
	s.SetBytes(uniform)
	clear(uniform)
	return s
}

// randomNonzeroScalar draws a uniform scalar in [1, q−1].
func randomNonzeroScalar(rand io.Reader) (*bls12381.Scalar, error) {
	s := new(bls12381.Scalar)
	for range 8 {
		if err := s.Random(rand); err != nil {
			return nil, fmt.Errorf("read random scalar: %w", err)
		}
		if s.IsZero() == 0 {
			return s, nil
		}
	}
	// Eight zeros in a row mean the reader is broken, not unlucky.
	return nil, fmt.Errorf("read random scalar: %w", ErrZeroScalar)
}

// randomShortScalars draws count scalars of 128 bits for random linear
// combinations, as 16-byte big-endian strings. Nonzero values are enough: a
// forgery passes a combination with probability at most 2^-127.
func randomShortScalars(rand io.Reader, count int) ([][]byte, error) {
	buf := make([]byte, 16*count)
	if _, err := io.ReadFull(rand, buf); err != nil {
		return nil, fmt.Errorf("read random coefficients: %w", err)
	}
	out := make([][]byte, count)
	for i := range out {
		out[i] = buf[16*i : 16*i+16]
		out[i][0] |= 0x80 // full 128 bits, never zero
	}
	return out, nil
}

// Scalar returns a copy of the secret scalar.
func (k *SecretKey) Scalar() *bls12381.Scalar { s := k.s; return &s }

// MarshalBinary returns the 32-byte big-endian scalar.
func (k *SecretKey) MarshalBinary() ([]byte, error) { return k.s.MarshalBinary() }

// UnmarshalBinary parses a 32-byte big-endian scalar in [1, q−1].
func (k *SecretKey) UnmarshalBinary(b []byte) error {
	if len(b) != ScalarSize {
		return fmt.Errorf("decode secret key of %d bytes, want %d: %w", len(b), ScalarSize, ErrInvalidEncoding)
	}
	var s bls12381.Scalar
	if err := s.UnmarshalBinary(b); err != nil {
		return fmt.Errorf("decode secret key: scalar not below the group order: %w", ErrInvalidEncoding)
	}
	if s.IsZero() == 1 {
		return fmt.Errorf("decode secret key: %w", ErrZeroScalar)
	}
	k.s = s
	return nil
}

// String returns a fixed placeholder, never the key.
func (k *SecretKey) String() string { return "rbe.SecretKey(redacted)" }

// GoString returns a fixed placeholder, never the key.
func (k *SecretKey) GoString() string { return k.String() }

// NewSecretKeyFromScalar returns s as a secret key. It fails for zero.
func NewSecretKeyFromScalar(s *bls12381.Scalar) (*SecretKey, error) {
	if s.IsZero() == 1 {
		return nil, fmt.Errorf("new secret key: %w", ErrZeroScalar)
	}
	return &SecretKey{s: *s}, nil
}
