package raftlog

import (
	"bytes"
	"fmt"
	"io"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
)

type sink struct{ bytes.Buffer }

func (s *sink) ID() string    { return "test" }
func (s *sink) Cancel() error { return nil }
func (s *sink) Close() error  { return nil }

func openStore(t *testing.T) *store.Store {
	st, err := store.Open(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func batch(start, n int) *store.Batch {
	b := &store.Batch{Start: int64(start)}
	for i := range n {
		b.Entries = append(b.Entries, []byte(fmt.Sprintf("entry %d", start+i)))
		b.TokenSigs = append(b.TokenSigs, []byte(fmt.Sprintf("sig %d", start+i)))
	}
	return b
}

func TestFSMApplySnapshotRestore(t *testing.T) {
	src := &FSM{Store: openStore(t)}
	for i, b := range []*store.Batch{batch(0, 5), batch(5, 300)} {
		r := src.Apply(&raft.Log{Data: encodeBatch(b)}).(applyResult)
		if r.err != nil {
			t.Fatalf("Apply(batch %d) = %v", i, r.err)
		}
	}
	// A replayed identical batch is acknowledged; a different one at a
	// stale start is a conflict.
	if r := src.Apply(&raft.Log{Data: encodeBatch(batch(0, 5))}).(applyResult); r.err != nil || r.tree.N != 5 {
		t.Fatalf("Apply(replayed batch) = %+v", r)
	}
	other := batch(0, 5)
	other.Entries[2] = []byte("forged")
	if r := src.Apply(&raft.Log{Data: encodeBatch(other)}).(applyResult); r.err == nil {
		t.Fatal("Apply(different batch at a stale start) succeeded")
	}

	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatal(err)
	}
	snap.Release()

	// The follower already has a prefix; restore appends the rest.
	dst := &FSM{Store: openStore(t)}
	if r := dst.Apply(&raft.Log{Data: encodeBatch(batch(0, 5))}).(applyResult); r.err != nil {
		t.Fatal(r.err)
	}
	if err := dst.Restore(io.NopCloser(&s)); err != nil {
		t.Fatalf("Restore = %v", err)
	}
	n, _ := dst.Store.Size()
	want, _ := tlog.TreeHash(305, src.Store)
	got, err := tlog.TreeHash(n, dst.Store)
	if n != 305 || err != nil || got != want {
		t.Fatalf("restored tree = %d %v, %v; want 305 %v", n, got, err, want)
	}
	sigs, _ := dst.Store.TokenSigs(304, 305)
	if string(sigs[0]) != "sig 304" {
		t.Errorf("restored token signature = %q, want %q", sigs[0], "sig 304")
	}
}
