package audit_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/audit"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/fakerbe"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
)

var scheme = fakerbe.Scheme{N: 8}

func fakeKey(slot int) ([]byte, []byte, error) {
	pk := make([]byte, 32)
	rand.Read(pk)
	return pk, scheme.Helpers(slot, pk), nil
}

func register(t *testing.T, c *curatortest.Cluster, is *curatortest.Issuer, name string, n int) (*curatortest.Workload, *server.KeyResponse) {
	t.Helper()
	ip := netip.AddrFrom4([4]byte{10, 2, 0, byte(n)})
	p := is.AddPod("default", name, ip)
	w := curatortest.NewWorkload(t, is.Token(p, curator.DefaultAudience, time.Now(), 10*time.Minute), ip)
	r, err := c.Register(t.Context(), w, fakeKey)
	if err != nil {
		t.Fatalf("Register(%s) = %v", name, err)
	}
	return w, r
}

func TestAuditCleanLog(t *testing.T) {
	is := curatortest.NewIssuer(t)
	c := curatortest.Start(t, curatortest.Options{Witnesses: 4, Scheme: scheme, Reviewer: is, JWKS: is.JWKS(), MaxBatch: 3})
	for i := range 20 {
		register(t, c, is, "pod", i)
	}
	r, err := audit.Audit(t.Context(), audit.Config{Client: c.Client, Policy: c.Policy, Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.IDs != 20 || r.Entries[curator.KindRegistration] != 20 || r.Entries[curator.KindState] == 0 {
		t.Fatalf("Audit = %+v, want 20 clean registrations", r)
	}
}

// TestSplitView runs a curator that shows fork A to the witnesses and to
// one client, and fork B, built with the same log key, to another.
func TestSplitView(t *testing.T) {
	is := curatortest.NewIssuer(t)
	forkA := curatortest.Start(t, curatortest.Options{Witnesses: 4, Scheme: scheme, Reviewer: is, JWKS: is.JWKS()})
	key := forkA.Key
	forkB := curatortest.Start(t, curatortest.Options{Scheme: scheme, Reviewer: is, Key: &key, WitnessOf: forkA})
	ctx := t.Context()

	for i := range 3 {
		register(t, forkA, is, "a", i)
	}
	cpA, err := forkA.Client.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	trustedA, err := forkA.Policy.Open(cpA, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	// Fork B diverges and grows past A; the witnesses refuse it.
	for i := range 5 {
		_, r := register(t, forkB, is, "b", 10+i)
		if len(r.Bundle) != 0 {
			t.Fatalf("fork B registration %d got a cosigned bundle", i)
		}
	}
	if _, err := forkB.Client.Checkpoint(ctx); err == nil {
		t.Fatal("fork B published a checkpoint without a witness quorum")
	}
	for i, dir := range forkA.EvidenceDirs {
		ents, _ := os.ReadDir(dir)
		if len(ents) == 0 || !strings.HasPrefix(ents[0].Name(), "inconsistent-") {
			t.Errorf("witness %d evidence = %v, want an inconsistent-* file", i, ents)
		}
	}

	// Fork B's tree, signed by the log key alone, as the curator would
	// show a client that checks the log signature only.
	n, _ := forkB.Store.Size()
	hB, err := tlog.TreeHash(n, forkB.Store)
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := note.NewSigner(key.Signer)
	cpB, err := note.Sign(&note.Note{Text: string(curator.FormatCheckpoint(curatortest.Origin, tlog.Tree{N: n, Hash: hB}))}, signer)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := tlog.ProveTree(n, trustedA.Tree.N, forkB.Store)
	if err != nil {
		t.Fatal(err)
	}
	logOnly, err := curator.NewPolicy(curatortest.Origin, key.VKey, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A client with the witness policy rejects B for lack of a quorum.
	if _, err := forkA.Policy.Open(cpB, time.Now()); !errors.Is(err, curator.ErrQuorum) {
		t.Errorf("Open(fork B) under the witness policy = %v, want ErrQuorum", err)
	}
	// A client holding A's checkpoint rejects B with a consistency error.
	resp := &curator.UpdatesResponse{Checkpoint: cpB, Consistency: proof}
	_, err = curator.VerifyUpdates(resp, logOnly, trustedA, nil, time.Now())
	var fork *curator.ForkError
	if !errors.As(err, &fork) {
		t.Fatalf("VerifyUpdates(fork B) = %v, want a ForkError", err)
	}
	// The evidence is self-contained: both notes verify under the log key
	// and the proof does not link them.
	v, _ := note.NewVerifier(key.VKey)
	for _, msg := range [][]byte{fork.Old, fork.New} {
		if _, err := note.Open(msg, note.VerifierList(v)); err != nil {
			t.Errorf("evidence note does not verify: %v", err)
		}
	}
	if tlog.CheckTree(fork.Proof, n, hB, trustedA.Tree.N, trustedA.Tree.Hash) == nil {
		t.Error("evidence proof links the two trees")
	}

	// An auditor reading fork B, holding A's checkpoint, reports the fork.
	r, err := audit.Audit(ctx, audit.Config{Client: &curator.Client{URL: forkB.URL}, Policy: logOnly, Scheme: scheme, Others: [][]byte{cpA}})
	if err == nil {
		t.Fatalf("Audit(fork B) with no published checkpoint = %+v, want an error", r)
	}
	forkB.Store.SetCheckpoint(cpB)
	forkB.Log.Reload()
	r, err = audit.Audit(ctx, audit.Config{Client: &curator.Client{URL: forkB.URL}, Policy: logOnly, Scheme: scheme, Others: [][]byte{cpA}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Forks) != 1 || len(r.Violations) != 0 {
		t.Fatalf("Audit(fork B) = %d forks, %d violations; want 1 fork", len(r.Forks), len(r.Violations))
	}

	// A node agent's monitor that trusts A and is then shown B, which no
	// witness cosigned, reports the fork: the log key signed both.
	m := &audit.Monitor{Client: forkA.Client, Policy: forkA.Policy}
	if alerts, err := m.Poll(ctx); err != nil || len(alerts) != 0 {
		t.Fatalf("Poll(fork A) = %v, %v; want no alerts", alerts, err)
	}
	m.Client = &curator.Client{URL: forkB.URL}
	alerts, err := m.Poll(ctx)
	if err != nil || len(alerts) != 1 || alerts[0].Name != audit.AlertFork || alerts[0].Fork == nil {
		t.Fatalf("Poll(fork B) = %v, %v; want one %s alert", alerts, err, audit.AlertFork)
	}
	if m.Trusted().Tree != trustedA.Tree {
		t.Errorf("monitor moved to %v after a fork, want it to keep %v", m.Trusted().Tree, trustedA.Tree)
	}
}

func TestMonitorUnexpectedEntry(t *testing.T) {
	is := curatortest.NewIssuer(t)
	c := curatortest.Start(t, curatortest.Options{Witnesses: 3, Scheme: scheme, Reviewer: is, JWKS: is.JWKS()})
	ctx := t.Context()
	w, r := register(t, c, is, "own", 1)
	m := &audit.Monitor{Client: c.Client, Policy: c.Policy}
	regEntry := &curator.Entry{Kind: curator.KindRegistration, ID: r.ID, PrevIndex: curator.NoPrev}
	b, err := curator.ParseBundle(r.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := curator.ParseEntry(b.Entry)
	regEntry.RBEKey, regEntry.RBEHelpers, regEntry.TLSKey, regEntry.PodIP = e.RBEKey, e.RBEHelpers, e.TLSKey, e.PodIP
	m.Expect(r.ID, curator.PoPMessage(regEntry))
	alerts, err := m.Poll(ctx)
	if err != nil || len(alerts) != 0 {
		t.Fatalf("Poll after own registration = %v, %v; want no alerts", alerts, err)
	}
	// Someone holding the TLS key rotates the ID behind the agent's back.
	req, err := w.ChangeRequest(curator.KindRotation, r.Block, r.Slot, r.Index, fakeKey)
	if err != nil {
		t.Fatal(err)
	}
	var rot server.KeyResponse
	if err := c.Client.PostJSON(ctx, "/v1/rotate", req, &rot); err != nil {
		t.Fatal(err)
	}
	alerts, err = m.Poll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(alerts) != 1 || alerts[0].Name != audit.AlertUnexpectedEntry || alerts[0].Entry.Index != rot.Index {
		t.Fatalf("Poll after a foreign rotation = %v, want one %s for entry %d", alerts, audit.AlertUnexpectedEntry, rot.Index)
	}
}

// rogueLog appends batches to a copy of a log the way a curator that logs
// entries the rules reject builds them. Each state entry commits to the
// blocks of the key entries the rules accept and to an ID map over every
// key entry, as internal/rogue's curator builds its state entries.
type rogueLog struct {
	t       *testing.T
	store   *store.Store
	rules   *curator.State // applies the accepted key entries only
	entries [][]byte
	epoch   uint64
}

func newRogueLog(t *testing.T, src *store.Store) *rogueLog {
	st := curatortest.CopyStore(t, src)
	n, _ := st.Size()
	entries, err := st.Entries(0, n)
	if err != nil {
		t.Fatal(err)
	}
	rules := curator.NewState(curator.StateConfig{Scheme: scheme})
	for _, data := range entries {
		if _, err := rules.ApplyRecord(data); err != nil {
			t.Fatal(err)
		}
	}
	return &rogueLog{t: t, store: st, rules: rules, entries: entries, epoch: rules.Epoch()}
}

// appendBatch appends key entries and a state entry, which tamper may
// change. accepted marks the key entries that the rules accept.
func (g *rogueLog) appendBatch(keys []*curator.Entry, tokenSigs []string, accepted []bool, tamper func(*curator.Entry)) {
	g.t.Helper()
	batch := &store.Batch{Start: int64(len(g.entries))}
	for i, e := range keys {
		data, err := e.Marshal()
		if err != nil {
			g.t.Fatal(err)
		}
		if accepted[i] {
			if err := g.rules.Apply(e, tlog.RecordHash(data)); err != nil {
				g.t.Fatalf("entry %d, meant to pass the rules: %v", len(g.entries), err)
			}
		}
		g.entries = append(g.entries, data)
		batch.Entries = append(batch.Entries, data)
		batch.TokenSigs = append(batch.TokenSigs, []byte(tokenSigs[i]))
	}

	var ids curator.MapTree
	for _, data := range g.entries {
		if e, err := curator.ParseEntry(data); err == nil && e.IsKey() {
			ids.Set(e.ID, tlog.RecordHash(data))
		}
	}
	g.epoch++
	se := &curator.Entry{Kind: curator.KindState, TimestampMS: uint64(time.Now().UnixMilli()), Epoch: g.epoch,
		FirstIndex: uint64(batch.Start), NumBlocks: uint32(g.rules.NumBlocks()), MapRoot: ids.Root(), PPDigest: g.rules.PPDigest()}
	if tamper != nil {
		tamper(se)
	}

	data, err := se.Marshal()
	if err != nil {
		g.t.Fatal(err)
	}
	g.entries = append(g.entries, data)
	batch.Entries = append(batch.Entries, data)
	batch.TokenSigs = append(batch.TokenSigs, nil)
	if _, err := g.store.Append(batch); err != nil {
		g.t.Fatal(err)
	}
}

// registration returns a registration of w in a slot, signed with w's TLS
// key, and the token's signature part.
func registration(t *testing.T, w *curatortest.Workload, block, slot uint32) (*curator.Entry, string) {
	t.Helper()
	req, err := w.RegisterRequest(block, slot, fakeKey)
	if err != nil {
		t.Fatal(err)
	}
	input, sig, err := curator.SplitToken(w.Token)
	if err != nil {
		t.Fatal(err)
	}
	return &curator.Entry{Kind: curator.KindRegistration, TimestampMS: uint64(time.Now().UnixMilli()), ID: curator.IDFromToken(w.Token),
		PrevIndex: curator.NoPrev, Block: block, Slot: slot, RBEKey: req.RBEKey, RBEHelpers: req.RBEHelpers, TLSKey: req.TLSKey,
		PodIP: w.IP.AsSlice(), TokenClaims: []byte(input), PoPSig: req.PoPSig}, sig
}

// TestAuditGoesOnAfterViolations audits a log with a re-registration, a
// registration with an invalid proof of possession and a state entry with
// a wrong block digest root, each followed by valid entries. The audit
// reports each with its inclusion proof, counts the valid entries and IDs
// after them, and still checks the other checkpoints for forks.
func TestAuditGoesOnAfterViolations(t *testing.T) {
	is := curatortest.NewIssuer(t)
	c := curatortest.Start(t, curatortest.Options{Scheme: scheme, Reviewer: is, JWKS: is.JWKS()})
	victim, first := register(t, c, is, "victim", 0)
	for i := 1; i < 3; i++ {
		register(t, c, is, "pod", i)
	}
	g := newRogueLog(t, c.Store)
	base := int64(len(g.entries))
	next := g.rules.SlotEnd()
	freshSlot := func() (uint32, uint32) {
		block, slot := g.rules.GlobalSlot(next)
		next++
		return block, slot
	}
	newWorkload := func(name string, n int) *curatortest.Workload {
		ip := netip.AddrFrom4([4]byte{10, 2, 1, byte(n)})
		return curatortest.NewWorkload(t, is.Token(is.AddPod("default", name, ip), curator.DefaultAudience, time.Now(), 10*time.Minute), ip)
	}

	// Entry base: the victim's ID registered again, in its own slot, with
	// the attacker's TLS key. Its state entry commits to the map with it.
	attacker := curatortest.NewWorkload(t, victim.Token, victim.IP)
	again, sig := registration(t, attacker, first.Block, first.Slot)
	g.appendBatch([]*curator.Entry{again}, []string{sig}, []bool{false}, nil)

	// Entry base+2: a proof of possession by another key.
	block, slot := freshSlot()
	forged, sig := registration(t, newWorkload("forged", 1), block, slot)
	forged.PoPSig, _ = curator.SignPoP(curatortest.NewWorkload(t, victim.Token, victim.IP).TLS, curator.PoPMessage(forged))
	g.appendBatch([]*curator.Entry{forged}, []string{sig}, []bool{false}, nil)

	// Entry base+5: a valid registration at base+4, then a state entry
	// with a wrong block digest root.
	block, slot = freshSlot()
	valid1, sig1 := registration(t, newWorkload("valid-1", 2), block, slot)
	g.appendBatch([]*curator.Entry{valid1}, []string{sig1}, []bool{true}, func(e *curator.Entry) { e.PPDigest[0] ^= 1 })

	// A valid batch after all of them.
	block, slot = freshSlot()
	valid2, sig2 := registration(t, newWorkload("valid-2", 3), block, slot)
	g.appendBatch([]*curator.Entry{valid2}, []string{sig2}, []bool{true}, nil)

	signer, _ := note.NewSigner(c.Key.Signer)
	tree := curatortest.Tree(t, g.store)
	cp, err := note.Sign(&note.Note{Text: string(curator.FormatCheckpoint(curatortest.Origin, tree))}, signer)
	if err != nil {
		t.Fatal(err)
	}
	raw := curatortest.ServeRawLog(t, g.store)
	raw.Publish(cp)
	// A checkpoint of another history of base entries, signed by the log key.
	fork, err := note.Sign(&note.Note{Text: string(curator.FormatCheckpoint(curatortest.Origin, tlog.Tree{N: base, Hash: tlog.Hash{1}}))}, signer)
	if err != nil {
		t.Fatal(err)
	}
	logOnly, err := curator.NewPolicy(curatortest.Origin, c.Key.VKey, nil, 0)
	if err != nil {
		t.Fatal(err)
	}

	r, err := audit.Audit(t.Context(), audit.Config{Client: &curator.Client{URL: raw.URL}, Policy: logOnly, Scheme: scheme, Others: [][]byte{fork}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Tree != tree {
		t.Errorf("audited tree %v, want %v", r.Tree, tree)
	}
	want := []struct {
		index uint64
		kind  curator.Kind
		err   string
	}{
		{uint64(base), curator.KindRegistration, "already registered"},
		{uint64(base) + 2, curator.KindRegistration, "proof of possession"},
		{uint64(base) + 5, curator.KindState, "block digest root"},
	}
	if len(r.Violations) != len(want) {
		var found []string
		for _, v := range r.Violations {
			found = append(found, v.Err)
		}
		t.Fatalf("Audit found %d violations, want %d: %q", len(r.Violations), len(want), found)
	}
	for i, w := range want {
		v := r.Violations[i]
		if v.Index != w.index || v.Kind != w.kind || !strings.Contains(v.Err, w.err) {
			t.Errorf("violation %d = entry %d (%v): %s; want entry %d (%v) containing %q", i, v.Index, v.Kind, v.Err, w.index, w.kind, w.err)
		}
		if err := tlog.CheckRecord(v.Inclusion, tree.N, tree.Hash, int64(v.Index), tlog.RecordHash(v.Entry)); err != nil {
			t.Errorf("violation %d: inclusion proof of entry %d does not verify: %v", i, v.Index, err)
		}
		if !bytes.Equal(v.Checkpoint, cp) {
			t.Errorf("violation %d: checkpoint %q, want the audited one", i, v.Checkpoint)
		}
		if !bytes.Equal(v.Entry, g.entries[v.Index]) {
			t.Errorf("violation %d: entry bytes differ from logged entry %d", i, v.Index)
		}
	}
	if len(r.ReRegistrations) != 1 || r.ReRegistrations[0].Index != uint64(base) || r.ReRegistrations[0].ID != first.ID {
		t.Errorf("ReRegistrations = %+v, want entry %d of ID %v", r.ReRegistrations, base, first.ID)
	}
	if got := r.Entries[curator.KindRegistration]; got != 5 {
		t.Errorf("Entries[registration] = %d, want 5: three before and two after the violations", got)
	}
	if got := r.Entries[curator.KindState]; got != 6 {
		t.Errorf("Entries[state] = %d, want 6", got)
	}
	if r.IDs != 5 {
		t.Errorf("IDs = %d, want 5", r.IDs)
	}
	if len(r.Forks) != 1 || !bytes.Equal(r.Forks[0].Old, fork) {
		t.Errorf("Forks = %v, want the fork at size %d", r.Forks, base)
	}
	if r.OK() {
		t.Error("Report.OK() = true for a log with violations")
	}
}
