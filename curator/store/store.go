// Package store keeps a transparency log in one bbolt file: the entries,
// the tlog stored hashes, the latest checkpoint and, on the curator, the
// token signatures that witnesses fetch. Every write commits one bbolt
// transaction, which fsyncs before Append returns, so an appended batch is
// durable once acknowledged.
package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/tlog"
)

var (
	bucketEntries   = []byte("entries")
	bucketHashes    = []byte("hashes")
	bucketTokenSigs = []byte("tokensigs")
	bucketMeta      = []byte("meta")

	keySize       = []byte("size")
	keyCheckpoint = []byte("checkpoint")
)

// memLevel is the lowest tlog level whose stored hashes a Store also keeps
// in memory. Level ℓ has one hash per 2^ℓ records, so the levels from
// memLevel up take about 2/2^memLevel hashes per record, which is 1 byte
// per record at level 6. A record proof then reads from bbolt only its
// hashes below memLevel, which belong to the 2^memLevel records around the
// record and so lie on one or two pages. The others would each be a B+tree
// lookup on a page of their own, and in a large log these pages are spread
// over a hash bucket far larger than the CPU caches.
const memLevel = 6

// A Store is a log in a bbolt file. It is safe for concurrent use. Appends
// are serialized, and bbolt serializes the other writes.
type Store struct {
	db *bolt.DB

	appendMu sync.Mutex // held for a whole Append, so upper grows in log order
	mu       sync.RWMutex
	// upper[k][n] is the stored hash at level memLevel+k for the n-th
	// subtree of 2^(memLevel+k) records. Stored hashes never change once
	// committed, so the copy stays valid.
	upper [][]tlog.Hash
}

// Open opens or creates the store at path. Only one process may open it.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketEntries, bucketHashes, bucketTokenSigs, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("create buckets in %s: %w", path, err)
	}
	s := &Store{db: db}
	if err := s.loadUpper(); err != nil {
		db.Close()
		return nil, fmt.Errorf("load stored hashes of %s: %w", path, err)
	}
	return s, nil
}

// loadUpper reads the stored hashes at levels memLevel and up into memory,
// which takes one bbolt lookup per 32 records.
func (s *Store) loadUpper() error {
	return s.db.View(func(tx *bolt.Tx) error {
		n := sizeTx(tx)
		hb := tx.Bucket(bucketHashes)
		for level := memLevel; n>>level > 0; level++ {
			hashes := make([]tlog.Hash, n>>level)
			for i := range hashes {
				x := tlog.StoredHashIndex(level, int64(i))
				v := hb.Get(key(uint64(x)))
				if len(v) != tlog.HashSize {
					return fmt.Errorf("stored hash %d not found", x)
				}
				copy(hashes[i][:], v)
			}
			s.upper = append(s.upper, hashes)
		}
		return nil
	})
}

// upperHashLocked returns stored hash x if it is in memory. The caller
// holds s.mu.
func (s *Store) upperHashLocked(x int64) (tlog.Hash, bool) {
	if x < 0 {
		return tlog.Hash{}, false
	}
	level, n := tlog.SplitStoredHashIndex(x)
	k := level - memLevel
	if k < 0 || k >= len(s.upper) || n >= int64(len(s.upper[k])) {
		return tlog.Hash{}, false
	}
	return s.upper[k][n], true
}

// addUpper appends the hashes of a committed batch to the copy in memory.
// Each hashes[i] is the stored hash at levels[i] for record n>>levels[i]
// of the batch's records in order. The caller holds s.appendMu, so no
// other batch comes between.
func (s *Store) addUpper(levels []int, ns []int64, hashes []tlog.Hash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, level := range levels {
		k := level - memLevel
		for len(s.upper) <= k {
			s.upper = append(s.upper, nil)
		}
		// Appends are serialized, so ns[i] is the next index of its
		// level. Any other hash stays out of memory, and ReadHashes
		// reads it from bbolt.
		if ns[i] == int64(len(s.upper[k])) {
			s.upper[k] = append(s.upper[k], hashes[i])
		}
	}
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// DB returns the bbolt handle, for raft snapshots.
func (s *Store) DB() *bolt.DB { return s.db }

func key(i uint64) []byte { return binary.BigEndian.AppendUint64(nil, i) }

// Size returns the number of entries.
func (s *Store) Size() (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		n = sizeTx(tx)
		return nil
	})
	return n, err
}

