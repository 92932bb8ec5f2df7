package curator

import (
	"bytes"
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/tlog"
)

// An IDState is the current entry of one ID.
type IDState struct {
	Index    uint64
	LeafHash tlog.Hash
	Kind     Kind
	Block    uint32
	Slot     uint32
	TLSKey   []byte
}

// A RuleError is a log entry that breaks the curator rules. Witnesses
// refuse to cosign a checkpoint that contains one, and auditors report it.
type RuleError struct {
	Index uint64
	Kind  Kind
	ID    ID
	Err   error
}

func (e *RuleError) Error() string {
	if e.Kind == KindState || e.Kind == KindCeremony {
		return fmt.Sprintf("entry %d (%v): %v", e.Index, e.Kind, e.Err)
	}
	return fmt.Sprintf("entry %d (%v of ID %v): %v", e.Index, e.Kind, e.ID, e.Err)
}

func (e *RuleError) Unwrap() error { return e.Err }

// ErrReRegistration is the rule error of a registration for an ID that is
// already registered.
var ErrReRegistration = errors.New("ID is already registered")

// StateConfig holds the rule parameters shared by curator and witnesses.
type StateConfig struct {
	Scheme   Scheme
	Audience string // token audience; empty means DefaultAudience
	// CheckTokenSignature, if set, verifies the signature of a
	// registration's token. Witnesses set it; the curator relies on the
	// Kubernetes TokenReview before sequencing instead.
	CheckTokenSignature func(index uint64, e *Entry) error
	// SkipKeyCheck skips the RBE helper check, the dominant cost. The
	// curator sets it, because it checks each key before sequencing, and a
	// witness sets it for the entries it verified before a restart.
	SkipKeyCheck bool
}

// A State replays the log under the curator rules (version 1) and keeps
// what the rules need: the current entry of each ID, the ID map and the RBE
// blocks. The curator, witnesses and auditors all use it, so they compute
// the same state entries. It is not safe for concurrent use.
type State struct {
	cfg        StateConfig
	size       uint64
	lastMS     uint64
	ids        map[ID]*IDState
	tree       MapTree
	blocks     []Block
	blockLeaf  []tlog.Hash
	ppReader   tlog.HashReaderFunc // stored hashes of blockLeaf; nil when stale
	used       map[uint64]bool     // global slot numbers ever taken
	slotEnd    uint64              // one past the highest global slot taken
	epoch      uint64
	batchStart uint64

	ceremonyCRS []byte    // the CRS after the last ceremony entry
	ceremonyFP  *[32]byte // its fingerprint; nil before any ceremony entry
	// contributions counts the ceremony entries.
	contributions int
}

// NewState returns the state of an empty log.
func NewState(cfg StateConfig) *State {
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	return &State{cfg: cfg, ids: map[ID]*IDState{}, used: map[uint64]bool{}}
}

// SetTokenSignatureCheck replaces StateConfig.CheckTokenSignature.
func (s *State) SetTokenSignatureCheck(f func(index uint64, e *Entry) error) {
	s.cfg.CheckTokenSignature = f
}

// SetSkipKeyCheck replaces StateConfig.SkipKeyCheck for the entries
// applied next. A witness sets it while it replays entries it already
// verified.
func (s *State) SetSkipKeyCheck(skip bool) { s.cfg.SkipKeyCheck = skip }

// SkipRejected counts an entry that the rules rejected, so an auditor can
// go on checking the entries after it. It takes from the entry only what
// the curator's next state entries build on: a key entry becomes its ID's
// leaf in the ID map, and a state entry closes the batch at the epoch it
// names. The IDs' current
// entries, the slots, the blocks and the last timestamp keep only the
// entries the rules accepted. e is nil for a record that does not parse.
func (s *State) SkipRejected(e *Entry, leaf tlog.Hash) {
	s.size++
	if e == nil {
		return
	}
	switch {
	case e.IsKey():
		s.tree.Set(e.ID, leaf)
	case e.Kind == KindState:
		s.epoch = e.Epoch
		s.batchStart = s.size
	}
}

// Contributions returns the number of ceremony entries applied.
func (s *State) Contributions() int { return s.contributions }

// CeremonyCRS returns the CRS encoding after the last ceremony entry, or nil.
func (s *State) CeremonyCRS() []byte { return s.ceremonyCRS }

// NumIDs returns the number of IDs ever registered.
func (s *State) NumIDs() int { return len(s.ids) }

// Size returns the number of entries applied.
func (s *State) Size() uint64 { return s.size }

