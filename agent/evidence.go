package agent

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

// forkEvidence keeps each log fork the node detects as a file: the two
// checkpoints the curator signed and the consistency proof that fails
// between them. The curator cannot deny those signatures, so the files let
// an operator prove the split view to anyone who holds the log's key.
type forkEvidence struct {
	dir string // empty keeps no files

	mu   sync.Mutex
	seen map[[32]byte]string // fork hash → file
}

// forkRecord is the JSON form of a kept fork.
type forkRecord struct {
	// Source names the detector: "audit" for the node's own log monitor,
	// "handshake" for a peer's stapled checkpoint.
	Source   string      `json:"source"`
	Time     time.Time   `json:"time"`
	Old      string      `json:"old_checkpoint"`
	New      string      `json:"new_checkpoint"`
	Proof    []tlog.Hash `json:"consistency_proof,omitempty"`
	Comments string      `json:"comments"`
}

// keep writes the fork to a new file unless the same pair of checkpoints
// was kept before. It returns the file's path and whether it is new.
func (f *forkEvidence) keep(fork *curator.ForkError, source string, now time.Time) (string, bool, error) {
	h := sha256.New()
	h.Write(fork.Old)
	h.Write([]byte{0})
	h.Write(fork.New)
	var key [32]byte
	h.Sum(key[:0])

	f.mu.Lock()
	defer f.mu.Unlock()
	if path, ok := f.seen[key]; ok {
		return path, false, nil
	}
	if f.seen == nil {
		f.seen = make(map[[32]byte]string)
	}
	if f.dir == "" {
		// An agent without a state folder keeps no files.
		f.seen[key] = ""
		return "", true, nil
	}
	rec := forkRecord{
		Source: source, Time: now.UTC(), Old: string(fork.Old), New: string(fork.New), Proof: fork.Proof,
		Comments: "Both checkpoints are signed with the curator's log key and do not extend one another.",
	}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return "", false, fmt.Errorf("keep fork evidence: %w", err)
	}
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return "", false, fmt.Errorf("keep fork evidence: %w", err)
	}
	path := filepath.Join(f.dir, fmt.Sprintf("fork-%d-%x.json", now.Unix(), key[:4]))
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", false, fmt.Errorf("keep fork evidence: %w", err)
	}
	f.seen[key] = path
	return path, true, nil
}
