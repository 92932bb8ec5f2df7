package curator

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// FormatCheckpoint returns the body of a C2SP tlog-checkpoint:
// "<origin>\n<size>\n<base64 root hash>\n". It has no extension lines,
// because the RBE digests are committed in state entries instead.
func FormatCheckpoint(origin string, t tlog.Tree) []byte {
	return fmt.Appendf(nil, "%s\n%d\n%s\n", origin, t.N, base64.StdEncoding.EncodeToString(t.Hash[:]))
}

// ParseCheckpoint parses a checkpoint body written by FormatCheckpoint.
func ParseCheckpoint(text string) (origin string, t tlog.Tree, err error) {
	lines := strings.SplitAfter(text, "\n")
	if len(lines) != 4 || lines[3] != "" {
		return "", t, errMalformed
	}
	origin = strings.TrimSuffix(lines[0], "\n")
	n, err := strconv.ParseInt(strings.TrimSuffix(lines[1], "\n"), 10, 64)
	h, err1 := DecodeBase64(strings.TrimSuffix(lines[2], "\n"))
	if origin == "" || err != nil || n < 0 || err1 != nil || len(h) != tlog.HashSize ||
		strconv.FormatInt(n, 10) != strings.TrimSuffix(lines[1], "\n") {
		return "", t, errMalformed
	}
	t.N = n
	copy(t.Hash[:], h)
	return origin, t, nil
}

// DecodeBase64 decodes s as padded standard base64 and accepts only the
// canonical encoding: no line breaks and zero trailing bits. A checkpoint
// or cosignature that re-encodes to different bytes would let two texts
// stand for one signed value.
func DecodeBase64(s string) ([]byte, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("decode base64: %w", err)
	}
	if base64.StdEncoding.EncodeToString(b) != s {
		return nil, fmt.Errorf("decode base64: %q is not in canonical form", s)
	}
	return b, nil
}

// DefaultQuorum returns ⌊2n/3⌋+1, the smallest k for which a k-of-n witness
// policy both tolerates unavailable witnesses and blocks split views.
func DefaultQuorum(n int) int { return 2*n/3 + 1 }

// A Policy says which checkpoints a client accepts: signed by the log key
// and cosigned by at least Quorum of Witnesses, each cosignature no older
// than MaxAge.
type Policy struct {
	Origin    string
	Log       note.Verifier
	Witnesses []note.Verifier
	Quorum    int           // 0 means DefaultQuorum(len(Witnesses))
	MaxAge    time.Duration // 0 disables the freshness check
}

// NewPolicy builds a policy from vkeys: an Ed25519 note key for the log and
// cosignature/v1 keys for the witnesses.
func NewPolicy(origin, logVKey string, witnessVKeys []string, quorum int) (*Policy, error) {
	lv, err := note.NewVerifier(logVKey)
	if err != nil {
		return nil, fmt.Errorf("parse log key: %w", err)
	}
	if lv.Name() != origin {
		return nil, fmt.Errorf("log key is named %q, want the origin %q", lv.Name(), origin)
	}
	p := &Policy{Origin: origin, Log: lv, Quorum: quorum}
	for _, k := range witnessVKeys {
		v, err := NewCosignatureVerifier(k)
		if err != nil {
			return nil, err
		}
		p.Witnesses = append(p.Witnesses, v)
	}
	if quorum > len(p.Witnesses) {
		return nil, fmt.Errorf("quorum %d exceeds the %d witnesses", quorum, len(p.Witnesses))
	}
	return p, nil
}

func (p *Policy) quorum() int {
	if p.Quorum > 0 {
		return p.Quorum
	}
	if len(p.Witnesses) == 0 {
		return 0
	}
	return DefaultQuorum(len(p.Witnesses))
}

// A Checkpoint is a verified, cosigned checkpoint.
type Checkpoint struct {
	Origin string
	Tree   tlog.Tree
	Note   []byte    // the signed note, as received
	Oldest time.Time // the oldest counted cosignature
	Signed int       // the number of counted cosignatures
}

// Errors a checkpoint check returns. ErrQuorum and ErrStale are exported
// because a client reacts to them differently: wait for witnesses, or
// treat the curator as frozen.
var (
	ErrQuorum = errors.New("checkpoint lacks a quorum of witness cosignatures")
	ErrStale  = errors.New("checkpoint cosignatures are older than the maximum age")
)

// Open verifies a signed checkpoint note under p at time now.
func (p *Policy) Open(msg []byte, now time.Time) (*Checkpoint, error) {
	verifiers := append([]note.Verifier{p.Log}, p.Witnesses...)
	n, err := note.Open(msg, note.VerifierList(verifiers...))
	if err != nil {
		return nil, fmt.Errorf("open checkpoint: %w", err)
	}
	logSigned := false
	cp := &Checkpoint{Note: msg}
	seen := map[uint32]bool{}
	for _, s := range n.Sigs {
		if s.Name == p.Log.Name() && s.Hash == p.Log.KeyHash() {
			logSigned = true
			continue
		}
		if seen[s.Hash] {
			continue
		}
		seen[s.Hash] = true
		t, err := cosignatureTime(s)
		if err != nil {
			continue
		}
		if p.MaxAge > 0 && now.Sub(t) > p.MaxAge {
			continue
		}
		if cp.Signed == 0 || t.Before(cp.Oldest) {
			cp.Oldest = t
		}
		cp.Signed++
	}
	if !logSigned {
		return nil, errors.New("open checkpoint: missing the log signature")
	}
	origin, tree, err := ParseCheckpoint(n.Text)
	if err != nil {
		return nil, fmt.Errorf("open checkpoint: %w", err)
	}
	if origin != p.Origin {
		return nil, fmt.Errorf("open checkpoint: origin %q, want %q", origin, p.Origin)
	}
	cp.Origin, cp.Tree = origin, tree
	if cp.Signed < p.quorum() {
		// Distinguish a frozen curator from missing witnesses.
		if p.MaxAge > 0 && countAll(n, p) >= p.quorum() {
			return nil, fmt.Errorf("open checkpoint of size %d: %w", tree.N, ErrStale)
		}
		return nil, fmt.Errorf("open checkpoint of size %d: %d of %d required: %w", tree.N, cp.Signed, p.quorum(), ErrQuorum)
	}
	return cp, nil
}

func countAll(n *note.Note, p *Policy) int {
	seen := map[uint32]bool{}
	for _, s := range n.Sigs {
		if s.Hash != p.Log.KeyHash() {
			seen[s.Hash] = true
		}
	}
	return len(seen)
}
