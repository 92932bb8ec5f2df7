// Package raftlog replicates the curator's log with hashicorp/raft, so
// three or five curator replicas keep serving when one fails. The leader's
// sequencer applies each batch through raft; every replica's state machine
// appends the batch to its own bbolt store, so all replicas hold the same
// entries and tree. Raft tolerates crashes only: against a curator that
// lies, the witnesses are the defence.
package raftlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
)

// ErrNotLeader means this replica cannot append; retry at the leader.
var ErrNotLeader = errors.New("not the raft leader")

// An FSM applies replicated batches to a store.
type FSM struct {
	Store *store.Store
}

type applyResult struct {
	tree tlog.Tree
	err  error
}

// Apply implements raft.FSM. A batch the store already holds (raft replays
// its log after a restart, and the store is durable on its own) is
// acknowledged without writing.
func (f *FSM) Apply(l *raft.Log) any {
	b, err := decodeBatch(l.Data)
	if err != nil {
		return applyResult{err: err}
	}
	n, err := f.Store.Size()
	if err != nil {
		return applyResult{err: err}
	}
	end := b.Start + int64(len(b.Entries))
	if n >= end {
		// Only an identical batch counts as already applied; any other
		// batch at a stale start is a conflict the sequencer must see.
		have, err := f.Store.Entries(b.Start, end)
		if err != nil {
			return applyResult{err: err}
		}
		for i := range have {
			if !bytes.Equal(have[i], b.Entries[i]) {
				return applyResult{err: fmt.Errorf("batch at %d, log has %d entries: %w", b.Start, n, store.ErrSizeMismatch)}
			}
		}
		h, err := tlog.TreeHash(end, f.Store)
		return applyResult{tree: tlog.Tree{N: end, Hash: h}, err: err}
	}
	t, err := f.Store.Append(b)
	return applyResult{tree: t, err: err}
}

// Snapshot implements raft.FSM with a consistent copy of the bbolt file.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	tx, err := f.Store.DB().Begin(false)
	if err != nil {
		return nil, err
	}
	return &snapshot{tx: tx}, nil
}

// Restore implements raft.FSM. The log is append-only, so restoring copies
// the entries the snapshot has beyond the local store.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Dir(f.Store.DB().Path()), "restore-*.db")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, rc); err != nil {
		tmp.Close()
		return err
	}
	tmp.Close()
	snap, err := store.Open(tmp.Name())
	if err != nil {
		return fmt.Errorf("open snapshot: %w", err)
	}
	defer snap.Close()
	have, err := f.Store.Size()
	if err != nil {
		return err
	}
	want, err := snap.Size()
	if err != nil {
		return err
	}
	for start := have; start < want; start += 4096 {
		end := min(start+4096, want)
		entries, err := snap.Entries(start, end)
		if err != nil {
			return err
		}
		sigs, err := snap.TokenSigs(start, end)
		if err != nil {
			return err
		}
		if _, err := f.Store.Append(&store.Batch{Start: start, Entries: entries, TokenSigs: sigs}); err != nil {
			return fmt.Errorf("restore entries [%d, %d): %w", start, end, err)
		}
	}
	return nil
}

type snapshot struct{ tx *bolt.Tx }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.tx.WriteTo(sink); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *snapshot) Release() { s.tx.Rollback() }

// Batch encoding: start (uint64), count (uint32), then per entry a uint32
// length and the entry, a uint32 length and the token signature.
func encodeBatch(b *store.Batch) []byte {
	var buf bytes.Buffer
	buf.Write(binary.BigEndian.AppendUint64(nil, uint64(b.Start)))
	buf.Write(binary.BigEndian.AppendUint32(nil, uint32(len(b.Entries))))
	for i, e := range b.Entries {
		var sig []byte
		if i < len(b.TokenSigs) {
			sig = b.TokenSigs[i]
		}
		for _, f := range [][]byte{e, sig} {
			buf.Write(binary.BigEndian.AppendUint32(nil, uint32(len(f))))
			buf.Write(f)
		}
	}
	return buf.Bytes()
}

func decodeBatch(data []byte) (*store.Batch, error) {
	bad := errors.New("malformed raft batch")
	if len(data) < 12 {
		return nil, bad
	}
	b := &store.Batch{Start: int64(binary.BigEndian.Uint64(data))}
	n := binary.BigEndian.Uint32(data[8:])
	data = data[12:]
	read := func() ([]byte, bool) {
		if len(data) < 4 {
			return nil, false
		}
		l := binary.BigEndian.Uint32(data)
		if uint32(len(data)-4) < l {
			return nil, false
		}
		v := data[4 : 4+l]
		data = data[4+l:]
		return v, true
	}
	for range n {
		e, ok1 := read()
		s, ok2 := read()
		if !ok1 || !ok2 {
			return nil, bad
		}
		if len(s) == 0 {
			s = nil
		}
		b.Entries = append(b.Entries, e)
		b.TokenSigs = append(b.TokenSigs, s)
	}
	if len(data) != 0 {
		return nil, bad
	}
	return b, nil
}

// An Appender appends batches through raft. It implements server.Appender.
type Appender struct {
	Raft    *raft.Raft
	Timeout time.Duration // default 10s
}

// Append replicates b and returns once a quorum committed it and the local
// state machine applied it.
func (a *Appender) Append(ctx context.Context, b *store.Batch) (tlog.Tree, error) {
	if a.Raft.State() != raft.Leader {
		return tlog.Tree{}, ErrNotLeader
	}
	timeout := a.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	f := a.Raft.Apply(encodeBatch(b), timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return tlog.Tree{}, fmt.Errorf("%w: %w", ErrNotLeader, err)
		}
		return tlog.Tree{}, fmt.Errorf("raft apply: %w", err)
	}
	r, ok := f.Response().(applyResult)
	if !ok {
		return tlog.Tree{}, errors.New("raft apply: unexpected response")
	}
	return r.tree, r.err
}