// Epoch returns the number of state entries applied.
func (s *State) Epoch() uint64 { return s.epoch }

// BatchStart returns the index of the first entry of the open batch.
func (s *State) BatchStart() uint64 { return s.batchStart }

// Lookup returns the current entry of id.
func (s *State) Lookup(id ID) (*IDState, bool) {
	st, ok := s.ids[id]
	return st, ok
}

// MapRoot returns the root of the ID map.
func (s *State) MapRoot() tlog.Hash { return s.tree.Root() }

// ProveID returns the map proof of id at the current state.
func (s *State) ProveID(id ID) *MapProof { return s.tree.Prove(id) }

// MaxBlocks bounds the block number of a registration, so a bad entry
// cannot make a replayer allocate without limit.
const MaxBlocks = 1 << 20

// SlotEnd returns one past the highest global slot number taken. A global
// slot number g is block g/n, slot g%n+1. Slots are never reused after a
// revocation, so capacity counts lifetime registrations.
func (s *State) SlotEnd() uint64 { return s.slotEnd }

// SlotUsed reports whether a slot was ever taken.
func (s *State) SlotUsed(block, slot uint32) bool {
	return s.used[uint64(block)*uint64(s.cfg.Scheme.BlockSize())+uint64(slot)-1]
}

// GlobalSlot splits a global slot number into block and slot.
func (s *State) GlobalSlot(g uint64) (block, slot uint32) {
	n := uint64(s.cfg.Scheme.BlockSize())
	return uint32(g / n), uint32(g%n) + 1
}

// Block returns block k, or nil.
func (s *State) Block(k uint32) Block {
	if int(k) >= len(s.blocks) {
		return nil
	}
	return s.blocks[k]
}

// LastTimestamp returns the timestamp of the last entry.
func (s *State) LastTimestamp() uint64 { return s.lastMS }

// NextState returns the state entry that closes the open batch at time ms.
func (s *State) NextState(ms uint64) *Entry {
	return &Entry{Kind: KindState, TimestampMS: max(ms, s.lastMS), Epoch: s.epoch + 1,
		FirstIndex: s.batchStart, NumBlocks: uint32(len(s.blocks)), MapRoot: s.tree.Root(), PPDigest: s.PPDigest()}
}

// Check reports whether e may be appended next, without changing s.
func (s *State) Check(e *Entry) error {
	return s.apply(e, tlog.Hash{}, false)
}

// Apply checks e under the rules and, if it passes, applies it as entry
// number s.Size(). leaf is tlog.RecordHash of its encoding.
func (s *State) Apply(e *Entry, leaf tlog.Hash) error {
	return s.apply(e, leaf, true)
}

// ApplyRecord parses a log record and applies it.
func (s *State) ApplyRecord(data []byte) (*Entry, error) {
	e, err := ParseEntry(data)
	if err != nil {
		return nil, &RuleError{Index: s.size, Err: fmt.Errorf("parse entry: %w", err)}
	}
	return e, s.Apply(e, tlog.RecordHash(data))
}

func (s *State) apply(e *Entry, leaf tlog.Hash, commit bool) error {
	if err := s.check(e); err != nil {
		return &RuleError{Index: s.size, Kind: e.Kind, ID: e.ID, Err: err}
	}
	if !commit {
		return nil
	}
	if err := s.commit(e, leaf); err != nil {
		// The scheme accepted the key in check, so this is a broken
		// invariant of the Scheme implementation.
		return &RuleError{Index: s.size, Kind: e.Kind, ID: e.ID, Err: err}
	}
	s.size++
	s.lastMS = e.TimestampMS
	return nil
}

func (s *State) check(e *Entry) error {
	if e.TimestampMS < s.lastMS {
		return fmt.Errorf("timestamp %d ms precedes the previous entry's %d ms", e.TimestampMS, s.lastMS)
	}
	switch e.Kind {
	case KindRegistration:
		return s.checkRegistration(e)
	case KindRotation, KindRevocation:
		return s.checkChange(e)
	case KindState:
		switch {
		case e.Epoch != s.epoch+1:
			return fmt.Errorf("epoch %d, want %d", e.Epoch, s.epoch+1)
		case e.FirstIndex != s.batchStart:
			return fmt.Errorf("first index %d, want %d", e.FirstIndex, s.batchStart)
		case int(e.NumBlocks) != len(s.blocks):
			return fmt.Errorf("%d blocks, recomputed %d", e.NumBlocks, len(s.blocks))
		case e.MapRoot != s.tree.Root():
			return fmt.Errorf("map root %v, recomputed %v", e.MapRoot, s.tree.Root())
		case e.PPDigest != s.PPDigest():
			return fmt.Errorf("block digest root %v, recomputed %v", e.PPDigest, s.PPDigest())
		}
		return nil
	case KindCeremony:
		if len(s.used) != 0 {
			return errors.New("ceremony contribution after the first registration")
		}
		cv, ok := s.cfg.Scheme.(CeremonyVerifier)
		if !ok {
			return errors.New("the scheme cannot verify ceremony contributions")
		}
		if _, _, err := cv.VerifyContribution(s.ceremonyCRS, e.Ceremony); err != nil {
			return fmt.Errorf("invalid ceremony contribution: %w", err)
		}
		return nil
	}
	return fmt.Errorf("unknown kind %d", e.Kind)
}

