package server

import (
	"fmt"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

// published returns the latest published checkpoint and its tree.
func (l *Log) published() ([]byte, tlog.Tree, error) {
	l.mu.RLock()
	cp, t := l.checkpoint, l.checkpointTree
	l.mu.RUnlock()
	if cp == nil {
		return nil, tlog.Tree{}, fmt.Errorf("no checkpoint published yet")
	}
	return cp, t, nil
}

// Bundle returns the proof bundle of id at the latest published checkpoint.
func (l *Log) Bundle(id curator.ID) ([]byte, error) {
	cp, t, err := l.published()
	if err != nil {
		return nil, err
	}
	// The map proof must come from the state at t, but the state may have
	// moved on. Replay is avoided by proving from the state entry at t.N−1
	// only when no later batch touched id; otherwise the caller retries at
	// the next checkpoint.
	l.mu.RLock()
	cur, ok := l.state.Lookup(id)
	atTree := l.tree == t
	var mp *curator.MapProof
	if ok && atTree {
		mp = l.state.ProveID(id)
	}
	l.mu.RUnlock()
	switch {
	case !ok:
		return nil, fmt.Errorf("ID %v: %w", id, errNotFound)
	case cur.Kind == curator.KindRevocation:
		return nil, fmt.Errorf("ID %v is revoked: %w", id, errNotFound)
	case int64(cur.Index) >= t.N:
		return nil, fmt.Errorf("ID %v is not yet in a published checkpoint: %w", id, errNotFound)
	case mp == nil:
		return nil, fmt.Errorf("checkpoint changing, retry: %w", errUnavailable)
	}
	b, err := l.bundleAt(cp, t, cur.Index, mp)
	if err != nil {
		return nil, err
	}
	return b.Marshal()
}

func (l *Log) bundleAt(cp []byte, t tlog.Tree, index uint64, mp *curator.MapProof) (*curator.Bundle, error) {
	s := l.cfg.Store
	entry, err := s.Entry(int64(index))
	if err != nil {
		return nil, err
	}
	incl, err := tlog.ProveRecord(t.N, int64(index), s)
	if err != nil {
		return nil, fmt.Errorf("prove entry %d: %w", index, err)
	}
	st, err := s.Entry(t.N - 1)
	if err != nil {
		return nil, err
	}
	sincl, err := tlog.ProveRecord(t.N, t.N-1, s)
	if err != nil {
		return nil, fmt.Errorf("prove state entry %d: %w", t.N-1, err)
	}
	return &curator.Bundle{Checkpoint: cp, Index: index, Entry: entry, Inclusion: incl,
		StateEntry: st, StateInclusion: sincl, MapProof: mp}, nil
}

// MaxUpdateIDs bounds the IDs of one updates request.
const MaxUpdateIDs = 1024

// Updates serves a node agent's query at the latest published checkpoint.
// Its cost is O(len(IDs) · (log N + changes)).
func (l *Log) Updates(req *curator.UpdatesRequest) (*curator.UpdatesResponse, error) {
	if len(req.IDs) > MaxUpdateIDs {
		return nil, fmt.Errorf("%d IDs in one request, the maximum is %d: %w", len(req.IDs), MaxUpdateIDs, errBadRequest)
	}
	cp, t, err := l.published()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errUnavailable, err)
	}
	if req.Since < 0 || req.Since > t.N {
		return nil, fmt.Errorf("since %d outside [0, %d]: %w", req.Since, t.N, errBadRequest)
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.tree != t {
		return nil, fmt.Errorf("checkpoint changing, retry: %w", errUnavailable)
	}
	s := l.cfg.Store
	resp := &curator.UpdatesResponse{Checkpoint: cp}
	if req.Since > 0 && req.Since < t.N {
		if resp.Consistency, err = tlog.ProveTree(t.N, req.Since, s); err != nil {
			return nil, fmt.Errorf("prove consistency: %w", err)
		}
	}
	if resp.StateEntry, err = s.Entry(t.N - 1); err != nil {
		return nil, err
	}
	if resp.StateInclusion, err = tlog.ProveRecord(t.N, t.N-1, s); err != nil {
		return nil, err
	}
	for _, id := range req.IDs {
		iu, err := l.idUpdateLocked(id, req.Since, t)
		if err != nil {
			return nil, fmt.Errorf("updates of ID %v: %w", id, err)
		}
		resp.IDs = append(resp.IDs, *iu)
	}
	return resp, nil
}

func (l *Log) idUpdateLocked(id curator.ID, since int64, t tlog.Tree) (*curator.IDUpdate, error) {
	s := l.cfg.Store
	iu := &curator.IDUpdate{ID: id, MapProof: l.state.ProveID(id).Marshal()}
	cur, ok := l.state.Lookup(id)
	if !ok {
		return iu, nil
	}
	for idx := cur.Index; ; {
		data, err := s.Entry(int64(idx))
		if err != nil {
			return nil, err
		}
		incl, err := tlog.ProveRecord(t.N, int64(idx), s)
		if err != nil {
			return nil, err
		}
		iu.Entries = append(iu.Entries, curator.IndexedEntry{Index: idx, Entry: data, Inclusion: incl})
		e, err := curator.ParseEntry(data)
		if err != nil {
			return nil, err
		}
		if int64(idx) < since || e.PrevIndex == curator.NoPrev {
			break
		}
		idx = e.PrevIndex
	}
	if cur.Kind == curator.KindRevocation {
		return iu, nil
	}
	b := l.state.Block(cur.Block)
	op, err := b.Opening(int(cur.Slot))
	if err != nil {
		return nil, fmt.Errorf("opening of block %d slot %d: %w", cur.Block, cur.Slot, err)
	}
	bp, err := l.state.ProveBlock(cur.Block)
	if err != nil {
		return nil, err
	}
	iu.Block, iu.BlockVersion, iu.BlockDigest, iu.BlockProof, iu.Opening = cur.Block, b.Version(), b.Digest(), bp, op
	return iu, nil
}
