// Package rogue runs the demo's curator: an honest curator with two
// verifying witnesses, plus the misbehaviour of a compromised one, so the
// demo and the threat-model tests can show the defences firing. Only the
// demo and tests import it; no production binary links it.
//
// Every client reaches the curator through a front door, one per client,
// whose target the demo can switch. That is how a split view works: the
// curator serves each client the log it chooses to show that client.
package rogue

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
	"k8s.io/client-go/kubernetes"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/rbescheme"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
	"github.com/mazu-mesh/mazu-ztunnel/curator/witness"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
)

// Origin is the demo log's checkpoint origin.
const Origin = "mazu.demo/registrations"

// Options configures Start.
type Options struct {
	Client kubernetes.Interface
	Dir    string
	// Fronts names the front doors to open, one per client (such as each
	// node's agent). The witnesses get a front of their own.
	Fronts []string
	Logger *slog.Logger
}

// Curator is the demo's curator, its witnesses and its front doors.
type Curator struct {
	// Files the agents read.
	CRSFile, LogKeyFile string
	WitnessKeyFiles     []string
	EvidenceDirs        []string
	LogVKey             string
	WitnessVKeys        []string
	CRS                 *rbe.CRS
	Policy              *curator.Policy

	opts      Options
	scheme    curator.Scheme
	signer    note.Signer
	store     *store.Store
	log       *server.Log
	witnesses []server.Witness
	// cosigners are the witnesses' keys. The curator keeps them only to
	// play witnesses that collude with it (see Collude).
	cosigners []*curator.CosignatureSigner
	fronts    map[string]*front
	servers   []*http.Server
	closers   []func()
	mu        sync.Mutex
}

// front is a front door whose handler can be switched.
type front struct {
	url string
	h   atomic.Pointer[http.Handler]
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) { (*f.h.Load()).ServeHTTP(w, r) }
func (f *front) set(h http.Handler)                               { f.h.Store(&h) }

// witnessFront names the front door the witnesses read entries through.
const witnessFront = "witnesses"

// Start starts the curator and two witnesses on 127.0.0.1.
func Start(ctx context.Context, opts Options) (_ *Curator, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Curator{opts: opts, fronts: map[string]*front{}}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create the curator's folder: %w", err)
	}
	start, err := rbe.NewCeremony(16)
	if err != nil {
		return nil, err
	}
	if c.CRS, _, err = rbe.Contribute(start, rand.Reader); err != nil {
		return nil, fmt.Errorf("CRS ceremony: %w", err)
	}
	crsBytes, err := c.CRS.MarshalBinary()
	if err != nil {
		return nil, err
	}
	c.CRSFile = filepath.Join(opts.Dir, "crs.bin")
	if err := os.WriteFile(c.CRSFile, crsBytes, 0o644); err != nil {
		return nil, err
	}
	c.scheme = rbescheme.New(c.CRS)
	skey, vkey, err := note.GenerateKey(rand.Reader, Origin)
	if err != nil {
		return nil, err
	}
	c.LogVKey = vkey
	c.LogKeyFile = filepath.Join(opts.Dir, "log.vkey")
	if err := os.WriteFile(c.LogKeyFile, []byte(vkey), 0o644); err != nil {
		return nil, err
	}
	if c.signer, err = note.NewSigner(skey); err != nil {
		return nil, err
	}
	logVerifier, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	for _, name := range append([]string{witnessFront}, opts.Fronts...) {
		f := &front{}
		f.set(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "curator starting", http.StatusServiceUnavailable)
		}))
		if f.url, err = c.serve(f); err != nil {
			return nil, err
		}
		c.fronts[name] = f
	}
	jwksRaw, err := opts.Client.CoreV1().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("read issuer JWKS: %w", err)
	}
	jwks, err := curator.ParseJWKS(jwksRaw)
	if err != nil {
		return nil, err
	}
	for i := range 2 {
		_, key, _ := ed25519.GenerateKey(rand.Reader)
		cosigner := curator.NewCosignatureSigner(fmt.Sprintf("witness-%d.mazu.demo", i), key)
		c.cosigners = append(c.cosigners, cosigner)
		st, err := c.openStore(fmt.Sprintf("witness-%d.db", i))
		if err != nil {
			return nil, err
		}
		evidence := filepath.Join(opts.Dir, fmt.Sprintf("witness-%d-evidence", i))
		if err := os.MkdirAll(evidence, 0o755); err != nil {
			return nil, err
		}
		w, err := witness.New(witness.Config{
			Origin: Origin, LogVerifier: logVerifier, Signer: cosigner, Store: st, Scheme: c.scheme,
			JWKS: jwks, CuratorURL: c.fronts[witnessFront].url, EvidenceDir: evidence, Logger: opts.Logger,
		})
		if err != nil {
			return nil, err
		}
		url, err := c.serve(w.Handler())
		if err != nil {
			return nil, err
		}
		verifier, err := curator.NewCosignatureVerifier(cosigner.VerifierKey())
		if err != nil {
			return nil, err
		}
		c.witnesses = append(c.witnesses, server.Witness{URL: url, Verifier: verifier})
		c.WitnessVKeys = append(c.WitnessVKeys, cosigner.VerifierKey())
		keyFile := filepath.Join(opts.Dir, fmt.Sprintf("witness-%d.vkey", i))
		if err := os.WriteFile(keyFile, []byte(cosigner.VerifierKey()), 0o644); err != nil {
			return nil, err
		}
		c.WitnessKeyFiles = append(c.WitnessKeyFiles, keyFile)
		c.EvidenceDirs = append(c.EvidenceDirs, evidence)
	}
	if c.store, err = c.openStore("curator.db"); err != nil {
		return nil, err
	}
	if c.log, err = c.newLog(c.store); err != nil {
		return nil, err
	}
	for _, f := range c.fronts {
		f.set(c.log.Handler())
	}
	if c.Policy, err = curator.NewPolicy(Origin, vkey, c.WitnessVKeys, 0); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Curator) openStore(name string) (*store.Store, error) {
	st, err := store.Open(filepath.Join(c.opts.Dir, name))
	if err != nil {
		return nil, err
	}
	c.closers = append(c.closers, func() { st.Close() })
	return st, nil
}

