package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
)

// An Appender makes a batch durable. The single-node appender writes the
// bbolt store directly; the raft appender replicates the batch first.
type Appender interface {
	Append(ctx context.Context, b *store.Batch) (tlog.Tree, error)
}

type storeAppender struct{ s *store.Store }

func (a storeAppender) Append(_ context.Context, b *store.Batch) (tlog.Tree, error) {
	return a.s.Append(b)
}

// Config configures a Log. Zero values select the documented defaults.
type Config struct {
	Origin string      // checkpoint origin, such as "kc.cluster.local/registrations"
	Signer note.Signer // the log's Ed25519 checkpoint key, named Origin
	// VerifierKey is the vkey of Signer, as note.GenerateKey returns it.
	VerifierKey string
	Store       *store.Store
	Appender    Appender // nil means append to Store directly
	Scheme      curator.Scheme
	Reviewer    TokenReviewer
	Audience    string // token audience; default curator.DefaultAudience
	// NodeCheck requires each registration to carry the sending agent's
	// own token, and the registration token's node claim to name the
	// agent's node.
	NodeCheck bool
	// MinContributions is the number of CRS ceremony contributions the
	// log must hold before the first registration; 0 accepts a log with
	// none, where the CRS comes from Scheme alone.
	MinContributions int
	// AgentServiceAccount, as "namespace/name", is the only service account
	// whose tokens count as agent tokens; empty accepts any.
	AgentServiceAccount string

	Witnesses      []Witness     // cosigners asked for every checkpoint
	Quorum         int           // cosignatures required; default ⌊2n/3⌋+1
	WitnessTimeout time.Duration // per cosignature round; default 10s

	// BatchInterval is how long the sequencer waits for more requests
	// after the first one of a batch. Zero (the default) waits for none: a
	// batch takes whatever queued while the previous batch was being
	// written and cosigned, which groups commits under load without adding
	// latency to a lone request.
	BatchInterval time.Duration
	MaxBatch      int           // key entries per batch; default 1024
	ReserveTTL    time.Duration // how long a reserved slot stays reserved; default 2m

	Logger   *slog.Logger          // default discards
	Registry prometheus.Registerer // nil means no metrics are registered
	Now      func() time.Time      // default time.Now
}

// A Log is the curator: it sequences key entries into batches, appends
// them with a state entry, signs a checkpoint and collects cosignatures.
type Log struct {
	cfg Config
	log *slog.Logger
	m   *metrics

	reqs      chan *pending
	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup

	publishMu sync.Mutex // serializes checkpoint publication

	mu             sync.RWMutex
	state          *curator.State // guarded by mu
	tree           tlog.Tree      // guarded by mu
	checkpoint     []byte         // latest signed and cosigned note, guarded by mu
	checkpointTree tlog.Tree      // the tree checkpoint names, guarded by mu
	nextSlot       uint64         // next global slot to reserve, guarded by mu
	reserved       map[curator.ID]reservation
	witnessAt      map[string]int64 // each witness's last known size, guarded by mu
}

type reservation struct {
	global  uint64
	expires time.Time
}

type pending struct {
	entry    *curator.Entry
	tokenSig []byte
	done     chan result
}

type result struct {
	index uint64
	err   error
	reply *KeyResponse // opening and bundle, built before the state moves on
}

// ErrConflict means the request conflicts with the log: the ID is already
// registered, or the previous entry is not the ID's current entry.
var ErrConflict = errors.New("conflict with the log")

