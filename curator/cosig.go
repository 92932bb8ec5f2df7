package curator

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// algCosignatureV1 is the C2SP signed-note signature type of a timestamped
// Ed25519 cosignature (C2SP tlog-cosignature).
const algCosignatureV1 = 0x04

// golang.org/x/mod/sumdb/note implements only type 0x01 Ed25519 keys. The
// cosignature/v1 signer and verifier below implement the Signer and
// Verifier interfaces of that package, so note.Sign and note.Open handle
// witness cosignatures alongside the log signature.

func cosigKeyHash(name string, pub ed25519.PublicKey) uint32 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte{'\n', algCosignatureV1})
	h.Write(pub)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// cosignedMessage returns the message a cosignature/v1 signs.
func cosignedMessage(t uint64, msg []byte) []byte {
	return append([]byte("cosignature/v1\ntime "+strconv.FormatUint(t, 10)+"\n"), msg...)
}

// A CosignatureSigner produces C2SP cosignature/v1 signatures.
type CosignatureSigner struct {
	name string
	key  ed25519.PrivateKey
	hash uint32
	// Now returns the cosignature time; nil means time.Now.
	Now func() time.Time
}

// NewCosignatureSigner returns a signer named name.
func NewCosignatureSigner(name string, key ed25519.PrivateKey) *CosignatureSigner {
	return &CosignatureSigner{name: name, key: key, hash: cosigKeyHash(name, key.Public().(ed25519.PublicKey))}
}

func (s *CosignatureSigner) Name() string    { return s.name }
func (s *CosignatureSigner) KeyHash() uint32 { return s.hash }

// Sign returns the 8-byte big-endian timestamp followed by the Ed25519
// signature over the cosigned message.
func (s *CosignatureSigner) Sign(msg []byte) ([]byte, error) {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	t := uint64(now().Unix())
	sig := ed25519.Sign(s.key, cosignedMessage(t, msg))
	return append(binary.BigEndian.AppendUint64(nil, t), sig...), nil
}

// VerifierKey returns the witness's public key in the vkey text form
// "<name>+<hash>+<base64(0x04 ‖ key)>".
func (s *CosignatureSigner) VerifierKey() string {
	return CosignatureVerifierKey(s.name, s.key.Public().(ed25519.PublicKey))
}

// CosignatureVerifierKey formats a witness public key as a vkey.
func CosignatureVerifierKey(name string, pub ed25519.PublicKey) string {
	return fmt.Sprintf("%s+%08x+%s", name, cosigKeyHash(name, pub),
		base64.StdEncoding.EncodeToString(append([]byte{algCosignatureV1}, pub...)))
}

// A CosignatureVerifier checks C2SP cosignature/v1 signatures.
type CosignatureVerifier struct {
	name string
	pub  ed25519.PublicKey
	hash uint32
}

// NewCosignatureVerifier parses a vkey produced by CosignatureVerifierKey.
func NewCosignatureVerifier(vkey string) (*CosignatureVerifier, error) {
	name, rest, ok1 := strings.Cut(vkey, "+")
	hash16, key64, ok2 := strings.Cut(rest, "+")
	key, err := DecodeBase64(key64)
	h, err1 := strconv.ParseUint(hash16, 16, 32)
	if !ok1 || !ok2 || err != nil || err1 != nil || len(key) != 1+ed25519.PublicKeySize || key[0] != algCosignatureV1 {
		return nil, fmt.Errorf("invalid witness key %q: want name+hash+base64(0x04 ‖ Ed25519 key)", vkey)
	}
	v := &CosignatureVerifier{name: name, pub: ed25519.PublicKey(key[1:])}
	v.hash = cosigKeyHash(name, v.pub)
	if uint32(h) != v.hash {
		return nil, fmt.Errorf("invalid witness key %q: key hash %08x does not match %08x", vkey, h, v.hash)
	}
	return v, nil
}

func (v *CosignatureVerifier) Name() string    { return v.name }
func (v *CosignatureVerifier) KeyHash() uint32 { return v.hash }

func (v *CosignatureVerifier) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig)
	return ed25519.Verify(v.pub, cosignedMessage(t, msg), sig[8:])
}

// cosignatureTime extracts the timestamp of a verified cosignature line.
func cosignatureTime(s note.Signature) (time.Time, error) {
	b, err := DecodeBase64(s.Base64)
	if err != nil || len(b) != 4+8+ed25519.SignatureSize {
		return time.Time{}, errors.New("malformed cosignature")
	}
	return time.Unix(int64(binary.BigEndian.Uint64(b[4:])), 0), nil
}

// GenerateLogKey returns a new Ed25519 note signing key and its verifier
// key for a log named origin.
func GenerateLogKey(origin string) (skey, vkey string, err error) {
	return note.GenerateKey(nil, origin)
}

// SignRaw signs an application message that is not a note, such as a
// witness's request for token signatures. Such messages start with their
// own context string, so they cannot be mistaken for a cosigned message.
func (s *CosignatureSigner) SignRaw(msg []byte) ([]byte, error) {
	return ed25519.Sign(s.key, msg), nil
}

// VerifyRaw checks a signature made by SignRaw.
func (v *CosignatureVerifier) VerifyRaw(msg, sig []byte) bool {
	return ed25519.Verify(v.pub, msg, sig)
}

// tokenSigAuthMessage is what a witness signs to fetch token signatures.
func tokenSigAuthMessage(start, end int64, unix int64) []byte {
	return fmt.Appendf(nil, "mazu-curator/token-signatures/v1\n%d %d\n%d\n", start, end, unix)
}

// TokenSignatureAuth returns the Mazu-Witness-Auth header value with which
// a witness fetches the token signatures of entries [start, end): the unix
// time and a signature by its cosignature key.
func TokenSignatureAuth(signer *CosignatureSigner, start, end int64, now time.Time) string {
	sig, _ := signer.SignRaw(tokenSigAuthMessage(start, end, now.Unix()))
	return fmt.Sprintf("%d %s", now.Unix(), base64.StdEncoding.EncodeToString(sig))
}

// CheckTokenSignatureAuth reports whether header is a valid
// TokenSignatureAuth value by one of witnesses, made within a minute of now.
func CheckTokenSignatureAuth(witnesses []note.Verifier, header string, start, end int64, now time.Time) bool {
	unix, sig, err := parseTokenSignatureAuth(header)
	if err != nil {
		return false
	}
	if d := now.Sub(time.Unix(unix, 0)); d > time.Minute || d < -time.Minute {
		return false
	}
	msg := tokenSigAuthMessage(start, end, unix)
	for _, w := range witnesses {
		if v, ok := w.(*CosignatureVerifier); ok && v.VerifyRaw(msg, sig) {
			return true
		}
	}
	return false
}

// parseTokenSignatureAuth splits a Mazu-Witness-Auth header value into its
// unix time, in canonical decimal, and its Ed25519 signature, in canonical
// base64.
func parseTokenSignatureAuth(header string) (unix int64, sig []byte, err error) {
	ts, sig64, ok := strings.Cut(header, " ")
	if !ok {
		return 0, nil, errors.New("invalid Mazu-Witness-Auth header: want the unix time and a base64 signature")
	}
	unix, err = strconv.ParseInt(ts, 10, 64)
	if err != nil || strconv.FormatInt(unix, 10) != ts {
		return 0, nil, fmt.Errorf("invalid Mazu-Witness-Auth time %q", ts)
	}
	sig, err = DecodeBase64(sig64)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return 0, nil, fmt.Errorf("invalid Mazu-Witness-Auth signature: want %d bytes in base64", ed25519.SignatureSize)
	}
	return unix, sig, nil
}