func (c *Curator) newLog(st *store.Store) (*server.Log, error) {
	l, err := server.New(server.Config{
		Origin: Origin, Signer: c.signer, VerifierKey: c.LogVKey, Store: st, Scheme: c.scheme,
		Reviewer:  &server.KubeReviewer{Client: c.opts.Client, Audience: curator.DefaultAudience},
		Witnesses: c.witnesses, WitnessTimeout: 10 * time.Second, Logger: c.opts.Logger,
	})
	if err != nil {
		return nil, err
	}
	// Closers run in reverse order, so the log stops before its store.
	c.closers = append(c.closers, l.Close)
	return l, nil
}

func (c *Curator) serve(h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("curator listener: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	c.servers = append(c.servers, srv)
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), nil
}

// URL returns the address of a front door.
func (c *Curator) URL(front string) string { return c.fronts[front].url }

// Client returns a client of the honest log.
func (c *Curator) Client() *curator.Client { return &curator.Client{URL: c.fronts[witnessFront].url} }

// Size returns the size of the honest log's published checkpoint.
func (c *Curator) Size(ctx context.Context) (int64, error) {
	raw, err := c.Client().Checkpoint(ctx)
	if err != nil {
		return 0, err
	}
	cp, err := c.Policy.Open(raw, time.Now())
	if err != nil {
		return 0, err
	}
	return cp.Tree.N, nil
}

// Stop closes the servers, logs and stores.
func (c *Curator) Stop() {
	for _, srv := range c.servers {
		srv.Close()
	}
	for i := len(c.closers) - 1; i >= 0; i-- {
		c.closers[i]()
	}
}

// Rejection is a witness's reply to a checkpoint it did not cosign.
type Rejection struct {
	Witness string
	Status  int
	Body    string
}

