package witness_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/fakerbe"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
	"github.com/mazu-mesh/mazu-ztunnel/curator/witness"
)

var scheme = fakerbe.Scheme{N: 8}

func fakeKey(slot int) ([]byte, []byte, error) {
	pk := make([]byte, 32)
	rand.Read(pk)
	return pk, scheme.Helpers(slot, pk), nil
}

// TestWitnessStatePersists reopens a witness from its store: it keeps its
// size and root, replies 409 to a stale old size, and rejects a
// checkpoint of the same size with another root, and rejects a
// checkpoint without the log signature.
func TestWitnessStatePersists(t *testing.T) {
	is := curatortest.NewIssuer(t)
	c := curatortest.Start(t, curatortest.Options{Witnesses: 1, Scheme: scheme, Reviewer: is, JWKS: is.JWKS()})
	for i := range 3 {
		ip := netip.AddrFrom4([4]byte{10, 3, 0, byte(i)})
		w := curatortest.NewWorkload(t, is.Token(is.AddPod("default", "p", ip), curator.DefaultAudience, time.Now(), 10*time.Minute), ip)
		if _, err := c.Register(t.Context(), w, fakeKey); err != nil {
			t.Fatal(err)
		}
	}
	cp, err := c.Client.Checkpoint(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	opened, err := c.Policy.Open(cp, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	// Copy the witness's state into a new store and reopen it there.
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "w.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	n, _ := c.Store.Size()
	entries, _ := c.Store.Entries(0, n)
	if _, err := st.Append(&store.Batch{Start: 0, Entries: entries, Checkpoint: stripCosignatures(t, cp)}); err != nil {
		t.Fatal(err)
	}
	jwks, _ := curator.ParseJWKS(is.JWKS())
	lv, _ := note.NewVerifier(c.Key.VKey)
	w, err := witness.New(witness.Config{Origin: curatortest.Origin, LogVerifier: lv, Signer: c.WitnessKeys[0], Store: st,
		Scheme: scheme, JWKS: jwks, CuratorURL: c.URL})
	if err != nil {
		t.Fatal(err)
	}
	latest := w.Latest()
	if !strings.HasPrefix(string(latest), string(stripCosignatures(t, cp))) || len(latest) == len(stripCosignatures(t, cp)) {
		t.Fatalf("reopened witness latest checkpoint = %q, want the stored one with a fresh cosignature", latest)
	}
	srv := httptest.NewServer(w.Handler())
	defer srv.Close()
	post := func(body []byte) (int, string) {
		resp, err := http.Post(srv.URL+"/add-checkpoint", "text/plain", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b := make([]byte, 512)
		k, _ := resp.Body.Read(b)
		return resp.StatusCode, string(b[:k])
	}
	signed := stripCosignatures(t, cp)
	if code, body := post(addBody(0, signed)); code != 409 || strings.TrimSpace(body) != strconv.FormatInt(opened.Tree.N, 10) {
		t.Errorf("add-checkpoint with old 0 = %d %q, want 409 and the size %d", code, body, opened.Tree.N)
	}
	// Same size, other root: a fork.
	signer, _ := note.NewSigner(c.Key.Signer)
	other := tlog.Tree{N: opened.Tree.N, Hash: tlog.Hash{1}}
	forged, _ := note.Sign(&note.Note{Text: string(curator.FormatCheckpoint(curatortest.Origin, other))}, signer)
	if code, _ := post(addBody(opened.Tree.N, forged)); code != 422 {
		t.Errorf("add-checkpoint of a same-size fork = %d, want 422", code)
	}
	// Not signed by the log key.
	if code, _ := post(addBody(opened.Tree.N, []byte(string(curator.FormatCheckpoint(curatortest.Origin, other))+"\n— x AAAA\n"))); code != 403 {
		t.Errorf("add-checkpoint without the log signature = %d, want 403", code)
	}
}

func addBody(old int64, signed []byte) []byte {
	return []byte("old " + strconv.FormatInt(old, 10) + "\n\n" + string(signed))
}

// stripCosignatures returns the note with the log signature only.
func stripCosignatures(t *testing.T, cp []byte) []byte {
	text, sigs, ok := strings.Cut(string(cp), "\n\n")
	if !ok {
		t.Fatalf("checkpoint without signatures: %q", cp)
	}
	first, _, _ := strings.Cut(sigs, "\n")
	return []byte(text + "\n\n" + first + "\n")
}

// countingScheme counts the RBE helper checks a replayer runs.
type countingScheme struct {
	fakerbe.Scheme
	checks *atomic.Int64
}

func (s countingScheme) CheckKey(slot int, pk, helpers []byte) error {
	s.checks.Add(1)
	return s.Scheme.CheckKey(slot, pk, helpers)
}

// tokenSigRanges records the ranges of the token-signature requests that
// pass through it.
type tokenSigRanges struct {
	mu     sync.Mutex
	ranges [][2]int64
}

func (r *tokenSigRanges) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Path == "/v1/token-signatures" {
		start, _ := strconv.ParseInt(req.URL.Query().Get("start"), 10, 64)
		end, _ := strconv.ParseInt(req.URL.Query().Get("end"), 10, 64)
		r.mu.Lock()
		r.ranges = append(r.ranges, [2]int64{start, end})
		r.mu.Unlock()
	}
	return http.DefaultTransport.RoundTrip(req)
}

func registerPods(t *testing.T, c *curatortest.Cluster, is *curatortest.Issuer, n int) {
	t.Helper()
	for i := range n {
		ip := netip.AddrFrom4([4]byte{10, 4, 0, byte(i)})
		w := curatortest.NewWorkload(t, is.Token(is.AddPod("default", "p", ip), curator.DefaultAudience, time.Now(), 10*time.Minute), ip)
		if _, err := c.Register(t.Context(), w, fakeKey); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWitnessCatchUpInChunks starts a new witness against a log of 10
// registrations and their state entries, with a token-signature chunk of
// 4: it fetches the signatures in consecutive requests of at most 4
// entries each and cosigns.
func TestWitnessCatchUpInChunks(t *testing.T) {
	is := curatortest.NewIssuer(t)
	c := curatortest.Start(t, curatortest.Options{Witnesses: 1, Scheme: scheme, Reviewer: is, JWKS: is.JWKS(), MaxBatch: 2})
	registerPods(t, c, is, 10)
	cp, err := c.Client.Checkpoint(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	opened, err := c.Policy.Open(cp, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if opened.Tree.N <= 8 {
		t.Fatalf("log has %d entries, want more than two chunks", opened.Tree.N)
	}

	defer witness.SetTokenSigChunk(4)()
	st, err := store.Open(filepath.Join(t.TempDir(), "w.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	jwks, _ := curator.ParseJWKS(is.JWKS())
	lv, _ := note.NewVerifier(c.Key.VKey)
	ranges := &tokenSigRanges{}
	// The new witness reuses the configured witness's key, which the
	// curator requires for token signatures.
	w, err := witness.New(witness.Config{Origin: curatortest.Origin, LogVerifier: lv, Signer: c.WitnessKeys[0], Store: st,
		Scheme: scheme, JWKS: jwks, CuratorURL: c.URL, HTTP: &http.Client{Transport: ranges}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.AddCheckpoint(t.Context(), addBody(0, stripCosignatures(t, cp))); err != nil {
		t.Fatalf("AddCheckpoint from size 0 to %d = %v, want a cosignature", opened.Tree.N, err)
	}

	var next int64
	for _, r := range ranges.ranges {
		if r[0] != next || r[1]-r[0] > 4 || r[1] <= r[0] {
			t.Errorf("token-signature request [%d, %d), want [%d, %d) of at most 4 entries", r[0], r[1], next, min(next+4, opened.Tree.N))
		}
		next = r[1]
	}
	if next != opened.Tree.N {
		t.Errorf("token-signature requests end at %d, want %d", next, opened.Tree.N)
	}
	if want := (opened.Tree.N + 3) / 4; int64(len(ranges.ranges)) != want {
		t.Errorf("%d token-signature requests, want %d", len(ranges.ranges), want)
	}
}

// TestRestartedWitnessRejectsBadKey restarts a witness on a store with a
// cosigned checkpoint. The restart runs no RBE helper check on the stored
// entries, and the witness still rejects a new registration whose helper
// values are invalid.
func TestRestartedWitnessRejectsBadKey(t *testing.T) {
	is := curatortest.NewIssuer(t)
	c := curatortest.Start(t, curatortest.Options{Witnesses: 1, Scheme: scheme, Reviewer: is, JWKS: is.JWKS()})
	registerPods(t, c, is, 3)
	cp, err := c.Client.Checkpoint(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	stored := curatortest.Tree(t, c.Store)

	// The witness's store as the cluster's witness left it.
	st, err := store.Open(filepath.Join(t.TempDir(), "w.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	entries, _ := c.Store.Entries(0, stored.N)
	if _, err := st.Append(&store.Batch{Start: 0, Entries: entries, Checkpoint: stripCosignatures(t, cp)}); err != nil {
		t.Fatal(err)
	}

	// The curator appends a registration with another key's helper
	// values, which only the helper check catches, to a copy of its log.
	rogue := curatortest.CopyStore(t, c.Store)
	replay := curator.NewState(curator.StateConfig{Scheme: scheme, SkipKeyCheck: true})
	for _, data := range entries {
		if _, err := replay.ApplyRecord(data); err != nil {
			t.Fatal(err)
		}
	}
	ip := netip.AddrFrom4([4]byte{10, 4, 1, 1})
	token := is.Token(is.AddPod("default", "bad-key", ip), curator.DefaultAudience, time.Now(), 10*time.Minute)
	wl := curatortest.NewWorkload(t, token, ip)
	block, slot := replay.GlobalSlot(replay.SlotEnd())
	req, err := wl.RegisterRequest(block, slot, func(slot int) ([]byte, []byte, error) {
		pk, _, _ := fakeKey(slot)
		other, _, _ := fakeKey(slot)
		return pk, scheme.Helpers(slot, other), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	input, sig, _ := curator.SplitToken(token)
	now := uint64(time.Now().UnixMilli())
	bad := &curator.Entry{Kind: curator.KindRegistration, TimestampMS: now, ID: curator.IDFromToken(token), PrevIndex: curator.NoPrev,
		Block: block, Slot: slot, RBEKey: req.RBEKey, RBEHelpers: req.RBEHelpers, TLSKey: req.TLSKey, PodIP: ip.AsSlice(),
		TokenClaims: []byte(input), PoPSig: req.PoPSig}
	badData, err := bad.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := replay.Apply(bad, tlog.RecordHash(badData)); err != nil {
		t.Fatalf("the bad registration fails a check other than the helper check: %v", err)
	}
	stateData, _ := replay.NextState(now).Marshal()
	if _, err := rogue.Append(&store.Batch{Start: stored.N, Entries: [][]byte{badData, stateData}, TokenSigs: [][]byte{[]byte(sig), nil}}); err != nil {
		t.Fatal(err)
	}
	raw := curatortest.ServeRawLog(t, rogue)
	signer, _ := note.NewSigner(c.Key.Signer)
	grown := curatortest.Tree(t, rogue)
	signed, err := note.Sign(&note.Note{Text: string(curator.FormatCheckpoint(curatortest.Origin, grown))}, signer)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := tlog.ProveTree(grown.N, stored.N, rogue)
	if err != nil {
		t.Fatal(err)
	}

	checks := &atomic.Int64{}
	jwks, _ := curator.ParseJWKS(is.JWKS())
	lv, _ := note.NewVerifier(c.Key.VKey)
	w, err := witness.New(witness.Config{Origin: curatortest.Origin, LogVerifier: lv, Signer: c.WitnessKeys[0], Store: st,
		Scheme: countingScheme{scheme, checks}, JWKS: jwks, CuratorURL: raw.URL})
	if err != nil {
		t.Fatal(err)
	}
	if n := checks.Load(); n != 0 {
		t.Errorf("restart ran %d RBE helper checks on entries the witness had cosigned, want 0", n)
	}
	srv := httptest.NewServer(w.Handler())
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/add-checkpoint", "text/plain", bytes.NewReader(server.AddCheckpointBody(stored.N, proof, signed)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(body), "check RBE key") {
		t.Errorf("add-checkpoint with a bad helper value = %d %q, want 422 naming the RBE key check", resp.StatusCode, body)
	}
	if n := checks.Load(); n != 1 {
		t.Errorf("the new entry ran %d RBE helper checks, want 1", n)
	}
	if got := w.Latest(); !strings.HasPrefix(string(got), string(stripCosignatures(t, cp))) {
		t.Errorf("witness moved to %q after the rejection, want the stored checkpoint", got)
	}
}
