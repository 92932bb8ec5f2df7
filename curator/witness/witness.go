// Package witness is a verifying witness for the curator's log. It
// implements the add-checkpoint call of C2SP tlog-witness, and before it
// cosigns a checkpoint (C2SP tlog-cosignature, cosignature/v1) it replays
// every new entry under the curator rules: token signatures against the
// cluster's service-account issuer keys, the RBE helper check, the per-ID
// hash chains, and the recomputed ID-map root and block digests in every
// state entry. Its cosignature therefore states "I replayed entries [0, N)
// under curator rules v1 and they hold", and a quorum of such witnesses
// turns a split view or a rule violation into a stalled curator.
//
// The witness keeps the entries it verified and its latest cosigned
// checkpoint in its own bbolt file. It checks a request and persists the
// result in one bbolt transaction, so a crash cannot make it cosign two
// inconsistent checkpoints.
package witness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
)

// Config configures a Witness.
type Config struct {
	Origin      string        // the log's checkpoint origin
	LogVerifier note.Verifier // the curator's checkpoint key
	Signer      *curator.CosignatureSigner
	Store       *store.Store
	Scheme      curator.Scheme
	JWKS        *curator.JWKS // the service-account issuer keys
	Audience    string        // default curator.DefaultAudience
	CuratorURL  string        // base URL for tiles and token signatures
	HTTP        *http.Client  // default http.DefaultClient
	MaxSkew     time.Duration // how far entry times may run ahead; default 1m
	EvidenceDir string        // rejected requests are kept here; empty keeps none
	Logger      *slog.Logger
	Registry    prometheus.Registerer
	Now         func() time.Time
}

// A Witness verifies and cosigns checkpoints of one log.
type Witness struct {
	cfg    Config
	log    *slog.Logger
	client *curator.Client
	result *prometheus.CounterVec

	mu     sync.Mutex
	state  *curator.State // guarded by mu
	tree   tlog.Tree      // guarded by mu
	latest []byte         // latest cosigned checkpoint, guarded by mu
}

// New opens the witness state in cfg.Store and replays it.
func New(cfg Config) (*Witness, error) {
	if cfg.Origin == "" || cfg.LogVerifier == nil || cfg.Signer == nil || cfg.Store == nil || cfg.Scheme == nil || cfg.JWKS == nil {
		return nil, errors.New("new witness: Origin, LogVerifier, Signer, Store, Scheme and JWKS are required")
	}
	if cfg.Audience == "" {
		cfg.Audience = curator.DefaultAudience
	}
	if cfg.MaxSkew == 0 {
		cfg.MaxSkew = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	w := &Witness{cfg: cfg, log: cfg.Logger, client: &curator.Client{URL: cfg.CuratorURL, HTTP: cfg.HTTP},
		result: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mazu_witness_add_checkpoint_total",
			Help: "add-checkpoint requests by result (cosigned, conflict, bad_signature, inconsistent, rule_violation, error).",
		}, []string{"result"})}
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(w.result)
	}
	if err := w.reload(); err != nil {
		return nil, err
	}
	return w, nil
}

// newState returns an empty state. Replaying its own store, the witness
// skips token signatures: it checked them before storing the entries.
func (w *Witness) newState() *curator.State {
	return curator.NewState(curator.StateConfig{Scheme: w.cfg.Scheme, Audience: w.cfg.Audience})
}

func (w *Witness) tokenCheck(sigs map[uint64][]byte) func(uint64, *curator.Entry) error {
	return func(index uint64, e *curator.Entry) error {
		sig, ok := sigs[index]
		if !ok || len(sig) == 0 {
			return errors.New("token signature missing")
		}
		if curator.IDFromToken(string(e.TokenClaims)+"."+string(sig)) != e.ID {
			return errors.New("ID is not the hash of the token")
		}
		return w.cfg.JWKS.Verify(string(e.TokenClaims), string(sig))
	}
}