// ReRegistration is the outcome of ReRegister.
type ReRegistration struct {
	Index      int64
	Rejections []Rejection
	Cosigned   int
	Evidence   []string
	// Key is the attacker's TLS key, which the rogue entry binds. Token is
	// the victim's token, which the curator rebuilds from the logged claims
	// and the signature it keeps for the witnesses.
	Key   *ecdsa.PrivateKey
	Token string
	// View is the rogue copy of the log with the second registration. Its
	// checkpoint carries the log signature alone until Collude adds the
	// witnesses' cosignatures.
	View *View
}

// ReRegister plays a curator that re-registers an ID. It copies the log and
// appends a second registration of id in the ID's own slot, bound to podIP
// and a new attacker TLS key, and a state entry whose ID map points id at
// it. Then it signs the new checkpoint with the log key and requests the
// witnesses' cosignatures. The witnesses read the entries through their
// front door, which serves the rogue copy meanwhile.
func (c *Curator) ReRegister(ctx context.Context, id curator.ID, podIP netip.Addr) (*ReRegistration, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rogueStore, st, entries, err := c.replayCopy("rogue-reregister")
	if err != nil {
		return nil, err
	}
	n := int64(len(entries))
	first, ok := st.Lookup(id)
	if !ok {
		return nil, fmt.Errorf("ID %v is not registered; nothing to re-register", id)
	}
	orig, err := curator.ParseEntry(entries[first.Index])
	if err != nil {
		return nil, err
	}
	sigs, err := rogueStore.TokenSigs(int64(first.Index), int64(first.Index)+1)
	if err != nil {
		return nil, err
	}

	// The curator keeps each token's signature for the witnesses, so it
	// holds the whole token. It builds the attacker's RBE key from that
	// token, as an honest registration would be built, in the ID's own
	// slot, so the rogue state entry needs no new block digest.
	token := string(orig.TokenClaims) + "." + string(sigs[0])
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	block, slot := first.Block, first.Slot
	sk, err := rbe.DeriveSecretKey([]byte(token), podIP.AsSlice(), spki)
	if err != nil {
		return nil, err
	}
	pk, err := c.CRS.KeyGen(sk, int(slot))
	if err != nil {
		return nil, err
	}
	rbeKey, err := pk.MarshalBinary()
	if err != nil {
		return nil, err
	}
	ms := max(uint64(time.Now().UnixMilli()), st.LastTimestamp())
	e := &curator.Entry{Kind: curator.KindRegistration, TimestampMS: ms, ID: id, PrevIndex: curator.NoPrev,
		Block: block, Slot: slot, RBEKey: rbeKey, TLSKey: spki, PodIP: podIP.AsSlice(), TokenClaims: orig.TokenClaims}
	if e.PoPSig, err = curator.SignPoP(key, curator.PoPMessage(e)); err != nil {
		return nil, err
	}
	reg, err := e.Marshal()
	if err != nil {
		return nil, err
	}

	tree, mt, current, err := appendRogueRegistration(rogueStore, st, entries, reg, sigs[0], ms)
	if err != nil {
		return nil, err
	}
	signed, err := c.sign(tree)
	if err != nil {
		return nil, err
	}

	out := &ReRegistration{Index: n, Key: key, Token: token}
	c.fronts[witnessFront].set(rawLog(rogueStore, tree.N))
	defer c.fronts[witnessFront].set(c.log.Handler())
	out.Rejections, out.Cosigned, err = c.askWitnesses(ctx, rogueStore, tree, n, signed)
	if err != nil {
		return nil, err
	}
	out.Evidence = evidenceFiles(c.EvidenceDirs, "rule-violation-")
	out.View = &View{c: c, store: rogueStore, tree: tree, checkpoint: signed, state: st, ids: mt, current: current}
	return out, nil
}

// replayCopy copies the honest log into a new store named after prefix and
// replays it into a state that skips key checks, as a rogue curator that
// writes entries the rules reject must.
func (c *Curator) replayCopy(prefix string) (*store.Store, *curator.State, [][]byte, error) {
	n, err := c.store.Size()
	if err != nil {
		return nil, nil, nil, err
	}
	rogueStore, err := c.copyStore(fmt.Sprintf("%s-%d.db", prefix, time.Now().UnixNano()), n)
	if err != nil {
		return nil, nil, nil, err
	}
	st := curator.NewState(curator.StateConfig{Scheme: c.scheme, SkipKeyCheck: true})
	entries, err := rogueStore.Entries(0, n)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, data := range entries {
		if _, err := st.ApplyRecord(data); err != nil {
			return nil, nil, nil, fmt.Errorf("replay the log: %w", err)
		}
	}
	return rogueStore, st, entries, nil
}