// New opens the log in cfg.Store, replays it to rebuild the state, and
// starts the sequencer. Call Close to stop it.
func New(cfg Config) (*Log, error) {
	if cfg.Origin == "" || cfg.Signer == nil || cfg.Store == nil || cfg.Scheme == nil {
		return nil, errors.New("new curator log: Origin, Signer, Store and Scheme are required")
	}
	if _, err := note.NewVerifier(cfg.VerifierKey); err != nil {
		return nil, fmt.Errorf("new curator log: parse VerifierKey: %w", err)
	}
	if cfg.Signer.Name() != cfg.Origin {
		return nil, fmt.Errorf("new curator log: signer is named %q, want the origin %q", cfg.Signer.Name(), cfg.Origin)
	}
	if cfg.Appender == nil {
		cfg.Appender = storeAppender{cfg.Store}
	}
	if cfg.Audience == "" {
		cfg.Audience = curator.DefaultAudience
	}
	if cfg.Quorum == 0 && len(cfg.Witnesses) > 0 {
		cfg.Quorum = curator.DefaultQuorum(len(cfg.Witnesses))
	}
	if cfg.WitnessTimeout == 0 {
		cfg.WitnessTimeout = 10 * time.Second
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = 1024
	}
	if cfg.ReserveTTL == 0 {
		cfg.ReserveTTL = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &Log{cfg: cfg, log: cfg.Logger, m: newMetrics(cfg.Registry),
		reqs: make(chan *pending, 4*cfg.MaxBatch), stop: make(chan struct{}),
		reserved: map[curator.ID]reservation{}, witnessAt: map[string]int64{}}
	if err := l.Reload(); err != nil {
		return nil, err
	}
	l.wg.Add(1)
	go l.sequence()
	return l, nil
}

// Close stops the sequencer. Requests in flight fail. Calling it again
// does nothing.
func (l *Log) Close() {
	l.closeOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
}

func (l *Log) newState() *curator.State {
	return curator.NewState(curator.StateConfig{Scheme: l.cfg.Scheme, Audience: l.cfg.Audience, SkipKeyCheck: true})
}

// Reload rebuilds the state from the store. A raft follower that becomes
// leader calls it, because its store advanced without the sequencer. It
// holds the lock throughout, so no batch is appended while it reads.
func (l *Log) Reload() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.newState()
	n, err := l.cfg.Store.Size()
	if err != nil {
		return fmt.Errorf("reload log: %w", err)
	}
	const chunk = 4096
	for start := int64(0); start < n; start += chunk {
		recs, err := l.cfg.Store.Entries(start, min(start+chunk, n))
		if err != nil {
			return fmt.Errorf("reload log: %w", err)
		}
		for _, r := range recs {
			if _, err := st.ApplyRecord(r); err != nil {
				return fmt.Errorf("reload log: stored entry breaks the rules: %w", err)
			}
		}
	}
	th, err := tlog.TreeHash(n, l.cfg.Store)
	if err != nil {
		return fmt.Errorf("reload log: %w", err)
	}
	cp, err := l.cfg.Store.Checkpoint()
	if err != nil {
		return fmt.Errorf("reload log: %w", err)
	}
	l.state, l.tree = st, tlog.Tree{N: n, Hash: th}
	l.nextSlot = max(l.nextSlot, st.SlotEnd())
	l.checkpoint, l.checkpointTree = nil, tlog.Tree{}
	if t, ok := l.openOwn(cp); ok && t.N <= n {
		// Keep serving the stored checkpoint: it is valid, and the tree
		// it names is a prefix of the store.
		l.checkpoint, l.checkpointTree = cp, t
	}
	if n > 0 && l.checkpointTree != l.tree {
		// The process stopped between the append and the checkpoint, or
		// the witnesses did not cosign: sign and cosign the tree again.
		go l.publish(context.Background(), l.tree)
	}
	l.m.logSize.Set(float64(n))
	l.log.Info("log loaded", "entries", n, "epoch", st.Epoch())
	return nil
}

// openOwn verifies a checkpoint note under the log's key and returns its
// tree.
func (l *Log) openOwn(cp []byte) (tlog.Tree, bool) {
	if cp == nil {
		return tlog.Tree{}, false
	}
	n, err := note.Open(cp, note.VerifierList(l.verifier()))
	if err != nil {
		return tlog.Tree{}, false
	}
	_, t, err := curator.ParseCheckpoint(n.Text)
	return t, err == nil
}

