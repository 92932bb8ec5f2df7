// Package audit verifies a curator log from scratch, detects forks between
// checkpoints, and watches a node agent's own IDs for entries the agent did
// not request.
package audit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

// A Violation is an entry that breaks the curator rules, with the evidence
// to show a third party: the entry, its inclusion proof and the checkpoint.
type Violation struct {
	Index      uint64
	Kind       curator.Kind
	ID         curator.ID
	Err        string
	Entry      []byte
	Inclusion  tlog.RecordProof
	Checkpoint []byte
}

// A Report is the result of a full audit.
//
// The audit goes on past an entry that breaks the rules. It checks each
// later entry against the entries the rules accepted, except that the ID
// map also takes every rejected key entry as logged
// (curator.State.SkipRejected). So a state entry that commits to the
// curator's own map, with a rejected entry in it, is not reported for
// that entry again, and a curator that diverges further is reported at
// each state entry that does not match.
type Report struct {
	Tree tlog.Tree
	// Entries counts the entries that passed the rules, by kind.
	Entries map[curator.Kind]int
	// IDs counts the IDs that a registration passing the rules created.
	IDs             int
	Violations      []Violation
	ReRegistrations []Violation // the violations that re-register an existing ID
	Forks           []*curator.ForkError
}

// OK reports whether the audit found nothing wrong.
func (r *Report) OK() bool { return len(r.Violations) == 0 && len(r.Forks) == 0 }

// Config configures an audit.
type Config struct {
	Client *curator.Client
	Policy *curator.Policy
	Scheme curator.Scheme
	// CheckTokenSignature, if set, verifies registration tokens. An auditor
	// that is not a witness cannot fetch token signatures and leaves it nil;
	// the claims (audience, expiry, pod binding) are checked regardless.
	CheckTokenSignature func(index uint64, e *curator.Entry) error
	// Others are more checkpoint notes to check against the log, such as
	// those that witnesses or peers hold.
	Others [][]byte
	Now    func() time.Time
}

// Audit fetches the latest checkpoint, verifies it under the policy, reads
// and replays every entry, and checks every other checkpoint for
// consistency with it.
func Audit(ctx context.Context, cfg Config) (*Report, error) {
	now := time.Now
	if cfg.Now != nil {
		now = cfg.Now
	}
	cpNote, err := cfg.Client.Checkpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit: fetch checkpoint: %w", err)
	}
	cp, err := cfg.Policy.Open(cpNote, now())
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	r := &Report{Tree: cp.Tree, Entries: map[curator.Kind]int{}}
	st := curator.NewState(curator.StateConfig{Scheme: cfg.Scheme, CheckTokenSignature: cfg.CheckTokenSignature})
	hr := tlog.TileHashReader(cp.Tree, cfg.Client.TileReader(ctx))
	const chunk = 1 << 12
	for start := int64(0); start < cp.Tree.N; start += chunk {
		recs, err := cfg.Client.Entries(ctx, cp.Tree, start, min(start+chunk, cp.Tree.N))
		if err != nil {
			return nil, fmt.Errorf("audit: read entries: %w", err)
		}
		for i, data := range recs {
			index := uint64(start) + uint64(i)
			e, err := st.ApplyRecord(data)
			if err == nil {
				r.Entries[e.Kind]++
				continue
			}
			if err := r.addViolation(index, data, e, err, cpNote, cp.Tree, hr); err != nil {
				return nil, err
			}
			st.SkipRejected(e, tlog.RecordHash(data))
		}
	}
	r.IDs = st.NumIDs()
	for _, other := range cfg.Others {
		if f := CheckFork(ctx, cfg.Policy.Log, cpNote, cp.Tree, hr, other); f != nil {
			r.Forks = append(r.Forks, f)
		}
	}
	return r, nil
}

// addViolation records entry index, which breaks the rules with ruleErr,
// with its inclusion proof in tree. e is nil when the entry does not parse.
func (r *Report) addViolation(index uint64, data []byte, e *curator.Entry, ruleErr error, cpNote []byte, tree tlog.Tree, hr tlog.HashReader) error {
	v := Violation{Index: index, Err: ruleErr.Error(), Entry: data, Checkpoint: cpNote}
	if e != nil {
		v.Kind, v.ID = e.Kind, e.ID
	}
	proof, err := tlog.ProveRecord(tree.N, int64(index), hr)
	if err != nil {
		return fmt.Errorf("audit: prove entry %d, which breaks the rules: %w", index, err)
	}
	v.Inclusion = proof
	r.Violations = append(r.Violations, v)
	if errors.Is(ruleErr, curator.ErrReRegistration) {
		r.ReRegistrations = append(r.ReRegistrations, v)
	}
	return nil
}

// CheckFork checks another signed checkpoint against a trusted tree, whose
// hashes hr reads. It returns the evidence of a fork, or nil when the
// other checkpoint is consistent, unsigned by the log, or larger than the
// trusted tree (check it the other way round).
func CheckFork(ctx context.Context, logKey note.Verifier, trustedNote []byte, trusted tlog.Tree, hr tlog.HashReader, other []byte) *curator.ForkError {
	n, err := note.Open(other, note.VerifierList(logKey))
	if err != nil {
		return nil
	}
	_, t, err := curator.ParseCheckpoint(n.Text)
	if err != nil || t.N > trusted.N {
		return nil
	}
	h, err := tlog.TreeHash(t.N, hr)
	if err == nil && h == t.Hash {
		return nil
	}
	proof, _ := tlog.ProveTree(trusted.N, t.N, hr)
	return &curator.ForkError{Old: other, New: trustedNote, Proof: proof}
}
