package curator

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// A Bundle is the compact proof a peer staples to its TLS handshake: "this
// ID's current entry is entry Index, with these keys, as of checkpoint N".
// The map proof under the state entry at N−1 shows that no later entry for
// the ID exists, so a bundle goes stale as soon as the ID is rotated,
// revoked or re-registered.
//
// Binary encoding (TLS presentation language, all integers big-endian):
//
//	opaque magic[4] = "MZB1"
//	opaque checkpoint<1..2^16-1>   signed and cosigned note
//	uint64 index
//	opaque entry<1..2^16-1>
//	uint8  n; opaque inclusion[n][32]   entry in the checkpoint's tree
//	opaque state_entry<1..2^16-1>       the entry at size−1
//	uint8  m; opaque state_inclusion[m][32]
//	map_proof                           see MapProof.Marshal
type Bundle struct {
	Checkpoint     []byte
	Index          uint64
	Entry          []byte
	Inclusion      tlog.RecordProof
	StateEntry     []byte
	StateInclusion tlog.RecordProof
	MapProof       *MapProof
}

const bundleMagic = "MZB1"

// Marshal encodes b.
func (b *Bundle) Marshal() ([]byte, error) {
	var w builder
	w.raw([]byte(bundleMagic))
	for _, f := range [][]byte{b.Checkpoint, b.Entry, b.StateEntry} {
		if len(f) > 0xffff {
			return nil, fmt.Errorf("marshal bundle: field of %d bytes exceeds 65535", len(f))
		}
	}
	w.opaque16(b.Checkpoint)
	w.u64(b.Index)
	w.opaque16(b.Entry)
	writeProof(&w, b.Inclusion)
	w.opaque16(b.StateEntry)
	writeProof(&w, b.StateInclusion)
	w.raw(b.MapProof.Marshal())
	return w.b, nil
}

func writeProof(w *builder, p tlog.RecordProof) {
	w.u8(uint8(len(p)))
	for _, h := range p {
		w.raw(h[:])
	}
}

func readProof(p *parser) tlog.RecordProof {
	n := int(p.u8())
	if n > 64 {
		p.err = errMalformed
		return nil
	}
	out := make(tlog.RecordProof, n)
	for i := range out {
		out[i] = p.hash()
	}
	return out
}

// ParseBundle decodes a bundle written by Bundle.Marshal.
func ParseBundle(data []byte) (*Bundle, error) {
	p := parser{b: data}
	if string(p.take(4)) != bundleMagic {
		return nil, errMalformed
	}
	b := &Bundle{}
	b.Checkpoint = p.opaque16()
	b.Index = p.u64()
	b.Entry = p.opaque16()
	b.Inclusion = readProof(&p)
	b.StateEntry = p.opaque16()
	b.StateInclusion = readProof(&p)
	if p.err != nil {
		return nil, p.err
	}
	mp, err := parseMapProof(&p)
	if err != nil {
		return nil, err
	}
	b.MapProof = mp
	if err := p.done(); err != nil {
		return nil, err
	}
	return b, nil
}

// A Registration is what a verified bundle proves about an ID.
type Registration struct {
	ID         ID
	Index      uint64 // the ID's current entry
	Kind       Kind   // registration or rotation
	Block      uint32
	Slot       uint32
	RBEKey     []byte
	TLSKeyHash [32]byte
	PodIP      netip.Addr
	Tree       tlog.Tree   // the checkpoint the proof holds at
	Checkpoint *Checkpoint // nil when verified against a trusted tree
}

var errBundle = errors.New("invalid proof bundle")

// VerifyBundle checks a proof bundle for expectedID: the checkpoint under
// policy p at time now (log signature, witness quorum, freshness), both
// inclusion proofs, and the map proof that the bundle's entry is the ID's
// current entry. The caller must still compare the result's TLSKeyHash
// with the key the peer used in the handshake, and should compare
// Checkpoint with its node agent's checkpoint (see VerifyBundleTree) to
// detect a split view.
//
// Errors about the bundle's contents are deliberately uniform; checkpoint
// errors wrap ErrQuorum or ErrStale where they apply.
func VerifyBundle(bundle []byte, p *Policy, expectedID ID, now time.Time) (*Registration, error) {
	b, err := ParseBundle(bundle)
	if err != nil {
		return nil, fmt.Errorf("verify bundle: %w", errBundle)
	}
	cp, err := p.Open(b.Checkpoint, now)
	if err != nil {
		return nil, fmt.Errorf("verify bundle: %w", err)
	}
	r, err := b.verify(cp.Tree, expectedID)
	if err != nil {
		return nil, err
	}
	r.Checkpoint = cp
	return r, nil
}

// VerifyBundleTree checks a bundle against a tree the caller already
// trusts, such as its node agent's latest cosigned checkpoint, and skips
// all signature checks. The bundle's checkpoint must have the same size; a
// caller holding a different size verifies with VerifyBundle and checks
// consistency between the two trees.
func VerifyBundleTree(bundle []byte, trusted tlog.Tree, expectedID ID) (*Registration, error) {
	b, err := ParseBundle(bundle)
	if err != nil {
		return nil, fmt.Errorf("verify bundle: %w", errBundle)
	}
	return b.verify(trusted, expectedID)
}

func (b *Bundle) verify(t tlog.Tree, id ID) (*Registration, error) {
	fail := func() (*Registration, error) { return nil, fmt.Errorf("verify bundle: %w", errBundle) }
	if t.N < 1 || b.Index >= uint64(t.N-1) {
		return fail()
	}
	leaf := tlog.RecordHash(b.Entry)
	if tlog.CheckRecord(b.Inclusion, t.N, t.Hash, int64(b.Index), leaf) != nil {
		return fail()
	}
	if tlog.CheckRecord(b.StateInclusion, t.N, t.Hash, t.N-1, tlog.RecordHash(b.StateEntry)) != nil {
		return fail()
	}
	e, err := ParseEntry(b.Entry)
	if err != nil || e.ID != id || (e.Kind != KindRegistration && e.Kind != KindRotation) {
		return fail()
	}
	st, err := ParseEntry(b.StateEntry)
	if err != nil || st.Kind != KindState {
		return fail()
	}
	if VerifyMapProof(st.MapRoot, id, &leaf, b.MapProof) != nil {
		return fail()
	}
	return &Registration{ID: id, Index: b.Index, Kind: e.Kind, Block: e.Block, Slot: e.Slot,
		RBEKey: e.RBEKey, TLSKeyHash: e.TLSKeyHash(), PodIP: e.Addr(), Tree: t}, nil
}
