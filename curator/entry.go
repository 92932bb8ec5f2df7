package curator

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"

	"golang.org/x/mod/sumdb/tlog"
)

// A Kind is the type of a log entry.
type Kind uint8

const (
	KindRegistration Kind = 1 // a new ID takes a slot
	KindRotation     Kind = 2 // an ID replaces its RBE and TLS keys
	KindRevocation   Kind = 3 // an ID gives up its slot
	KindState        Kind = 4 // the state after a batch; ends every batch
	KindCeremony     Kind = 5 // a contribution to the RBE CRS ceremony
)

func (k Kind) String() string {
	switch k {
	case KindRegistration:
		return "registration"
	case KindRotation:
		return "rotation"
	case KindRevocation:
		return "revocation"
	case KindState:
		return "state"
	case KindCeremony:
		return "ceremony"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// An ID names a workload registration: the SHA-256 hash of the pod-bound
// service-account token the workload registered with. A token refresh
// therefore yields a new ID, and one token can register at most once.
type ID [32]byte

// IDFromToken returns the ID of a compact JWS token.
func IDFromToken(token string) ID { return sha256.Sum256([]byte(token)) }

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// ParseID parses the hex form returned by ID.String.
func ParseID(s string) (ID, error) {
	var id ID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("invalid ID %q: want 64 hex digits", s)
	}
	copy(id[:], b)
	return id, nil
}

// NoPrev is the PrevIndex of a registration, which has no predecessor.
const NoPrev = ^uint64(0)

// MaxEntrySize is the largest encoded entry: C2SP tlog-tiles entry bundles
// prefix each entry with a uint16 length.
const MaxEntrySize = 65535

const entryVersion = 1

// An Entry is one record of the log.
//
// Key entries (registration, rotation, revocation) form a hash chain per ID
// through PrevIndex and PrevLeafHash. A state entry ends every batch and
// commits to the map of IDs and to the RBE block digests after the batch, so
// both are deterministic functions of the log that witnesses recompute.
//
// The log never contains a bearer-usable token. A registration logs the JWS
// signing input (header and payload, which hold only non-secret claims) and
// the ID, which is the hash of the whole token. The signature, which turns
// the signing input into a bearer token, goes only to witnesses through an
// authenticated side channel (see TokenSignatureRequest). A witness checks
// it against the issuer's JWKS and checks that it hashes, with the logged
// signing input, to the ID, so the curator cannot substitute another token.
type Entry struct {
	Kind        Kind
	TimestampMS uint64 // curator clock, never decreasing

	// Key entries.
	ID           ID
	PrevIndex    uint64    // index of the ID's current entry, NoPrev for a registration
	PrevLeafHash tlog.Hash // leaf hash of that entry, zero for a registration
	Block        uint32    // RBE block, 0-based
	Slot         uint32    // RBE slot in the block, 1-based
	RBEKey       []byte    // RBE public key, empty for a revocation
	RBEHelpers   []byte    // the n−1 helper values, concatenated
	TLSKey       []byte    // PKIX DER of the workload's TLS public key
	PodIP        []byte    // 4 or 16 bytes
	TokenClaims  []byte    // JWS signing input: base64url header "." base64url payload
	PoPSig       []byte    // signature by TLSKey over PoPMessage
	OldKeySig    []byte    // rotation and revocation: signature by the previous TLSKey

	// State entries.
	Epoch      uint64    // batch number, starting at 1
	FirstIndex uint64    // index of the first entry of this batch
	NumBlocks  uint32    // number of RBE blocks, the size of the PPDigest tree
	MapRoot    tlog.Hash // root of the ID map after this batch
	PPDigest   tlog.Hash // root of the tree of RBE block digests after this batch

	// Ceremony entries.
	Ceremony []byte // one contribution, in the RBE package's encoding
}

// IsKey reports whether e is a registration, rotation or revocation.
func (e *Entry) IsKey() bool {
	return e.Kind == KindRegistration || e.Kind == KindRotation || e.Kind == KindRevocation
}

// TLSKeyHash returns the SHA-256 hash of the entry's TLS public key.
func (e *Entry) TLSKeyHash() [32]byte { return sha256.Sum256(e.TLSKey) }

// Addr returns the pod IP.
func (e *Entry) Addr() netip.Addr {
	a, _ := netip.AddrFromSlice(e.PodIP)
	return a
}

// Marshal encodes e canonically in TLS presentation language.
func (e *Entry) Marshal() ([]byte, error) {
	var w builder
	w.u8(entryVersion)
	w.u8(uint8(e.Kind))
	w.u64(e.TimestampMS)
	switch e.Kind {
	case KindRegistration, KindRotation, KindRevocation:
		if len(e.PodIP) != 4 && len(e.PodIP) != 16 {
			return nil, fmt.Errorf("marshal entry: pod IP has %d bytes, want 4 or 16", len(e.PodIP))
		}
		for _, f := range [][]byte{e.RBEKey, e.RBEHelpers, e.TLSKey, e.TokenClaims, e.PoPSig, e.OldKeySig} {
			if len(f) > 0xffff {
				return nil, fmt.Errorf("marshal entry: field of %d bytes exceeds 65535", len(f))
			}
		}
		w.raw(e.ID[:])
		w.u64(e.PrevIndex)
		w.raw(e.PrevLeafHash[:])
		w.u32(e.Block)
		w.u32(e.Slot)
		w.opaque16(e.RBEKey)
		w.opaque16(e.RBEHelpers)
		w.opaque16(e.TLSKey)
		w.opaque8(e.PodIP)
		w.opaque16(e.TokenClaims)
		w.opaque16(e.PoPSig)
		w.opaque16(e.OldKeySig)
	case KindState:
		w.u64(e.Epoch)
		w.u64(e.FirstIndex)
		w.u32(e.NumBlocks)
		w.raw(e.MapRoot[:])
		w.raw(e.PPDigest[:])
	case KindCeremony:
		if len(e.Ceremony) > 0xffff {
			return nil, fmt.Errorf("marshal entry: ceremony contribution of %d bytes exceeds 65535", len(e.Ceremony))
		}
		w.opaque16(e.Ceremony)
	default:
		return nil, fmt.Errorf("marshal entry: unknown kind %d", e.Kind)
	}
	if len(w.b) > MaxEntrySize {
		return nil, fmt.Errorf("marshal entry: %d bytes exceeds the limit of %d", len(w.b), MaxEntrySize)
	}
	return w.b, nil
}

// ParseEntry decodes an entry written by Marshal. It rejects any other
// encoding, so an entry has exactly one leaf hash.
func ParseEntry(b []byte) (*Entry, error) {
	if len(b) > MaxEntrySize {
		return nil, errMalformed
	}
	p := parser{b: b}
	if p.u8() != entryVersion {
		return nil, errMalformed
	}
	e := &Entry{Kind: Kind(p.u8()), TimestampMS: p.u64()}
	switch e.Kind {
	case KindRegistration, KindRotation, KindRevocation:
		e.ID = p.hash()
		e.PrevIndex = p.u64()
		e.PrevLeafHash = p.hash()
		e.Block = p.u32()
		e.Slot = p.u32()
		e.RBEKey = p.opaque16()
		e.RBEHelpers = p.opaque16()
		e.TLSKey = p.opaque16()
		e.PodIP = p.opaque8()
		e.TokenClaims = p.opaque16()
		e.PoPSig = p.opaque16()
		e.OldKeySig = p.opaque16()
		if p.err == nil && len(e.PodIP) != 4 && len(e.PodIP) != 16 {
			return nil, errMalformed
		}
	case KindState:
		e.Epoch = p.u64()
		e.FirstIndex = p.u64()
		e.NumBlocks = p.u32()
		e.MapRoot = p.hash()
		e.PPDigest = p.hash()
	case KindCeremony:
		e.Ceremony = p.opaque16()
	default:
		return nil, errMalformed
	}
	if err := p.done(); err != nil {
		return nil, err
	}
	return e, nil
}

// MarshalText encodes id in hex, for JSON.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText decodes the hex form.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	*id = v
	return err
}