func sizeTx(tx *bolt.Tx) int64 {
	v := tx.Bucket(bucketMeta).Get(keySize)
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

// ErrSizeMismatch means an append expected another log size; the caller's
// view of the log is stale.
var ErrSizeMismatch = errors.New("log size changed")

// A Batch is a group of entries appended in one transaction.
type Batch struct {
	Start      int64    // the log size the batch expects
	Entries    [][]byte // encoded entries
	TokenSigs  [][]byte // per entry, nil where the entry has no token
	Checkpoint []byte   // optional note to store with the batch
}

// Append writes a batch and its stored hashes in one fsynced transaction
// and returns the new tree.
func (s *Store) Append(b *Batch) (tlog.Tree, error) {
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	var tree tlog.Tree
	var upperLevels []int
	var upperNs []int64
	var upperHashes []tlog.Hash
	err := s.db.Update(func(tx *bolt.Tx) error {
		upperLevels, upperNs, upperHashes = upperLevels[:0], upperNs[:0], upperHashes[:0]
		n := sizeTx(tx)
		if n != b.Start {
			return fmt.Errorf("append at size %d, log has %d: %w", b.Start, n, ErrSizeMismatch)
		}
		eb, hb, tb := tx.Bucket(bucketEntries), tx.Bucket(bucketHashes), tx.Bucket(bucketTokenSigs)
		eb.FillPercent, hb.FillPercent = 1.0, 1.0
		pending := map[int64]tlog.Hash{}
		r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
			return readHashesTx(tx, idx, pending)
		})
		for i, data := range b.Entries {
			index := n + int64(i)
			hs, err := tlog.StoredHashes(index, data, r)
			if err != nil {
				return fmt.Errorf("compute stored hashes of entry %d: %w", index, err)
			}
			base := tlog.StoredHashIndex(0, index)
			for j, h := range hs {
				// hs[j] is the hash at level j of the subtree that
				// entry index completes.
				if j >= memLevel {
					upperLevels, upperNs, upperHashes = append(upperLevels, j), append(upperNs, index>>j), append(upperHashes, h)
				}
				pending[base+int64(j)] = h
				if err := hb.Put(key(uint64(base+int64(j))), h[:]); err != nil {
					return err
				}
			}
			if err := eb.Put(key(uint64(index)), data); err != nil {
				return err
			}
			if i < len(b.TokenSigs) && b.TokenSigs[i] != nil {
				if err := tb.Put(key(uint64(index)), b.TokenSigs[i]); err != nil {
					return err
				}
			}
		}
		tree.N = n + int64(len(b.Entries))
		h, err := tlog.TreeHash(tree.N, r)
		if err != nil {
			return fmt.Errorf("compute tree hash: %w", err)
		}
		tree.Hash = h
		if b.Checkpoint != nil {
			if err := tx.Bucket(bucketMeta).Put(keyCheckpoint, b.Checkpoint); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keySize, key(uint64(tree.N)))
	})
	if err != nil {
		return tlog.Tree{}, fmt.Errorf("append %d entries: %w", len(b.Entries), err)
	}
	s.addUpper(upperLevels, upperNs, upperHashes)
	return tree, nil
}

func readHashesTx(tx *bolt.Tx, idx []int64, pending map[int64]tlog.Hash) ([]tlog.Hash, error) {
	hb := tx.Bucket(bucketHashes)
	out := make([]tlog.Hash, len(idx))
	for i, x := range idx {
		if h, ok := pending[x]; ok {
			out[i] = h
			continue
		}
		v := hb.Get(key(uint64(x)))
		if len(v) != tlog.HashSize {
			return nil, fmt.Errorf("stored hash %d not found", x)
		}
		copy(out[i][:], v)
	}
	return out, nil
}

// ReadHashes implements tlog.HashReader. It reads the hashes at levels
// memLevel and up from memory and the others from bbolt.
func (s *Store) ReadHashes(idx []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(idx))
	var missing []int
	s.mu.RLock()
	for i, x := range idx {
		h, ok := s.upperHashLocked(x)
		if !ok {
			missing = append(missing, i)
			continue
		}
		out[i] = h
	}
	s.mu.RUnlock()
	if len(missing) == 0 {
		return out, nil
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		hb := tx.Bucket(bucketHashes)
		for _, i := range missing {
			v := hb.Get(key(uint64(idx[i])))
			if len(v) != tlog.HashSize {
				return fmt.Errorf("stored hash %d not found", idx[i])
			}
			copy(out[i][:], v)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Entries returns entries [start, end).
func (s *Store) Entries(start, end int64) ([][]byte, error) {
	var out [][]byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if end > sizeTx(tx) || start < 0 || start > end {
			return fmt.Errorf("entries [%d, %d) out of range", start, end)
		}
		c := tx.Bucket(bucketEntries).Cursor()
		k, v := c.Seek(key(uint64(start)))
		for i := start; i < end; i++ {
			if k == nil || binary.BigEndian.Uint64(k) != uint64(i) {
				return fmt.Errorf("entry %d not found", i)
			}
			out = append(out, append([]byte(nil), v...))
			k, v = c.Next()
		}
		return nil
	})
	return out, err
}

// Entry returns entry i.
func (s *Store) Entry(i int64) ([]byte, error) {
	e, err := s.Entries(i, i+1)
	if err != nil {
		return nil, err
	}
	return e[0], nil
}

// TokenSigs returns the token signatures of entries [start, end); nil for
// entries without one.
func (s *Store) TokenSigs(start, end int64) ([][]byte, error) {
	out := make([][]byte, 0, max(end-start, 0))
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokenSigs)
		for i := start; i < end; i++ {
			v := b.Get(key(uint64(i)))
			if v != nil {
				v = append([]byte(nil), v...)
			}
			out = append(out, v)
		}
		return nil
	})
	return out, err
}

// Checkpoint returns the stored checkpoint note, or nil.
func (s *Store) Checkpoint() ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		out = append([]byte(nil), tx.Bucket(bucketMeta).Get(keyCheckpoint)...)
		return nil
	})
	if len(out) == 0 {
		out = nil
	}
	return out, err
}

// SetCheckpoint stores a checkpoint note for the current size.
func (s *Store) SetCheckpoint(note []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyCheckpoint, note)
	})
}

// Meta returns a metadata value.
func (s *Store) Meta(name string) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		out = append([]byte(nil), tx.Bucket(bucketMeta).Get([]byte("x/"+name))...)
		return nil
	})
	return out, err
}

// SetMeta stores a metadata value.
func (s *Store) SetMeta(name string, v []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put([]byte("x/"+name), v)
	})
}