// reload replays the witness's own store. Requires mu or exclusive access.
//
// The entries up to the stored checkpoint passed every check before this
// witness cosigned that checkpoint, so they are applied without the RBE
// helper check, the dominant cost of a replay. Any later entry, and every
// entry of the next add-checkpoint request, gets every check.
func (w *Witness) reload() error {
	n, err := w.cfg.Store.Size()
	if err != nil {
		return fmt.Errorf("reload witness state: %w", err)
	}
	cp, err := w.cfg.Store.Checkpoint()
	if err != nil {
		return fmt.Errorf("reload witness state: %w", err)
	}
	cosigned, text := w.storedCheckpoint(cp, n)
	st := w.newState()
	for start := int64(0); start < n; start += 4096 {
		recs, err := w.cfg.Store.Entries(start, min(start+4096, n))
		if err != nil {
			return fmt.Errorf("reload witness state: %w", err)
		}
		for _, r := range recs {
			st.SetSkipKeyCheck(int64(st.Size()) < cosigned)
			if _, err := st.ApplyRecord(r); err != nil {
				return fmt.Errorf("reload witness state: %w", err)
			}
		}
	}
	st.SetSkipKeyCheck(false)
	h, err := tlog.TreeHash(n, w.cfg.Store)
	if err != nil {
		return fmt.Errorf("reload witness state: %w", err)
	}
	w.state, w.tree, w.latest = st, tlog.Tree{N: n, Hash: h}, nil
	if text != "" {
		// Cosign the stored checkpoint again: it is the one this witness
		// last accepted, so the statement is unchanged.
		if c, err := note.Sign(&note.Note{Text: text}, w.cfg.Signer); err == nil {
			w.latest = append(bytes.Clone(cp), c[len(text)+1:]...)
		}
	}
	return nil
}

// storedCheckpoint opens the checkpoint stored with n entries and returns
// its size and note text. It returns 0 and "" for a checkpoint that is
// missing, not signed by the log key, of another origin, or whose root
// the stored entries do not match.
func (w *Witness) storedCheckpoint(cp []byte, n int64) (int64, string) {
	if cp == nil {
		return 0, ""
	}
	opened, err := note.Open(cp, note.VerifierList(w.cfg.LogVerifier))
	if err != nil {
		w.log.Warn("stored checkpoint does not verify under the log key", "err", err)
		return 0, ""
	}
	origin, tree, err := curator.ParseCheckpoint(opened.Text)
	if err != nil || origin != w.cfg.Origin || tree.N > n {
		w.log.Warn("stored checkpoint does not match the stored entries", "size", tree.N, "entries", n, "err", err)
		return 0, ""
	}
	if h, err := tlog.TreeHash(tree.N, w.cfg.Store); err != nil || h != tree.Hash {
		w.log.Warn("stored checkpoint root does not match the stored entries", "size", tree.N, "err", err)
		return 0, ""
	}
	return tree.N, opened.Text
}

// Handler serves POST /add-checkpoint, GET /checkpoint (the latest
// checkpoint this witness cosigned) and GET /healthz/ready.
func (w *Witness) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /add-checkpoint", w.handleAdd)
	mux.HandleFunc("GET /healthz/ready", func(rw http.ResponseWriter, r *http.Request) {
		rw.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /checkpoint", func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		cp := w.latest
		w.mu.Unlock()
		if cp == nil {
			http.Error(rw, "no checkpoint cosigned yet", http.StatusNotFound)
			return
		}
		rw.Write(cp)
	})
	return mux
}

// A requestError carries the HTTP status the C2SP witness protocol
// assigns to a failure.
type requestError struct {
	code   int
	result string
	err    error
}

func (e *requestError) Error() string { return e.err.Error() }
func (e *requestError) Unwrap() error { return e.err }