// appendRogueRegistration appends reg after entries in rogueStore, with a
// state entry of the rogue curator's own making. The rules reject reg, so
// no state entry computed under them can include it. The rogue one keeps
// the honest blocks and has an ID map that points reg's ID at it. It
// returns the new tree, the ID map and each ID's current entry.
func appendRogueRegistration(rogueStore *store.Store, st *curator.State, entries [][]byte, reg, tokenSig []byte, ms uint64) (tlog.Tree, *curator.MapTree, map[curator.ID]uint64, error) {
	mt, current, err := idMap(append(entries, reg))
	if err != nil {
		return tlog.Tree{}, nil, nil, err
	}
	state := st.NextState(ms)
	state.MapRoot = mt.Root()
	stateEntry, err := state.Marshal()
	if err != nil {
		return tlog.Tree{}, nil, nil, err
	}
	batch := &store.Batch{Start: int64(len(entries)), Entries: [][]byte{reg, stateEntry}, TokenSigs: [][]byte{tokenSig, nil}}
	tree, err := rogueStore.Append(batch)
	if err != nil {
		return tlog.Tree{}, nil, nil, err
	}
	return tree, mt, current, nil
}

// copyStore copies the honest log's first n entries into a new store.
func (c *Curator) copyStore(name string, n int64) (*store.Store, error) {
	st, err := c.openStore(name)
	if err != nil {
		return nil, err
	}
	entries, err := c.store.Entries(0, n)
	if err != nil {
		return nil, err
	}
	sigs, err := c.store.TokenSigs(0, n)
	if err != nil {
		return nil, err
	}
	if _, err := st.Append(&store.Batch{Start: 0, Entries: entries, TokenSigs: sigs}); err != nil {
		return nil, fmt.Errorf("copy the log: %w", err)
	}
	return st, nil
}

// sign signs a checkpoint of tree with the log key.
func (c *Curator) sign(tree tlog.Tree) ([]byte, error) {
	return note.Sign(&note.Note{Text: string(curator.FormatCheckpoint(Origin, tree))}, c.signer)
}

// Collude adds every witness's cosignature to a checkpoint that the log
// key signed. It plays witnesses that cosign without replaying the entries
// or comparing the checkpoint with the last one they cosigned.
func (c *Curator) Collude(signed []byte) ([]byte, error) {
	n, err := note.Open(signed, note.VerifierList(c.Policy.Log))
	if err != nil {
		return nil, fmt.Errorf("collude: open the checkpoint: %w", err)
	}
	out := bytes.Clone(signed)
	for _, w := range c.cosigners {
		cosigned, err := note.Sign(&note.Note{Text: n.Text}, w)
		if err != nil {
			return nil, fmt.Errorf("collude: cosign as %s: %w", w.Name(), err)
		}
		out = append(out, cosigned[len(n.Text)+1:]...)
	}
	return out, nil
}

// askWitnesses sends signed, a checkpoint of tree, to each witness with old
// as the witnesses' size. It returns the rejections and the number of
// cosignatures.
func (c *Curator) askWitnesses(ctx context.Context, st *store.Store, tree tlog.Tree, old int64, signed []byte) ([]Rejection, int, error) {
	var proof tlog.TreeProof
	var err error
	if old > 0 && old < tree.N {
		if proof, err = tlog.ProveTree(tree.N, old, st); err != nil {
			return nil, 0, err
		}
	}
	var rejections []Rejection
	cosigned := 0
	for _, w := range c.witnesses {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL+"/add-checkpoint",
			strings.NewReader(string(server.AddCheckpointBody(old, proof, signed))))
		if err != nil {
			return nil, 0, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, 0, fmt.Errorf("ask witness %s: %w", w.URL, err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			cosigned++
			continue
		}
		rejections = append(rejections, Rejection{Witness: w.Verifier.Name(), Status: resp.StatusCode, Body: strings.TrimSpace(string(body))})
	}
	return rejections, cosigned, nil
}