func (s *State) checkRegistration(e *Entry) error {
	if _, ok := s.ids[e.ID]; ok {
		return ErrReRegistration
	}
	switch {
	case e.PrevIndex != NoPrev || e.PrevLeafHash != (tlog.Hash{}):
		return errors.New("registration names a previous entry")
	case s.ceremonyFP != nil && *s.ceremonyFP != s.cfg.Scheme.Fingerprint():
		return fmt.Errorf("the curator's CRS %x is not the ceremony's result %x", s.cfg.Scheme.Fingerprint(), *s.ceremonyFP)
	case e.Slot < 1 || int(e.Slot) > s.cfg.Scheme.BlockSize() || e.Block >= MaxBlocks:
		return fmt.Errorf("block %d slot %d out of range", e.Block, e.Slot)
	case s.SlotUsed(e.Block, e.Slot):
		return fmt.Errorf("block %d slot %d was already taken", e.Block, e.Slot)
	case len(e.OldKeySig) != 0:
		return errors.New("registration carries an old-key signature")
	}
	claims, err := ParseTokenClaims(string(e.TokenClaims))
	if err != nil {
		return err
	}
	if err := claims.CheckClaims(s.cfg.Audience, int64(e.TimestampMS/1000)); err != nil {
		return err
	}
	if s.cfg.CheckTokenSignature != nil {
		if err := s.cfg.CheckTokenSignature(s.size, e); err != nil {
			return fmt.Errorf("check token: %w", err)
		}
	}
	return s.checkKeys(e)
}

func (s *State) checkKeys(e *Entry) error {
	if !s.cfg.SkipKeyCheck {
		if err := s.cfg.Scheme.CheckKey(int(e.Slot), e.RBEKey, e.RBEHelpers); err != nil {
			return fmt.Errorf("check RBE key: %w", err)
		}
	}
	if err := VerifyPoP(e.TLSKey, PoPMessage(e), e.PoPSig); err != nil {
		return fmt.Errorf("check proof of possession: %w", err)
	}
	return nil
}

func (s *State) checkChange(e *Entry) error {
	cur, ok := s.ids[e.ID]
	switch {
	case !ok:
		return fmt.Errorf("%v of an unregistered ID", e.Kind)
	case cur.Kind == KindRevocation:
		return fmt.Errorf("%v of a revoked ID", e.Kind)
	case e.PrevIndex != cur.Index || e.PrevLeafHash != cur.LeafHash:
		return fmt.Errorf("previous entry %d, want the current entry %d", e.PrevIndex, cur.Index)
	case e.Block != cur.Block || e.Slot != cur.Slot:
		return fmt.Errorf("block %d slot %d, want the ID's block %d slot %d", e.Block, e.Slot, cur.Block, cur.Slot)
	case len(e.TokenClaims) != 0:
		return fmt.Errorf("%v carries a token", e.Kind)
	}
	if err := VerifyPoP(cur.TLSKey, PoPMessage(e), e.OldKeySig); err != nil {
		return fmt.Errorf("check old-key signature: %w", err)
	}
	if e.Kind == KindRevocation {
		if len(e.RBEKey) != 0 || len(e.RBEHelpers) != 0 || len(e.PoPSig) != 0 || !bytes.Equal(e.TLSKey, cur.TLSKey) {
			return errors.New("revocation carries new keys")
		}
		return nil
	}
	return s.checkKeys(e)
}

