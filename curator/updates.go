package curator

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// An UpdatesRequest requests the changes for some IDs since a checkpoint
// size the node agent already verified.
type UpdatesRequest struct {
	Since int64 `json:"since"`
	IDs   []ID  `json:"ids"`
}

// An UpdatesResponse is the reply to an UpdatesRequest at the latest checkpoint
// N. Its size depends on log2 N and on the number of changes to the
// requested IDs, never on the number of other entries.
type UpdatesResponse struct {
	Checkpoint     []byte           `json:"checkpoint"`
	Consistency    tlog.TreeProof   `json:"consistency"` // Since → N
	StateEntry     []byte           `json:"state_entry"` // entry N−1
	StateInclusion tlog.RecordProof `json:"state_inclusion"`
	IDs            []IDUpdate       `json:"ids"`
}

// An IDUpdate is the state of one ID at the checkpoint.
type IDUpdate struct {
	ID       ID     `json:"id"`
	MapProof []byte `json:"map_proof"` // under the state entry's map root
	// Entries are the ID's chain, newest first: its current entry, then
	// each predecessor, down to and including the first entry with an
	// index below Since (or the registration). Empty when the ID is absent.
	Entries []IndexedEntry `json:"entries"`

	// The current opening, for registered IDs that are not revoked.
	Block        uint32           `json:"block"`
	BlockVersion uint64           `json:"block_version"`
	BlockDigest  []byte           `json:"block_digest"`
	BlockProof   tlog.RecordProof `json:"block_proof"` // under the state entry's PPDigest
	Opening      []byte           `json:"opening"`
}

// An IndexedEntry is a log entry with its inclusion proof at the checkpoint.
type IndexedEntry struct {
	Index     uint64           `json:"index"`
	Entry     []byte           `json:"entry"`
	Inclusion tlog.RecordProof `json:"inclusion"`
}

// A ForkError is proof that the log showed two inconsistent trees: two
// signed checkpoints and the failed consistency proof between them. Keep it:
// the curator signed both notes, so it cannot deny the fork.
type ForkError struct {
	Old, New []byte // the signed checkpoint notes
	Proof    tlog.TreeProof
}

func (e *ForkError) Error() string {
	return "curator log fork detected: the new checkpoint is inconsistent with the trusted one"
}

// Updates are verified updates for a node agent.
type Updates struct {
	Checkpoint *Checkpoint
	State      *Entry
	IDs        map[ID]*VerifiedID
}

// A VerifiedID is the verified state of one requested ID.
type VerifiedID struct {
	Current *Entry         // nil if the ID is absent
	Index   uint64         // index of Current
	Changes []IndexedEntry // the ID's entries at or after Since, newest first
	Block   uint32
	Version uint64
	Digest  []byte // the block digest, proven under the state entry
	Opening []byte // NOTE: checked only by Scheme-specific verification
}

// VerifyUpdates checks an UpdatesResponse for ids against policy p. trusted
// is the last checkpoint the agent accepted (nil on first use); a response
// inconsistent with it yields a *ForkError.
func VerifyUpdates(resp *UpdatesResponse, p *Policy, trusted *Checkpoint, ids []ID, now time.Time) (*Updates, error) {
	cp, err := p.Open(resp.Checkpoint, now)
	if err != nil {
		return nil, fmt.Errorf("verify updates: %w", err)
	}
	t := cp.Tree
	if trusted != nil {
		old := trusted.Tree
		if t.N < old.N || tlog.CheckTree(resp.Consistency, t.N, t.Hash, old.N, old.Hash) != nil {
			return nil, &ForkError{Old: trusted.Note, New: resp.Checkpoint, Proof: resp.Consistency}
		}
	}
	if t.N < 1 || tlog.CheckRecord(resp.StateInclusion, t.N, t.Hash, t.N-1, tlog.RecordHash(resp.StateEntry)) != nil {
		return nil, errors.New("verify updates: invalid state entry proof")
	}
	st, err := ParseEntry(resp.StateEntry)
	if err != nil || st.Kind != KindState {
		return nil, errors.New("verify updates: entry before the checkpoint is not a state entry")
	}
	var since int64
	if trusted != nil {
		since = trusted.Tree.N
	}
	u := &Updates{Checkpoint: cp, State: st, IDs: map[ID]*VerifiedID{}}
	byID := map[ID]*IDUpdate{}
	for i := range resp.IDs {
		byID[resp.IDs[i].ID] = &resp.IDs[i]
	}
	for _, id := range ids {
		iu, ok := byID[id]
		if !ok {
			return nil, fmt.Errorf("verify updates: ID %v missing from the response", id)
		}
		v, err := verifyIDUpdate(iu, t, st, since)
		if err != nil {
			return nil, fmt.Errorf("verify updates of ID %v: %w", id, err)
		}
		u.IDs[id] = v
	}
	return u, nil
}

func verifyIDUpdate(iu *IDUpdate, t tlog.Tree, st *Entry, since int64) (*VerifiedID, error) {
	mp, err := ParseMapProof(iu.MapProof)
	if err != nil {
		return nil, err
	}
	v := &VerifiedID{}
	if len(iu.Entries) == 0 {
		return v, VerifyMapProof(st.MapRoot, iu.ID, nil, mp)
	}
	var next *Entry
	for k, ie := range iu.Entries {
		if int64(ie.Index) >= t.N-1 {
			return nil, errors.New("entry index beyond the checkpoint")
		}
		leaf := tlog.RecordHash(ie.Entry)
		if err := tlog.CheckRecord(ie.Inclusion, t.N, t.Hash, int64(ie.Index), leaf); err != nil {
			return nil, fmt.Errorf("entry %d: %w", ie.Index, err)
		}
		e, err := ParseEntry(ie.Entry)
		if err != nil || e.ID != iu.ID || !e.IsKey() {
			return nil, fmt.Errorf("entry %d is not a key entry of this ID", ie.Index)
		}
		if k == 0 {
			if err := VerifyMapProof(st.MapRoot, iu.ID, &leaf, mp); err != nil {
				return nil, err
			}
			v.Current, v.Index = e, ie.Index
		} else if next.PrevIndex != ie.Index || next.PrevLeafHash != leaf {
			return nil, fmt.Errorf("entry %d does not continue the hash chain", ie.Index)
		}
		if int64(ie.Index) >= since {
			v.Changes = append(v.Changes, ie)
		}
		next = e
		last := int64(ie.Index) < since || e.PrevIndex == NoPrev
		if last != (k == len(iu.Entries)-1) {
			return nil, errors.New("hash chain incomplete or too long")
		}
	}
	if v.Current.Kind == KindRevocation {
		return v, nil
	}
	if iu.Block != v.Current.Block || iu.Block >= st.NumBlocks {
		return nil, fmt.Errorf("opening for block %d, entry names block %d", iu.Block, v.Current.Block)
	}
	rec := BlockRecord(iu.Block, iu.BlockVersion, iu.BlockDigest)
	if tlog.CheckRecord(iu.BlockProof, int64(st.NumBlocks), st.PPDigest, int64(iu.Block), tlog.RecordHash(rec)) != nil {
		return nil, errors.New("invalid block digest proof")
	}
	v.Block, v.Version, v.Digest, v.Opening = iu.Block, iu.BlockVersion, iu.BlockDigest, iu.Opening
	return v, nil
}

// EqualEntries reports whether two encoded entries are the same.
func EqualEntries(a, b []byte) bool { return bytes.Equal(a, b) }