// Fork is the outcome of StartFork.
type Fork struct {
	Base, Size int64
	Rejections []Rejection
	Evidence   []string
	// Checkpoint is fork B's checkpoint as served, with the witnesses'
	// cosignatures when they collude.
	Checkpoint []byte

	st     *store.Store
	tree   tlog.Tree
	signed []byte // the checkpoint with the log signature alone
}

// StartFork plays a curator that keeps a second history. Fork B shares the
// honest log's first base entries, then takes the registrations that
// register sends to its URL until it is at least as long as the honest log.
// The witnesses reject it. Fork B's checkpoint, signed by the log key alone,
// is then served through the front door named frontName.
func (c *Curator) StartFork(ctx context.Context, base int64, frontName string, register func(ctx context.Context, forkURL string) error) (*Fork, error) {
	return c.startFork(ctx, base, frontName, register, false)
}

// StartColludingFork is StartFork with witnesses that collude: after the
// honest witnesses refuse fork B, its checkpoint gets every witness's
// cosignature anyway (see Collude), as if the witnesses equivocated. The
// front door then serves a fork that meets the quorum.
func (c *Curator) StartColludingFork(ctx context.Context, base int64, frontName string, register func(ctx context.Context, forkURL string) error) (*Fork, error) {
	return c.startFork(ctx, base, frontName, register, true)
}

func (c *Curator) startFork(ctx context.Context, base int64, frontName string, register func(ctx context.Context, forkURL string) error, collude bool) (*Fork, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.copyStore(fmt.Sprintf("fork-b-%d.db", time.Now().UnixNano()), base)
	if err != nil {
		return nil, err
	}
	forkLog, err := c.newLog(st)
	if err != nil {
		return nil, err
	}
	forkURL, err := c.serve(forkLog.Handler())
	if err != nil {
		return nil, err
	}

	honest, err := c.store.Size()
	if err != nil {
		return nil, err
	}
	for i := 0; ; i++ {
		n, err := st.Size()
		if err != nil {
			return nil, err
		}
		// Fork B takes at least one entry of its own, so it differs from
		// the honest log even when that has not grown since base.
		if n >= honest && n > base {
			break
		}
		if i == 20 {
			return nil, fmt.Errorf("fork B stays at %d entries, behind the honest log's %d", n, honest)
		}
		if err := register(ctx, forkURL); err != nil {
			return nil, fmt.Errorf("register in fork B: %w", err)
		}
	}
	n, err := st.Size()
	if err != nil {
		return nil, err
	}
	hash, err := tlog.TreeHash(n, st)
	if err != nil {
		return nil, err
	}
	tree := tlog.Tree{N: n, Hash: hash}

	out := &Fork{Base: base, Size: n, st: st, tree: tree}
	// The fork's log requested cosignatures as it grew. Request them once
	// more with the witnesses' size, so that the rejection is on record here.
	signed, err := c.sign(tree)
	if err != nil {
		return nil, err
	}
	out.signed = signed
	if out.Rejections, _, err = c.askWitnesses(ctx, st, tree, honest, signed); err != nil {
		return nil, err
	}
	if collude {
		if signed, err = c.Collude(signed); err != nil {
			return nil, err
		}
	}
	if err := st.SetCheckpoint(signed); err != nil {
		return nil, err
	}
	if err := forkLog.Reload(); err != nil {
		return nil, err
	}
	out.Checkpoint = signed
	out.Evidence = evidenceFiles(c.EvidenceDirs, "inconsistent-")
	c.fronts[frontName].set(forkLog.Handler())
	return out, nil
}

// AskWitnesses requests the witnesses' cosignatures for fork B again, with
// the honest log's current size as theirs, and updates f.Rejections and
// f.Evidence. A fork shown before the honest log grew is refused only once
// the witnesses cosigned the honest growth: until then fork B extends what
// they cosigned, and they fail to fetch its entries from the honest log.
func (c *Curator) AskWitnesses(ctx context.Context, f *Fork) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	honest, err := c.store.Size()
	if err != nil {
		return err
	}
	if f.Rejections, _, err = c.askWitnesses(ctx, f.st, f.tree, honest, f.signed); err != nil {
		return err
	}
	f.Evidence = evidenceFiles(c.EvidenceDirs, "inconsistent-")
	return nil
}