func (l *Log) verifier() note.Verifier {
	v, err := note.NewVerifier(l.VerifierKey())
	if err != nil {
		panic("curator: verifier of own signer: " + err.Error())
	}
	return v
}

// VerifierKey returns the vkey of the log's checkpoint key.
func (l *Log) VerifierKey() string { return l.cfg.VerifierKey }

// ceremonyDoneLocked reports an error until the log holds the required
// ceremony contributions and the scheme has a CRS.
func (l *Log) ceremonyDoneLocked() error {
	if n := l.state.Contributions(); n < l.cfg.MinContributions {
		return fmt.Errorf("CRS ceremony has %d of %d contributions, registrations open after it: %w", n, l.cfg.MinContributions, errUnavailable)
	}
	if l.cfg.Scheme.BlockSize() == 0 {
		return fmt.Errorf("no CRS yet, registrations open after the ceremony: %w", errUnavailable)
	}
	return nil
}

// maxReservations bounds the open slot reservations.
const maxReservations = 1 << 16

// Reserve assigns a fresh slot to id for ReserveTTL, so the registrant can
// generate its RBE key for that slot. Reserving again returns the same slot.
func (l *Log) Reserve(id curator.ID) (block, slot uint32, expires time.Time, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.state.Lookup(id); ok {
		return 0, 0, time.Time{}, fmt.Errorf("reserve slot: %w: %w", ErrConflict, curator.ErrReRegistration)
	}
	if err := l.ceremonyDoneLocked(); err != nil {
		return 0, 0, time.Time{}, fmt.Errorf("reserve slot: %w", err)
	}
	now := l.cfg.Now()
	if len(l.reserved) >= maxReservations {
		// Each reservation needed a valid token, so this only runs under
		// heavy churn: drop the expired ones.
		for k, r := range l.reserved {
			if now.After(r.expires) {
				delete(l.reserved, k)
			}
		}
		if len(l.reserved) >= maxReservations {
			return 0, 0, time.Time{}, fmt.Errorf("reserve slot: %d open reservations: %w", len(l.reserved), errUnavailable)
		}
	}
	r, ok := l.reserved[id]
	if !ok || now.After(r.expires) {
		r = reservation{global: l.nextSlot}
		l.nextSlot++
	}
	r.expires = now.Add(l.cfg.ReserveTTL)
	l.reserved[id] = r
	block, slot = l.state.GlobalSlot(r.global)
	return block, slot, r.expires, nil
}

// submit queues an entry and waits until it is durable or rejected.
func (l *Log) submit(ctx context.Context, e *curator.Entry, tokenSig []byte) (result, error) {
	p := &pending{entry: e, tokenSig: tokenSig, done: make(chan result, 1)}
	select {
	case l.reqs <- p:
	case <-ctx.Done():
		return result{}, ctx.Err()
	case <-l.stop:
		return result{}, errors.New("curator is stopping")
	}
	select {
	case r := <-p.done:
		return r, r.err
	case <-l.stop:
		return result{}, errors.New("curator is stopping")
	}
}

func (l *Log) sequence() {
	defer l.wg.Done()
	for {
		var batch []*pending
		select {
		case p := <-l.reqs:
			batch = append(batch, p)
		case <-l.stop:
			return
		}
		var timeout <-chan time.Time
		var timer *time.Timer
		if l.cfg.BatchInterval > 0 {
			timer = time.NewTimer(l.cfg.BatchInterval)
			timeout = timer.C
		}
	fill:
		for len(batch) < l.cfg.MaxBatch {
			select {
			case p := <-l.reqs:
				batch = append(batch, p)
			case <-timeout:
				break fill
			case <-l.stop:
				return
			default:
				if timeout == nil {
					break fill
				}
				select {
				case p := <-l.reqs:
					batch = append(batch, p)
				case <-timeout:
					break fill
				case <-l.stop:
					return
				}
			}
		}
		if timer != nil {
			timer.Stop()
		}
		l.appendBatch(batch)
	}
}

