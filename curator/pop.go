package curator

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
)

const popContext = "mazu-curator/pop/v1\x00"

// PoPMessage returns the message a workload signs with its TLS key to prove
// possession of the keys in a key entry. It binds the kind, the ID, the
// entry it replaces, both keys and the pod IP, so a signature cannot be
// replayed for another entry. The same message, signed with the previous
// TLS key, is the OldKeySig of a rotation or revocation.
func PoPMessage(e *Entry) []byte {
	var w builder
	w.raw([]byte(popContext))
	w.u8(uint8(e.Kind))
	w.raw(e.ID[:])
	w.u64(e.PrevIndex)
	h := sha256.New()
	h.Write(e.RBEKey)
	h.Write(e.RBEHelpers)
	w.raw(h.Sum(nil))
	tk := sha256.Sum256(e.TLSKey)
	w.raw(tk[:])
	w.opaque8(e.PodIP)
	return w.b
}

var errBadSignature = errors.New("invalid signature")

// SignPoP signs msg with a TLS private key (Ed25519 or ECDSA).
func SignPoP(key crypto.Signer, msg []byte) ([]byte, error) {
	switch key.Public().(type) {
	case ed25519.PublicKey:
		return key.Sign(rand.Reader, msg, crypto.Hash(0))
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		return key.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	return nil, fmt.Errorf("sign proof of possession: unsupported key type %T, use Ed25519 or ECDSA", key.Public())
}

// VerifyPoP checks sig over msg with a PKIX DER public key. Ed25519 and
// ECDSA with SHA-256 are accepted.
func VerifyPoP(pkix []byte, msg, sig []byte) error {
	pub, err := x509.ParsePKIXPublicKey(pkix)
	if err != nil {
		return fmt.Errorf("parse TLS public key: %w", err)
	}
	switch pub := pub.(type) {
	case ed25519.PublicKey:
		if !ed25519.Verify(pub, msg, sig) {
			return errBadSignature
		}
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			return errBadSignature
		}
	default:
		return fmt.Errorf("unsupported TLS key type %T, use Ed25519 or ECDSA", pub)
	}
	return nil
}