func evidenceFiles(dirs []string, prefix string) []string {
	var out []string
	for _, dir := range dirs {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), prefix) {
				out = append(out, filepath.Join(dir, e.Name()))
			}
		}
	}
	return out
}

// rawLog serves the tiles and token signatures of a store up to size n,
// which is all a witness reads before it cosigns.
func rawLog(st *store.Store, n int64) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /tile/", func(w http.ResponseWriter, r *http.Request) {
		t, err := curator.ParseTilePath(strings.TrimPrefix(r.URL.Path, "/"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		data, err := curator.ReadTile(st, st, n, t)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(data)
	})
	mux.HandleFunc("GET /v1/token-signatures", func(w http.ResponseWriter, r *http.Request) {
		start, err1 := strconv.ParseInt(r.URL.Query().Get("start"), 10, 64)
		end, err2 := strconv.ParseInt(r.URL.Query().Get("end"), 10, 64)
		if err := errors.Join(err1, err2); err != nil || start < 0 || end < start || end > n {
			http.Error(w, "bad range", http.StatusBadRequest)
			return
		}
		sigs, err := st.TokenSigs(start, end)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Write(curator.AppendTokenSigs(nil, sigs))
	})
	return mux
}

// RegisterUnderCRS plays a curator that handed some agents a CRS of its own
// making. It registers token, bound to podIP and a new TLS key, with an RBE
// key made under crs instead of the ceremony's CRS. It appends the
// registration and a state entry to a copy of the log and requests the
// witnesses' cosignatures, which they reject because the key does not
// check under the logged CRS.
func (c *Curator) RegisterUnderCRS(ctx context.Context, token string, podIP netip.Addr, crs *rbe.CRS) (*ReRegistration, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	claims, sig, ok := cutLast(token, ".")
	if !ok {
		return nil, errors.New("register under a foreign CRS: the token is not a compact JWS")
	}
	rogueStore, st, entries, err := c.replayCopy("rogue-crs")
	if err != nil {
		return nil, err
	}
	n := int64(len(entries))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	block, slot := st.GlobalSlot(st.SlotEnd())
	sk, err := rbe.DeriveSecretKey([]byte(token), podIP.AsSlice(), spki)
	if err != nil {
		return nil, err
	}
	pk, err := crs.KeyGen(sk, int(slot))
	if err != nil {
		return nil, err
	}
	rbeKey, err := pk.MarshalBinary()
	if err != nil {
		return nil, err
	}
	ms := max(uint64(time.Now().UnixMilli()), st.LastTimestamp())
	e := &curator.Entry{Kind: curator.KindRegistration, TimestampMS: ms, ID: curator.IDFromToken(token), PrevIndex: curator.NoPrev,
		Block: block, Slot: slot, RBEKey: rbeKey, TLSKey: spki, PodIP: podIP.AsSlice(), TokenClaims: []byte(claims)}
	if e.PoPSig, err = curator.SignPoP(key, curator.PoPMessage(e)); err != nil {
		return nil, err
	}
	reg, err := e.Marshal()
	if err != nil {
		return nil, err
	}
	tree, _, _, err := appendRogueRegistration(rogueStore, st, entries, reg, []byte(sig), ms)
	if err != nil {
		return nil, err
	}
	signed, err := c.sign(tree)
	if err != nil {
		return nil, err
	}
	out := &ReRegistration{Index: n, Key: key, Token: token}
	c.fronts[witnessFront].set(rawLog(rogueStore, tree.N))
	defer c.fronts[witnessFront].set(c.log.Handler())
	out.Rejections, out.Cosigned, err = c.askWitnesses(ctx, rogueStore, tree, n, signed)
	if err != nil {
		return nil, err
	}
	out.Evidence = evidenceFiles(c.EvidenceDirs, "rule-violation-")
	return out, nil
}

// cutLast slices s around the last sep.
func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}
