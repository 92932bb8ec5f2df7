package audit

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

// Alert names, after the Sigsum monitor's alerts.
const (
	AlertFork                = "KCForkDetected"
	AlertUnexpectedEntry     = "UnexpectedReRegistration"
	AlertRegistrationMissing = "RegistrationNotLogged"
	// AlertInvalidProof means the curator replied with a cosigned
	// checkpoint but proofs or entries that do not verify under it, such
	// as a block digest its state entry does not commit to.
	AlertInvalidProof = "InvalidCuratorProof"
)

// An Alert is something a node agent must act on, with its evidence.
type Alert struct {
	Name  string
	ID    curator.ID
	Entry *curator.IndexedEntry // the unexpected entry, with its inclusion proof
	// Checkpoint is the cosigned checkpoint the entry is proven under.
	Checkpoint []byte
	Fork       *curator.ForkError
	// Err is the verification failure of an AlertInvalidProof.
	Err error
}

func (a *Alert) String() string {
	switch {
	case a.Fork != nil:
		return fmt.Sprintf("%s: %v", a.Name, a.Fork)
	case a.Err != nil:
		return fmt.Sprintf("%s: %v", a.Name, a.Err)
	case a.Entry != nil:
		return fmt.Sprintf("%s: ID %v, entry %d", a.Name, a.ID, a.Entry.Index)
	}
	return fmt.Sprintf("%s: ID %v", a.Name, a.ID)
}

// A Monitor is the node agent's view of its own IDs. It polls the curator
// for updates to those IDs, verifies them under the witness policy and
// against the last checkpoint it accepted, and raises an alert for any
// entry that touches one of its IDs without being one it requested. Each
// poll costs O(IDs · (log N + changes)), independent of the log's growth.
type Monitor struct {
	Client *curator.Client
	Policy *curator.Policy
	Now    func() time.Time

	mu       sync.Mutex
	trusted  *curator.Checkpoint
	expected map[curator.ID]map[[32]byte]bool // SHA-256 of the PoP messages the agent signed
}

// Trusted returns the last checkpoint the monitor accepted.
func (m *Monitor) Trusted() *curator.Checkpoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.trusted
}

// Expect records that the agent requested an entry, identified by the PoP
// message it signed (curator.PoPMessage). The monitor then watches the ID.
func (m *Monitor) Expect(id curator.ID, popMessage []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.expected == nil {
		m.expected = map[curator.ID]map[[32]byte]bool{}
	}
	if m.expected[id] == nil {
		m.expected[id] = map[[32]byte]bool{}
	}
	m.expected[id][sha256.Sum256(popMessage)] = true
}

// Poll fetches and verifies updates for the watched IDs. On a fork it
// returns the fork alert and keeps its trusted checkpoint.
func (m *Monitor) Poll(ctx context.Context) ([]Alert, error) {
	now := time.Now
	if m.Now != nil {
		now = m.Now
	}
	m.mu.Lock()
	trusted := m.trusted
	ids := make([]curator.ID, 0, len(m.expected))
	for id := range m.expected {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	var since int64
	if trusted != nil {
		since = trusted.Tree.N
	}
	resp, err := m.Client.Updates(ctx, since, ids)
	if err != nil {
		return nil, fmt.Errorf("poll curator: %w", err)
	}
	u, err := curator.VerifyUpdates(resp, m.Policy, trusted, ids, now())
	var fork *curator.ForkError
	if errors.As(err, &fork) {
		return []Alert{{Name: AlertFork, Fork: fork}}, nil
	}
	if errors.Is(err, curator.ErrQuorum) {
		if fork := signedFork(m.Policy, trusted, resp); fork != nil {
			return []Alert{{Name: AlertFork, Fork: fork}}, nil
		}
	}
	switch {
	case errors.Is(err, curator.ErrQuorum) || errors.Is(err, curator.ErrStale):
		// Witnesses may lag behind the log; that is not evidence.
		return nil, fmt.Errorf("poll curator: %w", err)
	case err != nil:
		return []Alert{{Name: AlertInvalidProof, Checkpoint: resp.Checkpoint, Err: err}}, fmt.Errorf("poll curator: %w", err)
	}
	var alerts []Alert
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range ids {
		v := u.IDs[id]
		for _, ch := range v.Changes {
			e, err := curator.ParseEntry(ch.Entry)
			if err != nil {
				return nil, fmt.Errorf("poll curator: verified entry %d does not parse: %w", ch.Index, err)
			}
			if !m.expected[id][sha256.Sum256(curator.PoPMessage(e))] {
				alerts = append(alerts, Alert{Name: AlertUnexpectedEntry, ID: id, Entry: &ch, Checkpoint: u.Checkpoint.Note})
			}
		}
	}
	m.trusted = u.Checkpoint
	return alerts, nil
}

// signedFork checks a checkpoint that lacks a witness quorum against the
// trusted one. Such a checkpoint is not trusted, but when the log key signed
// it and it does not extend the trusted tree, the curator signed two
// histories: that is proof of a fork whether or not witnesses cosigned
// either. A smaller checkpoint is left alone, since checking it needs tiles
// the curator could withhold.
func signedFork(p *curator.Policy, trusted *curator.Checkpoint, resp *curator.UpdatesResponse) *curator.ForkError {
	if trusted == nil {
		return nil
	}
	n, err := note.Open(resp.Checkpoint, note.VerifierList(p.Log))
	if err != nil {
		return nil
	}
	origin, t, err := curator.ParseCheckpoint(n.Text)
	if err != nil || origin != p.Origin || t.N < trusted.Tree.N {
		return nil
	}
	if tlog.CheckTree(resp.Consistency, t.N, t.Hash, trusted.Tree.N, trusted.Tree.Hash) == nil {
		return nil
	}
	return &curator.ForkError{Old: trusted.Note, New: resp.Checkpoint, Proof: resp.Consistency}
}