func (s *State) commit(e *Entry, leaf tlog.Hash) error {
	switch e.Kind {
	case KindRegistration:
		for int(e.Block) >= len(s.blocks) {
			s.blocks = append(s.blocks, s.cfg.Scheme.NewBlock())
			s.blockLeaf = append(s.blockLeaf, tlog.Hash{})
		}
		if err := s.blocks[e.Block].Register(int(e.Slot), e.RBEKey, e.RBEHelpers); err != nil {
			return fmt.Errorf("register in block %d: %w", e.Block, err)
		}
		g := uint64(e.Block)*uint64(s.cfg.Scheme.BlockSize()) + uint64(e.Slot) - 1
		s.used[g] = true
		s.slotEnd = max(s.slotEnd, g+1)
	case KindRotation, KindRevocation:
		b := s.blocks[e.Block]
		if err := b.Remove(int(e.Slot)); err != nil {
			return fmt.Errorf("remove from block %d: %w", e.Block, err)
		}
		if e.Kind == KindRotation {
			if err := b.Register(int(e.Slot), e.RBEKey, e.RBEHelpers); err != nil {
				return fmt.Errorf("register in block %d: %w", e.Block, err)
			}
		}
	case KindState:
		s.epoch++
		s.batchStart = s.size + 1
		// Build the block tree now, under the caller's write lock, so
		// readers holding a read lock never build it.
		s.ppHashes()
		return nil
	case KindCeremony:
		next, fp, err := s.cfg.Scheme.(CeremonyVerifier).VerifyContribution(s.ceremonyCRS, e.Ceremony)
		if err != nil {
			return err
		}
		if f, ok := s.cfg.Scheme.(CRSFollower); ok {
			if err := f.SetCRS(next); err != nil {
				return err
			}
		}
		s.ceremonyCRS, s.ceremonyFP = next, &fp
		s.contributions++
		return nil
	default:
		return nil
	}
	// Copy the key: e's fields slice the whole entry encoding, which
	// would otherwise stay in memory for as long as the ID does.
	s.ids[e.ID] = &IDState{Index: s.size, LeafHash: leaf, Kind: e.Kind, Block: e.Block, Slot: e.Slot,
		TLSKey: bytes.Clone(e.TLSKey)}
	s.tree.Set(e.ID, leaf)
	s.blockLeaf[e.Block] = blockLeafHash(e.Block, s.blocks[e.Block])
	s.ppReader = nil
	return nil
}

// blockLeafHash is the leaf of the block-digest tree: the RFC 6962 record
// hash of block number, version and digest.
func blockLeafHash(k uint32, b Block) tlog.Hash {
	var w builder
	w.u32(k)
	w.u64(b.Version())
	w.opaque8(b.Digest())
	return tlog.RecordHash(w.b)
}

// BlockRecord returns the record whose hash is block k's leaf.
func BlockRecord(k uint32, version uint64, digest []byte) []byte {
	var w builder
	w.u32(k)
	w.u64(version)
	w.opaque8(digest)
	return w.b
}

// PPDigest returns the RFC 6962 root over the block leaves: a commitment to
// every block digest and version.
func (s *State) PPDigest() tlog.Hash {
	h, _ := tlog.TreeHash(int64(len(s.blockLeaf)), s.ppHashes())
	return h
}

// ppHashes returns the stored hashes of the block tree, rebuilding them at
// most once per change, so block proofs cost O(log B) between changes.
func (s *State) ppHashes() tlog.HashReaderFunc {
	if s.ppReader == nil {
		r, err := memHashes(s.blockLeaf)
		if err != nil {
			panic("curator: block tree: " + err.Error())
		}
		s.ppReader = r
	}
	return s.ppReader
}

// ProveBlock returns the inclusion proof of block k in PPDigest.
func (s *State) ProveBlock(k uint32) (tlog.RecordProof, error) {
	if int(k) >= len(s.blockLeaf) {
		return nil, fmt.Errorf("block %d not found", k)
	}
	return tlog.ProveRecord(int64(len(s.blockLeaf)), int64(k), s.ppHashes())
}

// NumBlocks returns the number of blocks.
func (s *State) NumBlocks() int { return len(s.blocks) }

// memHashes builds the tlog stored hashes of a list of record hashes.
func memHashes(leaves []tlog.Hash) (tlog.HashReaderFunc, error) {
	var stored []tlog.Hash
	r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			if x < 0 || x >= int64(len(stored)) {
				return nil, fmt.Errorf("stored hash %d not found", x)
			}
			out[i] = stored[x]
		}
		return out, nil
	})
	for i, h := range leaves {
		hs, err := tlog.StoredHashesForRecordHash(int64(i), h, r)
		if err != nil {
			return nil, err
		}
		stored = append(stored, hs...)
	}
	return r, nil
}
