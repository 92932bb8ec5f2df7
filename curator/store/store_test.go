package store

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/tlog"
)

// appendRecords appends count records to s in batches of batchSize and
// returns the records.
func appendRecords(t *testing.T, s *Store, count, batchSize int) [][]byte {
	t.Helper()
	var records [][]byte
	for len(records) < count {
		n := min(batchSize, count-len(records))
		b := &Batch{Start: int64(len(records))}
		for i := range n {
			b.Entries = append(b.Entries, fmt.Appendf(nil, "record %d", len(records)+i))
		}
		if _, err := s.Append(b); err != nil {
			t.Fatal(err)
		}
		records = append(records, b.Entries...)
	}
	return records
}

// boltHashes reads every stored hash straight from the hash bucket.
func boltHashes(t *testing.T, s *Store, n int64) []tlog.Hash {
	t.Helper()
	idx := make([]int64, tlog.StoredHashCount(n))
	for i := range idx {
		idx[i] = int64(i)
	}
	var out []tlog.Hash
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		out, err = readHashesTx(tx, idx, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkReadHashes checks that ReadHashes returns what bbolt stores for
// every stored hash of a log of n records.
func checkReadHashes(t *testing.T, s *Store, n int64) {
	t.Helper()
	want := boltHashes(t, s, n)
	idx := make([]int64, len(want))
	for i := range idx {
		idx[i] = int64(i)
	}
	got, err := s.ReadHashes(idx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if got[i] != want[i] {
			level, k := tlog.SplitStoredHashIndex(int64(i))
			t.Fatalf("stored hash %d (level %d, n %d): ReadHashes returned %v, bbolt has %v", i, level, k, got[i], want[i])
		}
	}
}

func TestReadHashesMatchesBolt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	// 1,000 records in batches of 37 complete subtrees across batch
	// boundaries at every level up to 9.
	records := appendRecords(t, s, 1000, 37)
	checkReadHashes(t, s, 1000)
	if len(s.upper) != 4 {
		t.Errorf("levels in memory after appends: got %d, want 4 (levels 6 to 9)", len(s.upper))
	}

	tree, err := tlog.TreeHash(1000, s)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkReadHashes(t, s, 1000)
	reopened, err := tlog.TreeHash(1000, s)
	if err != nil {
		t.Fatal(err)
	}
	if reopened != tree {
		t.Errorf("tree hash after reopen: got %v, want %v", reopened, tree)
	}

	for _, i := range []int64{0, 63, 64, 500, 999} {
		p, err := tlog.ProveRecord(1000, i, s)
		if err != nil {
			t.Fatal(err)
		}
		if err := tlog.CheckRecord(p, 1000, tree, i, tlog.RecordHash(records[i])); err != nil {
			t.Errorf("record %d: %v", i, err)
		}
	}
}

func TestReadHashesDuringAppends(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "log.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendRecords(t, s, 200, 200)

	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			n, err := s.Size()
			if err != nil {
				t.Error(err)
				return
			}
			th, err := tlog.TreeHash(n, s)
			if err != nil {
				t.Error(err)
				return
			}
			p, err := tlog.ProveRecord(n, 0, s)
			if err != nil {
				t.Error(err)
				return
			}
			if err := tlog.CheckRecord(p, n, th, 0, tlog.RecordHash([]byte("record 0"))); err != nil {
				t.Errorf("record 0 in a tree of %d: %v", n, err)
				return
			}
		}
	}()
	for start := 200; start < 2000; start += 50 {
		b := &Batch{Start: int64(start)}
		for i := range 50 {
			b.Entries = append(b.Entries, fmt.Appendf(nil, "record %d", start+i))
		}
		if _, err := s.Append(b); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	checkReadHashes(t, s, 2000)
}

func TestFailedAppendLeavesMemoryUnchanged(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "log.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendRecords(t, s, 100, 100)
	before := len(s.upper[0])
	if _, err := s.Append(&Batch{Start: 99, Entries: [][]byte{[]byte("stale")}}); err == nil {
		t.Fatal("append at a stale size succeeded")
	}
	if got := len(s.upper[0]); got != before {
		t.Errorf("level-6 hashes in memory after a failed append: got %d, want %d", got, before)
	}
	checkReadHashes(t, s, 100)
}