// appendBatch applies the batch to the state, appends it with its state
// entry, and replies to each request once the batch is durable.
func (l *Log) appendBatch(batch []*pending) {
	ctx := context.Background()
	start := l.cfg.Now()
	ms := uint64(start.UnixMilli())

	l.mu.Lock()
	b := &store.Batch{Start: l.tree.N}
	var accepted []*pending
	var indexes []uint64
	for _, p := range batch {
		p.entry.TimestampMS = max(ms, l.state.LastTimestamp())
		data, err := p.entry.Marshal()
		if err == nil {
			err = l.state.Apply(p.entry, tlog.RecordHash(data))
		}
		if err != nil {
			switch {
			case errors.Is(err, curator.ErrReRegistration) || isChainError(err):
				err = fmt.Errorf("%w: %w", ErrConflict, err)
			default:
				err = fmt.Errorf("%w: %w", errBadRequest, err)
			}
			p.done <- result{err: err}
			continue
		}
		indexes = append(indexes, l.state.Size()-1)
		b.Entries = append(b.Entries, data)
		b.TokenSigs = append(b.TokenSigs, p.tokenSig)
		accepted = append(accepted, p)
		if p.entry.Kind == curator.KindRegistration {
			delete(l.reserved, p.entry.ID)
		}
	}
	if len(accepted) == 0 {
		l.mu.Unlock()
		return
	}
	st := l.state.NextState(ms)
	data, err := st.Marshal()
	if err == nil {
		err = l.state.Apply(st, tlog.RecordHash(data))
	}
	if err != nil {
		panic("curator: own state entry rejected: " + err.Error())
	}
	b.Entries = append(b.Entries, data)
	b.TokenSigs = append(b.TokenSigs, nil)
	tree, err := l.cfg.Appender.Append(ctx, b)
	if err != nil {
		l.mu.Unlock()
		l.log.Error("append batch failed", "entries", len(b.Entries), "err", err)
		for _, p := range accepted {
			p.done <- result{err: fmt.Errorf("append to log: %w", err)}
		}
		// The state already includes the failed batch: rebuild it.
		if rerr := l.Reload(); rerr != nil {
			l.log.Error("reload after failed append", "err", rerr)
		}
		return
	}
	l.tree = tree
	l.mu.Unlock()
	l.m.batchSize.Observe(float64(len(accepted)))
	l.m.appendTime.Observe(time.Since(start).Seconds())
	l.m.logSize.Set(float64(tree.N))

	// The batch is durable. Publish its checkpoint, then reply with what
	// the state shows now, before the next batch changes it.
	cp := l.publish(ctx, tree)
	for i, p := range accepted {
		p.done <- result{index: indexes[i], reply: l.reply(p.entry, indexes[i], cp, tree)}
	}
}

// reply builds the opening and, when the checkpoint cp of tree was
// published, the proof bundle of a durable key entry. Only the sequencer
// changes the state, and it is calling, so the state is at tree unless a
// raft election reloaded it meanwhile.
func (l *Log) reply(e *curator.Entry, index uint64, cp []byte, tree tlog.Tree) *KeyResponse {
	r := &KeyResponse{ID: e.ID, Index: index, Block: e.Block, Slot: e.Slot}
	if e.Kind == curator.KindRevocation || e.Kind == curator.KindCeremony {
		return r
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	cur, ok := l.state.Lookup(e.ID)
	if l.tree != tree || !ok || cur.Index != index {
		return r
	}
	if b := l.state.Block(e.Block); b != nil {
		r.Opening, _ = b.Opening(int(e.Slot))
		r.BlockDigest, r.BlockVersion = b.Digest(), b.Version()
	}
	if cp != nil {
		if b, err := l.bundleAt(cp, tree, index, l.state.ProveID(e.ID)); err == nil {
			r.Bundle, _ = b.Marshal()
		}
	}
	return r
}

func isChainError(err error) bool {
	var re *curator.RuleError
	return errors.As(err, &re) && (re.Kind == curator.KindRotation || re.Kind == curator.KindRevocation)
}