func (w *Witness) handleAdd(rw http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(rw, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	line, err := w.AddCheckpoint(r.Context(), body)
	if err != nil {
		var re *requestError
		if !errors.As(err, &re) {
			re = &requestError{code: http.StatusInternalServerError, result: "error", err: err}
		}
		w.result.WithLabelValues(re.result).Inc()
		if re.code == http.StatusConflict {
			rw.Header().Set("Content-Type", "text/x.tlog.size")
			w.mu.Lock()
			n := w.tree.N
			w.mu.Unlock()
			rw.WriteHeader(http.StatusConflict)
			fmt.Fprintf(rw, "%d\n", n)
			return
		}
		http.Error(rw, err.Error(), re.code)
		return
	}
	w.result.WithLabelValues("cosigned").Inc()
	rw.Write(line)
}

// ParseAddCheckpoint parses a C2SP add-checkpoint body: "old <size>", up to
// 63 consistency-proof lines, a blank line, and the signed checkpoint.
func ParseAddCheckpoint(body []byte) (old int64, proof tlog.TreeProof, signed []byte, err error) {
	bad := errors.New("malformed add-checkpoint body")
	head, signed, ok := bytes.Cut(body, []byte("\n\n"))
	if !ok {
		return 0, nil, nil, bad
	}
	sc := bufio.NewScanner(bytes.NewReader(head))
	if !sc.Scan() {
		return 0, nil, nil, bad
	}
	s, ok := strings.CutPrefix(sc.Text(), "old ")
	old, err = strconv.ParseInt(s, 10, 64)
	if !ok || err != nil || old < 0 || strconv.FormatInt(old, 10) != s {
		return 0, nil, nil, bad
	}
	for sc.Scan() {
		h, err := curator.DecodeBase64(sc.Text())
		if err != nil || len(h) != tlog.HashSize || len(proof) == 63 {
			return 0, nil, nil, bad
		}
		proof = append(proof, tlog.Hash(h))
	}
	return old, proof, signed, nil
}

// AddCheckpoint runs the add-checkpoint call and returns the cosignature
// line to send back.
func (w *Witness) AddCheckpoint(ctx context.Context, body []byte) ([]byte, error) {
	old, proof, signed, err := ParseAddCheckpoint(body)
	if err != nil {
		return nil, &requestError{http.StatusBadRequest, "error", err}
	}
	n, err := note.Open(signed, note.VerifierList(w.cfg.LogVerifier))
	if err != nil {
		return nil, &requestError{http.StatusForbidden, "bad_signature", fmt.Errorf("open checkpoint: %w", err)}
	}
	origin, tree, err := curator.ParseCheckpoint(n.Text)
	if err != nil {
		return nil, &requestError{http.StatusBadRequest, "error", fmt.Errorf("parse checkpoint: %w", err)}
	}
	if origin != w.cfg.Origin {
		return nil, &requestError{http.StatusNotFound, "error", fmt.Errorf("unknown origin %q", origin)}
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if old != w.tree.N {
		return nil, &requestError{http.StatusConflict, "conflict", fmt.Errorf("old size %d, witness is at %d", old, w.tree.N)}
	}
	if err := w.checkConsistent(old, proof, tree); err != nil {
		w.keepEvidence("inconsistent", body, err)
		return nil, &requestError{http.StatusUnprocessableEntity, "inconsistent", err}
	}
	if tree.N > old {
		if err := w.replay(ctx, tree, body); err != nil {
			return nil, err
		}
	}
	cosigned, err := note.Sign(&note.Note{Text: n.Text}, w.cfg.Signer)
	if err != nil {
		return nil, fmt.Errorf("cosign: %w", err)
	}
	line := cosigned[len(n.Text)+1:]
	full := append(bytes.Clone(signed), line...)
	if tree.N == old {
		if err := w.cfg.Store.SetCheckpoint(full); err != nil {
			return nil, fmt.Errorf("store checkpoint: %w", err)
		}
	}
	w.latest = full
	return line, nil
}

func (w *Witness) checkConsistent(old int64, proof tlog.TreeProof, tree tlog.Tree) error {
	switch {
	case tree.N < old:
		return fmt.Errorf("checkpoint size %d is smaller than the cosigned size %d", tree.N, old)
	case tree.N == old:
		if tree.Hash != w.tree.Hash {
			return fmt.Errorf("checkpoint of size %d has root %v, cosigned root is %v", tree.N, tree.Hash, w.tree.Hash)
		}
		return nil
	case old == 0:
		return nil
	}
	if err := tlog.CheckTree(proof, tree.N, tree.Hash, old, w.tree.Hash); err != nil {
		return fmt.Errorf("consistency proof %d→%d: %w", old, tree.N, err)
	}
	return nil
}

// replay fetches, verifies and applies entries [w.tree.N, tree.N), then
// persists them with the new checkpoint in one transaction.
func (w *Witness) replay(ctx context.Context, tree tlog.Tree, body []byte) error {
	old := w.tree.N
	entries, err := w.client.Entries(ctx, tree, old, tree.N)
	if err != nil {
		return &requestError{http.StatusServiceUnavailable, "error", fmt.Errorf("fetch entries: %w", err)}
	}
	sigs, err := w.fetchTokenSigs(ctx, old, tree.N)
	if err != nil {
		return &requestError{http.StatusServiceUnavailable, "error", fmt.Errorf("fetch token signatures: %w", err)}
	}
	// Apply to a fresh view of the rules that checks token signatures.
	st := w.state
	restore := func() {
		if err := w.reload(); err != nil {
			w.log.Error("reload witness state after a rejected checkpoint", "err", err)
		}
	}
	st.SetTokenSignatureCheck(w.tokenCheck(sigs))
	defer st.SetTokenSignatureCheck(nil)
	maxMS := uint64(w.cfg.Now().Add(w.cfg.MaxSkew).UnixMilli())
	for _, data := range entries {
		e, err := st.ApplyRecord(data)
		if err == nil && e.TimestampMS > maxMS {
			err = fmt.Errorf("entry %d has timestamp %d ms, beyond the witness clock", st.Size()-1, e.TimestampMS)
		}
		if err != nil {
			restore()
			w.keepEvidence("rule-violation", body, err)
			return &requestError{http.StatusUnprocessableEntity, "rule_violation", err}
		}
	}
	if st.BatchStart() != uint64(tree.N) {
		restore()
		err := fmt.Errorf("checkpoint size %d does not end a batch", tree.N)
		w.keepEvidence("rule-violation", body, err)
		return &requestError{http.StatusUnprocessableEntity, "rule_violation", err}
	}
	// Persist entries and checkpoint atomically; the cosignature itself
	// is recomputed on reload from the stored checkpoint.
	signed := body[bytes.Index(body, []byte("\n\n"))+2:]
	if _, err := w.cfg.Store.Append(&store.Batch{Start: old, Entries: entries, Checkpoint: signed}); err != nil {
		restore()
		return fmt.Errorf("persist witness state: %w", err)
	}
	w.tree = tree
	return nil
}

// tokenSigChunk is the number of entries per token-signature request. The
// curator serves at most 65,536 entries per request, and the client reads
// at most 16 MiB per response, which holds 4,096 signatures of up to
// 4,000 bytes each (an RS256 signature takes 342).
var tokenSigChunk int64 = 4096

// fetchTokenSigs fetches the token signatures of entries [start, end) in
// requests of tokenSigChunk entries, so a witness far behind the log, or
// one that joins a large log, can catch up.
func (w *Witness) fetchTokenSigs(ctx context.Context, start, end int64) (map[uint64][]byte, error) {
	out := map[uint64][]byte{}
	for from := start; from < end; from += tokenSigChunk {
		to := min(from+tokenSigChunk, end)
		auth := curator.TokenSignatureAuth(w.cfg.Signer, from, to, w.cfg.Now())
		b, err := w.client.Get(ctx, fmt.Sprintf("v1/token-signatures?start=%d&end=%d", from, to),
			http.Header{"Mazu-Witness-Auth": {auth}})
		if err != nil {
			return nil, err
		}
		if err := curator.ParseTokenSigs(b, from, to, out); err != nil {
			return nil, fmt.Errorf("token signatures [%d, %d): %w", from, to, err)
		}
	}
	return out, nil
}

// keepEvidence stores a rejected request, which the C2SP witness spec
// allows, so an operator can prove the curator's misbehaviour.
func (w *Witness) keepEvidence(kind string, body []byte, cause error) {
	w.log.Warn("checkpoint rejected", "reason", kind, "err", cause)
	if w.cfg.EvidenceDir == "" {
		return
	}
	sum := sha256.Sum256(body)
	name := fmt.Sprintf("%s-%d-%x.txt", kind, w.cfg.Now().UnixNano(), sum[:4])
	content := fmt.Appendf(nil, "error: %v\nwitness size: %d\nwitness root: %v\nwitness checkpoint:\n%s\nrequest:\n%s",
		cause, w.tree.N, w.tree.Hash, w.latest, body)
	if err := os.WriteFile(filepath.Join(w.cfg.EvidenceDir, name), content, 0o600); err != nil {
		w.log.Error("keep evidence", "err", err)
	}
}

// Latest returns the latest checkpoint this witness cosigned.
func (w *Witness) Latest() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.latest
}
